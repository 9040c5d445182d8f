"""What an outside fuzzing pass found (issue #22), one test per finding, and the server fuzz rerun
as a bounded test: every answer is 2xx or 4xx with an OpenAI error body, never a reset or a 5xx."""
import json
import math
import subprocess
import sys
import threading
import time

import pytest

from heterospec import Engine

BINDING = "incompatible function arguments"


# -- the library -----------------------------------------------------------------------------


@pytest.mark.parametrize("kw, error", [
    (dict(max_tokens=2**31), ValueError), (dict(top_k=2**40), ValueError), (dict(seed=2**64), ValueError),
    (dict(repeat_last_n=2**31), ValueError), (dict(depth=2**31), ValueError), (dict(logprobs=21), ValueError),
    (dict(stop=[None]), TypeError), (dict(stop=5), TypeError), (dict(stop=["\ud800"]), ValueError),
    (dict(mode=5), ValueError), (dict(mode="fast"), ValueError), (dict(drafter=""), ValueError),
    (dict(temperature=True), TypeError), (dict(top_p="0.5"), TypeError), (dict(min_p=math.nan), ValueError),
    (dict(ignore_eos=1), TypeError), (dict(queue_timeout=-1), ValueError), (dict(queue_timeout=math.nan), ValueError),
    (dict(mode="tree", budget=0), ValueError),
])
def test_bad_arguments_name_themselves_before_the_binding(tiny_engine, kw, error):
    name = list(kw)[-1]   # the argument at fault
    with pytest.raises(error) as info:
        tiny_engine.generate("hello", **{"max_tokens": 2, **kw})
    assert BINDING not in str(info.value) and name in str(info.value)
    assert len(tiny_engine.generate("hello", max_tokens=2, temperature=0).tokens) == 2


@pytest.mark.parametrize("prompt, error", [("\ud800 hello", ValueError), (b"hello", TypeError),
                                           ([1, "2"], TypeError), ([1, True], TypeError), (5, TypeError)])
def test_bad_prompts_are_refused_with_a_reason(tiny_engine, prompt, error):
    with pytest.raises(error) as info:
        tiny_engine.generate(prompt, max_tokens=2)
    assert BINDING not in str(info.value) and "prompt" in str(info.value)


def test_token_ids_from_numpy_are_ints(tiny_engine):
    np = pytest.importorskip("numpy")
    ids = tiny_engine.tokenize("hello world")
    want = tiny_engine.generate(ids, max_tokens=3, temperature=0).tokens
    assert tiny_engine.generate(np.array(ids, dtype=np.int32), max_tokens=3, temperature=0).tokens == want


def test_a_small_context_is_the_size_asked_for(tiny):
    """llama.cpp rounds contexts up to 256 cells; the engine keeps to n_ctx (it ran 251 tokens)."""
    with Engine(tiny.target, n_ctx=8, n_threads=1) as e:
        assert e.n_ctx == 8
        prompt = e.tokenize("hello world")
        r = e.generate(prompt, max_tokens=-1, temperature=0, ignore_eos=True)
        assert r.finish_reason == "length" and len(prompt) + len(r.tokens) == 8 + 1


@pytest.mark.parametrize("kw, error, message", [
    (dict(n_threads=10**6), ValueError, "n_threads"), (dict(n_threads_batch=1000), ValueError, "n_threads_batch"),
    (dict(cost_profile_cache=5), TypeError, "cost_profile_cache"), (dict(drafter=""), ValueError, "drafter"),
    (dict(flash_attn="yes"), ValueError, "flash_attn"), (dict(sparse_alpha=True), TypeError, "sparse_alpha"),
])
def test_bad_engine_options_fail_at_construction(tiny, kw, error, message):
    with pytest.raises(error, match=message):
        Engine(tiny.target, **kw)


def test_a_profile_cache_under_a_missing_directory_is_refused(tiny, tmp_path):
    where = tmp_path / "no" / "such" / "dir"
    with pytest.raises(ValueError, match="does not exist"):
        Engine(tiny.target, cost_profile_cache=where)
    assert not (tmp_path / "no").exists()


def test_close_cancels_a_generation_in_another_thread_and_waits_for_it(tiny):
    e = Engine(tiny.target, n_threads=1, n_ctx=4096)
    results, started = [], threading.Event()

    def run():
        with e.stream("hello", max_tokens=4000, temperature=0, ignore_eos=True) as s:
            for _ in s:
                started.set()
        results.append(s.result)

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(60)
    e.close()
    t.join(5)   # close() waited for the generation: the thread only returns its result now
    assert not t.is_alive() and results and results[0].finish_reason == "cancelled"
    assert len(results[0].tokens) < 4000
    with pytest.raises(RuntimeError, match="closed"):
        e.generate("hello")
    e.close()   # a second close is harmless


def test_close_refuses_callers_that_wait(tiny):
    e = Engine(tiny.target, n_threads=1, n_ctx=4096)
    s = e.stream("hello", max_tokens=4000, temperature=0, ignore_eos=True)
    next(s)
    errors = []
    waiter = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, e.generate, "hello")))
    waiter.start()
    time.sleep(0.2)
    e.close()
    waiter.join(10)
    assert errors and "closed" in str(errors[0].value) and s.result.finish_reason == "cancelled"


def test_an_unclosed_engine_at_exit_leaks_nothing(tiny):
    code = f"from heterospec import Engine\ne = Engine({str(tiny.target)!r}, n_threads=1)\ne.generate('hi', max_tokens=2)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "leaked" not in out.stderr, out.stderr


# -- the cost profile: its own phase, announced, and measured again when it is far off ----------


def test_the_profile_is_measured_in_its_own_phase_and_said_so(tiny, tmp_path, capfd):
    with Engine(tiny.target, draft=tiny.draft, n_threads=1, cost_profile_cache=tmp_path) as e:
        r = e.generate("hello", max_tokens=4, temperature=0)
        assert capfd.readouterr().err.count("measuring what verification and drafting cost") == 1
        # every drafter got the profile at once: none measures inside a later generation
        for drafter in e.drafters:
            e.generate("hello", max_tokens=4, temperature=0, drafter=drafter)
        assert "measuring" not in capfd.readouterr().err
    assert r.stats.prompt_ms < 1000
    with Engine(tiny.target, draft=tiny.draft, n_threads=1, cost_profile_cache=tmp_path) as e:
        e.generate("hello", max_tokens=4, temperature=0)   # the cached profile: nothing to measure
    assert "measuring" not in capfd.readouterr().err


def test_a_profile_far_from_the_real_costs_is_measured_again(tiny, tmp_path, capfd):
    with Engine(tiny.target, n_threads=1, cost_profile_cache=tmp_path) as e:
        e.cost_profile()
    (stored,) = tmp_path.glob("profile-*.json")
    doc = json.loads(stored.read_text())
    busy = {**doc, "verify_ms": [100 * ms for ms in doc["verify_ms"]]}   # measured on a very busy machine
    stored.write_text(json.dumps(busy))
    capfd.readouterr()
    with Engine(tiny.target, n_threads=1, cost_profile_cache=tmp_path) as e:
        r = e.generate("once upon a time", max_tokens=64, temperature=0, ignore_eos=True)
        assert r.stats.profile_scale < 0.5 and r.stats.steps >= 32
        assert "measuring" not in capfd.readouterr().err
        e.generate("once upon a time", max_tokens=4, temperature=0)
        assert "stored cost profile" in capfd.readouterr().err
        assert e.cost_profile()["verify_ms"][0] < busy["verify_ms"][0] / 10
    assert json.loads(stored.read_text())["verify_ms"][0] < busy["verify_ms"][0] / 10


def test_measuring_reports_its_progress(tiny):
    calls = []
    with Engine(tiny.target, draft=tiny.draft, n_threads=1, cost_profile_cache=False) as e:
        sizes, _, _ = e._engine.cost_profile(4, True, lambda done, total: calls.append((done, total)))
    total = calls[-1][1]
    assert calls[-1] == (total, total) and total == len(sizes) + 1
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_profile_command_measures_ahead_of_time(tiny, tmp_path):
    env = {**__import__("os").environ, "HETEROSPEC_CACHE_DIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "heterospec", "profile", "-m", str(tiny.target), "-md", str(tiny.draft),
                        "-t", "1"], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert "t_verify(n) ms" in p.stdout and "one draft level" in p.stdout and "measuring" in p.stderr
    assert len(list(tmp_path.glob("profile-*.json"))) == 1


# -- the server ------------------------------------------------------------------------------

httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def server(tiny):
    pytest.importorskip("fastapi", reason="the server extra is not installed: pip install 'heterospec[server]'")
    import uvicorn
    from heterospec.server import create_app
    engine = Engine(tiny.target, n_threads=1, n_ctx=512)
    srv = uvicorn.Server(uvicorn.Config(create_app(engine, "tiny", max_body=64 * 1024), host="127.0.0.1", port=0,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    yield url, engine
    srv.should_exit = True
    thread.join(30)
    engine.close()


def post(url, path, raw: bytes, **kw):
    return httpx.post(url + path, content=raw, headers={"content-type": "application/json"}, timeout=60, **kw)


def assert_openai_error(r, status=None):
    assert 400 <= r.status_code < 500 and (status is None or r.status_code == status), (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    assert BINDING not in err["message"] and "detail" not in r.json()
    return err


@pytest.mark.parametrize("path, raw", [
    ("/v1/chat/completions", rb'{"messages":[{"role":"user","content":"\ud800x"}],"max_tokens":4}'),
    ("/v1/chat/completions", rb'{"messages":[{"role":"\udfff","content":"x"}],"max_tokens":4}'),
    ("/v1/chat/completions", rb'{"model":"\ud800","messages":[{"role":"user","content":"x"}]}'),
    ("/v1/completions", rb'{"prompt":"\ud800","max_tokens":4}'),
    ("/v1/completions", rb'{"prompt":"x","stop":["\udc00"],"max_tokens":4}'),
])
def test_lone_surrogates_get_a_400(server, path, raw):
    url, _ = server
    assert_openai_error(post(url, path, raw), 400)


def test_bodies_over_the_cap_get_a_413_before_they_are_read(server):
    url, _ = server
    big = json.dumps({"prompt": "x " * 40000, "max_tokens": 1}).encode()
    assert_openai_error(post(url, "/v1/completions", big), 413)
    chunked = (big[i:i + 4096] for i in range(0, len(big), 4096))   # no Content-Length
    assert_openai_error(post(url, "/v1/completions", chunked), 413)
    small = (json.dumps({"prompt": "hello", "max_tokens": 1}).encode(),)
    assert post(url, "/v1/completions", iter(small)).status_code == 200


def test_a_prompt_that_cannot_fit_is_refused_without_tokenizing(server, monkeypatch):
    url, engine = server
    monkeypatch.setattr(engine, "tokenize", lambda *a, **k: pytest.fail("tokenized a prompt that cannot fit"))
    raw = json.dumps({"prompt": "y" * 60000, "max_tokens": 1}).encode()
    err = assert_openai_error(post(url, "/v1/completions", raw), 400)
    assert err["code"] == "context_length_exceeded"


@pytest.mark.parametrize("body", [
    {"prompt": "x", "top_k": 2**40}, {"prompt": "x", "seed": 2**70}, {"prompt": "x", "max_tokens": 2**40},
    {"prompt": "x", "temperature": True}, {"prompt": "x", "top_p": True}, {"prompt": "x", "min_p": False},
    {"prompt": "x", "p_min": True},
])
def test_loose_or_huge_values_get_a_400_in_openai_form(server, body):
    url, _ = server
    assert_openai_error(post(url, "/v1/completions", json.dumps(body).encode()), 400)


def test_unknown_roles_paths_and_bad_utf8_get_openai_errors(server):
    url, _ = server
    bogus = {"messages": [{"role": "bogus", "content": "x"}], "max_tokens": 2}
    assert "role" in assert_openai_error(post(url, "/v1/chat/completions", json.dumps(bogus).encode()), 400)["message"]
    assert_openai_error(post(url, "/v1/completions", b'{"prompt": "\xff\xfe", "max_tokens": 2}'), 400)
    assert_openai_error(httpx.get(url + "/v1/nothing-here", timeout=10), 404)
    assert_openai_error(httpx.get(url + "/v1/completions", timeout=10), 405)
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert_openai_error(httpx.get(url + path, timeout=10), 404)


def _fuzz_bodies():
    """Malformed requests of every kind the outside pass tried, bounded."""
    good = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    values = [None, True, -1, 0, 2**31, 2**63, -2**63, 1e308, -1e308, "", "x", "\u0000", "\ud800", [], {}, [None],
              [1, 2], {"a": 1}, "x" * 5000]
    fields = ["model", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "seed", "n",
              "stream", "logprobs", "top_logprobs", "mode", "drafter", "depth", "budget", "n_max", "p_min"]
    for i, field in enumerate(fields):
        for v in values[i % 5::5]:   # a fifth of the values per field, a different fifth each
            yield "/v1/chat/completions", json.dumps({**good, field: v}).encode()
    for raw in (b"", b"{", b"[]", b"null", b"42", b'{"messages": "hi"}', b'{"messages": [1]}',
                b'{"messages": [{"content": "x"}]}', b'{"messages": [{"role": "user"}]}', b"\xff" * 10,
                b'{"prompt": [99999999]}', b'{"prompt": [-1]}', b'{"prompt": []}', b'{"prompt": ["a", "b"]}'):
        yield "/v1/chat/completions", raw
        yield "/v1/completions", raw


def test_server_fuzz_gets_2xx_or_4xx_and_no_resets(server):
    url, _ = server
    with httpx.Client(timeout=60) as client:
        for path, raw in _fuzz_bodies():
            try:
                r = client.post(url + path, content=raw, headers={"content-type": "application/json"})
            except httpx.TransportError as e:
                pytest.fail(f"{path} {raw[:80]!r}: {type(e).__name__}: {e}")
            assert r.status_code < 500, (path, raw[:80], r.status_code, r.text[:200])
            if r.status_code >= 400:
                assert_openai_error(r)
        assert client.get(url + "/health").status_code == 200
