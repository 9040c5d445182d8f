// Drafting with the target's own MTP (nextn) layers: Qwen3.5/3.6-class models ship one head that
// reads the target's last hidden state h_{p-1} and the token x_p and predicts x_{p+1}
// (llama.cpp: `--spec-type draft-mtp`, common_speculative_impl_draft_mtp). The head runs in a
// second context on the same model (LLAMA_CONTEXT_TYPE_MTP); its state is the target's hidden
// state as the target gives it (llama_get_embeddings_nextn). The drafting: head.h.
#pragma once

#include "drafters/head.h"

namespace heterospec {

class MtpDrafter : public HeadDrafter {
public:
    MtpDrafter(llama_context * target_ctx, llama_context * mtp_ctx);
    const char * name() const override { return "mtp"; }

protected:
    void target_states(const int32_t * rows, size_t n, float * out) override;
};

}  // namespace heterospec
