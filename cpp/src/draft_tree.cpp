#include "draft_tree.h"

#include <algorithm>
#include <numeric>

namespace heterospec {

void DraftTree::reset(int32_t root_token) {
    nodes_.clear();
    nodes_.push_back({root_token, -1, 0, 1.0f, 1.0f, -1.0f, 0.0f, 0});
    last_child_.assign(1, -1);
    prev_sibling_.assign(1, -1);
}

int32_t DraftTree::add(int32_t parent, int32_t token, float q, uint8_t source) {
    const DraftNode & p = nodes_[size_t(parent)];
    nodes_.push_back({token, parent, p.depth + 1, q, p.v * q, -1.0f, p.hp + std::max(p.h, 0.0f), source});
    const int32_t id = int32_t(nodes_.size()) - 1;
    prev_sibling_.push_back(last_child_[size_t(parent)]);
    last_child_.push_back(-1);
    last_child_[size_t(parent)] = id;
    return id;
}

int32_t DraftTree::child(int32_t parent, int32_t token) const {
    for (int32_t c = last_child_[size_t(parent)]; c >= 0; c = prev_sibling_[size_t(c)])
        if (nodes_[size_t(c)].token == token) return c;
    return -1;
}

int32_t DraftTree::add_or_merge(int32_t parent, int32_t token, float q, uint8_t source) {
    const int32_t c = child(parent, token);
    if (c < 0) return add(parent, token, q, source);
    nodes_[size_t(c)].source |= source;
    return c;
}

void DraftTree::top(const std::vector<int32_t> & cand, size_t n, std::vector<int32_t> & out) const {
    out.assign(cand.begin(), cand.end());
    n = std::min(n, out.size());
    auto before = [this](int32_t a, int32_t b) { return ranks_before(a, b); };
    std::partial_sort(out.begin(), out.begin() + std::ptrdiff_t(n), out.end(), before);
    out.resize(n);
}

void DraftTree::select(size_t n, std::vector<int32_t> & out) const {
    scratch_.resize(nodes_.size() - 1);
    std::iota(scratch_.begin(), scratch_.end(), 1);
    top(scratch_, n, out);
}

void keep_one_path(const DraftTree & tree, std::vector<int32_t> & selected) {
    int32_t tip = 0;   // the kept path's deepest node: parents come before their children
    size_t kept = 0;
    for (int32_t n : selected) {
        if (tree[n].parent != tip) continue;
        selected[kept++] = n;
        tip = n;
    }
    selected.resize(kept);
}

void DraftTree::select_by(const std::vector<float> & score, size_t n, std::vector<int32_t> & out) const {
    out.resize(nodes_.size() - 1);
    std::iota(out.begin(), out.end(), 1);
    n = std::min(n, out.size());
    auto before = [&](int32_t a, int32_t b) {
        if (score[size_t(a)] != score[size_t(b)]) return score[size_t(a)] > score[size_t(b)];
        if (nodes_[size_t(a)].depth != nodes_[size_t(b)].depth) return nodes_[size_t(a)].depth < nodes_[size_t(b)].depth;
        return a < b;
    };
    std::partial_sort(out.begin(), out.begin() + std::ptrdiff_t(n), out.end(), before);
    out.resize(n);
}

int32_t TreeBatch::max_depth() const {
    return depth.empty() ? 0 : *std::max_element(depth.begin(), depth.end());
}

void TreeBatch::build(const DraftTree & tree, const std::vector<int32_t> & selected) {
    const size_t n = selected.size() + 1;
    node.assign(1, 0);
    node.insert(node.end(), selected.begin(), selected.end());
    // rank by V before reordering by depth
    std::vector<int32_t> & rank_of = rank_of_;
    rank_of.assign(size_t(tree.size()), 0);
    for (size_t i = 0; i < selected.size(); ++i) rank_of[size_t(selected[i])] = int32_t(i) + 1;
    std::stable_sort(node.begin() + 1, node.end(),
                     [&](int32_t a, int32_t b) { return tree[a].depth < tree[b].depth; });

    std::vector<int32_t> & entry_of = entry_of_;
    entry_of.assign(size_t(tree.size()), -1);
    token.resize(n); depth.resize(n); parent.resize(n); rank.resize(n); path.resize(n);
    for (size_t i = 0; i < n; ++i) {
        const DraftNode & d = tree[node[i]];
        entry_of[size_t(node[i])] = int32_t(i);
        token[i] = d.token;
        depth[i] = d.depth;
        rank[i] = rank_of[size_t(node[i])];
        parent[i] = i == 0 ? -1 : entry_of[size_t(d.parent)];  // parents come first: already mapped
    }

    // children, as compressed rows
    child_begin.assign(n + 1, 0);
    for (size_t i = 1; i < n; ++i) child_begin[size_t(parent[i]) + 1]++;
    std::partial_sum(child_begin.begin(), child_begin.end(), child_begin.begin());
    children.resize(n - 1);
    std::vector<int32_t> & fill = fill_;
    fill.assign(child_begin.begin(), child_begin.end() - 1);
    for (size_t i = 1; i < n; ++i) children[size_t(fill[size_t(parent[i])]++)] = int32_t(i);

    // one sequence per leaf; each entry carries the sequences of the leaves below it
    std::vector<int32_t> & leaves_below = leaves_below_;
    leaves_below.assign(n, 0);
    for (size_t i = n; i-- > 0;) {
        if (child_begin[i] == child_begin[i + 1]) leaves_below[i] = 1;
        if (i > 0) leaves_below[size_t(parent[i])] += leaves_below[i];
    }
    seq_begin.assign(n + 1, 0);
    std::partial_sum(leaves_below.begin(), leaves_below.end(), seq_begin.begin() + 1);
    seqs.resize(size_t(seq_begin[n]));
    std::copy(seq_begin.begin(), seq_begin.end() - 1, fill.begin());
    n_paths = 0;
    for (size_t i = 0; i < n; ++i) {
        if (child_begin[i] != child_begin[i + 1]) continue;
        const int32_t s = n_paths++;
        for (int32_t e = int32_t(i); e >= 0; e = parent[size_t(e)]) seqs[size_t(fill[size_t(e)]++)] = s;
    }
    for (size_t i = 0; i < n; ++i) path[i] = seqs[size_t(seq_begin[i])];
}

}  // namespace heterospec
