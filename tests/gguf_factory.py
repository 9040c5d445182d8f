"""Tiny random-weight Llama GGUF models for tests.

Everything here is generated from numpy + gguf-py, so the test suite needs no
downloaded models. The files load and run in the pinned llama.cpp (checked by
tests/native/check_load.cpp); the weights are random, so the text is gibberish,
but greedy decoding is deterministic and depends on the context.

Public API:
    Vocab, make_vocab(variant="a")
    write_llama(path, vocab=None, *, ...) -> Path
    read_weights(path) -> dict[str, np.ndarray]
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
    variant: str = "a"
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self._index = {t: i for i, t in enumerate(self.tokens)}
        # llama.cpp GGML_ASSERTs (aborts) on duplicate token texts: never emit them.
        assert len(self._index) == len(self.tokens), "duplicate token text"

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


def _random_weights(shapes, rng) -> dict[str, np.ndarray]:
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
    return w


def read_weights(path: Union[str, Path]) -> dict[str, np.ndarray]:
    """All tensors of a GGUF file as float32 numpy arrays (numpy shape order)."""
    r = gguf.GGUFReader(str(path))
    return {
        t.name: np.array(t.data, dtype=np.float32).reshape(
            tuple(int(d) for d in reversed(t.shape)))
        for t in r.tensors
    }


def write_llama(
    path, vocab: Vocab | None = None, *, n_embd=64, n_layer=2, n_head=4,
    n_head_kv=None, n_ff=128, n_ctx_train=256, seed=0,
    base: Union[str, Path, Mapping[str, np.ndarray], None] = None,
    noise=0.0, eos_boost=0.0, dtype="f32", arch="llama", name="test",
) -> Path:
    """Write a random-weight Llama GGUF and return its path.

    base:      a GGUF path (see read_weights) or a weights dict. The new model
               gets base's weights plus Gaussian noise of std `noise` times each
               tensor's RMS (noise=0 copies it exactly). The hyper-parameters
               passed here must describe the same shapes as base (ValueError
               otherwise); seed then only seeds the noise.
    eos_boost: multiplies the EOS row of output.weight by (1 + eos_boost),
               widening the spread of the EOS logit so greedy decoding picks
               EOS for some contexts. ~1-2 makes EOS appear within tens of
               tokens for some prompts.
    dtype:     "f32" or "f16" for the 2-D tensors (norm gains stay f32, as in
               llama.cpp's converters).
    """
    vocab = vocab or make_vocab()
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must divide by n_head, n_head by n_head_kv")
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    shapes = _shapes(vocab.n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff)
    rng = np.random.default_rng(seed)

    if base is None:
        weights = _random_weights(shapes, rng)
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
        weights["output.weight"] = weights["output.weight"].copy()
        weights["output.weight"][vocab.eos_id] *= 1.0 + eos_boost

    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
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
        w.add_tensor(k, v.astype(np.float16) if (dtype == "f16" and v.ndim > 1) else v)
    _finish(w)
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
