"""The Python face of the native engine.

Options are passed through to the native option structs: a keyword left as None keeps the
engine's default (defined once, in cpp/include/heterospec/config.h).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

from . import _core

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
    finish_reason: str  # "stop" (end of generation or a stop string) or "length"
    stats: Stats = field(repr=False)
    trace: list = field(default_factory=list, repr=False)  # (depth, nodes, accepted, rank, entropy, bin, predicted, levels) per step

    @classmethod
    def _from_native(cls, r: "_core.Result") -> "GenerationResult":
        return cls(text=r.text, tokens=list(r.tokens), finish_reason=r.finish_reason, stats=Stats(r.stats),
                   trace=list(r.trace))


def _set(obj, **values) -> None:
    for name, value in values.items():
        if value is not None:
            setattr(obj, name, value)


def _check_int(name: str, value, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


class Engine:
    """A target model, an optional draft model with the same vocabulary, and the decoder.

    >>> with Engine("target.gguf", draft="draft.gguf") as eng:
    ...     print(eng.generate("def fibonacci(n):", max_tokens=64, temperature=0).text)

    `drafter` says what drafts the trees: "ngram" (continuations of earlier text: the prompt,
    the output so far and earlier requests to this engine; no model needed), "model" (the draft
    model), "hybrid" (both in one tree). Default: "hybrid" with a draft model (it measured best),
    else "ngram".

    One generation runs at a time per engine; native work runs with the GIL released.
    """

    def __init__(self, model: Union[str, os.PathLike], draft: Union[str, os.PathLike, None] = None, *,
                 n_gpu_layers: Optional[int] = None, n_gpu_layers_draft: Optional[int] = None,
                 n_ctx: Optional[int] = None, n_batch: Optional[int] = None,
                 n_threads: Optional[int] = None, n_threads_batch: Optional[int] = None,
                 flash_attn: Union[bool, str, None] = None,
                 cache_type_k: Optional[str] = None, cache_type_v: Optional[str] = None,
                 drafter: Optional[str] = None, max_nodes: Optional[int] = None, verbose: Optional[bool] = None,
                 cost_profile_cache: Union[bool, str, os.PathLike] = True):
        _check_int("n_ctx", n_ctx, 0)
        _check_int("n_batch", n_batch, 1)
        _check_int("n_threads", n_threads, 0)
        _check_int("n_threads_batch", n_threads_batch, 0)
        _check_int("n_gpu_layers", n_gpu_layers, -1)
        _check_int("n_gpu_layers_draft", n_gpu_layers_draft, -1)
        _check_int("max_nodes", max_nodes, 1)
        if isinstance(flash_attn, bool):
            flash_attn = "on" if flash_attn else "off"
        opts = _core.EngineOptions()
        opts.target.path = os.fspath(model)
        _set(opts.target, n_gpu_layers=n_gpu_layers)
        if draft is not None:
            opts.draft.path = os.fspath(draft)
            _set(opts.draft, n_gpu_layers=n_gpu_layers_draft if n_gpu_layers_draft is not None else n_gpu_layers)
        _set(opts, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, n_threads_batch=n_threads_batch,
             flash_attn=flash_attn, cache_type_k=cache_type_k, cache_type_v=cache_type_v, drafter=drafter,
             max_nodes=max_nodes, verbose=verbose)
        self._native: Optional[_core.Engine] = _core.Engine(opts)
        self._paths = (opts.target.path, opts.draft.path if draft is not None else None)
        self._profile_cache = cost_profile_cache
        self._profile_ready = False
        self._engine_opts = {"n_threads": opts.n_threads, "n_batch": opts.n_batch, "n_ctx": self._native.n_ctx,
                             "n_gpu_layers": opts.target.n_gpu_layers, "flash_attn": opts.flash_attn,
                             "max_nodes": opts.max_nodes}
        self._last: Optional[GenerationResult] = None

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Frees the models and contexts. The engine cannot be used afterwards."""
        self._native = None

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
    def can_speculate(self) -> bool:
        """False for targets whose memory cannot hold a draft tree (recurrent, hybrid): plain only."""
        return self._engine.can_speculate

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends generation (EOS, EOT and the like)."""
        return self._engine.is_eog(int(token))

    # -- text ----------------------------------------------------------------------------------

    def tokenize(self, text: Union[str, bytes], add_special: bool = True, parse_special: bool = False) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return list(self._engine.tokenize(text, add_special, parse_special))

    def detokenize(self, tokens: Iterable[int], special: bool = False) -> str:
        return self._engine.detokenize([int(t) for t in tokens], special)

    def format_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True,
                    chat_template: Optional[str] = None) -> str:
        """The prompt for `messages` ([{"role": ..., "content": ...}, ...]) per the model's template."""
        pairs = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must be a mapping with 'role' and 'content'")
            pairs.append((str(m["role"]), str(m["content"])))
        if not pairs:
            raise ValueError("messages is empty")
        return self._engine.format_chat(pairs, add_generation_prompt, chat_template or "")

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
        cached_profile(self._engine, self._paths, self._engine_opts, params.spec.width, self._profile_cache)
        self._profile_ready = True

    def cost_profile(self) -> dict:
        """What verification and drafting cost on this machine, as the cost-aware mode sees it:
        {"sizes": batch sizes n, "verify_ms": t_verify(n), "draft_level_ms": one draft pass (0
        without a draft model)}. Measured once per model pair and machine, then cached."""
        params = self._params(mode="heterospec")
        self._ensure_profile(params)
        sizes, verify_ms, draft_ms = self._engine.cost_profile(params.spec.width)
        return {"sizes": list(sizes), "verify_ms": list(verify_ms), "draft_level_ms": draft_ms}

    def _prompt_tokens(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(prompt, add_special=True, parse_special=True)
        return [int(t) for t in prompt]

    def _params(self, max_tokens=None, temperature=None, top_k=None, top_p=None, min_p=None,
                repeat_penalty=None, repeat_last_n=None, seed=None, stop=None, ignore_eos=None,
                mode=None, drafter=None, depth=None, branching=None, width=None, budget=None, n_max=None, p_min=None,
                trace=None, policy=None, force_policy=False, cost_aware=None):
        p = _core.GenerateParams()
        if policy is not None:
            from .policy import check_pair, load_policy
            pol = load_policy(policy)
            if self._paths[1] is not None:
                check_pair(pol, *self._paths, force=force_policy)
            p.spec.policy_thresholds = [float(x) for x in pol["thresholds"]]
            p.spec.policy_gamma = [float(x) for x in pol.get("gamma", (0.3, 0.6, 1.0))]
        for name, value in (("depth", depth), ("branching", branching), ("width", width), ("budget", budget),
                            ("n_max", n_max)):
            _check_int(name, value, 0)
        _set(p.spec, mode=mode, drafter=drafter, depth=depth, branching=branching, width=width, budget=budget, n_max=n_max,
             p_min=p_min, trace=trace, cost_aware=cost_aware)
        if max_tokens is not None:
            _check_int("max_tokens", max_tokens, -1)
        _check_int("top_k", top_k, -(2**31))  # <= 0 disables top-k
        if seed is not None:
            _check_int("seed", seed, -1)
            if seed == -1:
                seed = None  # llama.cpp's convention for "random"
            elif seed >= _RANDOM_SEED:
                raise ValueError(f"seed must be below 2**64 - 1, got {seed}")
        if isinstance(stop, str):
            stop = [stop]
        _set(p, max_tokens=max_tokens, stop=list(stop) if stop is not None else None, ignore_eos=ignore_eos)
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
                 cost_aware: Optional[bool] = None) -> GenerationResult:
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
        """
        params = self._params(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty,
                              repeat_last_n, seed, stop, ignore_eos, mode, drafter, depth, branching, width,
                              budget, n_max, p_min, trace, policy, force_policy, cost_aware)
        tokens = self._prompt_tokens(prompt)
        self._ensure_profile(params)
        self._last = GenerationResult._from_native(self._engine.generate(tokens, params))
        return self._last

    def stream(self, prompt: Prompt, **kwargs) -> Iterator[str]:
        """Like generate(), but yields the text as it is decoded. `last_result` holds the
        outcome once the iterator is exhausted."""
        params = self._params(**kwargs)
        tokens = self._prompt_tokens(prompt)
        self._ensure_profile(params)
        engine = self._engine
        engine.start(tokens, params)
        return self._drain(engine)

    def _drain(self, engine: "_core.Engine") -> Iterator[str]:
        while True:
            text, done = engine.step()
            if text:
                yield text
            if done:
                break
        self._last = GenerationResult._from_native(engine.result())

    def chat(self, messages: Sequence[Mapping[str, str]], *, chat_template: Optional[str] = None,
             stream: bool = False, **kwargs):
        """Formats `messages` with the model's chat template and generates the reply.
        Returns a GenerationResult, or an iterator of text pieces when stream=True."""
        prompt = self.format_chat(messages, add_generation_prompt=True, chat_template=chat_template)
        return self.stream(prompt, **kwargs) if stream else self.generate(prompt, **kwargs)

    @property
    def last_result(self) -> Optional[GenerationResult]:
        """The result of the most recent generate(), chat() or fully consumed stream()."""
        return self._last
