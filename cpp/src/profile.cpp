// The cost profile: t_verify(n) of the target and a drafting level's cost, measured once per
// engine (or set from a stored profile), which the cost-aware allocation decides by.
#include <algorithm>
#include <stdexcept>

#include "engine_impl.h"

namespace heterospec {

// The cost ladder t_verify(n) of the target, once per engine, and the cost of a drafting
// level, once per drafter. Clears the caches.
// `progress(done, total)`, if given, follows the measurement (a big model's takes a while).
void Engine::Impl::measure_profile(Speculator & s, int32_t width, const ProfileProgress & progress) {
    if (!s.cost.profile.empty()) return;
    forget_caches();
    static constexpr int32_t kLadder[] = {1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256};
    // over recurrent state, paths x (depth + 1) tokens (path_batch.h)
    const int32_t biggest = verification == Verification::paths ? n_seqs * (max_depth + 1) : max_verify + 1;
    const int32_t most = std::min<int32_t>(biggest, int32_t(llama_n_batch(target_ctx.get())));
    const int32_t steps = int32_t(std::count_if(std::begin(kLadder), std::end(kLadder),
                                                [&](int32_t n) { return n <= most; })) + 1;
    if (target_profile.empty()) {
        const int32_t token = std::max(0, llama_vocab_bos(vocab));
        time_pass(target_ctx.get(), batch.get(), 1, token);   // warm-up
        for (int32_t n : kLadder) {
            if (n > most) break;
            target_profile.sizes.push_back(n);
            target_profile.verify_ms.push_back(time_pass(target_ctx.get(), batch.get(), n, token));
            if (progress) progress(int32_t(target_profile.sizes.size()), steps);
        }
    }
    s.cost.profile = target_profile;
    s.cost.profile.draft_level_ms = s.drafter->time_level(width);
    s.cost.profile.block_levels = s.drafter->block_levels();
    s.cost.profile.checkpoint_ms = checkpoint_ms;
    if (progress) progress(steps, steps);
}

// The paid source whose level cost a stored profile carries: the draft model's, else an EAGLE-3
// head's or a DFlash draft's (a whole block), else the target's MTP head's, else none.
uint8_t Engine::Impl::profiled_source() const {
    uint8_t sources = 0;
    for (const Speculator & s : speculators) sources |= s.drafter->paid_source();
    for (uint8_t source : {kFromModel, kFromEagle3, kFromDflash, kFromMtp})
        if (sources & source) return source;
    return 0;
}

void Engine::set_cost_profile(const std::vector<int32_t> & sizes, const std::vector<double> & verify_ms,
                              double draft_level_ms, bool projected) {
    if (sizes.empty() || sizes.size() != verify_ms.size() || sizes[0] != 1 || !(draft_level_ms >= 0))
        throw std::invalid_argument("a cost profile needs matching sizes (starting at 1) and timings");
    for (size_t i = 0; i < sizes.size(); ++i)
        if ((i > 0 && sizes[i] <= sizes[i - 1]) || !(verify_ms[i] > 0))
            throw std::invalid_argument("cost profile sizes must ascend and timings be positive");
    std::lock_guard<std::mutex> lock(impl_->mu);
    Impl & m = *impl_;
    m.target_profile = {sizes, verify_ms, 0.0};
    const uint8_t priced = m.profiled_source();
    for (Impl::Speculator & s : m.speculators) {
        s.cost = CostModel();
        s.cost.projected = projected;
        const uint8_t source = s.drafter->paid_source();
        // another paid source's level (the MTP head beside a draft model) is measured on first use
        if (source != 0 && source != priced && !projected) continue;
        // model-free drafting costs nothing here or there
        s.cost.profile = {sizes, verify_ms, source ? draft_level_ms : 0.0, m.checkpoint_ms, s.drafter->block_levels()};
    }
}

std::tuple<std::vector<int32_t>, std::vector<double>, double> Engine::cost_profile(int32_t width, bool fresh,
                                                                                  const ProfileProgress & progress) {
    Impl & m = *impl_;
    // the draft model's pass (else the MTP head's) is measured whenever there is one, whatever
    // the default drafter: the profile is cached per model pair and serves every drafter
    const uint8_t priced = m.profiled_source();
    Impl::Speculator * s = m.find_speculator(priced == kFromModel ? "model" : priced == kFromEagle3 ? "eagle3"
                                             : priced == kFromDflash ? "dflash" : priced == kFromMtp ? "mtp" : "ngram");
    if (!s) throw std::invalid_argument("this target cannot speculate (its memory cannot hold a draft tree)");
    std::lock_guard<std::mutex> lock(m.mu);
    m.gen.done = true;   // measuring clears the caches: any generation in progress ends
    if (fresh) {
        m.target_profile = CostProfile();
        for (Impl::Speculator & other : m.speculators) other.cost = CostModel();
    }
    m.measure_profile(*s, width, progress);
    return {s->cost.profile.sizes, s->cost.profile.verify_ms, s->cost.profile.draft_level_ms};
}

}  // namespace heterospec
