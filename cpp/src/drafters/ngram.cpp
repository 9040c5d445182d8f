#include "drafters/ngram.h"

#include <algorithm>
#include <cmath>

namespace heterospec {

void NgramDrafter::add_branches(DraftTree & tree, const DraftShape & shape, int32_t levels) {
    match_ = index_.match(kStarts, kScan, starts_);
    if (match_ == 0) return;
    continuation_trie(index_, starts_, std::max(levels, shape.free_depth), trie_);
    node_of_.assign(trie_.size(), -1);
    node_of_[0] = 0;
    // parents come first: each trie node's best `branching` children join the tree
    for (int32_t p = 0; p < int32_t(trie_.size()); ++p) {
        if (node_of_[size_t(p)] < 0) continue;   // its parent was left out
        kids_.clear();
        for (int32_t c = p + 1; c < int32_t(trie_.size()); ++c)
            if (trie_[size_t(c)].parent == p) kids_.push_back(c);
        if (kids_.empty()) continue;
        std::stable_sort(kids_.begin(), kids_.end(), [&](int32_t a, int32_t b) {
            return trie_[size_t(a)].count > trie_[size_t(b)].count; });
        const float total = float(trie_[size_t(p)].count);
        // below the parent, the context matches the occurrences over match_ + depth(parent) tokens
        const float m = float(match_ + tree[node_of_[size_t(p)]].depth);
        float h = 0.0f;   // the entropy of the continuations' distribution: the policy's signal
        for (int32_t c : kids_) {
            const float f = float(trie_[size_t(c)].count) / total;
            h -= f * std::log(f);
        }
        const int32_t parent = node_of_[size_t(p)];
        if (tree[parent].h < 0) tree.set_entropy(parent, h);
        for (size_t k = 0; k < kids_.size() && k < size_t(shape.branching); ++k) {
            const int32_t c = kids_[k];
            const float q = float(trie_[size_t(c)].count) / total * (m / (m + 1.0f));
            if (q < shape.p_min) break;   // sorted: the rest are lower still
            node_of_[size_t(c)] = tree.add_or_merge(parent, trie_[size_t(c)].token, q, kFromNgram);
        }
    }
}

}  // namespace heterospec
