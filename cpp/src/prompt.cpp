// Prompt processing: the prompt cache (what the KV caches keep of the last call), sparse
// prefill, and teacher-forced scoring (Engine::score), which is prompt processing alone.
#include <algorithm>
#include <stdexcept>

#include "engine_impl.h"
#include "sparse_prefill.h"
#include "topk.h"

namespace heterospec {

// Runs `tokens` through the target at positions n_past.., logits for the last one only.
void Engine::Impl::decode_target(const int32_t * tokens, size_t n) {
    decode_run(target_ctx.get(), batch.get(), tokens, n, gen.n_past, 1, true, "target");
    target_cached.keep(size_t(gen.n_past));
    target_cached.append(tokens, n);
    gen.n_past += llama_pos(n);
}

// Where sparse prefill ends in a prompt of n tokens: its last dense_tail tokens, and at least
// its last token, run dense (the same cut in every mode, so that all see the same prompt); 0
// when sparse prefill is off or the prompt is all tail.
size_t Engine::Impl::sparse_end(size_t n) const {
    const SparsePrefillOptions & sp = gen.sparse;
    return sp.on() && n > size_t(sp.dense_tail) ? std::min(n - size_t(sp.dense_tail), n - 1) : 0;
}

// The sparse prefill a call asks for ("off", "sample" or "": the engine's), with the engine's
// sparse options; throws where this engine cannot run it.
SparsePrefillOptions Engine::Impl::sparse_for(const std::string & mode) const {
    SparsePrefillOptions sp = opts.sparse_prefill;
    if (!mode.empty()) sp.mode = mode;
    if (sp.on() && opts.flash_attn == "off")
        throw std::invalid_argument("sparse_prefill needs flash attention: this engine was made with flash_attn='off'");
    check_sparse_prefill(sp);
    return sp;
}

// Processes the prompt. Speculative modes run all but its last token, the first step's
// root; plain decoding runs it all, for the first token's logits. With the prompt cache,
// the prefix both caches hold already is kept. Sparse prefill covers the target's prompt
// processing up to sparse_end (and the draft model's whole prompt: it only proposes); with
// it, plain decoding too runs the last token apart (dense, as the first speculative step
// does), so that both see the same prompt.
void Engine::Impl::process_prompt(const std::vector<int32_t> & prompt, bool reuse) {
    Generation & g = gen;
    const size_t cut = sparse_end(prompt.size());
    if (g.mode != Mode::ar) {
        const std::vector<int32_t> prefix(prompt.begin(), prompt.end() - 1);
        // a head reading the target's states gets them for every token the target runs: the
        // target keeps no more than the head saw
        const size_t known = drafter->known_prefix(prefix);
        const size_t cached = reuse ? std::min(reusable(prefix), known) : 0;
        if (cut > cached) {   // the sparse part, then the dense tail on top of it
            {
                SparsePrefillScope sparse(target_ctx.get(), g.sparse);
                g.stats.cached_tokens = int32_t(verifier->begin({prefix.begin(), prefix.begin() + cut}, reuse, known));
                g.stats.sparse_kept_fraction = sparse.kept_fraction(&g.stats.sparse_columns);
            }
            verifier->begin(prefix, true);
        } else {
            g.stats.cached_tokens = int32_t(verifier->begin(prefix, reuse, known));
        }
        {
            SparsePrefillScope sparse(drafter->context(), g.sparse);
            drafter->begin(prefix, reuse);
        }
        g.n_past = llama_pos(prefix.size());
        g.root = prompt.back();
        return;
    }
    const size_t common = reuse ? std::min(target_cached.common_prefix(prompt), prompt.size() - 1) : 0;
    g.n_past = keep_prefix(target_ctx.get(), llama_pos(common));
    target_cached.keep(size_t(g.n_past));
    g.stats.cached_tokens = int32_t(g.n_past);
    if (!g.sparse.on()) {
        decode_target(prompt.data() + g.n_past, prompt.size() - size_t(g.n_past));
        return;
    }
    if (cut > size_t(g.n_past)) {
        SparsePrefillScope sparse(target_ctx.get(), g.sparse);
        decode_target(prompt.data() + g.n_past, cut - size_t(g.n_past));
        g.stats.sparse_kept_fraction = sparse.kept_fraction(&g.stats.sparse_columns);
    }
    // the dense tail as speculation runs it: the prefix, then the last token apart
    decode_target(prompt.data() + g.n_past, prompt.size() - 1 - size_t(g.n_past));
    decode_target(&prompt.back(), 1);
}

// How much of `tokens` the target's cache can keep: their common prefix, or nothing for a
// recurrent state that would have to be cut (it holds the end of its text only).
size_t Engine::Impl::reusable(const std::vector<int32_t> & tokens) const {
    const size_t common = target_cached.common_prefix(tokens);
    return verification == Verification::trees || common == target_cached.size() ? common : 0;
}

// After a failure inside llama.cpp the caches' contents are unknown: the next call starts cold.
void Engine::Impl::forget_caches() {
    target_cached.clear();
    draft_cached.clear();
}

std::pair<std::vector<float>, Stats> Engine::score(const std::vector<int32_t> & prompt,
                                                   const std::vector<int32_t> & continuation,
                                                   bool cache_prompt, const std::string & sparse_prefill) {
    Impl & m = *impl_;
    GenerateParams params;
    params.spec.mode = "ar";
    params.sparse_prefill = sparse_prefill;
    check(prompt, params);
    for (int32_t t : continuation)
        if (t < 0 || t >= m.n_vocab) throw std::invalid_argument("continuation token id " + std::to_string(t) + " is outside the vocabulary");
    if (prompt.size() + continuation.size() > m.n_ctx)
        throw std::invalid_argument("prompt and continuation have " + std::to_string(prompt.size() + continuation.size()) +
                                    " tokens but the context holds " + std::to_string(m.n_ctx));
    std::lock_guard<std::mutex> lock(m.mu);
    Generation & g = m.gen;
    g = Generation();
    g.params = params;
    g.mode = Mode::ar;
    g.sparse = m.sparse_for(params.sparse_prefill);
    std::vector<float> rows;
    rows.reserve(continuation.size() * size_t(m.n_vocab));
    try {
        const double t0 = now_ms();
        m.process_prompt(prompt, cache_prompt);
        g.stats.prompt_tokens = int32_t(prompt.size());
        g.stats.prompt_ms = now_ms() - t0;
        for (size_t i = 0; i < continuation.size(); ++i) {
            const float * logits = llama_get_logits_ith(m.target_ctx.get(), -1);
            if (!logits) throw std::runtime_error("no logits available from the target");
            const float log_z = log_sum_exp(logits, m.n_vocab);
            for (int32_t v = 0; v < m.n_vocab; ++v) rows.push_back(logits[v] - log_z);
            if (i + 1 < continuation.size()) m.decode_target(&continuation[i], 1);
        }
    } catch (...) {
        m.forget_caches();
        throw;
    }
    return {std::move(rows), g.stats};
}

}  // namespace heterospec
