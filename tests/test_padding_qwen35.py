"""Padding a qwen35 model (heterospec/padding.py: pad_qwen35) keeps its function: the padded
model's log-probabilities equal the source's and its MTP head drafts the same tokens."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason='padding needs gguf-py: pip install "heterospec[bench]"')

import gguf_arch  # noqa: E402
from heterospec import Engine  # noqa: E402
from heterospec import padding  # noqa: E402

PROMPTS = ["the value is None and the name is my class " * 2, "def print(self): return self.value " * 2,
           "for name in value: print(name) ", "hello world " * 4, "import my class as the value"]


def _rewrite(src: Path, dst: Path, edit, drop=()) -> Path:
    """A copy of a GGUF with its tensors edited in place by `edit(dict)`."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(key, f.contents(), f.types[0])
    T = {t.name: np.array(t.data, dtype=np.float32) for t in r.tensors}
    edit(T)
    for k, v in T.items():
        if k not in drop:
            w.add_tensor(k, np.ascontiguousarray(v, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _mtp_friendly(T):
    """(The untied source.) Weak trunk writers (the next token depends mostly on the current one) and an MTP block that
    passes the token embedding through: the MTP head is right about half the time, so that its
    acceptance counts tell a faithful padding from a wrong one."""
    rng = np.random.default_rng(3)
    for n in T:
        if n.endswith(("attn_output.weight", "ssm_out.weight", "ffn_down.weight")):
            T[n] *= 0.25
    for n in [n for n in T if n.endswith("nextn.eh_proj.weight")]:
        d = T[n].shape[0]
        T[n] = np.concatenate([np.eye(d), 0.1 * rng.standard_normal((d, d)) / np.sqrt(d)], 1)
        b = n[:-len("nextn.eh_proj.weight")]
        T[b + "nextn.shared_head_norm.weight"] = T["output_norm.weight"].copy()
        T[b + "nextn.enorm.weight"][:] = 1.0


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("pad-qwen35")
    base = gguf_arch.write_qwen35(root / "base.gguf", nextn=1)
    untied = _rewrite(base, root / "untied.gguf", _mtp_friendly)
    # tied output (llama.cpp then uses token_embd): smaller embeddings, or it repeats its own token
    tied = _rewrite(base, root / "tied.gguf", lambda T: T["token_embd.weight"].__imul__(0.5), drop=("output.weight",))
    return root, {"untied": untied, "tied": tied}


def _greedy(e, prompt, n=20):
    """(the prompt's tokens, its greedy continuation of n tokens, the log-probabilities along it)."""
    ids = e.tokenize(prompt, parse_special=True)
    ref = e.generate(ids, max_tokens=n, temperature=0, mode="ar")
    rows, _ = e.score(ids, list(ref.tokens))
    return ids, list(ref.tokens), np.asarray(rows)


def _run(path):
    """Per prompt: log-probabilities of the greedy continuation, and the greedy MTP runs."""
    out = []
    with Engine(path, n_threads=1, n_ctx=256) as e:
        for p in PROMPTS:
            ids, ref, rows = _greedy(e, p)
            runs = []
            # p_min > 0: the drafts' probabilities matter too (where the chain stops)
            for n_max, p_min in ((1, 0.0), (3, 0.0), (3, 0.6)):
                g = e.generate(ids, max_tokens=20, temperature=0, mode="chain", drafter="mtp", n_max=n_max,
                               p_min=p_min, trace=True)
                runs.append((list(g.tokens), g.stats.accepted_draft, g.stats.nodes_verified, list(g.trace)))
            out.append((ref, rows, runs))
    return out


@pytest.mark.parametrize("tie", ["untied", "tied"])
@pytest.mark.parametrize("dim,ffn,tol", [(256, 256, 1e-4),    # c = sqrt(D/d) = 2: scaling is exact in floats
                                         (128, 256, 5e-3)])   # c = sqrt(2): a rounding per weight
def test_padded_qwen35_computes_the_same_function(sources, tie, dim, ffn, tol):
    root, src = sources
    dst = root / f"{tie}-{dim}-{ffn}.gguf"
    info = padding.pad_qwen35(src[tie], dst, dim, ffn, "f32")
    assert info["tied_output"] == (tie == "tied") and info["mtp"]
    r = gguf.GGUFReader(str(dst))
    assert r.fields["qwen35.embedding_length"].contents() == dim
    assert r.fields["qwen35.feed_forward_length"].contents() == ffn
    shapes = {t.name: tuple(t.data.shape) for t in r.tensors}
    assert shapes["blk.0.ffn_down.weight"] == (dim, ffn) and shapes["blk.4.nextn.eh_proj.weight"] == (dim, 2 * dim)
    assert ("output.weight" in shapes) == (tie == "untied")

    a, b = _run(src[tie]), _run(dst)
    accepted = verified_p_min = 0
    for (ref_a, rows_a, runs_a), (ref_b, rows_b, runs_b) in zip(a, b):
        assert ref_a == ref_b
        assert float(np.max(np.abs(rows_a - rows_b))) <= tol
        assert (rows_a.argmax(1) == rows_b.argmax(1)).all()
        for ra, rb in zip(runs_a, runs_b):   # same tokens, same drafts accepted, same steps
            assert ra == rb
        accepted += sum(r[1] for r in runs_a)
        verified_p_min += runs_a[2][2]
    if tie == "untied":
        assert accepted > 10, accepted   # the MTP head did draft something right
    assert verified_p_min > 0            # and with p_min, its probabilities decided something


def test_padded_model_pads_qwen35_natively(sources, tmp_path, monkeypatch):
    _, src = sources
    monkeypatch.setitem(padding.QWEN35_SHAPES, "cpu-300m", (128, 256))   # small, for speed
    assert padding.gguf_architecture(src["untied"]) == "qwen35"
    out = padding.padded_model(str(src["untied"]), "cpu-300m", "f16", tmp_path)
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.architecture"].contents() == "qwen35"
    assert r.fields["qwen35.embedding_length"].contents() == 128
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert padding.padded_model(str(src["untied"]), "cpu-300m", "f16", tmp_path) == out   # cached
    with pytest.raises(ValueError, match="sets the number of layers, which a qwen35 model keeps"):
        padding.padded_model(str(src["untied"]), "cpu-300m-deep", "f16", tmp_path)
