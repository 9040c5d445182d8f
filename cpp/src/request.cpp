// A request's way through the engine: check() refuses what cannot run, start() sets up the
// generation and processes the prompt, step() runs one plain or speculative step.
#include <algorithm>
#include <stdexcept>

#include "engine_impl.h"

namespace heterospec {

void Engine::check(const std::vector<int32_t> & prompt, const GenerateParams & params) const {
    const Impl & m = *impl_;
    validate(params);
    if (prompt.empty()) throw std::invalid_argument("the prompt is empty");
    for (int32_t t : prompt)
        if (t < 0 || t >= m.n_vocab)
            throw std::invalid_argument("prompt token id " + std::to_string(t) + " is outside the vocabulary");
    if (prompt.size() > m.n_ctx)
        throw std::invalid_argument("the prompt has " + std::to_string(prompt.size()) +
                                    " tokens but the context holds " + std::to_string(m.n_ctx) +
                                    "; shorten it or raise n_ctx (-c)");
    const Mode mode = resolve_mode(params.spec.mode, m.verification);
    const SpecParams & sp = params.spec;
    const std::string & drafter_name = m.drafter_for(sp);
    bool known = false;
    for (const Impl::Speculator & s : m.speculators) known |= s.name == drafter_name;
    if (mode != Mode::ar && !known)
        throw std::invalid_argument(m.unavailable(drafter_name));
    const int32_t most_nodes = sp.budget + (mode == Mode::heterospec ? Policy::alpha(sp.depth) : 0);
    if ((mode == Mode::tree || mode == Mode::heterospec) && (most_nodes > m.opts.max_nodes || sp.width > m.opts.max_nodes))
        throw std::invalid_argument("tree budget and width must be at most max_nodes (" +
                                    std::to_string(m.opts.max_nodes) + ")");
    if (mode == Mode::chain && sp.n_max > m.opts.max_nodes)
        throw std::invalid_argument("chain n_max must be at most max_nodes (" + std::to_string(m.opts.max_nodes) + ")");
    m.sparse_for(params.sparse_prefill);
}

void Engine::start(const std::vector<int32_t> & prompt, const GenerateParams & params) {
    Impl & m = *impl_;
    check(prompt, params);
    // the default is the cost-aware HeteroSpec mode: it never runs slower than plain
    const Mode mode = resolve_mode(params.spec.mode, m.verification);
    const SpecParams & sp = params.spec;
    Impl::Speculator * spec = mode == Mode::ar ? nullptr : m.find_speculator(m.drafter_for(sp));

    std::lock_guard<std::mutex> lock(m.mu);
    m.cancel_requested = false;
    Generation & g = m.gen;
    g = Generation();
    g.params = params;
    g.mode = mode;
    g.sparse = m.sparse_for(params.sparse_prefill);
    g.params.spec.mode = g.stats.mode = mode_name(mode);
    m.drafter = spec ? spec->drafter.get() : nullptr;
    if (m.verifier) m.verifier->set_listener(m.drafter && m.drafter->wants_target_hidden() ? m.drafter : nullptr);
    m.cost = spec ? &spec->cost : nullptr;
    if (spec) g.params.spec.drafter = g.stats.drafter = spec->name;
    m.policy = sp.policy_thresholds.empty() ? Policy::builtin() : Policy();
    if (!sp.policy_thresholds.empty()) m.policy.thresholds = sp.policy_thresholds;
    std::copy(sp.policy_gamma.begin(), sp.policy_gamma.end(), m.policy.gamma.begin());
    g.sampler.reset(new Sampler(params.sampling, m.n_vocab));
    g.text.reset(new TextStream(params.stop));
    g.history = prompt;
    m.index.begin_document();
    for (int32_t t : prompt) m.index.push(t);
    g.stats.prompt_tokens = int32_t(prompt.size());
    g.t_start = now_ms();
    g.done = false;
    if (params.max_tokens == 0) {
        g.finish_reason = "length";
        m.finish();
        return;
    }
    try {
        if (m.cost_aware()) {
            m.measure_profile(*spec, sp.width);
            m.cost->begin_generation();
            g.t_start = now_ms();   // measuring the machine is not the prompt's time
        }
        m.process_prompt(prompt, params.cache_prompt);
    } catch (...) {
        g.done = true;
        m.forget_caches();
        throw;
    }
}

StepOutput Engine::step() {
    Impl & m = *impl_;
    std::lock_guard<std::mutex> lock(m.mu);
    Generation & g = m.gen;
    StepOutput out;
    if (g.done) {
        out.done = true;
        return out;
    }
    bool more;
    try {
        if (m.cancel_requested.exchange(false)) {
            g.finish_reason = "cancelled";
            more = false;
        } else {
            more = g.mode != Mode::ar ? m.step_spec() : m.step_ar();
        }
    } catch (...) {
        g.done = true;
        m.forget_caches();
        throw;
    }
    out.text = g.text->take_ready();
    if (!more) {
        out.text += g.text->finish();
        m.finish();
    }
    g.output += out.text;
    out.done = g.done;
    return out;
}

}  // namespace heterospec
