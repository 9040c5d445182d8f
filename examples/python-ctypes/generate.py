#!/usr/bin/env python3
"""The C API through an FFI, as an app in another language would use it: Python's ctypes, no
HeteroSpec Python package. Streams a generation to stdout; Ctrl-C cancels it.

    python3 generate.py --lib PREFIX/lib/libheterospec.so MODEL.gguf [PROMPT] [-n N] [--temp T]

The structs below mirror heterospec/heterospec.h field for field: a binding in Swift, C# or Rust
declares the same.
"""
import argparse
import ctypes as C
import signal
import sys


class ModelParams(C.Structure):
    _fields_ = [("path", C.c_char_p), ("n_gpu_layers", C.c_int32)]


class SparsePrefillParams(C.Structure):
    _fields_ = [("mode", C.c_char_p), ("alpha", C.c_float), ("row_frac", C.c_float), ("window_frac", C.c_float),
                ("k_max_frac", C.c_float), ("min_ctx", C.c_int32), ("dense_tail", C.c_int32)]


class EngineParams(C.Structure):
    _fields_ = [("target", ModelParams), ("draft", ModelParams), ("n_ctx", C.c_uint32), ("n_batch", C.c_uint32),
                ("n_threads", C.c_int32), ("n_threads_batch", C.c_int32), ("flash_attn", C.c_char_p),
                ("cache_type_k", C.c_char_p), ("cache_type_v", C.c_char_p), ("drafter", C.c_char_p),
                ("max_nodes", C.c_int32), ("sparse_prefill", SparsePrefillParams), ("verbose", C.c_bool)]


class SamplingParams(C.Structure):
    _fields_ = [("temperature", C.c_float), ("top_k", C.c_int32), ("top_p", C.c_float), ("min_p", C.c_float),
                ("repeat_penalty", C.c_float), ("repeat_last_n", C.c_int32), ("seed", C.c_uint64)]


class SpecParams(C.Structure):
    _fields_ = [("mode", C.c_char_p), ("drafter", C.c_char_p), ("depth", C.c_int32), ("branching", C.c_int32),
                ("width", C.c_int32), ("budget", C.c_int32), ("n_max", C.c_int32), ("p_min", C.c_float),
                ("policy_thresholds", C.POINTER(C.c_float)), ("n_policy_thresholds", C.c_size_t),
                ("policy_gamma", C.c_float * 3), ("cost_aware", C.c_bool)]


class GenerateParams(C.Structure):
    _fields_ = [("sampling", SamplingParams), ("spec", SpecParams), ("max_tokens", C.c_int32),
                ("stop", C.POINTER(C.c_char_p)), ("n_stop", C.c_size_t), ("ignore_eos", C.c_bool),
                ("cache_prompt", C.c_bool), ("logprobs", C.c_int32), ("sparse_prefill", C.c_char_p)]


class Stats(C.Structure):
    _fields_ = [("prompt_tokens", C.c_int32), ("cached_tokens", C.c_int32), ("generated_tokens", C.c_int32),
                ("prompt_ms", C.c_double), ("decode_ms", C.c_double), ("tokens_per_second", C.c_double),
                ("mode", C.c_char_p), ("drafter", C.c_char_p), ("steps", C.c_int32), ("target_calls", C.c_int32),
                ("draft_calls", C.c_int32), ("nodes_verified", C.c_int64), ("accepted_draft", C.c_int32),
                ("accepted_model", C.c_int32), ("accepted_ngram", C.c_int32), ("accepted_mtp", C.c_int32),
                ("mean_accepted", C.c_double), ("draft_ms", C.c_double), ("verify_ms", C.c_double),
                ("host_ms", C.c_double), ("sparse_kept_fraction", C.c_double), ("accepted_eagle3", C.c_int32),
                ("accepted_dflash", C.c_int32)]


TOKEN_CALLBACK = C.CFUNCTYPE(C.c_bool, C.c_int32, C.POINTER(C.c_char), C.c_size_t, C.c_void_p)


def load(path: str) -> C.CDLL:
    lib = C.CDLL(path)
    sig = {
        "hs_version": (C.c_char_p, []),
        "hs_last_error": (C.c_char_p, []),
        "hs_engine_default_params": (EngineParams, []),
        "hs_generate_default_params": (GenerateParams, []),
        "hs_engine_create": (C.c_int, [C.POINTER(EngineParams), C.POINTER(C.c_void_p)]),
        "hs_engine_free": (None, [C.c_void_p]),
        "hs_generate": (C.c_int, [C.c_void_p, C.c_char_p, C.POINTER(GenerateParams), TOKEN_CALLBACK, C.c_void_p,
                                  C.POINTER(C.c_void_p)]),
        "hs_cancel": (None, [C.c_void_p]),
        "hs_result_free": (None, [C.c_void_p]),
        "hs_result_text": (C.c_char_p, [C.c_void_p, C.POINTER(C.c_size_t)]),
        "hs_result_finish_reason": (C.c_char_p, [C.c_void_p]),
        "hs_result_stats": (Stats, [C.c_void_p]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", required=True, help="path of libheterospec.so / .dylib / .dll")
    ap.add_argument("model")
    ap.add_argument("prompt", nargs="?", default="def fibonacci(n):")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--temp", type=float, default=0.0)
    args = ap.parse_args()

    lib = load(args.lib)
    ep = lib.hs_engine_default_params()
    model = args.model.encode()      # kept alive while the engine is created
    ep.target.path = model
    engine = C.c_void_p()
    if lib.hs_engine_create(C.byref(ep), C.byref(engine)) != 0:
        print("error:", lib.hs_last_error().decode(), file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, lambda *_: lib.hs_cancel(engine))

    gp = lib.hs_generate_default_params()
    gp.max_tokens = args.n
    gp.sampling.temperature = args.temp
    out = sys.stdout.buffer

    @TOKEN_CALLBACK
    def on_token(token, piece, length, user_data):
        out.write(C.string_at(piece, length))
        out.flush()
        return True

    result = C.c_void_p()
    try:
        if lib.hs_generate(engine, args.prompt.encode(), C.byref(gp), on_token, None, C.byref(result)) != 0:
            print("error:", lib.hs_last_error().decode(), file=sys.stderr)
            return 1
        st = lib.hs_result_stats(result)
        print(f"\n[{lib.hs_result_finish_reason(result).decode()}] {st.generated_tokens} tokens, "
              f"{st.tokens_per_second:.1f} tok/s, mode {st.mode.decode()}", file=sys.stderr)
        lib.hs_result_free(result)
    finally:
        lib.hs_engine_free(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
