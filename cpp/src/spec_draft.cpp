// The speculative step's first half: plan the step's limits, draft the tree (cost-aware:
// paid levels only where they pay), allocate the nodes to verify.
#include <algorithm>

#include "engine_impl.h"
#include "entropy.h"

namespace heterospec {

// This step's limits (see StepLimits).
Engine::Impl::StepLimits Engine::Impl::plan(llama_pos P) const {
    const SpecParams & sp = gen.params.spec;
    const bool chain = gen.mode == Mode::chain;
    const bool one_path = chain || heterospec::one_path(verification);
    StepLimits L;
    L.shape.branching = one_path ? 1 : sp.branching;
    L.shape.width = one_path ? 1 : std::min(sp.width, n_seqs);
    L.shape.p_min = chain ? sp.p_min : 0.0f;
    const int32_t room = int32_t(n_ctx) - 1 - P;
    const int32_t batch_room = int32_t(llama_n_batch(target_ctx.get())) - 1;
    // over recurrent state, no deeper than the rollback planes reach
    const int32_t deepest = verification == Verification::paths ? std::min(room, max_depth) : room;
    auto fit_depth = [&](int32_t d) { return drafter->fit_depth(std::min(d, deepest), L.shape.width, P); };
    const int32_t depth = chain ? sp.n_max : sp.depth;
    const int32_t extra = gen.mode == Mode::heterospec ? Policy::alpha(depth) : 0;
    L.depth = fit_depth(depth);
    L.max_depth = fit_depth(depth + extra);
    // model-free branches cost nothing to draft: the cost-aware allocation may look deeper
    L.shape.free_depth = std::min(deepest, cost_aware() ? std::max(depth + extra, kFreeDepth) : depth + extra);
    L.budget = std::min<int32_t>({chain ? sp.n_max : sp.budget, room, batch_room, max_verify});
    L.max_budget = std::min<int32_t>({cost_aware() ? max_verify : L.budget + extra, room, batch_room, max_verify});
    if (L.budget < 1) L.depth = L.max_depth = 0;
    return L;
}

// What the acceptance model sees of node i.
NodeFeatures Engine::Impl::features(int32_t i) const {
    const DraftNode & n = tree[i];
    return {n.q, std::max(tree[n.parent].h, 0.0f), policy.bin(n.hp), cost->agreement(), n.source};
}

// Acceptance estimates (the product of conditional chances along the path) of every drafted
// node, best first, into `all` with their ids in `selected`; and guesses for the next
// level's (see worth_extending): a frontier node's child taken as likely, given its parent,
// as the frontier node was.
void Engine::Impl::estimates(std::vector<float> & all, std::vector<float> & next) {
    const AcceptanceModel & acc = cost->acceptance;
    est.assign(size_t(tree.size()), 1.0f);
    for (int32_t i = 1; i < tree.size(); ++i) est[size_t(i)] = est[size_t(tree[i].parent)] * acc.estimate(features(i));
    tree.select_by(est, size_t(tree.size()), selected);
    all.clear();
    for (int32_t n : selected) all.push_back(est[size_t(n)]);
    next.clear();
    for (int32_t f : drafter->frontier()) next.push_back(est[size_t(f)] * acc.estimate(features(f)));
}

// Cost-aware drafting: the free sources' nodes (n-gram branches) at once; a first paid level
// (a model pass) only where it can pay; then more paid levels only while another level can
// raise the step's score (section 4, beyond the paper). Returns false for a plain step.
bool Engine::Impl::draft_cost_aware(const StepLimits & L, llama_pos P, double t0) {
    const int32_t calls0 = drafter->calls();
    auto spent = [&] { return cost->spent_ms(drafter->calls() - calls0, now_ms() - t0); };
    const bool free = drafter->has_free_source();
    if (free && cost->should_draft(L.max_depth, false)) drafter->start_free(tree, L.shape, P);
    step_free_nodes = tree.size() - 1;
    if (drafter->has_paid_levels() && pay_first_level(L, free, spent())) {
        const double p0 = now_ms();
        drafter->start_paid(tree, L.shape, P);
        step_paid = true;
        extend_paid(L, spent);
        step_paid_ms = now_ms() - p0;
    }
    // pay_first_level estimated this very tree when it added nothing (free sources, no pay)
    if (step_paid || !free || !drafter->has_paid_levels()) estimates(accept_est, child_est);
    return !accept_est.empty() && cost->worth_drafting(accept_est[0], L.max_budget, spent(), step_paid, L.max_depth);
}

// Whether to pay for a first paid level: beside free sources, when it can beat their nodes
// alone; a paid source alone, when any tree could beat plain decoding.
bool Engine::Impl::pay_first_level(const StepLimits & L, bool free, double spent) {
    if (!free) return cost->should_draft(L.max_depth, true);
    estimates(accept_est, child_est);
    return cost->should_pay(accept_est, L.max_budget, L.max_depth, spent);
}

// After the first paid level: more levels while another can raise the step's score, none
// when no chain as confident as the best drafted node could pay.
template <typename Spent>
void Engine::Impl::extend_paid(const StepLimits & L, const Spent & spent) {
    estimates(accept_est, child_est);
    if (accept_est.empty() || !cost->worth_drafting(accept_est[0], L.max_budget, spent(), true, L.max_depth)) return;
    for (int32_t d = 1; d < L.max_depth; ++d) {
        if (d > 1) estimates(accept_est, child_est);
        const int32_t keep = cost->worth_extending(accept_est, child_est, L.max_budget, spent());
        if (keep == 0) break;
        // expand only the frontier nodes whose children could be chosen: the `keep` best guesses
        const std::vector<int32_t> & frontier = drafter->frontier();
        order.resize(frontier.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i);
        std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
            return child_est[size_t(a)] > child_est[size_t(b)]; });
        for (size_t i = 0; i < size_t(keep); ++i) order[i] = frontier[size_t(order[i])];
        order.resize(size_t(keep));
        drafter->narrow_frontier(order);
        if (drafter->extend(tree, 1) == 0) break;
    }
}

// Drafts this step's tree. Returns false when the step runs plain (nothing drafted to verify).
bool Engine::Impl::draft_tree(const StepLimits & L, llama_pos P, double t0) {
    step_paid = false;
    step_paid_ms = 0;
    step_free_nodes = 0;
    if (L.depth < 1) return false;
    if (cost_aware()) return draft_cost_aware(L, P, t0);
    drafter->start(tree, L.shape, P, L.depth);
    return true;
}

// Over recurrent state: keeps of `selected` (and of `accept`, its estimates, when given) what a
// batch of paths holds (path_batch.h) within the sequences, the rollback planes, the batch and
// the free cells, and the batch sizes of verifying the first n in `path_tokens`; returns how
// many are kept.
int32_t Engine::Impl::fit_paths(std::vector<float> * accept) {
    const int32_t cells = int32_t(n_ctx) - gen.n_past;
    const int32_t most = std::min(int32_t(llama_n_batch(target_ctx.get())), cells);
    fit_path_batch(tree, selected, n_seqs, max_depth, most, path_kept, path_tokens, path_scratch);
    for (size_t j = 0; j < path_kept.size(); ++j) {
        selected[j] = selected[size_t(path_kept[j])];
        if (accept) (*accept)[j] = (*accept)[size_t(path_kept[j])];
    }
    selected.resize(path_kept.size());
    if (accept) accept->resize(path_kept.size());
    return int32_t(path_kept.size());
}

// Chooses the nodes to verify, best first, into `selected`.
void Engine::Impl::allocate(const StepLimits & L, double t0, int32_t calls0, StepTrace & tr) {
    int32_t budget = L.budget;
    tr.entropy = meta_path_entropy(tree);
    if (gen.mode == Mode::heterospec) {
        tr.bin = policy.bin(tr.entropy);
        if (cost_aware()) {
            estimates(accept_est, child_est);
            // over recurrent state, every path runs apart: a budget's price is its batch's
            const std::vector<int32_t> * tokens = nullptr;
            int32_t max_budget = L.max_budget;
            if (verification == Verification::paths) {
                max_budget = std::min(max_budget, fit_paths(&accept_est));
                tokens = &path_tokens;
            }
            const BudgetChoice c = cost->choose(accept_est, max_budget,
                                               cost->spent_ms(drafter->calls() - calls0, now_ms() - t0), tokens);
            if (c.budget > 0) tr.predicted = float(c.expected_tokens);
            selected.resize(size_t(c.budget));   // ids in selection order, from estimates()
            return;
        }
        // the paper: predictable contexts draft deeper and verify fewer
        const Allocation a = policy.decide(tr.bin, L.depth, L.budget);
        const int32_t more = std::min(a.depth, L.max_depth) - L.depth;
        if (more > 0) drafter->extend(tree, more);
        budget = std::min(a.budget, L.max_budget);
    }
    tree.select(size_t(budget), selected);
}

}  // namespace heterospec
