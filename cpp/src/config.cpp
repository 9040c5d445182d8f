#include "heterospec/config.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <thread>
#include <utility>

#include "drafters/drafter.h"
#include "policy.h"
#include <stdexcept>

namespace heterospec {

namespace {

[[noreturn]] void bad(const std::string & what) { throw std::invalid_argument(what); }

void check_drafter(const std::string & name, const char * what) {
    if (name != "auto" && !drafter_known(name))
        bad(std::string(what) + " must be 'model', 'mtp', 'eagle3', 'dflash', 'ngram', 'hybrid' or 'auto', not '" + name + "'");
}

// More threads than this only oversubscribe the machine, and ggml's thread pool holds at most
// 512 (GGML_MAX_N_THREADS; beyond it, or where threads cannot be created, it aborts).
int32_t max_threads() {
    const unsigned cpus = std::thread::hardware_concurrency();
    return int32_t(std::min<int64_t>(512, 4 * int64_t(cpus ? cpus : 1)));
}

}  // namespace

void validate(const EngineOptions & o) {
    if (o.target.path.empty()) bad("a target model path is required");
    for (const auto & [m, what] : {std::pair{&o.target, "n_gpu_layers"}, std::pair{&o.draft, "n_gpu_layers_draft"}})
        if (m->n_gpu_layers < -1) bad(std::string(what) + " must be >= -1 (-1: all layers)");
    // the fields are unsigned for llama.cpp, but counts beyond int32 wrap inside it and here
    if (o.n_batch < 1 || o.n_batch > uint32_t(INT32_MAX)) bad("n_batch must be in 1.." + std::to_string(INT32_MAX));
    if (o.n_ctx != 0 && o.n_ctx < 8) bad("n_ctx must be 0 (the model's) or at least 8");
    if (o.n_ctx > uint32_t(INT32_MAX)) bad("n_ctx must be at most " + std::to_string(INT32_MAX));
    const int32_t most = max_threads();
    if (o.n_threads < 0 || o.n_threads > most)
        bad("n_threads must be in 0.." + std::to_string(most) + " (0: one per physical core)");
    if (o.n_threads_batch < 0 || o.n_threads_batch > most)
        bad("n_threads_batch must be in 0.." + std::to_string(most) + " (0: n_threads)");
    if (o.max_nodes < 1 || o.max_nodes > 255) bad("max_nodes must be in 1..255");
    check_drafter(o.drafter, "drafter");
    const SparsePrefillOptions & sp = o.sparse_prefill;
    if (sp.mode != "off" && sp.mode != "sample") bad("sparse_prefill must be 'off' or 'sample', not '" + sp.mode + "'");
    auto fraction = [](float x) { return x > 0.0f && x <= 1.0f; };   // NaN fails too
    if (!fraction(sp.alpha)) bad("sparse_alpha must be in (0, 1]");
    if (!fraction(sp.row_frac)) bad("sparse_row_frac must be in (0, 1]");
    if (!fraction(sp.window_frac)) bad("sparse_window_frac must be in (0, 1]");
    if (!fraction(sp.k_max_frac)) bad("sparse_k_max must be in (0, 1]");
    if (sp.min_ctx < 0) bad("sparse_min_ctx must be >= 0");
    if (sp.dense_tail < 0) bad("sparse_dense_tail must be >= 0");
    if (sp.on() && o.flash_attn == "off") bad("sparse_prefill needs flash attention (flash_attn 'auto' or 'on')");
    if (drafter_needs_model(o.drafter) && o.draft.path.empty())
        bad(drafter_unavailable(o.drafter));
}

void validate(const GenerateParams & p) {
    const SamplingParams & s = p.sampling;
    if (!std::isfinite(s.temperature)) bad("temperature must be a finite number");
    if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) bad("top_p must be in (0, 1]");
    if (!(s.min_p >= 0.0f && s.min_p <= 1.0f)) bad("min_p must be in [0, 1]");
    if (!(s.repeat_penalty > 0.0f) || !std::isfinite(s.repeat_penalty)) bad("repeat_penalty must be > 0");
    if (s.repeat_last_n < -1) bad("repeat_last_n must be >= -1 (-1: the whole context)");
    const SpecParams & t = p.spec;
    if (t.mode != "auto" && t.mode != "ar" && t.mode != "chain" && t.mode != "tree" && t.mode != "heterospec")
        bad("mode must be 'ar', 'chain', 'tree' or 'heterospec', not '" + t.mode + "'");
    if (!t.drafter.empty()) check_drafter(t.drafter, "drafter");
    {   // gamma applies with the built-in thresholds too (the C API sets it without a policy)
        Policy pol = t.policy_thresholds.empty() ? Policy::builtin() : Policy();
        if (!t.policy_thresholds.empty()) pol.thresholds = t.policy_thresholds;
        if (t.policy_gamma.size() != 3) bad("policy gamma needs 3 values");
        std::copy(t.policy_gamma.begin(), t.policy_gamma.end(), pol.gamma.begin());
        pol.validate();
    }
    if (t.depth < 1 || t.depth > 64) bad("tree depth must be in 1..64");
    if (t.branching < 1 || t.branching > 64) bad("tree branching must be in 1..64");
    if (t.width < 1 || t.width > 64) bad("tree width must be in 1..64");
    if (t.budget < 1) bad("tree budget must be >= 1 (0 nodes verified is plain decoding: mode \"ar\")");
    if (t.n_max < 0 || t.n_max > 64) bad("chain n_max must be in 0..64");
    if (!(t.p_min >= 0.0f && t.p_min <= 1.0f)) bad("chain p_min must be in [0, 1]");
    if (p.logprobs < -1 || p.logprobs > 20) bad("top_logprobs must be in 0..20");
    if (!p.sparse_prefill.empty() && p.sparse_prefill != "off" && p.sparse_prefill != "sample")
        bad("sparse_prefill must be 'off' or 'sample', not '" + p.sparse_prefill + "'");
    for (const auto & stop : p.stop)
        if (stop.empty()) bad("stop strings must not be empty");
}

}  // namespace heterospec
