"""The Python face of the native engine.

Options are passed through to the native option structs: a keyword left as None keeps the
engine's default (defined once, in cpp/include/heterospec/config.h).

Threading contract: one Engine may be shared by any number of threads. A generation owns the
engine from its start to its end (a stream: until it is exhausted, closed or garbage-collected);
other callers wait their turn in a first-come queue, each for at most its `queue_timeout`
seconds (None: no limit), after which EngineBusy is raised. `Engine.cancel()` and
`Stream.close()` may be called from any thread: the generation stops at its next step. A thread
that holds an unfinished stream and asks the same engine for another generation gets a
RuntimeError instead of waiting for itself.
"""
from __future__ import annotations

import atexit
import collections
import math
import operator
import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

from . import _core
from . import chat_template as _chat

Prompt = Union[str, Sequence[int]]
_RANDOM_SEED = 2**64 - 1  # native "pick a random seed"


class Stats:
    """Per-call statistics (see cpp/include/heterospec/stats.h for their meaning)."""

    def __init__(self, native: Optional["_core.Stats"] = None, **values):
        if native is not None:
            for name in dir(native):
                if not name.startswith("_"):
                    values.setdefault(name, getattr(native, name))
        self.__dict__.update(values)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in sorted(self.__dict__.items()))
        return f"Stats({inner})"


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (end of generation or a stop string), "length" or "cancelled"
    stats: Stats = field(repr=False)
    trace: list = field(default_factory=list, repr=False)  # (depth, nodes, accepted, rank, entropy, bin, predicted, levels, paths, batch) per step
    # with logprobs=N: per token, (token id, log-probability, [(id, log-probability)] of the N likeliest)
    logprobs: Optional[list] = field(default=None, repr=False)

    @classmethod
    def _from_native(cls, r: "_core.Result", logprobs: bool = False) -> "GenerationResult":
        return cls(text=r.text, tokens=list(r.tokens), finish_reason=r.finish_reason, stats=Stats(r.stats),
                   trace=list(r.trace), logprobs=list(r.logprobs) if logprobs else None)


# Engines not closed yet: closed at interpreter exit, before the native module goes (which
# would otherwise report their objects as leaked).
_live: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for engine in list(_live):
        try:
            engine.close()
        except Exception:
            pass


class EngineBusy(TimeoutError):
    """Another generation held the engine for longer than the caller's queue_timeout."""


class _Queue:
    """First come, first served ownership of an engine, one generation at a time."""

    def __init__(self):
        self._cond = threading.Condition()
        self._waiting: collections.deque = collections.deque()
        self._owner: Optional[object] = None
        self._owner_thread: Optional[int] = None
        self._shut = False

    def acquire(self, timeout: Optional[float], abort: Optional[threading.Event] = None) -> object:
        """Waits for the engine. `abort` set while waiting (then call wake()) gives up: EngineBusy."""
        ticket = object()
        with self._cond:
            if self._owner is not None and self._owner_thread == threading.get_ident():
                raise RuntimeError("this thread's unfinished stream owns the engine: exhaust it or close() it "
                                   "before starting another generation")
            if self._shut:
                raise RuntimeError("this Engine has been closed")
            self._waiting.append(ticket)
            try:
                ok = self._cond.wait_for(lambda: self._shut or (abort is not None and abort.is_set()) or
                                         (self._owner is None and self._waiting[0] is ticket), timeout)
                if self._shut:
                    raise RuntimeError("this Engine was closed while the call waited for it")
                if ok and abort is not None and abort.is_set():
                    raise EngineBusy("the request was abandoned while it waited for the engine")
            except BaseException:
                self._waiting.remove(ticket)
                self._cond.notify_all()
                raise
            if not ok:
                self._waiting.remove(ticket)
                self._cond.notify_all()
                raise EngineBusy(f"the engine stayed busy with another generation for {timeout} s (queue_timeout)")
            self._waiting.popleft()
            self._owner, self._owner_thread = ticket, threading.get_ident()
            return ticket

    def shut(self) -> None:
        """No one gets the engine from now on: waiting callers get RuntimeError."""
        with self._cond:
            self._shut = True
            self._cond.notify_all()

    def wait_idle(self) -> None:
        """Waits until no one owns the engine."""
        with self._cond:
            self._cond.wait_for(lambda: self._owner is None)

    def wake(self) -> None:
        """Lets waiters look at their abort events again."""
        with self._cond:
            self._cond.notify_all()

    def moved(self, ticket: object) -> None:
        """The owner is now advanced from this thread."""
        with self._cond:
            if self._owner is ticket:
                self._owner_thread = threading.get_ident()

    def if_owner(self, ticket: Optional[object], action) -> None:
        """Runs `action` if `ticket` owns the engine (None: if anyone does), atomically with
        handing it on."""
        with self._cond:
            if self._owner is not None and (ticket is None or self._owner is ticket):
                action()

    def release(self, ticket: object) -> None:
        with self._cond:
            if self._owner is ticket:
                self._owner = self._owner_thread = None
                self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._waiting) + (self._owner is not None)


class Stream(Iterator[str]):
    """The text of one generation, piece by piece as it is decoded. It owns its engine until it
    is exhausted, closed (close(), a `with` block) or garbage-collected; `result` holds the
    outcome from then on (finish_reason "cancelled" if closed early). Any thread may close or
    cancel it: a close waits for a step in progress to end."""

    def __init__(self, engine: "Engine", native: "_core.Engine", ticket: object, logprobs: bool):
        self._engine, self._native, self._ticket, self._logprobs = engine, native, ticket, logprobs
        self._lock = threading.Lock()   # one step, or the finish, at a time
        self.result: Optional[GenerationResult] = None

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> str:
        while True:
            with self._lock:
                native = self._native
                if native is None:
                    raise StopIteration
                self._engine._queue.moved(self._ticket)
                try:
                    text, done = native.step()
                except BaseException:
                    self._finish(cancel=True)
                    raise
                if done:
                    self._finish()
            if text:
                return text

    def new_logprobs(self, since: int) -> list:
        """Logprobs (as in GenerationResult) of the tokens generated from index `since` on."""
        native = self._native
        if native is not None:
            return list(native.logprobs_since(since))
        return (self.result.logprobs or [])[since:] if self.result is not None else []

    def close(self) -> None:
        """Stops the generation (if it is still running) and hands the engine to the next caller."""
        self.cancel()   # a step in progress ends sooner
        with self._lock:
            self._finish(cancel=True)

    def cancel(self) -> None:
        """Asks the generation to stop at its next step (from any thread, without waiting): the
        iteration then ends, with finish_reason "cancelled"."""
        native = self._native
        if native is not None:
            self._engine._queue.if_owner(self._ticket, native.cancel)

    def _finish(self, cancel: bool = False) -> None:   # with self._lock held
        native, self._native = self._native, None
        if native is None:
            return
        try:
            if cancel:   # end the native generation now, so that its result is complete
                native.cancel()
                while not native.step()[1]:
                    pass
            self.result = GenerationResult._from_native(native.result(), self._logprobs)
            self._engine._last = self.result
            self._engine._watch_profile(self.result.stats)
        finally:
            self._engine._queue.release(self._ticket)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _set(obj, **values) -> None:
    for name, value in values.items():
        if value is not None:
            setattr(obj, name, value)


# Arguments are checked here for type and for what the native fields can hold (an int32, a
# float), so that a bad one is named with its range instead of reaching the binding; what the
# values mean is validated once, natively (cpp/src/config.cpp).
_INT32_MAX = 2**31 - 1


def _check_int(name: str, value, minimum: int, maximum: int = _INT32_MAX) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in {minimum}..{maximum}, got {value}")


def _check_number(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def _check_flag(name: str, value) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")


def _check_text(name: str, value) -> str:
    """A str that UTF-8 can encode (a lone surrogate cannot)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} holds a lone surrogate ({value[e.start]!r} at {e.start}), "
                         "which is not text UTF-8 can encode") from None
    return value


def _max_threads() -> int:
    """More threads than this only oversubscribe the machine (ggml's own cap is 512)."""
    return min(512, 4 * (os.cpu_count() or 1))


def _check_cache_setting(value):
    """cost_profile_cache: True (the user's cache directory), False (none) or an existing
    directory's path (its last part is created if absent, nothing above it)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"cost_profile_cache must be True, False or a directory path, not {type(value).__name__}")
    path = os.fspath(value)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path) and not os.path.isdir(parent):
        raise ValueError(f"cost_profile_cache: {parent} does not exist; create it or pass another directory")
    return value


def _check_choice(name: str, value, choices: Sequence[str]) -> None:
    if value is None:
        return
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")


def _check_timeout(value) -> None:
    if value is None:
        return
    _check_number("queue_timeout", value)
    if value < 0:
        raise ValueError(f"queue_timeout must be >= 0 seconds (None: no limit), got {value}")


MODES = ("auto", "ar", "chain", "tree", "heterospec")
DRAFTERS = ("auto", "model", "mtp", "eagle3", "dflash", "ngram", "hybrid")


class Engine:
    """A target model, an optional draft model with the same vocabulary, and the decoder.

    >>> with Engine("target.gguf", draft="draft.gguf") as eng:
    ...     print(eng.generate("def fibonacci(n):", max_tokens=64, temperature=0).text)

    `sparse_prefill="sample"` runs SampleAttention (adaptive structured sparse attention) over the
    target's prompt processing of long contexts: `sparse_alpha` (0.95, attention mass kept),
    `sparse_row_frac` (0.05, query rows sampled), `sparse_window_frac` (0.08, local window),
    `sparse_k_max` (0.25, most columns selected, a fraction of the context), `sparse_min_ctx`
    (2048: shorter contexts stay dense), `sparse_dense_tail` (512: the prompt's last tokens run
    dense, as what follows reads them the most); decoding and verification stay dense, and
    `stats.sparse_kept_fraction` reports the share of attention columns kept. A draft model's
    prompt processing runs sparse too, without the dense tail (it only proposes).

    `drafter` says what drafts the trees: "ngram" (continuations of earlier text: the prompt,
    the output so far and earlier requests to this engine; no model needed), "model" (the draft
    model), "mtp" (the target's own MTP/nextn layers, as Qwen3.5-class models ship them),
    "eagle3" (an EAGLE-3 head given as `draft`: a GGUF of architecture eagle3, as llama.cpp's
    converter writes it; it reads three of the target's layers), "dflash" (a DFlash draft given
    as `draft`, architecture dflash: one pass over a block of masked positions gives a
    distribution per position, and the tree joins their top-k into paths ranked by probability,
    DDTree-style), "hybrid" (n-gram branches merged into the draft model's trees, else the
    EAGLE-3 head's or the DFlash draft's, else the MTP head's; the cost-aware allocation drafts
    the n-grams always and pays for model or head passes only where they pay).
    Default: "hybrid" with a draft model, an EAGLE-3 head, a DFlash draft or MTP layers, else
    "ngram".

    Hybrid targets (Qwen3.5/3.6, LFM2, Nemotron-H: recurrent state beside attention) verify trees
    path by path: each path in a sequence of its own with a copy of the state (up to
    min(max_nodes, 4) paths while the copies stay within 1 GiB), rejected drafts rolled back by
    llama.cpp (n_rs_seq, min(max_nodes, 16) planes); the cost-aware mode prices the padded batch.
    For recurrent models the pin cannot roll back (mamba, mamba2, ...) steps verify chains over a
    host checkpoint of the state, restored with the committed tokens replayed; the cost-aware mode
    prices the copies, and mode="tree" says why not.

    One generation runs at a time per engine; concurrent callers queue for it (see the module's
    threading contract). Native work runs with the GIL released.
    """

    def __init__(self, model: Union[str, os.PathLike], draft: Union[str, os.PathLike, None] = None, *,
                 n_gpu_layers: Optional[int] = None, n_gpu_layers_draft: Optional[int] = None,
                 n_ctx: Optional[int] = None, n_batch: Optional[int] = None,
                 n_threads: Optional[int] = None, n_threads_batch: Optional[int] = None,
                 flash_attn: Union[bool, str, None] = None,
                 cache_type_k: Optional[str] = None, cache_type_v: Optional[str] = None,
                 drafter: Optional[str] = None, max_nodes: Optional[int] = None, verbose: Optional[bool] = None,
                 cost_profile_cache: Union[bool, str, os.PathLike] = True,
                 sparse_prefill: Optional[str] = None, sparse_alpha: Optional[float] = None,
                 sparse_row_frac: Optional[float] = None, sparse_window_frac: Optional[float] = None,
                 sparse_k_max: Optional[float] = None, sparse_min_ctx: Optional[int] = None,
                 sparse_dense_tail: Optional[int] = None):
        _check_int("n_ctx", n_ctx, 0)
        _check_int("n_batch", n_batch, 1)
        _check_int("n_threads", n_threads, 0, _max_threads())
        _check_int("n_threads_batch", n_threads_batch, 0, _max_threads())
        _check_int("n_gpu_layers", n_gpu_layers, -1)
        _check_int("n_gpu_layers_draft", n_gpu_layers_draft, -1)
        _check_int("max_nodes", max_nodes, 1)
        _check_choice("drafter", drafter, DRAFTERS)
        _check_flag("verbose", verbose)
        for name, value in (("sparse_alpha", sparse_alpha), ("sparse_row_frac", sparse_row_frac),
                            ("sparse_window_frac", sparse_window_frac), ("sparse_k_max", sparse_k_max)):
            _check_number(name, value)
        for name, value in (("sparse_prefill", sparse_prefill), ("cache_type_k", cache_type_k),
                            ("cache_type_v", cache_type_v)):
            if value is not None:
                _check_text(name, value)
        if flash_attn is not None and not isinstance(flash_attn, bool):
            _check_choice("flash_attn", flash_attn, ("on", "off", "auto"))
        cost_profile_cache = _check_cache_setting(cost_profile_cache)
        if isinstance(flash_attn, bool):
            flash_attn = "on" if flash_attn else "off"
        opts = _core.EngineOptions()
        opts.target.path = os.fspath(model)
        _set(opts.target, n_gpu_layers=n_gpu_layers)
        if draft is not None:
            opts.draft.path = os.fspath(draft)
            _set(opts.draft, n_gpu_layers=n_gpu_layers_draft if n_gpu_layers_draft is not None else n_gpu_layers)
        _check_int("sparse_min_ctx", sparse_min_ctx, 0)
        _check_int("sparse_dense_tail", sparse_dense_tail, 0)
        _set(opts.sparse_prefill, mode=sparse_prefill, alpha=sparse_alpha, row_frac=sparse_row_frac,
             window_frac=sparse_window_frac, k_max_frac=sparse_k_max, min_ctx=sparse_min_ctx,
             dense_tail=sparse_dense_tail)
        _set(opts, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, n_threads_batch=n_threads_batch,
             flash_attn=flash_attn, cache_type_k=cache_type_k, cache_type_v=cache_type_v, drafter=drafter,
             max_nodes=max_nodes, verbose=verbose)
        self._native: Optional[_core.Engine] = _core.Engine(opts)
        self._paths = (opts.target.path, opts.draft.path if draft is not None else None)
        self._profile_cache = cost_profile_cache
        self._profile_ready = False
        self._profile_stale: Optional[str] = None   # why the next generation measures the profile again
        self._remeasured = False
        self._engine_opts = {"n_threads": opts.n_threads, "n_batch": opts.n_batch, "n_ctx": self._native.n_ctx,
                             "n_gpu_layers": opts.target.n_gpu_layers, "flash_attn": opts.flash_attn,
                             "max_nodes": opts.max_nodes}
        self._last: Optional[GenerationResult] = None
        self._queue = _Queue()
        self._stream_ref: Optional[weakref.ref] = None   # the stream that owns the engine, if any
        _live.add(self)

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: Optional[str] = None, *, draft_repo_id: Optional[str] = None,
                        draft_filename: Optional[str] = None, **engine_options) -> "Engine":
        """An engine on a model from the Hugging Face Hub (the `[hf]` extra), downloaded once into
        its cache: `repo_id` "owner/name" or "owner/name:QUANT" (llama.cpp's -hf), `filename` a
        file name or glob ("*Q8_0.gguf", as llama-cpp-python's); default Q4_K_M, else the first
        GGUF. `draft_repo_id`/`draft_filename`: the draft model, the same way. Other keywords go
        to Engine(). Raises heterospec.hub.HubError (an OSError) saying what to do."""
        from .hub import fetch
        model = fetch(repo_id, filename)
        draft = fetch(draft_repo_id, draft_filename) if draft_repo_id is not None else engine_options.pop("draft", None)
        return cls(model, draft, **engine_options)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Frees the models and contexts. A generation running in another thread is cancelled
        and waited for (it ends with finish_reason "cancelled"); calls waiting for the engine get
        RuntimeError. The engine cannot be used afterwards."""
        if self._native is None:
            return
        self._queue.shut()
        stream = self._stream_ref() if self._stream_ref is not None else None
        if stream is not None:
            stream.close()   # from any thread: waits for the step in progress, then ends the generation
        self._queue.wait_idle()   # a score() in progress
        self._native = None
        _live.discard(self)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _engine(self) -> "_core.Engine":
        if self._native is None:
            raise RuntimeError("this Engine has been closed")
        return self._native

    # -- model facts ---------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return self._engine.n_vocab

    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    @property
    def description(self) -> str:
        """llama.cpp's one-line description of the target (architecture, size, weight type)."""
        return self._engine.description

    @property
    def has_draft(self) -> bool:
        return self._engine.has_draft

    @property
    def drafters(self) -> list:
        """The drafters this engine can speculate with, e.g. ["model", "ngram", "hybrid"] with a
        draft model, ["mtp", "ngram", "hybrid"] for a target with MTP layers; empty where the target
        cannot verify drafts (then only plain decoding runs)."""
        return list(self._engine.drafters)

    @property
    def has_mtp(self) -> bool:
        """Whether the target's own MTP (nextn) head runs here (drafter="mtp")."""
        return self._engine.has_mtp

    @property
    def can_speculate(self) -> bool:
        """Whether the target can verify drafts. Attention-only targets verify trees; recurrent and
        hybrid ones verify chains, rolled back by llama.cpp (qwen35, lfm2, nemotron_h, ...) or over
        host checkpoints of their state where the pin has no rollback (mamba, mamba2, ...)."""
        return self._engine.can_speculate

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends generation (EOS, EOT and the like)."""
        return self._engine.is_eog(int(token))

    # -- text ----------------------------------------------------------------------------------

    def tokenize(self, text: Union[str, bytes], add_special: bool = True, parse_special: bool = False) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return list(self._engine.tokenize(_check_text("text", text), add_special, parse_special))

    def token_piece(self, token: int) -> bytes:
        """A token's own bytes (special tokens spelled out; maybe part of a UTF-8 character)."""
        return self._engine.token_piece(int(token))

    def detokenize(self, tokens: Iterable[int], special: bool = False) -> str:
        return self._engine.detokenize([int(t) for t in tokens], special)

    @property
    def chat_template(self) -> Optional[str]:
        """The Jinja chat template stored in the target GGUF (None: it has none)."""
        return self._engine.chat_template or None

    def format_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    chat_template: Optional[str] = None, tools: Optional[Sequence[Mapping]] = None,
                    **template_kwargs: Any) -> str:
        """The prompt for `messages` ([{"role": ..., "content": ...}, ...]).

        The template is `chat_template` (Jinja source, or a llama.cpp built-in name such as
        "chatml"), else the GGUF's own. Jinja templates are rendered with jinja2 (sandboxed, as
        Hugging Face does) with bos_token, eos_token, add_generation_prompt, `tools` and any
        `template_kwargs`; llama.cpp's built-in templates are the fallback for models without a
        template and where jinja2 is not installed. Raises ValueError (ChatTemplateError for a
        template that fails)."""
        msgs = _chat.normalize_messages(messages)
        template = chat_template if chat_template is not None else self.chat_template
        if template is not None and not isinstance(template, str):
            raise TypeError("chat_template must be a string")
        if template and _chat.is_jinja(template):
            if _chat.jinja_available():
                return self._render_jinja(template, msgs, add_generation_prompt, tools, template_kwargs)
            warnings.warn("jinja2 is not installed (pip install 'heterospec[chat]'): the chat template is "
                          "approximated by llama.cpp's built-in templates", RuntimeWarning, stacklevel=2)
        elif tools:
            raise ValueError("tools need a Jinja chat template that renders them")
        pairs = [(m["role"], m["content"] or "") for m in msgs]
        return self._engine.format_chat(pairs, add_generation_prompt, template or "")

    def _render_jinja(self, template, msgs, add_generation_prompt, tools, extra) -> str:
        bos, eos, add_bos, _ = self._engine.special_tokens
        text = lambda t: self.detokenize([t], special=True) if t >= 0 else ""
        bos_text = text(bos)
        out = _chat.render(template, msgs, add_generation_prompt=add_generation_prompt, bos_token=bos_text,
                           eos_token=text(eos), tools=tools, **extra)
        if add_bos and bos_text and out.startswith(bos_text):
            out = out[len(bos_text):]   # tokenizing the prompt adds BOS: keep one
        return out

    # -- generation ----------------------------------------------------------------------------

    def clear_ngram_memory(self) -> None:
        """Forgets earlier requests: n-gram drafts then come from the current prompt and output
        only. (A repeated request is otherwise drafted whole from the engine's memory.)"""
        self._engine.clear_ngram_memory()

    def _ensure_profile(self, params) -> None:
        """The cost-aware budget needs the machine's cost profile: measured once per model pair and
        machine (about a second), then cached on disk (see heterospec/profile_cache.py)."""
        mode = params.spec.mode
        if self._profile_ready or not params.spec.cost_aware or not self._engine.can_speculate:
            return
        if mode not in ("heterospec", "auto"):   # auto is heterospec
            return
        from .profile_cache import cached_profile
        fresh, self._profile_stale = self._profile_stale, None
        announce = lambda message: print(f"heterospec: {fresh + '; ' if fresh else ''}{message}", file=sys.stderr,
                                         flush=True)
        cached_profile(self._engine, self._paths, self._engine_opts, params.spec.width, self._profile_cache,
                       fresh=fresh is not None, announce=announce)
        self._profile_ready = True
        self._remeasured |= fresh is not None

    def _watch_profile(self, stats: Stats) -> None:
        """A profile measured on a busy machine must not stay wrong: when a generation's target
        passes cost far from what it says (over enough steps), the next generation measures again
        (once per engine, so that a machine whose costs really move is not measured forever)."""
        scale = getattr(stats, "profile_scale", 1.0)
        if self._profile_ready and not self._remeasured and stats.steps >= 32 and not 0.5 <= scale <= 2.0:
            self._profile_ready = False
            self._profile_stale = f"target passes took {scale:.2g}x the time the stored cost profile says"

    def cost_profile(self) -> dict:
        """What verification and drafting cost on this machine, as the cost-aware mode sees it:
        {"sizes": batch sizes n, "verify_ms": t_verify(n), "draft_level_ms": one draft pass (the
        draft model's, else the target's MTP head's; 0 for n-grams alone)}. Measured once per model pair and machine, then cached."""
        params = self._params(mode="heterospec")
        ticket = self._queue.acquire(None)
        try:
            self._ensure_profile(params)
            sizes, verify_ms, draft_ms = self._engine.cost_profile(params.spec.width)
        finally:
            self._queue.release(ticket)
        return {"sizes": list(sizes), "verify_ms": list(verify_ms), "draft_level_ms": draft_ms}

    def _prompt_tokens(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(_check_text("the prompt", prompt), add_special=True, parse_special=True)
        if isinstance(prompt, (bytes, bytearray)):
            raise TypeError("a bytes prompt is neither text nor token ids: decode it to a str, or pass a list of ints")
        try:
            tokens = list(prompt)
        except TypeError:
            raise TypeError(f"the prompt must be a string or a sequence of token ids, not {type(prompt).__name__}") from None
        ids = []
        for t in tokens:   # ints, numpy's included; the range is checked natively
            try:
                if isinstance(t, bool):
                    raise TypeError
                ids.append(operator.index(t))
            except TypeError:
                raise TypeError(f"prompt token ids must be integers, not {type(t).__name__}") from None
        for t in ids:
            _check_int("a prompt token id", t, -(2**31))
        return ids

    def _params(self, max_tokens=None, temperature=None, top_k=None, top_p=None, min_p=None,
                repeat_penalty=None, repeat_last_n=None, seed=None, stop=None, ignore_eos=None,
                mode=None, drafter=None, depth=None, branching=None, width=None, budget=None, n_max=None, p_min=None,
                trace=None, policy=None, force_policy=False, cost_aware=None, cache_prompt=None, logprobs=None,
                sparse_prefill=None):
        p = _core.GenerateParams()
        if policy is not None:
            from .policy import check_pair, load_policy
            pol = load_policy(policy)
            if self._paths[1] is not None:
                check_pair(pol, *self._paths, force=force_policy)
            p.spec.policy_thresholds = [float(x) for x in pol["thresholds"]]
            p.spec.policy_gamma = [float(x) for x in pol.get("gamma", (0.3, 0.6, 1.0))]
        _check_choice("mode", mode, MODES)
        _check_choice("drafter", drafter, DRAFTERS)
        for name, value in (("depth", depth), ("branching", branching), ("width", width), ("n_max", n_max)):
            _check_int(name, value, 0)
        _check_int("budget", budget, 1)   # 0 nodes verified is plain decoding: mode="ar"
        for name, value in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p),
                            ("repeat_penalty", repeat_penalty), ("p_min", p_min)):
            _check_number(name, value)
        for name, value in (("ignore_eos", ignore_eos), ("trace", trace), ("cost_aware", cost_aware),
                            ("cache_prompt", cache_prompt), ("force_policy", force_policy)):
            _check_flag(name, value)
        _check_int("repeat_last_n", repeat_last_n, -1)
        _set(p.spec, mode=mode, drafter=drafter, depth=depth, branching=branching, width=width, budget=budget, n_max=n_max,
             p_min=p_min, trace=trace, cost_aware=cost_aware)
        if max_tokens is not None:
            _check_int("max_tokens", max_tokens, -1)
        _check_int("top_k", top_k, -(2**31))  # <= 0 disables top-k
        if seed is not None:
            _check_int("seed", seed, -1, _RANDOM_SEED - 1)
            if seed == -1:
                seed = None  # llama.cpp's convention for "random"
            elif seed >= _RANDOM_SEED:
                raise ValueError(f"seed must be below 2**64 - 1, got {seed}")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None:
            if not isinstance(stop, (list, tuple)):
                raise TypeError(f"stop must be a string or a list of strings, not {type(stop).__name__}")
            stop = [_check_text("stop", x) for x in stop]
        if logprobs is True:
            logprobs = 0
        elif logprobs is False:
            logprobs = None
        _check_int("logprobs", logprobs, 0, 20)
        if sparse_prefill is not None:
            _check_text("sparse_prefill", sparse_prefill)   # its values are checked natively
        _set(p, max_tokens=max_tokens, stop=list(stop) if stop is not None else None, ignore_eos=ignore_eos,
             cache_prompt=cache_prompt, logprobs=logprobs, sparse_prefill=sparse_prefill)
        _set(p.sampling, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
             repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)
        return p

    def generate(self, prompt: Prompt, *, max_tokens: Optional[int] = None, temperature: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, min_p: Optional[float] = None,
                 repeat_penalty: Optional[float] = None, repeat_last_n: Optional[int] = None,
                 seed: Optional[int] = None, stop: Union[str, Sequence[str], None] = None,
                 ignore_eos: Optional[bool] = None, mode: Optional[str] = None, drafter: Optional[str] = None,
                 depth: Optional[int] = None, branching: Optional[int] = None, width: Optional[int] = None,
                 budget: Optional[int] = None, n_max: Optional[int] = None, p_min: Optional[float] = None,
                 trace: Optional[bool] = None, policy=None, force_policy: bool = False,
                 cost_aware: Optional[bool] = None, cache_prompt: Optional[bool] = None,
                 logprobs: Union[int, bool, None] = None, sparse_prefill: Optional[str] = None,
                 queue_timeout: Optional[float] = None) -> GenerationResult:
        """Generates a continuation of `prompt` (text, or token ids).

        Sampling defaults: max_tokens=256 (-1: until end of generation or a full context),
        temperature=0.8 (<= 0: greedy), top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0 (off),
        seed=random.

        Speculation: mode="ar" (plain), "chain" (llama.cpp-style draft chain: n_max=3, p_min=0.0, its defaults)
        "tree" (depth=4, branching=4, width=4, budget=7 nodes verified per step) or "heterospec"
        (the tree, allocated per step by its entropy bin; `policy`: a policy JSON file from
        `heterospec calibrate`, or its dict; default: built-in thresholds; a policy fitted for
        another model pair is refused unless force_policy=True; cost_aware=True, the default,
        chooses each step's depth and verified nodes from measured costs and acceptance
        calibrated per entropy bin, and runs plain steps where speculation does not pay;
        cost_aware=False keeps the paper's fixed gamma).
        The default is "heterospec" (cost-aware), which runs plain steps wherever speculation
        would not pay; `drafter` overrides the engine's drafter for this call. The output is the
        same in every mode and with every drafter: token
        for token when greedy, in distribution when sampling. trace=True records one
        (depth, nodes, accepted, rank, entropy, bin, predicted tokens, draft passes) tuple per step in
        `result.trace`.

        cache_prompt=True (the default) keeps the KV of the longest prefix this prompt shares with
        the previous call's text and processes only the rest (`stats.cached_tokens`); the output
        is the same either way. logprobs=N (0..20) reports each token's log-probability and the N
        likeliest alternatives in `result.logprobs`. sparse_prefill="off" or "sample" switches the
        engine's sparse prefill for this call (with its sparse options). queue_timeout: seconds to wait while another
        generation owns the engine (None: no limit), then EngineBusy.
        """
        with self.stream(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         min_p=min_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed,
                         stop=stop, ignore_eos=ignore_eos, mode=mode, drafter=drafter, depth=depth,
                         branching=branching, width=width, budget=budget, n_max=n_max, p_min=p_min, trace=trace,
                         policy=policy, force_policy=force_policy, cost_aware=cost_aware,
                         cache_prompt=cache_prompt, logprobs=logprobs, sparse_prefill=sparse_prefill,
                         queue_timeout=queue_timeout) as s:
            for _ in s:   # a step at a time, so that Ctrl-C and cancel() stop it between steps
                pass
        return s.result

    def stream(self, prompt: Prompt, *, queue_timeout: Optional[float] = None,
               abort: Optional[threading.Event] = None, **kwargs) -> Stream:
        """Like generate(), but returns a Stream that yields the text as it is decoded; it owns
        the engine until it is exhausted or closed. `stream.result` (and `last_result`) holds
        the outcome from then on. `abort`: an Event that, set while this call waits for the
        engine (then call `wake_queue()`), gives up the wait with EngineBusy."""
        _check_timeout(queue_timeout)
        params, tokens = self.check(prompt, **kwargs)
        engine = self._engine
        ticket = self._queue.acquire(queue_timeout, abort)
        try:
            self._ensure_profile(params)
            engine.start(tokens, params)
            stream = Stream(self, engine, ticket, logprobs=params.logprobs >= 0)
            self._stream_ref = weakref.ref(stream)
            return stream
        except BaseException:
            self._queue.release(ticket)
            raise

    def check(self, prompt: Prompt, **kwargs):
        """Checks a request as generate() would, without running it (ValueError, TypeError).
        Returns the native parameters and the prompt's tokens."""
        params = self._params(**kwargs)
        tokens = self._prompt_tokens(prompt)
        self._engine.check(tokens, params)
        return params, tokens

    def wake_queue(self) -> None:
        """Lets callers waiting for the engine look at their `abort` events."""
        self._queue.wake()

    def score(self, prompt: Prompt, continuation: Sequence[int], *, cache_prompt: bool = False,
              sparse_prefill: Optional[str] = None, queue_timeout: Optional[float] = None):
        """Teacher-forced scoring: processes `prompt` as plain decoding would (with the engine's
        sparse prefill; with `cache_prompt`, keeping the prefix the cache holds from an earlier
        call), then feeds `continuation` token by token.
        Returns (log-probabilities, a numpy array of len(continuation) x n_vocab, row i before
        continuation[i]; Stats of the prompt: prompt_ms, sparse_kept_fraction). sparse_prefill:
        "off" or "sample" for this call, as in generate()."""
        _check_flag("cache_prompt", cache_prompt)
        if sparse_prefill is not None:
            _check_text("sparse_prefill", sparse_prefill)
        tokens = self._prompt_tokens(prompt)
        ticket = self._queue.acquire(queue_timeout)
        try:
            rows, stats = self._engine.score(tokens, [int(t) for t in continuation], bool(cache_prompt),
                                             sparse_prefill or "")
        finally:
            self._queue.release(ticket)
        return rows, Stats(stats)

    def cancel(self) -> None:
        """Stops the generation that owns the engine now (from any thread, e.g. a GUI's stop
        button) at its next step; it ends with finish_reason "cancelled". Queued callers are not
        affected."""
        native = self._native
        if native is not None:
            self._queue.if_owner(None, native.cancel)

    @property
    def queue_length(self) -> int:
        """Generations running or waiting for this engine."""
        return len(self._queue)

    def chat(self, messages: Sequence[Mapping[str, Any]], *, chat_template: Optional[str] = None,
             tools: Optional[Sequence[Mapping]] = None, stream: bool = False, **kwargs):
        """Formats `messages` with the chat template (see format_chat) and generates the reply.
        Returns a GenerationResult, or a Stream when stream=True."""
        prompt = self.format_chat(messages, add_generation_prompt=True, chat_template=chat_template, tools=tools)
        return self.stream(prompt, **kwargs) if stream else self.generate(prompt, **kwargs)

    @property
    def last_result(self) -> Optional[GenerationResult]:
        """The result of the most recent generate(), chat() or finished stream()."""
        return self._last
