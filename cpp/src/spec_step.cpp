// The speculative step: drafting (spec_draft.cpp), then verification of the tree in one target
// pass, the exact walk, commit of the accepted path, and calibration of the cost model.
#include <algorithm>

#include "engine_impl.h"

namespace heterospec {

// One speculative step (algorithm section 1): plan, draft, allocate, verify, walk, commit,
// observe.
bool Engine::Impl::step_spec() {
    Generation & g = gen;
    const llama_pos P = g.n_past;   // the root's position
    if (uint32_t(P) >= n_ctx) {     // no room to run the root: plain decoding stops here too
        g.finish_reason = "length";
        return false;
    }
    const double t0 = now_ms();
    const double llama0 = verifier->llama_ms() + drafter->llama_ms();
    const int32_t calls0 = drafter->calls();
    StepTrace tr{0, 0, 0, 0, 0.0f, -1, 0.0f, 0, 0, 0};

    const StepLimits L = plan(P);
    tree.reset(g.root);
    const bool drafted = draft_tree(L, P, t0);
    if (drafted) allocate(L, t0, calls0, tr);
    else selected.clear();   // a plain step: the root alone
    // a checkpointed recurrent state follows one path; over recurrent state, what fits the
    // paths layout (a head reading the target's states gets the accepted path's rows at commit,
    // in every layout)
    if (one_path(verification)) keep_one_path(tree, selected);
    if (verification == Verification::paths) fit_paths();
    tb.build(tree, selected);
    const double t1 = now_ms();

    const double ckpt0 = verifier->checkpoint_ms();
    verifier->decode(tb, P, tb.size() - 1);   // as many sequences as nodes: fixed per budget
    g.stats.target_calls++;
    const double t2 = now_ms();
    const double ckpt_save = verifier->checkpoint_ms() - ckpt0;

    const WalkResult w = walk_tree(
        tb, [&](int32_t e) {
            g.logits = verifier->logits(e);
            return wrong_rule ? wrong_rule_draw(e) : g.sampler->sample(g.logits, g.history.data(), g.history.size()); },
        [&](int32_t y) { return accept(y); }, accepted);
    g.stats.accepted_draft += int32_t(accepted.size());
    for (int32_t e : accepted) {   // also when generation ends inside the path
        const uint8_t source = tree[tb.node[size_t(e)]].source;
        g.stats.accepted_model += (source & kFromModel) != 0;
        g.stats.accepted_ngram += (source & kFromNgram) != 0;
        g.stats.accepted_mtp += (source & kFromMtp) != 0;
        g.stats.accepted_eagle3 += (source & kFromEagle3) != 0;
        g.stats.accepted_dflash += (source & kFromDflash) != 0;
    }
    if (!w.stopped) commit(w, P);
    // generation ends inside the path: the target keeps what was accepted, so that the next
    // call's prompt cache finds it (a recurrent state keeps nothing it cannot roll back to)
    else verifier->commit(tb, w.last, P);
    // the state's save (in the pass) and restore (at commit) are priced apart from verification
    const double ckpt = verifier->checkpoint_ms() - ckpt0;
    if (cost_aware()) observe(w, drafted, drafter->calls() - calls0, t1 - t0, t2 - t1 - ckpt_save, ckpt);
    const double t3 = now_ms();
    g.stats.steps++;
    g.stats.nodes_verified += tb.size() - 1;
    g.stats.draft_ms += t1 - t0;
    g.stats.verify_ms += t2 - t1;
    g.stats.host_ms += (t3 - t0) - (verifier->llama_ms() + drafter->llama_ms() - llama0);
    if (tr.predicted > 0) {
        g.stats.predicted_steps++;
        g.stats.predicted_tokens += tr.predicted;
        g.stats.realised_tokens += w.emitted;
    }
    if (g.params.spec.trace) {
        tr.depth = tb.max_depth();
        tr.nodes = tb.size() - 1;
        tr.accepted = w.emitted;
        tr.rank = tb.rank[size_t(w.last)];
        tr.levels = drafter->calls() - calls0;
        tr.paths = tb.n_paths;
        tr.batch = batch_tokens();
        g.trace.push_back(tr);
    }
    return !w.stopped;
}

// Keeps the accepted path in the target's and the drafter's caches; the walk's extra token
// is the next root.
void Engine::Impl::commit(const WalkResult & w, llama_pos P) {
    verifier->commit(tb, w.last, P);
    for (int32_t & e : accepted) e = tb.node[size_t(e)];
    drafter->commit(tree, accepted);
    gen.n_past = P + tb.depth[size_t(w.last)] + 1;
    gen.root = w.token;
}

// Calibrates acceptance against what the target did, and the costs against the clock. The
// walk reveals the fate of every drafted node whose parent it reached, verified or not: the
// child it followed was accepted, and at the last node reached, the child whose token the
// target drew would have been. Observing those too keeps the calibration free of the bias of
// learning only from nodes chosen for verification, and plain steps still teach it.
void Engine::Impl::observe(const WalkResult & w, bool drafted, int32_t draft_passes, double draft_ms,
                           double verify_ms, double checkpoint_ms) {
    StepRecord r;
    r.drafted = drafted;
    r.emitted = w.emitted;
    r.draft_passes = draft_passes;
    r.draft_ms = draft_ms;
    r.verified_tokens = batch_tokens();
    r.verify_ms = verify_ms;
    r.checkpoint_ms = checkpoint_ms;
    if (tree.size() > 1) {
        on_path.assign(size_t(tree.size()), 0);
        on_path[0] = 1;
        for (int32_t e = w.last; e > 0; e = tb.parent[size_t(e)]) on_path[size_t(tb.node[size_t(e)])] = 1;
        const int32_t last = tb.node[size_t(w.last)];
        const int32_t first_choice = root_best();
        const int32_t paid_first = step_paid ? drafter->paid_first_choice() : -1;
        bool agreed = false;
        for (int32_t i = 1; i < tree.size(); ++i) {
            const DraftNode & n = tree[i];
            if (!on_path[size_t(n.parent)]) continue;   // the target never looked there
            const bool accepted = on_path[size_t(i)] || (n.parent == last && n.token == w.token);
            if (i == first_choice) agreed = accepted;
            if (i == paid_first) cost->observe_paid_agreement(accepted);
            cost->observe_node(features(i), accepted);
            // accepted tokens that only the paid source proposed: what it alone earned
            if (on_path[size_t(i)] && (n.source & kPaidSources) && !(n.source & kFromNgram)) r.paid_tokens++;
        }
        cost->observe_agreement(agreed);
    }
    if (step_paid && drafter->has_free_source()) {
        r.paid_apart = true;
        r.paid_ms = step_paid_ms;
        r.drafted = drafted && step_free_nodes > 0;   // the free sources' part, judged alone
    } else {
        r.paid_tokens = 0;
    }
    cost->observe_step(r);
}

// The root's most probable child (the drafter's first choice).
int32_t Engine::Impl::root_best() const {
    int32_t best = 1;
    for (int32_t i = 2; i < tree.size(); ++i)
        if (tree[i].parent == 0 && tree[i].q > tree[best].q) best = i;
    return best;
}

int32_t Engine::Impl::wrong_rule_draw(int32_t e) {
    const auto & dist = gen.sampler->distribution(verifier->logits(e), gen.history.data(), gen.history.size());
    if (tb.child_begin[size_t(e)] == tb.child_begin[size_t(e) + 1]) return gen.sampler->draw(dist);
    const int32_t c = tb.children[size_t(tb.child_begin[size_t(e)])];
    float p = 0.0f;
    for (const auto & tp : dist) if (tp.id == tb.token[size_t(c)]) p = tp.p;
    const float q = tree[tb.node[size_t(c)]].q;
    if (gen.sampler->uniform() < std::min(1.0f, p / q)) return tb.token[size_t(c)];
    return gen.sampler->draw(dist);
}

}  // namespace heterospec
