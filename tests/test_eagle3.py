"""EAGLE-3 heads (issue #20): a one-layer head that reads the inputs of three target layers,
given as the draft (architecture eagle3, as llama.cpp's converter writes it).

Exactness as for every drafter: greedy output equal to plain decoding (apart from certified
near-ties), sampling by a chi-square test, and every test asserts that the head's drafts were
verified. The heads here are random: their drafts are rarely right, so the tests fix the shape
(chain, tree) or a GPU-like cost profile under which the cost-aware mode pays for them.
"""
import numpy as np
import pytest

import gguf_arch
import gguf_factory as factory
from heterospec import Engine
from test_heterospec import FLAT
from test_speculative import check_greedy, chi2_threshold, two_sample_chi2

PROMPTS = ["the value is None and the name is my class " * 2, "def print(self): return self.value " * 2,
           "for name in value: print(name)", "hello world", "import my class as the value",
           "while True: return None"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A four-layer target and heads for it: borrowing the target's embedding and output (as
    heads for Llama 3.1 8B do), and one with its own, narrower."""
    root = tmp_path_factory.mktemp("eagle3")
    target = factory.write_llama(root / "target.gguf", seed=11, n_layer=4, n_ctx_train=512)
    return dict(root=root, target=target,
                head=gguf_arch.write_eagle3(root / "head.gguf", target, seed=1),
                own=gguf_arch.write_eagle3(root / "own.gguf", target, n_embd=32, n_head=2, own_embedding=True,
                                           own_output=True, layers=[1, 2, 3], seed=2))


def flat(e):
    """A GPU-like profile, installed as projected: the cost-aware mode drafts by it."""
    e._engine.set_cost_profile(*FLAT, projected=True)
    e._profile_ready = True
    return e


@pytest.fixture(scope="module", params=["head", "own"])
def pair(request, models):
    with Engine(models["target"], draft=models[request.param], n_threads=2, n_ctx=512) as e:
        yield models["target"], flat(e)


def test_an_eagle3_head_offers_its_drafters(pair):
    _, e = pair
    assert e.drafters == ["eagle3", "ngram", "hybrid"]
    assert not e.has_draft and not e.has_mtp
    assert e.generate("hello", max_tokens=4, temperature=0).stats.drafter == "hybrid"


SHAPES = [dict(mode="chain", drafter="eagle3", n_max=4, p_min=0.0), dict(mode="tree", drafter="eagle3"),
          dict(mode="heterospec", drafter="eagle3"), dict(mode="chain", drafter="hybrid", n_max=6, p_min=0.0),
          dict(mode="tree", drafter="hybrid"), dict(mode="heterospec")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_greedy_eagle3_speculation_equals_plain_decoding(pair, shape):
    path, e = pair
    verified = head_calls = branched = 0
    for i, prompt in enumerate(PROMPTS):
        ids = e.tokenize(prompt, parse_special=True)
        ref = e.generate(ids, max_tokens=32, temperature=0, mode="ar")
        if i % 2:   # n-grams would replay the reference: here they guess
            e.clear_ngram_memory()
        got = e.generate(ids, max_tokens=32, temperature=0, trace=True, **shape)
        assert got.stats.drafter == shape.get("drafter", "hybrid")
        check_greedy(e, path, ids, got, ref, f"eagle3 {shape} {prompt!r}")
        verified += got.stats.nodes_verified
        head_calls += got.stats.draft_calls
        # a tree over the head's drafts: more nodes than levels in a step
        branched += sum(1 for t in got.trace if t[1] > t[0])
        assert got.stats.accepted_eagle3 <= got.stats.accepted_draft
    assert verified > 30 and head_calls > 10, (verified, head_calls)
    assert shape["mode"] != "tree" or branched > 30, branched


def test_eagle3_sampling_matches_plain_sampling(pair):
    _, e = pair
    prompt = e.tokenize("the value is the value is", parse_special=True)
    draws, verified = {}, 0
    for mode, seed0 in (("ar", 0), ("tree", 10**6)):
        out = []
        for i in range(600):
            p = e._params(max_tokens=3, temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=seed0 + i, mode=mode,
                          drafter="eagle3")
            r = e._engine.generate(prompt, p)
            out.append(tuple(r.tokens[1:3]))
            verified += r.stats.nodes_verified
        draws[mode] = out
    assert verified > 600, verified
    stat, df = two_sample_chi2(draws["ar"], draws["tree"])
    assert stat < chi2_threshold(df), (stat, df)


def test_the_head_reads_the_features_a_plain_pass_gives(models):
    """After tree steps, the features handed to the head for the accepted path equal those of one
    plain pass over the same text (the target's layer inputs, three layers concatenated), up to
    the rounding by which the target's passes of different batch shapes differ (measured: 1.5e-3
    between one-token passes and one batch; features are O(1) and a neighbour's differ by O(1))."""
    with Engine(models["target"], draft=models["head"], n_threads=2, n_ctx=512) as e:
        flat(e)
        ids = e.tokenize(PROMPTS[0], parse_special=True)
        e.generate(ids, max_tokens=40, temperature=0, mode="ar")   # n-grams then replay it: paths accepted
        e._engine.debug_record_states(True)
        got = e.generate(ids, max_tokens=40, temperature=0, mode="tree", drafter="hybrid", trace=True)
        assert got.stats.nodes_verified > 40 and got.stats.accepted_draft > 5
        stepped = dict(e._engine.debug_states("hybrid"))
        # a plain pass over the whole text: the prompt of a one-token generation
        e._engine.debug_record_states(True)
        text = ids + got.tokens
        e.generate(text, max_tokens=1, temperature=0, mode="chain", drafter="eagle3", cache_prompt=False)
        plain = dict(e._engine.debug_states("eagle3"))
        e._engine.debug_record_states(False)
    n = len(text) - 1   # the last token ran as a root, after the recording stopped being compared
    checked = [p for p in range(len(ids), n) if p in stepped]
    assert len(checked) >= len(got.tokens) - 2, (len(checked), len(got.tokens))
    for p in checked:
        a, b = np.asarray(stepped[p]), np.asarray(plain[p])
        assert a.shape == (3 * 64,)
        assert np.abs(a - b).max() < 1e-2, (p, np.abs(a - b).max())
        assert np.abs(a - np.asarray(plain[p - 1])).max() > 0.1   # the check can tell rows apart


def test_eagle3_over_a_hybrid_target(tmp_path):
    """Qwen3.5-class targets give layer features too: the head drafts over the paths layout."""
    target = gguf_arch.write_qwen35(tmp_path / "q.gguf")
    head = gguf_arch.write_eagle3(tmp_path / "h.gguf", target, layers=[0, 1, 3], seed=3)
    with Engine(target, draft=head, n_threads=2, n_ctx=512) as e:
        flat(e)
        verified = 0
        for prompt in PROMPTS[:3]:
            ids = e.tokenize(prompt, parse_special=True)
            ref = e.generate(ids, max_tokens=24, temperature=0, mode="ar")
            for shape in (dict(mode="chain", drafter="eagle3", n_max=4, p_min=0.0), dict(mode="tree", drafter="hybrid")):
                got = e.generate(ids, max_tokens=24, temperature=0, **shape)
                check_greedy(e, target, ids, got, ref, f"qwen35 {shape}")
                verified += got.stats.nodes_verified
        assert verified > 40, verified


def test_bad_eagle3_heads_are_refused_naming_both_files(models, tmp_path, tiny):
    target, root = models["target"], models["root"]
    wide = gguf_arch.write_eagle3(root / "wide.gguf", target, target_hidden=128)
    with pytest.raises(ValueError, match=r"head '.*wide.gguf' and target '.*target.gguf'.*width 128"):
        Engine(target, draft=wide)
    deep = gguf_arch.write_eagle3(root / "deep.gguf", target, layers=[0, 2, 7])
    with pytest.raises(ValueError, match=r"target layers \[0, 2, 7\].*4 layers"):
        Engine(target, draft=deep)
    two = gguf_arch.write_eagle3(root / "two.gguf", target, layers=[1, 2])
    with pytest.raises(ValueError, match="two.gguf.*3 entries"):   # llama.cpp refuses it at load
        Engine(target, draft=two)
    # a head made for a target of another vocabulary
    other = gguf_arch.write_eagle3(root / "other.gguf", tiny.other_vocab)
    with pytest.raises(ValueError, match="vocabulary"):
        Engine(target, draft=other)
    # a head of another width that borrows the target's embedding
    narrow = gguf_arch.write_eagle3(root / "narrow.gguf", target, n_embd=32, n_head=2, own_output=True)
    with pytest.raises(ValueError, match="borrows the target's token embedding"):
        Engine(target, draft=narrow)
    # a head is no model of its own
    with pytest.raises(ValueError, match="EAGLE-3 head"):
        Engine(models["head"])
    # a head asked to draft as a draft model, and a draft model asked to draft as a head
    with pytest.raises(ValueError, match="is an EAGLE-3 head, not a draft model"):
        Engine(target, draft=models["head"], drafter="model")
    with Engine(target, draft=models["head"], n_threads=1) as e:
        with pytest.raises(ValueError, match="is an EAGLE-3 head, not a draft model"):
            e.generate("hello", max_tokens=2, mode="chain", drafter="model")
    with pytest.raises(ValueError, match="needs an EAGLE-3 head"):
        Engine(tiny.target, draft=tiny.draft, drafter="eagle3")
    with pytest.raises(ValueError, match="needs an EAGLE-3 head"):
        Engine(tiny.target, drafter="eagle3")
    # targets whose layer features the pin cannot give (llama.cpp would abort)
    for name, t in (("gemma2", gguf_arch.write_gemma2(tmp_path / "g.gguf")),
                    ("mamba2", gguf_arch.write_mamba2(tmp_path / "m.gguf"))):
        head = gguf_arch.write_eagle3(tmp_path / f"{name}-head.gguf", t)
        with pytest.raises(ValueError, match=f"cannot give the layer features .* for architecture '{name}'"):
            Engine(t, draft=head)


def test_a_padded_head_drafts_as_its_source_on_the_padded_target(models, tmp_path):
    """The benchmark grows a head with its target (padding.pad_eagle3): on the padded target the
    padded head computes the same function, so the same trees are drafted, verified and accepted
    step for step (width x4 and twice the layers: exact in F32)."""
    padding = pytest.importorskip("heterospec.padding")
    pytest.importorskip("gguf", reason='padding needs gguf-py: pip install "heterospec[bench]"')
    target, head = models["target"], models["head"]
    pt, ph = tmp_path / "t.gguf", tmp_path / "h.gguf"
    padding.pad_llama(target, pt, 256, 8, 512, "f32")
    info = padding.pad_eagle3(head, ph, target, 256, 8, 512, "f32")
    assert info["width"] == 256 and info["target_layers"] == [0, 4, 6]
    traces, entropies = [], []
    for t, h in ((target, head), (pt, ph)):
        with Engine(t, draft=h, n_threads=2, n_ctx=512) as e:
            flat(e)
            runs, ent = [], []
            for prompt in PROMPTS[:3]:
                ids = e.tokenize(prompt, parse_special=True)
                r = e.generate(ids, max_tokens=24, temperature=0, mode="tree", drafter="eagle3", trace=True)
                # the trees' shapes, and the entropy of the head's distributions over them
                runs.append((r.tokens, [(s[0], s[1], s[2], s[3], s[8]) for s in r.trace]))
                ent += [s[4] for s in r.trace]
            traces.append(runs)
            entropies.append(ent)
    assert traces[0] == traces[1]
    np.testing.assert_allclose(entropies[0], entropies[1], rtol=1e-4, atol=1e-5)
    assert len(entropies[0]) > 30 and len(set(np.round(entropies[0], 3))) > 10


def test_calibrate_fits_a_policy_for_a_head(models, tmp_path):
    """Issue #20 item 4: the entropy partition is fitted on the head's own distributions
    (`heterospec calibrate --drafter eagle3`), and heterospec decodes exactly with it."""
    import json
    import subprocess
    import sys
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "policy.json"
    p = subprocess.run([sys.executable, "-m", "heterospec", "calibrate", "-m", str(models["target"]), "-md",
                        str(models["head"]), "--drafter", "eagle3", "--prompts", str(prompts), "-n", "32", "-t", "2",
                        "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["settings"]["drafter"] == "eagle3" and doc["settings"]["steps"] > 100
    assert len(set(doc["thresholds"])) > 1   # the head's entropies spread: a partition was found
    with Engine(models["target"], draft=models["head"], n_threads=2, n_ctx=512) as e:
        flat(e)
        ids = e.tokenize(PROMPTS[1], parse_special=True)
        r = e.generate(ids, max_tokens=24, temperature=0, mode="heterospec", drafter="eagle3", policy=out)
        check_greedy(e, models["target"], ids, r, e.generate(ids, max_tokens=24, temperature=0, mode="ar"), "policy")
        assert r.stats.nodes_verified > 0


def test_the_head_check_names_what_differs():
    """check_eagle3_head (pure logic): every way a head can fail its target, with the reason."""
    from heterospec import _core
    check = _core.testing.check_eagle3_head
    ok = dict(layers=[1, 3, 5], target_hidden=320, n_embd=320, own_embedding=False, own_output=False, arch="llama",
              n_layer=6, target_n_embd=320, rollback=True)
    check(**ok)
    check(**{**ok, "n_embd": 256, "own_embedding": True, "own_output": True})   # its own width, its own tensors
    for change, why in ((dict(layers=[1, 3]), "names 2 target layers"),
                        (dict(layers=[1, 3, 6]), r"\[1, 3, 6\].*6 layers \(0\.\.5\)"),
                        (dict(layers=[-1, 3, 5]), "6 layers"),
                        (dict(target_hidden=4096), "width 4096"),
                        (dict(n_embd=256), "borrows the target's token embedding"),
                        (dict(n_embd=256, own_embedding=True), "borrows the target's output matrix"),
                        (dict(arch="gemma2"), "architecture 'gemma2'"),
                        (dict(arch="qwen35", rollback=False), "rolled back")):
        with pytest.raises(ValueError, match=why):
            check(**{**ok, **change})


def test_the_prompt_cache_keeps_what_the_head_saw(models):
    """A head needs the target's states for every token before its root: text the target holds
    but the head never saw (a plain generation's output) runs through the target again, and the
    head receives it; text both saw is reused."""
    with Engine(models["target"], draft=models["head"], n_threads=2, n_ctx=512) as e:
        flat(e)
        ids = e.tokenize(PROMPTS[2], parse_special=True)
        plain = e.generate(ids, max_tokens=16, temperature=0, mode="ar")     # the head sees none of it
        e._engine.debug_record_states(True)
        text = ids + plain.tokens
        first = e.generate(text, max_tokens=8, temperature=0, mode="chain", drafter="eagle3", p_min=0.0)
        assert first.stats.cached_tokens == 0                                 # it had seen nothing
        seen = dict(e._engine.debug_states("eagle3"))
        assert all(p in seen for p in range(1, len(text) - 1))                # ... and now has it all
        assert first.stats.nodes_verified > 0
        # a continuation of what it saw: reused
        more = text + first.tokens + e.tokenize(" return None", add_special=False)
        again = e.generate(more, max_tokens=8, temperature=0, mode="chain", drafter="eagle3", p_min=0.0)
        assert again.stats.cached_tokens >= len(text) + len(first.tokens) - 2
        check_greedy(e, models["target"], more, again, e.generate(more, max_tokens=8, temperature=0, mode="ar"),
                     "continued")
        e._engine.debug_record_states(False)


def test_generations_that_end_inside_a_step_leave_the_head_room(models):
    """A generation that stops inside a step (max_tokens) commits nothing to the head: the step's
    other paths, which share the old text's cells, must not stay and fill its cache for the next
    text (found in a benchmark: 'eagle3 head llama_decode failed (code 1)')."""
    with Engine(models["target"], draft=models["head"], n_threads=2, n_ctx=256) as e:
        flat(e)
        verified = 0
        for i in range(6):   # texts of 200 tokens: two of them do not fit the head's 256 cells
            words = ["the value is None", "def print(self):", "for name in value", "import my class"]
            ids = e.tokenize(" ".join(words[(i + k) % 4] for k in range(60)), parse_special=True)[:200]
            r = e.generate(ids, max_tokens=7, temperature=0, mode="tree", drafter="eagle3", width=4, depth=6,
                           budget=20)
            verified += r.stats.nodes_verified
        assert verified > 40


def test_a_prompt_that_parts_from_the_last_text_keeps_the_common_part_in_the_head(models):
    """The head keeps its last state only: where a new prompt parts from the text it saw, the
    target runs one common token again to give it the state there, and the head keeps its rows of
    the common part (it drafted over an empty cache before: found in review)."""
    with Engine(models["target"], draft=models["head"], n_threads=2, n_ctx=512) as e:
        flat(e)
        a = e.tokenize(PROMPTS[0] * 4, parse_special=True)[:90]
        assert len(a) > 70
        e.generate(a, max_tokens=8, temperature=0, mode="chain", drafter="eagle3", p_min=0.0)
        b = a[:60] + e.tokenize(" while True: return None", add_special=False)
        r = e.generate(b, max_tokens=8, temperature=0, mode="chain", drafter="eagle3", p_min=0.0)
        assert r.stats.cached_tokens == 59                  # the common 60 tokens but one
        head = e._engine.debug_kv_state()[1]                 # the head's cache, sequence 0
        assert head[0][0] == 1 and head[0][1] >= len(b) - 1  # its rows from the text's start (x_1 on)
        check_greedy(e, models["target"], b, r, e.generate(b, max_tokens=8, temperature=0, mode="ar"), "parted")
        assert r.stats.nodes_verified > 0
