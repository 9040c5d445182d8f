"""Padded models for the benchmark: a small GGUF grown into a big shape that computes the same
function, so that tau stays the trained pair's while every forward pass costs what a big model's
does. Made once per (model, shape, type) and kept in the benchmark's cache folder.

Llama sources are padded by the project's shared tool (`shared/tools/pad_model.py`, run as a
subprocess: zero-padded width, heads and feed-forward, identity layers, RMSNorm weights scaled by
sqrt(d/D) and eps by d/D).

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
- RMSNorms over the residual width: mean(x^2) over D is d/D times the mean over d. The llama tool
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
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Optional

from .policy import model_fingerprint

SHAPES = ("llama-8b", "llama-1b", "cpu-300m")
TYPES = ("f32", "f16", "q8_0", "q4_0")

# qwen35: the shape presets as (residual width D, feed-forward width F2); layers, heads and the
# DeltaNet sizes stay the source's
QWEN35_SHAPES = {"llama-8b": (4096, 14336), "llama-1b": (2048, 8192), "cpu-300m": (2048, 5504)}


def find_pad_tool(explicit: Optional[str] = None) -> Path:
    explicit = explicit or os.environ.get("HETEROSPEC_PAD_TOOL")
    if explicit:   # named by the user: that one or an error, never a silent substitute
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"pad tool not found: '{explicit}'")
        return Path(explicit)
    candidates = []
    here = Path(__file__).resolve().parents[1]
    for root in (Path.cwd(), here):
        candidates += [root / "shared" / "tools" / "pad_model.py", root.parent / "shared" / "tools" / "pad_model.py"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise FileNotFoundError("cannot find pad_model.py (looked in ../shared/tools); pass --pad-tool PATH "
                            "or set HETEROSPEC_PAD_TOOL")


def gguf_architecture(path) -> Optional[str]:
    """`general.architecture` of a GGUF file, read from its header (no gguf-py needed); None when
    the file is not a GGUF or lacks the key."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}   # scalar value types
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return None
        version, = struct.unpack("<I", f.read(4))
        count = "<I" if version == 1 else "<Q"
        n = struct.calcsize(count)
        f.read(n)                                     # tensor count
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

        for _ in range(n_kv):
            key = string()
            vtype, = struct.unpack("<I", f.read(4))
            if key == b"general.architecture" and vtype == 8:
                return string().decode("utf-8", "replace")
            skip(vtype)
    return None


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError('padding a qwen35 model needs the gguf package: pip install "heterospec[bench]"') from None
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
    gguf = _gguf()
    import numpy as np

    if qtype not in TYPES:
        raise ValueError(f"unknown pad type {qtype!r} ({', '.join(TYPES)})")
    r = gguf.GGUFReader(str(src))

    def value(key, default=None):
        f = r.fields.get(key)
        return default if f is None else _contents(f)

    arch = value("general.architecture")
    if arch != "qwen35":
        raise ValueError(f"{src}: pad_qwen35 pads qwen35 models (got architecture {arch!r})")
    A = "qwen35."
    d = value(A + "embedding_length")
    F = value(A + "feed_forward_length")
    H = value(A + "attention.head_count")
    for key, v in (("embedding_length", d), ("feed_forward_length", F), ("attention.head_count", H)):
        if not isinstance(v, int):
            raise ValueError(f"{src}: {A}{key} must be one number to pad (got {v!r})")
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

    def f32(t):
        a = np.asarray(t.data)
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                                 gguf.GGMLQuantizationType.F64):
            a = gguf.quants.dequantize(a, t.tensor_type)
        return np.asarray(a, dtype=np.float32)

    def pad(w, rows=None, cols=None, scale=1.0):
        w = w if scale == 1.0 else w * np.float32(scale)
        if w.ndim == 1:
            out = np.zeros(rows, np.float32)
            out[:w.shape[0]] = w
            return out
        out = np.zeros((rows or w.shape[0], cols or w.shape[1]), np.float32)
        out[:w.shape[0], :w.shape[1]] = w
        return out

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

    T = gguf.GGMLQuantizationType
    qt = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[qtype]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]

    w = gguf.GGUFWriter(str(dst), arch)
    skip = {A + "embedding_length", A + "feed_forward_length", "general.architecture", "general.file_type",
            "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    for key, f in r.fields.items():
        if key in skip:
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, _contents(f), vt, sub_type=f.types[-1])
        else:
            w.add_key_value(key, _contents(f), vt)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F2)
    # the head size defaults to width / heads in llama.cpp: write it down where the source did not
    if value(A + "attention.key_length") is None:
        w.add_key_length(d // H)
    if value(A + "attention.value_length") is None:
        w.add_value_length(d // H)
    w.add_file_type(ftype)

    n_par = 0
    block = {T.Q8_0: 32, T.Q4_0: 32}
    for t in r.tensors:
        a, keep_f32 = padded(t.name, f32(t))
        n_par += a.size
        if keep_f32 or a.ndim == 1 or qt == T.F32:
            w.add_tensor(t.name, np.ascontiguousarray(a, dtype=np.float32))
        elif qt == T.F16 or a.shape[-1] % block[qt]:
            w.add_tensor(t.name, a.astype(np.float16))
        else:
            w.add_tensor(t.name, gguf.quants.quantize(a, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    summary = {"source_width": d, "width": D, "source_ffn": F, "ffn": F2, "type": qtype, "parameters": n_par,
               "tied_output": tied, "mtp": any(".nextn." in n for n in names)}
    if log is not None:
        note = ", tied output: the MTP head's hnorm eps is scaled by (D/d)^2" if tied and summary["mtp"] else ""
        print(f"padded {Path(src).name}: {n_par / 1e6:.1f}M parameters, width {d}->{D}, "
              f"feed-forward {F}->{F2} ({qtype}){note}", file=log)
    return summary


def padded_model(src: str, shape: str, qtype: str, cache: Path, tool: Optional[str] = None,
                 log=sys.stderr) -> Path:
    """Path of `src` padded to `shape` and quantized to `qtype`, made on first use: qwen35 models
    by pad_qwen35() here, others by the shared tool."""
    if shape not in SHAPES:
        raise ValueError(f"unknown pad shape {shape!r} ({', '.join(SHAPES)})")
    if qtype not in TYPES:
        raise ValueError(f"unknown pad type {qtype!r} ({', '.join(TYPES)})")
    fp = model_fingerprint(src)   # raises FileNotFoundError for a missing source
    out = cache / f"{Path(src).stem}-{shape}-{qtype}-{fp['sha256_head_tail'][:12]}.gguf"
    if out.exists():
        return out
    arch = gguf_architecture(src)
    if arch == "qwen35":
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        print(f"heterospec bench: padding {src} (qwen35) to {shape} ({qtype}) once, into {out}", file=log)
        dim, ffn = QWEN35_SHAPES[shape]
        try:
            pad_qwen35(src, tmp, dim, ffn, qtype, log=log)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(out)
        return out
    script = find_pad_tool(tool)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    print(f"heterospec bench: padding {src} to {shape} ({qtype}) once, into {out}", file=log)
    r = subprocess.run([sys.executable, str(script), str(src), str(tmp), "--shape", shape, "--type", qtype],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"padding {src} to {shape} failed: {r.stdout.strip()[-500:]}")
    tmp.replace(out)
    return out
