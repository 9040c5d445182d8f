// Per-call statistics.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace heterospec {

struct Stats {
    int32_t prompt_tokens = 0;
    int32_t cached_tokens = 0;      // prompt tokens whose KV was reused from the previous call
    int32_t generated_tokens = 0;   // tokens emitted (end-of-generation tokens excluded)
    double prompt_ms = 0;           // prompt processing, up to the first generated token
    double sparse_kept_fraction = 1.0;  // sparse prefill: share of attention columns kept over its
                                        // sparse ubatches (all layers and KV heads); 1: all dense
    int64_t sparse_columns = 0;         // attention columns those ubatches had in all (0: none ran sparse)
    double decode_ms = 0;           // everything after the first generated token

    std::string mode;               // the decoding mode that ran: "ar", "chain", "tree" or "heterospec"
    std::string drafter;            // the drafter that ran ("model", "ngram", "hybrid"; empty for "ar")
    int32_t steps = 0;              // decoding steps (one target pass each, or one plain token)
    int32_t target_calls = 0;       // llama_decode calls on the target after the prompt
    int32_t draft_calls = 0;        // llama_decode calls on the draft after the prompt
    int64_t nodes_verified = 0;     // draft nodes sent to the target, root excluded
    double draft_ms = 0;            // drafting: draft model passes and tree building
    double verify_ms = 0;           // target passes over the trees
    double host_ms = 0;             // decode time spent outside llama.cpp: tree building,
                                    // sorting, KV bookkeeping, sampling
    // Accepted draft tokens by the drafter that proposed them (a hybrid tree's node proposed by
    // both counts in both)
    int32_t accepted_model = 0;
    int32_t accepted_ngram = 0;
    int32_t accepted_mtp = 0;       // by the target's own MTP (nextn) head
    int32_t accepted_eagle3 = 0;    // by an EAGLE-3 head
    int32_t accepted_dflash = 0;    // by a DFlash draft
    int32_t accepted_draft = 0;     // accepted draft tokens, whatever their source (llama-server's draft_n_accepted)
    // Calibration of the cost-aware allocation: over the steps it chose to verify nodes, the
    // tokens it expected them to emit and the tokens they did emit.
    int32_t predicted_steps = 0;
    double predicted_tokens = 0;
    int32_t realised_tokens = 0;
    // How far the cost profile is from what target passes really cost now: the realised time over
    // the profile's, for one-token passes or batches, whichever is further from 1 (1: as
    // profiled, or not cost-aware). Far from 1 for long: the profile was measured on a busy machine.
    double profile_scale = 1.0;

    // Mean tokens emitted per step (tau), the extra token from the target included.
    double mean_accepted() const { return steps ? double(generated_tokens) / steps : 0.0; }
    double mean_nodes() const { return steps ? double(nodes_verified) / steps : 0.0; }

    // Prompt tokens processed (those not reused from the cache) per second.
    double prompt_tokens_per_second() const {
        return prompt_ms > 0 ? (prompt_tokens - cached_tokens) * 1e3 / prompt_ms : 0.0;
    }
    // Generation speed: tokens after the first (which comes with the prompt) per second of
    // decoding, the rate llama.cpp reports as "eval".
    double tokens_per_second() const {
        return decode_ms > 0 && generated_tokens > 1 ? (generated_tokens - 1) * 1e3 / decode_ms : 0.0;
    }
};

// A generated token's log-probability under the target (softmax of its logits, before
// sampling), with the most likely alternatives: OpenAI's `logprobs`.
struct TokenLogprob {
    int32_t token = -1;
    float logprob = 0.0f;
    std::vector<std::pair<int32_t, float>> top;   // (token, logprob), most likely first
};

// One speculative step, for calibration and plots.
struct StepTrace {
    int32_t depth;      // deepest node verified
    int32_t nodes;      // nodes verified, root excluded
    int32_t accepted;   // tokens emitted (accepted nodes plus the target's extra token)
    int32_t rank;       // rank by V of the last accepted node among those verified (0: none)
    float entropy;      // H(P*) of the base tree (tree and heterospec modes)
    int32_t bin;        // heterospec: entropy bin, -1 otherwise
    float predicted;    // cost-aware: tokens the allocation expected the step to emit, 0 otherwise
    int32_t levels;     // draft passes in the step (the first also runs tokens the draft missed)
    int32_t paths;      // root-to-leaf paths verified
    int32_t batch;      // tokens the target ran: nodes + 1, or paths x (depth + 1) over recurrent state
};

}  // namespace heterospec
