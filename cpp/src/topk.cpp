#include "topk.h"

#include <algorithm>
#include <cmath>

namespace heterospec {

void softmax_top_k(const float * logits, int32_t n_vocab, int32_t k, std::vector<TokenProb> & out) {
    k = std::max(1, std::min(k, n_vocab));
    out.clear();
    // insertion into a small sorted list: cheap for the k of a draft tree (a few to a few dozen)
    float kth = -INFINITY;
    for (int32_t i = 0; i < n_vocab; ++i) {
        const float l = logits[i];
        if (int32_t(out.size()) == k && !(l > kth)) continue;
        if (int32_t(out.size()) == k) out.pop_back();
        auto at = std::upper_bound(out.begin(), out.end(), l,
                                   [](float v, const TokenProb & t) { return v > t.p; });
        out.insert(at, {i, l});
        kth = out.back().p;
    }
    const float mx = out.front().p;
    float z = 0.0f;
    for (int32_t i = 0; i < n_vocab; ++i) z += std::exp(logits[i] - mx);
    for (auto & t : out) t.p = std::exp(t.p - mx) / z;
}

}  // namespace heterospec
