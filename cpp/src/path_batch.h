// A tree verified over recurrent state (algorithm section 5, hybrid targets). Pure logic.
//
// A recurrent state (Gated DeltaNet, Mamba, short convolutions) follows one text: it cannot
// hold a tree the way an attention cache holds one through coupled sequences. So every
// root-to-leaf path runs as a sequence of its own, with a copy of the state, its shared prefix
// repeated, and padded to the deepest path: llama.cpp splits a recurrent batch into equal
// per-sequence lengths, and its rollback planes stay valid only within one ubatch. A padding
// row repeats the path's leaf and is always rolled back. One path is the chain it always was.
// The price is paths x (depth + 1) tokens instead of nodes + 1: the allocation pays it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "draft_tree.h"

namespace heterospec {

// Which of `selected` (best first, closed under ancestors) a batch of paths can hold: a node
// that would open a path beyond max_paths or reach beyond max_depth is left out, and so are its
// descendants; the first node that would make the batch longer than max_tokens ends it. Writes
// the kept nodes' indices in `selected` to `kept`, and to `tokens[n]` the batch of verifying the
// first n kept nodes path by path: paths x (deepest + 1), n = 0..kept.size(). `scratch` is
// working space, reused between calls.
void fit_path_batch(const DraftTree & tree, const std::vector<int32_t> & selected, int32_t max_paths,
                    int32_t max_depth, int32_t max_tokens, std::vector<int32_t> & kept, std::vector<int32_t> & tokens,
                    std::vector<uint8_t> & scratch);

// How many paths a recurrent target verifies: each holds a copy of the state and `planes`
// snapshots of it, and the copies stay within `budget` bytes (one path, the chain, whatever it
// weighs), at most `most`.
int32_t paths_within(size_t state_bytes, int32_t planes, size_t budget, int32_t most);

// A TreeBatch laid out path by path: path p's rows are [p * len, (p + 1) * len), the root
// first, in sequence p.
struct PathBatch {
    int32_t n_paths = 0;
    int32_t len = 0;                 // rows per path: the deepest path + 1
    std::vector<int32_t> token;      // each row's token
    std::vector<int32_t> entry;      // each row's TreeBatch entry (-1: padding)
    std::vector<int32_t> row;        // each entry's row: in the section of its path (TreeBatch::path)

    int32_t rows() const { return int32_t(token.size()); }
    // Whether row r gives its entry's logits (the other copies of a shared prefix do not).
    bool outputs(int32_t r) const { return entry[size_t(r)] >= 0 && row[size_t(entry[size_t(r)])] == r; }
    void build(const TreeBatch & tb);
};

}  // namespace heterospec
