"""DFlash drafts (issue #20): a block-diffusion draft (architecture dflash) whose KV cache holds
keys and values made from the target's layer features, given as the draft. One pass over the
block [root, mask x (block_size - 1)] gives a distribution per position; the tree joins their
top-k into paths (DDTree).

Exactness as for every drafter: greedy output equal to plain decoding (apart from certified
near-ties), sampling by a chi-square test, and every test asserts that the draft's nodes were
verified. The drafts here are random: the tests fix the shape or a GPU-like cost profile.
"""
import numpy as np
import pytest

import gguf_arch
import gguf_factory as factory
from heterospec import Engine
from test_eagle3 import PROMPTS, flat
from test_speculative import check_greedy, chi2_threshold, two_sample_chi2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A four-layer target and DFlash drafts for it: borrowing the target's embedding and output
    (as the published drafts do), and one with its own, causal, of another block size."""
    root = tmp_path_factory.mktemp("dflash")
    target = factory.write_llama(root / "target.gguf", seed=11, n_layer=4, n_ctx_train=512)
    return dict(root=root, target=target,
                draft=gguf_arch.write_dflash(root / "draft.gguf", target, seed=1),
                own=gguf_arch.write_dflash(root / "own.gguf", target, layers=[1, 2, 3], n_layer=1, block_size=5,
                                           own_embedding=True, own_output=True, causal=True, seed=2))


@pytest.fixture(scope="module", params=["draft", "own"])
def pair(request, models):
    with Engine(models["target"], draft=models[request.param], n_threads=2, n_ctx=512) as e:
        yield models["target"], flat(e)


def test_a_dflash_draft_offers_its_drafters(pair):
    _, e = pair
    assert e.drafters == ["dflash", "ngram", "hybrid"]
    assert not e.has_draft and not e.has_mtp
    assert e.generate("hello", max_tokens=4, temperature=0).stats.drafter == "hybrid"


SHAPES = [dict(mode="chain", drafter="dflash", n_max=4, p_min=0.0), dict(mode="tree", drafter="dflash"),
          dict(mode="tree", drafter="dflash", depth=7, width=6, budget=24),
          dict(mode="heterospec", drafter="dflash"), dict(mode="chain", drafter="hybrid", n_max=6, p_min=0.0),
          dict(mode="tree", drafter="hybrid"), dict(mode="heterospec")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_greedy_dflash_speculation_equals_plain_decoding(pair, shape):
    path, e = pair
    verified = calls = branched = deep = 0
    for i, prompt in enumerate(PROMPTS):
        ids = e.tokenize(prompt, parse_special=True)
        ref = e.generate(ids, max_tokens=32, temperature=0, mode="ar")
        if i % 2:   # n-grams would replay the reference: here they guess
            e.clear_ngram_memory()
        got = e.generate(ids, max_tokens=32, temperature=0, trace=True, **shape)
        assert got.stats.drafter == shape.get("drafter", "hybrid")
        check_greedy(e, path, ids, got, ref, f"dflash {shape} {prompt!r}")
        verified += got.stats.nodes_verified
        calls += got.stats.draft_calls
        branched += sum(1 for t in got.trace if t[1] > t[0])
        deep += sum(1 for t in got.trace if t[0] >= 3)
        # one pass drafts every level of a step
        assert all(t[7] <= 1 for t in got.trace), [t[7] for t in got.trace]
        assert got.stats.accepted_dflash <= got.stats.accepted_draft
    assert verified > 30 and calls > 5, (verified, calls)
    assert shape["mode"] != "tree" or (branched > 30 and deep > 10), (branched, deep)


def test_dflash_sampling_matches_plain_sampling(pair):
    _, e = pair
    prompt = e.tokenize("the value is the value is", parse_special=True)
    draws, verified = {}, 0
    for mode, seed0 in (("ar", 0), ("tree", 10**6)):
        out = []
        for i in range(600):
            p = e._params(max_tokens=3, temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=seed0 + i, mode=mode,
                          drafter="dflash")
            r = e._engine.generate(prompt, p)
            out.append(tuple(r.tokens[1:3]))
            verified += r.stats.nodes_verified
        draws[mode] = out
    assert verified > 600, verified
    stat, df = two_sample_chi2(draws["ar"], draws["tree"])
    assert stat < chi2_threshold(df), (stat, df)


def test_the_draft_reads_the_features_a_plain_pass_gives(models):
    """After tree steps, the features injected for the accepted path equal those of one plain
    pass over the same text (two target layers' inputs concatenated), up to the rounding by which
    the target's passes of different batch shapes differ."""
    with Engine(models["target"], draft=models["draft"], n_threads=2, n_ctx=512) as e:
        flat(e)
        ids = e.tokenize(PROMPTS[0], parse_special=True)
        e.generate(ids, max_tokens=40, temperature=0, mode="ar")   # n-grams then replay it: paths accepted
        e._engine.debug_record_states(True)
        got = e.generate(ids, max_tokens=40, temperature=0, mode="tree", drafter="hybrid", trace=True)
        assert got.stats.nodes_verified > 40 and got.stats.accepted_draft > 5
        stepped = dict(e._engine.debug_states("hybrid"))
        e._engine.debug_record_states(True)
        text = ids + got.tokens
        e.generate(text, max_tokens=1, temperature=0, mode="chain", drafter="dflash", cache_prompt=False)
        plain = dict(e._engine.debug_states("dflash"))
        e._engine.debug_record_states(False)
    checked = [p for p in range(len(ids), len(text) - 1) if p in stepped]
    assert len(checked) >= len(got.tokens) - 2, (len(checked), len(got.tokens))
    for p in checked:
        a, b = np.asarray(stepped[p]), np.asarray(plain[p])
        assert a.shape == (2 * 64,)
        assert np.abs(a - b).max() < 1e-2, (p, np.abs(a - b).max())
        assert np.abs(a - np.asarray(plain[p - 1])).max() > 0.1   # the check can tell rows apart


def _tensors(path):
    import gguf
    r = gguf.GGUFReader(str(path))
    return {t.name: np.array(t.data, dtype=np.float32).reshape(list(reversed(t.shape.tolist()))) for t in r.tensors}


def _reference_block(draft, target, feats, root, root_pos, n, mask_token, n_head, causal, eps=1e-5):
    """The pin's dflash graph (src/models/dflash.cpp, graph<false>) in numpy: the context's keys
    and values from the injected features (fc, enc norm, per-layer K/V, per-head K norm, NeoX
    RoPE), then the block [root, mask...] through each layer with attention over context and
    block; the logits of every block row."""
    W, T = _tensors(draft), _tensors(target)
    emb = W.get("token_embd.weight", T["token_embd.weight"])
    out = W.get("output.weight", T.get("output.weight", T["token_embd.weight"]))
    rms = lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w   # noqa: E731
    d = emb.shape[1]
    hd = d // n_head

    def rope(x, pos):   # x: H, N, hd
        inv = 1.0 / 10000.0 ** (np.arange(0, hd, 2) / hd)
        ang = np.asarray(pos)[:, None] * inv[None, :]
        c, s = np.cos(ang), np.sin(ang)
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return np.concatenate((x1 * c - x2 * s, x1 * s + x2 * c), -1)

    heads = lambda x: x.reshape(x.shape[0], n_head, hd).transpose(1, 0, 2)   # noqa: E731
    g = rms(feats @ W["fc.weight"].T, W["enc.output_norm.weight"])
    ctx_pos = np.arange(len(feats))
    bpos = root_pos + np.arange(n)
    h = emb[[root] + [mask_token] * (n - 1)]
    n_layer = sum(1 for k in W if k.endswith("attn_q.weight"))
    for il in range(n_layer):
        b = lambda name: W[f"blk.{il}.{name}.weight"]   # noqa: E731
        kc = rope(rms(heads(g @ b("attn_k").T), b("attn_k_norm")), ctx_pos)
        vc = heads(g @ b("attn_v").T)
        u = rms(h, b("attn_norm"))
        q = rope(rms(heads(u @ b("attn_q").T), b("attn_q_norm")), bpos)
        k = rope(rms(heads(u @ b("attn_k").T), b("attn_k_norm")), bpos)
        v = heads(u @ b("attn_v").T)
        K, V = np.concatenate((kc, k), 1), np.concatenate((vc, v), 1)
        sc = q @ K.transpose(0, 2, 1) / np.sqrt(hd)
        if causal:
            sc[:, :, len(feats):] += np.triu(np.full((n, n), -np.inf), 1)
        w = np.exp(sc - sc.max(-1, keepdims=True))
        a = (w / w.sum(-1, keepdims=True)) @ V
        h = h + a.transpose(1, 0, 2).reshape(n, -1) @ b("attn_output").T
        u = rms(h, b("ffn_norm"))
        gate = u @ b("ffn_gate").T
        h = h + (gate / (1 + np.exp(-gate)) * (u @ b("ffn_up").T)) @ b("ffn_down").T
    return rms(h, W["output_norm.weight"]) @ out.T


@pytest.mark.parametrize("which", ["draft", "own"])
def test_the_block_computes_what_the_dflash_graph_computes(models, which):
    """The block's distributions, as the drafter reads them, equal a numpy implementation of the
    pin's graph over the features the target handed it: row i of the block gives the token i
    places after the root (the pin's graph computes every row and llama.cpp hands out the first
    n_outputs: a block whose root row asked for no logits read every distribution one row early,
    and the exactness tests could not see it)."""
    causal, block = (False, 8) if which == "draft" else (True, 5)
    with Engine(models["target"], draft=models[which], n_threads=2, n_ctx=512) as e:
        flat(e)
        ids = e.tokenize(PROMPTS[1], parse_special=True)
        e._engine.debug_record_states(True)
        e.generate(ids, max_tokens=6, temperature=0, mode="chain", drafter="dflash", n_max=3, p_min=0.0,
                   cache_prompt=False)
        rec = dict(e._engine.debug_states("dflash"))
        e._engine.debug_record_states(False)
        mask = e.n_vocab - 1
    r = len(ids) - 1
    feats = np.stack([np.asarray(rec[p]) for p in range(r)])
    ref = _reference_block(models[which], models["target"], feats, ids[r], r, block, mask, 4, causal)
    got = np.asarray(rec[-1 - r]).reshape(block - 1, -1)
    assert np.abs(got - ref[1:]).max() < 2e-2, np.abs(got - ref[1:]).max(-1)
    assert np.abs(got[1:] - ref[1:-1]).max() > 0.5   # rows one early would differ


def _shapes(e, ids, **kw):
    """The trees a generation verified, and the entropy of the draft's distributions over them:
    a fingerprint of every block the draft gave."""
    r = e.generate(ids, max_tokens=24, temperature=0, mode="tree", drafter="dflash", trace=True, **kw)
    assert r.stats.nodes_verified > 20
    return r.tokens, [(s[0], s[1], s[2], s[3], round(float(s[4]), 3)) for s in r.trace]


def test_drafts_depend_on_the_text_alone(models):
    """The draft's cache follows the text through accepted and rejected steps, prompt-cache hits,
    prompts that part from the last text and generations that end inside a step: the same text
    gets the same blocks as on a fresh engine (its injected rows are those of the text, its
    blocks' cells gone)."""
    a = PROMPTS[0] * 3
    b = PROMPTS[1] * 3
    with Engine(models["target"], draft=models["draft"], n_threads=2, n_ctx=512) as e:
        flat(e)
        ia, ib = e.tokenize(a, parse_special=True), e.tokenize(b, parse_special=True)
        fresh_a = _shapes(e, ia, cache_prompt=False)
        e.generate(ib, max_tokens=5, temperature=0, mode="tree", drafter="dflash")      # ends inside a step
        fresh_b = _shapes(e, ib, cache_prompt=False)
        assert _shapes(e, ia) == fresh_a                                 # another text before it
        assert _shapes(e, ia) == fresh_a                                 # its own prompt cached
        parted = ia[:20] + ib[5:30]
        ref = _shapes(e, parted, cache_prompt=False)
        e.generate(ia, max_tokens=4, temperature=0, mode="chain", drafter="dflash")
        assert _shapes(e, parted) == ref                                 # parts from the last text at 20
        assert _shapes(e, ib) == fresh_b
        kv = e._engine.debug_kv_state()[1][0]                            # the draft's cache: the text
        assert kv[0] == 0 and kv[1] == e._engine.debug_n_past() - 1      # injected, no block cells


def test_the_block_and_the_context_fit_the_draft(models):
    """Near the end of the context a step drafts no deeper than the block's cells fit."""
    with Engine(models["target"], draft=models["draft"], n_threads=2, n_ctx=256) as e:
        flat(e)
        ids = e.tokenize(PROMPTS[0] * 20, parse_special=True)[:240]
        r = e.generate(ids, max_tokens=40, temperature=0, mode="tree", drafter="dflash", trace=True)
        assert r.finish_reason == "length" and r.stats.nodes_verified > 0
        assert len(ids) + len(r.tokens) <= 257   # the last token needs no cell


def test_bad_dflash_drafts_are_refused_naming_both_files(models, tmp_path, tiny):
    target, root = models["target"], models["root"]
    wide = gguf_arch.write_dflash(root / "wide.gguf", target, n_embd=128, n_head=4)
    with pytest.raises(ValueError, match=r"DFlash draft '.*wide.gguf' and target '.*target.gguf'.*width 128"):
        Engine(target, draft=wide)
    deep = gguf_arch.write_dflash(root / "deep.gguf", target, layers=[0, 2, 7])
    with pytest.raises(ValueError, match=r"target layers \[0, 2, 7\].*4 layers"):
        Engine(target, draft=deep)
    masked = gguf_arch.write_dflash(root / "nomask.gguf", target, mask_token=-1)
    with pytest.raises(ValueError, match="no mask token"):
        Engine(target, draft=masked)
    other = gguf_arch.write_dflash(root / "other.gguf", tiny.other_vocab)
    with pytest.raises(ValueError, match="vocabulary"):
        Engine(target, draft=other)
    with pytest.raises(ValueError, match="DFlash draft"):
        Engine(models["draft"])
    with pytest.raises(ValueError, match="is a DFlash draft, not a draft model"):
        Engine(target, draft=models["draft"], drafter="model")
    with pytest.raises(ValueError, match="needs an EAGLE-3 head as the draft.*is a DFlash draft"):
        Engine(target, draft=models["draft"], drafter="eagle3")
    with pytest.raises(ValueError, match="needs a DFlash draft as the draft.*is a draft model"):
        Engine(tiny.target, draft=tiny.draft, drafter="dflash")
    with pytest.raises(ValueError, match="needs a DFlash draft"):
        Engine(tiny.target, drafter="dflash")
    for name, t in (("gemma2", gguf_arch.write_gemma2(tmp_path / "g.gguf")),
                    ("mamba2", gguf_arch.write_mamba2(tmp_path / "m.gguf"))):
        d = gguf_arch.write_dflash(tmp_path / f"{name}-dflash.gguf", t)
        with pytest.raises(ValueError, match=f"cannot give the layer features .* for architecture '{name}'"):
            Engine(t, draft=d)


def test_dflash_over_a_hybrid_target(tmp_path):
    """Qwen3.5-class targets give layer features too: DFlash drafts over the paths layout."""
    target = gguf_arch.write_qwen35(tmp_path / "q.gguf")
    d = gguf_arch.write_dflash(tmp_path / "d.gguf", target, layers=[0, 3], seed=3)
    with Engine(target, draft=d, n_threads=2, n_ctx=512) as e:
        flat(e)
        verified = 0
        for prompt in PROMPTS[:3]:
            ids = e.tokenize(prompt, parse_special=True)
            ref = e.generate(ids, max_tokens=24, temperature=0, mode="ar")
            for shape in (dict(mode="chain", drafter="dflash", n_max=4, p_min=0.0), dict(mode="tree", drafter="hybrid")):
                got = e.generate(ids, max_tokens=24, temperature=0, **shape)
                check_greedy(e, target, ids, got, ref, f"qwen35 {shape}")
                verified += got.stats.nodes_verified
        assert verified > 40, verified


def test_a_dflash_step_is_priced_as_one_pass():
    """The cost-aware allocation prices a DFlash step by its one pass, however deep
    (CostProfile::block_levels): with a level costing a token's verification, per-level prices
    find no depth that pays while the block's one pass does, and deeper levels of a drafted
    block are taken while they add accepted tokens."""
    from heterospec import _core
    t = _core.testing
    sizes, verify = [1, 2, 4, 8, 16], [10.0, 10.5, 11.0, 12.0, 14.0]
    for block in (False, True):
        assert t.worth_paid_levels(sizes, verify, [], 0.9, 15, 7, 0.0, 10.0, block_levels=block) == block
    # a drafted block: its next level costs nothing more, a model's another pass
    values, children = [0.9, 0.81], [0.73, 0.1]
    assert t.worth_extending(sizes, verify, values, children, 15, 10.0, 10.0, block_levels=True) >= 1
    assert t.worth_extending(sizes, verify, values, children, 15, 10.0, 10.0) == 0


def test_a_padded_draft_drafts_as_its_source_on_the_padded_target(models, tmp_path):
    """The benchmark grows a DFlash draft with its target (padding.pad_dflash): on the padded
    target the padded draft computes the same function, so the same trees are drafted, verified
    and accepted step for step (width x4 and twice the layers)."""
    padding = pytest.importorskip("heterospec.padding")
    pytest.importorskip("gguf", reason='padding needs gguf-py: pip install "heterospec[bench]"')
    target, draft = models["target"], models["draft"]
    pt, pd = tmp_path / "t.gguf", tmp_path / "d.gguf"
    padding.pad_llama(target, pt, 256, 8, 512, "f32")
    info = padding.pad_dflash(draft, pd, target, 256, 8, 512, "f32")
    assert info["width"] == 256 and info["target_layers"] == [0, 6]
    traces, entropies = [], []
    for t, d in ((target, draft), (pt, pd)):
        with Engine(t, draft=d, n_threads=2, n_ctx=512) as e:
            flat(e)
            runs, ent = [], []
            for prompt in PROMPTS[:3]:
                ids = e.tokenize(prompt, parse_special=True)
                r = e.generate(ids, max_tokens=24, temperature=0, mode="tree", drafter="dflash", trace=True)
                runs.append((r.tokens, [(s[0], s[1], s[2], s[3], s[8]) for s in r.trace]))
                ent += [s[4] for s in r.trace]
            traces.append(runs)
            entropies.append(ent)
    assert traces[0] == traces[1]
    np.testing.assert_allclose(entropies[0], entropies[1], rtol=1e-4, atol=1e-5)
    assert len(entropies[0]) > 30 and len(set(np.round(entropies[0], 3))) > 10


def test_calibrate_fits_a_policy_for_a_dflash_draft(models, tmp_path):
    """Issue #20 item 4 for DFlash: `heterospec calibrate --drafter dflash` fits the entropy
    partition on the block's distributions, and heterospec decodes exactly with it."""
    import json
    import subprocess
    import sys
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "policy.json"
    p = subprocess.run([sys.executable, "-m", "heterospec", "calibrate", "-m", str(models["target"]), "-md",
                        str(models["draft"]), "--drafter", "dflash", "--prompts", str(prompts), "-n", "32", "-t", "2",
                        "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["settings"]["drafter"] == "dflash" and doc["settings"]["steps"] > 100
    assert len(set(doc["thresholds"])) > 1
    with Engine(models["target"], draft=models["draft"], n_threads=2, n_ctx=512) as e:
        flat(e)
        ids = e.tokenize(PROMPTS[1], parse_special=True)
        r = e.generate(ids, max_tokens=24, temperature=0, mode="heterospec", drafter="dflash", policy=out)
        check_greedy(e, models["target"], ids, r, e.generate(ids, max_tokens=24, temperature=0, mode="ar"), "policy")
        assert r.stats.nodes_verified > 0


def test_a_batch_smaller_than_the_block_drafts_a_shorter_block(models):
    """A block is one ubatch (llama.cpp asserts it for non-causal attention): with n_batch below
    the draft's block size, the block shrinks to the batch instead of aborting (found in review)."""
    with Engine(models["target"], draft=models["draft"], n_threads=2, n_ctx=512, n_batch=4) as e:
        flat(e)
        ids = e.tokenize(PROMPTS[1], parse_special=True)
        ref = e.generate(ids, max_tokens=16, temperature=0, mode="ar")
        for shape in (dict(mode="tree", drafter="dflash"), dict(mode="heterospec", drafter="dflash")):
            got = e.generate(ids, max_tokens=16, temperature=0, trace=True, **shape)
            check_greedy(e, models["target"], ids, got, ref, f"n_batch 4 {shape}")
            assert got.stats.nodes_verified > 0 and max(t[0] for t in got.trace) <= 3
