"""The CPU kernels this repository patches into llama.cpp (third_party/patches/0002-*): the Q4_1
and Q8_0 multi-column dot products decode each weight row once for a block of columns (prompts,
verification batches). They must compute what the one-column kernels do."""
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
