#include "drafters/ngram.h"

#include <algorithm>
#include <cmath>

namespace heterospec {

void NgramDrafter::add_branches(DraftTree & tree, const DraftShape & shape, int32_t levels) {
    match_ = index_.match(kStarts, kScan, starts_);
    if (match_ == 0) return;
    continuation_trie(index_, starts_, std::max(levels, shape.free_depth), kMaxNodes, trie_);
    node_of_.assign(trie_.size(), -1);
    node_of_[0] = 0;
    // parents come first: each trie node's best `branching` children join the tree
    for (int32_t p = 0; p < int32_t(trie_.size()); ++p) {
        if (node_of_[size_t(p)] < 0) continue;   // its parent was left out
        kids_.clear();
        for (int32_t c = trie_[size_t(p)].first_child; c >= 0; c = trie_[size_t(c)].next_sibling) kids_.push_back(c);
        if (kids_.empty()) continue;
        // most frequent first; ties: the one added first (the more recent occurrence)
        std::sort(kids_.begin(), kids_.end(), [&](int32_t a, int32_t b) {
            const int32_t ca = trie_[size_t(a)].count, cb = trie_[size_t(b)].count;
            return ca != cb ? ca > cb : a < b; });
        const float total = float(trie_[size_t(p)].count);
        // below the parent, the context matches the occurrences over match_ + depth(parent) tokens
        const float m = float(match_ + tree[node_of_[size_t(p)]].depth);
        float h = 0.0f;   // the entropy of the continuations' distribution: the policy's signal
        for (int32_t c : kids_) {
            const float f = float(trie_[size_t(c)].count) / total;
            h -= f * std::log(f);
        }
        const int32_t parent = node_of_[size_t(p)];
        // a node the draft model will expand keeps the model's entropy (one unit per path)
        if (tree[parent].h < 0 && !(tree[parent].source & kPaidSources)) tree.set_entropy(parent, h);
        for (size_t k = 0; k < kids_.size() && k < size_t(shape.branching); ++k) {
            const int32_t c = kids_[k];
            const float q = float(trie_[size_t(c)].count) / total * (m / (m + 1.0f));
            if (q < shape.p_min) break;   // sorted: the rest are lower still
            node_of_[size_t(c)] = tree.add_or_merge(parent, trie_[size_t(c)].token, q, kFromNgram);
        }
    }
}

}  // namespace heterospec
