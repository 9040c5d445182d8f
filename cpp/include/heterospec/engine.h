// The engine: a target model (and optionally a draft model with the same vocabulary) and the
// decoding loop.
//
// Threading: one generation at a time. Each call is atomic (an internal lock), but a generation
// spans start() and every step(): callers that share an engine must own it from start() until
// step() reports done (the Python Engine queues them). cancel() is the exception: any thread may
// call it at any time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "heterospec/config.h"
#include "heterospec/stats.h"

namespace heterospec {

// Measuring the cost profile: called with the steps done and the steps in all.
using ProfileProgress = std::function<void(int32_t done, int32_t total)>;

struct ChatMessage {
    std::string role;
    std::string content;
};

struct Result {
    std::string text;
    std::vector<int32_t> tokens;     // generated tokens (end-of-generation token excluded)
    std::string finish_reason;       // "stop" (end of generation or stop string) or "length"
    Stats stats;
    std::vector<StepTrace> trace;    // per step, when asked for (spec.trace)
    std::vector<TokenLogprob> logprobs;   // per generated token, when asked for (params.logprobs)
};

// The target vocabulary's special tokens (-1: none), for chat templates.
struct SpecialTokens {
    int32_t bos = -1;
    int32_t eos = -1;
    bool add_bos = false;   // tokenize(add_special=true) puts BOS first
    bool add_eos = false;
};

struct StepOutput {
    std::string text;                // text that became final during this step
    bool done = false;
};

class Engine {
public:
    explicit Engine(const EngineOptions & options);
    ~Engine();
    Engine(const Engine &) = delete;
    Engine & operator=(const Engine &) = delete;

    const EngineOptions & options() const;
    int32_t n_vocab() const;
    uint32_t n_ctx() const;
    bool has_draft() const;
    bool has_mtp() const;   // the target's MTP (nextn) head runs: drafter "mtp"
    // The drafters this engine can speculate with (empty: plain decoding only).
    std::vector<std::string> drafters() const;
    // Whether the target's memory can hold a draft tree (attention-only models): else every
    // call decodes plainly.
    bool can_speculate() const;
    std::string model_description() const;

    std::vector<int32_t> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string detokenize(const std::vector<int32_t> & tokens, bool special) const;
    bool is_eog(int32_t token) const;

    // The Jinja chat template stored in the target GGUF (empty: none).
    std::string chat_template() const;
    SpecialTokens special_tokens() const;

    // Formats messages with llama.cpp's built-in templates: the one it recognises in the target
    // GGUF's template, or `tmpl` (a built-in name such as "chatml") when given. (The Python
    // Engine renders the GGUF's Jinja template itself and falls back to this.)
    std::string format_chat(const std::vector<ChatMessage> & messages, bool add_generation_prompt,
                            const std::string & tmpl = "") const;

    // Throws std::invalid_argument for a request start() would refuse (nothing runs).
    void check(const std::vector<int32_t> & prompt, const GenerateParams & params) const;

    // One generation at a time: start() checks the request and processes the prompt, then each
    // step() produces at least one token until it reports done; result() holds the outcome.
    void start(const std::vector<int32_t> & prompt, const GenerateParams & params);
    StepOutput step();
    Result result() const;
    // The generation's token log-probabilities from index `from` on (params.logprobs), cheaply
    // while it streams.
    std::vector<TokenLogprob> logprobs_since(size_t from) const;
    // The generation's tokens from index `from` on, cheaply while it streams.
    std::vector<int32_t> tokens_since(size_t from) const;
    // A token's bytes as the model spells it (special tokens included, no space stripped).
    std::string token_piece(int32_t token) const;

    // start() + step() until done.
    Result generate(const std::vector<int32_t> & prompt, const GenerateParams & params);

    // Ends the generation in progress at its next step, with finish_reason "cancelled". Safe from
    // any thread; without a generation in progress it does nothing (start() forgets it).
    void cancel();

    // Teacher-forced scoring (the sparse-prefill accuracy harness): processes `prompt` as a plain
    // generation would (sparse prefill included; with `cache_prompt`, keeping the prefix the
    // target's cache holds), then feeds `continuation` a token at a time; row i holds log softmax
    // of the target's logits before continuation[i]. Returns the rows, flattened
    // (continuation.size() x n_vocab), and the stats of the prompt.
    std::pair<std::vector<float>, Stats> score(const std::vector<int32_t> & prompt,
                                               const std::vector<int32_t> & continuation,
                                               bool cache_prompt = false, const std::string & sparse_prefill = "");

    // Forgets the text of earlier requests that n-gram drafting draws on (benchmarks start each
    // pass over their prompts from an empty memory, so that no mode copies another's output).
    void clear_ngram_memory();

    // Tests: (pos_min, pos_max) of every sequence of the target's cache, then the draft model's or
    // the EAGLE-3 head's or DFlash draft's (when there is one), and the number of committed tokens in the target's cache.
    std::vector<std::vector<std::pair<int32_t, int32_t>>> debug_kv_state() const;
    int32_t debug_n_past() const;
    // Tests only: replaces the exact walk with a plausible but wrong rule (accept the best child
    // with probability min(1, p/q), else sample from p instead of the residual), so that the
    // statistical test can show that it catches one.
    void debug_wrong_rule(bool on);
    // Tests: every target state handed to drafter `name`'s head (an MTP or EAGLE-3 head, a
    // DFlash draft: its block logits too, see dflash.h), by position, recorded from the call to
    // debug_record_states(true) on.
    void debug_record_states(bool on);
    std::vector<std::pair<int32_t, std::vector<float>>> debug_states(const std::string & name) const;

    // Measured once per engine: batch sizes n, t_verify(n) in ms, and one draft level in ms (the
    // draft model's, else the MTP head's). `fresh`: measure again, forgetting what was measured
    // or set (a profile the realised costs have drifted far from).
    // `progress(done, total)` is called as the measurement goes (from this thread).
    std::tuple<std::vector<int32_t>, std::vector<double>, double> cost_profile(int32_t width = 4, bool fresh = false,
                                                                              const ProfileProgress & progress = nullptr);
    // A profile measured earlier (cached by the caller per model pair and machine). `projected`:
    // another device's profile, taken as it is: the allocation decides as it would there and
    // judges its steps by that profile's costs, not by this machine's clock (bench --cost-profile).
    void set_cost_profile(const std::vector<int32_t> & sizes, const std::vector<double> & verify_ms,
                          double draft_level_ms, bool projected = false);

    struct Impl;

private:
    std::vector<int32_t> tokenize_unchecked(const std::string & text, bool add_special, bool parse_special) const;
    std::unique_ptr<Impl> impl_;
};

}  // namespace heterospec
