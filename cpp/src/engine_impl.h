// Engine::Impl: the engine's state and the steps of its decoding loop, one phase per file
// (engine.cpp, request.cpp, prompt.cpp, plain_step.cpp, spec_draft.cpp, spec_step.cpp,
// profile.cpp). Internal to the library.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "heterospec/engine.h"

#include "cost_model.h"
#include "draft_tree.h"
#include "drafters/drafter.h"
#include "dflash_head.h"
#include "eagle3_head.h"
#include "mode.h"
#include "model.h"
#include "policy.h"
#include "prompt_cache.h"
#include "sampler.h"
#include "suffix_index.h"
#include "text_stream.h"
#include "verifier.h"

namespace heterospec {

// State of the generation in progress.
struct Generation {
    GenerateParams params;
    std::unique_ptr<Sampler> sampler;
    std::unique_ptr<TextStream> text;
    std::vector<int32_t> history;    // prompt followed by the generated tokens
    std::vector<int32_t> tokens;     // generated tokens
    std::string output;              // text released so far
    llama_pos n_past = 0;            // tokens in the target's KV cache
    int32_t root = -1;               // speculative modes: newest committed token, not yet run
    Mode mode = Mode::ar;
    bool done = true;
    std::string finish_reason;
    Stats stats;
    SparsePrefillOptions sparse;     // this call's sparse prefill (the engine's, or the call's switch)
    std::vector<StepTrace> trace;
    std::vector<TokenLogprob> logprobs;
    const float * logits = nullptr;  // the target's logits the next accepted token was drawn from
    double t_start = 0, t_first = 0;
};

struct Engine::Impl {
    // --- The models, their contexts and what they can do: set up once, by the constructor.
    EngineOptions opts;
    ModelPtr target;
    ModelPtr draft;
    ContextPtr target_ctx;
    ContextPtr draft_ctx;
    ContextPtr mtp_ctx;           // the target's MTP (nextn) head, when it has one llama.cpp runs
    std::string mtp_error;        // why a target with nextn layers has none
    ModelPtr head;                // an EAGLE-3 head or a DFlash draft given as the draft, and its context
    ContextPtr head_ctx;
    std::string head_arch;        // "eagle3" or "dflash"
    Eagle3Head eagle3;
    DflashHead dflash;
    BatchPtr batch;
    const llama_vocab * vocab = nullptr;
    int32_t n_vocab = 0;
    uint32_t n_ctx = 0;
    std::unique_ptr<Verifier> verifier;   // null when the target cannot hold a tree
    SuffixIndex index;                    // every token the engine has seen, for n-gram drafts
    CachedTokens target_cached, draft_cached;   // the prompt cache: what each KV cache holds
    std::atomic<bool> cancel_requested{false};
    // Each drafter with its own cost model: acceptance and drafting costs differ by drafter.
    struct Speculator {
        std::string name;
        std::unique_ptr<Drafter> drafter;
        CostModel cost;   // kept across generations (same models, same machine)
    };
    std::vector<Speculator> speculators;
    std::string default_drafter;
    int32_t n_seqs = 1;           // sequences per context: max_nodes, or fewer in a small context
    Verification verification = Verification::none;   // what the target's memory can verify
    double checkpoint_ms = 0;   // checkpoint verification: saving and restoring the state once
    int32_t max_verify = 0;       // the most drafted nodes one step can verify
    int32_t max_depth = 0;        // recurrent targets: the deepest path one step can verify
    CostProfile target_profile;   // t_verify(n), measured once

    // --- The generation in progress (start() sets it up); mu guards every public call.
    Drafter * drafter = nullptr;  // the generation's
    CostModel * cost = nullptr;
    std::mutex mu;
    Generation gen;

    // --- Per-step buffers, reused
    DraftTree tree;
    TreeBatch tb;
    Policy policy;
    bool wrong_rule = false;  // tests only: see Engine::debug_wrong_rule
    std::vector<float> accept_est, child_est;   // acceptance estimates: drafted nodes, guessed children
    std::vector<uint8_t> on_path;
    std::vector<float> est;
    std::vector<int32_t> order;
    std::vector<int32_t> selected, accepted;
    std::vector<int32_t> path_kept, path_tokens;   // recurrent targets: see fit_paths
    std::vector<uint8_t> path_scratch;
    // the step's paid levels beside free sources (draft_cost_aware), judged apart in observe()
    bool step_paid = false;
    double step_paid_ms = 0;
    int32_t step_free_nodes = 0;
    std::vector<char> piece_buf = std::vector<char>(256);

    // --- Prompt processing and the prompt cache (prompt.cpp)
    void decode_target(const int32_t * tokens, size_t n);   // runs tokens at n_past..
    size_t sparse_end(size_t n) const;                      // where sparse prefill ends
    SparsePrefillOptions sparse_for(const std::string & mode) const;   // a call's, checked
    void process_prompt(const std::vector<int32_t> & prompt, bool reuse);
    size_t reusable(const std::vector<int32_t> & tokens) const;   // what the cache can keep
    void forget_caches();                                   // after a failure: start cold

    // --- Output, stop conditions and plain decoding (plain_step.cpp)
    std::string_view piece(int32_t token);   // a token's text, in piece_buf
    bool accept(int32_t token);              // adds a token; false when generation ends
    bool step_ar();                          // one plain autoregressive step
    void finish();                           // ends the generation: final statistics

    // --- The speculative step, drafting and allocation (spec_draft.cpp)
    // What a step may use: depth and budget caps, shrunk near the end of the context so that
    // every node has a position and a cell in both caches, and so that the tree fits one batch.
    struct StepLimits {
        DraftShape shape;
        int32_t depth = 0;        // draft levels (0: a plain step)
        int32_t max_depth = 0;    // heterospec: the deepest extension allowed
        int32_t budget = 0;       // nodes to verify
        int32_t max_budget = 0;   // heterospec: the largest budget allowed (cost-aware: max_nodes,
                                  // so that big trees can be chosen where verification is cheap)
    };
    // cost-aware: how deep model-free branches (free to draft) may look
    static constexpr int32_t kFreeDepth = 48;

    StepLimits plan(llama_pos P) const;
    NodeFeatures features(int32_t i) const;   // what the acceptance model sees of node i
    void estimates(std::vector<float> & all, std::vector<float> & next);
    bool draft_tree(const StepLimits & L, llama_pos P, double t0);   // false: a plain step
    bool draft_cost_aware(const StepLimits & L, llama_pos P, double t0);
    bool pay_first_level(const StepLimits & L, bool free, double spent);
    template <typename Spent>
    void extend_paid(const StepLimits & L, const Spent & spent);
    void allocate(const StepLimits & L, double t0, int32_t calls0, StepTrace & tr);   // into `selected`
    int32_t fit_paths(std::vector<float> * accept = nullptr);
    // Tokens the step's verification ran: the root and the nodes, or the padded paths.
    int32_t batch_tokens() const {
        return verification == Verification::paths ? verifier->batch_tokens() : tb.size();
    }
    bool cost_aware() const { return gen.mode == Mode::heterospec && gen.params.spec.cost_aware; }

    // --- The speculative step, verification, commit and calibration (spec_step.cpp)
    bool step_spec();   // one whole speculative step
    void commit(const WalkResult & w, llama_pos P);
    void observe(const WalkResult & w, bool drafted, int32_t draft_passes, double draft_ms, double verify_ms,
                 double checkpoint_ms);
    int32_t root_best() const;            // the drafter's first choice
    int32_t wrong_rule_draw(int32_t e);   // tests only: see Engine::debug_wrong_rule

    // --- The cost profile (profile.cpp)
    void measure_profile(Speculator & s, int32_t width, const ProfileProgress & progress = nullptr);
    uint8_t profiled_source() const;   // the paid source a stored profile prices

    // --- Drafters by name (engine.cpp)
    // The drafter a call asks for: its own, else the engine's.
    const std::string & drafter_for(const SpecParams & sp) const {
        return sp.drafter.empty() || sp.drafter == "auto" ? default_drafter : sp.drafter;
    }
    Speculator * find_speculator(const std::string & name);
    // Why drafter `name` is not on offer here, and what to use instead.
    std::string unavailable(const std::string & name) const;
    static Eagle3Target eagle3_target(const llama_model * target, Verification v);
};

}  // namespace heterospec
