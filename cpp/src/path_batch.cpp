#include "path_batch.h"

#include <algorithm>

namespace heterospec {

void fit_path_batch(const DraftTree & tree, const std::vector<int32_t> & selected, int32_t max_paths,
                    int32_t max_depth, int32_t max_tokens, std::vector<int32_t> & kept, std::vector<int32_t> & tokens,
                    std::vector<uint8_t> & scratch) {
    // paths = the kept nodes without a kept child (the root alone: one path)
    enum : uint8_t { kIn = 1, kHasChild = 2 };
    std::vector<uint8_t> & flags = scratch;
    flags.assign(size_t(tree.size()), 0);
    flags[0] = kIn;
    int32_t paths = 1, deepest = 0;
    kept.clear();
    tokens.assign(1, 1);
    for (size_t i = 0; i < selected.size(); ++i) {
        const DraftNode & d = tree[selected[i]];
        uint8_t & parent = flags[size_t(d.parent)];
        if (!(parent & kIn)) continue;   // below a node left out
        const int32_t p = paths + ((parent & kHasChild) ? 1 : 0);
        const int32_t depth = std::max(deepest, d.depth);
        if (p > max_paths || d.depth > max_depth) continue;
        if (p * (depth + 1) > max_tokens) break;
        flags[size_t(selected[i])] |= kIn;
        parent |= kHasChild;
        paths = p;
        deepest = depth;
        kept.push_back(int32_t(i));
        tokens.push_back(paths * (deepest + 1));
    }
}

int32_t paths_within(size_t state_bytes, int32_t planes, size_t budget, int32_t most) {
    const double per_path = double(state_bytes) * double(1 + planes);
    const double fit = per_path > 0 ? double(budget) / per_path : double(most);
    return std::max(1, int32_t(std::min(double(most), fit)));
}

void PathBatch::build(const TreeBatch & tb) {
    n_paths = tb.n_paths;
    len = tb.max_depth() + 1;
    token.assign(size_t(n_paths) * size_t(len), -1);
    entry.assign(token.size(), -1);
    row.assign(size_t(tb.size()), -1);
    // each leaf's path, root first; TreeBatch numbers the leaves' paths 0..n_paths-1
    for (int32_t e = 0; e < tb.size(); ++e) {
        if (tb.child_begin[size_t(e)] != tb.child_begin[size_t(e) + 1]) continue;
        const int32_t p = tb.path[size_t(e)];
        const size_t base = size_t(p) * size_t(len);
        for (int32_t a = e; a >= 0; a = tb.parent[size_t(a)]) {
            const size_t r = base + size_t(tb.depth[size_t(a)]);
            token[r] = tb.token[size_t(a)];
            entry[r] = a;
            if (tb.path[size_t(a)] == p) row[size_t(a)] = int32_t(r);
        }
        for (int32_t j = tb.depth[size_t(e)] + 1; j < len; ++j) token[base + size_t(j)] = tb.token[size_t(e)];
    }
}

}  // namespace heterospec
