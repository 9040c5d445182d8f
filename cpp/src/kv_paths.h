// KV bookkeeping for path sequences (algorithm section 5).
//
// Every root-to-leaf path of a draft tree runs in a sequence of its own, and each such sequence
// must hold the whole committed prefix. Sequences 0..live-1 are kept identical: the prefix is
// copied into a sequence once, when a step first needs it, and after each step the accepted
// cells are copied from the accepted path's sequence to the others over the step's positions
// only (metadata-only in a unified cache).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "draft_tree.h"
#include "llama.h"

namespace heterospec {

// Tree attention while drafting (a draft model's or a head's): the sequence each node of
// `frontier` runs in, into `seq_for`. A node's first frontier child inherits its parent's
// sequence (`seq_of[parent]`); the others take free ones among n_seq, and `fresh(s, parent)` fills
// such a sequence with the parent's path before the level runs. `taken`: scratch.
void assign_frontier_sequences(const DraftTree & tree, const std::vector<int32_t> & frontier,
                               const std::vector<int32_t> & seq_of, int32_t n_seq, std::vector<uint8_t> & taken,
                               std::vector<int32_t> & seq_for,
                               const std::function<void(int32_t seq, int32_t parent)> & fresh);

// Keeps positions [0, keep) of sequence 0 in `ctx`'s memory and drops everything else; returns
// the positions kept (0, with the memory cleared, where a suffix cannot be dropped).
llama_pos keep_prefix(llama_context * ctx, llama_pos keep);

class KvPaths {
public:
    KvPaths(llama_context * ctx, int32_t n_seq_max) : ctx_(ctx), n_seq_max_(n_seq_max) {}

    // Keeps positions [0, keep) of sequence 0 and forgets everything else; sequence 0 alone
    // will hold the prompt. Returns the positions kept (0 where the memory cannot drop a
    // suffix, as in recurrent models).
    llama_pos reset(llama_pos keep = 0);
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
