#include "topk.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace heterospec {

namespace {

#pragma omp declare simd
inline float exp_nonpos(float v) {
    const float t = (v > -87.0f ? v : -87.0f) * 1.44269504f;     // exp(v) = 2^t, t <= 0
    const int32_t tr = int32_t(t);                                 // truncation, then floor
    const int32_t k = tr - (float(tr) > t ? 1 : 0);
    const float f = t - float(k);                                  // f in [0, 1)
    float p = 1.53533162e-4f;                                      // 2^f, polynomial
    p = p * f + 1.33989679e-3f;
    p = p * f + 9.61844143e-3f;
    p = p * f + 5.55034867e-2f;
    p = p * f + 2.40226510e-1f;
    p = p * f + 6.93147182e-1f;
    p = p * f + 1.0f;
    const int32_t bits = (k + 127) << 23;                          // 2^k as a float, k >= -126
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

}  // namespace

// A branch-free polynomial exp (relative error ~1e-7), summed as a SIMD reduction (built with
// -fopenmp-simd): a libm call per vocabulary entry would dominate the drafter's host time.
// Draft probabilities only rank and weigh tree nodes; they never decide the output.
float sum_exp(const float * x, int32_t n, float mx) {
    float z = 0.0f;
#pragma omp simd reduction(+ : z)
    for (int32_t i = 0; i < n; ++i) z += exp_nonpos(x[i] - mx);
    return z;
}

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
    const float z = sum_exp(logits, n_vocab, mx);
    for (auto & t : out) t.p = std::exp(t.p - mx) / z;
}

float log_sum_exp(const float * logits, int32_t n_vocab) {
    const float mx = *std::max_element(logits, logits + n_vocab);
    double z = 0.0;
    for (int32_t i = 0; i < n_vocab; ++i) z += std::exp(double(logits[i] - mx));
    return float(std::log(z)) + mx;
}

TokenLogprob token_logprob(const float * logits, int32_t n_vocab, int32_t token, int32_t n_top) {
    const float log_z = log_sum_exp(logits, n_vocab);
    TokenLogprob out;
    out.token = token;
    out.logprob = logits[token] - log_z;
    if (n_top > 0) {
        std::vector<TokenProb> top;
        softmax_top_k(logits, n_vocab, n_top, top);
        for (const TokenProb & t : top) out.top.emplace_back(t.id, logits[t.id] - log_z);
    }
    return out;
}

}  // namespace heterospec
