// A paid drafter's tree (the draft model's, or the target's MTP head's) with the n-gram branches
// merged in, verified in one pass. The paid drafter drafts level by level as the allocation asks; the n-gram branches (which cost no model pass)
// are added at once and merge with the model's nodes where both propose the same token. They
// carry what the model's second choices do not: text that occurred before. Fixed shapes add
// them after the model's first level; the cost-aware allocation adds them first, and the model's
// levels only where they pay.
#pragma once

#include <memory>

#include "drafters/ngram.h"

namespace heterospec {

class HybridDrafter : public Drafter {
public:
    // `paid`: the draft model's drafter, or a head's (not owned: the engine's drafter of that name)
    HybridDrafter(Drafter & paid, const SuffixIndex & index) : paid_(&paid), ngram_(index) {}
    const char * name() const override { return "hybrid"; }
    bool has_free_source() const override { return true; }
    bool has_paid_levels() const override { return true; }
    int32_t paid_first_choice() const override { return paid_->paid_first_choice(); }
    uint8_t paid_source() const override { return paid_->paid_source(); }
    bool block_levels() const override { return paid_->block_levels(); }

    int32_t extend(DraftTree & tree, int32_t levels) override { return paid_->extend(tree, levels); }
    const std::vector<int32_t> & frontier() const override { return paid_->frontier(); }
    void narrow_frontier(const std::vector<int32_t> & nodes) override { paid_->narrow_frontier(nodes); }
    int32_t calls() const override { return paid_->calls(); }
    double llama_ms() const override { return paid_->llama_ms(); }
    double time_level(int32_t width) override { return paid_->time_level(width); }
    int32_t fit_depth(int32_t depth, int32_t width, llama_pos root_pos) const override {
        return paid_->fit_depth(depth, width, root_pos);
    }
    llama_context * context() const override { return paid_->context(); }
    bool wants_target_hidden() const override { return paid_->wants_target_hidden(); }
    void target_decoded(const int32_t * tokens, size_t n, llama_pos pos0, const int32_t * rows) override {
        paid_->target_decoded(tokens, n, pos0, rows);
    }
    size_t known_prefix(const std::vector<int32_t> & tokens) const override { return paid_->known_prefix(tokens); }
    void debug_record_states(bool on) override { paid_->debug_record_states(on); }
    std::vector<std::pair<int32_t, std::vector<float>>> debug_states() const override { return paid_->debug_states(); }

protected:
    void do_begin(const std::vector<int32_t> & prefix, bool reuse) override { paid_->begin(prefix, reuse); }
    void do_start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) override {
        paid_->start(tree, shape, root_pos, levels);
        ngram_.add_branches(tree, shape, levels);
    }
    void do_start_free(DraftTree & tree, const DraftShape & shape, llama_pos) override {
        ngram_.add_branches(tree, shape, 1);
    }
    void do_start_paid(DraftTree & tree, const DraftShape & shape, llama_pos root_pos) override {
        paid_->start_paid(tree, shape, root_pos);
    }
    // the paid drafter commits what it drafted, or catches up on a step it skipped
    void do_commit(const DraftTree & tree, const std::vector<int32_t> & accepted) override {
        paid_->commit(tree, accepted);
    }
    void do_defer(const DraftTree & tree, const std::vector<int32_t> & accepted) override {
        paid_->commit(tree, accepted);
    }

private:
    Drafter * paid_;
    NgramDrafter ngram_;
};

}  // namespace heterospec
