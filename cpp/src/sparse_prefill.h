// SampleAttention sparse prefill (issue 11): the patched llama.cpp's sparse attention branch
// (third_party/patches/), switched on for prompt processing only (the target's and the draft
// model's), so that decoding and tree verification stay dense and speculation stays exact.
#pragma once

#include "heterospec/config.h"
#include "llama.h"

namespace heterospec {

// Whether the llama.cpp this was built against carries the patch.
bool sparse_prefill_available();

// Throws std::invalid_argument when `o` asks for sparse prefill that this build cannot give.
void check_sparse_prefill(const SparsePrefillOptions & o);

// Sparse prefill on `ctx` for the scope's life (nothing when `o` is off or `ctx` is null: a
// drafter without a model).
class SparsePrefillScope {
public:
    SparsePrefillScope(llama_context * ctx, const SparsePrefillOptions & o);
    ~SparsePrefillScope();
    SparsePrefillScope(const SparsePrefillScope &) = delete;
    SparsePrefillScope & operator=(const SparsePrefillScope &) = delete;

    // Share of attention columns kept by the sparse ubatches so far (1 if none ran), and the
    // columns they had in all; both count afresh after the call.
    double kept_fraction(int64_t * columns = nullptr);

private:
    llama_context * ctx_;
    bool on_;
};

}  // namespace heterospec
