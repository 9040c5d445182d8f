#include "cost_model.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "draft_tree.h"

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

namespace {
double logit(float p) {
    const double x = std::min(std::max(double(p), 1e-4), 1.0 - 1e-4);
    return std::log(x / (1.0 - x));
}
double ngram_only(const NodeFeatures & x) { return x.source == kFromNgram ? 1.0 : 0.0; }
double both(const NodeFeatures & x) { return (x.source & kFromNgram) && (x.source & kPaidSources) ? 1.0 : 0.0; }
}  // namespace

double AcceptanceModel::score(const NodeFeatures & x) const {
    double z = w_[0] + generation_bias_ + w_[1] * logit(x.q) + w_[2] * (x.agreement - 0.5) + w_[3] * x.h_parent;
    z += w_[4] * ngram_only(x) + w_[5] * both(x);
    if (x.path_bin >= 0 && x.path_bin < kEntropyBins) z += w_[size_t(6 + x.path_bin)];
    return z;
}

float AcceptanceModel::estimate(const NodeFeatures & x) const {
    return float(1.0 / (1.0 + std::exp(-score(x))));
}

void AcceptanceModel::observe(const NodeFeatures & x, bool accepted) {
    // one step of gradient ascent on the log-likelihood
    const double rate = 0.02;
    const double residual = (accepted ? 1.0 : 0.0) - estimate(x);
    const double g = rate * residual;
    generation_bias_ += 0.1 * residual;
    w_[0] += g;
    w_[1] += g * logit(x.q);
    w_[2] += g * (x.agreement - 0.5);
    w_[3] += g * x.h_parent;
    w_[4] += g * ngram_only(x);
    w_[5] += g * both(x);
    if (x.path_bin >= 0 && x.path_bin < kEntropyBins) w_[size_t(6 + x.path_bin)] += g;
}

BudgetChoice choose_budget(const CostProfile & profile, const std::vector<float> & accept, int32_t max_budget,
                           double draft_ms, double long_run_rate, const std::vector<int32_t> * batch_tokens) {
    auto choice = [&](int32_t n, double tokens) {
        const int32_t batch = batch_tokens ? (*batch_tokens)[size_t(n)] : n + 1;
        const double ms = draft_ms + profile.verify(batch) + (n > 0 ? profile.checkpoint_ms : 0.0);
        return BudgetChoice{n, tokens, tokens / ms, long_run_rate > 0 ? tokens - long_run_rate * ms : tokens / ms};
    };
    // n = 0 verifies the root alone: one token for the drafting already spent and one pass
    BudgetChoice best = choice(0, 1.0);
    double sum = 1.0;
    int32_t most = std::min<int32_t>(max_budget, int32_t(accept.size()));
    if (batch_tokens) most = std::min(most, int32_t(batch_tokens->size()) - 1);
    for (int32_t n = 1; n <= most; ++n) {   // the root rides along: n + 1 tokens
        sum += accept[size_t(n - 1)];
        const BudgetChoice c = choice(n, sum);
        if (c.score > best.score) best = c;
    }
    return best;
}

bool worth_drafting(const CostProfile & profile, float a, int32_t max_budget, double spent_ms, double level_ms,
                    int32_t max_depth) {
    const double plain = 1.0 / (spent_ms + profile.verify(1));
    double expected = 1.0, ak = 1.0;
    int32_t n = 0;
    for (int32_t size : profile.sizes) {
        if (size - 1 < 1) continue;
        if (size - 1 > max_budget) break;
        // a block's levels cost nothing past the first, but a block is no deeper than max_depth
        if (profile.block_levels && size - 1 > max_depth) break;
        for (; n < size - 1; ++n) expected += (ak *= a);
        // (spent_ms holds the first level's pass)
        if (expected / (spent_ms + (profile.level_passes(n) - 1) * level_ms + profile.verify(size) + profile.checkpoint_ms) > plain)
            return true;
    }
    return false;
}

int32_t worth_extending(const CostProfile & profile, const std::vector<float> & accept,
                        const std::vector<float> & child_accept, int32_t max_budget, double spent_ms, double level_ms,
                        double long_run_rate, std::vector<float> & more) {
    if (child_accept.empty()) return 0;
    // the guesses take the places their estimates earn among the drafted nodes (best first)
    more.assign(accept.begin(), accept.end());
    more.insert(more.end(), child_accept.begin(), child_accept.end());
    std::sort(more.begin(), more.end(), std::greater<float>());
    const double next = profile.block_levels ? 0.0 : level_ms;   // the next level's cost
    const BudgetChoice with = choose_budget(profile, more, max_budget, spent_ms + next, long_run_rate);
    if (with.score <= choose_budget(profile, accept, max_budget, spent_ms, long_run_rate).score || with.budget == 0)
        return 0;
    const float cut = more[size_t(with.budget) - 1];   // the weakest node chosen
    int32_t n = 0;
    for (float c : child_accept) n += c >= cut;
    return n;
}

bool worth_paid_levels(const CostProfile & profile, const std::vector<float> & free_accept, float a,
                       int32_t max_budget, int32_t max_depth, double spent_ms, double level_ms,
                       double long_run_rate, std::vector<float> & more) {
    const double base = choose_budget(profile, free_accept, max_budget, spent_ms, long_run_rate).score;
    more.assign(free_accept.begin(), free_accept.end());
    double ak = 1.0;
    for (int32_t d = 1; d <= max_depth; ++d) {
        ak *= a;
        more.insert(std::upper_bound(more.begin(), more.end(), float(ak), std::greater<float>()), float(ak));
        if (choose_budget(profile, more, max_budget, spent_ms + profile.level_passes(d) * level_ms, long_run_rate).score > base)
            return true;
    }
    return false;
}

bool CostModel::should_draft(int32_t max_depth, bool paid) {
    if (!gate_.speculate()) return false;
    const double level = paid ? level_ms() : 0.0;
    for (int32_t d = 1; d <= max_depth; ++d)
        if ((1.0 + d) / (costs().level_passes(d) * level + verify_ms(d + 1) + profile.checkpoint_ms) * verify_ms(1) > 1.0)
            return true;
    return false;
}

bool CostModel::should_pay(const std::vector<float> & free_accept, int32_t max_budget, int32_t max_depth,
                           double spent_ms) {
    if (paid_gate_.speculate() && worth_paid_levels(costs(), free_accept, paid_agreement(), max_budget, max_depth,
                                                    spent_ms, level_ms(), long_run_rate(), scratch_))
        return true;
    paid_agreement_ += (kPaidAgreementPrior - paid_agreement_) / 64;
    return false;
}

void CostModel::observe_paid(int32_t paid_tokens, double paid_ms) {
    // Paid levels pay while the tokens only they found save more plain steps than they cost.
    const double decay = 1.0 - 1.0 / 32;
    paid_tokens_ = decay * paid_tokens_ + paid_tokens;
    paid_ms_ = decay * paid_ms_ + paid_ms;
    paid_gate_.report(paid_tokens_ * verify_ms(1) >= paid_ms_);
}

bool CostModel::worth_drafting(float top_accept, int32_t max_budget, double spent_ms, bool paid,
                               int32_t max_depth) const {
    return heterospec::worth_drafting(costs(), top_accept, max_budget, spent_ms, paid ? level_ms() : 0.0, max_depth);
}

int32_t CostModel::worth_extending(const std::vector<float> & accept, const std::vector<float> & child_accept,
                                int32_t max_budget, double spent_ms) const {
    return heterospec::worth_extending(costs(), accept, child_accept, max_budget, spent_ms, level_ms(),
                                       long_run_rate(), scratch_);
}

BudgetChoice CostModel::choose(const std::vector<float> & accept, int32_t max_budget, double spent_ms,
                               const std::vector<int32_t> * batch_tokens) const {
    return choose_budget(costs(), accept, max_budget, spent_ms, long_run_rate(), batch_tokens);
}

double CostModel::profile_scale() const {
    double far = 1.0;
    for (double s : verify_scale_)
        if (s > 0 && std::fabs(std::log(s)) > std::fabs(std::log(far))) far = s;
    return far;
}

void CostModel::rescale() {
    realised_ = profile;
    for (size_t i = 0; i < realised_.sizes.size(); ++i) {
        const double s = verify_scale_[realised_.sizes[i] > 1];
        if (s > 0) realised_.verify_ms[i] *= s;
    }
}

void CostModel::observe_agreement(bool agreed) {
    agreement_ = 0.8 * agreement_ + 0.2 * (agreed ? 1.0 : 0.0);
    long_agreement_ = 0.99 * long_agreement_ + 0.01 * (agreed ? 1.0 : 0.0);
}

void CostModel::observe_step(const StepRecord & step) {
    StepRecord r = step;
    if (projected) {   // what the step would have cost on the profiled device
        r.draft_ms = r.draft_passes * profile.draft_level_ms;
        r.verify_ms = profile.verify(r.verified_tokens);
        r.checkpoint_ms = r.verified_tokens > 1 ? profile.checkpoint_ms : 0.0;
        if (r.paid_apart) r.paid_ms = r.draft_ms;   // only the paid levels make passes
    }
    const double decay = 1.0 - 1.0 / 64;
    all_tokens_ = decay * all_tokens_ + r.emitted;
    all_ms_ = decay * all_ms_ + r.draft_ms + r.verify_ms + r.checkpoint_ms;
    auto ema = [](double & avg, double x) { avg = avg < 0 ? x : 0.8 * avg + 0.2 * x; };
    ema(verify_scale_[r.verified_tokens > 1], r.verify_ms / profile.verify(r.verified_tokens));
    rescale();
    if (r.draft_passes > 0 && (r.drafted || r.paid_apart)) ema(level_ms_, (r.paid_apart ? r.paid_ms : r.draft_ms) / r.draft_passes);
    if (r.paid_apart) {
        observe_paid(r.paid_tokens, r.paid_ms);
        r.emitted -= r.paid_tokens;
        r.draft_ms -= r.paid_ms;
    }
    if (!r.drafted) return;
    // Speculation pays while its realised rate, over the last few dozen speculative steps, beats
    // plain decoding's. One step alone says little: accepted lengths vary widely.
    const double spec_decay = 1.0 - 1.0 / 32;
    spec_tokens_ = spec_decay * spec_tokens_ + r.emitted;
    spec_ms_ = spec_decay * spec_ms_ + r.draft_ms + r.verify_ms + r.checkpoint_ms;
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
