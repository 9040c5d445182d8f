"""Tiny random-weight Llama GGUF models for tests.

Everything here is generated from numpy + gguf-py, so the test suite needs no
downloaded models. The files load and run in the pinned llama.cpp (checked by
tests/native/check_load.cpp); the weights are random, so the text is gibberish,
but greedy decoding is deterministic and depends on the context.

Public API:
    Vocab, make_vocab(variant="a")
    write_llama(path, vocab=None, *, ...) -> Path
    read_weights(path) -> dict[str, np.ndarray]
    read_vocab(path) -> Vocab
    write_unknown_arch(path) -> Path
    write_truncated(src, dst, keep_fraction=0.6) -> Path
    write_not_gguf(path) -> Path
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Union

import numpy as np
import gguf

SPACE = "\u2581"  # SentencePiece's "▁" word-boundary marker
CONTROL_ROW_SCALE = 0.2  # output.weight row scale of control tokens (fresh models)
ANTI_REPEAT = 1.5  # see _random_weights

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Word-ish pieces. SPM in llama.cpp only merges two adjacent symbols when their
# concatenation is itself a vocab entry, so make_vocab adds every prefix of
# these too ("▁r", "▁re", "▁ret", ...) to guarantee a merge path.
_WORDS_A = [
    "▁the", "▁def", "▁return", "▁if", "▁else", "▁for", "▁in", "▁and", "▁is",
    "▁of", "▁to", "▁print", "▁self", "▁import", "▁class", "▁hello", "▁world",
    "▁name", "▁value", "▁None", "▁True", "▁False", "▁while", "▁my", "▁what",
    "▁you", "in", "er", "ing", "ed", "on", "re", "at", "en", "()", "):", "▁==",
]
_WORDS_B = [
    "▁a", "▁an", "▁be", "▁that", "▁this", "▁with", "▁from", "▁lambda", "▁yield",
    "▁async", "▁await", "▁try", "▁except", "or", "an", "es", "ly", "tion",
]


@dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    eot_id: int | None = None  # <|im_end|>
    im_start_id: int | None = None
    add_bos: bool = True
    add_eos: bool = False
    chat_template: str = CHATML_TEMPLATE
    variant: str = "a"  # make_vocab variant; "" when read back from a file
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self._index = {t: i for i, t in enumerate(self.tokens)}
        # llama.cpp GGML_ASSERTs (aborts the process) on duplicate token texts.
        if len(self._index) != len(self.tokens):
            raise ValueError("duplicate token text in vocabulary")

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def id(self, piece: str) -> int:
        return self._index[piece]


def make_vocab(variant: str = "a") -> Vocab:
    """SPM ("llama") vocabulary of a few hundred tokens.

    Ids 0..2 are <unk> <s> </s>, 3..258 the byte-fallback tokens <0x00>..<0xFF>,
    then <|im_start|> <|im_end|>, then the "▁"-marker, printable ASCII pieces
    (plain and "▁"-prefixed) and word pieces. Variant "b" shares the special
    ids but has different (and fewer) pieces, for vocabulary-mismatch tests.
    """
    if variant not in ("a", "b"):
        raise ValueError(f"unknown vocab variant {variant!r}")
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [T.CONTROL, T.CONTROL]
    n_special = len(tokens)

    chars = [chr(c) for c in range(0x21, 0x7F)]
    if variant == "a":
        pieces = [SPACE] + chars + [SPACE + c for c in chars]
        words = _WORDS_A
    else:
        # No "▁"-prefixed punctuation/digits, so tokenizations differ from "a".
        pieces = [SPACE] + chars + [SPACE + c for c in chars if c.isalpha()]
        words = _WORDS_B
    seen = set(pieces)
    for w in words:
        for k in range(2, len(w) + 1):
            if w[:k] not in seen:
                seen.add(w[:k])
                pieces.append(w[:k])
    tokens += pieces
    types += [T.NORMAL] * len(pieces)

    # SPM merges the highest-scoring candidate first; longer pieces score
    # higher so whole words win, with a tiny per-id tiebreak for determinism.
    scores = [0.0] * n_special + [
        float(len(p)) - 1e-4 * i for i, p in enumerate(pieces)
    ]
    return Vocab(
        tokens=tokens, scores=scores, types=[int(t) for t in types],
        eot_id=tokens.index("<|im_end|>"), im_start_id=tokens.index("<|im_start|>"),
        variant=variant,
    )


def _shapes(n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff) -> dict[str, tuple]:
    # numpy shapes are ggml's ne reversed: ggml {n_embd, n_vocab} == np (n_vocab, n_embd).
    hd = n_embd // n_head
    s = {
        "token_embd.weight": (n_vocab, n_embd),
        "output_norm.weight": (n_embd,),
        "output.weight": (n_vocab, n_embd),
    }
    for i in range(n_layer):
        b = f"blk.{i}."
        s.update({
            b + "attn_norm.weight": (n_embd,),
            b + "attn_q.weight": (n_head * hd, n_embd),
            b + "attn_k.weight": (n_head_kv * hd, n_embd),
            b + "attn_v.weight": (n_head_kv * hd, n_embd),
            b + "attn_output.weight": (n_embd, n_head * hd),
            b + "ffn_norm.weight": (n_embd,),
            b + "ffn_gate.weight": (n_ff, n_embd),
            b + "ffn_up.weight": (n_ff, n_embd),
            b + "ffn_down.weight": (n_embd, n_ff),
        })
    return s


def _random_weights(shapes, rng, vocab: Vocab) -> dict[str, np.ndarray]:
    w = {}
    for name, shape in shapes.items():
        if len(shape) == 1:  # RMS-norm gains
            w[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            continue
        fan_in = shape[1]
        if name == "token_embd.weight":
            std = 1.0
        elif name == "output.weight":
            # Input is RMS-normalised (|x|~sqrt(n_embd)); this gives logits with
            # std ~3, a clear argmax rather than near-ties.
            std = 3.0 / np.sqrt(fan_in)
        elif name.endswith(("attn_q.weight", "attn_k.weight")):
            # Larger q/k make attention peaky, so the mix of earlier tokens
            # (not just the current token) steers the next prediction.
            std = 2.0 / np.sqrt(fan_in)
        else:
            std = 1.0 / np.sqrt(fan_in)
        w[name] = (std * rng.standard_normal(shape)).astype(np.float32)
    # Random Llamas like to lock onto one token ("x x x x ..."): the current
    # token dominates the residual stream and some tokens predict themselves.
    # Subtracting a multiple of each token's own embedding from its output row
    # penalises immediate repetition (runs of >=4 equal tokens in 64 greedy
    # steps went from 21/144 to 0/144 over 12 seeds).
    e = w["token_embd.weight"]
    w["output.weight"] -= (ANTI_REPEAT / np.sqrt(e.shape[1])) * e
    # Shrink the output rows of control tokens (<unk> <s> </s> <|im_start|>
    # <|im_end|>) so greedy decoding practically never picks them: </s> and
    # <|im_end|> are end-of-generation in llama.cpp and would end runs early
    # at random. eos_boost re-enables </s> on purpose.
    ctrl = [i for i, t in enumerate(vocab.types) if t in (gguf.TokenType.CONTROL, gguf.TokenType.UNKNOWN)]
    w["output.weight"][ctrl] *= CONTROL_ROW_SCALE
    return w


def read_weights(path: Union[str, Path]) -> dict[str, np.ndarray]:
    """All tensors of a GGUF file as float32 numpy arrays (numpy shape order)."""
    r = gguf.GGUFReader(str(path))
    return {
        t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
            tuple(int(d) for d in reversed(t.shape)))
        for t in r.tensors
    }


def _fields(path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def read_vocab(path: Union[str, Path]) -> Vocab:
    """The Vocab stored in a GGUF written by write_llama."""
    f = _fields(path)
    toks = f["tokenizer.ggml.tokens"]
    return Vocab(
        tokens=list(toks), scores=[float(x) for x in f["tokenizer.ggml.scores"]],
        types=[int(x) for x in f["tokenizer.ggml.token_type"]],
        unk_id=f["tokenizer.ggml.unknown_token_id"], bos_id=f["tokenizer.ggml.bos_token_id"],
        eos_id=f["tokenizer.ggml.eos_token_id"], eot_id=f.get("tokenizer.ggml.eot_token_id"),
        im_start_id=toks.index("<|im_start|>") if "<|im_start|>" in toks else None,
        add_bos=f["tokenizer.ggml.add_bos_token"], add_eos=f["tokenizer.ggml.add_eos_token"],
        chat_template=f.get("tokenizer.chat_template", ""), variant="",
    )


_DEFAULTS = dict(n_embd=64, n_layer=2, n_head=4, n_head_kv=None, n_ff=128, n_ctx_train=256)


def write_llama(
    path, vocab: Vocab | None = None, *, n_embd=None, n_layer=None, n_head=None,
    n_head_kv=None, n_ff=None, n_ctx_train=None, seed=0,
    base: Union[str, Path, Mapping[str, np.ndarray], None] = None,
    noise=0.0, eos_boost=0.0, dtype="f32", arch="llama", name="test", split_max_tensors=0,
) -> Path:
    """Write a random-weight Llama GGUF and return its path.

    Shape defaults: n_embd=64, n_layer=2, n_head=4, n_head_kv=n_head, n_ff=128,
    n_ctx_train=256, vocab=make_vocab("a"). Deterministic for a given seed.

    base:      a GGUF path or a weights dict (read_weights). The new model gets
               base's weights plus Gaussian noise of std `noise` times each
               tensor's RMS (noise=0 copies it exactly); seed seeds the noise.
               With a path, vocab and unspecified hyper-parameters come from
               the base file; with a dict they must be passed to match it.
               Shape mismatch -> ValueError. Measured per-step greedy
               agreement of draft vs base (teacher-forced; default sizes /
               n_embd=128,n_layer=4): noise 0.01 -> ~92%/83%,
               0.02 -> ~83%/71%, 0.05 -> ~59%/43%, 0.1 -> ~37%, 0.3 -> <10%.
    eos_boost: grows the EOS row of output.weight (same direction) by
               eos_boost times the RMS of an ordinary token's row, widening the
               spread of the EOS logit so greedy decoding picks EOS in some
               contexts. Fresh models start with all control-token rows
               (EOS, <|im_end|>, ...) at CONTROL_ROW_SCALE, so with
               eos_boost=0 they are practically never generated. Measured
               (default sizes, 44 prompts, 64 greedy tokens, seeds 0-5):
               1.0 -> EOS for ~15% of prompts, 1.5 -> 50-90% (median
               position ~20), 2.0 -> 85-100% (median position 5-17).
               Applied after base/noise, so a draft made from a boosted base
               keeps the boost when eos_boost=0.
    dtype:     "f32", "f16", "q4_1" or "q8_0" for the 2-D tensors (norm gains stay f32, as in
               llama.cpp's converters: the CPU backend aborts on f16 norms).
               read_weights of a quantized file gives its dequantized weights, so
               write_llama(base=that) is its f32 twin.
    """
    hp = dict(n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
              n_ff=n_ff, n_ctx_train=n_ctx_train)
    if isinstance(base, (str, Path)):
        f = _fields(base)
        a = f["general.architecture"]
        stored = dict(n_embd=f[f"{a}.embedding_length"], n_layer=f[f"{a}.block_count"],
                      n_head=f[f"{a}.attention.head_count"], n_head_kv=f[f"{a}.attention.head_count_kv"],
                      n_ff=f[f"{a}.feed_forward_length"], n_ctx_train=f[f"{a}.context_length"])
        hp = {k: stored[k] if v is None else v for k, v in hp.items()}
        vocab = vocab or read_vocab(base)
    hp = {k: _DEFAULTS[k] if v is None else v for k, v in hp.items()}
    n_embd, n_layer, n_head, n_ff, n_ctx_train = (hp[k] for k in ("n_embd", "n_layer", "n_head", "n_ff", "n_ctx_train"))
    n_head_kv = n_head if hp["n_head_kv"] is None else hp["n_head_kv"]
    vocab = vocab or make_vocab()
    # llama.cpp GGML_ASSERTs (aborts) on a non-dividing GQA ratio when the
    # context is created, and on an odd head dim (RoPE) at the first decode.
    if n_embd % n_head or n_head % n_head_kv or (n_embd // n_head) % 2:
        raise ValueError("need n_embd % n_head == 0, n_head % n_head_kv == 0, even head dim")
    if dtype not in ("f32", "f16", "q4_1", "q8_0"):
        raise ValueError(f"dtype must be 'f32', 'f16', 'q4_1' or 'q8_0', not {dtype!r}")
    if dtype in ("q4_1", "q8_0") and (n_embd % 32 or n_ff % 32):
        raise ValueError(f"{dtype} needs n_embd and n_ff divisible by its block of 32")
    shapes = _shapes(vocab.n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff)
    rng = np.random.default_rng(seed)

    if base is None:
        weights = _random_weights(shapes, rng, vocab)
    else:
        src = read_weights(base) if isinstance(base, (str, Path)) else base
        got = {k: tuple(v.shape) for k, v in src.items()}
        if got != shapes:
            raise ValueError("base weights do not match the requested shapes")
        weights = {}
        for k in shapes:  # fixed order => deterministic noise
            w = np.asarray(src[k], dtype=np.float32)
            rms = float(np.sqrt(np.mean(w * w)))
            weights[k] = (w + noise * rms * rng.standard_normal(w.shape)).astype(np.float32)

    if eos_boost:
        out = weights["output.weight"] = weights["output.weight"].copy()
        ordinary = out[[i for i, t in enumerate(vocab.types) if t == gguf.TokenType.NORMAL]]
        rms = lambda a: float(np.sqrt(np.mean(a * a)))
        row = out[vocab.eos_id]
        out[vocab.eos_id] = row * (1.0 + eos_boost * rms(ordinary) / max(rms(row), 1e-12))

    path = Path(path)
    # split_max_tensors > 0: a split GGUF, path's stem + -0000i-of-0000n.gguf (the first part returned)
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    w.add_name(name)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    # llama.cpp rejects LLM_ARCH_LLAMA files whose n_rot != head dim.
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    _add_tokenizer(w, vocab)
    for k, v in weights.items():
        if dtype in ("q4_1", "q8_0") and v.ndim > 1:
            q = gguf.GGMLQuantizationType[dtype.upper()]
            w.add_tensor(k, gguf.quants.quantize(v, q), raw_dtype=q)
        else:
            w.add_tensor(k, v.astype(np.float16) if (dtype == "f16" and v.ndim > 1) else v)
    _finish(w)
    if split_max_tensors:
        return sorted(path.parent.glob(f"{path.stem}-*-of-*.gguf"))[0]
    return path


def _add_tokenizer(w: gguf.GGUFWriter, v: Vocab) -> None:
    w.add_tokenizer_model("llama")
    w.add_token_list(v.tokens)
    w.add_token_scores(v.scores)
    w.add_token_types(v.types)
    w.add_bos_token_id(v.bos_id)
    w.add_eos_token_id(v.eos_id)
    w.add_unk_token_id(v.unk_id)
    if v.eot_id is not None:
        w.add_eot_token_id(v.eot_id)
    w.add_add_bos_token(v.add_bos)
    w.add_add_eos_token(v.add_eos)
    w.add_chat_template(v.chat_template)


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_unknown_arch(path) -> Path:
    """A well-formed GGUF whose general.architecture llama.cpp does not know."""
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "heterospec-unknown-arch")
    w.add_name("unknown-arch")
    w.add_uint32("heterospec-unknown-arch.block_count", 1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    _finish(w)
    return path


def write_truncated(src, dst, keep_fraction: float = 0.6) -> Path:
    """Copy the first keep_fraction of src's bytes to dst."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def write_not_gguf(path) -> Path:
    """A file that is not GGUF at all (wrong magic)."""
    path = Path(path)
    path.write_bytes(b"this is not a gguf model file\n" * 64)
    return path
