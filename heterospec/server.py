"""An OpenAI-compatible HTTP server on one Engine: `heterospec serve` (the `[server]` extra:
FastAPI, uvicorn, sse-starlette, prometheus-client).

Endpoints: /v1/chat/completions, /v1/completions (streaming as server-sent events ending with
`data: [DONE]`), /v1/models, /health, /metrics (Prometheus text). Requests queue on the one
engine (see heterospec/engine.py's threading contract); each runs in a worker thread and a
client that goes away cancels its generation at the next step. Errors are OpenAI's error objects.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from typing import Any, AsyncIterator, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest)
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator
from sse_starlette.sse import EventSourceResponse

from .chat_template import ChatTemplateError
from .engine import Engine, EngineBusy, GenerationResult

# -- requests: OpenAI's fields, plus llama-server's and HeteroSpec's own (speculation) ------------


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    max_tokens: Optional[StrictInt] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[StrictInt] = None
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: Optional[float] = Field(default=None, gt=0.0)
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    stop: Union[str, list[str], None] = None
    seed: Optional[StrictInt] = None
    n: Optional[StrictInt] = None
    stream: Optional[StrictBool] = None
    stream_options: Optional[dict] = None
    ignore_eos: Optional[StrictBool] = None
    cache_prompt: Optional[StrictBool] = None
    # speculation (HeteroSpec): the output is the same whatever these say
    mode: Optional[Literal["ar", "chain", "tree", "heterospec"]] = None
    drafter: Optional[Literal["model", "mtp", "eagle3", "dflash", "ngram", "hybrid"]] = None
    depth: Optional[StrictInt] = Field(default=None, ge=1, le=64)
    branching: Optional[StrictInt] = Field(default=None, ge=1, le=64)
    width: Optional[StrictInt] = Field(default=None, ge=1, le=64)
    budget: Optional[StrictInt] = Field(default=None, ge=1)
    n_max: Optional[StrictInt] = Field(default=None, ge=0, le=64)
    p_min: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    cost_aware: Optional[StrictBool] = None

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data):
        bad = _surrogate_path(data)
        if bad is not None:
            raise ValueError(f"{bad or 'the body'} holds a lone surrogate (\\ud800-\\udfff), which is not text")
        return data

    @field_validator("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
                     "p_min", mode="before")
    @classmethod
    def _number(cls, v):
        if isinstance(v, bool):
            raise ValueError("must be a number, not a boolean")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else v
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop takes at most 4 non-empty strings")
        return v

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v):
        if v is not None and v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v):
        if v:
            raise ValueError("presence and frequency penalties are not supported (use repeat_penalty)")
        return v


_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _surrogate_path(value, path: str = "") -> Optional[str]:
    """Where in a decoded JSON value a lone surrogate sits (a str UTF-8 cannot encode), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            if _surrogate_path(k, where) is not None:
                return where
            found = _surrogate_path(v, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_path(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


class ChatRequest(_Common):
    messages: list[dict] = Field(min_length=1)
    max_completion_tokens: Optional[StrictInt] = Field(default=None, ge=1)
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[StrictInt] = Field(default=None, ge=0, le=20)
    tools: Optional[list[dict]] = None
    tool_choice: Union[str, dict, None] = None
    response_format: Optional[dict] = None
    chat_template_kwargs: Optional[dict] = None

    @field_validator("messages")
    @classmethod
    def _roles(cls, v):
        for i, m in enumerate(v):
            role = m.get("role")
            if role not in _ROLES:
                raise ValueError(f"message {i}: role must be one of {', '.join(_ROLES)}, not {role!r}")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v):
        if v not in (None, "none", "auto"):
            raise ValueError("tool_choice may be 'none' or 'auto': tools reach the chat template, but tool calls "
                             "are not parsed out of the reply")
        return v

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v):
        if v is not None and v.get("type") != "text":
            raise ValueError("only response_format {'type': 'text'} is supported")
        return v


class CompletionRequest(_Common):
    prompt: Union[str, list[StrictInt], list[str]]
    logprobs: Optional[StrictInt] = Field(default=None, ge=0, le=5)
    echo: Optional[StrictBool] = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], str):
            if len(v) != 1:
                raise ValueError("only one prompt per request is supported")
            v = v[0]
        if not v:
            raise ValueError("the prompt is empty")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v):
        if v:
            raise ValueError("echo is not supported")
        return v


# -- errors --------------------------------------------------------------------------------------


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return _AsciiJSON(status_code=self.status, content=error_body(self.message, self.type, self.param, self.code))


class _AsciiJSON(JSONResponse):
    """JSON with non-ASCII escaped: an error message that quotes a request never fails to encode."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_body(message: str, type_: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# -- metrics -------------------------------------------------------------------------------------


class _Metrics:
    def __init__(self, engine: Engine):
        disable_created_metrics()   # the *_created series only add noise to a scrape
        self.registry = r = CollectorRegistry()
        self.requests = Counter("heterospec_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("heterospec_prompt_tokens", "prompt tokens", registry=r)
        self.cached_tokens = Counter("heterospec_prompt_tokens_cached", "prompt tokens reused from the prompt cache", registry=r)
        self.generated = Counter("heterospec_tokens_predicted", "generated tokens", registry=r)
        self.draft_n = Counter("heterospec_draft_tokens", "draft tokens verified", registry=r)
        self.draft_accepted = Counter("heterospec_draft_tokens_accepted", "draft tokens accepted", registry=r)
        self.cancelled = Counter("heterospec_generations_cancelled", "generations cancelled by a client leaving", registry=r)
        self.latency = Histogram("heterospec_request_duration_seconds", "generation requests, end to end", registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
        queue = Gauge("heterospec_requests_queued", "generations running or waiting for the engine", registry=r)
        queue.set_function(lambda: engine.queue_length)

    def observe(self, r: GenerationResult) -> None:
        s = r.stats
        self.prompt_tokens.inc(s.prompt_tokens)
        self.cached_tokens.inc(s.cached_tokens)
        self.generated.inc(s.generated_tokens)
        self.draft_n.inc(s.nodes_verified)
        self.draft_accepted.inc(s.accepted_draft)


# -- generation in a worker thread ---------------------------------------------------------------


class _Job:
    """One generation, run in a worker thread; its events ("text", piece, logprobs), ("done",
    result) or ("error", exception) reach the event loop through an asyncio queue."""

    def __init__(self, engine: Engine, prompt, kwargs: dict):
        self.engine, self.prompt, self.kwargs = engine, prompt, kwargs
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.abandoned = threading.Event()
        self._stream = None
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True, name="heterospec-generation").start()

    def _put(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def _run(self) -> None:
        try:
            stream = self.engine.stream(self.prompt, abort=self.abandoned, **self.kwargs)   # waits its turn
        except EngineBusy:   # the client left while it waited
            self._put("error", APIError(499, "the client closed the request"))
            return
        except BaseException as e:   # reported to the request, never lost in the thread
            self._put("error", e)
            return
        try:
            with self._lock:
                self._stream = stream
            with stream:
                n = 0
                want = self.kwargs.get("logprobs") is not None
                for piece in stream:
                    lp = stream.new_logprobs(n) if want else []
                    n += len(lp)
                    self._put("text", piece, lp)
                    if self.abandoned.is_set():
                        break
            rest = (stream.result.logprobs or [])[n:]   # tokens that ended without text of their own
            if rest:
                self._put("text", "", rest)
            self._put("done", stream.result)
        except BaseException as e:
            self._put("error", e)

    def cancel(self) -> None:
        """The client went away: stop at the next step, or give up the wait for the engine."""
        self.abandoned.set()
        self.engine.wake_queue()
        with self._lock:
            if self._stream is not None:
                self._stream.cancel()


# -- the app -------------------------------------------------------------------------------------


_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


class _AuthAndCount:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware would hide client disconnects from
    the endpoints): the API key, and request counts by endpoint and status."""

    def __init__(self, app, api_key: Optional[str], metrics: "_Metrics", max_body: int):
        self.app, self.api_key, self.metrics, self.max_body = app, api_key, metrics, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        label = path if path in _ENDPOINTS else "other"   # bounded label values
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and path != "/health":
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                self.metrics.requests.labels(label, "401").inc()
                response = APIError(401, "Incorrect API key provided: pass it as 'Authorization: Bearer KEY'",
                                    code="invalid_api_key").response()
                return await response(scope, receive, send)
        too_big = APIError(413, f"the request body is over {self.max_body} bytes (the server's --max-body)",
                           code="request_too_large")
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            self.metrics.requests.labels(label, "400").inc()
            return await APIError(400, "the Content-Length header is not a number").response()(scope, receive, send)
        if length is not None and int(length) > self.max_body:
            self.metrics.requests.labels(label, "413").inc()
            return await too_big.response()(scope, receive, send)
        if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            # a body of unknown length (chunked): read it up to the cap, then hand it on
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > self.max_body:
                    self.metrics.requests.labels(label, "413").inc()
                    return await too_big.response()(scope, receive, send)
            receive = _replay(b"".join(chunks), receive)
        status = []

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.requests.labels(label, str(status[0] if status else 500)).inc()


DEFAULT_MAX_BODY = 8 * 2**20   # bytes; a full 128k-token context is well under 1 MiB of text


def _replay(body: bytes, receive):
    """An ASGI receive that gives `body` once, then passes on to `receive` (a disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


def create_app(engine: Engine, model_name: str, api_key: Optional[str] = None,
               chat_template: Optional[str] = None, max_queue: int = 64, max_body: int = DEFAULT_MAX_BODY,
               docs: bool = False) -> FastAPI:
    """The server's app on `engine`, answering to `model_name`; with `api_key`, every endpoint but
    /health requires `Authorization: Bearer <api_key>`. `chat_template` overrides the GGUF's (Jinja
    source or a llama.cpp built-in name). More than `max_queue` generations running or waiting:
    503. A request body over `max_body` bytes: 413. `docs`: serve /docs and /openapi.json."""
    app = FastAPI(title="HeteroSpec", version=__import__("heterospec").__version__,
                  docs_url="/docs" if docs else None, redoc_url=None, openapi_url="/openapi.json" if docs else None)
    metrics = _Metrics(engine)
    created = int(time.time())
    app.add_middleware(_AuthAndCount, api_key=api_key, metrics=metrics, max_body=max_body)
    longest_token = max((len(engine.token_piece(t)) for t in range(engine.n_vocab)), default=1)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # unknown paths, wrong methods, unreadable bodies: OpenAI's error object, not {"detail": ...}
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, message, type_=type_).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip()).response()
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        return APIError(400, f"{param}: {msg}" if param else msg, param=param).response()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(model_name, created)]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        _check_model(name, model_name)
        return _model_card(model_name, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        _check_model(body.model, model_name)
        try:
            prompt = engine.format_chat(body.messages, add_generation_prompt=True, chat_template=chat_template,
                                        tools=body.tools, **(body.chat_template_kwargs or {}))
        except ChatTemplateError as e:
            raise APIError(400, str(e), param="messages") from None
        except (ValueError, TypeError) as e:
            raise APIError(400, str(e), param="messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens
        top = (body.top_logprobs or 0) if body.logprobs else None
        return await _serve(request, body, prompt, max_tokens, top, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        _check_model(body.model, model_name)
        max_tokens = body.max_tokens if body.max_tokens is not None else 16   # OpenAI's default
        return await _serve(request, body, body.prompt, max_tokens, body.logprobs, chat=False)

    async def _serve(request: Request, body: _Common, prompt, max_tokens: Optional[int], top_logprobs: Optional[int],
                     chat: bool):
        ids = _prompt_ids(engine, prompt, longest_token)
        if max_tokens is not None and max_tokens > engine.n_ctx:
            raise APIError(400, f"max_tokens is {max_tokens} but the context holds {engine.n_ctx} tokens",
                           param="max_tokens")
        kwargs = _generation_kwargs(body, max_tokens, top_logprobs)
        try:   # here, so that a streaming request is refused with a 4xx too
            engine.check(ids, **kwargs)
        except (ValueError, TypeError) as e:
            raise APIError(400, str(e)) from None
        if engine.queue_length >= max_queue:
            raise APIError(503, f"the server has {max_queue} requests running or waiting; retry later",
                           type_="server_error", code="server_busy")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        t0 = time.perf_counter()
        job = _Job(engine, ids, kwargs)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            events = _sse(job, rid, model_name, chat, include_usage, engine, metrics, t0)
            return EventSourceResponse(events, ping=15, sep="\n")
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        try:
            text, lp = [], []
            while True:
                kind, *data = await job.events.get()
                if kind == "text":
                    text.append(data[0])
                    lp.extend(data[1])
                elif kind == "error":
                    raise _as_api_error(data[0])
                else:
                    result: GenerationResult = data[0]
                    break
        finally:
            watcher.cancel()
            job.cancel()   # a no-op once the generation has ended; else (the handler was cancelled) stop it
        metrics.observe(result)
        metrics.latency.observe(time.perf_counter() - t0)
        if result.finish_reason == "cancelled":
            metrics.cancelled.inc()
        return _response(rid, model_name, chat, result, engine, top_logprobs)

    return app


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "heterospec"}


def _check_model(name: Optional[str], served: str) -> None:
    if name is not None and name != served:
        raise APIError(404, f"The model '{name}' does not exist: this server serves '{served}'",
                       param="model", code="model_not_found")


def _prompt_ids(engine: Engine, prompt, longest_token: int) -> list[int]:
    try:
        if isinstance(prompt, str):
            # no token is longer than longest_token bytes: a longer text cannot fit, and is not tokenized
            at_least = -(-len(prompt.encode("utf-8")) // longest_token)
            if at_least > engine.n_ctx:
                raise APIError(400, f"the prompt has at least {at_least} tokens but the context holds "
                                    f"{engine.n_ctx}; shorten it", param="messages", code="context_length_exceeded")
            ids = engine.tokenize(prompt, add_special=True, parse_special=True)
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < engine.n_vocab]
            if bad:
                raise APIError(400, f"prompt token id {bad[0]} is outside the vocabulary (0..{engine.n_vocab - 1})",
                               param="prompt")
    except ValueError as e:
        raise APIError(400, str(e), param="prompt") from None
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    if len(ids) > engine.n_ctx:
        raise APIError(400, f"the prompt has {len(ids)} tokens but the context holds {engine.n_ctx}; "
                            "shorten it", param="messages", code="context_length_exceeded")
    return ids


_PASSED = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "stop", "seed", "ignore_eos", "cache_prompt",
           "mode", "drafter", "depth", "branching", "width", "budget", "n_max", "p_min", "cost_aware")


def _generation_kwargs(body: _Common, max_tokens: Optional[int], top_logprobs: Optional[int]) -> dict:
    kwargs = {k: getattr(body, k) for k in _PASSED if getattr(body, k) is not None}
    kwargs.setdefault("temperature", 1.0)   # OpenAI's default
    kwargs.setdefault("top_p", 1.0)
    kwargs["max_tokens"] = max_tokens if max_tokens is not None else -1
    if top_logprobs is not None:
        kwargs["logprobs"] = top_logprobs
    return kwargs


def _as_api_error(e: BaseException) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, (ValueError, TypeError)):
        return APIError(400, str(e))
    return APIError(500, f"{type(e).__name__}: {e}", type_="server_error")


async def _watch_disconnect(request: Request, job: _Job) -> None:
    """Waits for the client to go away (the body is read already: the next message is the
    disconnect), then cancels the job."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


def _finish_reason(r: GenerationResult) -> str:
    return "length" if r.finish_reason == "length" else "stop"


def _usage(r: GenerationResult) -> dict:
    s = r.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": s.cached_tokens}}


def _timings(r: GenerationResult) -> dict:
    """llama-server's names where it has them; speculation figures besides."""
    s = r.stats
    n_prompt = s.prompt_tokens - s.cached_tokens
    n_pred = max(s.generated_tokens - 1, 0)   # the first token comes with the prompt
    return {"cache_n": s.cached_tokens, "prompt_n": n_prompt, "prompt_ms": s.prompt_ms,
            "prompt_per_token_ms": s.prompt_ms / n_prompt if n_prompt else 0.0,
            "prompt_per_second": s.prompt_tokens_per_second,
            "predicted_n": s.generated_tokens, "predicted_ms": s.decode_ms,
            "predicted_per_token_ms": s.decode_ms / n_pred if n_pred else 0.0,
            "predicted_per_second": s.tokens_per_second,
            "draft_n": s.nodes_verified, "draft_n_accepted": s.accepted_draft,
            "mode": s.mode, "drafter": s.drafter, "steps": s.steps, "tokens_per_step": s.mean_accepted}


def _token_entry(engine: Engine, token: int, logprob: float) -> dict:
    raw = engine.token_piece(token)   # the token's own bytes (a part of a UTF-8 character, maybe)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


def _chat_logprobs(engine: Engine, lps: list) -> dict:
    return {"content": [dict(_token_entry(engine, t, lp), top_logprobs=[_token_entry(engine, a, alp) for a, alp in top])
                        for t, lp, top in lps]}


def _completion_logprobs(engine: Engine, lps: list, offset: int = 0) -> dict:
    tokens, token_lps, tops, offsets = [], [], [], []
    for t, lp, top in lps:
        text = engine.token_piece(t).decode("utf-8", errors="replace")
        tokens.append(text)
        token_lps.append(lp)
        tops.append({engine.token_piece(a).decode("utf-8", errors="replace"): alp for a, alp in top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def _response(rid: str, model: str, chat: bool, r: GenerationResult, engine: Engine, top: Optional[int]) -> dict:
    choice: dict[str, Any] = {"index": 0, "finish_reason": _finish_reason(r), "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": r.text}
        if top is not None:
            choice["logprobs"] = _chat_logprobs(engine, r.logprobs or [])
    else:
        choice["text"] = r.text
        if top is not None:
            choice["logprobs"] = _completion_logprobs(engine, r.logprobs or [])
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": _usage(r), "timings": _timings(r)}


async def _sse(job: _Job, rid: str, model: str, chat: bool, include_usage: bool, engine: Engine,
               metrics: _Metrics, t0: float) -> AsyncIterator[dict]:
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"
    want_lp = job.kwargs.get("logprobs") is not None

    def chunk(delta_or_text, finish=None, lps=None, **extra) -> dict:
        c: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            c["delta"] = delta_or_text
            if want_lp and lps is not None:
                c["logprobs"] = _chat_logprobs(engine, lps)
        else:
            c["text"] = delta_or_text
            if want_lp and lps is not None:
                c["logprobs"] = _completion_logprobs(engine, lps)
        body = {"id": rid, "object": obj, "created": created, "model": model, "choices": [c], **extra}
        return {"data": json.dumps(body, ensure_ascii=False)}

    try:
        if chat:
            yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, *data = await job.events.get()
            if kind == "text":
                yield chunk({"content": data[0]} if chat else data[0], lps=data[1])
            elif kind == "error":
                e = _as_api_error(data[0])
                yield {"data": json.dumps(error_body(e.message, e.type, e.param, e.code))}
                return
            else:
                r: GenerationResult = data[0]
                break
        metrics.observe(r)
        metrics.latency.observe(time.perf_counter() - t0)
        yield chunk({} if chat else "", finish=_finish_reason(r), timings=_timings(r))
        if include_usage:
            yield {"data": json.dumps({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                                       "usage": _usage(r)})}
        yield {"data": "[DONE]"}
    except asyncio.CancelledError:   # the client went away
        job.cancel()
        metrics.cancelled.inc()
        raise
    finally:
        job.cancel()   # a no-op once the generation has ended


def serve(engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 8080,
          api_key: Optional[str] = None, chat_template: Optional[str] = None, max_queue: int = 64,
          log_level: str = "info", max_body: int = DEFAULT_MAX_BODY, docs: bool = False) -> None:
    """Runs the server until SIGINT/SIGTERM (uvicorn handles both and shuts down cleanly)."""
    import signal
    import sys

    import uvicorn

    app = create_app(engine, model_name, api_key, chat_template, max_queue, max_body, docs)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    original_startup = server.startup

    async def startup(sockets=None):   # announce the bound address (port 0: an ephemeral one)
        await original_startup(sockets)
        for sock in (s for srv in server.servers for s in srv.sockets):
            h, p = sock.getsockname()[:2]
            shown = f"[{h}]" if ":" in h else h
            print(f"heterospec: serving '{model_name}' at http://{shown}:{p}/v1 (Ctrl-C to stop)",
                  file=sys.stderr, flush=True)
            break
    server.startup = startup
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: end quietly
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
