"""`heterospec serve`: the real server (uvicorn on 127.0.0.1, an ephemeral port) driven by the
official openai client, and httpx for the error cases. No mocks."""
import json
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install 'heterospec[server]'")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
import uvicorn  # noqa: E402

from heterospec import Engine  # noqa: E402
from heterospec.server import create_app  # noqa: E402
from conftest import shared_model  # noqa: E402

MESSAGES = [[{"role": "user", "content": c}] for c in
            ("the cat sat on", "import numpy as", "hello world", "one two three", "def main():", "for i in range",
             "the value is", "once upon a time")]
GREEDY = dict(temperature=0, max_tokens=24, extra_body={"mode": "tree"})


class LiveServer:
    def __init__(self, engine, name="tiny", api_key=None, chat_template=None, max_queue=64):
        self.engine = engine
        self.server = uvicorn.Server(uvicorn.Config(create_app(engine, name, api_key, chat_template, max_queue),
                                                    host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=api_key or "none", max_retries=0, timeout=120)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)

    def metric(self, name):
        text = httpx.get(self.url + "/metrics").text
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else None


@pytest.fixture(scope="module")
def live(tiny):
    engine = Engine(tiny.target, draft=tiny.draft, n_threads=1, n_ctx=512)
    server = LiveServer(engine)
    yield server
    server.stop()
    engine.close()


def chat(live, messages, **kw):
    return live.client.chat.completions.create(model="tiny", messages=messages, **{**GREEDY, **kw})


def test_explicit_nulls_are_defaults(live):
    body = {"messages": MESSAGES[0], "max_tokens": 3, "n": None, "stream": None, "temperature": None, "stop": None}
    r = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_chat_completion_equals_the_library(live):
    r = chat(live, MESSAGES[0])
    want = live.engine.chat(MESSAGES[0], max_tokens=24, temperature=0, mode="tree")
    assert r.choices[0].message.content == want.text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length" and r.model == "tiny" and r.object == "chat.completion"
    assert r.usage.completion_tokens == 24 and r.usage.prompt_tokens == want.stats.prompt_tokens
    t = r.model_extra["timings"]
    assert t["draft_n"] > 0 and 0 <= t["draft_n_accepted"] <= t["draft_n"] and t["predicted_n"] == 24
    assert {"prompt_per_second", "predicted_per_second", "cache_n", "mode", "drafter"} <= set(t)


def test_streaming_chat_equals_non_streaming(live):
    full = chat(live, MESSAGES[1]).choices[0].message.content
    pieces, finish, usage = [], None, None
    for ch in chat(live, MESSAGES[1], stream=True, stream_options={"include_usage": True}):
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == full and finish == "length" and usage.completion_tokens == 24


def test_text_completion_and_its_stream(live):
    kw = dict(model="tiny", prompt="the value is", max_tokens=16, temperature=0)
    r = live.client.completions.create(**kw)
    assert r.choices[0].text == live.engine.generate("the value is", max_tokens=16, temperature=0).text
    assert "".join(c.choices[0].text for c in live.client.completions.create(stream=True, **kw)) == r.choices[0].text
    # OpenAI's default for completions is 16 tokens
    assert live.client.completions.create(model="tiny", prompt="the value is", temperature=0).usage.completion_tokens == 16


def test_logprobs(live):
    r = chat(live, MESSAGES[2], logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 24
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True) and e.top_logprobs[0].token == e.token   # greedy: the likeliest
    c = live.client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0, logprobs=2)
    assert len(c.choices[0].logprobs.tokens) == 5 and all(len(t) == 2 for t in c.choices[0].logprobs.top_logprobs)


@pytest.mark.parametrize("n", [2, 8])
def test_simultaneous_requests_each_equal_their_serial_output(live, n):
    serial = [chat(live, m).choices[0].message.content for m in MESSAGES[:n]]
    assert len(set(serial)) == n
    barrier = threading.Barrier(n)

    def one(m):
        barrier.wait()
        return chat(live, m)

    with ThreadPoolExecutor(n) as pool:
        got = list(pool.map(one, MESSAGES[:n]))
    assert [r.choices[0].message.content for r in got] == serial
    assert all(r.model_extra["timings"]["draft_n"] > 0 for r in got)


def test_second_chat_turn_reuses_the_cache_and_equals_a_cold_start(live):
    first = chat(live, MESSAGES[3]).choices[0].message.content
    history = MESSAGES[3] + [{"role": "assistant", "content": first}, {"role": "user", "content": "go on"}]
    warm = chat(live, history)
    cold = chat(live, history, extra_body={"mode": "tree", "cache_prompt": False})
    assert warm.usage.prompt_tokens_details.cached_tokens > 0 == cold.usage.prompt_tokens_details.cached_tokens
    assert warm.choices[0].message.content == cold.choices[0].message.content


def test_a_client_leaving_mid_stream_cancels_and_the_next_request_is_unaffected(tiny):
    # a long generation (4,000 tokens take seconds even on the tiny model), left after its first piece
    engine = Engine(tiny.target, n_threads=1, n_ctx=4096)
    server = LiveServer(engine)
    try:
        body = {"messages": MESSAGES[4], "stream": True, "max_tokens": 4000, "temperature": 0, "ignore_eos": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break   # a first piece of text: leave
        deadline = time.time() + 30
        while not server.metric("heterospec_generations_cancelled_total") and time.time() < deadline:
            time.sleep(0.05)
        assert server.metric("heterospec_generations_cancelled_total") == 1
        while engine.queue_length and time.time() < deadline:
            time.sleep(0.05)
        stopped = engine.last_result   # the generation stopped early
        assert stopped.finish_reason == "cancelled" and 0 < len(stopped.tokens) < 4000
        want = engine.chat(MESSAGES[5], max_tokens=24, temperature=0, mode="tree").text
        assert chat(server, MESSAGES[5]).choices[0].message.content == want
    finally:
        server.stop()
        engine.close()


def wait_until_idle(server, timeout=30):
    deadline = time.time() + timeout
    while server.engine.queue_length and time.time() < deadline:
        time.sleep(0.02)
    assert not server.engine.queue_length


def test_a_client_leaving_a_non_streaming_request_cancels_it(tiny):
    engine = Engine(tiny.target, n_threads=1, n_ctx=4096)
    server = LiveServer(engine)
    try:
        body = {"messages": MESSAGES[4], "max_tokens": 4000, "temperature": 0, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/chat/completions", json=body, timeout=0.5)
        wait_until_idle(server)
        stopped = engine.last_result
        assert stopped.finish_reason == "cancelled" and len(stopped.tokens) < 4000
    finally:
        server.stop()
        engine.close()


def test_a_client_leaving_while_queued_gives_up_its_place(tiny):
    engine = Engine(tiny.target, n_threads=1, n_ctx=4096)
    server = LiveServer(engine)
    try:
        s = engine.stream("hold the engine", max_tokens=5, temperature=0)   # the engine is busy
        next(s)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", json={"prompt": "queued", "max_tokens": 5}, timeout=0.3)
        deadline = time.time() + 10
        while engine.queue_length > 1 and time.time() < deadline:
            time.sleep(0.02)
        assert engine.queue_length == 1   # only the stream: the abandoned request left the queue
        s.close()
        assert engine.last_result.finish_reason == "cancelled" and engine.last_result.tokens   # the stream's
    finally:
        server.stop()
        engine.close()


def test_a_full_queue_answers_503(tiny):
    engine = Engine(tiny.target, n_threads=1, n_ctx=256)
    server = LiveServer(engine, max_queue=1)
    try:
        s = engine.stream("hold the engine", max_tokens=5, temperature=0)
        next(s)
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
        s.close()
        assert httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    finally:
        server.stop()
        engine.close()


def test_streaming_logprobs_cover_every_token(live):
    full = chat(live, MESSAGES[6], logprobs=True, top_logprobs=2)
    got = []
    for ch in chat(live, MESSAGES[6], stream=True, logprobs=True, top_logprobs=2):
        for c in ch.choices:
            if c.logprobs and c.logprobs.content:
                got.extend(c.logprobs.content)
    assert [(e.token, e.logprob) for e in got] == [(e.token, e.logprob) for e in full.choices[0].logprobs.content]
    assert len(got) == 24


def test_a_bad_streaming_request_is_refused_before_streaming(live):
    body = {"messages": MESSAGES[0], "stream": True, "mode": "tree", "budget": 1000}
    r = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and "max_nodes" in r.json()["error"]["message"]


def test_models_health_metrics(live):
    models = live.client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert httpx.get(live.url + "/health").json() == {"status": "ok"}
    text = httpx.get(live.url + "/metrics").text
    assert "heterospec_tokens_predicted_total" in text and "heterospec_requests_queued" in text


BAD = [
    (b"{not json", 400, "not valid JSON"),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "word " * 2000}]}, 400, "tokens but the context holds 512"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}, 404, "gpt-4"),
    ({"messages": []}, 400, "messages"),
    ({}, 400, "messages"),
    ({"messages": [{"role": "user"}]}, 400, "content"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n="),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 50, "logprobs": True}, 400, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "mode": "fast"}, 400, "mode"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, 400, "tool_choice"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": -7}, 400, "seed"),
]


@pytest.mark.parametrize("body,status,words", BAD)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(live, body, status, words):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(live.url + "/v1/chat/completions", timeout=60, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] or words == err.get("param"), err
    assert set(err) == {"message", "type", "param", "code"}
    assert httpx.get(live.url + "/health").status_code == 200


@pytest.mark.parametrize("body,words", [({"prompt": ""}, "empty"), ({"prompt": [999999]}, "outside the vocabulary"),
                                        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
                                        ({"prompt": "word " * 2000}, "context holds 512")])
def test_bad_completion_requests(live, body, words):
    r = httpx.post(live.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_api_key(tiny):
    engine = Engine(tiny.target, n_threads=1, n_ctx=256)
    server = LiveServer(engine, api_key="sesame")
    try:
        assert httpx.get(server.url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            for path in ("/v1/models", "/metrics"):
                r = httpx.get(server.url + path, headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
        r = server.client.chat.completions.create(model="tiny", messages=MESSAGES[0], max_tokens=4)
        assert r.usage.completion_tokens == 4
    finally:
        server.stop()
        engine.close()


def test_smollm2_over_the_server():
    """The real model: its Jinja template, its reply equal to the library's, and simultaneous
    requests equal to serial ones (plain decoding without the cache, so that no batching noise
    of llama.cpp's Q4_1 kernels can move a near-tie: this checks that requests stay apart)."""
    engine = Engine(shared_model("SmolLM2-135M-Instruct.Q4_1.gguf"), n_ctx=2048, n_threads=2)
    server = LiveServer(engine, name="smollm2")
    try:
        msgs = [[{"role": "user", "content": c}] for c in
                ("What is the capital of France?", "Write a haiku about the sea.", "List three colours.")]
        kw = dict(model="smollm2", max_tokens=24, temperature=0, extra_body={"mode": "ar", "cache_prompt": False})
        serial = [server.client.chat.completions.create(messages=m, **kw) for m in msgs]
        assert serial[0].choices[0].message.content == engine.chat(msgs[0], max_tokens=24, temperature=0,
                                                                   mode="ar").text
        assert serial[0].usage.prompt_tokens == len(engine.tokenize(engine.format_chat(msgs[0]), parse_special=True))
        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda m: server.client.chat.completions.create(messages=m, **kw), msgs))
        assert [r.choices[0].message.content for r in got] == [r.choices[0].message.content for r in serial]
    finally:
        server.stop()
        engine.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_command_starts_prints_its_url_and_stops_cleanly(tiny, sig):
    p = subprocess.Popen([sys.executable, "-m", "heterospec", "serve", "-m", str(tiny.target), "--port", "0",
                          "-c", "256", "-t", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.time() + 60
        while url is None and time.time() < deadline:
            line = p.stderr.readline()
            m = re.search(r"(http://127\.0\.0\.1:\d+)/v1", line)
            url = m.group(1) if m else None
            assert line or p.poll() is None, "serve exited early"
        assert url, "no URL printed"
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        r = httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 3}, timeout=60)
        assert r.json()["usage"]["completion_tokens"] == 3
        p.send_signal(sig)
        p.wait(timeout=30)
        assert p.returncode == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.parametrize("args,words", [(["--port", "70000"], "--port"),
                                        (["--chat-template", "{% for m in messages %}"], "does not parse")])
def test_serve_with_bad_options_is_a_clear_error(tiny, args, words):
    r = subprocess.run([sys.executable, "-m", "heterospec", "serve", "-m", str(tiny.target), "-c", "256", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and words in r.stderr, r.stderr


def test_a_chat_template_override(tiny):
    engine = Engine(tiny.target, n_threads=1, n_ctx=256)
    server = LiveServer(engine, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
    try:
        r = server.client.chat.completions.create(model="tiny", messages=MESSAGES[2], max_tokens=4, temperature=0)
        assert r.usage.prompt_tokens == len(engine.tokenize("hello world", parse_special=True))
    finally:
        server.stop()
        engine.close()
