// Drafting with a DFlash draft (llama.cpp: `--spec-type draft-dflash`,
// common_speculative_impl_draft_dflash): a small block-diffusion decoder in a model of its own
// (architecture dflash) whose KV cache holds, at each committed position p, keys and values made
// from the target's features there (the inputs of a few target layers, fused by fc: "injected").
// One pass over the block [root, <mask> x (block_size - 1)] at positions root_pos.., with
// attention over the injected text and the whole block, gives a distribution for each masked
// position: q_d for the token d places after the root, each independent of the tokens drafted
// before it.
//
// The tree is built from that one pass (DDTree): level d gives every frontier node the top-k of
// q_d as children, and keeps the `width` likeliest paths (the product of their q) as the next
// frontier. Deeper levels cost no pass, so the allocation prices a DFlash step as one pass
// whatever its depth (CostProfile::block_levels) and verifies the nodes that pay.
//
// The injection runs when the draft next drafts (a step drafted from n-grams alone costs it no
// pass), one pass over the rows the target committed since, before the block's.
#pragma once

#include <map>
#include <vector>

#include "dflash_head.h"
#include "drafters/drafter.h"
#include "llama.h"
#include "topk.h"

namespace heterospec {

class DflashDrafter : public Drafter {
public:
    // `head`: the draft's header, checked against the target (check_dflash_head) before any
    // context exists; `head_ctx` borrows from the target's context what the draft lacks.
    DflashDrafter(llama_context * target_ctx, llama_context * head_ctx, const DflashHead & head);
    ~DflashDrafter() override;
    const char * name() const override { return "dflash"; }
    bool has_free_source() const override { return false; }
    bool has_paid_levels() const override { return true; }
    bool block_levels() const override { return true; }
    int32_t paid_first_choice() const override { return first_choice_; }
    uint8_t paid_source() const override { return kFromDflash; }

    int32_t extend(DraftTree & tree, int32_t levels) override;
    const std::vector<int32_t> & frontier() const override { return frontier_; }
    void narrow_frontier(const std::vector<int32_t> & nodes) override;
    int32_t calls() const override { return calls_; }
    double llama_ms() const override { return llama_ms_; }
    double time_level(int32_t width) override;
    int32_t fit_depth(int32_t depth, int32_t width, llama_pos root_pos) const override;
    llama_context * context() const override { return head_; }
    bool wants_target_hidden() const override { return true; }
    void target_decoded(const int32_t * tokens, size_t n, llama_pos pos0, const int32_t * rows) override;
    size_t known_prefix(const std::vector<int32_t> & tokens) const override;
    // Tests: besides the features by position, each block's logits (rows 1.., n_vocab each)
    // under the key -1 - root_pos.
    void debug_record_states(bool on) override { record_ = on; recorded_.clear(); }
    std::vector<std::pair<int32_t, std::vector<float>>> debug_states() const override {
        return {recorded_.begin(), recorded_.end()};
    }

protected:
    // the prompt's rows are injected now, in the prompt's time (see HeadDrafter::do_begin)
    void do_begin(const std::vector<int32_t> &, bool) override;
    void do_start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) override;
    void do_start_paid(DraftTree & tree, const DraftShape & shape, llama_pos root_pos) override {
        do_start(tree, shape, root_pos, 1);
    }
    void do_commit(const DraftTree &, const std::vector<int32_t> & accepted) override { keep(accepted.size()); }
    void do_defer(const DraftTree &, const std::vector<int32_t> & accepted) override { keep(accepted.size()); }

private:
    // Injects the queued rows (one pass per batch of them), from their first position on.
    void inject_pending();
    // One pass over the block at root_pos, `n` tokens; its cells go again once its logits are read.
    void run_block(int32_t root, llama_pos root_pos, int32_t n);
    // After verification: the root and the n_accepted nodes after it stay; the rest go.
    void keep(size_t n_accepted);
    // The next level: the top-k of its position's distribution below every frontier node.
    void expand_level(DraftTree & tree);
    void decode(llama_batch & batch, const char * what);

    llama_context * target_;
    llama_context * head_;
    std::vector<int32_t> layers_;
    int32_t width_;                       // floats of target features per row
    int32_t n_vocab_;
    int32_t block_;                       // the trained block: the root and block_ - 1 masks
    int32_t mask_;
    llama_batch block_batch_;
    llama_batch inj_;                     // the injection's rows: features, no tokens
    int32_t inj_cap_;

    static constexpr size_t kMaxPending = 256;   // rows queued before they are injected anyway
    std::vector<llama_pos> pend_pos_;
    std::vector<float> pend_f_;
    std::vector<int32_t> text_;           // the committed tokens whose features it was handed, from 0
    llama_pos rows_pos0_ = 0;             // the last target batch's rows: their first position
    size_t n_rows_ = 0;

    // the step in progress
    DraftShape shape_;
    int32_t levels_ = 0;                  // the levels this step's block gives
    int32_t level_ = 0;                   // the levels drafted so far
    int32_t first_choice_ = -1;
    std::vector<int32_t> frontier_;
    std::vector<int32_t> cand_;
    std::vector<TokenProb> top_;

    int32_t calls_ = 0;
    double llama_ms_ = 0;
    bool record_ = false;
    std::map<int32_t, std::vector<float>> recorded_;
};

}  // namespace heterospec
