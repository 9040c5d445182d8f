// Drafting with a head that reads the target's hidden states: one decoder layer whose row for
// token x_p pairs it with a state s_{p-1} of the target one position before, and predicts
// x_{p+1}. Two kinds (one file each): the target's own MTP (nextn) layers (mtp.h), and EAGLE-3
// heads, whose state is a projection of three target layers' features (eagle3.h).
//
// The head runs in a context of its own with a KV cache over its layer. After every target pass
// it queues the committed tokens, each with the target's state one position before
// (target_decoded), and keeps the accepted ones; it runs them when it next drafts, in the same
// pass as the draft's root, so that its cache follows the target's text and a step drafted from
// n-grams alone costs no head pass (llama.cpp runs its heads over every target batch, then once
// more to draft). A draft level is one head pass over the frontier: each frontier node's token
// with the state the head gave its parent, in a sequence of the head's context that holds the
// node's ancestors (tree attention through sequence ids, as the draft model drafts: the first
// child of a node inherits its parent's sequence, the others take a free one with the parent's
// path copied in, metadata only). Each level adds the top-k children of every frontier node and
// keeps the `width` likeliest paths as the next frontier. A head context of one sequence (the
// MTP head's) drafts a chain with its alternatives: its best child alone is expanded.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "draft_tree.h"
#include "drafters/drafter.h"
#include "llama.h"
#include "sampler.h"

namespace heterospec {

// The inputs of the target's `layers` at batch rows `rows` (null: 0..n-1) of its last pass,
// concatenated per row (layers x the target's width floats) into `out`: what EAGLE-3 and DFlash
// drafts read (llama_set_embeddings_layer_inp).
void layer_features(llama_context * target, const std::vector<int32_t> & layers, const int32_t * rows, size_t n,
                    float * out);

class HeadDrafter : public Drafter {
public:
    // `state_width`: the floats of target state each row is made from (target_states).
    // `zero_state`: a row with no state before it (the text's first token, a cold restart) runs
    // with zeros (MTP, as llama.cpp does); else it is left out (EAGLE-3, which never saw one).
    HeadDrafter(llama_context * target_ctx, llama_context * head_ctx, int32_t state_width, uint8_t source,
                bool zero_state);
    ~HeadDrafter() override;
    bool has_free_source() const override { return false; }
    bool has_paid_levels() const override { return true; }
    int32_t paid_first_choice() const override { return first_choice_; }
    uint8_t paid_source() const override { return source_; }

    int32_t extend(DraftTree & tree, int32_t levels) override;
    const std::vector<int32_t> & frontier() const override { return frontier_; }
    void narrow_frontier(const std::vector<int32_t> & nodes) override;
    int32_t calls() const override { return calls_; }
    double llama_ms() const override { return llama_ms_; }
    double time_level(int32_t width) override;
    llama_context * context() const override { return head_; }
    bool wants_target_hidden() const override { return true; }
    void target_decoded(const int32_t * tokens, size_t n, llama_pos pos0, const int32_t * rows) override;
    size_t known_prefix(const std::vector<int32_t> & tokens) const override;
    void debug_record_states(bool on) override { record_ = on; recorded_.clear(); }
    std::vector<std::pair<int32_t, std::vector<float>>> debug_states() const override {
        return {recorded_.begin(), recorded_.end()};
    }

protected:
    // The target's states at batch rows `rows` (null: 0..n-1) of its last pass, state_width
    // floats each, into `out`.
    virtual void target_states(const int32_t * rows, size_t n, float * out) = 0;
    // The head's input rows (n_embd floats each) made from n target states; MTP: the states.
    virtual const float * head_inputs(const float * states, size_t n) { return states; }

    llama_context * target_;
    llama_context * head_;
    int32_t n_embd_, n_vocab_;            // the head's input row width, its vocabulary
    int32_t state_width_;
    // Time inside llama.cpp spent on the head's behalf outside decode() (EAGLE-3's encoder).
    void charge_ms(double ms) { llama_ms_ += ms; }

    // The prompt's rows run now, in the prompt's time: a draft level's pass must not carry them,
    // or the allocation, which prices a level by what its passes cost, would price the head at
    // a pass over the prompt and never pay for it again.
    void do_begin(const std::vector<int32_t> &, bool) override {
        frontier_.clear();   // a generation that ended inside a step left its tree's nodes here
        if (!pend_tok_.empty()) run_pending(nullptr, 0);
        calls_ = 0;
        llama_ms_ = 0;
    }
    void do_start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) override;
    void do_start_paid(DraftTree & tree, const DraftShape & shape, llama_pos root_pos) override {
        do_start(tree, shape, root_pos, 1);
    }
    void do_commit(const DraftTree & tree, const std::vector<int32_t> & accepted) override { keep(accepted.size()); }
    void do_defer(const DraftTree & tree, const std::vector<int32_t> & accepted) override { keep(accepted.size()); }
    int32_t fit_depth(int32_t depth, int32_t width, llama_pos root_pos) const override;

private:
    // One head pass over the batch's rows.
    void decode();
    // A row: token at pos in sequence seq, with head input row h; logits (and the head's state)
    // for it when `out`.
    void add_row(int32_t token, llama_pos pos, const float * h, int32_t seq = 0, bool out = false);
    void queue(int32_t token, llama_pos pos, const float * h);
    // Runs the queued rows (and `root` at root_pos after them, with logits, when given).
    void run_pending(const int32_t * root, llama_pos root_pos);
    // After verification: the batch's first 1 + n_accepted rows stay (the root and the accepted
    // path); the head's cells beyond them go, and the last kept row's hidden state seeds the next
    // draft.
    void keep(size_t n_accepted);
    void drop_paths();
    // Adds the top-k children of `node` from its output row `row` to the tree and to cand_, and
    // keeps the head's state after that row as the node's.
    void expand(DraftTree & tree, int32_t node, int32_t row);
    // The next frontier: the `width` likeliest of cand_.
    void next_frontier(const DraftTree & tree);
    // One level: the frontier's rows in one pass, each in a sequence holding its ancestors.
    void expand_frontier(DraftTree & tree);

    uint8_t source_;
    bool zero_state_;
    llama_batch batch_;
    int32_t batch_cap_;
    std::vector<float> embd_;             // the batch's hidden-state rows
    std::vector<float> h_last_;           // target state before the next root (s_{root_pos-1})
    llama_pos h_last_pos_ = -1;           // its position (-1: none)
    static constexpr size_t kMaxPending = 256;   // rows queued before the head runs them anyway
    std::vector<int32_t> pend_tok_;       // rows the head has not run yet: x_p at p with s_{p-1}
    std::vector<llama_pos> pend_pos_;
    std::vector<float> pend_h_;
    int32_t last_row_ = 0;                // the last pass's last row
    std::vector<int32_t> text_;           // the committed tokens whose target states it was handed, from 0
    int32_t n_seq_;                       // sequences of the head's context: the widest frontier
    std::vector<float> rows_;             // the last target batch's states
    llama_pos rows_pos0_ = 0;
    size_t n_rows_ = 0;

    // the step in progress
    DraftShape shape_;
    llama_pos root_pos_ = 0;
    int32_t first_choice_ = -1;
    std::vector<int32_t> frontier_;
    std::vector<float> node_h_;           // per tree node that ran: the head's state after its row
    std::vector<int32_t> seq_of_;         // per tree node: the head sequence it ran in (-1: none)
    std::vector<int32_t> seq_for_;
    std::vector<uint8_t> taken_;
    std::vector<TokenProb> top_;
    std::vector<int32_t> cand_;
    std::vector<float> inputs_;           // run_pending: the states of its rows

    int32_t calls_ = 0;
    double llama_ms_ = 0;
    bool record_ = false;
    std::map<int32_t, std::vector<float>> recorded_;
};

}  // namespace heterospec
