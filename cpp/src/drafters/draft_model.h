// Drafting with a separate, smaller model of the same vocabulary (algorithm section 2).
//
// Level 1 runs the draft on the tokens it has not seen yet (at least the root) and gives the
// root its top-k children. Each further level runs the whole frontier in ONE llama_decode, tree
// attention through sequence ids: a frontier node runs in a sequence that holds exactly its
// ancestors. The first child of a node inherits its parent's sequence; other children take a
// free sequence and get the parent's path copied into it (metadata only).
#pragma once

#include <cstdint>
#include <vector>

#include "draft_tree.h"
#include "drafters/drafter.h"
#include "kv_paths.h"
#include "llama.h"
#include "model.h"
#include "prompt_cache.h"
#include "sampler.h"

namespace heterospec {

class DraftModelDrafter : public Drafter {
public:
    // `cached`: the record of what the draft's cache holds, shared by every drafter using it.
    DraftModelDrafter(llama_context * ctx, int32_t n_seq_max, CachedTokens & cached);
    const char * name() const override { return "model"; }
    bool has_free_source() const override { return false; }
    bool has_paid_levels() const override { return true; }
    int32_t paid_first_choice() const override { return first_choice_; }
    uint8_t paid_source() const override { return kFromModel; }

    int32_t extend(DraftTree & tree, int32_t levels) override;
    const std::vector<int32_t> & frontier() const override { return frontier_; }
    void narrow_frontier(const std::vector<int32_t> & nodes) override;

    int32_t calls() const override { return calls_; }
    double llama_ms() const override { return llama_ms_; }
    double time_level(int32_t width) override;
    // Each level beyond the first holds `width` temporary cells in the draft's cache.
    int32_t fit_depth(int32_t depth, int32_t width, llama_pos root_pos) const override;
    llama_context * context() const override { return ctx_; }

protected:
    // Processes `prefix` in sequence 0 (with `reuse`, the part not in the cache already).
    void do_begin(const std::vector<int32_t> & prefix, bool reuse) override;
    void do_start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) override;
    void do_start_paid(DraftTree & tree, const DraftShape & shape, llama_pos root_pos) override {
        do_start(tree, shape, root_pos, 1);
    }
    // Keeps the longest accepted prefix already in the draft's cache and queues the rest, to be
    // run with the next root.
    void do_commit(const DraftTree & tree, const std::vector<int32_t> & accepted) override;
    // The draft has not run this step: the root and the accepted path run with the next root.
    void do_defer(const DraftTree & tree, const std::vector<int32_t> & accepted) override;

private:
    void decode_or_throw();
    // Runs committed tokens at n_past.. in every live sequence.
    void decode_committed(const std::vector<int32_t> & tokens, bool logits_for_last);
    void expand_frontier(DraftTree & tree);

    llama_context * ctx_;
    BatchPtr batch_;
    KvPaths kv_;
    CachedTokens & cached_;
    int32_t n_vocab_;
    std::vector<int32_t> pending_;   // committed tokens not yet in the draft's cache
    llama_pos n_past_ = 0;           // committed tokens in the draft's cache

    // the step in progress
    DraftShape shape_;
    llama_pos root_pos_ = 0;
    int32_t first_choice_ = -1;           // the root's likeliest child by the draft
    std::vector<int32_t> frontier_;       // tree nodes to expand next, best first
    std::vector<int32_t> frontier_out_;   // their batch output indices
    std::vector<int32_t> seq_of_;         // per tree node: its draft sequence, -1 if not run
    std::vector<int32_t> seq_node_;       // per sequence: the deepest node whose path it holds
    std::vector<int32_t> cand_, next_;
    std::vector<TokenProb> top_, root_top_;
    std::vector<uint8_t> inherited_;

    int32_t calls_ = 0;
    double llama_ms_ = 0;
};

}  // namespace heterospec
