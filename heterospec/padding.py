"""Padded models for the benchmark: a small GGUF grown into a big shape that computes the same
function, so that tau stays the trained pair's while every forward pass costs what a big model's
does. Made once per (model, shape, type) and kept in the benchmark's cache folder, by this module
alone (numpy + gguf-py, the `bench` extra).

Llama sources (architecture `llama`) are padded by `pad_llama()`, a port of the project's former
external tool `pad_model.py` that writes the same bytes. The shape presets give (D, layers, F2):
cpu-300m (2048, 6, 5504), cpu-300m-deep (1024, 24, 2752), llama-1b (2048, 16, 8192), llama-8b
(4096, 32, 14336), and for draft models cpu-30m (1024, 2, 2752); the head size
stays the source's, so the number of heads becomes D / head size, and key/value heads a quarter
of that (grouped-query attention in groups of 4, as in Llama 3) where the source allows it, else
as many as the heads. Why the function is the same:

- the extra residual dims, heads, key/value heads and feed-forward units are zero (matrices get
  zero rows and columns), so the residual stream keeps zeros outside the source's d dims;
- the real heads keep their head size and are placed so that grouped-query attention still pairs
  each with its own key/value head: with g = H/K source heads per key/value head and g2 = H2/K2
  padded ones, source head h goes to slot (h // g) * g2 + h % g (the other slots are zero heads,
  whose output columns in attn_output are zero);
- RMSNorms over the residual width: mean(x^2) over D is d/D times the mean over d, so every norm
  weight (attn_norm, ffn_norm, output_norm) is scaled by sqrt(d/D) and eps by d/D, which makes
  each norm output the source's vector, zero-padded (llama has one eps key and no norm over
  anything else, unlike qwen35 below);
- extra layers (more layers than the source: the real ones are spread evenly, source layer i at
  round(i * L2 / L)) have all-zero matrices, so each is an exact identity on the residual;
- `rope_freqs.weight` (Llama 3.1+ RoPE scaling) is copied unchanged, as the head size is.
Weights are stored as F32, F16, Q8_0 or Q4_0 (gguf-py's quantizer; norms stay F32, and a matrix
whose rows are not a multiple of the block size falls back to F16), which changes the function as
that quantization of the source would.

Qwen3.5 sources (architecture `qwen35`: Gated DeltaNet layers, gated full-attention layers and an
optional MTP block `blk.N.nextn.*`) are padded here, by `pad_qwen35()` (numpy + gguf-py, the
`bench` extra). The residual width d grows to D and the feed-forward width F to F2 (the shape
presets give (D, F2): cpu-300m (2048, 5504), llama-1b (2048, 8192), llama-8b (4096, 14336)); the
number of layers, the attention heads and head size, and every DeltaNet size (key/value heads,
state size, conv kernel) stay the source's, so that the KV cache and the recurrent states are
unchanged. What is padded, and why the function is the same:

- every matrix that READS the residual stream (attn_q/k/v or attn_qkv, attn_gate, ssm_alpha,
  ssm_beta, ffn_gate, ffn_up, output, nextn.shared_head_head) gets zero columns for the D - d new
  dims, so the padded dims of its input never matter;
- every matrix that WRITES it (attn_output, ssm_out, ffn_down, nextn.eh_proj) gets zero rows, so
  the padded dims of the residual stream stay exactly zero;
- the new feed-forward units have zero gate/up rows and zero down columns: silu(0) * 0 = 0;
- RMSNorms over the residual width: mean(x^2) over D is d/D times the mean over d. pad_llama()
  undoes that by scaling eps by d/D, but qwen35 has ONE eps key that also serves norms that are
  not over the residual width (the Q/K norms of full attention, the gated ssm_norm of DeltaNet
  and DeltaNet's L2 norm of q and k, an RMS norm with eps / head size), and the DeltaNet ones
  cannot be compensated (their inputs come after a SiLU). So eps stays as it is and the residual
  stream is scaled instead: the token embedding and every writer are multiplied by
  c = sqrt(D/d), so that mean over D of (c x)^2 is
  exactly the source's mean over d of x^2, and every norm over the residual width (attn_norm,
  post_attention_norm, nextn.enorm, nextn.hnorm) gets its weight times 1/c = sqrt(d/D): each norm
  outputs the source's vector, zero-padded. The output norm keeps its weight and the output
  matrix is divided by c (the output norm's vector, which is also the hidden state the MTP head
  reads, is then c * h: exactly what hnorm expects), and likewise shared_head_norm with the MTP
  head matrix;
- the MTP block: eh_proj reads concat(enorm(embedding), hnorm(h)), now 2D wide: the source's
  columns [0, d) go to [0, d) and its columns [d, 2d) to [D, D + d); its rows are padded and
  scaled by c, like every writer. An `nextn.embed_tokens` is scaled like token_embd;
- tied output (no output.weight: llama.cpp uses token_embd, already scaled by c): the output norm
  weight is multiplied by d/D instead, so the logits are the source's. Then the hidden state
  handed to the MTP head is h / c instead of c * h, and hnorm sees its eps multiplied by
  (D/d)^2: the one inexact spot (the draft head only, never the target's output; hnorm's output
  changes by a relative eps * ((D/d)^2 - 1) / (2 mean(h^2)), about 3e-5 for d = 256 -> D = 2048
  with eps = 1e-6 and mean(h^2) ~ 1). An untied source is exact.

"Exact" means up to floating-point rounding: where c is a power of two (D/d a power of 4) the
padded model's F32 outputs were bit-identical to the source's in our tests; otherwise each scaled
weight is rounded once (an ulp). Weights are then stored as F32, F16, Q8_0 or Q4_0 (gguf-py's
quantizer; norms, 1-D tensors and the DeltaNet conv kernel stay F32, and a matrix whose rows are
not a multiple of the block size falls back to F16), which changes the function as that
quantization of the source would.
"""
from __future__ import annotations

import math
import struct
import sys
from pathlib import Path
from typing import Optional

from .policy import model_fingerprint

SHAPES = ("llama-8b", "llama-1b", "cpu-300m", "cpu-300m-deep", "cpu-30m")
TYPES = ("f32", "f16", "q8_0", "q4_0")

# llama: the shape presets as (residual width D, layers, feed-forward width F2); the head size
# stays the source's (pad_llama)
# cpu-30m: a two-layer draft model's shape beside cpu-300m, a tenth of its parameters (Llama 3.2
# 1B is a sixth of Llama 3.1 8B)
# cpu-300m-deep: cpu-300m's parameters in 24 narrower layers, so that a one-layer head (EAGLE-3,
# DFlash) costs what it does beside a real target (a tenth of Llama 3.1 8B with its output matrix)
# and not the third of a pass it costs beside cpu-300m's six layers; llama only
LLAMA_SHAPES = {"llama-8b": (4096, 32, 14336), "llama-1b": (2048, 16, 8192), "cpu-300m": (2048, 6, 5504),
                "cpu-300m-deep": (1024, 24, 2752), "cpu-30m": (1024, 2, 2752)}
# qwen35: the shape presets as (residual width D, feed-forward width F2); layers, heads and the
# DeltaNet sizes stay the source's
QWEN35_SHAPES = {"llama-8b": (4096, 14336), "llama-1b": (2048, 8192), "cpu-300m": (2048, 5504), "cpu-30m": (1024, 2752)}


def gguf_header(path) -> tuple[Optional[str], list[str]]:
    """(`general.architecture`, tensor names) of a GGUF file, read from its header (no gguf-py
    needed); the architecture is None when the file is not a GGUF or lacks the key."""
    try:
        return _read_gguf_header(path)
    except struct.error:
        raise ValueError(f"{path}: the GGUF header is cut short") from None


def _read_gguf_header(path):
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}   # scalar value types
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return None, []
        version, = struct.unpack("<I", f.read(4))
        count = "<I" if version == 1 else "<Q"
        n = struct.calcsize(count)
        n_tensors, = struct.unpack(count, f.read(n))
        n_kv, = struct.unpack(count, f.read(n))

        def string() -> bytes:
            k, = struct.unpack(count, f.read(n))
            return f.read(k)

        def skip(vtype: int) -> None:
            if vtype in sizes:
                f.seek(sizes[vtype], 1)
            elif vtype == 8:
                k, = struct.unpack(count, f.read(n))
                f.seek(k, 1)
            elif vtype == 9:
                sub, = struct.unpack("<I", f.read(4))
                m, = struct.unpack(count, f.read(n))
                if sub in sizes:
                    f.seek(m * sizes[sub], 1)
                else:
                    for _ in range(m):
                        skip(sub)
            else:
                raise ValueError(f"{path}: unknown GGUF value type {vtype}")

        arch = None
        for _ in range(n_kv):
            key = string()
            vtype, = struct.unpack("<I", f.read(4))
            if key == b"general.architecture" and vtype == 8:
                arch = string().decode("utf-8", "replace")
            else:
                skip(vtype)
        names = []
        for _ in range(n_tensors):   # name, dimension count (u32), dimensions, type (u32), offset (u64)
            names.append(string().decode("utf-8", "replace"))
            n_dims, = struct.unpack("<I", f.read(4))
            f.seek(n_dims * n + 4 + 8, 1)
    return arch, names


def gguf_architecture(path) -> Optional[str]:
    """`general.architecture` of a GGUF file (see gguf_header)."""
    return gguf_header(path)[0]


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError('padding a model needs the gguf package: pip install "heterospec[bench]"') from None
    return gguf


def _contents(field):
    """A GGUFReader field's value (gguf-py's ReaderField.contents(), decoded by hand where that
    gguf-py predates it)."""
    if hasattr(field, "contents"):
        return field.contents()

    def one(part):
        part = field.parts[part]
        if part.dtype.kind == "u" and part.dtype.itemsize == 1 and field.types[-1].name == "STRING":
            return bytes(part).decode("utf-8")
        return part[0].item()
    if field.types[0].name == "ARRAY":
        return [one(i) for i in field.data]
    return one(field.data[0])


def _source(src, arch: str, qtype: str, keys=()):
    """(gguf module, GGUFReader of `src`, value(key, default=None), the integers `arch.KEY` for KEY
    in `keys`), after checking that `src` has architecture `arch` and that `qtype` is known."""
    gguf = _gguf()
    if qtype not in TYPES:
        raise ValueError(f"unknown pad type {qtype!r} ({', '.join(TYPES)})")
    r = gguf.GGUFReader(str(src))

    def value(key, default=None):
        f = r.fields.get(key)
        return default if f is None else _contents(f)

    got = value("general.architecture")
    if got != arch:
        raise ValueError(f"{src}: pad_{arch} pads {arch} models (got architecture {got!r})")
    numbers = []
    for key in keys:
        v = value(f"{arch}.{key}")
        if not isinstance(v, int):
            raise ValueError(f"{src}: {arch}.{key} must be one number to pad (got {v!r})")
        numbers.append(v)
    return gguf, r, value, numbers


def _as_f32(gguf, t):
    """A GGUFReader tensor's values as float32 (dequantized where quantized)."""
    import numpy as np
    a = np.asarray(t.data)
    if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                             gguf.GGMLQuantizationType.F64):
        a = gguf.quants.dequantize(a, t.tensor_type)
    return np.asarray(a, dtype=np.float32)


def _zero_padded(w, rows=None, cols=None, scale=1.0):
    """`w` (times `scale`) in the top-left corner of a zero float32 array of `rows` (1-D: `rows`
    long) by `cols`; None keeps that size."""
    import numpy as np
    w = w if scale == 1.0 else w * np.float32(scale)
    if w.ndim == 1:
        out = np.zeros(rows, np.float32)
        out[:w.shape[0]] = w
        return out
    out = np.zeros((rows or w.shape[0], cols or w.shape[1]), np.float32)
    out[:w.shape[0], :w.shape[1]] = w
    return out


def _writer(gguf, r, dst, arch: str, skip):
    """A GGUFWriter of `dst` holding the metadata of reader `r` but for the keys in `skip`."""
    w = gguf.GGUFWriter(str(dst), arch)
    for key, f in r.fields.items():
        if key in skip:
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, _contents(f), vt, sub_type=f.types[-1])
        else:
            w.add_key_value(key, _contents(f), vt)
    return w


def _add_tensor(gguf, w, name: str, a, qtype: str, keep_f32: bool = False) -> None:
    """Adds `a` (float32) to writer `w` as `qtype`; 1-D tensors (and `keep_f32` ones) stay F32,
    and a matrix whose rows are not a multiple of the quantization block falls back to F16."""
    import numpy as np
    T = gguf.GGMLQuantizationType
    qt = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[qtype]
    if keep_f32 or a.ndim == 1 or qt == T.F32:
        w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
    elif qt == T.F16 or a.shape[-1] % gguf.GGML_QUANT_SIZES[qt][0]:
        w.add_tensor(name, a.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)


def _finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# llama tensors (names after "blk.N."; see src/models/llama.cpp in the pinned llama.cpp)
_LLAMA_BLOCK = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight",
                "ffn_up.weight", "ffn_down.weight", "attn_norm.weight", "ffn_norm.weight")
_LLAMA_GLOBAL = ("token_embd.weight", "output_norm.weight", "output.weight")
_LLAMA_UNTOUCHED = ("rope_freqs.weight",)   # copied as they are (the former tool left them out)


def pad_llama(src, dst, dim: int, layers: int, ffn: int, qtype: str = "f16", heads: Optional[int] = None,
              kv_heads: Optional[int] = None, log=None) -> dict:
    """Writes `src` (a llama GGUF) grown to residual width `dim`, `layers` layers and feed-forward
    width `ffn`, computing the same function (see the module's docstring), with weights of type
    `qtype` (f32, f16, q8_0, q4_0). `heads` defaults to dim / the source's head size, `kv_heads`
    to heads / 4 where the source's grouping allows it, else to heads. Returns a summary: source
    and padded sizes, parameter count. The file is byte for byte what the former external tool
    (pad_model.py) wrote, for every source that tool padded right (without rope_freqs.weight)."""
    import numpy as np
    gguf, r, value, (d, L, H, K, F) = _source(src, "llama", qtype, (
        "embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
        "feed_forward_length"))
    eps = value("llama.attention.layer_norm_rms_epsilon")
    if eps is None:
        raise ValueError(f"{src}: no llama.attention.layer_norm_rms_epsilon")
    eps = float(eps)
    hd = d // H
    D, L2, H2, K2, F2 = int(dim), int(layers), heads, kv_heads, int(ffn)
    H2 = H2 or D // hd
    if not K2:  # grouped-query attention with groups of 4, as in Llama 3, where the source allows
        K2 = H2 // 4 if H2 % 4 == 0 and H2 // 4 >= K and H // K <= 4 else H2
    if H2 % K2:
        raise ValueError("heads must be a multiple of kv heads")
    g, g2 = H // K, H2 // K2
    if D % hd or D // hd != H2 or D < d or L2 < L or H2 < H or K2 < K or F2 < F or g > g2:
        raise ValueError(f"the padded shape must contain the source: source d={d} L={L} H={H} K={K} F={F} "
                         f"hd={hd}; padded D={D} L={L2} H={H2} K={K2} F={F2}")
    tensors = {t.name: t for t in r.tensors}
    known = set(_LLAMA_GLOBAL + _LLAMA_UNTOUCHED) | {f"blk.{i}.{n}" for i in range(L) for n in _LLAMA_BLOCK}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise ValueError(f"{src}: do not know how to pad tensor {unknown[0]}")

    def w(name):
        return _as_f32(gguf, tensors[name])

    s = math.sqrt(d / D)
    head_pos = [(h // g) * g2 + (h % g) for h in range(H)]   # padded slot of each real head

    def place_heads(m, slots, n_pad, axis):
        """`m` with its heads (head-size blocks along `axis`) moved to `slots` of `n_pad`, and zero
        padded to width D across the other axis."""
        rows, cols = (n_pad * hd, D) if axis == 0 else (D, n_pad * hd)
        out = np.zeros((rows, cols), np.float32)
        for i, p in enumerate(slots):
            if axis == 0:
                out[p * hd:(p + 1) * hd, :m.shape[1]] = m[i * hd:(i + 1) * hd]
            else:
                out[:m.shape[0], p * hd:(p + 1) * hd] = m[:, i * hd:(i + 1) * hd]
        return out

    def padded():
        """(name, padded tensor) in the former tool's order."""
        yield "token_embd.weight", _zero_padded(w("token_embd.weight"), cols=D)
        yield "output_norm.weight", _zero_padded(w("output_norm.weight"), D, scale=s)
        if "output.weight" in tensors:
            yield "output.weight", _zero_padded(w("output.weight"), cols=D)
        real_at = {round(i * L2 / L): i for i in range(L)}   # real layers spread evenly, the rest identities
        for j in range(L2):
            p = f"blk.{j}."
            if j in real_at:
                q = f"blk.{real_at[j]}."
                yield p + "attn_q.weight", place_heads(w(q + "attn_q.weight"), head_pos, H2, 0)
                yield p + "attn_k.weight", place_heads(w(q + "attn_k.weight"), range(K), K2, 0)
                yield p + "attn_v.weight", place_heads(w(q + "attn_v.weight"), range(K), K2, 0)
                yield p + "attn_output.weight", place_heads(w(q + "attn_output.weight"), head_pos, H2, 1)
                yield p + "ffn_gate.weight", _zero_padded(w(q + "ffn_gate.weight"), F2, D)
                yield p + "ffn_up.weight", _zero_padded(w(q + "ffn_up.weight"), F2, D)
                yield p + "ffn_down.weight", _zero_padded(w(q + "ffn_down.weight"), D, F2)
                an, fn = w(q + "attn_norm.weight"), w(q + "ffn_norm.weight")
            else:   # zero matrices: an identity on the residual
                for name, shape in (("attn_q", (H2 * hd, D)), ("attn_k", (K2 * hd, D)), ("attn_v", (K2 * hd, D)),
                                    ("attn_output", (D, H2 * hd)), ("ffn_gate", (F2, D)), ("ffn_up", (F2, D)),
                                    ("ffn_down", (D, F2))):
                    yield p + name + ".weight", np.zeros(shape, np.float32)
                an = fn = np.ones(d, np.float32)
            yield p + "attn_norm.weight", _zero_padded(an, D, scale=s)
            yield p + "ffn_norm.weight", _zero_padded(fn, D, scale=s)
        for name in _LLAMA_UNTOUCHED:
            if name in tensors:
                yield name, w(name)

    # general.file_type is left out as the former tool did (llama.cpp infers the type from the
    # tensors), so that the files stay byte for byte the tool's
    out = _writer(gguf, r, dst, "llama", {
        "llama.embedding_length", "llama.block_count", "llama.attention.head_count",
        "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.attention.layer_norm_rms_epsilon",
        "general.architecture", "general.file_type", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count",
        "llama.rope.dimension_count"})
    out.add_embedding_length(D)
    out.add_block_count(L2)
    out.add_head_count(H2)
    out.add_head_count_kv(K2)
    out.add_feed_forward_length(F2)
    out.add_layer_norm_rms_eps(eps * d / D)
    out.add_rope_dimension_count(hd)
    n_par = 0
    for name, a in padded():   # each converted as it comes, so that float32 copies do not pile up
        n_par += a.size
        _add_tensor(gguf, out, name, a, qtype)
    _finish(out)
    summary = {"source_width": d, "width": D, "source_layers": L, "layers": L2, "heads": H2, "kv_heads": K2,
               "source_ffn": F, "ffn": F2, "type": qtype, "parameters": n_par}
    if log is not None:
        print(f"padded {Path(src).name}: {n_par / 1e6:.1f}M parameters, D={D} L={L2} H={H2} K={K2} F={F2} "
              f"({qtype})", file=log)
    return summary


def _padded_fc(fc, rows: int, d: int, D: int):
    """A head's fc over the features of its target layers (a d-wide block per layer) for the
    target padded to width D: each block's columns go to the first d columns of its D-wide block,
    and the rows beyond the source's are zero."""
    import numpy as np
    n = fc.shape[1] // d
    out = np.zeros((rows, n * D), np.float32)
    for k in range(n):
        out[:fc.shape[0], k * D:k * D + d] = fc[:, k * d:(k + 1) * d]
    return out


# eagle3 tensors (see src/models/eagle3.cpp in the pinned llama.cpp)
_EAGLE3_NORMS = ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.attn_norm_2.weight", "blk.0.ffn_norm.weight")
_EAGLE3_KNOWN = set(_EAGLE3_NORMS) | {"fc.weight", "token_embd.weight", "output.weight", "d2t", "rope_freqs.weight"} | {
    f"blk.0.{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}


def pad_eagle3(src, dst, target_src, dim: int, layers: int, ffn: int, qtype: str = "f16", log=None) -> dict:
    """Writes the EAGLE-3 head `src` grown with its llama target `target_src` padded by
    pad_llama(target_src, ..., dim, layers, ffn): the padded head computes the same function on
    the padded target's features. Why:

    - the padded target's layer inputs are the source's, zero-padded, at the layers where
      pad_llama puts the source's (layer i at round(i * layers / L)): eagle3.target_layers are
      remapped so, and fc's columns of each layer's block go to that block's first d columns;
    - a head of the target's width (one that borrows its token embedding or output matrix, as
      heads for Llama 3.1 8B do) grows to the padded width, as pad_llama grows a llama block:
      fc's rows and the writers (attn_output, ffn_down) get zero rows, the readers zero columns
      (the attention reads concat(embedding, g), 2 x the width: the source's columns [0, d) go to
      [0, d) and [d, 2d) to [D, D + d)), the heads and feed-forward units beyond the source's are
      zero, and every RMS norm (all are over the head's width) gets its weight times sqrt(d/D)
      and the one eps key times d/D, so each outputs the source's vector zero-padded;
    - a head of another width (its own embedding and output) keeps its width: only fc grows.
    """
    import numpy as np
    gguf, r, value, (dh, H, K, F) = _source(src, "eagle3", qtype, (
        "embedding_length", "attention.head_count", "attention.head_count_kv", "feed_forward_length"))
    tr = gguf.GGUFReader(str(target_src))
    tf = lambda k: _contents(tr.fields[k]) if k in tr.fields else None   # noqa: E731
    if tf("general.architecture") != "llama":
        raise ValueError(f"{target_src}: an EAGLE-3 head grows with a llama target (got {tf('general.architecture')!r})")
    d, L = int(tf("llama.embedding_length")), int(tf("llama.block_count"))
    src_layers = [int(x) for x in value("eagle3.target_layers")]
    if int(value("eagle3.target_hidden_size")) != d:
        raise ValueError(f"{src}: made for a target of width {value('eagle3.target_hidden_size')}, not {d}")
    eps = float(value("eagle3.attention.layer_norm_rms_epsilon"))
    D, L2 = int(dim), int(layers)
    grow = dh == d                      # the head has the target's width: it grows with it
    Dh, hd = (D if grow else dh), dh // H
    H2 = Dh // hd
    g = H // K
    K2, F2 = H2 // g, (int(ffn) if grow else F)
    tensors = {t.name: t for t in r.tensors}
    unknown = sorted(set(tensors) - _EAGLE3_KNOWN)
    if unknown:
        raise ValueError(f"{src}: do not know how to pad tensor {unknown[0]}")
    w = lambda name: _as_f32(gguf, tensors[name])   # noqa: E731
    s = math.sqrt(dh / Dh)

    def padded():
        yield "fc.weight", _padded_fc(w("fc.weight"), Dh, d, D)
        for name in _EAGLE3_NORMS:
            yield name, _zero_padded(w(name), Dh, scale=s)
        for name in ("token_embd.weight", "output.weight"):
            if name in tensors:
                yield name, _zero_padded(w(name), cols=Dh)
        for name, n_pad in (("attn_q", H2), ("attn_k", K2), ("attn_v", K2)):
            m = w(f"blk.0.{name}.weight")
            out = np.zeros((n_pad * hd, 2 * Dh), np.float32)
            out[:m.shape[0], :dh] = m[:, :dh]
            out[:m.shape[0], Dh:Dh + dh] = m[:, dh:]
            yield f"blk.0.{name}.weight", out
        yield "blk.0.attn_output.weight", _zero_padded(w("blk.0.attn_output.weight"), Dh, H2 * hd)
        yield "blk.0.ffn_gate.weight", _zero_padded(w("blk.0.ffn_gate.weight"), F2, Dh)
        yield "blk.0.ffn_up.weight", _zero_padded(w("blk.0.ffn_up.weight"), F2, Dh)
        yield "blk.0.ffn_down.weight", _zero_padded(w("blk.0.ffn_down.weight"), Dh, F2)
        if "rope_freqs.weight" in tensors:
            yield "rope_freqs.weight", w("rope_freqs.weight")

    new_layers = [round(i * L2 / L) for i in src_layers]
    out = _writer(gguf, r, dst, "eagle3", {
        "eagle3.embedding_length", "eagle3.attention.head_count", "eagle3.attention.head_count_kv",
        "eagle3.feed_forward_length", "eagle3.attention.layer_norm_rms_epsilon", "eagle3.target_layers",
        "eagle3.target_hidden_size", "general.architecture", "general.file_type", "GGUF.version",
        "GGUF.tensor_count", "GGUF.kv_count"})
    out.add_embedding_length(Dh)
    out.add_head_count(H2)
    out.add_head_count_kv(K2)
    out.add_feed_forward_length(F2)
    out.add_layer_norm_rms_eps(eps * dh / Dh)
    out.add_array("eagle3.target_layers", new_layers)
    out.add_uint32("eagle3.target_hidden_size", D)
    n_par = 0
    for name, a in padded():
        n_par += a.size
        _add_tensor(gguf, out, name, a, qtype)
    if "d2t" in tensors:   # the vocabulary map: integers, as they are
        out.add_tensor("d2t", np.asarray(tensors["d2t"].data, dtype=np.int64))
    _finish(out)
    summary = {"source_width": dh, "width": Dh, "target_layers": new_layers, "heads": H2, "kv_heads": K2,
               "ffn": F2, "type": qtype, "parameters": n_par}
    if log is not None:
        print(f"padded {Path(src).name}: {n_par / 1e6:.1f}M parameters, D={Dh} H={H2} K={K2} F={F2}, "
              f"target layers {new_layers} ({qtype})", file=log)
    return summary


# qwen35 tensors by role (names after "blk.N."; see src/models/qwen35.cpp in the pinned llama.cpp)
_READERS = {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_qkv.weight", "attn_gate.weight",
            "ssm_alpha.weight", "ssm_beta.weight", "ffn_gate.weight", "ffn_up.weight"}
_WRITERS = {"attn_output.weight", "ssm_out.weight", "ffn_down.weight"}
_INNER_NORMS = {"attn_norm.weight", "post_attention_norm.weight", "nextn.enorm.weight", "nextn.hnorm.weight"}
_UNTOUCHED = {"attn_q_norm.weight", "attn_k_norm.weight", "ssm_conv1d.weight", "ssm_dt.bias", "ssm_a",
              "ssm_norm.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_qkv.bias"}
_KEEP_F32 = {"ssm_conv1d.weight"}


def pad_qwen35(src, dst, dim: int, ffn: int, qtype: str = "f16", log=None) -> dict:
    """Writes `src` (a qwen35 GGUF) grown to residual width `dim` and feed-forward width `ffn`,
    computing the same function (see the module's docstring), with weights of type `qtype`
    (f32, f16, q8_0, q4_0). Returns a summary: source and padded sizes, parameter count, whether
    the output is tied (then the MTP head's hnorm is off by an eps change, see above)."""
    import numpy as np
    gguf, r, value, (d, F, H) = _source(src, "qwen35", qtype,
                                        ("embedding_length", "feed_forward_length", "attention.head_count"))
    A = "qwen35."
    D, F2 = int(dim), int(ffn)
    if D < d or F2 < F:
        raise ValueError(f"the padded shape must contain the source: source width {d}, feed-forward {F}; "
                         f"padded {D}, {F2}")
    if value(A + "attention.layer_norm_rms_epsilon") is None:   # kept as it is: see the module's docstring
        raise ValueError(f"{src}: no {A}attention.layer_norm_rms_epsilon")

    names = [t.name for t in r.tensors]
    tied = "output.weight" not in names
    c = math.sqrt(D / d)
    f_main = 1.0 / (c * c) if tied else 1.0     # the output norm outputs c * f_main * h
    shared_head_head = any(n.endswith("nextn.shared_head_head.weight") for n in names)

    pad = _zero_padded

    def need(name, w, shape):
        if tuple(w.shape) != tuple(shape):
            raise ValueError(f"{src}: {name} has shape {tuple(w.shape)}, expected {tuple(shape)}")

    def padded(name, w):
        """(padded tensor, keep it F32)."""
        if name == "token_embd.weight":
            need(name, w, (w.shape[0], d))
            return pad(w, cols=D, scale=c), False
        if name == "output_norm.weight":
            need(name, w, (d,))
            return pad(w, D, scale=f_main), True
        if name == "output.weight":
            need(name, w, (w.shape[0], d))
            return pad(w, cols=D, scale=1.0 / (c * f_main)), False
        if not name.startswith("blk."):
            raise ValueError(f"{src}: do not know how to pad tensor {name}")
        role = name.split(".", 2)[2]
        if role in _READERS:
            need(name, w, (w.shape[0], d))
            return pad(w, rows=F2 if role in ("ffn_gate.weight", "ffn_up.weight") else None, cols=D), False
        if role in _WRITERS:
            need(name, w, (d, w.shape[1]))
            return pad(w, rows=D, cols=F2 if role == "ffn_down.weight" else None, scale=c), False
        if role in _INNER_NORMS:
            need(name, w, (d,))
            return pad(w, D, scale=1.0 / c), True
        if role == "nextn.shared_head_norm.weight":
            need(name, w, (d,))
            # with its own head matrix it outputs c * h (exact for a chained MTP step); with the
            # model's output matrix, what the output norm outputs
            return pad(w, D, scale=1.0 if shared_head_head else f_main), True
        if role == "nextn.shared_head_head.weight":
            need(name, w, (w.shape[0], d))
            has_norm = name.replace("shared_head_head", "shared_head_norm") in names
            return pad(w, cols=D, scale=1.0 / c if has_norm else 1.0 / (c * f_main)), False
        if role == "nextn.embed_tokens.weight":
            need(name, w, (w.shape[0], d))
            return pad(w, cols=D, scale=c), False
        if role == "nextn.eh_proj.weight":   # input: [enorm(embedding) (D), hnorm(h) (D)]
            need(name, w, (d, 2 * d))
            out = np.zeros((D, 2 * D), np.float32)
            out[:d, :d] = w[:, :d] * np.float32(c)
            out[:d, D:D + d] = w[:, d:] * np.float32(c)
            return out, False
        if role in _UNTOUCHED:
            return w, w.ndim == 1 or role in _KEEP_F32
        raise ValueError(f"{src}: do not know how to pad tensor {name}")

    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]

    w = _writer(gguf, r, dst, "qwen35", {A + "embedding_length", A + "feed_forward_length", "general.architecture",
                                         "general.file_type", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"})
    w.add_embedding_length(D)
    w.add_feed_forward_length(F2)
    # the head size defaults to width / heads in llama.cpp: write it down where the source did not
    if value(A + "attention.key_length") is None:
        w.add_key_length(d // H)
    if value(A + "attention.value_length") is None:
        w.add_value_length(d // H)
    w.add_file_type(ftype)

    n_par = 0
    for t in r.tensors:
        a, keep_f32 = padded(t.name, _as_f32(gguf, t))
        n_par += a.size
        _add_tensor(gguf, w, t.name, a, qtype, keep_f32)
    _finish(w)
    summary = {"source_width": d, "width": D, "source_ffn": F, "ffn": F2, "type": qtype, "parameters": n_par,
               "tied_output": tied, "mtp": any(".nextn." in n for n in names)}
    if log is not None:
        note = ", tied output: the MTP head's hnorm eps is scaled by (D/d)^2" if tied and summary["mtp"] else ""
        print(f"padded {Path(src).name}: {n_par / 1e6:.1f}M parameters, width {d}->{D}, "
              f"feed-forward {F}->{F2} ({qtype}){note}", file=log)
    return summary


def _dflash_names(n_layer):
    norms = ["enc.output_norm.weight", "output_norm.weight"]
    norms += [f"blk.{i}.{n}.weight" for i in range(n_layer) for n in ("attn_norm", "ffn_norm")]
    mats = {f"blk.{i}.{n}.weight" for i in range(n_layer)
            for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
                      "attn_q_norm", "attn_k_norm")}
    return norms, set(norms) | mats | {"fc.weight", "token_embd.weight", "output.weight", "rope_freqs.weight"}


def pad_dflash(src, dst, target_src, dim: int, layers: int, ffn: int, qtype: str = "f16", log=None) -> dict:
    """Writes the DFlash draft `src` grown with its llama target `target_src` padded by
    pad_llama(target_src, ..., dim, layers, ffn): the padded draft computes the same function on
    the padded target's features (a DFlash draft has its target's width). As pad_eagle3:
    dflash.target_layers are remapped to where pad_llama puts the source's layers and fc's
    columns of each layer's block go to that block's first d columns; fc's rows, the writers
    (attn_output, ffn_down) and own embedding/output get zero rows or columns, the readers zero
    columns; heads and feed-forward units beyond the source's are zero; every RMS norm over the
    width gets its weight times sqrt(d/D) and the eps key times d/D. The per-head Q/K norms (over
    a head, unpadded) read that eps too, so attn_q and attn_k are scaled by sqrt(d/D):
    RMSNorm(s x; s^2 eps) = RMSNorm(x; eps).
    """
    import numpy as np
    gguf, r, value, (d, H, K, F, n_layer) = _source(src, "dflash", qtype, (
        "embedding_length", "attention.head_count", "attention.head_count_kv", "feed_forward_length",
        "block_count"))
    tr = gguf.GGUFReader(str(target_src))
    tf = lambda k: _contents(tr.fields[k]) if k in tr.fields else None   # noqa: E731
    if tf("general.architecture") != "llama":
        raise ValueError(f"{target_src}: a DFlash draft grows with a llama target (got {tf('general.architecture')!r})")
    if int(tf("llama.embedding_length")) != d:
        raise ValueError(f"{src}: its width {d} is not its target's {tf('llama.embedding_length')}")
    L = int(tf("llama.block_count"))
    src_layers = [int(x) for x in value("dflash.target_layers")]
    eps = float(value("dflash.attention.layer_norm_rms_epsilon"))
    D, L2, F2 = int(dim), int(layers), int(ffn)
    hd = d // H
    if D % hd or (D // hd) % (H // K):
        raise ValueError(f"{src}: width {D} does not hold whole heads of {hd} in groups of {H // K}")
    H2 = D // hd
    K2 = H2 // (H // K)
    tensors = {t.name: t for t in r.tensors}
    norms, known = _dflash_names(n_layer)
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise ValueError(f"{src}: do not know how to pad tensor {unknown[0]}")
    w = lambda name: _as_f32(gguf, tensors[name])   # noqa: E731
    s = math.sqrt(d / D)

    def padded():
        yield "fc.weight", _padded_fc(w("fc.weight"), D, d, D)
        for name in norms:
            yield name, _zero_padded(w(name), D, scale=s)
        for name in ("token_embd.weight", "output.weight"):
            if name in tensors:
                yield name, _zero_padded(w(name), cols=D)
        for i in range(n_layer):
            b = f"blk.{i}."
            for name, n_pad, scale in (("attn_q", H2, s), ("attn_k", K2, s), ("attn_v", K2, 1.0)):
                if b + name + ".weight" in tensors:   # (no attn_v: V is K's, RMS-normed)
                    yield b + name + ".weight", _zero_padded(w(b + name + ".weight"), n_pad * hd, D, scale=scale)
            for name in ("attn_q_norm", "attn_k_norm"):
                yield b + name + ".weight", w(b + name + ".weight")
            yield b + "attn_output.weight", _zero_padded(w(b + "attn_output.weight"), D, H2 * hd)
            yield b + "ffn_gate.weight", _zero_padded(w(b + "ffn_gate.weight"), F2, D)
            yield b + "ffn_up.weight", _zero_padded(w(b + "ffn_up.weight"), F2, D)
            yield b + "ffn_down.weight", _zero_padded(w(b + "ffn_down.weight"), D, F2)
        if "rope_freqs.weight" in tensors:
            yield "rope_freqs.weight", w("rope_freqs.weight")

    new_layers = [round(i * L2 / L) for i in src_layers]
    out = _writer(gguf, r, dst, "dflash", {
        "dflash.embedding_length", "dflash.attention.head_count", "dflash.attention.head_count_kv",
        "dflash.feed_forward_length", "dflash.attention.layer_norm_rms_epsilon", "dflash.target_layers",
        "general.architecture", "general.file_type", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"})
    out.add_embedding_length(D)
    out.add_head_count(H2)
    out.add_head_count_kv(K2)
    out.add_feed_forward_length(F2)
    out.add_layer_norm_rms_eps(eps * d / D)
    out.add_array("dflash.target_layers", new_layers)
    n_par = 0
    for name, a in padded():
        n_par += a.size
        _add_tensor(gguf, out, name, a, qtype)
    _finish(out)
    summary = {"source_width": d, "width": D, "target_layers": new_layers, "heads": H2, "kv_heads": K2,
               "ffn": F2, "type": qtype, "parameters": n_par}
    if log is not None:
        print(f"padded {Path(src).name}: {n_par / 1e6:.1f}M parameters, D={D} H={H2} K={K2} F={F2}, "
              f"target layers {new_layers} ({qtype})", file=log)
    return summary


def padded_model(src: str, shape: str, qtype: str, cache: Path, log=sys.stderr, target: Optional[str] = None) -> Path:
    """Path of `src` padded to `shape` and quantized to `qtype`, made on first use (by pad_llama(),
    pad_qwen35() or, for an EAGLE-3 head or a DFlash draft of the llama model `target`,
    pad_eagle3() or pad_dflash(), after the
    source's architecture) and kept in `cache`."""
    if shape not in SHAPES:
        raise ValueError(f"unknown pad shape {shape!r} ({', '.join(SHAPES)})")
    if qtype not in TYPES:
        raise ValueError(f"unknown pad type {qtype!r} ({', '.join(TYPES)})")
    fp = model_fingerprint(src)   # raises FileNotFoundError for a missing source
    arch, names = gguf_header(src)
    # the former external tool dropped a llama model's rope_freqs.weight (another function where
    # RoPE is scaled); pad_llama keeps it, under another name so that such files are not reused
    tag = "-rope" if arch == "llama" and "rope_freqs.weight" in names else ""
    if arch in ("eagle3", "dflash"):   # a head grows with its target: both name the file
        if not target:
            raise ValueError(f"{src}: an {arch} head is padded with its target (give the target)")
        tag = "-for-" + model_fingerprint(target)["sha256_head_tail"][:8]
    out = cache / f"{Path(src).stem}-{shape}-{qtype}{tag}-{fp['sha256_head_tail'][:12]}.gguf"
    if out.exists():
        return out
    if arch == "llama":
        pad = lambda dst: pad_llama(src, dst, *LLAMA_SHAPES[shape], qtype, log=log)   # noqa: E731
    elif arch == "qwen35":
        if shape not in QWEN35_SHAPES:
            raise ValueError(f"{src}: shape {shape!r} sets the number of layers, which a qwen35 model keeps "
                             f"({', '.join(QWEN35_SHAPES)})")
        pad = lambda dst: pad_qwen35(src, dst, *QWEN35_SHAPES[shape], qtype, log=log)   # noqa: E731
    elif arch == "eagle3":
        pad = lambda dst: pad_eagle3(src, dst, target, *LLAMA_SHAPES[shape], qtype, log=log)   # noqa: E731
    elif arch == "dflash":
        pad = lambda dst: pad_dflash(src, dst, target, *LLAMA_SHAPES[shape], qtype, log=log)   # noqa: E731
    else:
        raise ValueError(f"{src}: cannot pad a model of architecture {arch!r} (llama, qwen35, eagle3 heads "
                         "and dflash drafts can be padded)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    print(f"heterospec bench: padding {src} ({arch}) to {shape} ({qtype}) once, into {out}", file=log)
    try:
        pad(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    return out
