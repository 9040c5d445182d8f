"""Tiny random-weight GGUF models of non-Llama architectures for tests.

Companion of tests/gguf_factory.py (whose vocabulary helpers it reuses):

    write_mamba(path, vocab=None, *, ...) -> Path
        architecture "mamba": a recurrent model (llama_model_is_recurrent() is
        true), for "a recurrent model cannot be a draft/target" tests and plain
        decoding.
    write_gemma2(path, vocab=None, *, ...) -> Path
        architecture "gemma2": sliding-window attention on every other layer
        (layer 0, 2, ... use a window of `sliding_window` tokens, layer 1, 3,
        ... attend to everything), tied input/output embeddings, attention and
        final logit soft-capping. With base/noise, a perturbed copy of a model
        written earlier (a draft that mostly agrees with it).

Metadata keys and tensor names/shapes follow the pinned llama.cpp
(src/models/mamba.cpp, src/models/mamba-base.cpp, src/models/gemma2.cpp,
src/llama-model.cpp, src/llama-arch.cpp). numpy shapes are ggml's ne reversed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import gguf

from gguf_factory import Vocab, make_vocab, read_vocab, read_weights, _add_tokenizer

try:  # optional: its control-token row scale, so both factories behave alike
    from gguf_factory import CONTROL_ROW_SCALE
except ImportError:  # pragma: no cover
    CONTROL_ROW_SCALE = 0.2

__all__ = ["write_mamba", "write_gemma2"]

# Gemma-2 weight scales (fresh models). The head is tied to token_embd and the
# residual stream starts at token_embd[tok] * sqrt(n_embd), so with ordinary
# gains greedy decoding just repeats the current token (its own row wins).
# Post-attention/post-FFN norm gains of ~POST_NORM_GAIN make the blocks'
# outputs dominate the residual: varied, context-dependent text. LOGIT_STD is
# the std of the logits (before the final soft-cap of 30).
POST_NORM_GAIN = 30.0
LOGIT_STD = 5.0


def _control_ids(vocab: Vocab) -> list[int]:
    return [i for i, t in enumerate(vocab.types)
            if t in (gguf.TokenType.CONTROL, gguf.TokenType.UNKNOWN)]


def _norm_gain(rng, shape) -> np.ndarray:
    return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)


def _dense(rng, shape, std) -> np.ndarray:
    return (std * rng.standard_normal(shape)).astype(np.float32)


def _write(path: Path, arch: str, name: str, kv, vocab: Vocab, weights: dict) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    kv(w)
    _add_tokenizer(w, vocab)
    for k, v in weights.items():
        w.add_tensor(k, np.ascontiguousarray(v, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------- mamba

def write_mamba(path, vocab: Vocab | None = None, *, n_embd=64, n_layer=2, seed=0,
                d_state=16, d_conv=4, n_ctx_train=512, name="test-mamba") -> Path:
    """Write a random-weight Mamba (v1) GGUF and return its path.

    d_inner is fixed at 2 * n_embd (llama.cpp only supports an expansion factor
    of 2); dt_rank = ceil(n_embd / 16). The output head is a separate
    output.weight. Deterministic for a given seed.
    """
    vocab = vocab or make_vocab()
    n_vocab = vocab.n_vocab
    d_inner = 2 * n_embd
    dt_rank = -(-n_embd // 16)
    rng = np.random.default_rng(seed)

    W = {
        "token_embd.weight": _dense(rng, (n_vocab, n_embd), 1.0),
        "output_norm.weight": _norm_gain(rng, (n_embd,)),
        # input is RMS-normalised: logits with std ~3, a clear argmax
        "output.weight": _dense(rng, (n_vocab, n_embd), 3.0 / np.sqrt(n_embd)),
    }
    W["output.weight"][_control_ids(vocab)] *= CONTROL_ROW_SCALE
    for i in range(n_layer):
        b = f"blk.{i}."
        # dt initialised in [1e-3, 1e-1] as in the Mamba paper; bias = softplus^-1(dt)
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), d_inner))
        W.update({
            b + "attn_norm.weight": _norm_gain(rng, (n_embd,)),
            b + "ssm_in.weight": _dense(rng, (2 * d_inner, n_embd), 1.0 / np.sqrt(n_embd)),
            b + "ssm_conv1d.weight": _dense(rng, (d_inner, d_conv), 1.0 / np.sqrt(d_conv)),
            b + "ssm_conv1d.bias": _dense(rng, (d_inner,), 0.1),
            b + "ssm_x.weight": _dense(rng, (dt_rank + 2 * d_state, d_inner), 1.0 / np.sqrt(d_inner)),
            b + "ssm_dt.weight": _dense(rng, (d_inner, dt_rank), 1.0 / np.sqrt(dt_rank)),
            b + "ssm_dt.bias": (dt + np.log(-np.expm1(-dt))).astype(np.float32),
            # A = -exp(A_log) with the S4D-real init A_log[:, n] = log(n + 1)
            b + "ssm_a": -np.tile(np.arange(1, d_state + 1, dtype=np.float32), (d_inner, 1)),
            b + "ssm_d": np.ones((d_inner,), dtype=np.float32),
            b + "ssm_out.weight": _dense(rng, (n_embd, d_inner), 1.0 / np.sqrt(d_inner)),
        })

    def kv(w: gguf.GGUFWriter):
        w.add_context_length(n_ctx_train)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(0)
        w.add_head_count(0)  # "non-transformer models do not have attention heads"
        w.add_ssm_conv_kernel(d_conv)
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(d_state)
        w.add_ssm_time_step_rank(dt_rank)
        w.add_layer_norm_rms_eps(1e-5)

    return _write(Path(path), "mamba", name, kv, vocab, W)


# -------------------------------------------------------------------------- gemma2

def _gemma2_shapes(n_vocab, n_embd, n_layer, n_head, n_ff) -> dict[str, tuple]:
    s = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,)}
    for i in range(n_layer):
        b = f"blk.{i}."
        s.update({
            b + "attn_norm.weight": (n_embd,),
            b + "attn_q.weight": (n_embd, n_embd),
            b + "attn_k.weight": (n_embd, n_embd),
            b + "attn_v.weight": (n_embd, n_embd),
            b + "attn_output.weight": (n_embd, n_embd),
            b + "post_attention_norm.weight": (n_embd,),
            b + "ffn_norm.weight": (n_embd,),
            b + "ffn_gate.weight": (n_ff, n_embd),
            b + "ffn_up.weight": (n_ff, n_embd),
            b + "ffn_down.weight": (n_embd, n_ff),
            b + "post_ffw_norm.weight": (n_embd,),
        })
    return s


def write_gemma2(path, vocab: Vocab | None = None, *, n_embd=64, n_layer=2, n_head=4, n_ff=128,
                 sliding_window=8, n_ctx_train=512, seed=0,
                 base: Union[str, Path, None] = None, noise=0.0, name="test-gemma2") -> Path:
    """Write a random-weight Gemma-2 GGUF and return its path.

    Layers 0, 2, ... use sliding-window attention over the last
    `sliding_window` positions (llama.cpp's LLAMA_SWA_TYPE_STANDARD: a key at
    p0 is visible from p1 when p1 - p0 < sliding_window), the others full
    causal attention. Output head = token_embd (tied). Soft-capping at the
    Gemma-2 values (attention 50, final 30).

    base/noise: base is the path of a GGUF written by write_gemma2 with the
    same shapes (the shape arguments must match it, ValueError otherwise); the
    new weights are base + noise * rms(tensor) * N(0, 1) (seed seeds the
    noise), the vocabulary is the base's unless one is given, and
    sliding_window / n_ctx_train are taken as passed.
    """
    if n_embd % n_head or (n_embd // n_head) % 2:
        raise ValueError("need n_embd % n_head == 0 and an even head dim")
    if base is not None and vocab is None:
        vocab = read_vocab(base)
    vocab = vocab or make_vocab()
    shapes = _gemma2_shapes(vocab.n_vocab, n_embd, n_layer, n_head, n_ff)
    rng = np.random.default_rng(seed)

    if base is None:
        W = {}
        for k, shape in shapes.items():
            if len(shape) == 1:
                W[k] = _norm_gain(rng, shape)
                if k.endswith(("post_attention_norm.weight", "post_ffw_norm.weight")):
                    W[k] *= POST_NORM_GAIN
            elif k == "token_embd.weight":
                # Tied head: logits = rmsnorm(h) . row; |rmsnorm(h)| ~ sqrt(n_embd),
                # so std LOGIT_STD/sqrt(n_embd) gives logits of std ~LOGIT_STD.
                W[k] = _dense(rng, shape, LOGIT_STD / np.sqrt(n_embd))
            elif k.endswith(("attn_q.weight", "attn_k.weight")):
                # peaky attention: earlier tokens steer the prediction
                W[k] = _dense(rng, shape, 2.0 / np.sqrt(shape[1]))
            else:
                W[k] = _dense(rng, shape, 1.0 / np.sqrt(shape[1]))
        # Control tokens (</s>, <|im_end|>, ...) practically never win greedily;
        # with tied embeddings this also shrinks their input embeddings (harmless).
        W["token_embd.weight"][_control_ids(vocab)] *= CONTROL_ROW_SCALE
    else:
        src = read_weights(base)
        if {k: tuple(v.shape) for k, v in src.items()} != shapes:
            raise ValueError("base weights do not match the requested shapes")
        W = {}
        for k in shapes:  # fixed order => deterministic noise
            w = np.asarray(src[k], dtype=np.float32)
            rms = float(np.sqrt(np.mean(w * w)))
            W[k] = (w + noise * rms * rng.standard_normal(w.shape)).astype(np.float32)

    hd = n_embd // n_head

    def kv(w: gguf.GGUFWriter):
        w.add_context_length(n_ctx_train)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_sliding_window(sliding_window)
        w.add_attn_logit_softcapping(50.0)
        w.add_final_logit_softcapping(30.0)

    return _write(Path(path), "gemma2", name, kv, vocab, W)
