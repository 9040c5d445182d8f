// The draft model's tree with the n-gram branches merged in, verified in one pass. The model
// drafts level by level as the allocation asks; the n-gram branches (which cost no model pass)
// are added at once and merge with the model's nodes where both propose the same token. They
// carry what the model's second choices do not: text that occurred before. Fixed shapes add
// them after the model's first level; the cost-aware allocation adds them first, and the model's
// levels only where they pay.
#pragma once

#include "drafters/draft_model.h"
#include "drafters/ngram.h"

namespace heterospec {

class HybridDrafter : public Drafter {
public:
    HybridDrafter(llama_context * draft_ctx, int32_t n_seq_max, CachedTokens & cached, const SuffixIndex & index)
        : model_(draft_ctx, n_seq_max, cached), ngram_(index) {}
    const char * name() const override { return "hybrid"; }
    bool has_free_source() const override { return true; }
    bool has_paid_levels() const override { return true; }
    int32_t paid_first_choice() const override { return model_.paid_first_choice(); }

    int32_t extend(DraftTree & tree, int32_t levels) override { return model_.extend(tree, levels); }
    const std::vector<int32_t> & frontier() const override { return model_.frontier(); }
    void narrow_frontier(const std::vector<int32_t> & nodes) override { model_.narrow_frontier(nodes); }
    int32_t calls() const override { return model_.calls(); }
    double llama_ms() const override { return model_.llama_ms(); }
    double time_level(int32_t width) override { return model_.time_level(width); }
    int32_t fit_depth(int32_t depth, int32_t width, llama_pos root_pos) const override {
        return model_.fit_depth(depth, width, root_pos);
    }
    llama_context * context() const override { return model_.context(); }

protected:
    void do_begin(const std::vector<int32_t> & prefix, bool reuse) override { model_.begin(prefix, reuse); }
    void do_start(DraftTree & tree, const DraftShape & shape, llama_pos root_pos, int32_t levels) override {
        model_.start(tree, shape, root_pos, levels);
        ngram_.add_branches(tree, shape, levels);
    }
    void do_start_free(DraftTree & tree, const DraftShape & shape, llama_pos) override {
        ngram_.add_branches(tree, shape, 1);
    }
    void do_start_paid(DraftTree & tree, const DraftShape & shape, llama_pos root_pos) override {
        model_.start_paid(tree, shape, root_pos);
    }
    // the model commits what it drafted, or catches up on a step it skipped
    void do_commit(const DraftTree & tree, const std::vector<int32_t> & accepted) override {
        model_.commit(tree, accepted);
    }
    void do_defer(const DraftTree & tree, const std::vector<int32_t> & accepted) override {
        model_.commit(tree, accepted);
    }

private:
    DraftModelDrafter model_;
    NgramDrafter ngram_;
};

}  // namespace heterospec
