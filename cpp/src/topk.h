// The k most likely tokens of softmax(logits), without sorting or copying the vocabulary row:
// one pass keeps the k largest logits and the maximum, one pass sums the normaliser.
#pragma once

#include <cstdint>
#include <vector>

#include "heterospec/stats.h"
#include "sampler.h"

namespace heterospec {

// sum over i of exp(x[i] - mx), for x[i] <= mx (fast, vectorised).
float sum_exp(const float * x, int32_t n, float mx);

// Writes the top k (token, probability) pairs, most likely first, ties to the lower id.
void softmax_top_k(const float * logits, int32_t n_vocab, int32_t k, std::vector<TokenProb> & out);

// log sum over i of exp(logits[i]), exactly (in double): for figures that are reported.
float log_sum_exp(const float * logits, int32_t n_vocab);

// log softmax(logits)[token] and the n_top most likely tokens' log-probabilities.
TokenLogprob token_logprob(const float * logits, int32_t n_vocab, int32_t token, int32_t n_top);

}  // namespace heterospec
