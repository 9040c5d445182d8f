#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace heterospec {

Sampler::Sampler(const SamplingParams & params, int32_t n_vocab)
    : params_(params), n_vocab_(n_vocab) {
    if (n_vocab <= 0) throw std::invalid_argument("sampler: empty vocabulary");
    seed_ = params.seed;
    if (seed_ == UINT64_MAX) {
        std::random_device rd;
        seed_ = (uint64_t(rd()) << 32) ^ rd();
    }
    rng_.seed(seed_);
}

void Sampler::apply_penalty(const int32_t * history, size_t n_history) {
    if (params_.repeat_penalty == 1.0f || n_history == 0 || params_.repeat_last_n == 0) return;
    size_t n = params_.repeat_last_n < 0 ? n_history : std::min(n_history, size_t(params_.repeat_last_n));
    const int32_t * begin = history + (n_history - n);
    seen_.resize(n_vocab_, 0);
    // Each distinct token is penalised once, however often it occurs (llama.cpp's rule).
    for (size_t i = 0; i < n; ++i) {
        int32_t t = begin[i];
        if (t < 0 || t >= n_vocab_ || seen_[t]) continue;
        seen_[t] = 1;
        float & l = logits_[t];
        l = l <= 0 ? l * params_.repeat_penalty : l / params_.repeat_penalty;
    }
    for (size_t i = 0; i < n; ++i) {
        int32_t t = begin[i];
        if (t >= 0 && t < n_vocab_) seen_[t] = 0;
    }
}

const std::vector<TokenProb> & Sampler::distribution(const float * logits,
                                                     const int32_t * history, size_t n_history) {
    dist_.clear();
    const bool penalise = params_.repeat_penalty != 1.0f && n_history > 0 && params_.repeat_last_n != 0;
    if (params_.greedy() && !penalise) {
        // no copy of the row: first maximum wins, ties to the lower id (llama.cpp's greedy)
        dist_.push_back({int32_t(std::max_element(logits, logits + n_vocab_) - logits), 1.0f});
        return dist_;
    }
    logits_.assign(logits, logits + n_vocab_);
    apply_penalty(history, n_history);

    if (params_.greedy()) {
        int32_t best = int32_t(std::max_element(logits_.begin(), logits_.end()) - logits_.begin());
        dist_.push_back({best, 1.0f});
        return dist_;
    }

    // top-k: keep the k highest logits, sorted (ties to the lower id for determinism)
    const int32_t k = params_.top_k > 0 ? std::min(params_.top_k, n_vocab_) : n_vocab_;
    order_.resize(n_vocab_);
    std::iota(order_.begin(), order_.end(), 0);
    auto higher = [this](int32_t a, int32_t b) {
        return logits_[a] > logits_[b] || (logits_[a] == logits_[b] && a < b);
    };
    std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), higher);
    size_t n = size_t(k);

    // top-p and min-p are judged on the temperature-1 distribution over the survivors
    const float lmax = logits_[order_[0]];
    if (params_.top_p < 1.0f) {
        double z = 0;
        for (size_t i = 0; i < n; ++i) z += std::exp(double(logits_[order_[i]] - lmax));
        double cum = 0;
        for (size_t i = 0; i < n; ++i) {
            cum += std::exp(double(logits_[order_[i]] - lmax)) / z;
            if (cum >= params_.top_p) { n = i + 1; break; }
        }
    }
    if (params_.min_p > 0.0f) {
        const float min_logit = lmax + std::log(params_.min_p);
        size_t keep = 1;
        while (keep < n && logits_[order_[keep]] >= min_logit) ++keep;
        n = keep;
    }

    // temperature, then softmax over what is left
    const double inv_t = 1.0 / params_.temperature;
    double z = 0;
    dist_.resize(n);
    for (size_t i = 0; i < n; ++i) {
        double e = std::exp(double(logits_[order_[i]] - lmax) * inv_t);
        dist_[i] = {order_[i], float(e)};
        z += e;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; ++i) {
        float p = float(dist_[i].p / z);
        if (p > 0.0f) dist_[m++] = {dist_[i].id, p};
    }
    dist_.resize(m);
    return dist_;
}

int32_t Sampler::draw(const std::vector<TokenProb> & dist) {
    if (dist.empty()) throw std::logic_error("sampler: empty distribution");
    if (dist.size() == 1) return dist[0].id;  // greedy draws consume no randomness
    // 53-bit uniform in [0, 1) from the 64-bit engine, identical on every platform
    const double u = uniform();
    double cum = 0;
    for (const auto & tp : dist) {
        cum += tp.p;
        if (u < cum) return tp.id;
    }
    return dist.back().id;  // rounding left a sliver above the last cumulative value
}

}  // namespace heterospec
