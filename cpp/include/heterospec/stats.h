// Per-call statistics.
#pragma once

#include <cstdint>

namespace heterospec {

struct Stats {
    int32_t prompt_tokens = 0;
    int32_t generated_tokens = 0;   // tokens emitted (end-of-generation tokens excluded)
    double prompt_ms = 0;           // prompt processing, up to the first generated token
    double decode_ms = 0;           // everything after the first generated token

    int32_t target_calls = 0;       // llama_decode calls on the target after the prompt

    // Prompt tokens per second.
    double prompt_tokens_per_second() const {
        return prompt_ms > 0 ? prompt_tokens * 1e3 / prompt_ms : 0.0;
    }
    // Generation speed: tokens after the first (which comes with the prompt) per second of
    // decoding, the rate llama.cpp reports as "eval".
    double tokens_per_second() const {
        return decode_ms > 0 && generated_tokens > 1 ? (generated_tokens - 1) * 1e3 / decode_ms : 0.0;
    }
};

}  // namespace heterospec
