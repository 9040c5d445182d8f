"""Padding a llama model (heterospec/padding.py: pad_llama, padded_model) keeps its function: the
padded model's log-probabilities and greedy tokens equal the source's; its files are byte for byte
those of the project's former external tool (../shared/tools/pad_model.py, when present); the
benchmark's padded_model() makes them once, in the package, with no tool."""
from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason='padding needs gguf-py: pip install "heterospec[bench]"')

import gguf_factory as factory  # noqa: E402
from conftest import SHARED  # noqa: E402
from heterospec import Engine  # noqa: E402
from heterospec import padding  # noqa: E402
from heterospec.cli import main  # noqa: E402
from test_padding_qwen35 import _greedy, _rewrite  # noqa: E402

TOOL = SHARED / "tools" / "pad_model.py"
PROMPTS = ["the value is None and the name is my class " * 2, "def print(self): return self.value " * 2,
           "for name in value: print(name) "]


def _rope_freqs(T):
    """Llama 3.1-style RoPE frequency factors (one per rotated pair of the head size 16)."""
    T["rope_freqs.weight"] = np.array([1.0] * 4 + [2.0, 4.0, 8.0, 16.0], np.float32)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("pad-llama")
    # grouped-query attention (4 heads, 2 key/value heads, head size 16), so that the padding has
    # to place the real heads where each still meets its own key/value head
    base = factory.write_llama(root / "untied.gguf", n_embd=64, n_head=4, n_head_kv=2, n_ff=96, seed=7)
    return root, {
        "untied": base,
        # tied output: llama.cpp uses token_embd (smaller, or it repeats its own token)
        "tied": _rewrite(base, root / "tied.gguf", lambda T: T["token_embd.weight"].__imul__(0.5),
                         drop=("output.weight",)),
        "rope": _rewrite(base, root / "rope.gguf", _rope_freqs),
        "f16": factory.write_llama(root / "f16.gguf", n_embd=64, n_head=4, n_ff=64, seed=8, dtype="f16"),
        "q8_0": factory.write_llama(root / "q8_0.gguf", n_embd=64, n_head=4, n_head_kv=1, n_ff=96, seed=9,
                                    dtype="q8_0"),
    }


def _run(path):
    """Per prompt: the greedy continuation and the log-probabilities along it."""
    with Engine(path, n_threads=1, n_ctx=256) as e:
        return [_greedy(e, p, 16)[1:] for p in PROMPTS]


def _fields(path):
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if k.startswith("llama.")}, \
        {t.name: tuple(int(x) for x in reversed(t.shape)) for t in r.tensors}


@pytest.mark.parametrize("kind", ["untied", "tied", "rope"])
@pytest.mark.parametrize("dim,layers,ffn,tol", [(256, 5, 320, 1e-4),   # d/D = 1/4: norm scaling exact in floats
                                                (128, 3, 128, 5e-3)])  # d/D = 1/2: a rounding per norm weight
def test_padded_llama_computes_the_same_function(sources, kind, dim, layers, ffn, tol):
    root, src = sources
    dst = root / f"{kind}-{dim}-{layers}-{ffn}.gguf"
    info = padding.pad_llama(src[kind], dst, dim, layers, ffn, "f32")
    # head size 16 kept: dim / 16 heads, a quarter of them key/value heads (GQA groups of 4)
    assert (info["heads"], info["kv_heads"]) == (dim // 16, dim // 64)
    kv, shapes = _fields(dst)
    assert (kv["llama.embedding_length"], kv["llama.block_count"], kv["llama.feed_forward_length"]) == (dim, layers, ffn)
    assert (kv["llama.attention.head_count"], kv["llama.attention.head_count_kv"]) == (dim // 16, dim // 64)
    assert kv["llama.rope.dimension_count"] == 16
    assert shapes["blk.0.attn_q.weight"] == (dim, dim) and shapes["blk.0.attn_k.weight"] == (dim // 4, dim)
    assert shapes[f"blk.{layers - 1}.ffn_down.weight"] == (dim, ffn)
    assert ("output.weight" in shapes) == (kind != "tied") and ("rope_freqs.weight" in shapes) == (kind == "rope")

    a, b = _run(src[kind]), _run(dst)
    for (ref_a, rows_a), (ref_b, rows_b) in zip(a, b):
        assert ref_a == ref_b
        assert float(np.max(np.abs(rows_a - rows_b))) <= tol
        assert (rows_a.argmax(1) == rows_b.argmax(1)).all()
    if kind == "rope":   # the frequency factors matter: without them it is another function
        plain = _run(src["untied"])
        assert any(float(np.max(np.abs(ra - rp))) > 1e-2 for (_, ra), (_, rp) in zip(a, plain))


def test_pad_llama_checks_the_shape_and_the_source(sources, tmp_path):
    _, src = sources
    with pytest.raises(ValueError, match="must contain the source"):   # fewer layers than the source
        padding.pad_llama(src["untied"], tmp_path / "x.gguf", 128, 1, 128)
    with pytest.raises(ValueError, match="must contain the source"):   # 2 key/value heads cannot fit 1
        padding.pad_llama(src["untied"], tmp_path / "x.gguf", 128, 2, 128, kv_heads=1)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        padding.pad_llama(src["untied"], tmp_path / "x.gguf", 128, 2, 128, kv_heads=3)
    with pytest.raises(ValueError, match="unknown pad type"):
        padding.pad_llama(src["untied"], tmp_path / "x.gguf", 128, 2, 128, "q4_k")
    with pytest.raises(ValueError, match="pad_llama pads llama models"):
        padding.pad_llama(factory.write_unknown_arch(tmp_path / "u.gguf"), tmp_path / "x.gguf", 128, 2, 128)
    with pytest.raises(ValueError, match="pad_qwen35 pads qwen35 models"):
        padding.pad_qwen35(src["untied"], tmp_path / "x.gguf", 128, 128)
    extra = _rewrite(src["untied"], tmp_path / "extra.gguf", lambda T: T.__setitem__("blk.0.attn_q.bias",
                                                                                      np.zeros(64, np.float32)))
    with pytest.raises(ValueError, match="do not know how to pad tensor blk.0.attn_q.bias"):
        padding.pad_llama(extra, tmp_path / "x.gguf", 128, 2, 128)
    assert not (tmp_path / "x.gguf").exists()


def _tool(src, dst, *args):
    r = subprocess.run([sys.executable, str(TOOL), str(src), str(dst), *map(str, args)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.skipif(not TOOL.is_file(), reason=f"{TOOL} is absent (the former external tool, kept in ../shared "
                                               "beside the repo): nothing to compare with")
@pytest.mark.parametrize("kind,qtype,extra", [("untied", "f32", ()), ("untied", "f16", ()),
                                              ("untied", "q8_0", ()), ("untied", "q4_0", ()),
                                              ("tied", "q8_0", ()), ("f16", "f16", ()), ("q8_0", "q8_0", ()),
                                              ("untied", "f16", ("heads", 8, "kv_heads", 4))])
def test_pad_llama_writes_what_the_former_tool_wrote(sources, tmp_path, kind, qtype, extra):
    _, src = sources
    kw = dict(zip(extra[::2], extra[1::2]))
    mine, theirs = tmp_path / "mine.gguf", tmp_path / "tool.gguf"
    padding.pad_llama(src[kind], mine, 128, 3, 160, qtype, **kw)
    _tool(src[kind], theirs, "--dim", 128, "--layers", 3, "--ffn", 160, "--type", qtype,
          *[f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])
    if not filecmp.cmp(mine, theirs, shallow=False):   # say where they differ
        a, b = gguf.GGUFReader(str(mine)), gguf.GGUFReader(str(theirs))
        assert {k: f.contents() for k, f in a.fields.items()} == {k: f.contents() for k, f in b.fields.items()}
        assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
        for x, y in zip(a.tensors, b.tensors):
            assert x.tensor_type == y.tensor_type and np.array_equal(np.asarray(x.data), np.asarray(y.data)), x.name
        pytest.fail("same fields and tensors, other bytes")


def test_padded_model_pads_llama_in_the_package(sources, tmp_path, monkeypatch):
    root, src = sources
    monkeypatch.setitem(padding.LLAMA_SHAPES, "cpu-300m", (128, 3, 128))   # small, for speed
    calls = []
    pad_llama = padding.pad_llama
    monkeypatch.setattr(padding, "pad_llama", lambda *a, **kw: calls.append(a) or pad_llama(*a, **kw))
    cache = tmp_path / "cache"
    a = padding.padded_model(str(src["untied"]), "cpu-300m", "q8_0", cache)
    b = padding.padded_model(str(src["untied"]), "cpu-300m", "q8_0", cache)
    assert a == b and a.exists() and a.name.startswith("untied-cpu-300m-q8_0-") and len(calls) == 1   # made once
    kv, _ = _fields(a)
    assert kv["llama.embedding_length"] == 128
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(a)).tensors}
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    # rope_freqs.weight, which the former tool dropped: another name, so that its files are not reused
    r = padding.padded_model(str(src["rope"]), "cpu-300m", "f16", cache)
    assert r.name.startswith("rope-cpu-300m-f16-rope-") and "rope_freqs.weight" in _fields(r)[1]

    monkeypatch.setitem(padding.LLAMA_SHAPES, "llama-8b", (128, 1, 128))   # fewer layers than the source
    with pytest.raises(ValueError, match="must contain the source"):
        padding.padded_model(str(src["untied"]), "llama-8b", "q4_0", cache)
    assert not list(cache.glob("*.tmp")) and not list(cache.glob("*llama-8b*"))
    with pytest.raises(ValueError, match="unknown pad shape"):
        padding.padded_model(str(src["untied"]), "llama-70b", "q8_0", cache)
    with pytest.raises(ValueError, match="unknown pad type"):
        padding.padded_model(str(src["untied"]), "llama-1b", "q5_k", cache)
    with pytest.raises(FileNotFoundError):
        padding.padded_model(str(tmp_path / "missing.gguf"), "cpu-300m", "q8_0", cache)
    with pytest.raises(ValueError, match="cannot pad a model of architecture 'heterospec-unknown-arch'"):
        padding.padded_model(str(factory.write_unknown_arch(tmp_path / "u.gguf")), "cpu-300m", "q8_0", cache)
    with pytest.raises(ValueError, match="cannot pad a model of architecture None"):
        padding.padded_model(str(factory.write_not_gguf(tmp_path / "n.gguf")), "cpu-300m", "q8_0", cache)
    with pytest.raises(ValueError, match="cut short"):
        padding.padded_model(str(factory.write_truncated(src["untied"], tmp_path / "t.gguf", 0.0001)),
                             "cpu-300m", "q8_0", cache)


def test_bench_regime_pads_llama_without_any_tool(tiny, tmp_path, monkeypatch):
    """`heterospec bench --regime compute-bound --pad-draft ...` pads both models in the package
    (a pip-installed heterospec has no ../shared/tools) and the padded pair decodes as plain
    decoding does."""
    monkeypatch.setitem(padding.LLAMA_SHAPES, "cpu-300m", (128, 3, 128))   # small, for speed
    monkeypatch.setitem(padding.LLAMA_SHAPES, "llama-1b", (128, 2, 160))
    monkeypatch.chdir(tmp_path)   # no shared/ around: nothing to find by path
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "the value is None and the name is"}) + "\n")
    out, cache = tmp_path / "r.json", tmp_path / "cache"
    rc = main(["bench", "-m", str(tiny.target), "-md", str(tiny.draft), "--regime", "compute-bound",
               "--pad-draft", "llama-1b", "--prompts", str(prompts), "-n", "12", "--repeats", "1", "-t", "1",
               "--modes", "ar", "chain", "--cache-dir", str(cache), "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["environment"]["padded"] == {
        "target": {"source": str(tiny.target), "shape": "cpu-300m", "type": "q8_0"},
        "draft": {"source": str(tiny.draft), "shape": "llama-1b", "type": "q8_0"}}
    assert Path(doc["environment"]["target"]).parent == cache and Path(doc["environment"]["draft"]).parent == cache
    assert _fields(doc["environment"]["target"])[0]["llama.block_count"] == 3
    assert doc["modes"]["chain"]["greedy_matches_ar"] == 1.0
