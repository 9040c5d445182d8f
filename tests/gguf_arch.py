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
    write_mamba2(path, vocab=None, *, ...) -> Path
        architecture "mamba2": recurrent (SSD heads, grouped B/C, gated
        grouped RMS norm), plain decoding only.
    write_qwen35(path, vocab=None, *, ...) -> Path
        architecture "qwen35" (Qwen3.5): HYBRID (llama_model_is_hybrid() is
        true): Gated DeltaNet linear-attention layers, every
        `full_attention_interval`-th layer gated full attention (IMRoPE), and
        with nextn=1 one MTP ("nextn") block appended after the trunk. With
        base/noise, a perturbed copy.
    write_lfm2(path, vocab=None, *, ...) -> Path
        architecture "lfm2" (LFM2): HYBRID: gated short-convolution layers and
        GQA attention layers (a layer is recurrent where its head_count_kv is
        0). With base/noise, a perturbed copy.

Metadata keys and tensor names/shapes follow the pinned llama.cpp
(src/models/mamba.cpp, src/models/mamba-base.cpp, src/models/mamba2.cpp,
src/models/gemma2.cpp, src/models/qwen35.cpp, src/models/lfm2.cpp,
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
try:  # ditto: its anti-repetition term (see gguf_factory._random_weights)
    from gguf_factory import ANTI_REPEAT
except ImportError:  # pragma: no cover
    ANTI_REPEAT = 1.5

__all__ = ["write_mamba", "write_gemma2", "write_mamba2", "write_qwen35", "write_lfm2", "write_eagle3"]

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


# ------------------------------------------------------- shared by the writers below
#
# Fresh weights follow gguf_factory._random_weights: token_embd ~ N(0, 1), a separate (untied)
# output.weight of std 3/sqrt(n_embd) (logits of std ~3 after the final RMS norm) minus
# ANTI_REPEAT/sqrt(n_embd) times each token's own embedding (no "x x x x ..." lock-in), control
# rows shrunk to CONTROL_ROW_SCALE (end-of-generation practically never wins greedily), other
# matrices N(0, 1/fan_in), RMS-norm gains 1 + N(0, 0.01). The writers pass `special` for tensors
# that are not plain projections or gains (SSM decays, biases, ...).

# Q-norm gain of the Q/K-normed attentions (qwen35, lfm2): with normalised q and k the scores
# would have std ~1 (flat attention); a gain of 2 makes them peaky, so earlier tokens steer.
QK_NORM_GAIN = 2.0


def _fresh(shapes: dict, rng, vocab: Vocab, special=None) -> dict[str, np.ndarray]:
    W = {}
    for k, shape in shapes.items():  # fixed order => deterministic
        w = special(k, shape, rng) if special else None
        if w is None:
            if len(shape) == 1 or k.endswith("norm.weight"):   # RMS-norm gains (mamba2's are 2-D)
                w = _norm_gain(rng, shape)
            elif k == "token_embd.weight":
                w = _dense(rng, shape, 1.0)
            elif k == "output.weight":
                w = _dense(rng, shape, 3.0 / np.sqrt(shape[1]))
            else:
                w = _dense(rng, shape, 1.0 / np.sqrt(shape[-1]))
        W[k] = np.asarray(w, dtype=np.float32)
    e = W["token_embd.weight"]
    W["output.weight"] -= (ANTI_REPEAT / np.sqrt(e.shape[1])) * e
    W["output.weight"][_control_ids(vocab)] *= CONTROL_ROW_SCALE
    return W


def _perturbed(base, shapes: dict, noise: float, rng) -> dict[str, np.ndarray]:
    """base's weights + noise * rms(tensor) * N(0, 1); ValueError unless base has exactly `shapes`."""
    src = read_weights(base)
    if {k: tuple(v.shape) for k, v in src.items()} != shapes:
        raise ValueError("base weights do not match the requested shapes")
    W = {}
    for k in shapes:  # fixed order => deterministic noise
        w = np.asarray(src[k], dtype=np.float32)
        rms = float(np.sqrt(np.mean(w * w)))
        W[k] = (w + noise * rms * rng.standard_normal(w.shape)).astype(np.float32)
    return W


def _weights(shapes, vocab, seed, base, noise, special=None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return _fresh(shapes, rng, vocab, special) if base is None else _perturbed(base, shapes, noise, rng)


def _base_vocab(vocab: Vocab | None, base) -> Vocab:
    if vocab is None and base is not None:
        return read_vocab(base)
    return vocab or make_vocab()


# -------------------------------------------------------------------------- mamba2

def write_mamba2(path, vocab: Vocab | None = None, *, n_embd=64, n_layer=2, d_state=16, head_dim=16,
                 n_group=1, d_conv=4, n_ctx_train=512, seed=0,
                 base: Union[str, Path, None] = None, noise=0.0, name="test-mamba2") -> Path:
    """Write a random-weight Mamba-2 GGUF and return its path (recurrent, like write_mamba).

    d_inner = 2 * n_embd split into d_inner / head_dim SSD heads (ssm.time_step_rank is the head
    count), n_group groups of B/C of size d_state, a grouped gated RMS norm before ssm_out.
    base/noise as in write_gemma2.
    """
    d_inner = 2 * n_embd
    if d_inner % head_dim or d_inner % n_group:
        raise ValueError("need 2 * n_embd divisible by head_dim and by n_group")
    n_head = d_inner // head_dim
    conv_dim = d_inner + 2 * n_group * d_state
    vocab = _base_vocab(vocab, base)
    V = vocab.n_vocab

    shapes = {"token_embd.weight": (V, n_embd), "output_norm.weight": (n_embd,), "output.weight": (V, n_embd)}
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm.weight": (n_embd,),
            b + "ssm_in.weight": (d_inner + conv_dim + n_head, n_embd),   # z, xBC, dt
            b + "ssm_conv1d.weight": (conv_dim, d_conv),
            b + "ssm_conv1d.bias": (conv_dim,),
            b + "ssm_dt.bias": (n_head,),
            b + "ssm_a": (n_head, 1),
            b + "ssm_d": (n_head, 1),
            b + "ssm_norm.weight": (n_group, d_inner // n_group),
            b + "ssm_out.weight": (n_embd, d_inner),
        })

    def special(k, shape, rng):
        if k.endswith("ssm_conv1d.bias"):
            return _dense(rng, shape, 0.1)
        if k.endswith("ssm_dt.bias"):   # dt in [1e-3, 1e-1]; bias = softplus^-1(dt)
            dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), shape))
            return dt + np.log(-np.expm1(-dt))
        if k.endswith("ssm_a"):         # A = -exp(A_log), A ~ U[1, 16] as in the reference init
            return -rng.uniform(1.0, 16.0, shape)
        if k.endswith("ssm_d"):
            return np.ones(shape)
        return None

    W = _weights(shapes, vocab, seed, base, noise, special)

    def kv(w: gguf.GGUFWriter):
        w.add_context_length(n_ctx_train)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(0)
        w.add_head_count(0)
        w.add_ssm_conv_kernel(d_conv)
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(d_state)
        w.add_ssm_time_step_rank(n_head)
        w.add_ssm_group_count(n_group)
        w.add_layer_norm_rms_eps(1e-5)

    return _write(Path(path), "mamba2", name, kv, vocab, W)


# -------------------------------------------------------------------------- qwen35

def _qwen35_attn_shapes(b, n_embd, n_head, n_head_kv, hd, n_ff) -> dict[str, tuple]:
    return {
        b + "attn_norm.weight": (n_embd,),
        # joint projection: per head [query (hd), output gate (hd)]
        b + "attn_q.weight": (2 * n_head * hd, n_embd),
        b + "attn_k.weight": (n_head_kv * hd, n_embd),
        b + "attn_v.weight": (n_head_kv * hd, n_embd),
        b + "attn_output.weight": (n_embd, n_head * hd),
        b + "attn_q_norm.weight": (hd,),
        b + "attn_k_norm.weight": (hd,),
        b + "post_attention_norm.weight": (n_embd,),
        b + "ffn_gate.weight": (n_ff, n_embd),
        b + "ffn_up.weight": (n_ff, n_embd),
        b + "ffn_down.weight": (n_embd, n_ff),
    }


def write_qwen35(path, vocab: Vocab | None = None, *, n_embd=64, n_layer=4, n_head=4, n_head_kv=2,
                 n_ff=128, nextn=1, full_attention_interval=4, head_dim=None, n_rot=None,
                 ssm_d_state=16, ssm_n_group=2, ssm_n_v_heads=4, ssm_d_conv=4,
                 n_ctx_train=512, seed=0, base: Union[str, Path, None] = None, noise=0.0,
                 name="test-qwen35") -> Path:
    """Write a random-weight Qwen3.5 (dense, hybrid) GGUF and return its path.

    n_layer trunk layers: layer i is full attention when (i + 1) % full_attention_interval == 0
    (the default 4 gives linear, linear, linear, full), Gated DeltaNet otherwise. Full
    attention: GQA with n_head / n_head_kv heads of head_dim (default n_embd // n_head), Q/K RMS
    norms, a sigmoid output gate from the joint Q projection, IMRoPE over n_rot dims (default
    head_dim). Gated DeltaNet: ssm_n_group key heads and ssm_n_v_heads value heads, both of size
    ssm_d_state, a causal conv of width ssm_d_conv. Untied output head.

    nextn: number of MTP ("nextn") blocks appended after the trunk (block_count = n_layer +
    nextn, `qwen35.nextn_predict_layers` = nextn). Each is a full-attention block plus
    blk.N.nextn.{eh_proj, enorm, hnorm, shared_head_norm}; it shares token_embd and output with
    the trunk. llama.cpp loads them only with llama_model_params.load_mtp (skipped with a
    warning otherwise) and its MTP graph runs exactly one, so use 0 or 1.

    base/noise: as in write_gemma2 (the shape arguments must match the base).
    """
    hd = head_dim or n_embd // n_head
    n_rot = n_rot or hd
    if n_head % n_head_kv or hd % 2 or n_rot % 2 or n_rot > hd:
        raise ValueError("need n_head % n_head_kv == 0, an even head dim and an even n_rot <= head dim")
    if ssm_n_v_heads % ssm_n_group:
        raise ValueError("need ssm_n_v_heads % ssm_n_group == 0")
    if n_layer < 1 or nextn < 0 or full_attention_interval < 1:
        raise ValueError("need n_layer >= 1, nextn >= 0, full_attention_interval >= 1")
    vocab = _base_vocab(vocab, base)
    V = vocab.n_vocab
    key_dim = ssm_d_state * ssm_n_group
    d_inner = ssm_d_state * ssm_n_v_heads          # value dim (ssm.inner_size)
    conv_dim = 2 * key_dim + d_inner

    shapes = {"token_embd.weight": (V, n_embd), "output_norm.weight": (n_embd,), "output.weight": (V, n_embd)}
    for i in range(n_layer):
        b = f"blk.{i}."
        if (i + 1) % full_attention_interval == 0:
            shapes.update(_qwen35_attn_shapes(b, n_embd, n_head, n_head_kv, hd, n_ff))
            continue
        shapes.update({
            b + "attn_norm.weight": (n_embd,),
            b + "attn_qkv.weight": (conv_dim, n_embd),        # q, k, v before the conv
            b + "attn_gate.weight": (d_inner, n_embd),        # z (output gate)
            b + "ssm_conv1d.weight": (conv_dim, ssm_d_conv),
            b + "ssm_dt.bias": (ssm_n_v_heads,),
            b + "ssm_a": (ssm_n_v_heads,),
            b + "ssm_beta.weight": (ssm_n_v_heads, n_embd),
            b + "ssm_alpha.weight": (ssm_n_v_heads, n_embd),
            b + "ssm_norm.weight": (ssm_d_state,),
            b + "ssm_out.weight": (n_embd, d_inner),
            b + "post_attention_norm.weight": (n_embd,),
            b + "ffn_gate.weight": (n_ff, n_embd),
            b + "ffn_up.weight": (n_ff, n_embd),
            b + "ffn_down.weight": (n_embd, n_ff),
        })
    for i in range(n_layer, n_layer + nextn):
        b = f"blk.{i}."
        shapes.update(_qwen35_attn_shapes(b, n_embd, n_head, n_head_kv, hd, n_ff))
        shapes.update({
            b + "nextn.eh_proj.weight": (n_embd, 2 * n_embd),  # input: [enorm(embd), hnorm(h)]
            b + "nextn.enorm.weight": (n_embd,),
            b + "nextn.hnorm.weight": (n_embd,),
            b + "nextn.shared_head_norm.weight": (n_embd,),
        })

    def special(k, shape, rng):
        if k.endswith("ssm_a"):         # -exp(A_log): per-step decay exp(a * softplus(alpha + dt_bias))
            return -rng.uniform(0.1, 2.0, shape)
        if k.endswith("ssm_dt.bias"):
            return np.ones(shape)
        if k.endswith("attn_q_norm.weight"):
            return QK_NORM_GAIN * _norm_gain(rng, shape)
        return None

    W = _weights(shapes, vocab, seed, base, noise, special)
    s = n_rot // 2                      # IMRoPE sections (in dim pairs), ~ Qwen's 11:11:10 split
    sections = [round(s * 11 / 32), round(s * 11 / 32)]
    sections += [s - sum(sections), 0]

    def kv(w: gguf.GGUFWriter):
        w.add_context_length(n_ctx_train)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer + nextn)
        if nextn:
            w.add_nextn_predict_layers(nextn)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(n_rot)
        w.add_rope_dimension_sections(sections)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_full_attention_interval(full_attention_interval)
        w.add_ssm_conv_kernel(ssm_d_conv)
        w.add_ssm_state_size(ssm_d_state)
        w.add_ssm_group_count(ssm_n_group)
        w.add_ssm_time_step_rank(ssm_n_v_heads)
        w.add_ssm_inner_size(d_inner)

    return _write(Path(path), "qwen35", name, kv, vocab, W)


# ---------------------------------------------------------------------------- lfm2

def write_lfm2(path, vocab: Vocab | None = None, *, n_embd=64, n_layer=4, n_head=4, n_head_kv=2,
               n_ff=128, attn_layers=None, l_cache=3, n_ctx_train=512, seed=0,
               base: Union[str, Path, None] = None, noise=0.0, name="test-lfm2") -> Path:
    """Write a random-weight LFM2 (hybrid) GGUF and return its path.

    attn_layers: the layers with GQA attention (n_head / n_head_kv heads of n_embd // n_head,
    Q/K RMS norms, NeoX RoPE); default the odd ones (1, 3, ...). The others are gated short
    convolutions of width l_cache (y = C * conv(B * x)). llama.cpp tells them apart by the
    per-layer array `lfm2.attention.head_count_kv` (0 = short-conv layer). The final norm is
    named token_embd_norm, as in llama.cpp; the output head is untied.

    base/noise: as in write_gemma2 (the shape arguments must match the base).
    """
    if n_embd % n_head or n_head % n_head_kv or (n_embd // n_head) % 2:
        raise ValueError("need n_embd % n_head == 0, n_head % n_head_kv == 0, even head dim")
    if l_cache < 2:
        raise ValueError("need l_cache >= 2")
    attn = set(range(1, n_layer, 2) if attn_layers is None else attn_layers)
    if not attn <= set(range(n_layer)):
        raise ValueError("attn_layers must be layer indices below n_layer")
    hd = n_embd // n_head
    vocab = _base_vocab(vocab, base)
    V = vocab.n_vocab

    shapes = {"token_embd.weight": (V, n_embd), "token_embd_norm.weight": (n_embd,), "output.weight": (V, n_embd)}
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes[b + "attn_norm.weight"] = (n_embd,)
        if i in attn:
            shapes.update({
                b + "attn_q.weight": (n_embd, n_embd),
                b + "attn_k.weight": (n_head_kv * hd, n_embd),
                b + "attn_v.weight": (n_head_kv * hd, n_embd),
                b + "attn_output.weight": (n_embd, n_embd),
                b + "attn_q_norm.weight": (hd,),
                b + "attn_k_norm.weight": (hd,),
            })
        else:
            shapes.update({
                b + "shortconv.conv.weight": (n_embd, l_cache),
                b + "shortconv.in_proj.weight": (3 * n_embd, n_embd),   # B, C, x
                b + "shortconv.out_proj.weight": (n_embd, n_embd),
            })
        shapes.update({
            b + "ffn_norm.weight": (n_embd,),
            b + "ffn_gate.weight": (n_ff, n_embd),
            b + "ffn_up.weight": (n_ff, n_embd),
            b + "ffn_down.weight": (n_embd, n_ff),
        })

    def special(k, shape, rng):
        if k.endswith("attn_q_norm.weight"):
            return QK_NORM_GAIN * _norm_gain(rng, shape)
        return None

    W = _weights(shapes, vocab, seed, base, noise, special)

    def kv(w: gguf.GGUFWriter):
        w.add_context_length(n_ctx_train)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv([n_head_kv if i in attn else 0 for i in range(n_layer)])
        w.add_rope_freq_base(1000000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_shortconv_l_cache(l_cache)

    return _write(Path(path), "lfm2", name, kv, vocab, W)


# -------------------------------------------------------------------------- eagle3

def write_eagle3(path, target, *, layers=None, n_embd=None, n_head=4, n_head_kv=None, n_ff=128,
                 own_embedding=False, own_output=False, target_hidden=None, seed=0,
                 name="test-eagle3") -> Path:
    """Write a random-weight EAGLE-3 head (architecture "eagle3") for the GGUF `target`.

    One decoder layer whose attention reads concat(attn_norm(embedding), attn_norm_2(g)) (2 *
    n_embd wide) and whose residual starts at g; an encoder `fc` maps the inputs of the target's
    layers `layers` (eagle3.target_layers; default: the first, middle and last, as EAGLE-3
    picks low, mid and high features), concatenated, to g. Without own_embedding/own_output it
    borrows the target's token_embd/output (llama.cpp's ctx_other): then n_embd must be the
    target's (the default). target_hidden (default: the target's width) is written as
    eagle3.target_hidden_size, so a mismatched head can be made on purpose. The vocabulary is
    the target's.
    """
    f = _target_fields(target)
    a = f["general.architecture"]
    d_tgt, n_layer_tgt = int(f[f"{a}.embedding_length"]), int(f[f"{a}.block_count"])
    layers = list(layers) if layers is not None else [0, n_layer_tgt // 2, n_layer_tgt - 1]
    n_embd = n_embd or d_tgt
    n_head_kv = n_head_kv or n_head
    hd = n_embd // n_head
    vocab = read_vocab(target)
    V = vocab.n_vocab
    rng = np.random.default_rng(seed)
    d_in = len(layers) * int(target_hidden or d_tgt)   # a head made for another target's width
    W = {"fc.weight": _dense(rng, (n_embd, d_in), 1.0 / np.sqrt(d_in)),
         "output_norm.weight": _norm_gain(rng, (n_embd,))}
    if own_embedding:
        W["token_embd.weight"] = _dense(rng, (V, n_embd), 1.0)
    if own_output:
        W["output.weight"] = _dense(rng, (V, n_embd), 3.0 / np.sqrt(n_embd))
    b = "blk.0."
    W.update({
        b + "attn_norm.weight": _norm_gain(rng, (n_embd,)),
        b + "attn_norm_2.weight": _norm_gain(rng, (n_embd,)),
        b + "attn_q.weight": _dense(rng, (n_head * hd, 2 * n_embd), 1.0 / np.sqrt(2 * n_embd)),
        b + "attn_k.weight": _dense(rng, (n_head_kv * hd, 2 * n_embd), 1.0 / np.sqrt(2 * n_embd)),
        b + "attn_v.weight": _dense(rng, (n_head_kv * hd, 2 * n_embd), 1.0 / np.sqrt(2 * n_embd)),
        b + "attn_output.weight": _dense(rng, (n_embd, n_head * hd), 1.0 / np.sqrt(n_head * hd)),
        b + "ffn_norm.weight": _norm_gain(rng, (n_embd,)),
        b + "ffn_gate.weight": _dense(rng, (n_ff, n_embd), 1.0 / np.sqrt(n_embd)),
        b + "ffn_up.weight": _dense(rng, (n_ff, n_embd), 1.0 / np.sqrt(n_embd)),
        b + "ffn_down.weight": _dense(rng, (n_embd, n_ff), 1.0 / np.sqrt(n_ff)),
    })

    def kv(w: gguf.GGUFWriter):
        w.add_context_length(int(f[f"{a}.context_length"]))
        w.add_embedding_length(n_embd)
        w.add_block_count(1)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_rope_dimension_count(hd)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_array("eagle3.target_layers", [int(x) for x in layers])
        w.add_uint32("eagle3.target_hidden_size", int(target_hidden or d_tgt))

    return _write(Path(path), "eagle3", name, kv, vocab, W)


def write_dflash(path, target, *, layers=None, n_layer=2, n_head=4, n_head_kv=None, n_ff=128, block_size=8,
                 mask_token=None, n_embd=None, own_embedding=False, own_output=False, causal=None, seed=0,
                 name="test-dflash") -> Path:
    """Write a random-weight DFlash draft (architecture "dflash") for the GGUF `target`.

    `n_layer` decoder layers over the block [root, mask x (block_size - 1)], whose keys and values
    also cover the injected text: fc maps the inputs of the target's layers `layers`
    (dflash.target_layers; default: the first and the last), concatenated, to the draft's width,
    then each layer's K/V projections. Without own_embedding/own_output it borrows the target's
    token_embd/output (llama.cpp's ctx_other). n_embd (default: the target's) can be made wrong
    on purpose; so can mask_token (default: the vocabulary's last token; -1 writes none).
    `causal` writes dflash.attention.causal. The vocabulary is the target's.
    """
    f = _target_fields(target)
    a = f["general.architecture"]
    d_tgt, n_layer_tgt = int(f[f"{a}.embedding_length"]), int(f[f"{a}.block_count"])
    layers = list(layers) if layers is not None else [0, n_layer_tgt - 1]
    n_embd = n_embd or d_tgt
    n_head_kv = n_head_kv or n_head
    hd = n_embd // n_head
    vocab = read_vocab(target)
    V = vocab.n_vocab
    mask_token = V - 1 if mask_token is None else mask_token
    rng = np.random.default_rng(seed)
    d_in = len(layers) * n_embd
    W = {"fc.weight": _dense(rng, (n_embd, d_in), 1.0 / np.sqrt(d_in)),
         "enc.output_norm.weight": _norm_gain(rng, (n_embd,)),
         "output_norm.weight": _norm_gain(rng, (n_embd,))}
    if own_embedding:
        W["token_embd.weight"] = _dense(rng, (V, n_embd), 1.0)
    if own_output:
        W["output.weight"] = _dense(rng, (V, n_embd), 3.0 / np.sqrt(n_embd))
    for i in range(n_layer):
        b = f"blk.{i}."
        W.update({
            b + "attn_norm.weight": _norm_gain(rng, (n_embd,)),
            b + "attn_q.weight": _dense(rng, (n_head * hd, n_embd), 1.0 / np.sqrt(n_embd)),
            b + "attn_k.weight": _dense(rng, (n_head_kv * hd, n_embd), 1.0 / np.sqrt(n_embd)),
            b + "attn_v.weight": _dense(rng, (n_head_kv * hd, n_embd), 1.0 / np.sqrt(n_embd)),
            b + "attn_output.weight": _dense(rng, (n_embd, n_head * hd), 1.0 / np.sqrt(n_head * hd)),
            b + "attn_q_norm.weight": _norm_gain(rng, (hd,)),
            b + "attn_k_norm.weight": _norm_gain(rng, (hd,)),
            b + "ffn_norm.weight": _norm_gain(rng, (n_embd,)),
            b + "ffn_gate.weight": _dense(rng, (n_ff, n_embd), 1.0 / np.sqrt(n_embd)),
            b + "ffn_up.weight": _dense(rng, (n_ff, n_embd), 1.0 / np.sqrt(n_embd)),
            b + "ffn_down.weight": _dense(rng, (n_embd, n_ff), 1.0 / np.sqrt(n_ff)),
        })

    def kv(w: gguf.GGUFWriter):
        w.add_context_length(int(f[f"{a}.context_length"]))
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_rope_dimension_count(hd)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_array("dflash.target_layers", [int(x) for x in layers])
        w.add_uint32("dflash.block_size", int(block_size))
        if causal is not None:
            w.add_bool("dflash.attention.causal", bool(causal))
        if mask_token >= 0:
            w.add_mask_token_id(int(mask_token))

    return _write(Path(path), "dflash", name, kv, vocab, W)


def _target_fields(path) -> dict:
    r = gguf.GGUFReader(str(path))
    out = {}
    for k, field in r.fields.items():
        if k.startswith("tokenizer.") or not field.data:
            continue
        v = field.parts[field.data[0]]
        out[k] = bytes(v).decode() if field.types and field.types[0] == gguf.GGUFValueType.STRING else v[0]
    return out
