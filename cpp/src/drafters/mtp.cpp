#include "drafters/mtp.h"

#include <cstring>
#include <stdexcept>

#include "llama-ext.h"

namespace heterospec {

MtpDrafter::MtpDrafter(llama_context * target_ctx, llama_context * mtp_ctx)
    : HeadDrafter(target_ctx, mtp_ctx, llama_model_n_embd_out(llama_get_model(target_ctx)), kFromMtp,
                  /*zero_state=*/true) {
    if (llama_model_n_embd_out(llama_get_model(mtp_ctx)) != llama_model_n_embd_out(llama_get_model(target_ctx)))
        throw std::invalid_argument("the MTP head's input width differs from the target's hidden state");
    // the target gives its hidden state at every position of every pass
    llama_set_embeddings_nextn(target_ctx, true, /*masked=*/false);
}

void MtpDrafter::target_states(const int32_t * rows, size_t n, float * out) {
    const float * h = llama_get_embeddings_nextn(target_);
    if (!h) throw std::runtime_error("the target gave no hidden states for its MTP head");
    const size_t w = size_t(state_width_);
    for (size_t k = 0; k < n; ++k)
        std::memcpy(out + k * w, h + size_t(rows ? rows[k] : int32_t(k)) * w, sizeof(float) * w);
}

}  // namespace heterospec
