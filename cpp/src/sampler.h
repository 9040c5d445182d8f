// The engine's sampler: one definition of "the target's distribution" for a logits row.
//
// Plain decoding samples from it, and the speculative verifier walks draft trees with the very
// same distribution and the same random stream, so exactness follows from sharing this code.
// Order of transforms (llama.cpp's default chain): repetition penalty, top-k, top-p, min-p,
// temperature. Greedy (temperature <= 0) is the argmax after the penalty, ties to the lower id.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "heterospec/config.h"

namespace heterospec {

struct TokenProb {
    int32_t id;
    float p;
};

class Sampler {
public:
    Sampler(const SamplingParams & params, int32_t n_vocab);

    // Processed distribution of one logits row, sorted by probability (descending, ties to the
    // lower id), zero-probability tokens dropped. `history` is the text so far (prompt and
    // generated tokens), read by the repetition penalty. Greedy gives one token with p = 1.
    // The returned reference stays valid until the next call.
    const std::vector<TokenProb> & distribution(const float * logits,
                                                const int32_t * history, size_t n_history);

    // One draw from a distribution returned by distribution(); advances the random stream.
    int32_t draw(const std::vector<TokenProb> & dist);

    // distribution() then draw().
    int32_t sample(const float * logits, const int32_t * history, size_t n_history) {
        return draw(distribution(logits, history, n_history));
    }

    // A uniform number in [0, 1) from the same stream.
    double uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

    const SamplingParams & params() const { return params_; }
    uint64_t seed() const { return seed_; }
    int32_t n_vocab() const { return n_vocab_; }

private:
    void apply_penalty(const int32_t * history, size_t n_history);

    SamplingParams params_;
    int32_t n_vocab_;
    uint64_t seed_;
    std::mt19937_64 rng_;

    // reused buffers: no allocation per token after the first
    std::vector<float> logits_;
    std::vector<int32_t> order_;
    std::vector<TokenProb> dist_;
    std::vector<uint8_t> seen_;
};

}  // namespace heterospec
