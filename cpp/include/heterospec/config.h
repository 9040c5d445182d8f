// All user-facing options, with their defaults, in one place. Python mirrors these structs
// through the bindings (it never restates a default).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace heterospec {

// How to load one model and create its context. Names follow llama.cpp's flags.
struct ModelOptions {
    std::string path;
    int32_t n_gpu_layers = -1;      // -ngl: layers on the GPU, -1 = all (ignored by CPU builds)
};

// SampleAttention (Zhu et al., arXiv 2406.15486): adaptive structured sparse attention for the
// target's prompt processing (llama.cpp with third_party/patches/). Decoding and verification
// stay dense. Defaults: the paper's values; k_max_frac caps the selected columns (static shapes).
struct SparsePrefillOptions {
    std::string mode = "off";       // "off" or "sample"
    float alpha = 0.95f;            // attention mass to keep, (0, 1] (0.80: the paper's aggressive setting)
    float row_frac = 0.05f;         // query rows sampled to score the columns, (0, 1]
    float window_frac = 0.08f;      // local window before each ubatch, fraction of the context, (0, 1]
    float k_max_frac = 0.25f;       // most columns selected besides the window, fraction of the context, (0, 1]
    int32_t min_ctx = 2048;         // ubatches over fewer KV cells run dense
    int32_t dense_tail = 512;       // the prompt's last tokens run dense: what follows reads their
                                    // keys and values the most (benchmarks/README.md: most of the
                                    // loss came from the last ubatch; 1024 cost a quarter of dense
                                    // attention at 8k for KL 0.0045 against 0.0054)

    bool on() const { return mode == "sample"; }
};

struct EngineOptions {
    ModelOptions target;
    ModelOptions draft;             // draft.path empty: no draft model
    uint32_t n_ctx = 0;             // -c: context size, 0 = the model's training context, at most 4096
    uint32_t n_batch = 512;         // -b: tokens per llama_decode call during prompt processing
    int32_t n_threads = 0;          // -t: 0 = one per physical core
    int32_t n_threads_batch = 0;    // -tb: 0 = same as n_threads
    std::string flash_attn = "auto";    // -fa: "on", "off" or "auto"
    std::string cache_type_k = "f16";   // -ctk
    std::string cache_type_v = "f16";   // -ctv (quantized V needs flash attention)
    std::string drafter = "auto";   // what drafts trees: "model" (the draft model), "ngram" (earlier
                                    // text: prompt, output, earlier requests; no model), "hybrid"
                                    // (both in one tree); "auto": hybrid with a draft model (it
                                    // measured best), else ngram
    int32_t max_nodes = 64;         // largest verification budget a call may use (sizes the
                                    // contexts' sequence count; at most 255)
    SparsePrefillOptions sparse_prefill;
    bool verbose = false;           // forward llama.cpp's log to stderr
};

// The engine's sampler. temperature <= 0 means greedy (argmax after penalties).
struct SamplingParams {
    float temperature = 0.8f;
    int32_t top_k = 40;             // <= 0: disabled
    float top_p = 0.95f;            // 1: disabled
    float min_p = 0.05f;            // 0: disabled
    float repeat_penalty = 1.0f;    // 1: disabled
    int32_t repeat_last_n = 64;     // how many recent tokens the penalty looks at (-1: all)
    uint64_t seed = UINT64_MAX;     // UINT64_MAX: a random seed per call

    bool greedy() const { return temperature <= 0.0f; }
};

// Speculative decoding (algorithm sections 2, 5 and 6).
struct SpecParams {
    std::string mode = "auto";      // "ar" (plain), "chain", "tree", "heterospec";
                                    // "auto": heterospec (plain for models that cannot hold a tree)
    std::string drafter;            // this call's drafter (see EngineOptions::drafter); empty: the engine's
    // tree: depth d, branching k (top-k children per expanded node), frontier width W, budget N
    int32_t depth = 4;
    int32_t branching = 4;
    int32_t width = 4;
    int32_t budget = 7;             // 8 tokens with the root: CPU kernels favour multiples of 4
    // chain (llama.cpp's draft-model speculation, with its defaults at the pin): up to n_max
    // tokens, stop below draft probability p_min
    int32_t n_max = 3;
    float p_min = 0.0f;
    // heterospec: entropy partition (7 ascending thresholds; empty: built-in) and gamma
    std::vector<float> policy_thresholds;
    std::vector<float> policy_gamma = {0.3f, 0.6f, 1.0f};
    // heterospec: choose each step's budget by measured cost and calibrated acceptance, and
    // pause speculation while it does not pay (false: the paper's fixed gamma fractions)
    bool cost_aware = true;
    bool trace = false;             // record one StepTrace per step
};

struct GenerateParams {
    SamplingParams sampling;
    SpecParams spec;
    int32_t max_tokens = 256;       // < 0: until end of generation or a full context
    std::vector<std::string> stop;  // stop strings: output ends before the first one
    bool ignore_eos = false;        // keep going past end-of-generation tokens
    bool cache_prompt = true;       // reuse the KV of the longest prefix shared with the previous call
    int32_t logprobs = -1;          // >= 0: report each token's log-probability and this many
                                    // alternatives (OpenAI's top_logprobs, at most 20); -1: none
    std::string sparse_prefill;     // this call's sparse prefill: "off", "sample" (with the engine's
                                    // sparse options), or empty: the engine's setting
};

// Throws std::invalid_argument with a message naming the bad value.
void validate(const EngineOptions & o);
void validate(const GenerateParams & p);

}  // namespace heterospec
