// The engine: a target model (and optionally a draft model with the same vocabulary) and the
// decoding loop. Not thread-safe for concurrent generation: calls are serialised internally.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "heterospec/config.h"
#include "heterospec/stats.h"

namespace heterospec {

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
    // Whether the target's memory can hold a draft tree (attention-only models): else every
    // call decodes plainly.
    bool can_speculate() const;
    std::string model_description() const;

    std::vector<int32_t> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    std::string detokenize(const std::vector<int32_t> & tokens, bool special) const;
    bool is_eog(int32_t token) const;

    // Formats messages with the chat template stored in the target GGUF, or `tmpl` (a template
    // text or a llama.cpp built-in name such as "chatml") when given.
    std::string format_chat(const std::vector<ChatMessage> & messages, bool add_generation_prompt,
                            const std::string & tmpl = "") const;

    // One generation at a time: start() checks the request and processes the prompt, then each
    // step() produces at least one token until it reports done; result() holds the outcome.
    void start(const std::vector<int32_t> & prompt, const GenerateParams & params);
    StepOutput step();
    Result result() const;

    // start() + step() until done.
    Result generate(const std::vector<int32_t> & prompt, const GenerateParams & params);

    // Forgets the text of earlier requests that n-gram drafting draws on (benchmarks start each
    // pass over their prompts from an empty memory, so that no mode copies another's output).
    void clear_ngram_memory();

    // Tests: (pos_min, pos_max) of every sequence of the target's and the draft's cache, and the
    // number of committed tokens in the target's cache.
    std::vector<std::vector<std::pair<int32_t, int32_t>>> debug_kv_state() const;
    int32_t debug_n_past() const;
    // Tests only: replaces the exact walk with a plausible but wrong rule (accept the best child
    // with probability min(1, p/q), else sample from p instead of the residual), so that the
    // statistical test can show that it catches one.
    void debug_wrong_rule(bool on);

    // Measured once per engine: batch sizes n, t_verify(n) in ms, and one draft level in ms.
    std::tuple<std::vector<int32_t>, std::vector<double>, double> cost_profile(int32_t width = 4);
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
