// KV bookkeeping for path sequences (algorithm section 5).
//
// Every root-to-leaf path of a draft tree runs in a sequence of its own, and each such sequence
// must hold the whole committed prefix. Sequences 0..live-1 are kept identical: the prefix is
// copied into a sequence once, when a step first needs it, and after each step the accepted
// cells are copied from the accepted path's sequence to the others over the step's positions
// only (metadata-only in a unified cache).
#pragma once

#include "llama.h"

namespace heterospec {

class KvPaths {
public:
    KvPaths(llama_context * ctx, int32_t n_seq_max) : ctx_(ctx), n_seq_max_(n_seq_max) {}

    // Forgets everything; sequence 0 alone will hold the prompt.
    void reset();
    // Makes sequences 0..n-1 hold the committed prefix (n <= n_seq_max).
    void ensure_live(int32_t n);
    // Keeps positions [p0, p_end) of sequence `keep`, drops everything from p0 on elsewhere, and
    // copies the kept cells to every other live sequence.
    void commit(llama_seq_id keep, llama_pos p0, llama_pos p_end);

    int32_t live() const { return live_; }
    int32_t n_seq_max() const { return n_seq_max_; }

private:
    llama_context * ctx_;
    int32_t n_seq_max_;
    int32_t live_ = 1;
};

}  // namespace heterospec
