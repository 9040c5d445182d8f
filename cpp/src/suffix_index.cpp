#include "suffix_index.h"

#include <algorithm>

namespace heterospec {

SuffixIndex::SuffixIndex(size_t capacity) : capacity_(std::max<size_t>(capacity, 64)) {}

uint64_t SuffixIndex::gram_key(const int32_t * t) {
    uint64_t h = 1469598103934665603ull;   // FNV-1a over the token ids
    for (int32_t i = 0; i < kGram; ++i) h = (h ^ uint64_t(uint32_t(t[i]))) * 1099511628211ull;
    return h;
}

void SuffixIndex::begin_document() {
    if (!tokens_.empty() && tokens_.back() >= 0) push(-1);
    doc_start_ = int32_t(tokens_.size());
}

void SuffixIndex::push(int32_t token) {
    if (tokens_.size() >= capacity_) rebuild();
    tokens_.push_back(token);
    index_last();
}

void SuffixIndex::index_last() {
    const int32_t i = int32_t(tokens_.size()) - 1;
    const int32_t t = tokens_.back();
    prev_token_.push_back(-1);
    prev_gram_.push_back(-1);
    if (t < 0) {
        doc_start_ = i + 1;
        return;
    }
    if (size_t(t) >= last_token_.size()) last_token_.resize(size_t(t) + 1, -1);
    prev_token_.back() = last_token_[size_t(t)];
    last_token_[size_t(t)] = i;
    if (i - kGram + 1 >= doc_start_) {
        int32_t & last = last_gram_.try_emplace(gram_key(&tokens_[size_t(i - kGram + 1)]), -1).first->second;
        prev_gram_.back() = last;
        last = i;
    }
}

void SuffixIndex::rebuild() {
    // keep the newest half; the current document, if cut, starts at the cut
    std::vector<int32_t> kept(tokens_.end() - std::ptrdiff_t(capacity_ / 2), tokens_.end());
    tokens_.clear();
    prev_token_.clear();
    prev_gram_.clear();
    std::fill(last_token_.begin(), last_token_.end(), -1);
    last_gram_.clear();
    doc_start_ = 0;
    for (int32_t t : kept) {
        tokens_.push_back(t);
        index_last();
    }
}

int32_t SuffixIndex::match_length(int32_t a, int32_t b) const {
    int32_t n = 0;
    while (n < kMaxMatch && a - n >= 0 && b - n >= doc_start_ && tokens_[size_t(a - n)] >= 0 &&
           tokens_[size_t(a - n)] == tokens_[size_t(b - n)])
        ++n;
    return n;
}

int32_t SuffixIndex::match(size_t max_starts, size_t scan, std::vector<int32_t> & starts) const {
    starts.clear();
    const int32_t last = int32_t(tokens_.size()) - 1;
    if (last < doc_start_ || max_starts == 0) return 0;
    int32_t best = 0;
    auto walk = [&](const std::vector<int32_t> & prev) {
        size_t seen = 0;
        for (int32_t p = prev[size_t(last)]; p >= 0 && seen < scan; p = prev[size_t(p)], ++seen) {
            if (tokens_[size_t(p) + 1] < 0) continue;   // nothing followed it (p < last: p + 1 exists)
            const int32_t n = match_length(p, last);
            if (n < best) continue;
            if (n > best) {
                best = n;
                starts.clear();
            }
            if (starts.size() < max_starts) starts.push_back(p + 1);
        }
    };
    if (last - kGram + 1 >= doc_start_) walk(prev_gram_);
    if (starts.empty()) walk(prev_token_);   // no earlier 4-gram: shorter matches
    return starts.empty() ? 0 : best;
}

void continuation_trie(const SuffixIndex & index, const std::vector<int32_t> & starts, int32_t depth,
                       size_t max_nodes, std::vector<TrieNode> & out) {
    out.assign(1, TrieNode{-1, -1, int32_t(starts.size()), -1, -1});
    for (int32_t s : starts) {
        int32_t node = 0;
        for (int32_t d = 0; d < depth; ++d) {
            const int32_t t = index.at(int64_t(s) + d);
            if (t < 0) break;
            int32_t child = out[size_t(node)].first_child;
            while (child >= 0 && out[size_t(child)].token != t) child = out[size_t(child)].next_sibling;
            if (child < 0) {
                if (out.size() >= max_nodes) break;
                out.push_back({t, node, 0, -1, out[size_t(node)].first_child});
                child = int32_t(out.size()) - 1;
                out[size_t(node)].first_child = child;
            }
            out[size_t(child)].count++;
            node = child;
        }
    }
}

}  // namespace heterospec
