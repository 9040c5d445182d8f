#include "entropy.h"

#include <cmath>

namespace heterospec {

float topk_entropy(const TokenProb * top, size_t k) {
    double z = 0;
    for (size_t i = 0; i < k; ++i) z += top[i].p;
    if (z <= 0) return 0.0f;
    double h = 0;
    for (size_t i = 0; i < k; ++i) {
        const double p = top[i].p / z;
        if (p > 0) h -= p * std::log(p);
    }
    return float(h);
}

float meta_path_entropy(const DraftTree & tree) {
    int32_t best = -1;
    for (int32_t i = 1; i < tree.size(); ++i) {
        const DraftNode & n = tree[i];
        if (best < 0 || n.depth > tree[best].depth || (n.depth == tree[best].depth && n.q > tree[best].q)) best = i;
    }
    if (best < 0) return 0.0f;
    double h = 0;
    for (int32_t a = tree[best].parent; a >= 0; a = tree[a].parent) h += tree[a].h >= 0 ? tree[a].h : 0.0f;
    return float(h);
}

}  // namespace heterospec
