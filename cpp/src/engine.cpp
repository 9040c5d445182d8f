// The decoding loop: request checks, prompt processing, one step at a time, stop conditions
// and statistics.
#include "heterospec/engine.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <mutex>
#include <stdexcept>

#include "draft_tree.h"
#include "drafters/drafter.h"
#include "cost_model.h"
#include "entropy.h"
#include "mode.h"
#include "model.h"
#include "policy.h"
#include "prompt_cache.h"
#include "sampler.h"
#include "sparse_prefill.h"
#include "suffix_index.h"
#include "text_stream.h"
#include "topk.h"
#include "verifier.h"

namespace heterospec {

// The longest chain a recurrent target verifies: llama.cpp keeps a copy of the recurrent state
// per token of it (n_rs_seq rollback planes).
constexpr int32_t kMaxChain = 16;

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
    std::vector<StepTrace> trace;
    std::vector<TokenLogprob> logprobs;
    const float * logits = nullptr;  // the target's logits the next accepted token was drawn from
    double t_start = 0, t_first = 0;
};

struct Engine::Impl {
    EngineOptions opts;
    ModelPtr target;
    ModelPtr draft;
    ContextPtr target_ctx;
    ContextPtr draft_ctx;
    ContextPtr mtp_ctx;           // the target's MTP (nextn) head, when it has one llama.cpp runs
    std::string mtp_error;        // why a target with nextn layers has none
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
    CostProfile target_profile;   // t_verify(n), measured once
    Drafter * drafter = nullptr;  // the generation's
    CostModel * cost = nullptr;
    std::mutex mu;
    Generation gen;
    // per-step buffers, reused
    DraftTree tree;
    TreeBatch tb;
    Policy policy;
    bool wrong_rule = false;  // tests only: see Engine::debug_wrong_rule
    std::vector<float> accept_est, child_est;   // acceptance estimates: drafted nodes, guessed children
    std::vector<uint8_t> on_path;
    std::vector<float> est;
    std::vector<int32_t> order;
    std::vector<int32_t> selected, accepted;
    // the step's paid levels beside free sources (draft_cost_aware), judged apart in observe()
    bool step_paid = false;
    double step_paid_ms = 0;
    int32_t step_free_nodes = 0;
    std::vector<char> piece_buf = std::vector<char>(256);

    std::string_view piece(int32_t token) {
        int32_t n = llama_token_to_piece(vocab, token, piece_buf.data(), int32_t(piece_buf.size()), 0, false);
        if (n < 0) {
            piece_buf.resize(size_t(-n));
            n = llama_token_to_piece(vocab, token, piece_buf.data(), int32_t(piece_buf.size()), 0, false);
        }
        return std::string_view(piece_buf.data(), size_t(std::max(n, 0)));
    }

    // Runs `tokens` through the target at positions n_past.., logits for the last one only.
    void decode_target(const int32_t * tokens, size_t n) {
        decode_run(target_ctx.get(), batch.get(), tokens, n, gen.n_past, 1, true, "target");
        target_cached.keep(size_t(gen.n_past));
        target_cached.append(tokens, n);
        gen.n_past += llama_pos(n);
    }

    // Where sparse prefill ends in a prompt of n tokens: its last dense_tail tokens, and at least
    // its last token, run dense (the same cut in every mode, so that all see the same prompt); 0
    // when sparse prefill is off or the prompt is all tail.
    size_t sparse_end(size_t n) const {
        const SparsePrefillOptions & sp = opts.sparse_prefill;
        return sp.on() && n > size_t(sp.dense_tail) ? std::min(n - size_t(sp.dense_tail), n - 1) : 0;
    }

    // Processes the prompt. Speculative modes run all but its last token, the first step's
    // root; plain decoding runs it all, for the first token's logits. With the prompt cache,
    // the prefix both caches hold already is kept. Sparse prefill covers the target's prompt
    // processing up to sparse_end (and the draft model's whole prompt: it only proposes); with
    // it, plain decoding too runs the last token apart (dense, as the first speculative step
    // does), so that both see the same prompt.
    void process_prompt(const std::vector<int32_t> & prompt, bool reuse) {
        Generation & g = gen;
        const size_t cut = sparse_end(prompt.size());
        if (g.mode != Mode::ar) {
            const std::vector<int32_t> prefix(prompt.begin(), prompt.end() - 1);
            const size_t cached = reuse ? reusable(prefix) : 0;
            if (cut > cached) {   // the sparse part, then the dense tail on top of it
                {
                    SparsePrefillScope sparse(target_ctx.get(), opts.sparse_prefill);
                    g.stats.cached_tokens = int32_t(verifier->begin({prefix.begin(), prefix.begin() + cut}, reuse));
                    g.stats.sparse_kept_fraction = sparse.kept_fraction(&g.stats.sparse_columns);
                }
                verifier->begin(prefix, true);
            } else {
                g.stats.cached_tokens = int32_t(verifier->begin(prefix, reuse));
            }
            {
                SparsePrefillScope sparse(drafter->context(), opts.sparse_prefill);
                drafter->begin(prefix, reuse);
            }
            g.n_past = llama_pos(prefix.size());
            g.root = prompt.back();
            return;
        }
        const size_t common = reuse ? std::min(target_cached.common_prefix(prompt), prompt.size() - 1) : 0;
        g.n_past = keep_prefix(target_ctx.get(), llama_pos(common));
        target_cached.keep(size_t(g.n_past));
        g.stats.cached_tokens = int32_t(g.n_past);
        if (!opts.sparse_prefill.on()) {
            decode_target(prompt.data() + g.n_past, prompt.size() - size_t(g.n_past));
            return;
        }
        if (cut > size_t(g.n_past)) {
            SparsePrefillScope sparse(target_ctx.get(), opts.sparse_prefill);
            decode_target(prompt.data() + g.n_past, cut - size_t(g.n_past));
            g.stats.sparse_kept_fraction = sparse.kept_fraction(&g.stats.sparse_columns);
        }
        // the dense tail as speculation runs it: the prefix, then the last token apart
        decode_target(prompt.data() + g.n_past, prompt.size() - 1 - size_t(g.n_past));
        decode_target(&prompt.back(), 1);
    }

    // How much of `tokens` the target's cache can keep: their common prefix, or nothing for a
    // recurrent state that would have to be cut (it holds the end of its text only).
    size_t reusable(const std::vector<int32_t> & tokens) const {
        const size_t common = target_cached.common_prefix(tokens);
        return verification == Verification::trees || common == target_cached.size() ? common : 0;
    }

    // After a failure inside llama.cpp the caches' contents are unknown: the next call starts cold.
    void forget_caches() {
        target_cached.clear();
        draft_cached.clear();
    }

    // Adds one sampled token to the output. Returns false when generation must end here.
    bool accept(int32_t token) {
        Generation & g = gen;
        index.push(token);   // ends of generation too: a repeated request ends the same way
        if (!g.params.ignore_eos && llama_vocab_is_eog(vocab, token)) {
            g.finish_reason = "stop";
            return false;
        }
        g.tokens.push_back(token);
        g.history.push_back(token);
        if (g.params.logprobs >= 0) g.logprobs.push_back(token_logprob(g.logits, n_vocab, token, g.params.logprobs));
        if (g.tokens.size() == 1) g.t_first = now_ms();
        if (g.text->push(piece(token))) {
            g.finish_reason = "stop";
            return false;
        }
        if (g.params.max_tokens >= 0 && int32_t(g.tokens.size()) >= g.params.max_tokens) {
            g.finish_reason = "length";
            return false;
        }
        return true;
    }

    // Plain autoregressive step: sample from the last logits, then feed the token back.
    bool step_ar() {
        const float * logits = llama_get_logits_ith(target_ctx.get(), -1);
        if (!logits) throw std::runtime_error("no logits available from the target");
        const int32_t token = gen.sampler->sample(logits, gen.history.data(), gen.history.size());
        gen.logits = logits;
        if (!accept(token)) return false;
        if (uint32_t(gen.n_past) >= n_ctx) {  // no room to feed the token back
            gen.finish_reason = "length";
            return false;
        }
        decode_target(&token, 1);
        gen.stats.target_calls++;
        gen.stats.steps++;
        return true;
    }

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

    static constexpr int32_t kFreeDepth = 48;

    StepLimits plan(llama_pos P) const {
        const SpecParams & sp = gen.params.spec;
        const bool chain = gen.mode == Mode::chain;
        const bool one_path = chain || heterospec::one_path(verification);
        StepLimits L;
        L.shape.branching = one_path ? 1 : sp.branching;
        L.shape.width = one_path ? 1 : std::min(sp.width, n_seqs);
        L.shape.p_min = chain ? sp.p_min : 0.0f;
        const int32_t room = int32_t(n_ctx) - 1 - P;
        const int32_t batch_room = int32_t(llama_n_batch(target_ctx.get())) - 1;
        auto fit_depth = [&](int32_t d) { return drafter->fit_depth(std::min(d, room), L.shape.width, P); };
        const int32_t depth = chain ? sp.n_max : sp.depth;
        const int32_t extra = gen.mode == Mode::heterospec ? Policy::alpha(depth) : 0;
        L.depth = fit_depth(depth);
        L.max_depth = fit_depth(depth + extra);
        // model-free branches cost nothing to draft: the cost-aware allocation may look deeper
        L.shape.free_depth = std::min(room, cost_aware() ? std::max(depth + extra, kFreeDepth) : depth + extra);
        L.budget = std::min<int32_t>({chain ? sp.n_max : sp.budget, room, batch_room, max_verify});
        L.max_budget = std::min<int32_t>({cost_aware() ? max_verify : L.budget + extra, room, batch_room, max_verify});
        if (L.budget < 1) L.depth = L.max_depth = 0;
        return L;
    }

    // What the acceptance model sees of node i.
    NodeFeatures features(int32_t i) const {
        const DraftNode & n = tree[i];
        return {n.q, std::max(tree[n.parent].h, 0.0f), policy.bin(n.hp), cost->agreement(), n.source};
    }

    // Acceptance estimates (the product of conditional chances along the path) of every drafted
    // node, best first, into `all` with their ids in `selected`; and guesses for the next
    // level's (see worth_extending): a frontier node's child taken as likely, given its parent,
    // as the frontier node was.
    void estimates(std::vector<float> & all, std::vector<float> & next) {
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
    bool draft_cost_aware(const StepLimits & L, llama_pos P, double t0) {
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
        return !accept_est.empty() && cost->worth_drafting(accept_est[0], L.max_budget, spent(), step_paid);
    }

    // Whether to pay for a first paid level: beside free sources, when it can beat their nodes
    // alone; a paid source alone, when any tree could beat plain decoding.
    bool pay_first_level(const StepLimits & L, bool free, double spent) {
        if (!free) return cost->should_draft(L.max_depth, true);
        estimates(accept_est, child_est);
        return cost->should_pay(accept_est, L.max_budget, L.max_depth, spent);
    }

    // After the first paid level: more levels while another can raise the step's score, none
    // when no chain as confident as the best drafted node could pay.
    template <typename Spent>
    void extend_paid(const StepLimits & L, const Spent & spent) {
        estimates(accept_est, child_est);
        if (accept_est.empty() || !cost->worth_drafting(accept_est[0], L.max_budget, spent(), true)) return;
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
    bool draft_tree(const StepLimits & L, llama_pos P, double t0) {
        step_paid = false;
        step_paid_ms = 0;
        step_free_nodes = 0;
        if (L.depth < 1) return false;
        if (cost_aware()) return draft_cost_aware(L, P, t0);
        drafter->start(tree, L.shape, P, L.depth);
        return true;
    }

    // Chooses the nodes to verify, best first, into `selected`.
    void allocate(const StepLimits & L, double t0, int32_t calls0, StepTrace & tr) {
        int32_t budget = L.budget;
        tr.entropy = meta_path_entropy(tree);
        if (gen.mode == Mode::heterospec) {
            tr.bin = policy.bin(tr.entropy);
            if (cost_aware()) {
                estimates(accept_est, child_est);
                const BudgetChoice c = cost->choose(accept_est, L.max_budget,
                                                   cost->spent_ms(drafter->calls() - calls0, now_ms() - t0));
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

    bool cost_aware() const { return gen.mode == Mode::heterospec && gen.params.spec.cost_aware; }

    // Keeps the accepted path in the target's and the drafter's caches; the walk's extra token
    // is the next root.
    void commit(const WalkResult & w, llama_pos P) {
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
    void observe(const WalkResult & w, bool drafted, int32_t draft_passes, double draft_ms, double verify_ms,
                 double checkpoint_ms) {
        StepRecord r;
        r.drafted = drafted;
        r.emitted = w.emitted;
        r.draft_passes = draft_passes;
        r.draft_ms = draft_ms;
        r.verified_tokens = tb.size();
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
    int32_t root_best() const {
        int32_t best = 1;
        for (int32_t i = 2; i < tree.size(); ++i)
            if (tree[i].parent == 0 && tree[i].q > tree[best].q) best = i;
        return best;
    }

    // One speculative step (algorithm section 1): plan, draft, allocate, verify, walk, commit,
    // observe.
    bool step_spec() {
        Generation & g = gen;
        const llama_pos P = g.n_past;   // the root's position
        if (uint32_t(P) >= n_ctx) {     // no room to run the root: plain decoding stops here too
            g.finish_reason = "length";
            return false;
        }
        const double t0 = now_ms();
        const double llama0 = verifier->llama_ms() + drafter->llama_ms();
        const int32_t calls0 = drafter->calls();
        StepTrace tr{0, 0, 0, 0, 0.0f, -1, 0.0f, 0};

        const StepLimits L = plan(P);
        tree.reset(g.root);
        const bool drafted = draft_tree(L, P, t0);
        if (drafted) allocate(L, t0, calls0, tr);
        else selected.clear();   // a plain step: the root alone
        // a recurrent state, and an MTP head's, follow one path
        if (one_path(verification) || drafter->wants_target_hidden()) keep_one_path(tree, selected);
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
            g.trace.push_back(tr);
        }
        return !w.stopped;
    }

    // The cost ladder t_verify(n) of the target, once per engine, and the cost of a drafting
    // level, once per drafter. Clears the caches.
    // `progress(done, total)`, if given, follows the measurement (a big model's takes a while).
    void measure_profile(Speculator & s, int32_t width, const ProfileProgress & progress = nullptr) {
        if (!s.cost.profile.empty()) return;
        forget_caches();
        static constexpr int32_t kLadder[] = {1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256};
        const int32_t most = std::min<int32_t>(max_verify + 1, int32_t(llama_n_batch(target_ctx.get())));
        const int32_t steps = int32_t(std::count_if(std::begin(kLadder), std::end(kLadder),
                                                    [&](int32_t n) { return n <= most; })) + 1;
        if (target_profile.empty()) {
            const int32_t token = std::max(0, llama_vocab_bos(vocab));
            time_pass(target_ctx.get(), batch.get(), 1, token);   // warm-up
            for (int32_t n : kLadder) {
                if (n > most) break;
                target_profile.sizes.push_back(n);
                target_profile.verify_ms.push_back(time_pass(target_ctx.get(), batch.get(), n, token));
                if (progress) progress(int32_t(target_profile.sizes.size()), steps);
            }
        }
        s.cost.profile = target_profile;
        s.cost.profile.draft_level_ms = s.drafter->time_level(width);
        s.cost.profile.checkpoint_ms = checkpoint_ms;
        if (progress) progress(steps, steps);
    }

    // The paid source whose level cost a stored profile carries: the draft model's, else the
    // target's MTP head's, else none.
    uint8_t profiled_source() const {
        uint8_t sources = 0;
        for (const Speculator & s : speculators) sources |= s.drafter->paid_source();
        return sources & kFromModel ? kFromModel : sources & kFromMtp;
    }

    // The drafter a call asks for: its own, else the engine's.
    const std::string & drafter_for(const SpecParams & sp) const {
        return sp.drafter.empty() || sp.drafter == "auto" ? default_drafter : sp.drafter;
    }

    Speculator * find_speculator(const std::string & name) {
        for (Speculator & s : speculators)
            if (s.name == name) return &s;
        return nullptr;
    }

    int32_t wrong_rule_draw(int32_t e) {
        const auto & dist = gen.sampler->distribution(verifier->logits(e), gen.history.data(), gen.history.size());
        if (tb.child_begin[size_t(e)] == tb.child_begin[size_t(e) + 1]) return gen.sampler->draw(dist);
        const int32_t c = tb.children[size_t(tb.child_begin[size_t(e)])];
        float p = 0.0f;
        for (const auto & tp : dist) if (tp.id == tb.token[size_t(c)]) p = tp.p;
        const float q = tree[tb.node[size_t(c)]].q;
        if (gen.sampler->uniform() < std::min(1.0f, p / q)) return tb.token[size_t(c)];
        return gen.sampler->draw(dist);
    }

    void finish() {
        Generation & g = gen;
        g.done = true;
        const double t_end = now_ms();
        if (g.t_first == 0) g.t_first = t_end;
        g.stats.prompt_ms = g.t_first - g.t_start;
        g.stats.decode_ms = t_end - g.t_first;
        g.stats.generated_tokens = int32_t(g.tokens.size());
        if (g.mode != Mode::ar) g.stats.draft_calls = drafter->calls();
        if (cost_aware()) g.stats.profile_scale = cost->profile_scale();
    }
};

Engine::Engine(const EngineOptions & options) : impl_(new Impl) {
    Impl & m = *impl_;
    validate(options);
    check_sparse_prefill(options.sparse_prefill);
    m.opts = options;
    set_log_verbose(options.verbose);

    m.target = load_target(options.target, m.mtp_error);
    if (!options.draft.path.empty()) {
        m.draft = load_model(options.draft);
        check_same_vocab(m.target.get(), m.draft.get());
        // the draft's tree: one sequence per path, in one unified cache
        check_tree_capable(m.draft.get(), options.draft.path);
    }
    m.vocab = llama_model_get_vocab(m.target.get());
    m.n_vocab = llama_vocab_n_tokens(m.vocab);

    ContextSpec spec;
    spec.n_ctx = options.n_ctx ? options.n_ctx : default_n_ctx(m.target.get());
    spec.n_batch = options.n_batch;
    spec.n_threads = options.n_threads > 0 ? options.n_threads : default_threads();
    spec.n_threads_batch = options.n_threads_batch > 0 ? options.n_threads_batch : spec.n_threads;
    spec.flash_attn = options.flash_attn;
    spec.cache_type_k = options.cache_type_k;
    spec.cache_type_v = options.cache_type_v;
    ContextSpec target_spec = spec;
    if (tree_capable(m.target.get())) {
        // one sequence per verified node; llama.cpp wants no more sequences than a batch holds
        m.n_seqs = std::min<int32_t>({options.max_nodes, int32_t(spec.n_ctx), int32_t(spec.n_batch)});
        target_spec.n_seq_max = spec.n_seq_max = uint32_t(m.n_seqs);
        target_spec.kv_unified = spec.kv_unified = true;
    } else {
        // recurrent state: one sequence, with a snapshot per token of a chain to roll back to
        // (each plane costs a copy of the state; the pin clamps it to 0 where it cannot)
        target_spec.n_rs_seq = uint32_t(std::min(options.max_nodes, kMaxChain));
    }
    m.target_ctx = make_context(m.target.get(), target_spec);
    m.batch.reset(llama_batch_ext_init(m.target_ctx.get()));
    m.verification = tree_capable(m.target.get()) ? Verification::trees
                   : llama_n_rs_seq(m.target_ctx.get()) > 0 ? Verification::chains : Verification::checkpoints;
    m.max_verify = m.verification == Verification::trees ? m.n_seqs
                 : m.verification == Verification::chains ? int32_t(llama_n_rs_seq(m.target_ctx.get()))
                 : std::min(options.max_nodes, kMaxChain);
    if (m.draft) m.draft_ctx = make_context(m.draft.get(), spec);
    const int32_t n_nextn = llama_model_n_layer_nextn(m.target.get());
    if (n_nextn > 1 && m.mtp_error.empty())   // llama.cpp's MTP graphs assert one block, except chained heads
        m.mtp_error = "this model has " + std::to_string(n_nextn) + " MTP heads; HeteroSpec drives one head "
                      "(chained heads, as in Step3.5, are not supported yet)";
    if (m.verification == Verification::checkpoints && n_nextn > 0 && m.mtp_error.empty())
        m.mtp_error = "this model's recurrent state cannot be rolled back at this pin, and its MTP head reads the "
                      "target's hidden states row by row: MTP drafting needs rollback";
    if (m.verification != Verification::none && m.mtp_error.empty() && n_nextn == 1)
        m.mtp_ctx = make_mtp_context(m.target.get(), spec, m.mtp_error);
    if (m.verification != Verification::none) {
        const bool checkpoints = m.verification == Verification::checkpoints;
        m.verifier.reset(new Verifier(m.target_ctx.get(), m.n_seqs, m.target_cached, checkpoints));
        if (checkpoints)
            m.checkpoint_ms = time_checkpoint(m.target_ctx.get(), m.batch.get(), std::max(0, llama_vocab_bos(m.vocab)));
        DrafterInputs in;
        in.draft_ctx = m.draft_ctx.get();
        in.draft_cached = &m.draft_cached;
        in.target_ctx = m.target_ctx.get();
        in.mtp_ctx = m.mtp_ctx.get();
        in.index = &m.index;
        in.n_seq_max = m.n_seqs;
        for (NamedDrafter & d : make_drafters(in))
            m.speculators.push_back({d.name, std::move(d.drafter), CostModel()});
    }
    // hybrid measured best with a draft model (benchmarks/README.md: 1.19x the draft model's
    // trees alone on the memory-bound pair)
    if (options.drafter != "auto" && !m.speculators.empty() && !m.find_speculator(options.drafter))
        throw std::invalid_argument(drafter_unavailable(options.drafter) +
                                    (options.drafter == "mtp" && !m.mtp_error.empty() ? ": " + m.mtp_error : ""));
    // hybrid with a target's MTP head too: n-grams always, the head's levels where they pay
    m.default_drafter = options.drafter != "auto" ? options.drafter : m.draft || m.mtp_ctx ? "hybrid" : "ngram";
    // llama.cpp rounds a small context up (to 256 cells): the engine keeps to the size asked for
    m.n_ctx = std::min(spec.n_ctx, llama_n_ctx(m.target_ctx.get()));
}

Engine::~Engine() = default;

const EngineOptions & Engine::options() const { return impl_->opts; }
int32_t Engine::n_vocab() const { return impl_->n_vocab; }
uint32_t Engine::n_ctx() const { return impl_->n_ctx; }
bool Engine::has_draft() const { return bool(impl_->draft); }
bool Engine::has_mtp() const { return bool(impl_->mtp_ctx); }

std::vector<std::string> Engine::drafters() const {
    std::vector<std::string> out;
    for (const Impl::Speculator & s : impl_->speculators) out.push_back(s.name);
    return out;
}
bool Engine::can_speculate() const { return impl_->verifier != nullptr; }

std::string Engine::model_description() const {
    char buf[256];
    llama_model_desc(impl_->target.get(), buf, sizeof(buf));
    return buf;
}

std::vector<int32_t> Engine::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    try {
        return tokenize_unchecked(text, add_special, parse_special);
    } catch (const std::out_of_range &) {
        // an SPM vocabulary without byte tokens meets a character it cannot spell
        throw std::invalid_argument("the model's vocabulary cannot encode this text");
    }
}

std::vector<int32_t> Engine::tokenize_unchecked(const std::string & text, bool add_special, bool parse_special) const {
    const llama_vocab * vocab = impl_->vocab;
    if (text.size() > size_t(INT32_MAX / 2)) throw std::invalid_argument("text too long to tokenize");
    std::vector<int32_t> out(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), int32_t(text.size()), out.data(), int32_t(out.size()),
                               add_special, parse_special);
    if (n < 0) {
        if (n == INT32_MIN) throw std::invalid_argument("text too long to tokenize");
        out.resize(size_t(-n));
        n = llama_tokenize(vocab, text.data(), int32_t(text.size()), out.data(), int32_t(out.size()),
                           add_special, parse_special);
    }
    out.resize(size_t(std::max(n, 0)));
    return out;
}

std::string Engine::detokenize(const std::vector<int32_t> & tokens, bool special) const {
    for (int32_t t : tokens)
        if (t < 0 || t >= impl_->n_vocab)
            throw std::invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                                        std::to_string(impl_->n_vocab - 1) + ")");
    std::string out(tokens.size() * 8 + 16, '\0');
    int32_t n = llama_detokenize(impl_->vocab, tokens.data(), int32_t(tokens.size()), out.data(),
                                 int32_t(out.size()), false, special);
    if (n < 0) {
        out.resize(size_t(-n));
        n = llama_detokenize(impl_->vocab, tokens.data(), int32_t(tokens.size()), out.data(),
                             int32_t(out.size()), false, special);
    }
    out.resize(size_t(std::max(n, 0)));
    return sanitize_utf8(out);
}

bool Engine::is_eog(int32_t token) const {
    return token >= 0 && token < impl_->n_vocab && llama_vocab_is_eog(impl_->vocab, token);
}

std::string Engine::format_chat(const std::vector<ChatMessage> & messages, bool add_generation_prompt,
                                const std::string & tmpl) const {
    const char * t = tmpl.empty() ? llama_model_chat_template(impl_->target.get(), nullptr) : tmpl.c_str();
    if (!t) t = "chatml";  // llama.cpp's fallback for models without a template
    std::vector<llama_chat_message> msgs;
    size_t total = 0;
    for (const auto & m : messages) {
        msgs.push_back({m.role.c_str(), m.content.c_str()});
        total += m.role.size() + m.content.size();
    }
    std::vector<char> buf(total * 2 + 256);
    int32_t n = llama_chat_apply_template(t, msgs.data(), msgs.size(), add_generation_prompt, buf.data(), int32_t(buf.size()));
    if (n > int32_t(buf.size())) {
        buf.resize(size_t(n));
        n = llama_chat_apply_template(t, msgs.data(), msgs.size(), add_generation_prompt, buf.data(), int32_t(buf.size()));
    }
    if (n < 0)
        throw std::invalid_argument("the chat template is not one llama.cpp can apply; pass chat_template= "
                                    "with a built-in name such as 'chatml', 'llama3' or 'mistral-v7'");
    return std::string(buf.data(), size_t(n));
}

void Engine::check(const std::vector<int32_t> & prompt, const GenerateParams & params) const {
    const Impl & m = *impl_;
    validate(params);
    if (prompt.empty()) throw std::invalid_argument("the prompt is empty");
    for (int32_t t : prompt)
        if (t < 0 || t >= m.n_vocab)
            throw std::invalid_argument("prompt token id " + std::to_string(t) + " is outside the vocabulary");
    if (prompt.size() > m.n_ctx)
        throw std::invalid_argument("the prompt has " + std::to_string(prompt.size()) +
                                    " tokens but the context holds " + std::to_string(m.n_ctx) +
                                    "; shorten it or raise n_ctx (-c)");
    const Mode mode = resolve_mode(params.spec.mode, m.verification);
    const SpecParams & sp = params.spec;
    const std::string & drafter_name = m.drafter_for(sp);
    bool known = false;
    for (const Impl::Speculator & s : m.speculators) known |= s.name == drafter_name;
    if (mode != Mode::ar && !known)
        throw std::invalid_argument(drafter_unavailable(drafter_name) + (drafter_name == "mtp" && !m.mtp_error.empty()
                                                                          ? ": " + m.mtp_error : ""));
    const int32_t most_nodes = sp.budget + (mode == Mode::heterospec ? Policy::alpha(sp.depth) : 0);
    if ((mode == Mode::tree || mode == Mode::heterospec) && (most_nodes > m.opts.max_nodes || sp.width > m.opts.max_nodes))
        throw std::invalid_argument("tree budget and width must be at most max_nodes (" +
                                    std::to_string(m.opts.max_nodes) + ")");
    if (mode == Mode::chain && sp.n_max > m.opts.max_nodes)
        throw std::invalid_argument("chain n_max must be at most max_nodes (" + std::to_string(m.opts.max_nodes) + ")");
}

void Engine::start(const std::vector<int32_t> & prompt, const GenerateParams & params) {
    Impl & m = *impl_;
    check(prompt, params);
    // the default is the cost-aware HeteroSpec mode: it never runs slower than plain
    const Mode mode = resolve_mode(params.spec.mode, m.verification);
    const SpecParams & sp = params.spec;
    Impl::Speculator * spec = mode == Mode::ar ? nullptr : m.find_speculator(m.drafter_for(sp));

    std::lock_guard<std::mutex> lock(m.mu);
    m.cancel_requested = false;
    Generation & g = m.gen;
    g = Generation();
    g.params = params;
    g.mode = mode;
    g.params.spec.mode = g.stats.mode = mode_name(mode);
    m.drafter = spec ? spec->drafter.get() : nullptr;
    if (m.verifier) m.verifier->set_listener(m.drafter && m.drafter->wants_target_hidden() ? m.drafter : nullptr);
    m.cost = spec ? &spec->cost : nullptr;
    if (spec) g.params.spec.drafter = g.stats.drafter = spec->name;
    m.policy = sp.policy_thresholds.empty() ? Policy::builtin() : Policy();
    if (!sp.policy_thresholds.empty()) m.policy.thresholds = sp.policy_thresholds;
    std::copy(sp.policy_gamma.begin(), sp.policy_gamma.end(), m.policy.gamma.begin());
    g.sampler.reset(new Sampler(params.sampling, m.n_vocab));
    g.text.reset(new TextStream(params.stop));
    g.history = prompt;
    m.index.begin_document();
    for (int32_t t : prompt) m.index.push(t);
    g.stats.prompt_tokens = int32_t(prompt.size());
    g.t_start = now_ms();
    g.done = false;
    if (params.max_tokens == 0) {
        g.finish_reason = "length";
        m.finish();
        return;
    }
    try {
        if (m.cost_aware()) {
            m.measure_profile(*spec, sp.width);
            m.cost->begin_generation();
            g.t_start = now_ms();   // measuring the machine is not the prompt's time
        }
        m.process_prompt(prompt, params.cache_prompt);
    } catch (...) {
        g.done = true;
        m.forget_caches();
        throw;
    }
}

StepOutput Engine::step() {
    Impl & m = *impl_;
    std::lock_guard<std::mutex> lock(m.mu);
    Generation & g = m.gen;
    StepOutput out;
    if (g.done) {
        out.done = true;
        return out;
    }
    bool more;
    try {
        if (m.cancel_requested.exchange(false)) {
            g.finish_reason = "cancelled";
            more = false;
        } else {
            more = g.mode != Mode::ar ? m.step_spec() : m.step_ar();
        }
    } catch (...) {
        g.done = true;
        m.forget_caches();
        throw;
    }
    out.text = g.text->take_ready();
    if (!more) {
        out.text += g.text->finish();
        m.finish();
    }
    g.output += out.text;
    out.done = g.done;
    return out;
}

std::vector<std::vector<std::pair<int32_t, int32_t>>> Engine::debug_kv_state() const {
    std::vector<std::vector<std::pair<int32_t, int32_t>>> out;
    for (llama_context * ctx : {impl_->target_ctx.get(), impl_->draft_ctx.get()}) {
        if (!ctx) continue;
        llama_memory_t mem = llama_get_memory(ctx);
        std::vector<std::pair<int32_t, int32_t>> seqs;
        for (llama_seq_id s = 0; s < int32_t(llama_n_seq_max(ctx)); ++s)
            seqs.push_back({llama_memory_seq_pos_min(mem, s), llama_memory_seq_pos_max(mem, s)});
        out.push_back(seqs);
    }
    return out;
}

int32_t Engine::debug_n_past() const { return impl_->gen.n_past; }

void Engine::cancel() { impl_->cancel_requested = true; }

std::pair<std::vector<float>, Stats> Engine::score(const std::vector<int32_t> & prompt,
                                                   const std::vector<int32_t> & continuation,
                                                   bool cache_prompt) {
    Impl & m = *impl_;
    GenerateParams params;
    params.spec.mode = "ar";
    check(prompt, params);
    for (int32_t t : continuation)
        if (t < 0 || t >= m.n_vocab) throw std::invalid_argument("continuation token id " + std::to_string(t) + " is outside the vocabulary");
    if (prompt.size() + continuation.size() > m.n_ctx)
        throw std::invalid_argument("prompt and continuation have " + std::to_string(prompt.size() + continuation.size()) +
                                    " tokens but the context holds " + std::to_string(m.n_ctx));
    std::lock_guard<std::mutex> lock(m.mu);
    Generation & g = m.gen;
    g = Generation();
    g.params = params;
    g.mode = Mode::ar;
    std::vector<float> rows;
    rows.reserve(continuation.size() * size_t(m.n_vocab));
    try {
        const double t0 = now_ms();
        m.process_prompt(prompt, cache_prompt);
        g.stats.prompt_tokens = int32_t(prompt.size());
        g.stats.prompt_ms = now_ms() - t0;
        for (size_t i = 0; i < continuation.size(); ++i) {
            const float * logits = llama_get_logits_ith(m.target_ctx.get(), -1);
            if (!logits) throw std::runtime_error("no logits available from the target");
            const float log_z = log_sum_exp(logits, m.n_vocab);
            for (int32_t v = 0; v < m.n_vocab; ++v) rows.push_back(logits[v] - log_z);
            if (i + 1 < continuation.size()) m.decode_target(&continuation[i], 1);
        }
    } catch (...) {
        m.forget_caches();
        throw;
    }
    return {std::move(rows), g.stats};
}

std::string Engine::chat_template() const {
    const char * t = llama_model_chat_template(impl_->target.get(), nullptr);
    return t ? t : "";
}

SpecialTokens Engine::special_tokens() const {
    const llama_vocab * v = impl_->vocab;
    return {llama_vocab_bos(v), llama_vocab_eos(v), llama_vocab_get_add_bos(v), llama_vocab_get_add_eos(v)};
}

void Engine::clear_ngram_memory() {
    std::lock_guard<std::mutex> lock(impl_->mu);
    Impl & m = *impl_;
    m.index = SuffixIndex(m.index.capacity());
    if (!m.gen.done) {   // a generation in progress keeps its own text
        m.index.begin_document();
        for (int32_t t : m.gen.history) m.index.push(t);
    }
}

void Engine::debug_wrong_rule(bool on) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->wrong_rule = on;
}

void Engine::set_cost_profile(const std::vector<int32_t> & sizes, const std::vector<double> & verify_ms,
                              double draft_level_ms, bool projected) {
    if (sizes.empty() || sizes.size() != verify_ms.size() || sizes[0] != 1 || !(draft_level_ms >= 0))
        throw std::invalid_argument("a cost profile needs matching sizes (starting at 1) and timings");
    for (size_t i = 0; i < sizes.size(); ++i)
        if ((i > 0 && sizes[i] <= sizes[i - 1]) || !(verify_ms[i] > 0))
            throw std::invalid_argument("cost profile sizes must ascend and timings be positive");
    std::lock_guard<std::mutex> lock(impl_->mu);
    Impl & m = *impl_;
    m.target_profile = {sizes, verify_ms, 0.0};
    const uint8_t priced = m.profiled_source();
    for (Impl::Speculator & s : m.speculators) {
        s.cost = CostModel();
        s.cost.projected = projected;
        const uint8_t source = s.drafter->paid_source();
        // another paid source's level (the MTP head beside a draft model) is measured on first use
        if (source != 0 && source != priced && !projected) continue;
        // model-free drafting costs nothing here or there
        s.cost.profile = {sizes, verify_ms, source ? draft_level_ms : 0.0, m.checkpoint_ms};
    }
}

std::tuple<std::vector<int32_t>, std::vector<double>, double> Engine::cost_profile(int32_t width, bool fresh,
                                                                                  const ProfileProgress & progress) {
    Impl & m = *impl_;
    // the draft model's pass (else the MTP head's) is measured whenever there is one, whatever
    // the default drafter: the profile is cached per model pair and serves every drafter
    const uint8_t priced = m.profiled_source();
    Impl::Speculator * s = m.find_speculator(priced == kFromModel ? "model" : priced == kFromMtp ? "mtp" : "ngram");
    if (!s) throw std::invalid_argument("this target cannot speculate (its memory cannot hold a draft tree)");
    std::lock_guard<std::mutex> lock(m.mu);
    m.gen.done = true;   // measuring clears the caches: any generation in progress ends
    if (fresh) {
        m.target_profile = CostProfile();
        for (Impl::Speculator & other : m.speculators) other.cost = CostModel();
    }
    m.measure_profile(*s, width, progress);
    return {s->cost.profile.sizes, s->cost.profile.verify_ms, s->cost.profile.draft_level_ms};
}

std::vector<TokenLogprob> Engine::logprobs_since(size_t from) const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    const auto & l = impl_->gen.logprobs;
    return from < l.size() ? std::vector<TokenLogprob>(l.begin() + std::ptrdiff_t(from), l.end()) : std::vector<TokenLogprob>();
}

std::string Engine::token_piece(int32_t token) const {
    if (token < 0 || token >= impl_->n_vocab)
        throw std::invalid_argument("token id " + std::to_string(token) + " is outside the vocabulary");
    std::vector<char> buf(64);
    int32_t n = llama_token_to_piece(impl_->vocab, token, buf.data(), int32_t(buf.size()), 0, true);
    if (n < 0) {
        buf.resize(size_t(-n));
        n = llama_token_to_piece(impl_->vocab, token, buf.data(), int32_t(buf.size()), 0, true);
    }
    return std::string(buf.data(), size_t(std::max(n, 0)));
}

Result Engine::result() const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    const Generation & g = impl_->gen;
    Result r;
    r.text = g.output;
    r.tokens = g.tokens;
    r.finish_reason = g.finish_reason;
    r.stats = g.stats;
    r.trace = g.trace;
    r.logprobs = g.logprobs;
    return r;
}

Result Engine::generate(const std::vector<int32_t> & prompt, const GenerateParams & params) {
    start(prompt, params);
    while (!step().done) {}
    return result();
}

}  // namespace heterospec
