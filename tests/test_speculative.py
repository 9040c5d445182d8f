"""Exactness of tree and chain speculation against plain decoding.

llama.cpp's kernels are not batch-invariant: the logits of one position differ in the last bits
between a one-token pass and a tree pass (on CPU up to a few 1e-3 on the shared code model, from
flash-attention tiling and matrix-kernel choice). Greedy outputs must therefore be identical
except where plain decoding itself faces a near-tie, and a divergence is accepted only there:
at a position whose top-two logit gap is below TIE, certified by llama.cpp's own greedy loop.
"""
import math

import numpy as np
import pytest

from conftest import TINY_PROMPTS
from heterospec import Engine, _core

TIE = 1e-2

SHAPES = [
    dict(mode="tree"),                                              # defaults
    dict(mode="tree", budget=1),                                    # N = 1
    dict(mode="tree", depth=1, branching=6, width=6, budget=6),     # depth 1
    dict(mode="tree", branching=1, width=1, depth=5, budget=5),     # a chain, built as a tree
    dict(mode="tree", depth=3, branching=2, width=2, budget=64),    # budget larger than the tree
    dict(mode="tree", depth=6, branching=8, width=8, budget=48),    # wide
    dict(mode="chain"),                                             # llama.cpp-like defaults
    dict(mode="chain", n_max=6, p_min=0.0),
]

MORE_PROMPTS = ["the hello world is True", "class my value: def", "return None if x else y",
                "import the name of print", "if value == True: print", "what is my name",
                "for x in the world", "self.value = None", "def what(): return", "you and my class",
                "while the value is None", "print(hello)"]
PROMPTS = TINY_PROMPTS + MORE_PROMPTS   # 20


def first_diff(a, b):
    return next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), None)


def check_greedy(engine, model_path, prompt_tokens, got, ref, label):
    """`got` must equal plain decoding `ref`, or part from it only at a certified near-tie."""
    if got.tokens == ref.tokens:
        assert got.finish_reason == ref.finish_reason and got.text == ref.text, label
        return "same"
    k = first_diff(got.tokens, ref.tokens)
    assert k is not None, f"{label}: one output is a prefix of the other: {len(got.tokens)} vs {len(ref.tokens)}"
    _, gaps = _core.testing.llama_cpp_greedy(str(model_path), prompt_tokens, k + 1, engine.n_ctx, 2)
    assert gaps[k] < TIE, f"{label}: diverged from plain decoding at token {k}, where the logit gap is {gaps[k]}"
    return "tie"


@pytest.fixture(scope="module")
def tiny_pair(tiny):
    with Engine(tiny.target, draft=tiny.draft, n_threads=2) as e:
        yield e


@pytest.fixture(scope="module")
def perfect_pair(tiny):
    """The eos-prone model drafting for itself: every draft token is accepted, so ends of
    generation, stop strings and max_tokens fall inside accepted paths."""
    with Engine(tiny.eos, draft=tiny.eos, n_threads=2) as e:
        yield e


@pytest.fixture(scope="module")
def code_pair(code_target, code_draft):
    with Engine(code_target, draft=code_draft, n_threads=2) as e:
        yield e


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_greedy_equals_plain_decoding_on_tiny_models(tiny, tiny_pair, shape):
    outcomes = []
    for prompt in PROMPTS:
        ids = tiny_pair.tokenize(prompt, parse_special=True)
        ref = tiny_pair.generate(ids, max_tokens=40, temperature=0, mode="ar")
        got = tiny_pair.generate(ids, max_tokens=40, temperature=0, **shape)
        assert got.stats.mode == shape["mode"]
        outcomes.append(check_greedy(tiny_pair, tiny.target, ids, got, ref, prompt))
    assert outcomes.count("tie") <= 2, outcomes


def test_greedy_equals_plain_decoding_on_the_code_pair(code_target, code_pair, code_prompts):
    outcomes = []
    shapes = [dict(mode="tree"), dict(mode="tree", depth=6, branching=8, width=8, budget=32),
              dict(mode="chain", n_max=4, p_min=0.0)]
    for prompt in code_prompts[:20]:
        ids = code_pair.tokenize(prompt, parse_special=True)[-200:]
        ref = code_pair.generate(ids, max_tokens=64, temperature=0, mode="ar")
        for shape in shapes:
            got = code_pair.generate(ids, max_tokens=64, temperature=0, **shape)
            outcomes.append(check_greedy(code_pair, code_target, ids, got, ref, f"{shape} {prompt[-40:]!r}"))
    assert outcomes.count("tie") <= 6, outcomes


def test_tree_accepts_more_than_chain_on_the_code_pair(code_pair, code_prompts):
    tau = {}
    for name, shape in (("chain", dict(mode="chain", n_max=4, p_min=0.0)),
                        ("tree", dict(mode="tree", depth=4, branching=4, width=4, budget=8))):
        rs = [code_pair.generate(code_pair.tokenize(p)[-200:], max_tokens=64, temperature=0, drafter="model",
                                 **shape)
              for p in code_prompts[:10]]
        tau[name] = sum(r.stats.generated_tokens for r in rs) / sum(r.stats.steps for r in rs)
    assert tau["tree"] > tau["chain"] + 0.3, tau


def test_end_of_generation_inside_accepted_paths(perfect_pair):
    inside = 0
    for prompt in PROMPTS:
        ref = perfect_pair.generate(prompt, max_tokens=80, temperature=0, mode="ar")
        got = perfect_pair.generate(prompt, max_tokens=80, temperature=0, mode="tree", depth=6, budget=12)
        assert (got.tokens, got.text, got.finish_reason) == (ref.tokens, ref.text, ref.finish_reason)
        # fewer steps than tokens drawn: the end of generation was drawn inside an accepted path
        if ref.finish_reason == "stop" and got.stats.steps < len(ref.tokens) + 1:
            inside += 1
    assert inside >= 2


def test_stop_strings_and_max_tokens_inside_accepted_paths(perfect_pair):
    for prompt in PROMPTS[:8]:
        full = perfect_pair.generate(prompt, max_tokens=40, temperature=0, mode="ar", ignore_eos=True)
        for n in (1, 2, 5, 7, 13):
            got = perfect_pair.generate(prompt, max_tokens=n, temperature=0, mode="tree", depth=6, ignore_eos=True)
            assert got.tokens == full.tokens[:n] and got.finish_reason == "length"
        # a stop string from the middle of the output (printable ASCII: the random model also
        # emits bytes that are not valid UTF-8, which the text shows as U+FFFD)
        stop = next((full.text[i:i + 2] for i in range(8, len(full.text) - 2)
                     if full.text[i:i + 2].isascii() and full.text[i:i + 2].isprintable()), None)
        if stop is None:
            continue
        ref = perfect_pair.generate(prompt, max_tokens=40, temperature=0, mode="ar", ignore_eos=True, stop=stop)
        for mode in ("tree", "chain"):
            got = perfect_pair.generate(prompt, max_tokens=40, temperature=0, mode=mode, ignore_eos=True,
                                        stop=stop, depth=6, p_min=0.0)
            assert (got.tokens, got.text, got.finish_reason) == (ref.tokens, ref.text, "stop")


def test_up_to_the_context_limit(tiny):
    with Engine(tiny.target, draft=tiny.draft, n_ctx=256, n_threads=2) as e:
        base = e.tokenize("hello world the value is None", parse_special=True)
        for length in (e.n_ctx - 40, e.n_ctx - 3, e.n_ctx - 1, e.n_ctx):
            ids = (base * 100)[:length]
            ref = e.generate(ids, max_tokens=-1, temperature=0, mode="ar", ignore_eos=True)
            assert len(ref.tokens) == e.n_ctx - length + 1
            for shape in (dict(mode="tree", depth=6, budget=16), dict(mode="chain", p_min=0.0)):
                got = e.generate(ids, max_tokens=-1, temperature=0, ignore_eos=True, **shape)
                check_greedy(e, tiny.target, ids, got, ref, f"{length} {shape}")


def test_stream_matches_generate_in_tree_mode(tiny_pair):
    for kw in (dict(temperature=0), dict(temperature=0.8, seed=3)):
        text = "".join(tiny_pair.stream("hello world", max_tokens=40, mode="tree", **kw))
        assert text == tiny_pair.generate("hello world", max_tokens=40, mode="tree", **kw).text


def test_verification_logits_match_decoding_each_path(tiny, code_target, tiny_engine):
    cases = [(str(tiny.target), tiny_engine.tokenize("def print(self):", parse_special=True))]
    if code_target.exists():
        cases.append((str(code_target), [313, 2331, 66, 263, 679, 477, 8, 78, 307]))
    parents = [0, 0, 0, 1, 1, 2, 4, 4, 7]
    tokens = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    for path, prompt in cases:
        tree_rows, path_rows = _core.testing.tree_vs_paths(path, prompt, parents, tokens, 2)
        for n, (a, b) in enumerate(zip(tree_rows, path_rows)):
            a, b = np.asarray(a), np.asarray(b)
            assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(b).max()), (path, n)
        # a wrong mask would show: node 4's logits differ from its sibling-free parent's
        assert np.abs(np.asarray(tree_rows[4]) - np.asarray(tree_rows[5])).max() > 1e-2


def test_kv_caches_hold_exactly_the_committed_tokens(tiny):
    """Thousands of steps, checked after every one: in both caches, every live path sequence
    spans positions 0..n_past-1 (llama.cpp guarantees no holes inside that range), nothing lies
    beyond, and unused sequences are empty."""
    with Engine(tiny.target, draft=tiny.draft, n_ctx=1024, n_threads=2, max_nodes=16) as e:
        native = e._engine
        steps = 0
        for prompt, shape in (("hello", dict(depth=5, branching=3, width=3, budget=12)),
                              ("the value", dict(depth=2, branching=8, width=8, budget=16)),
                              ("x", dict(depth=3, branching=1, width=1, budget=3))):
            e_params = e._params(max_tokens=-1, temperature=0.7, seed=1, ignore_eos=True, mode="tree", **shape)
            native.start(e.tokenize(prompt, parse_special=True), e_params)
            done = False
            while not done:
                _, done = native.step()
                steps += 1
                if done:
                    break
                n_past = native.debug_n_past()
                target, draft = native.debug_kv_state()
                live = [s for s in target if s != (-1, -1)]
                assert live and all(s == (0, n_past - 1) for s in live), (steps, n_past, target[:4])
                draft_live = [s for s in draft if s != (-1, -1)]
                assert draft_live and len({s for s in draft_live}) == 1, (steps, draft[:4])
                assert draft_live[0][0] == 0 and draft_live[0][1] <= n_past - 1
        assert steps > 1000


def chi2_threshold(df, z=3.09):
    """Upper 0.1% point of the chi-square distribution (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def two_sample_chi2(a, b):
    """Homogeneity statistic of two samples of categories; rare categories pooled."""
    cats = sorted(set(a) | set(b))
    counts = np.array([[a.count(c) for c in cats], [b.count(c) for c in cats]], dtype=float)
    keep = counts.sum(0) >= 10
    table = np.column_stack([counts[:, keep], counts[:, ~keep].sum(1)]) if (~keep).any() else counts[:, keep]
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum()), table.shape[1] - 1


def sample_first_tokens(engine, mode, n, seed0, wrong=False):
    prompt = engine.tokenize("the value", parse_special=True)
    out = []
    for i in range(n):
        p = engine._params(max_tokens=3, temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, seed=seed0 + i,
                           mode=mode, depth=3, branching=3, width=3, budget=8)
        engine._engine.debug_wrong_rule(wrong)
        try:
            out.append(tuple(engine._engine.generate(prompt, p).tokens[1:3]))
        finally:
            engine._engine.debug_wrong_rule(False)
    return out


def test_sampling_is_exact(tiny_pair):
    """The joint distribution of the 2nd and 3rd tokens (the 1st comes straight from the root)
    under tree sampling matches plain sampling; the same test rejects a plausible wrong rule."""
    n = 1500
    plain = sample_first_tokens(tiny_pair, "ar", n, seed0=0)
    tree = sample_first_tokens(tiny_pair, "tree", n, seed0=10**6)
    stat, df = two_sample_chi2(plain, tree)
    assert stat < chi2_threshold(df), (stat, df)
    wrong = sample_first_tokens(tiny_pair, "tree", n, seed0=10**6, wrong=True)
    stat_wrong, df_wrong = two_sample_chi2(plain, wrong)
    assert stat_wrong > chi2_threshold(df_wrong), (stat_wrong, df_wrong)


def test_speculation_needs_a_draft_and_valid_shapes(tiny_engine, tiny_pair):
    with pytest.raises(ValueError, match="needs a draft model"):
        tiny_engine.generate("hello", drafter="model")
    with pytest.raises(ValueError, match="needs a draft model"):
        Engine(tiny_engine._paths[0], drafter="hybrid")
    with pytest.raises(ValueError, match="drafter must be"):
        tiny_pair.generate("hello", drafter="eagle")
    with pytest.raises(ValueError, match="drafter must be"):
        Engine(tiny_engine._paths[0], drafter="suffix")
    with pytest.raises(ValueError, match="mode must be"):
        tiny_pair.generate("hello", mode="fast")
    with pytest.raises(ValueError, match="max_nodes"):
        tiny_pair.generate("hello", mode="tree", budget=1000)
    with pytest.raises(ValueError, match="depth"):
        tiny_pair.generate("hello", mode="tree", depth=0)
    with pytest.raises(ValueError, match="p_min"):
        tiny_pair.generate("hello", mode="chain", p_min=2.0)
    assert tiny_pair.generate("hello", max_tokens=4).stats.mode == "heterospec"   # the default with a draft
    assert len(tiny_pair.generate("hello", max_tokens=4, temperature=0).tokens) == 4


def test_statistics_and_trace(tiny_pair):
    r = tiny_pair.generate("hello world", max_tokens=48, temperature=0, mode="tree", trace=True)
    s = r.stats
    assert s.steps == len(r.trace) == s.target_calls
    assert sum(t[2] for t in r.trace) == s.generated_tokens == 48
    assert s.mean_accepted == pytest.approx(48 / s.steps)
    assert s.nodes_verified == sum(t[1] for t in r.trace)
    assert s.draft_calls >= s.steps and s.draft_ms > 0 and s.verify_ms > 0 and 0 <= s.host_ms < s.decode_ms
    for depth, nodes, accepted, rank, entropy, bin_, *_ in r.trace:
        assert 1 <= accepted <= depth + 1 and 0 <= rank <= nodes and entropy >= 0 and bin_ == -1


def test_recurrent_models_verify_but_do_not_draft(tmp_path, tiny):
    """A recurrent target verifies chains (over host checkpoints where the pin has no rollback:
    tests/test_hybrid_speculation.py); a recurrent draft cannot hold a tree of paths."""
    import gguf_arch
    mamba = gguf_arch.write_mamba(tmp_path / "mamba.gguf")
    with Engine(mamba, draft=tiny.target, n_threads=1) as e:
        assert e.can_speculate and len(e.generate("hello world", max_tokens=8, temperature=0).tokens) == 8
    for target, draft in ((mamba, mamba), (tiny.target, mamba)):
        with pytest.raises(ValueError, match="recurrent"):
            Engine(target, draft=draft)


def test_sliding_window_models_speculate_exactly(tmp_path):
    import gguf_arch
    target = gguf_arch.write_gemma2(tmp_path / "g.gguf", sliding_window=8)
    draft = gguf_arch.write_gemma2(tmp_path / "gd.gguf", base=target, noise=0.02, seed=1)
    with Engine(target, draft=draft, n_threads=1) as e:
        for prompt in PROMPTS[:8]:
            ids = e.tokenize(prompt, parse_special=True)
            ref = e.generate(ids, max_tokens=40, temperature=0, mode="ar")   # 40 tokens: well past the window
            for shape in (dict(mode="tree"), dict(mode="chain", p_min=0.0)):
                got = e.generate(ids, max_tokens=40, temperature=0, **shape)
                check_greedy(e, target, ids, got, ref, f"gemma2 {shape} {prompt}")
                assert shape["mode"] == "chain" or got.stats.mean_accepted > 1.3
