"""HeteroSpec allocation: entropy, policy, calibration, and exactness of mode='heterospec'."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from heterospec import Engine, _core
from heterospec.calibrate import fit_thresholds
from heterospec.policy import check_pair, load_policy
from test_speculative import PROMPTS, check_greedy

T = _core.testing


def H(ps):
    ps = np.asarray(ps, dtype=float) / np.sum(ps)
    return float(-(ps[ps > 0] * np.log(ps[ps > 0])).sum())


@pytest.mark.parametrize("probs", [[1.0], [0.5, 0.5], [0.25] * 4, [0.7, 0.2, 0.05, 0.05], [0.3, 0.1], [0.9, 0.0]])
def test_topk_entropy_against_hand_computed_values(probs):
    assert T.topk_entropy(probs) == pytest.approx(H(probs), abs=1e-6)
    if len(probs) == 4 and probs[0] == 0.25:
        assert T.topk_entropy(probs) == pytest.approx(math.log(4))


def test_meta_path_entropy_follows_the_most_confident_deepest_candidate():
    t = T.DraftTree()
    t.reset(0)
    a = t.add(0, 1, 0.6); b = t.add(0, 2, 0.4)                # depth 1
    c = t.add(a, 3, 0.5); d = t.add(b, 4, 0.9)                # depth 2: d has the highest q
    t.set_entropy(0, 0.7); t.set_entropy(a, 0.2); t.set_entropy(b, 1.1)
    # P* = root, b, d: H(root) + H(b)
    assert T.meta_path_entropy(t) == pytest.approx(0.7 + 1.1)
    e = t.add(c, 5, 0.1)                                      # a deeper candidate wins regardless of q
    t.set_entropy(c, 0.3)
    assert T.meta_path_entropy(t) == pytest.approx(0.7 + 0.2 + 0.3)


def test_policy_bins_and_allocation():
    th = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    g = [0.3, 0.6, 1.0]
    d, n = 4, 20                         # alpha = ceil(4 / 2) = 2
    assert T.policy_decide(th, g, 0.1, d, n) == (0, 6, 8)     # round(0.3*20) + 2
    assert T.policy_decide(th, g, 0.5, d, n) == (1, 5, 13)    # round(0.6*20) + 1
    assert T.policy_decide(th, g, 1.2, d, n) == (2, 4, 20)    # round(1.0*20) + 0
    for h, b in ((1.5, 3), (2.7, 5), (9.0, 7)):
        assert T.policy_decide(th, g, h, d, n) == (b, d, n)
    assert T.policy_decide(th, g, 0.0, 7, 10)[1:] == (11, 7)  # alpha = 4: depth 11, round(3) + 4
    with pytest.raises(ValueError, match="ascending"):
        T.policy_decide([1, 0, 2, 3, 4, 5, 6], g, 0.0, d, n)
    with pytest.raises(ValueError, match="7 thresholds"):
        T.policy_decide([1, 2], g, 0.0, d, n)


def test_regression_tree_recovers_known_thresholds():
    rng = np.random.default_rng(0)
    cuts = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    x = rng.uniform(0, 4, 4000)
    y = np.searchsorted(cuts, x) * 2.0 + rng.normal(0, 0.5, x.size)
    got = fit_thresholds(x, y)
    assert len(got) == 7
    assert np.allclose(got, cuts, atol=0.05), got
    # with too little data the tree stops early instead of inventing splits
    assert len(fit_thresholds(x[:10], y[:10])) < 7


@pytest.fixture(scope="module")
def pair(tiny):
    with Engine(tiny.target, draft=tiny.draft, n_threads=2) as e:
        yield e


# A GPU-like profile (verifying more tokens costs little, drafting is cheap), installed as
# `projected`: the cost-aware mode then decides by it, not by this machine's clock, so it
# speculates on the tiny pair, and does so the same way on every run.
FLAT = ([1, 2, 4, 8, 16], [10.0, 10.2, 10.5, 11.0, 12.0], 0.1)


@pytest.fixture
def flat_pair(pair):
    pair._engine.set_cost_profile(*FLAT, projected=True)
    pair._profile_ready = True
    yield pair
    pair._profile_ready = False   # the next cost-aware call loads the machine's profile again


def test_heterospec_greedy_equals_plain_decoding(tiny, flat_pair):
    pair = flat_pair
    policy = {"thresholds": [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]}   # wide low bins: exercise extension
    ties = 0
    bins = set()
    verified = {"paper": 0, "cost-aware": 0}
    for prompt in PROMPTS:
        ids = pair.tokenize(prompt, parse_special=True)
        ref = pair.generate(ids, max_tokens=40, temperature=0, mode="ar")
        # the paper's fixed gamma: every step drafts, and the low bins extend the tree
        got = pair.generate(ids, max_tokens=40, temperature=0, mode="heterospec", policy=policy, trace=True,
                            cost_aware=False)
        ties += check_greedy(pair, tiny.target, ids, got, ref, prompt) == "tie"
        verified["paper"] += got.stats.nodes_verified
        bins |= {t[5] for t in got.trace}
        for depth, nodes, accepted, rank, h, b, *_ in got.trace:
            assert 0 <= b <= 7
        # the cost-aware budget (the default): same output, whatever it chooses per step
        got = pair.generate(ids, max_tokens=40, temperature=0, mode="heterospec", policy=policy)
        ties += check_greedy(pair, tiny.target, ids, got, ref, prompt + " (cost-aware)") == "tie"
        verified["cost-aware"] += got.stats.nodes_verified
    assert ties <= 4
    assert bins & {0, 1, 2} and bins & {3, 4, 5, 6, 7}, bins
    # speculation happened in both: an exactness test that verified nothing would prove nothing
    assert verified["paper"] > 20 * 40 and verified["cost-aware"] > 20 * 10, verified


@pytest.mark.parametrize("cost_aware", [True, False], ids=["cost-aware", "paper"])
def test_heterospec_sampling_matches_plain_sampling(flat_pair, cost_aware):
    from test_speculative import chi2_threshold, two_sample_chi2
    pair = flat_pair
    prompt = pair.tokenize("the value", parse_special=True)
    draws = {}
    verified = 0
    for mode, seed0 in (("ar", 0), ("heterospec", 10**6)):
        out = []
        for i in range(1200):
            p = pair._params(max_tokens=3, temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, seed=seed0 + i,
                             mode=mode, policy={"thresholds": [1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0]},
                             cost_aware=cost_aware)
            r = pair._engine.generate(prompt, p)
            out.append(tuple(r.tokens[1:3]))
            verified += r.stats.nodes_verified
        draws[mode] = out
    # the walk must have met draft nodes, most steps more than one
    assert verified > 1200 * 2, verified
    stat, df = two_sample_chi2(draws["ar"], draws["heterospec"])
    assert stat < chi2_threshold(df), (stat, df)


def test_calibration_end_to_end(tiny, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "category": "test"}) + "\n" for p in PROMPTS)
                       + "not json\n" + json.dumps({"turns": ["hello there"]}) + "\n")
    out = tmp_path / "policy.json"
    p = subprocess.run([sys.executable, "-m", "heterospec", "calibrate", "-m", str(tiny.target), "-md",
                        str(tiny.draft), "--prompts", str(prompts), "-n", "48", "-t", "2", "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "skipped" in p.stderr                           # the bad line is reported, not fatal
    doc = load_policy(out)
    th = doc["thresholds"]
    assert len(th) == 7 and th == sorted(th)
    assert sum(b["steps"] for b in doc["bins"]) == doc["settings"]["steps"] > 100
    assert "thresholds" in p.stdout and "bin" in p.stdout
    # the engine loads it and decodes with it
    with Engine(tiny.target, draft=tiny.draft, n_threads=2) as e:
        ids = e.tokenize("hello world", parse_special=True)
        r = e.generate(ids, max_tokens=24, temperature=0, mode="heterospec", policy=out)
        check_greedy(e, tiny.target, ids, r, e.generate(ids, max_tokens=24, temperature=0, mode="ar"), "calibrated")
    # a policy fitted for one pair is refused for another unless forced
    check_pair(doc, tiny.target, tiny.draft)
    with pytest.raises(ValueError, match="fitted for"):
        check_pair(doc, tiny.eos, tiny.draft)
    check_pair(doc, tiny.eos, tiny.draft, force=True)
    with Engine(tiny.eos, draft=tiny.draft, n_threads=2) as e:
        with pytest.raises(ValueError, match="fitted for target"):
            e.generate("hello", mode="heterospec", policy=out)
        assert len(e.generate("hello", max_tokens=4, mode="heterospec", policy=out, force_policy=True,
                              ignore_eos=True).tokens) == 4


def test_bad_policies(pair, tmp_path):
    with pytest.raises(ValueError, match="7 thresholds"):
        pair.generate("hi", mode="heterospec", policy={"thresholds": [1, 2]})
    with pytest.raises(ValueError, match="ascending"):
        pair.generate("hi", mode="heterospec", policy={"thresholds": [7, 6, 5, 4, 3, 2, 1]})
    with pytest.raises(FileNotFoundError):
        pair.generate("hi", mode="heterospec", policy=tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not a policy"):
        pair.generate("hi", mode="heterospec", policy=tmp_path / "bad.json")


def test_budget_choice_against_a_synthetic_cost_curve():
    """choose_budget maximises (1 + sum of acceptance estimates) / (t_draft + t_verify(n + 1))
    over every budget up to the bound and the nodes there are (t_verify interpolated)."""
    from heterospec._core import testing as T
    sizes = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16]
    values = [0.9, 0.8, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01]

    def brute(verify, draft_ms, bound):
        most = min(bound, len(values))
        best = (0, 1.0 / (draft_ms + verify[0]))
        for n in range(1, most + 1):
            t = float(np.interp(n + 1, sizes, verify))
            rate = (1 + sum(values[:n])) / (draft_ms + t)
            if rate > best[1]:
                best = (n, rate)
        return best[0]

    flat = [1.0 + 0.01 * s for s in sizes]          # GPU-like: verifying more costs little
    steep = [1.0 * s for s in sizes]                # CPU-like: cost grows with every token
    for verify in (flat, steep):
        for bound in (3, 8, 15):
            assert T.choose_budget(sizes, verify, values, bound, 0.5) == brute(verify, 0.5, bound)
    assert T.choose_budget(sizes, flat, values, 15, 0.5) >= 7        # flat: verify every likely node
    assert T.choose_budget(sizes, steep, values, 15, 0.5) <= 2       # steep: verify very few


def test_a_path_batch_is_priced_by_its_tokens():
    """Over recurrent state a budget's price is its padded batch (paths x (depth + 1)): on a
    CPU-like curve, branches that an attention cache would verify cheaply are not worth it."""
    from heterospec._core import testing as T
    sizes = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16]
    cpu = [1.0 + 0.1 * (s - 1) for s in sizes]
    flat = [1.0 + 0.01 * s for s in sizes]
    values = [0.9, 0.6, 0.5, 0.4]
    # a chain, then branches: 2, 3, then 3 x 3 and 4 x 3 tokens
    tokens = [1, 2, 3, 9, 12]
    assert T.choose_budget(sizes, cpu, values, 4, 0.0) == 4
    assert T.choose_budget(sizes, cpu, values, 4, 0.0, batch_tokens=tokens) == 2
    assert T.choose_budget(sizes, flat, values, 4, 0.0, batch_tokens=tokens) == 4
    assert T.choose_budget(sizes, flat, values, 4, 0.0, batch_tokens=tokens[:3]) == 2   # what fits


def test_a_host_checkpoint_is_priced_into_every_speculative_step():
    """Recurrent targets without rollback save and restore their state around a verification
    (checkpoint.h): that cost joins every step that verifies drafts, none of the plain ones, so a
    dear checkpoint makes plain steps the choice."""
    from heterospec._core import testing as T
    sizes = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16]
    flat = [1.0 + 0.01 * s for s in sizes]
    values = [0.9, 0.8, 0.7, 0.5]
    assert T.choose_budget(sizes, flat, values, 15, 0.0, checkpoint_ms=0.1) == 4
    assert T.choose_budget(sizes, flat, values, 15, 0.0, checkpoint_ms=1.0) == 4    # 3.9 tokens for 2 passes' time
    assert T.choose_budget(sizes, flat, values, 15, 0.0, checkpoint_ms=3.0) == 0    # no chain pays 3 passes
    assert T.worth_drafting(sizes, flat, 0.9, 15, 0.0, 0.1, checkpoint_ms=0.1)
    assert not T.worth_drafting(sizes, flat, 0.9, 15, 0.0, 0.1, checkpoint_ms=20.0)


def test_drafting_stops_after_one_level_when_no_chain_can_pay():
    """worth_drafting: a chain whose k-th token is accepted with a^k (a = the best first-level
    value), against stopping now and verifying the root alone."""
    from heterospec._core import testing as T
    sizes = [1, 2, 4, 8]
    linear = [1.0, 2.0, 4.0, 8.0]                   # compute-bound: nothing to gain, ever
    gpu = [1.0, 1.05, 1.1, 1.3]                     # memory-bound: extra tokens almost free
    cpu = [1.0, 2.3, 3.0, 3.8]                      # the padded 300M target on 2 cores
    assert not T.worth_drafting(sizes, linear, 0.99, 7, 0.0, 0.0)
    assert T.worth_drafting(sizes, gpu, 0.3, 7, 0.05, 0.02)
    assert not T.worth_drafting(sizes, gpu, 0.02, 7, 0.05, 0.02)
    assert T.worth_drafting(sizes, cpu, 0.95, 7, 0.05, 0.03)    # 1 + sum .95^k, k <= 7: 6.6 tokens for 3.8
    assert not T.worth_drafting(sizes, cpu, 0.6, 7, 0.05, 0.03)  # at most 2.5 tokens: never pays
    assert T.worth_drafting(sizes, cpu, 0.8, 7, 0.05, 0.03)       # 4.2 tokens for 4.0 ms
    assert not T.worth_drafting(sizes, cpu, 0.8, 3, 0.05, 0.03)   # budget 3: 2.95 tokens for 3.1 ms
    # ... and the future levels' drafting counts
    assert T.worth_drafting(sizes, cpu, 0.9, 7, 0.05, 0.0)
    assert not T.worth_drafting(sizes, cpu, 0.9, 7, 0.05, 0.5)


def test_extending_the_draft_only_while_it_can_pay():
    """worth_extending: one more level is drafted when the next level's guessed values raise the
    best expected rate by more than the level costs."""
    from heterospec._core import testing as T
    sizes = [1, 2, 4, 8]
    flat = [1.0, 1.02, 1.05, 1.2]                  # memory-bound: a few more tokens cost nothing
    steep = [1.0, 2.0, 4.0, 8.0]                   # compute-bound
    values = [0.9, 0.8]                            # a confident chain of two
    assert T.worth_extending(sizes, flat, values, [0.7], 7, 0.05, 0.02)
    assert not T.worth_extending(sizes, flat, values, [0.7], 7, 0.05, 2.0)     # a level dearer than it earns
    assert not T.worth_extending(sizes, flat, values, [0.001], 7, 0.05, 0.02)  # hopeless children
    assert not T.worth_extending(sizes, flat, values, [], 7, 0.05, 0.02)       # nothing left to expand
    assert not T.worth_extending(sizes, flat, values, [0.7], 2, 0.05, 0.02)    # the budget is already full
    assert not T.worth_extending(sizes, steep, values, [0.7], 7, 0.05, 0.02)   # a third node never pays


def test_extension_counts_the_frontier_nodes_worth_expanding():
    from heterospec._core import testing as T
    sizes, flat = [1, 2, 4, 8], [1.0, 1.02, 1.05, 1.2]
    # two confident guesses make the choice, two hopeless ones do not: expand two frontier nodes
    assert T.worth_extending(sizes, flat, [0.9, 0.8], [0.7, 0.001, 0.6, 0.002], 7, 0.05, 0.02) == 2


def test_acceptance_model_learns_what_the_target_does():
    """Starts at the draft's own probability and learns, online, where the draft is better or
    worse than it thinks; the generation's own term starts from zero each generation."""
    from heterospec._core import testing as T
    m = T.AcceptanceModel()
    assert abs(m.estimate(0.3, 1.0, 4, 0.5) - 0.3) < 1e-6
    rng = np.random.default_rng(0)
    # this draft is right 80% of the time when it says 0.3, whatever the context, when agreement is high
    for _ in range(3000):
        m.observe(0.3, 1.0, 4, 0.9, bool(rng.random() < 0.8))
        m.observe(0.3, 1.0, 4, 0.1, bool(rng.random() < 0.1))
    assert m.estimate(0.3, 1.0, 4, 0.9) > 0.65 and m.estimate(0.3, 1.0, 4, 0.1) < 0.25
    # a generation where the draft is always right raises its estimates within a few steps
    m.begin_generation()
    before = m.estimate(0.3, 1.0, 4, 0.5)
    for _ in range(20):
        m.observe(0.3, 1.0, 4, 0.5, True)
    during = m.estimate(0.3, 1.0, 4, 0.5)
    assert during > before + 0.1
    # the next generation keeps what the long-run weights learnt, not the generation's own term
    m.begin_generation()
    assert before < m.estimate(0.3, 1.0, 4, 0.5) < during - 0.05


def test_cost_aware_mode_is_never_much_slower_than_plain(code_target, code_draft, code_prompts):
    """On the small code pair on a CPU, drafting with the model cannot pay (a draft pass costs
    about what a target pass does, and verifying n tokens about n passes); the cost-aware mode
    must then run plain steps. The profile is installed, not measured, so that a busy machine
    decides the same (issue #22): no node verified, one target call per token."""
    with Engine(code_target, draft=code_draft, n_threads=2) as e:
        e._engine.set_cost_profile([1, 2, 4, 8, 16], [0.4, 0.8, 1.6, 3.2, 6.4], 0.35, projected=True)
        e._profile_ready = True
        for prompt in code_prompts[20:26]:
            r = e.generate(e.tokenize(prompt)[-200:], max_tokens=64, temperature=0, mode="heterospec",
                           drafter="model")
        s = r.stats
        assert s.nodes_verified == 0 and s.target_calls >= 63, s


# Issue #25: the hybrid drafter drafts its free n-gram branches first, and pays for the draft
# model's levels only where they pay. Two fixed profiles, installed as projected so that the
# decisions do not depend on this machine's clock.
REPEAT = "the value is None and the name is my class " * 4


def test_hybrid_uses_free_ngram_drafts_when_model_drafting_cannot_pay(pair):
    # verifying more tokens costs little, but one draft-model pass costs five target passes
    pair._engine.set_cost_profile([1, 2, 4, 8, 16], [10.0, 10.2, 10.5, 11.0, 12.0], 50.0, projected=True)
    pair._profile_ready = True
    try:
        ids = pair.tokenize(REPEAT, parse_special=True)
        ref = pair.generate(ids, max_tokens=48, temperature=0, mode="ar")
        got = pair.generate(ids, max_tokens=48, temperature=0)   # the defaults: heterospec, hybrid
    finally:
        pair._profile_ready = False
    s = got.stats
    assert s.drafter == "hybrid" and s.mode == "heterospec"
    assert got.tokens == ref.tokens
    assert s.nodes_verified > 0 and s.accepted_ngram > 0, s   # it speculated, with n-grams
    assert s.draft_calls == 0 and s.accepted_model == 0, s      # and never paid for a model pass


def test_hybrid_drafts_with_the_model_where_both_pay(pair):
    pair._engine.set_cost_profile(*FLAT, projected=True)
    pair._profile_ready = True
    try:
        ids = pair.tokenize(REPEAT, parse_special=True)
        ref = pair.generate(ids, max_tokens=48, temperature=0, mode="ar")
        got = pair.generate(ids, max_tokens=48, temperature=0)
    finally:
        pair._profile_ready = False
    s = got.stats
    assert got.tokens == ref.tokens
    assert s.nodes_verified > 0 and s.draft_calls > 0 and s.accepted_model > 0, s


def test_paid_levels_pay_only_beyond_the_free_nodes():
    """worth_paid_levels: a chain of paid nodes (the k-th accepted with a^k, a level each) joins
    the free nodes; it is drafted only if it raises the step's best score."""
    from heterospec._core import testing as T
    sizes = [1, 2, 4, 8, 16]
    flat = [10.0, 10.2, 10.5, 11.0, 12.0]
    assert T.worth_paid_levels(sizes, flat, [], 0.7, 15, 6, 0.0, 0.5)          # cheap levels, no free nodes
    assert not T.worth_paid_levels(sizes, flat, [], 0.7, 15, 6, 0.0, 50.0)     # a level dearer than 5 passes
    # a confident free chain leaves the paid levels too little to add for what they cost
    free = [0.95, 0.9, 0.86, 0.82, 0.78, 0.74]
    assert T.worth_paid_levels(sizes, flat, free, 0.7, 15, 6, 0.0, 0.5)
    assert not T.worth_paid_levels(sizes, flat, free, 0.7, 15, 6, 0.0, 4.0)
    assert T.worth_paid_levels(sizes, flat, [], 0.7, 15, 6, 0.0, 4.0)       # ... that pay without them
    steep = [10.0 * s for s in sizes]                                        # compute-bound: nothing pays
    assert not T.worth_paid_levels(sizes, steep, [], 0.9, 15, 6, 0.0, 0.1)


def test_a_paid_source_judged_by_unlucky_steps_is_tried_again():
    """The paid source's agreement is seen only in steps that pay for it. Once it has fallen
    (here: five misses in a row) below what makes paid levels pay, declined steps let it drift
    back to its prior, so that the source is tried again; it never drifts past the prior."""
    from heterospec._core import testing as T
    c = T.CostModel([1, 2, 4, 8, 16], [10.0, 10.2, 10.5, 11.0, 12.0], 6.0)
    assert abs(c.paid_agreement - 0.7) < 1e-6 and c.should_pay([], 15, 6, 0.0)   # tried at first
    for _ in range(5):
        c.observe_paid_agreement(False)
    low = c.paid_agreement
    assert low < 0.45 and not c.should_pay([], 15, 6, 0.0)
    declined = 1
    while not c.should_pay([], 15, 6, 0.0):
        declined += 1
        assert declined < 200
    assert low < c.paid_agreement < 0.7 and declined > 5
    for _ in range(500):
        c.should_pay([0.99] * 15, 15, 6, 0.0)   # a free chain this sure leaves paid levels nothing
    assert c.paid_agreement <= 0.7 + 1e-6


def test_cost_profile_is_measured_once_and_cached(tiny, profile_cache_dir):
    import heterospec.profile_cache as pc
    for f in profile_cache_dir.glob("profile-*.json"):
        f.unlink()
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        e.generate("hello", max_tokens=4, mode="heterospec")
        files = list(profile_cache_dir.glob("profile-*.json"))
        assert len(files) == 1
        doc = json.loads(files[0].read_text())
        assert doc["sizes"][0] == 1 and len(doc["sizes"]) == len(doc["verify_ms"]) and doc["draft_level_ms"] > 0
    # a second engine on the same pair and settings loads it instead of measuring
    files[0].write_text(json.dumps({**doc, "verify_ms": [123.0] * len(doc["sizes"])}))
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        e.generate("hello", max_tokens=4, mode="heterospec")
        sizes, verify_ms, _ = e._engine.cost_profile(4)
        assert verify_ms == [123.0] * len(sizes)
    # other settings, another profile; cost_profile_cache=False measures without caching
    with Engine(tiny.target, draft=tiny.draft, n_threads=2) as e:
        e.generate("hello", max_tokens=4, mode="heterospec")
    assert len(list(profile_cache_dir.glob("profile-*.json"))) == 2
    with Engine(tiny.target, draft=tiny.draft, n_threads=3, cost_profile_cache=False) as e:
        e.generate("hello", max_tokens=4, mode="heterospec")
    assert len(list(profile_cache_dir.glob("profile-*.json"))) == 2
