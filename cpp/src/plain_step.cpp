// Output and plain decoding: accept() adds a token and applies the stop conditions (end of
// generation, stop strings, max_tokens), step_ar() is the plain step, finish() the final stats.
#include <algorithm>
#include <stdexcept>

#include "engine_impl.h"
#include "topk.h"

namespace heterospec {

std::string_view Engine::Impl::piece(int32_t token) {
    int32_t n = llama_token_to_piece(vocab, token, piece_buf.data(), int32_t(piece_buf.size()), 0, false);
    if (n < 0) {
        piece_buf.resize(size_t(-n));
        n = llama_token_to_piece(vocab, token, piece_buf.data(), int32_t(piece_buf.size()), 0, false);
    }
    return std::string_view(piece_buf.data(), size_t(std::max(n, 0)));
}

// Adds one sampled token to the output. Returns false when generation must end here.
bool Engine::Impl::accept(int32_t token) {
    Generation & g = gen;
    index.push(token);   // ends of generation too: a repeated request ends the same way
    if (!g.params.ignore_eos && llama_vocab_is_eog(vocab, token)) {
        g.finish_reason = "stop";
        return false;
    }
    g.tokens.push_back(token);
    g.history.push_back(token);
    if (g.params.logprobs >= 0) g.logprobs.push_back(token_logprob(g.logits, n_vocab, token, g.params.logprobs));
    if (g.tokens.size() == 1) g.t_first = now_ms();
    if (g.text->push(piece(token))) {
        g.finish_reason = "stop";
        return false;
    }
    if (g.params.max_tokens >= 0 && int32_t(g.tokens.size()) >= g.params.max_tokens) {
        g.finish_reason = "length";
        return false;
    }
    return true;
}

// Plain autoregressive step: sample from the last logits, then feed the token back.
bool Engine::Impl::step_ar() {
    const float * logits = llama_get_logits_ith(target_ctx.get(), -1);
    if (!logits) throw std::runtime_error("no logits available from the target");
    const int32_t token = gen.sampler->sample(logits, gen.history.data(), gen.history.size());
    gen.logits = logits;
    if (!accept(token)) return false;
    if (uint32_t(gen.n_past) >= n_ctx) {  // no room to feed the token back
        gen.finish_reason = "length";
        return false;
    }
    decode_target(&token, 1);
    gen.stats.target_calls++;
    gen.stats.steps++;
    return true;
}

void Engine::Impl::finish() {
    Generation & g = gen;
    g.done = true;
    const double t_end = now_ms();
    if (g.t_first == 0) g.t_first = t_end;
    g.stats.prompt_ms = g.t_first - g.t_start;
    g.stats.decode_ms = t_end - g.t_first;
    g.stats.generated_tokens = int32_t(g.tokens.size());
    if (g.mode != Mode::ar) g.stats.draft_calls = drafter->calls();
    if (cost_aware()) g.stats.profile_scale = cost->profile_scale();
}

}  // namespace heterospec
