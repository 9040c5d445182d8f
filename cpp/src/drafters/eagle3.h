// Drafting with an EAGLE-3 head (llama.cpp: `--spec-type draft-eagle3`,
// common_speculative_impl_draft_eagle3): a one-layer decoder in a model of its own (architecture
// eagle3) whose state is g_p = fc(features_p), the inputs of three target layers at position p
// concatenated (the head's encoder pass, llama_encode), and whose row for token x_p pairs it
// with g_{p-1}. Later levels feed back the head's own pre-norm state, as in training. A head
// without its own token embedding or output matrix borrows the target's (its context's
// ctx_other). The drafting: head.h.
//
// The pin's driver runs the pair (x_{p+1}, g_p) at position p; this one runs (x_p, g_{p-1}) at
// p, one position later throughout: the head's attention sees the same relative positions.
#pragma once

#include <vector>

#include "drafters/head.h"

namespace heterospec {

class Eagle3Drafter : public HeadDrafter {
public:
    // `layers`: the target layers whose inputs the head reads (eagle3.target_layers), checked
    // against the target by check_eagle3_head before any context exists.
    Eagle3Drafter(llama_context * target_ctx, llama_context * head_ctx, const std::vector<int32_t> & layers);
    ~Eagle3Drafter() override;
    const char * name() const override { return "eagle3"; }

protected:
    void target_states(const int32_t * rows, size_t n, float * out) override;
    const float * head_inputs(const float * states, size_t n) override;

private:
    std::vector<int32_t> layers_;
    llama_batch enc_;          // encoder rows: the features, no tokens
    int32_t enc_cap_;
    std::vector<float> g_;     // the encoder's output rows
};

}  // namespace heterospec
