// Model-free drafting's memory, in the spirit of SuffixDecoding. Pure logic.
//
// The engine pushes every token it sees (prompts, generated text, earlier requests; each
// request a document of its own) into one bounded array. Each position is chained to the
// previous occurrence of the same token and of the same 4-gram, so that the earlier occurrences
// of the context's longest suffix are found by walking a short chain, in time independent of
// how much is stored. Their continuations, merged into a trie with counts, are the drafts:
// distinct continuations become branches.
//
// Memory is bounded: past `capacity` tokens the oldest half is forgotten (the array and its
// chains are rebuilt, linear time, once per capacity/2 tokens). A prompt longer than that is
// indexed over its last capacity/2 tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace heterospec {

class SuffixIndex {
public:
    static constexpr int32_t kGram = 4;        // the long chain's n-gram length
    static constexpr int32_t kMaxMatch = 32;   // match lengths are measured up to this
    static constexpr size_t kDefaultCapacity = size_t(1) << 18;   // 256K tokens, at most ~15 MB

    explicit SuffixIndex(size_t capacity = kDefaultCapacity);

    void begin_document();   // continuations never cross a document boundary
    void push(int32_t token);
    size_t size() const { return tokens_.size(); }
    size_t capacity() const { return capacity_; }
    // The token at position p, or -1 at a document boundary or beyond the end.
    int32_t at(int64_t p) const { return p >= 0 && p < int64_t(tokens_.size()) ? tokens_[size_t(p)] : -1; }

    // Earlier occurrences of the longest suffix of the current document (at most kMaxMatch
    // tokens, looking at the `scan` most recent occurrences of its last token or 4-gram) that
    // are followed by a token: the positions of those tokens, most recent first, at most
    // max_starts, all with that longest match. Returns the match length (0: no occurrence).
    int32_t match(size_t max_starts, size_t scan, std::vector<int32_t> & starts) const;

private:
    void index_last();
    void rebuild();
    int32_t match_length(int32_t a, int32_t b) const;   // common suffix of positions a and b
    static uint64_t gram_key(const int32_t * t);

    size_t capacity_;
    std::vector<int32_t> tokens_;       // -1: document boundary
    std::vector<int32_t> prev_token_;   // previous position holding the same token, -1: none
    std::vector<int32_t> prev_gram_;    // previous position ending the same 4-gram, -1: none
    std::vector<int32_t> last_token_;   // by token id: its latest position
    std::unordered_map<uint64_t, int32_t> last_gram_;
    int32_t doc_start_ = 0;
};

// The continuations that followed `starts` (up to `depth` tokens each, stopping at document
// boundaries), merged into a trie of at most max_nodes nodes (the earlier starts, the more recent
// occurrences, go deepest): node 0 is the root (count: the number of starts), every other node a
// token after its parent's path with how many starts continued that way. Parents come before
// their children; each node's children are a linked list (first_child, next_sibling; -1 ends).
struct TrieNode {
    int32_t token;
    int32_t parent;
    int32_t count;
    int32_t first_child;
    int32_t next_sibling;
};
void continuation_trie(const SuffixIndex & index, const std::vector<int32_t> & starts, int32_t depth,
                       size_t max_nodes, std::vector<TrieNode> & out);

}  // namespace heterospec
