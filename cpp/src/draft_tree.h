// The draft tree (algorithm section 2) and its layout as one verification batch (section 5).
// Pure logic: no llama.cpp.
//
// Node 0 is the root: the last committed token, not yet run through the target. Every other
// node is a draft candidate with its draft probability q (given its parent path) and value
// V = product of q along the path. V never increases along a path, so the top-N nodes by V,
// ties broken toward the shallower node, form a set closed under ancestors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace heterospec {

struct DraftNode {
    int32_t token;
    int32_t parent;   // -1 for the root
    int32_t depth;    // 0 for the root
    float q;          // draft probability given the parent path (1 for the root)
    float v;          // product of q from the root
    float h;          // top-K entropy of the draft distribution at this node, -1 if not expanded
    float hp;         // path entropy: the sum of h over the ancestors whose distributions drafted
                      // this node's path (section 3's meta-path score, for any node)
    uint8_t source;   // which drafters proposed it: bits of DraftSource (0 for the root)
};

// Who proposed a node. A hybrid tree's node can come from both.
enum DraftSource : uint8_t { kFromModel = 1, kFromNgram = 2, kFromMtp = 4, kFromEagle3 = 8, kFromDflash = 16 };
// The sources that cost a model pass per level.
constexpr uint8_t kPaidSources = kFromModel | kFromMtp | kFromEagle3 | kFromDflash;

class DraftTree {
public:
    void reset(int32_t root_token);
    int32_t add(int32_t parent, int32_t token, float q, uint8_t source = kFromModel);
    // As add, unless `parent` already has a child with `token` (another drafter proposed it):
    // then that child, now marked as proposed by `source` too, keeping its q.
    int32_t add_or_merge(int32_t parent, int32_t token, float q, uint8_t source);
    int32_t child(int32_t parent, int32_t token) const;   // -1: none
    void set_entropy(int32_t i, float h) { nodes_[size_t(i)].h = h; }

    const DraftNode & operator[](int32_t i) const { return nodes_[size_t(i)]; }
    int32_t size() const { return int32_t(nodes_.size()); }

    // Whether node a ranks before node b: higher V, then shallower, then added earlier.
    bool ranks_before(int32_t a, int32_t b) const {
        const DraftNode & x = nodes_[size_t(a)];
        const DraftNode & y = nodes_[size_t(b)];
        if (x.v != y.v) return x.v > y.v;
        if (x.depth != y.depth) return x.depth < y.depth;
        return a < b;
    }

    // The best n of `cand` (node ids) by rank, best first, written to `out`.
    void top(const std::vector<int32_t> & cand, size_t n, std::vector<int32_t> & out) const;

    // The best n non-root nodes, best first: closed under ancestors.
    void select(size_t n, std::vector<int32_t> & out) const;
    // The same by another score per node (indexed by node id), higher first, ties toward the
    // shallower node, then the earlier: closed under ancestors when no score exceeds its parent's.
    void select_by(const std::vector<float> & score, size_t n, std::vector<int32_t> & out) const;

private:
    std::vector<DraftNode> nodes_;
    std::vector<int32_t> last_child_, prev_sibling_;   // children as linked lists, for child()
    mutable std::vector<int32_t> scratch_;
};

// Keeps, of `selected` (best first, closed under ancestors), one path from the root: below each
// kept node, its best-ranked selected child. For targets whose memory verifies chains only.
void keep_one_path(const DraftTree & tree, std::vector<int32_t> & selected);

// A selection laid out as one batch: entry 0 is the root, then the selected nodes in order of
// depth (parents before children). Each root-to-leaf path gets a sequence id 0..n_paths-1 and
// every entry carries the ids of all paths through it.
struct TreeBatch {
    std::vector<int32_t> node;       // tree node id of each entry
    std::vector<int32_t> token;
    std::vector<int32_t> depth;
    std::vector<int32_t> parent;     // entry index of the parent, -1 for the root
    std::vector<int32_t> rank;       // rank by V among the selected nodes (1 = best), 0 for the root
    std::vector<int32_t> path;       // one path (sequence id) through each entry
    std::vector<int32_t> seq_begin;  // entry i's path ids: seqs[seq_begin[i] .. seq_begin[i+1])
    std::vector<int32_t> seqs;
    std::vector<int32_t> child_begin;  // entry i's children: children[child_begin[i] .. child_begin[i+1])
    std::vector<int32_t> children;
    int32_t n_paths = 0;

    int32_t size() const { return int32_t(node.size()); }
    // The child entry of entry i whose token is t, or -1.
    int32_t child_with_token(int32_t i, int32_t t) const {
        for (int32_t c = child_begin[size_t(i)]; c < child_begin[size_t(i) + 1]; ++c)
            if (token[size_t(children[size_t(c)])] == t) return children[size_t(c)];
        return -1;
    }
    int32_t max_depth() const;

    // Lays out the root and `selected` (node ids, best first, closed under ancestors).
    void build(const DraftTree & tree, const std::vector<int32_t> & selected);

private:
    std::vector<int32_t> entry_of_, rank_of_, leaves_below_, fill_;   // reused between steps
};

}  // namespace heterospec
