#include "cost_model.h"

#include <algorithm>
#include <cmath>
#include <functional>

namespace heterospec {

double CostProfile::verify(int32_t n) const {
    if (sizes.empty()) return 0.0;
    if (n <= sizes.front()) return verify_ms.front();
    for (size_t i = 1; i < sizes.size(); ++i) {
        if (n <= sizes[i]) {
            const double f = double(n - sizes[i - 1]) / double(sizes[i] - sizes[i - 1]);
            return verify_ms[i - 1] + f * (verify_ms[i] - verify_ms[i - 1]);
        }
    }
    // beyond the ladder: extend the last segment's slope
    const size_t k = sizes.size() - 1;
    const double slope = k ? (verify_ms[k] - verify_ms[k - 1]) / double(sizes[k] - sizes[k - 1]) : verify_ms[k];
    return verify_ms[k] + slope * double(n - sizes[k]);
}

int AcceptanceModel::bin_of(float v) {
    // bins of width 0.5 in log2 V: [1, 0.71), [0.71, 0.5), ... ; the last bin takes the rest
    if (!(v > 0.0f)) return kBins - 1;
    const int b = int(-std::log2(std::min(v, 1.0f)) * 2.0f);
    return std::min(b, kBins - 1);
}

float AcceptanceModel::estimate(float v) const {
    const int b = bin_of(v);
    const double prior_weight = 4.0;   // the prior P(accept) = V counts as four observations
    return float((accepted_[size_t(b)] + prior_weight * v) / (seen_[size_t(b)] + prior_weight));
}

void AcceptanceModel::observe(float v, bool accepted) {
    const int b = bin_of(v);
    seen_[size_t(b)] += 1;
    accepted_[size_t(b)] += accepted ? 1 : 0;
}

void AcceptanceModel::reset() {
    seen_.fill(0);
    accepted_.fill(0);
}

BudgetChoice choose_budget(const CostProfile & profile, const AcceptanceModel & acc,
                           const std::vector<float> & values, int32_t max_budget, double draft_ms) {
    // n = 0 verifies the root alone: one token for the drafting already spent and one pass
    BudgetChoice best{0, 1.0, 1.0 / (draft_ms + profile.verify(1))};
    double sum = 1.0;
    size_t taken = 0;
    auto consider = [&](int32_t n) {
        for (; taken < size_t(n); ++taken) sum += acc.estimate(values[taken]);
        const double rate = sum / (draft_ms + profile.verify(n + 1));
        if (rate > best.expected_rate) best = {n, sum, rate};
    };
    const int32_t most = std::min<int32_t>(max_budget, int32_t(values.size()));
    for (int32_t size : profile.sizes) {
        const int32_t n = size - 1;                  // the root rides along
        if (n < 1) continue;
        if (n >= most) break;
        consider(n);
    }
    if (most >= 1) consider(most);   // every node there is (or the bound), between ladder sizes if need be
    return best;
}

bool worth_drafting(const CostProfile & profile, const AcceptanceModel & acc, float top_value,
                    int32_t max_budget, double spent_ms, double level_ms) {
    const double a = acc.estimate(top_value);
    const double plain = 1.0 / (spent_ms + profile.verify(1));
    double expected = 1.0, ak = 1.0;
    int32_t n = 0;
    for (int32_t size : profile.sizes) {
        if (size - 1 < 1) continue;
        if (size - 1 > max_budget) break;
        for (; n < size - 1; ++n) expected += (ak *= a);
        if (expected / (spent_ms + (n - 1) * level_ms + profile.verify(size)) > plain) return true;
    }
    return false;
}

bool worth_extending(const CostProfile & profile, const AcceptanceModel & acc, const std::vector<float> & values,
                     const std::vector<float> & child_values, int32_t max_budget, double spent_ms, double level_ms) {
    if (child_values.empty()) return false;
    const double now = choose_budget(profile, acc, values, max_budget, spent_ms).expected_rate;
    std::vector<float> more(values.size() + child_values.size());
    std::merge(values.begin(), values.end(), child_values.begin(), child_values.end(), more.begin(),
               std::greater<float>());
    return choose_budget(profile, acc, more, max_budget, spent_ms + level_ms).expected_rate > now;
}

bool CostModel::should_draft(int32_t max_depth) {
    if (!gate_.speculate()) return false;
    for (int32_t d = 1; d <= max_depth; ++d)
        if ((1.0 + d) / (d * level_ms() + verify_ms(d + 1)) * verify_ms(1) > 1.0) return true;
    return false;
}

bool CostModel::worth_drafting(float top_value, int32_t max_budget, double spent_ms) const {
    return heterospec::worth_drafting(profile, acceptance, top_value, max_budget, spent_ms, level_ms());
}

bool CostModel::worth_extending(const std::vector<float> & values, const std::vector<float> & child_values,
                                int32_t max_budget, double spent_ms) const {
    return heterospec::worth_extending(profile, acceptance, values, child_values, max_budget, spent_ms, level_ms());
}

BudgetChoice CostModel::choose(const std::vector<float> & values, int32_t max_budget, double spent_ms) const {
    return choose_budget(profile, acceptance, values, max_budget, spent_ms);
}

void CostModel::observe_step(int32_t emitted, int32_t draft_passes, double draft_ms, int32_t verified_tokens,
                             double verified_ms) {
    if (projected) {   // what the step would have cost on the profiled device
        draft_ms = draft_passes * profile.draft_level_ms;
        verified_ms = profile.verify(verified_tokens);
    }
    auto ema = [](double & avg, double x) { avg = avg < 0 ? x : 0.8 * avg + 0.2 * x; };
    if (draft_passes > 0) ema(level_ms_, draft_ms / draft_passes);
    ema(verify_scale_, verified_ms / profile.verify(verified_tokens));
    // Speculation pays while its realised rate, over the last few dozen speculative steps, beats
    // plain decoding's. One step alone says little: accepted lengths vary widely.
    const double decay = 1.0 - 1.0 / 32;
    spec_tokens_ = decay * spec_tokens_ + emitted;
    spec_ms_ = decay * spec_ms_ + draft_ms + verified_ms;
    gate_.report(spec_tokens_ / spec_ms_ * verify_ms(1) >= 1.0);
}

bool SpeculationGate::speculate() {
    if (wait_ > 0) {
        --wait_;
        return false;
    }
    return true;
}

void SpeculationGate::report(bool paid) {
    if (paid) {
        pause_ = 1;
        return;
    }
    wait_ = pause_;
    pause_ = std::min(pause_ * 2, 64);
}

}  // namespace heterospec
