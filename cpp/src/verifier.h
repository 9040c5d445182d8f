// Verification (algorithm sections 5 and 6, target side): one target pass over the root and
// the selected nodes with tree attention through path sequences, the acceptance walk, then KV
// pruning to the accepted path.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "checkpoint.h"
#include "draft_tree.h"
#include "drafters/drafter.h"
#include "kv_paths.h"
#include "llama.h"
#include "model.h"
#include "path_batch.h"
#include "prompt_cache.h"

namespace heterospec {

// Where a walk ended.
struct WalkResult {
    int32_t last = 0;        // entry of the last accepted node (0: the root, nothing accepted)
    int32_t token = -1;      // the target's extra token, sampled at `last`
    int32_t emitted = 0;     // tokens emitted: the accepted nodes and the extra token
    bool stopped = false;    // `emit` refused a token: generation ends inside this step
};

// The acceptance walk (section 6): from the root, draw y = sample(entry) from the target and
// follow the child with token y while there is one; every drawn token goes to emit(y), which
// returns false to stop generation. Exact for any tree: it only samples from the target.
// `accepted` receives the accepted entries in path order (when generation stops, the last may be
// the child of `last` that drew the final token).
WalkResult walk_tree(const TreeBatch & tb, const std::function<int32_t(int32_t entry)> & sample,
                     const std::function<bool(int32_t token)> & emit, std::vector<int32_t> & accepted);

class Verifier {
public:
    // How the target's memory holds a tree (mode.h): coupled sequences over an attention cache,
    // a sequence per path over a recurrent state (path_batch.h), or chains over host checkpoints
    // of a recurrent state llama.cpp cannot roll back (checkpoint.h).
    enum class Layout { tree, paths, checkpoints };
    // `cached`: the record of what the target's cache holds (shared with the plain loop).
    Verifier(llama_context * ctx, int32_t n_seq_max, CachedTokens & cached, Layout layout = Layout::tree);

    // New generation: the prompt without its last token, in sequence 0, no logits. With
    // `reuse`, the prefix the cache holds already is kept and only the rest is run. Returns the
    // tokens reused.
    // `max_keep`: keep no more than that (what the listener holds states for).
    size_t begin(const std::vector<int32_t> & prefix, bool reuse, size_t max_keep = SIZE_MAX);
    // Runs the batch: entry i at position root_pos + depth, in the sequences of its paths; the
    // root also runs in sequences n_paths..n_seqs-1 (padding for graph reuse). Over recurrent
    // state, each path in a sequence of its own (PathBatch).
    void decode(const TreeBatch & tb, llama_pos root_pos, int32_t n_seqs = 0);
    const float * logits(int32_t entry) const;
    // Tokens the last batch ran (its replay and padding included).
    int32_t batch_tokens() const { return batch_tokens_; }
    // Keeps the root and the accepted path ending at `last_entry` in every live sequence, and
    // hands the listener the target's hidden states along it.
    void commit(const TreeBatch & tb, int32_t last_entry, llama_pos root_pos);

    double llama_ms() const { return llama_ms_; }
    // Time spent copying recurrent state to and from host checkpoints (0 without them).
    double checkpoint_ms() const { return ckpt_ ? ckpt_->ms() : 0.0; }
    // Who reads the target's hidden states after each of its passes (an MTP head; null: none).
    void set_listener(Drafter * d) { listener_ = d; }
    int32_t max_paths() const { return kv_.n_seq_max(); }

private:
    void run();
    // Checkpoint verification: the replayed tokens that go before a batch's entries.
    void add_replay();
    // Runs the replayed tokens now, on their own (the checkpoint is then spent).
    void run_replay();
    void decode_paths(const TreeBatch & tb, llama_pos root_pos);
    // The batch row of an entry's logits.
    int32_t row(int32_t entry) const {
        return layout_ == Layout::paths ? pb_.row[size_t(entry)] : offset_ + entry;
    }
    // path_tokens_ = the root and the accepted path ending at `last_entry`; path_rows_ their rows.
    void accepted_path(const TreeBatch & tb, int32_t last_entry);
    void commit_over_checkpoint(const TreeBatch & tb, int32_t last_entry, llama_pos root_pos);

    Layout layout_;
    PathBatch pb_;
    int32_t batch_tokens_ = 0;
    std::unique_ptr<StateCheckpoint> ckpt_;
    std::vector<int32_t> replay_;    // committed tokens the restored state has not seen yet
    llama_pos replay_pos_ = 0;       // their first position (the checkpoint's state ends before it)
    int32_t offset_ = 0;             // batch index of the root: the replayed tokens go first

    llama_context * ctx_;
    BatchPtr batch_;
    KvPaths kv_;
    CachedTokens & cached_;
    std::vector<int32_t> path_tokens_, path_rows_;
    Drafter * listener_ = nullptr;
    double llama_ms_ = 0;
};

}  // namespace heterospec
