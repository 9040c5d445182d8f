"""One Engine shared by threads: a generation owns it from start to end, others queue; streams
own it until exhausted, closed or collected; cancel() stops a generation from another thread."""
import gc
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from heterospec import Engine, EngineBusy

PROMPTS = ["the cat sat on", "import numpy as", "hello world", "one two three", "def main():",
           "for i in range", "the value is", "once upon a time"]


def serial(engine, prompts, **kw):
    return [engine.generate(p, **kw).tokens for p in prompts]


@pytest.mark.parametrize("n_threads", [2, 8])
def test_threads_sharing_an_engine_each_get_their_own_continuation(tiny, n_threads):
    kw = dict(max_tokens=24, temperature=0, mode="tree")
    with Engine(tiny.target, draft=tiny.draft, n_threads=1) as e:
        prompts = PROMPTS[:n_threads]
        want = serial(e, prompts, **kw)
        assert len(set(map(tuple, want))) == len(prompts)   # distinct, so a mix-up would show
        barrier = threading.Barrier(n_threads)

        def one(p):
            barrier.wait()
            return e.generate(p, **kw)

        with ThreadPoolExecutor(n_threads) as pool:
            got = list(pool.map(one, prompts))
        assert [r.tokens for r in got] == want
        assert all(r.stats.nodes_verified > 0 for r in got)   # speculation ran


def test_streams_in_threads_interleave_safely(tiny):
    kw = dict(max_tokens=20, temperature=0, mode="tree")
    with Engine(tiny.target, n_threads=1) as e:
        want = [e.generate(p, **kw).text for p in PROMPTS[:4]]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda p: "".join(e.stream(p, **kw)), PROMPTS[:4]))
        assert got == want


def test_a_half_read_stream_keeps_the_engine(tiny):
    with Engine(tiny.target, n_threads=1) as e:
        full = e.generate("hello world", max_tokens=30, temperature=0).text
        s = e.stream("hello world", max_tokens=30, temperature=0)
        first = next(s)
        with pytest.raises(RuntimeError, match="unfinished stream"):
            e.generate("the cat", max_tokens=5)
        assert first + "".join(s) == full          # the stream went on undisturbed
        assert s.result.text == full and s.result.finish_reason == "length"
        e.generate("the cat", max_tokens=5)        # exhausted: the engine is free


def test_closing_or_dropping_a_stream_frees_the_engine(tiny):
    with Engine(tiny.target, n_threads=1) as e:
        s = e.stream("hello world", max_tokens=30, temperature=0)
        next(s)
        s.close()
        assert s.result.finish_reason == "cancelled" and 0 < len(s.result.tokens) < 30
        assert list(s) == []
        s = e.stream("hello world", max_tokens=30, temperature=0)
        next(s)
        del s
        gc.collect()
        assert e.generate("the cat", max_tokens=5, queue_timeout=1).tokens


def test_queue_timeout_raises_engine_busy(tiny):
    with Engine(tiny.target, n_threads=1) as e:
        s = e.stream("hello world", max_tokens=30, temperature=0)
        next(s)
        err = []
        t = threading.Thread(target=lambda: err.append(pytest.raises(EngineBusy, e.generate, "x", queue_timeout=0.2)))
        t.start()
        t.join(10)
        assert err and "queue_timeout" in str(err[0].value)
        s.close()


def test_queued_callers_are_served_first_come_first_served(tiny):
    with Engine(tiny.target, n_threads=1) as e:
        s = e.stream("hello world", max_tokens=5, temperature=0)
        order = []

        def one(i):
            e.generate("the cat", max_tokens=2)
            order.append(i)

        threads = []
        for i in range(4):
            threads.append(threading.Thread(target=one, args=(i,)))
            threads[-1].start()
            while e.queue_length < i + 2:   # the stream plus i + 1 waiting
                time.sleep(0.005)
        list(s)
        for t in threads:
            t.join(30)
        assert order == [0, 1, 2, 3]


def test_cancel_from_another_thread_stops_a_generation(tiny):
    with Engine(tiny.target, n_threads=1, n_ctx=512) as e:
        s = e.stream("hello world", max_tokens=-1, temperature=0, ignore_eos=True)
        next(s)
        threading.Thread(target=e.cancel).start()
        rest = list(s)
        assert s.result.finish_reason == "cancelled"
        assert len(s.result.tokens) < 400
        # the next generation is not affected by the cancellation
        r = e.generate("hello world", max_tokens=8, temperature=0)
        assert r.finish_reason == "length" and len(r.tokens) == 8


def test_a_cancel_with_nothing_running_does_not_touch_the_next_generation(tiny):
    with Engine(tiny.target, n_threads=1) as e:
        e.generate("hello world", max_tokens=4, temperature=0)
        e.cancel()   # nothing owns the engine now
        r = e.generate("hello world", max_tokens=8, temperature=0)
        assert r.finish_reason == "length" and len(r.tokens) == 8
        e._engine.cancel()   # even a raw native cancel between generations is forgotten at start
        assert e.generate("hello world", max_tokens=8, temperature=0).finish_reason == "length"


def test_close_from_another_thread_waits_for_the_step_and_frees_the_engine(tiny):
    with Engine(tiny.target, n_threads=1, n_ctx=4096) as e:
        s = e.stream("hello world", max_tokens=3000, temperature=0, ignore_eos=True, mode="ar")
        next(s)
        pieces = []
        t = threading.Thread(target=lambda: pieces.extend(s))
        t.start()
        time.sleep(0.1)
        s.close()
        t.join(30)
        assert s.result.finish_reason == "cancelled" and len(s.result.tokens) < 3000
        assert e.generate("the cat", max_tokens=4, queue_timeout=5).tokens


def test_cancel_reaches_a_blocking_generate(tiny):
    # 4,000 tokens take seconds even on the tiny model (attention over a long context)
    with Engine(tiny.target, n_threads=1, n_ctx=4096) as e:
        threading.Timer(0.3, e.cancel).start()
        t0 = time.perf_counter()
        r = e.generate("def main():", max_tokens=4000, temperature=0, ignore_eos=True, mode="ar")
        assert r.finish_reason == "cancelled" and 0 < len(r.tokens) < 4000 and time.perf_counter() - t0 < 20


def test_ctrl_c_stops_cli_generation(tiny):
    p = subprocess.Popen([sys.executable, "-m", "heterospec", "generate", "-m", str(tiny.target), "-p", "def main():",
                          "-n", "4000", "--ignore-eos", "-c", "4096", "-t", "1", "--mode", "ar"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a suite started in the background inherits SIGINT ignored, and Python
                         # then leaves Ctrl-C ignored: give the CLI the default a terminal gives
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    p.stdout.read(20)   # generation is under way
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "interrupted" in err
