// Drafting with the target's own MTP (nextn) layers: Qwen3.5/3.6-class models ship one head that
// reads the target's last hidden state h_{p-1} and the token x_p and predicts x_{p+1}
// (llama.cpp: `--spec-type draft-mtp`, common_speculative_impl_draft_mtp).
//
// The head runs in a second context on the same model (LLAMA_CONTEXT_TYPE_MTP) with a KV cache
// of its own over the nextn layer. After every target pass it queues the same tokens, each
// paired with the target's hidden state one position before (target_decoded), and keeps the
// accepted ones; it runs them when it next drafts, in the same pass as the draft's root, so
// that its cache follows the target's text and a step drafted from n-grams alone costs no head
// pass (llama.cpp runs the head over every target batch, then once more to draft).
// A draft level is one head pass: the frontier node's token with the hidden state the head gave
// its parent. Each level adds the top-k children of the frontier node and expands the best one
// (a chain with its alternatives: the head's state follows one path).
#pragma once

#include <cstdint>
#include <vector>

#include "draft_tree.h"
#include "drafters/drafter.h"
#include "llama.h"
#include "sampler.h"

namespace heterospec {

class MtpDrafter : public Drafter {
public:
    MtpDrafter(llama_context * target_ctx, llama_context * mtp_ctx);
    ~MtpDrafter() override;
    const char * name() const override { return "mtp"; }
    bool has_free_source() const override { return false; }
    bool has_paid_levels() const override { return true; }
    int32_t paid_first_choice() const override { return first_choice_; }
    uint8_t paid_source() const override { return kFromMtp; }

    int32_t extend(DraftTree & tree, int32_t levels) override;
    const std::vector<int32_t> & frontier() const override { return frontier_; }
    void narrow_frontier(const std::vector<int32_t> & nodes) override;
    int32_t calls() const override { return calls_; }
    double llama_ms() const override { return llama_ms_; }
    double time_level(int32_t width) override;
    llama_context * context() const override { return mtp_; }
    bool wants_target_hidden() const override { return true; }
    void target_decoded(const int32_t * tokens, size_t n, llama_pos pos0, const int32_t * rows) override;

protected:
    // The prompt's rows run now, in the prompt's time: a draft level's pass must not carry them,
    // or the allocation, which prices a level by what its passes cost, would price the head at
    // a pass over the prompt and never pay for it again.
    void do_begin(const std::vector<int32_t> &, bool) override {
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

private:
    // One head pass over rows (token, position, hidden state), logits for the last row when asked.
    void decode(size_t n_rows, bool logits_last);
    void add_row(int32_t token, llama_pos pos, const float * h);
    void queue(int32_t token, llama_pos pos, const float * h);
    // Runs the queued rows (and `root` at root_pos after them, with logits, when given).
    void run_pending(const int32_t * root, llama_pos root_pos);
    // After verification: the batch's first 1 + n_accepted rows stay (the root and the accepted
    // path); the head's cells beyond them go, and the last kept row's hidden state seeds the next
    // draft.
    void keep(size_t n_accepted);
    void expand(DraftTree & tree, int32_t node, const float * logits);

    llama_context * target_;
    llama_context * mtp_;
    int32_t n_embd_, n_vocab_;
    llama_batch batch_;
    int32_t batch_cap_;
    std::vector<float> embd_;             // the batch's hidden-state rows
    std::vector<float> h_last_;           // target hidden state before the next root (h_{root_pos-1})
    llama_pos h_last_pos_ = -1;           // its position (-1: none)
    static constexpr size_t kMaxPending = 256;   // rows queued before the head runs them anyway
    std::vector<int32_t> pend_tok_;       // rows the head has not run yet: x_p at p with h_{p-1}
    std::vector<llama_pos> pend_pos_;
    std::vector<float> pend_h_;
    int32_t last_row_ = 0;                // the last pass's output row
    std::vector<float> rows_;             // the last target batch's hidden states
    llama_pos rows_pos0_ = 0;
    size_t n_rows_ = 0;

    // the step in progress
    DraftShape shape_;
    llama_pos root_pos_ = 0;
    int32_t first_choice_ = -1;
    std::vector<int32_t> frontier_;
    std::vector<float> h_frontier_;       // the head's hidden state at the frontier's parent
    std::vector<TokenProb> top_;
    std::vector<int32_t> cand_;

    int32_t calls_ = 0;
    double llama_ms_ = 0;
};

}  // namespace heterospec
