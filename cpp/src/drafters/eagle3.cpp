#include "drafters/eagle3.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "llama-ext.h"
#include "model.h"

namespace heterospec {

Eagle3Drafter::Eagle3Drafter(llama_context * target_ctx, llama_context * head_ctx, const std::vector<int32_t> & layers)
    : HeadDrafter(target_ctx, head_ctx, int32_t(layers.size()) * llama_model_n_embd(llama_get_model(target_ctx)),
                  kFromEagle3, /*zero_state=*/false),
      layers_(layers),
      enc_cap_(int32_t(llama_n_ubatch(head_ctx))) {
    enc_ = llama_batch_init(enc_cap_, state_width_, 1);
    // the target gives these layers' inputs at every row of every pass
    for (int32_t l : layers_) llama_set_embeddings_layer_inp(target_, uint32_t(l), true);
}

Eagle3Drafter::~Eagle3Drafter() { llama_batch_free(enc_); }

void Eagle3Drafter::target_states(const int32_t * rows, size_t n, float * out) {
    layer_features(target_, layers_, rows, n, out);
}

// g = fc(features), in encoder passes of at most a ubatch (llama.cpp encodes one ubatch at once).
const float * Eagle3Drafter::head_inputs(const float * states, size_t n) {
    g_.resize(n * size_t(n_embd_));
    const double t0 = now_ms();
    for (size_t i = 0; i < n; i += size_t(enc_cap_)) {
        const size_t m = std::min(size_t(enc_cap_), n - i);
        enc_.n_tokens = int32_t(m);
        std::memcpy(enc_.embd, states + i * size_t(state_width_), sizeof(float) * m * size_t(state_width_));
        // the encoder is per row and keeps nothing, but llama.cpp checks that positions continue
        // the head's memory (as the pin's driver does)
        const llama_pos next = llama_memory_seq_pos_max(llama_get_memory(head_), 0) + 1;
        for (size_t k = 0; k < m; ++k) {
            enc_.pos[k] = next + llama_pos(k);
            enc_.n_seq_id[k] = 1;
            enc_.seq_id[k][0] = 0;
            enc_.logits[k] = true;
        }
        const int32_t rc = llama_encode(head_, enc_);
        if (rc != 0) throw std::runtime_error("EAGLE-3 encoder llama_encode failed (code " + std::to_string(rc) + ")");
        llama_synchronize(head_);
        const float * g = llama_get_embeddings_nextn(head_);
        if (!g) throw std::runtime_error("the EAGLE-3 encoder gave no output");
        std::memcpy(g_.data() + i * size_t(n_embd_), g, sizeof(float) * m * size_t(n_embd_));
    }
    charge_ms(now_ms() - t0);
    return g_.data();
}

}  // namespace heterospec
