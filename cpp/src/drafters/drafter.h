// The drafter interface: what proposes a step's tree of continuations (algorithm section 2).
//
// The engine owns its drafters and drives one per generation:
//   begin(prefix)  once, with the prompt minus its last token (the first step's root), reusing
//                  what a model's cache holds of it already when asked (the prompt cache);
//   start(tree)    each speculative step: drafts `levels` levels below the root;
//   extend(tree)   more levels on the same tree, while the allocation asks for them, expanding
//                  only the frontier nodes it keeps (narrow_frontier);
//   commit(tree)   after verification: the accepted nodes (a step that drafted nothing
//                  commits its root alone).
// The cost-aware allocation drafts in two stages instead of start(): start_free() adds what
// costs no model pass (n-gram branches), then start_paid() a first paid level (a model's or a
// head's) only when its expected gain beats its cost, and extend() more paid levels while they
// pay. Free drafts are never given up because paid ones do not pay (issue #25).
// Tree nodes carry the drafter's probability q of their token given the path, so that the tree
// selection, the entropy policy and the cost-aware budget work the same on every drafter.
//
// Adding a drafter is one file and a line in registry.cpp. A drafter that reads the target's
// hidden states (an MTP or EAGLE-3 head) says so with wants_target_hidden(): the verifier
// then calls target_decoded() after every target pass, while those states are still there.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "draft_tree.h"
#include "llama.h"

namespace heterospec {

struct DraftShape {
    int32_t branching = 4;   // children per expanded node
    int32_t width = 4;       // frontier width
    float p_min = 0.0f;      // chain mode: do not draft a token the drafter gives less than p_min
    int32_t free_depth = 0;  // how deep a drafter whose levels cost no model pass may draft at once
};

class Drafter {
public:
    virtual ~Drafter() = default;
    virtual const char * name() const = 0;

    // New generation: `prefix` is the prompt without its last token. `reuse`: keep the part of
    // it a model's cache holds already.
    void begin(const std::vector<int32_t> & prefix, bool reuse) {
        started_ = false;
        do_begin(prefix, reuse);
    }
    // Starts a step's tree at `tree` (reset to the root, the newest committed token, at position
    // root_pos) and drafts `levels` (>= 1) levels.
    void start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) {
        started_ = true;
        do_start(tree, shape, root_pos, levels);
    }
    // Cost-aware steps: the free sources' nodes below the root (none for a model alone).
    void start_free(DraftTree & tree, const DraftShape & shape, llama_pos root_pos) {
        started_ = true;
        do_start_free(tree, shape, root_pos);
    }
    // Cost-aware steps: the first paid level, merging with the free nodes already in `tree`.
    void start_paid(DraftTree & tree, const DraftShape & shape, llama_pos root_pos) {
        started_ = true;
        do_start_paid(tree, shape, root_pos);
    }
    // Which sources it has: free ones (no model pass) and paid levels (model passes).
    virtual bool has_free_source() const = 0;
    virtual bool has_paid_levels() const = 0;
    // The paid source's first choice below the root in this step's tree (-1: none drafted), to
    // learn how often it is right.
    virtual int32_t paid_first_choice() const { return -1; }
    // Whether one paid pass drafts every level (a DFlash block): deeper levels cost nothing more.
    virtual bool block_levels() const { return false; }
    // Who pays for its levels: kFromModel (the draft model's passes), kFromMtp (the target's
    // head's), 0 for model-free drafting. Drafters with the same paid source share its price.
    virtual uint8_t paid_source() const { return 0; }
    // Drafts more levels on the step's tree. Returns the levels added.
    virtual int32_t extend(DraftTree & tree, int32_t levels) { return 0; }
    // The nodes the next level would expand, best first (empty: nothing more to extend).
    virtual const std::vector<int32_t> & frontier() const { return no_frontier_; }
    // Expands only `nodes` (a subset of the frontier) on the next level.
    virtual void narrow_frontier(const std::vector<int32_t> & nodes) {}
    // After verification: `accepted` are the accepted tree nodes (root excluded, path order).
    void commit(const DraftTree & tree, const std::vector<int32_t> & accepted) {
        if (started_) do_commit(tree, accepted);
        else do_defer(tree, accepted);
        started_ = false;
    }

    // Cost: model passes and milliseconds inside llama.cpp since begin().
    virtual int32_t calls() const { return 0; }
    virtual double llama_ms() const { return 0.0; }
    // What one drafting level costs, measured once (ms; 0 for model-free drafting).
    virtual double time_level(int32_t width) { return 0.0; }
    // The deepest tree the drafter's own cache has room for, from root position `root_pos`.
    virtual int32_t fit_depth(int32_t depth, int32_t width, llama_pos root_pos) const { return depth; }
    // Its model context, if any (tests inspect its KV cache).
    virtual llama_context * context() const { return nullptr; }
    // Whether it reads the target's hidden states (MTP heads); then target_decoded() follows
    // every target pass of a generation: `n` tokens at positions pos0.. of one sequence.
    virtual bool wants_target_hidden() const { return false; }
    // `tokens` at positions pos0.. ran in the target's last pass, at batch rows `rows` (null:
    // rows 0..n-1).
    virtual void target_decoded(const int32_t * tokens, size_t n, llama_pos pos0, const int32_t * rows = nullptr) {}
    // How much of `tokens` (a new generation's prefix) the drafter holds the target's states for:
    // the target's prompt cache keeps no more, so that the tokens after it run through the
    // target again and reach the drafter (a head reading the target's states; others: all).
    virtual size_t known_prefix(const std::vector<int32_t> & tokens) const { return tokens.size(); }
    // Tests: keep every target state handed to a head, by position (the latest for each), to
    // compare the states of a tree step's accepted path with a plain pass's.
    virtual void debug_record_states(bool on) {}
    virtual std::vector<std::pair<int32_t, std::vector<float>>> debug_states() const { return {}; }

protected:
    virtual void do_begin(const std::vector<int32_t> & prefix, bool reuse) = 0;
    virtual void do_start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) = 0;
    virtual void do_start_free(DraftTree & tree, const DraftShape & shape, llama_pos root_pos) {}
    virtual void do_start_paid(DraftTree & tree, const DraftShape & shape, llama_pos root_pos) {}
    virtual void do_commit(const DraftTree & tree, const std::vector<int32_t> & accepted) = 0;
    // A step this drafter took no part in: its root (tree[0]) and the accepted nodes (another
    // source's) are committed all the same.
    virtual void do_defer(const DraftTree & tree, const std::vector<int32_t> & accepted) = 0;

private:
    bool started_ = false;
    std::vector<int32_t> no_frontier_;
};

// narrow_frontier's precondition: every one of `nodes` is on `frontier`.
inline void check_on_frontier(const std::vector<int32_t> & nodes, const std::vector<int32_t> & frontier) {
    for (int32_t n : nodes)
        if (std::find(frontier.begin(), frontier.end(), n) == frontier.end())
            throw std::logic_error("narrow_frontier: node " + std::to_string(n) + " is not on the frontier");
}

class SuffixIndex;
struct DflashHead;
class CachedTokens;

// What drafters may be built from: the draft model's context (null without one), the target's
// MTP head (null without one), and the engine's n-gram memory of everything it has seen.
struct DrafterInputs {
    llama_context * draft_ctx = nullptr;
    llama_context * target_ctx = nullptr;
    llama_context * mtp_ctx = nullptr;       // the target's MTP (nextn) layers, LLAMA_CONTEXT_TYPE_MTP
    llama_context * eagle3_ctx = nullptr;    // an EAGLE-3 head given as the draft
    std::vector<int32_t> eagle3_layers;      // the target layers it reads
    llama_context * dflash_ctx = nullptr;    // a DFlash draft given as the draft
    const DflashHead * dflash = nullptr;     // its header
    CachedTokens * draft_cached = nullptr;   // what the draft's cache holds (the prompt cache)
    const SuffixIndex * index = nullptr;
    int32_t n_seq_max = 1;
};

// The drafters an engine offers, by name ("model", "mtp", "eagle3", "dflash", "ngram", "hybrid"):
// those its inputs allow. "hybrid" is n-gram branches merged into the draft model's trees, else
// the EAGLE-3 head's or the DFlash draft's, else the MTP head's.
struct NamedDrafter {
    std::string name;
    std::unique_ptr<Drafter> drafter;
};
std::vector<NamedDrafter> make_drafters(const DrafterInputs & in);
// Whether `name` is a drafter the registry knows, and whether it needs a draft model.
bool drafter_known(const std::string & name);
bool drafter_needs_model(const std::string & name);
// What to do instead when an engine lacks what drafter `name` needs.
std::string drafter_unavailable(const std::string & name);

}  // namespace heterospec
