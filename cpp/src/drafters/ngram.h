// Model-free drafting: the continuations of the context's longest earlier match (in the
// prompt, the output so far or an earlier request), from the engine's SuffixIndex.
//
// The most recent occurrences of the longest match (up to kStarts) give a trie of
// continuations with counts; distinct continuations become branches. A node's q is the share of
// its parent's occurrences that went on with its token, times m / (m + 1) for a context that
// matches them over m tokens (m: the match length plus the node's depth - 1): a long match is
// likelier to go on the same way than a one-token coincidence. The whole trie is drafted at
// once, up to DraftShape::free_depth: it costs no model pass, so the allocation sees every node
// before choosing.
#pragma once

#include <vector>

#include "drafters/drafter.h"
#include "suffix_index.h"

namespace heterospec {

class NgramDrafter : public Drafter {
public:
    static constexpr size_t kStarts = 16;   // occurrences merged into one trie
    static constexpr size_t kScan = 64;     // occurrences looked at to find the longest match
    static constexpr size_t kMaxNodes = 256;   // trie nodes per step: bounds the host work

    explicit NgramDrafter(const SuffixIndex & index) : index_(index) {}
    const char * name() const override { return "ngram"; }
    bool has_free_source() const override { return true; }
    bool has_paid_levels() const override { return false; }

    // Adds the trie's nodes below the root of `tree` (merging with nodes already there), at
    // least `levels` deep when the continuations are: the hybrid drafter's n-gram branches.
    void add_branches(DraftTree & tree, const DraftShape & shape, int32_t levels);

protected:
    void do_begin(const std::vector<int32_t> &, bool) override {}   // the engine feeds the index
    void do_start(DraftTree & tree, const DraftShape & shape, llama_pos, int32_t levels) override {
        add_branches(tree, shape, levels);
    }
    void do_start_free(DraftTree & tree, const DraftShape & shape, llama_pos) override { add_branches(tree, shape, 1); }
    void do_commit(const DraftTree &, const std::vector<int32_t> &) override {}
    void do_defer(const DraftTree &, const std::vector<int32_t> &) override {}

private:
    const SuffixIndex & index_;
    int32_t match_ = 0;
    std::vector<int32_t> starts_;
    std::vector<TrieNode> trie_;
    std::vector<int32_t> node_of_, kids_;
};

}  // namespace heterospec
