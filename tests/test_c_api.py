"""The C API and the installable library (issue #21): the library is installed into a temporary
prefix, the examples are built against it as an app would (CMake's find_package, pkg-config,
ctypes) and stream the same greedy text as the Python API; bad input gives error codes.

The library comes from the build tree pip used for this package (CMakeLists.txt builds it beside
the extension), so nothing is compiled again; without one, the test configures its own build.
"""
from __future__ import annotations

import ctypes as C
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from heterospec import Engine

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PROMPT = "hello world"
N = 24

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the test drives Linux tools (nm, cc)")


def _run(*cmd, env=None, cwd=None, timeout=1800) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, env=env, cwd=cwd, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout.decode()[-3000:]}\n{p.stderr.decode()[-3000:]}"
    return p


def _build_tree() -> Path:
    """A CMake build tree with the library built and up to date."""
    for cache in sorted(REPO.glob("build/*/CMakeCache.txt")):
        tree = cache.parent
        if "HETEROSPEC_LIBRARY:BOOL=ON" in cache.read_text():
            if subprocess.run(["cmake", "--build", str(tree), "--target", "heterospec"], capture_output=True,
                              timeout=1800).returncode == 0:
                return tree
    tree = REPO / "build" / "c-api"
    _run("cmake", "-S", REPO, "-B", tree, "-DHETEROSPEC_PYTHON=OFF", "-DCMAKE_BUILD_TYPE=Release")
    _run("cmake", "--build", tree, "--target", "heterospec", "-j", str(os.cpu_count() or 2))
    return tree


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    if shutil.which("cmake") is None or shutil.which("cc") is None:
        pytest.skip("cmake and a C compiler are needed to build the library and its examples")
    prefix = tmp_path_factory.mktemp("prefix")
    _run("cmake", "--install", _build_tree(), "--prefix", prefix, "--component", "library")
    return prefix


@pytest.fixture(scope="module")
def library(prefix) -> Path:
    (lib,) = [p for p in (prefix / "lib").glob("libheterospec.so*") if not p.is_symlink()]
    return lib


@pytest.fixture(scope="module")
def capi(library):
    """The C API through ctypes, with the structs the ctypes example declares."""
    spec = importlib.util.spec_from_file_location("hs_ctypes", EXAMPLES / "python-ctypes" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lib = mod.load(str(library))
    more = {
        "hs_tokenize": (C.c_int, [C.c_void_p, C.c_char_p, C.c_int64, C.c_bool, C.c_bool, C.POINTER(C.c_int32),
                                  C.c_size_t, C.POINTER(C.c_size_t)]),
        "hs_detokenize": (C.c_int, [C.c_void_p, C.POINTER(C.c_int32), C.c_size_t, C.c_bool, C.c_char_p, C.c_size_t,
                                    C.POINTER(C.c_size_t)]),
        "hs_generate_tokens": (C.c_int, [C.c_void_p, C.POINTER(C.c_int32), C.c_size_t, C.POINTER(mod.GenerateParams),
                                         mod.TOKEN_CALLBACK, C.c_void_p, C.POINTER(C.c_void_p)]),
        "hs_result_tokens": (C.POINTER(C.c_int32), [C.c_void_p, C.POINTER(C.c_size_t)]),
        "hs_can_speculate": (C.c_bool, [C.c_void_p]),
        "hs_n_ctx": (C.c_uint32, [C.c_void_p]),
        "hs_drafters": (C.c_char_p, [C.c_void_p]),
        "hs_build_info": (C.c_char_p, []),
        "hs_n_vocab": (C.c_int32, [C.c_void_p]),
    }
    for name, (res, args) in more.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib, mod


def _engine(capi, target, draft=None, **fields):
    lib, mod = capi
    p = lib.hs_engine_default_params()
    keep = [str(target).encode(), str(draft).encode() if draft else None]
    p.target.path, p.draft.path = keep
    p.n_threads = 1
    for k, v in fields.items():
        setattr(p, k, v)
    e = C.c_void_p()
    status = lib.hs_engine_create(C.byref(p), C.byref(e))
    return status, e


def _generate(capi, engine, prompt: str, **fields):
    """Runs hs_generate; returns (status, text, tokens, finish reason, stats, streamed pieces)."""
    lib, mod = capi
    gp = lib.hs_generate_default_params()
    gp.max_tokens = N
    gp.sampling.temperature = 0.0
    for k, v in fields.items():
        if k.startswith("_"):
            continue
        obj = gp
        *path, last = k.split(".")
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, last, v)
    pieces = []
    stop_after = fields.get("_stop_after")

    @mod.TOKEN_CALLBACK
    def on_token(token, piece, n, user):
        pieces.append((token, C.string_at(piece, n)))
        return stop_after is None or len(pieces) < stop_after

    r = C.c_void_p()
    status = lib.hs_generate(engine, prompt.encode(), C.byref(gp), on_token, None, C.byref(r))
    if status != 0:
        return status, None, None, None, None, pieces
    n = C.c_size_t()
    text = lib.hs_result_text(r, C.byref(n))
    toks = lib.hs_result_tokens(r, C.byref(n))
    tokens = [toks[i] for i in range(n.value)]
    out = (status, text, tokens, lib.hs_result_finish_reason(r).decode(), lib.hs_result_stats(r), pieces)
    lib.hs_result_free(r)
    return out


@pytest.fixture(scope="module")
def python_text(tiny) -> bytes:
    with Engine(tiny.target, n_threads=1) as e:
        return e.generate(PROMPT, max_tokens=N, temperature=0).text.encode()


def test_the_library_exports_the_c_api_alone(library):
    if shutil.which("nm") is None:
        pytest.skip("nm is absent")
    out = _run("nm", "-D", "--defined-only", library).stdout.decode().split("\n")
    names = [line.split()[-1] for line in out if line.strip()]
    assert names and all(n.startswith("hs_") for n in names), [n for n in names if not n.startswith("hs_")][:10]
    assert "hs_generate" in names and "hs_version" in names


def test_the_version_is_the_packages(capi, prefix):
    lib, _ = capi
    pyproject = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert lib.hs_version().decode() == version
    header = (prefix / "include" / "heterospec" / "heterospec.h").read_text()
    assert f'#define HS_VERSION "{version}"' in header
    assert "llama.cpp" in lib.hs_build_info().decode()


def test_a_c_program_built_with_find_package_streams_pythons_greedy_text(prefix, tiny, python_text, tmp_path):
    build = tmp_path / "c"
    _run("cmake", "-S", EXAMPLES / "c", "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}")
    _run("cmake", "--build", build)
    p = _run(build / "generate", tiny.target, PROMPT, "-n", N, "-t", 1)
    assert p.stdout == python_text
    assert b"[length]" in p.stderr


def test_a_c_program_built_with_pkg_config_streams_the_same(prefix, tiny, python_text, tmp_path):
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config is absent")
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig"))
    flags = _run("pkg-config", "--cflags", "--libs", "heterospec", env=env).stdout.decode().split()
    exe = tmp_path / "generate"
    _run("cc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", EXAMPLES / "c" / "generate.c", "-o", exe, *flags)
    run_env = dict(os.environ, LD_LIBRARY_PATH=str(prefix / "lib"))
    assert _run(exe, tiny.target, PROMPT, "-n", N, "-t", 1, env=run_env).stdout == python_text


def test_the_cpp_example_streams_the_same(prefix, tiny, python_text, tmp_path):
    if shutil.which("c++") is None:
        pytest.skip("a C++ compiler is absent")
    build = tmp_path / "cpp"
    _run("cmake", "-S", EXAMPLES / "cpp", "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}")
    _run("cmake", "--build", build)
    assert _run(build / "generate", tiny.target, PROMPT, "-n", N).stdout == python_text


def test_the_ctypes_example_streams_the_same(library, tiny, python_text):
    p = _run(sys.executable, EXAMPLES / "python-ctypes" / "generate.py", "--lib", library, tiny.target, PROMPT,
             "-n", N)
    assert p.stdout == python_text


def test_speculation_through_the_c_api_is_exact_and_streamed(capi, tiny):
    lib, _ = capi
    status, e = _engine(capi, tiny.target, tiny.draft)
    assert status == 0, lib.hs_last_error()
    try:
        assert lib.hs_can_speculate(e) and b"model" in lib.hs_drafters(e)
        _, _, plain, _, _, _ = _generate(capi, e, PROMPT, **{"spec.mode": b"ar"})
        for mode in (b"chain", b"tree", b"heterospec"):
            status, text, tokens, reason, st, pieces = _generate(capi, e, PROMPT, **{"spec.mode": mode,
                                                                                    "spec.cost_aware": False})
            assert status == 0, lib.hs_last_error()
            assert tokens == plain, mode
            assert st.nodes_verified > 0 and st.steps < len(tokens), mode   # speculation happened
            assert st.mode.decode() == mode.decode() and reason == "length"
            assert b"".join(p for _, p in pieces) == text                   # the stream is the text
            assert [t for t, _ in pieces if t >= 0] == tokens
    finally:
        lib.hs_engine_free(e)


def test_returning_false_from_the_callback_cancels(capi, tiny):
    lib, _ = capi
    _, e = _engine(capi, tiny.target)
    try:
        status, text, tokens, reason, _, pieces = _generate(capi, e, PROMPT, max_tokens=64, ignore_eos=True,
                                                            _stop_after=3)
        assert status == 0 and reason == "cancelled"
        assert 3 <= len(tokens) < 64
        status, _, tokens, reason, _, _ = _generate(capi, e, PROMPT)   # the engine is usable after
        assert status == 0 and reason in ("length", "stop")
    finally:
        lib.hs_engine_free(e)


def _tokenize(capi, e, text: bytes, n_max: int):
    lib, _ = capi
    buf = (C.c_int32 * max(n_max, 1))()
    n = C.c_size_t()
    status = lib.hs_tokenize(e, text, -1, True, False, buf if n_max else None, n_max, C.byref(n))
    return status, [buf[i] for i in range(min(n.value, n_max))], n.value


def test_text_round_trips_and_short_buffers_say_what_they_need(capi, tiny, tiny_engine):
    lib, _ = capi
    _, e = _engine(capi, tiny.target)
    try:
        status, _, needed = _tokenize(capi, e, PROMPT.encode(), 0)
        assert status == 5 and needed == len(tiny_engine.tokenize(PROMPT))   # HS_ERROR_BUFFER_TOO_SMALL
        status, ids, n = _tokenize(capi, e, PROMPT.encode(), needed)
        assert status == 0 and ids == tiny_engine.tokenize(PROMPT)
        arr = (C.c_int32 * n)(*ids)
        out = C.create_string_buffer(4)
        length = C.c_size_t()
        status = lib.hs_detokenize(e, arr, n, False, out, 4, C.byref(length))
        want = tiny_engine.detokenize(ids).encode()
        assert status == 5 and length.value == len(want)
        out = C.create_string_buffer(length.value + 1)
        assert lib.hs_detokenize(e, arr, n, False, out, length.value + 1, C.byref(length)) == 0
        assert out.value == want
    finally:
        lib.hs_engine_free(e)


def test_bad_input_is_an_error_code_with_a_message(capi, tiny, tmp_path):
    lib, mod = capi
    status, e = _engine(capi, tmp_path / "missing.gguf")
    assert status == 2 and not e.value and b"missing.gguf" in lib.hs_last_error()   # HS_ERROR_FILE_NOT_FOUND
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 64)
    status, e = _engine(capi, corrupt)
    assert status in (1, 3) and not e.value and lib.hs_last_error()
    status, e = _engine(capi, tiny.target, tiny.other_vocab, drafter=b"model")
    assert status == 1 and b"vocab" in lib.hs_last_error().lower()
    status, e = _engine(capi, tiny.target, max_nodes=0)
    assert status == 1 and b"max_nodes" in lib.hs_last_error()
    status, e = _engine(capi, tiny.target, flash_attn=b"sometimes")
    assert status == 1 and b"flash_attn" in lib.hs_last_error()
    assert lib.hs_engine_create(None, None) == 1

    status, e = _engine(capi, tiny.target, n_ctx=64)
    assert status == 0
    try:
        assert lib.hs_n_ctx(e) == 64
        status, *_ = _generate(capi, e, "hello " * 200)
        assert status == 1 and b"context" in lib.hs_last_error()
        for field, value, word in (("sampling.top_p", 0.0, b"top_p"), ("spec.mode", b"fast", b"mode"),
                                   ("logprobs", 99, b"logprobs"), ("spec.budget", 0, b"budget")):
            status, *_ = _generate(capi, e, PROMPT, **{field: value})
            assert status == 1 and word in lib.hs_last_error(), field
        gp = lib.hs_generate_default_params()
        gp.n_stop = 2                                       # stop is NULL
        r = C.c_void_p()
        assert lib.hs_generate(e, PROMPT.encode(), C.byref(gp), mod.TOKEN_CALLBACK(), None, C.byref(r)) == 1
        assert lib.hs_generate(e, None, C.byref(gp), mod.TOKEN_CALLBACK(), None, C.byref(r)) == 1
        status, *_ = _generate(capi, e, PROMPT)             # and the engine still works
        assert status == 0
    finally:
        lib.hs_engine_free(e)
    lib.hs_engine_free(None)


def test_null_handles_are_errors_not_crashes(capi):
    lib, mod = capi
    n = C.c_size_t()
    buf = (C.c_int32 * 8)()
    assert lib.hs_tokenize(None, b"hi", -1, True, False, buf, 8, C.byref(n)) == 1
    assert b"NULL" in lib.hs_last_error()
    gp = lib.hs_generate_default_params()
    r = C.c_void_p()
    assert lib.hs_generate(None, b"hi", C.byref(gp), mod.TOKEN_CALLBACK(), None, C.byref(r)) == 1 and not r.value
    assert lib.hs_generate_tokens(None, buf, 1, C.byref(gp), mod.TOKEN_CALLBACK(), None, C.byref(r)) == 1
    assert lib.hs_can_speculate(None) is False and lib.hs_n_ctx(None) == 0 and lib.hs_drafters(None) == b""
    lib.hs_cancel(None)
    lib.hs_result_free(None)
    assert lib.hs_result_text(None, None) == b""


def _generate_in_thread(capi, e, started, results, max_tokens=4000):
    """hs_generate in a thread: a callback that signals the first token and slows each one down."""
    import threading
    import time

    lib, mod = capi

    def run():
        gp = lib.hs_generate_default_params()
        gp.max_tokens = max_tokens
        gp.ignore_eos = True
        gp.sampling.temperature = 0.0

        @mod.TOKEN_CALLBACK
        def on_token(token, piece, n, user):
            started.set()
            time.sleep(0.002)
            return True

        r = C.c_void_p()
        status = lib.hs_generate(e, PROMPT.encode(), C.byref(gp), on_token, None, C.byref(r))
        n = C.c_size_t()
        lib.hs_result_tokens(r, C.byref(n))
        results.append((status, lib.hs_result_finish_reason(r).decode() if r.value else None, n.value))
        lib.hs_result_free(r)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_free_while_generating_cancels_and_waits(capi, tiny):
    import threading
    lib, _ = capi
    _, e = _engine(capi, tiny.target, n_ctx=512)
    started, results = threading.Event(), []
    t = _generate_in_thread(capi, e, started, results, max_tokens=400)
    assert started.wait(60)
    lib.hs_engine_free(e)          # returns once the generation has ended
    t.join(60)
    assert results and results[0][0] == 0 and results[0][1] == "cancelled" and results[0][2] < 400


def test_two_threads_on_one_engine_queue(capi, tiny):
    import threading
    lib, _ = capi
    _, e = _engine(capi, tiny.target, n_ctx=512)
    try:
        started, results = threading.Event(), []
        threads = [_generate_in_thread(capi, e, started, results, max_tokens=40) for _ in range(2)]
        for t in threads:
            t.join(120)
        assert [r[:2] for r in results] == [(0, "length"), (0, "length")] and all(r[2] == 40 for r in results)
        started.clear()
        t = _generate_in_thread(capi, e, started, results, max_tokens=400)   # hs_cancel from another thread
        assert started.wait(60)
        lib.hs_cancel(e)
        t.join(60)
        assert results[-1][:2] == (0, "cancelled")
    finally:
        lib.hs_engine_free(e)


# -- review of the C API (issue #21's contract: no exception, abort, crash or hang crosses it) ----


def test_the_ctypes_structs_match_the_header_field_for_field(capi, prefix, tmp_path):
    """The mirror in examples/python-ctypes (which these tests and FFI bindings rely on) has the
    header's layout: every field's offset and size, and every struct's size, as a C compiler sees them."""
    _, mod = capi
    structs = {"hs_model_params": mod.ModelParams, "hs_sparse_prefill_params": mod.SparsePrefillParams,
               "hs_engine_params": mod.EngineParams, "hs_sampling_params": mod.SamplingParams,
               "hs_spec_params": mod.SpecParams, "hs_generate_params": mod.GenerateParams, "hs_stats": mod.Stats}
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <heterospec/heterospec.h>", "int main(void) {"]
    want = []
    for name, py in structs.items():
        lines.append(f'printf("%zu\\n", sizeof({name}));')
        want.append(f"{name} {C.sizeof(py)}")
        for field, *_ in py._fields_:
            lines.append(f'printf("%zu %zu\\n", offsetof({name}, {field}), sizeof((({name} *) 0)->{field}));')
            want.append(f"{name}.{field} {getattr(py, field).offset} {getattr(py, field).size}")
    lines.append("return 0; }")
    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text("\n".join(lines))
    _run("cc", "-std=c99", "-I", prefix / "include", src, "-o", exe)
    got = _run(exe).stdout.decode().split("\n")
    assert [f"{w.split()[0]} {g}" for w, g in zip(want, got)] == want


@pytest.mark.parametrize("field, value, word", [
    ("n_threads", 10**6, b"n_threads"),              # ggml's pool holds 512 threads; beyond, it aborts
    ("n_threads_batch", 10**6, b"n_threads_batch"),
    ("n_batch", 2**31, b"n_batch"),                   # uint32 fields: llama.cpp wraps them to int32
    ("n_ctx", 2**32 - 1, b"n_ctx"),
    ("target.n_gpu_layers", -2, b"n_gpu_layers"),
])
def test_engine_options_python_refuses_are_refused_natively(capi, tiny, field, value, word):
    """What the Python Engine refuses before the binding (_check_int, _max_threads), the C++
    validate() refuses too: the C API has nothing else in front of llama.cpp."""
    lib, _ = capi
    p = lib.hs_engine_default_params()
    path = str(tiny.target).encode()
    p.target.path, p.n_threads = path, 1
    *parents, last = field.split(".")
    obj = p
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)
    e = C.c_void_p()
    status = lib.hs_engine_create(C.byref(p), C.byref(e))
    if status == 0:
        lib.hs_engine_free(e)
    assert status == 1 and not e.value and word in lib.hs_last_error(), lib.hs_last_error()


def test_policy_gamma_is_checked_without_thresholds(capi, tiny):
    """hs_spec_params.policy_gamma can be set without thresholds (Python sets it only with a policy):
    it is validated all the same."""
    lib, _ = capi
    _, e = _engine(capi, tiny.target, tiny.draft)
    try:
        for gamma in ((0.0, 0.5, 1.0), (math.nan, 0.5, 1.0), (0.3, 0.6, 1e9)):
            status, *_ = _generate(capi, e, PROMPT, **{"spec.mode": b"heterospec", "spec.cost_aware": False,
                                                      "spec.policy_gamma": (C.c_float * 3)(*gamma)})
            assert status == 1 and b"gamma" in lib.hs_last_error(), gamma
        status, *_ = _generate(capi, e, PROMPT, **{"spec.mode": b"heterospec", "spec.cost_aware": False})
        assert status == 0
    finally:
        lib.hs_engine_free(e)


# Scenarios that crashed or hung the process before they were fixed run in a child process, so
# that a regression fails the test instead of the suite.
_CHILD = r"""
import ctypes as C, importlib.util, sys, threading, time
spec = importlib.util.spec_from_file_location("hs_ctypes", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
lib = mod.load(sys.argv[2]); TARGET = sys.argv[3].encode()
sig = {
    "hs_tokenize": (C.c_int, [C.c_void_p, C.c_char_p, C.c_int64, C.c_bool, C.c_bool, C.POINTER(C.c_int32),
                              C.c_size_t, C.POINTER(C.c_size_t)]),
    "hs_generate_tokens": (C.c_int, [C.c_void_p, C.POINTER(C.c_int32), C.c_size_t, C.POINTER(mod.GenerateParams),
                                     mod.TOKEN_CALLBACK, C.c_void_p, C.POINTER(C.c_void_p)]),
    "hs_cost_profile": (C.c_int, [C.c_void_p, C.c_int32, C.c_bool, C.POINTER(C.c_int32), C.POINTER(C.c_double),
                                  C.c_size_t, C.POINTER(C.c_size_t), C.POINTER(C.c_double)]),
    "hs_set_cost_profile": (C.c_int, [C.c_void_p, C.POINTER(C.c_int32), C.POINTER(C.c_double), C.c_size_t,
                                      C.c_double, C.c_bool]),
}
for name, (res, args) in sig.items():
    fn = getattr(lib, name); fn.restype, fn.argtypes = res, args
p = lib.hs_engine_default_params(); p.target.path = TARGET; p.n_threads = 1; p.n_ctx = 512
e = C.c_void_p()
assert lib.hs_engine_create(C.byref(p), C.byref(e)) == 0, lib.hs_last_error()

def generate(max_tokens, on_token):
    gp = lib.hs_generate_default_params()
    gp.max_tokens, gp.ignore_eos, gp.sampling.temperature = max_tokens, True, 0.0
    r = C.c_void_p()
    status = lib.hs_generate(e, b"hello world", C.byref(gp), mod.TOKEN_CALLBACK(on_token), None, C.byref(r))
    reason = lib.hs_result_finish_reason(r).decode() if r.value else None
    lib.hs_result_free(r)
    return status, reason, lib.hs_last_error().decode()
"""


def _child(capi, library, tiny, body: str, timeout: float = 60) -> str:
    code = _CHILD + body
    try:
        p = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "python-ctypes" / "generate.py"), str(library),
                            str(tiny.target)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child process hung for {timeout} s (a deadlock)")
    assert p.returncode == 0, f"the child process died ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p.stdout


def test_wild_lengths_are_errors_not_reads_past_the_buffer(capi, library, tiny):
    """A len or count far beyond what the engine takes is refused before anything is copied:
    hs_tokenize(len = 2**31) copied 2 GiB from a 2-byte string (SIGSEGV)."""
    out = _child(capi, library, tiny, r"""
buf = (C.c_int32 * 8)(); n = C.c_size_t()
print("tokenize", lib.hs_tokenize(e, b"hi", 2**31, True, False, buf, 8, C.byref(n)), lib.hs_last_error().decode())
gp = lib.hs_generate_default_params(); r = C.c_void_p()
print("tokens", lib.hs_generate_tokens(e, buf, 2**40, C.byref(gp), mod.TOKEN_CALLBACK(), None, C.byref(r)),
      lib.hs_last_error().decode())
lib.hs_engine_free(e)
""")
    assert "tokenize 1 len is too long" in out
    assert "tokens 1 the prompt has 1099511627776 tokens but the context holds 512" in out


@pytest.mark.parametrize("inner", ["hs_generate", "hs_cost_profile", "hs_set_cost_profile"])
def test_a_call_that_needs_the_engine_from_its_own_callback_is_an_error_not_a_deadlock(capi, library, tiny, inner):
    """The callback runs while its generation owns the engine: a call that would wait for the
    engine waited for itself (the process hung). It is refused; the generation goes on."""
    call = {
        "hs_generate": "generate(2, lambda *a: True)[0]",
        "hs_cost_profile": "lib.hs_cost_profile(e, 4, False, None, None, 0, C.byref(C.c_size_t()), None)",
        "hs_set_cost_profile": "lib.hs_set_cost_profile(e, (C.c_int32 * 1)(1), (C.c_double * 1)(1.0), 1, 0.0, False)",
    }[inner]
    out = _child(capi, library, tiny, f"""
inner = []
def on_token(token, piece, n, user):
    if not inner:
        inner.append(({call}, lib.hs_last_error().decode()))
    return True
print("outer", generate(8, on_token)[:2], "inner", inner[0])
print("after", generate(2, lambda *a: True)[:2])
lib.hs_engine_free(e)
""", timeout=30)
    assert "outer (0, 'length') inner (1, \"this thread's generation owns the engine" in out, out
    assert "after (0, 'length')" in out


def test_freeing_the_engine_from_its_own_callback_cancels_and_frees_it_on_return(capi, library, tiny):
    """hs_engine_free from inside the token callback (it waited for its own generation: a hang)
    cancels the generation; the engine is freed when hs_generate returns, with its result."""
    out = _child(capi, library, tiny, r"""
calls = []
def on_token(token, piece, n, user):
    if not calls:
        lib.hs_engine_free(e)
        lib.hs_engine_free(e)   # twice, still inside: nothing more
        buf = (C.c_int32 * 8)(); n = C.c_size_t()
        calls.append(lib.hs_tokenize(e, b"hi", -1, True, False, buf, 8, C.byref(n)))   # refused, not a crash
    return True
print("result", generate(200, on_token)[:2], calls)
""", timeout=30)
    assert "result (0, 'cancelled') [3]" in out, out


def test_free_refuses_calls_queued_behind_the_generation(capi, library, tiny):
    """A call waiting for the engine when hs_engine_free begins gets an error at once (it used to
    wait on the freed engine's mutex, or win it and run a whole generation that free then waited
    for); the generation in progress is cancelled and free returns."""
    out = _child(capi, library, tiny, r"""
started, results = threading.Event(), {}
def slow(token, piece, n, user):
    started.set(); time.sleep(0.002); return True
def run(tag):
    results[tag] = generate(400, slow)
a = threading.Thread(target=run, args=("a",)); a.start()
assert started.wait(30)
b = threading.Thread(target=run, args=("b",)); b.start()
time.sleep(0.3)                                   # b waits for the engine
lib.hs_engine_free(e)
a.join(30); b.join(30)
print("a", results["a"][:2]); print("b", results["b"])
""", timeout=60)
    assert "a (0, 'cancelled')" in out, out
    # (on a machine too busy for b to reach the queue in 0.3 s, b is refused on its way in)
    assert re.search(r"b \(3, None, 'the engine (was|is being) freed \(hs_engine_free\)", out), out
