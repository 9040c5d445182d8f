"""The CPU kernels this repository patches into llama.cpp (third_party/patches/0002-*): the Q4_1
and Q8_0 multi-column dot products decode each weight row once for a block of columns (prompts,
verification batches), and flash attention for small batches fuses scores, softmax and values.
They must compute what llama.cpp's own paths do."""
from __future__ import annotations

import numpy as np
import pytest

import gguf_factory as factory
from heterospec import Engine, _core
from test_speculative import first_diff

QUANT_TIE = 0.1   # see test_quantized_speculation_equals_plain_decoding
HP = dict(n_embd=128, n_ff=256, n_layer=2, n_ctx_train=512)
# prompt lengths that leave every remainder of the kernel's 8-column groups and 16-column blocks
PROMPTS = ["the value is None and the name is " * k + tail
           for k, tail in ((1, ""), (2, "print"), (3, "print my self"), (6, "if x else y"))]


@pytest.fixture(scope="module", params=["q4_1", "q8_0"])
def quantized(request, tmp_path_factory):
    """A quantized model and its f32 twin (the same weights, dequantized)."""
    root = tmp_path_factory.mktemp(request.param)
    quant = factory.write_llama(root / "quant.gguf", dtype=request.param, seed=7, **HP)
    twin = factory.write_llama(root / "twin.gguf", base=factory.read_weights(quant), **HP)
    return quant, twin


def test_quantized_model_computes_its_dequantized_weights(quantized):
    """Only the activations' 8-bit rounding may separate the two (a kernel that mixed up columns,
    rows or Q4_1's offset term would move the logits by whole units)."""
    quant, twin = quantized
    with Engine(quant, n_threads=2) as eq, Engine(twin, n_threads=2) as et:
        lengths = set()
        for prompt in PROMPTS:
            lengths.add(len(eq.tokenize(prompt)) % 8)
            cont = eq.generate(prompt, max_tokens=16, temperature=0, mode="ar").tokens
            a, _ = eq.score(prompt, cont)
            b, _ = et.score(prompt, cont)
            kl = (np.exp(b) * (b - a)).sum(-1)
            assert kl.mean() < 0.01 and kl.max() < 0.05, (prompt, kl)
            assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.8
        assert len(lengths) >= 3, lengths


def test_quantized_tree_verification_matches_decoding_each_path(quantized):
    quant, _ = quantized
    with Engine(quant, n_threads=2) as e:
        prompt = e.tokenize("def print(self):", parse_special=True)
    parents = [0, 0, 0, 1, 1, 2, 4, 4, 7, 8, 8, 3]
    tokens = [10, 20, 30, 40, 50, 60, 70, 80, 90, 15, 25, 35]
    tree_rows, path_rows = _core.testing.tree_vs_paths(str(quant), prompt, parents, tokens, 2)
    for n, (a, b) in enumerate(zip(tree_rows, path_rows)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(b).max()), n


def test_quantized_speculation_equals_plain_decoding(quantized):
    """Greedy speculation on a quantized model equals plain decoding, or parts from it only where
    plain decoding's top-two gap is a near-tie. The kernels give a token the same logits whatever
    its batch, but tree verification lays the KV cache out otherwise (rejected siblings between
    accepted nodes), and 8-bit activations turn a last-bit change in attention into a rounding
    step: gaps of up to 0.04 part here, with the upstream kernels as with these."""
    quant, twin = quantized
    with Engine(quant, draft=twin, n_threads=2) as e:
        verified, parted = 0, 0
        for prompt in PROMPTS + ["def print(self):", "import my class"]:
            ids = e.tokenize(prompt, parse_special=True)
            ref = e.generate(ids, max_tokens=32, temperature=0, mode="ar")
            for shape in (dict(mode="tree", depth=6, branching=4, width=4, budget=16), dict(mode="chain")):
                got = e.generate(ids, max_tokens=32, temperature=0, **shape)
                verified += got.stats.nodes_verified
                k = first_diff(got.tokens, ref.tokens)
                if k is None:
                    assert got.tokens == ref.tokens
                    continue
                parted += 1
                _, gaps = _core.testing.llama_cpp_greedy(str(quant), ids, k + 1, e.n_ctx, 2)
                assert gaps[k] < QUANT_TIE, f"{shape} {prompt!r}: parted at {k}, gap {gaps[k]}"
        assert verified > 100 and parted <= 3, (verified, parted)


# -- flash attention for small batches (fa_rows_f16: head dims 64 and 128, F16 K/V) --------------

@pytest.fixture(scope="module")
def head64(tmp_path_factory):
    """Head dim 64 with grouped-query attention, a context long enough for many key tiles."""
    root = tmp_path_factory.mktemp("head64")
    return factory.write_llama(root / "head64.gguf", n_embd=256, n_head=4, n_head_kv=2, n_ff=256,
                               n_layer=2, n_ctx_train=1024, seed=11)


def long_prompt(engine, n):
    words = "the value is None and the name is print my self if x else y for".split()
    return engine.tokenize(" ".join(words[i % len(words)] for i in range(n)), parse_special=True)[:n]


def test_flash_attention_matches_attention_without_it(head64):
    """The patched kernel against llama.cpp's attention without flash attention (soft_max and
    mul_mat), at prompts of a few tiles and past 512 keys (where llama.cpp splits the keys)."""
    for n in (40, 600):
        rows = {}
        for fa in ("on", "off"):
            with Engine(head64, n_threads=2, n_ctx=1024, flash_attn=fa) as e:
                ids = long_prompt(e, n)
                cont = rows.get("cont") or e.generate(ids, max_tokens=16, temperature=0, mode="ar").tokens
                rows["cont"] = cont
                rows[fa], _ = e.score(ids, cont)
        a, b = rows["on"], rows["off"]
        kl = (np.exp(b) * (b - a)).sum(-1)
        assert kl.max() < 1e-3 and (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9, (n, kl)


def test_tree_verification_past_512_keys_matches_decoding_each_path(head64):
    """Tree attention in the patched kernel (its mask, its tiles of keys) past 512 keys, where
    llama.cpp would split a lone token's keys between threads, against each path decoded alone."""
    with Engine(head64, n_threads=2, n_ctx=1024) as e:
        prompt = long_prompt(e, 600)
    parents = [0, 0, 0, 1, 1, 2, 4, 4, 7]
    tokens = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    tree_rows, path_rows = _core.testing.tree_vs_paths(str(head64), prompt, parents, tokens, 2)
    for n, (a, b) in enumerate(zip(tree_rows, path_rows)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(b).max()), n
