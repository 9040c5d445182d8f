"""Speculation on hybrid targets (issue #19): recurrent state plus attention, as in Qwen3.5/3.6
(Gated DeltaNet) and LFM2 (short convolutions), and on recurrent ones (Mamba, Mamba-2).

A recurrent state follows one text, so a tree runs path by path: each root-to-leaf path in a
sequence of its own with a copy of the state (path_batch.h), and the rejected drafts of the kept
path are undone through llama.cpp's rollback planes (n_rs_seq). Where the pin has no rollback
(mamba, mamba2) a step verifies a chain over a host checkpoint of the state and replays. Exactness
is checked as for attention-only targets (greedy equal to plain decoding apart from certified
near-ties, sampling by a chi-square test), and every test asserts that drafts were verified.
"""
import json

import pytest

import gguf_arch
from heterospec import Engine
from test_heterospec import FLAT
from test_speculative import check_greedy, chi2_threshold, two_sample_chi2

WRITERS = {"qwen35": gguf_arch.write_qwen35, "lfm2": gguf_arch.write_lfm2,
           "mamba2": gguf_arch.write_mamba2, "mamba": gguf_arch.write_mamba}
CHECKPOINTED = {"mamba", "mamba2"}   # no rollback at the pin: chains over host checkpoints

# repetitive text, so that n-gram drafts find matches in the prompt and the output
PROMPTS = ["the value is None and the name is my class " * 3, "def print(self): return self.value " * 3,
           "for name in value: print(name) " * 3, "hello world " * 6, "import my class as the value",
           "while True: return None"]


@pytest.fixture(scope="module", params=sorted(WRITERS))
def hybrid(request, tmp_path_factory, tiny):
    """(arch, target path, engine with the tiny Llama as a draft model of the same vocabulary)."""
    path = WRITERS[request.param](tmp_path_factory.mktemp(request.param) / f"{request.param}.gguf")
    with Engine(path, draft=tiny.target, n_threads=2, n_ctx=512) as e:
        # a GPU-like profile, installed as projected: the cost-aware mode speculates by it,
        # the same way on every run
        e._engine.set_cost_profile(*FLAT, projected=True)
        e._profile_ready = True
        yield request.param, path, e


def test_checkpointed_targets_verify_chains(hybrid):
    arch, _, e = hybrid
    assert e.can_speculate
    if arch in CHECKPOINTED:
        with pytest.raises(ValueError, match="chain"):
            e.generate("hello", max_tokens=4, mode="tree")
    else:
        assert e.generate("hello", max_tokens=4, mode="tree").stats.mode == "tree"


SHAPES = [dict(mode="chain", drafter="ngram"), dict(mode="chain", drafter="model", p_min=0.0),
          dict(mode="chain", drafter="hybrid", n_max=8, p_min=0.0), dict(mode="heterospec", drafter="ngram"),
          dict(mode="heterospec", drafter="model"), dict(mode="heterospec"),
          dict(mode="tree", drafter="model"), dict(mode="tree", drafter="hybrid")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_greedy_speculation_on_hybrid_targets_equals_plain_decoding(hybrid, shape):
    arch, path, e = hybrid
    if shape["mode"] == "tree" and arch in CHECKPOINTED:
        pytest.skip(f"{arch} verifies chains over host checkpoints: no tree mode")
    verified = accepted = rolled_back = branched = branch_accepted = 0
    for i, prompt in enumerate(PROMPTS):
        ids = e.tokenize(prompt, parse_special=True)
        ref = e.generate(ids, max_tokens=40, temperature=0, mode="ar")
        if i % 2:   # n-grams would replay the reference (every draft right): here they guess
            e.clear_ngram_memory()
        got = e.generate(ids, max_tokens=40, temperature=0, trace=True, **shape)
        assert got.stats.mode == shape["mode"]
        check_greedy(e, path, ids, got, ref, f"{arch} {shape} {prompt!r}")
        verified += got.stats.nodes_verified
        accepted += got.stats.accepted_draft
        # a step that verified more nodes than it accepted rolled the recurrent state back
        rolled_back += sum(1 for depth, nodes, acc, *_ in got.trace if nodes > acc - 1)
        # steps that verified several paths, each in a sequence of its own, and kept one
        branched += sum(1 for t in got.trace if t[8] > 1)
        branch_accepted += sum(1 for t in got.trace if t[8] > 1 and t[2] > 1)
    # speculation happened (the tiny Llama is no draft of these models: the allocation soon stops)
    assert verified > (10 if shape.get("drafter") == "model" else 30), verified
    assert rolled_back > 0, rolled_back       # ... and rejected drafts were undone
    if shape.get("drafter") != "model":
        assert accepted > 10, accepted        # n-gram drafts of text seen before are accepted
    if shape["mode"] == "tree":
        assert branched > 50, branched
        if shape["drafter"] == "hybrid":
            assert branch_accepted > 5, branch_accepted


@pytest.mark.parametrize("spec_mode", ["heterospec", "tree"])
def test_sampling_on_hybrid_targets_matches_plain_sampling(hybrid, spec_mode):
    arch, _, e = hybrid
    if spec_mode == "tree" and arch in CHECKPOINTED:
        pytest.skip(f"{arch} verifies chains over host checkpoints: no tree mode")
    prompt = e.tokenize("the value is the value is the value is the value", parse_special=True)
    draws = {}
    verified = branched = 0
    for mode, seed0 in (("ar", 0), (spec_mode, 10**6)):
        out = []
        for i in range(800):
            p = e._params(max_tokens=3, temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, seed=seed0 + i, mode=mode,
                          drafter="hybrid")
            p.spec.trace = True
            r = e._engine.generate(prompt, p)
            out.append(tuple(r.tokens[1:3]))
            verified += r.stats.nodes_verified
            branched += sum(1 for t in r.trace if t[8] > 1)
        draws[mode] = out
    assert verified > 800, verified
    assert spec_mode != "tree" or branched > 100, branched   # trees of several paths were verified
    stat, df = two_sample_chi2(draws["ar"], draws[spec_mode])
    assert stat < chi2_threshold(df), (arch, stat, df)


@pytest.mark.parametrize("mode", ["ar", "heterospec"])
def test_prompt_cache_on_hybrid_targets_equals_a_cold_start(hybrid, mode):
    """A multi-turn chat: each turn's prompt extends the text of the call before, so the state at
    its end is reused; a prompt that shares only part of it starts cold (recurrent state cannot
    be cut). Each answer equals a second engine's, which never reuses anything."""
    arch, path, e = hybrid
    with Engine(path, n_threads=2, n_ctx=512) as cold_engine:
        cold_engine._engine.set_cost_profile(*FLAT, projected=True)
        cold_engine._profile_ready = True
        kw = dict(max_tokens=16, temperature=0, mode=mode, drafter="ngram" if mode != "ar" else None)
        kw = {k: v for k, v in kw.items() if v is not None}
        history = e.tokenize("the value is None and the name is my class", parse_special=True)
        e.generate(history, max_tokens=1, temperature=0, mode="ar", cache_prompt=False)   # a known cache
        cached, verified = [], 0
        for turn in ("print the value", "for name in value", "return None if x else y"):
            history = history + e.tokenize(" " + turn, add_special=False)
            warm = e.generate(history, **kw)
            cold = cold_engine.generate(history, cache_prompt=False, **kw)
            check_greedy(e, path, history, warm, cold, f"{arch} {mode} {turn}")
            cached.append(warm.stats.cached_tokens)
            verified += warm.stats.nodes_verified
            history = history + warm.tokens
        assert all(c > 0 for c in cached[1:]), (arch, mode, cached)   # the state was reused
        assert mode == "ar" or verified > 0
        # a prompt sharing only a part of the cached text
        part = history[: len(history) // 2]
        short = e.generate(part, **kw)
        assert short.stats.cached_tokens == 0
        check_greedy(e, path, part, short, cold_engine.generate(part, cache_prompt=False, **kw), f"{arch} part")


# The target's own MTP (nextn) head: a qwen35 model with one nextn layer drafts for itself.
@pytest.fixture(scope="module")
def qwen35_mtp(tmp_path_factory):
    path = gguf_arch.write_qwen35(tmp_path_factory.mktemp("mtp") / "qwen35-mtp.gguf", nextn=1)
    with Engine(path, n_threads=2, n_ctx=512) as e:
        e._engine.set_cost_profile(*FLAT, projected=True)
        e._profile_ready = True
        yield path, e


MTP_SHAPES = [dict(mode="chain", drafter="mtp", n_max=4, p_min=0.0), dict(mode="heterospec", drafter="mtp"),
              dict(mode="chain", drafter="hybrid", n_max=6, p_min=0.0), dict(mode="heterospec"),
              dict(mode="tree", drafter="mtp"), dict(mode="tree", drafter="hybrid")]


@pytest.mark.parametrize("shape", MTP_SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_mtp_drafts_on_a_hybrid_target_equal_plain_decoding(qwen35_mtp, shape):
    path, e = qwen35_mtp
    verified = mtp_calls = branched = 0
    for i, prompt in enumerate(PROMPTS):
        ids = e.tokenize(prompt, parse_special=True)
        ref = e.generate(ids, max_tokens=32, temperature=0, mode="ar")
        if i % 2:
            e.clear_ngram_memory()
        got = e.generate(ids, max_tokens=32, temperature=0, trace=True, **shape)
        assert got.stats.drafter == shape.get("drafter", "hybrid")   # the default uses the MTP head
        check_greedy(e, path, ids, got, ref, f"mtp {shape} {prompt!r}")
        verified += got.stats.nodes_verified
        mtp_calls += got.stats.draft_calls
        branched += sum(1 for t in got.trace if t[8] > 1)
    # a random head is rarely right: the cost-aware allocation soon stops paying for it
    assert verified > (10 if shape["mode"] == "heterospec" else 30) and mtp_calls > 10, (verified, mtp_calls)
    # a tree over the head's drafts: its chain with the alternatives at each level
    assert shape["mode"] != "tree" or branched > 30, branched


def test_mtp_sampling_matches_plain_sampling(qwen35_mtp):
    _, e = qwen35_mtp
    prompt = e.tokenize("the value is the value is", parse_special=True)
    draws, verified = {}, 0
    for mode, seed0 in (("ar", 0), ("chain", 10**6)):
        out = []
        for i in range(600):
            p = e._params(max_tokens=3, temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=seed0 + i, mode=mode,
                          drafter="mtp", n_max=3, p_min=0.0)
            r = e._engine.generate(prompt, p)
            out.append(tuple(r.tokens[1:3]))
            verified += r.stats.nodes_verified
        draws[mode] = out
    assert verified > 600, verified
    stat, df = two_sample_chi2(draws["ar"], draws["chain"])
    assert stat < chi2_threshold(df), (stat, df)


def test_mtp_needs_nextn_layers(tmp_path):
    plain = gguf_arch.write_qwen35(tmp_path / "no-mtp.gguf", nextn=0)
    for p in (plain, gguf_arch.write_lfm2(tmp_path / "lfm2.gguf")):
        with Engine(p, n_threads=1, n_ctx=256) as e2:
            with pytest.raises(ValueError, match="MTP"):
                e2.generate("hello", max_tokens=4, mode="chain", drafter="mtp")
            assert e2.generate("hello", max_tokens=4, mode="chain").stats.drafter == "ngram"


def test_bad_input_on_hybrid_targets(tmp_path, tiny):
    two_heads = gguf_arch.write_qwen35(tmp_path / "two-heads.gguf", nextn=2)
    with Engine(two_heads, n_threads=1, n_ctx=256) as e:   # plain decoding and n-grams still work
        assert not e.has_mtp
        assert len(e.generate("hello", max_tokens=4, temperature=0, mode="ar").tokens) == 4
        with pytest.raises(ValueError, match="MTP heads"):
            e.generate("hello", max_tokens=4, mode="chain", drafter="mtp")
    target = gguf_arch.write_qwen35(tmp_path / "q.gguf")
    with pytest.raises(ValueError, match="vocabulary"):
        Engine(target, draft=tiny.other_vocab)
    with pytest.raises(ValueError, match="MTP"):
        Engine(gguf_arch.write_lfm2(tmp_path / "l.gguf"), drafter="mtp")


def test_a_small_batch_size_gets_fewer_rollback_planes(tmp_path):
    """llama.cpp asserts that a ubatch holds more than a sequence's n_rs_seq + 1 tokens: with
    n_batch 8 the engine asks for 6 planes, not 16, and speculates exactly instead of aborting."""
    path = gguf_arch.write_qwen35(tmp_path / "small-batch.gguf")
    with Engine(path, n_threads=2, n_ctx=256, n_batch=8) as e:
        e._engine.set_cost_profile(*FLAT, projected=True)
        e._profile_ready = True
        ids = e.tokenize(PROMPTS[0], parse_special=True)
        ref = e.generate(ids, max_tokens=24, temperature=0, mode="ar")
        for mode in ("chain", "tree"):
            got = e.generate(ids, max_tokens=24, temperature=0, mode=mode, drafter="ngram", n_max=8)
            check_greedy(e, path, ids, got, ref, f"n_batch 8 {mode}")
            assert got.stats.nodes_verified > 0


def test_plain_decoding_of_hybrid_targets_equals_llama_cpp_greedy(hybrid):
    """The engine's plain loop (one sequence with rollback planes, nextn outputs on) against
    llama.cpp's own greedy loop on a default context."""
    from heterospec import _core
    arch, path, e = hybrid
    for prompt in PROMPTS[:4]:
        ids = e.tokenize(prompt, parse_special=True)
        ours = e.generate(ids, max_tokens=24, temperature=0, mode="ar", ignore_eos=True).tokens
        theirs, gaps = _core.testing.llama_cpp_greedy(str(path), ids, 24, e.n_ctx, 2)
        k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        assert k is None or gaps[k] < 1e-2, (arch, prompt, k)


def test_engines_say_which_drafters_they_have(tmp_path, tiny):
    cases = [(gguf_arch.write_qwen35(tmp_path / "q.gguf"), None, ["mtp", "ngram", "hybrid"]),
             (gguf_arch.write_qwen35(tmp_path / "q0.gguf", nextn=0), None, ["ngram"]),
             (gguf_arch.write_lfm2(tmp_path / "l.gguf"), tiny.target, ["model", "ngram", "hybrid"]),
             (gguf_arch.write_mamba2(tmp_path / "m.gguf"), None, ["ngram"]),
             (tiny.target, tiny.draft, ["model", "ngram", "hybrid"])]
    for target, draft, expected in cases:
        with Engine(target, draft=draft, n_threads=1, n_ctx=256) as e:
            assert sorted(e.drafters) == sorted(expected), (target, e.drafters)
            assert e.can_speculate == bool(expected)


def test_sparse_prefill_runs_on_the_attention_layers_of_a_hybrid_target(tmp_path):
    """SampleAttention covers the attention layers of a qwen35 target (its DeltaNet layers have
    no attention to thin); speculation under it equals plain decoding under it."""
    path = gguf_arch.write_qwen35(tmp_path / "long.gguf", n_ctx_train=4096)
    with Engine(path, n_threads=2, n_ctx=4096, sparse_prefill="sample") as e:
        e._engine.set_cost_profile(*FLAT, projected=True)
        e._profile_ready = True
        ids = e.tokenize("the value is None and the name is my class " * 300, parse_special=True)[:3000]
        ref = e.generate(ids, max_tokens=16, temperature=0, mode="ar")
        got = e.generate(ids, max_tokens=16, temperature=0, mode="heterospec", drafter="ngram")
        assert ref.stats.sparse_kept_fraction < 1 and got.stats.sparse_kept_fraction < 1
        check_greedy(e, path, ids, got, ref, "sparse prefill on qwen35")
        assert got.stats.nodes_verified > 0


def test_an_mtp_head_that_is_often_right_gets_its_drafts_accepted(tmp_path):
    """A qwen35 model whose MTP block passes the token embedding through (right about half the
    time): its drafts are accepted, counted apart (accepted_mtp), and the output stays exact."""
    from test_padding_qwen35 import _mtp_friendly, _rewrite
    path = _rewrite(gguf_arch.write_qwen35(tmp_path / "base.gguf", nextn=1), tmp_path / "friendly.gguf", _mtp_friendly)
    with Engine(path, n_threads=2, n_ctx=512) as e:
        e._engine.set_cost_profile(*FLAT, projected=True)
        e._profile_ready = True
        accepted = {"chain": 0, "heterospec": 0, "tree": 0}
        for i, prompt in enumerate(PROMPTS):
            ids = e.tokenize(prompt, parse_special=True)
            ref = e.generate(ids, max_tokens=32, temperature=0, mode="ar")
            for mode, kw in (("chain", dict(drafter="mtp", n_max=3)), ("heterospec", {}), ("tree", dict(drafter="mtp"))):
                e.clear_ngram_memory()
                got = e.generate(ids, max_tokens=32, temperature=0, mode=mode, **kw)
                check_greedy(e, path, ids, got, ref, f"friendly mtp {mode} {prompt!r}")
                accepted[mode] += got.stats.accepted_mtp
                assert got.stats.accepted_mtp <= got.stats.accepted_draft
        assert accepted["chain"] > 20 and accepted["heterospec"] > 10 and accepted["tree"] > 20, accepted


def test_the_cost_profile_prices_the_mtp_heads_pass(tmp_path):
    """Without a draft model, the stored profile carries the head's pass: an engine loading it
    from the cache prices the head's levels as the one that measured them (it priced them at 0,
    as model-free drafting, until its own steps taught it)."""
    path = gguf_arch.write_qwen35(tmp_path / "mtp.gguf", nextn=1)
    with Engine(path, n_threads=2, n_ctx=256, cost_profile_cache=tmp_path / "cache") as e:
        measured = e.cost_profile()["draft_level_ms"]
    assert measured > 0
    (stored,) = (tmp_path / "cache").glob("profile-*.json")
    doc = json.loads(stored.read_text())
    stored.write_text(json.dumps({**doc, "draft_level_ms": 7.5}))
    with Engine(path, n_threads=2, n_ctx=256, cost_profile_cache=tmp_path / "cache") as e:
        assert e.cost_profile()["draft_level_ms"] == 7.5
