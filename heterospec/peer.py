"""The peer: llama.cpp's own draft-model speculation (`llama-speculative-simple`), built on demand
from the same pinned llama.cpp, never by the package install. It is llama.cpp as the pin ships it:
this repository's patches (sparse prefill, the CPU small-batch kernels) are left out, so the peer
is what users run today.

The build needs the pinned source with llama.cpp's `common/` and `examples/` folders: either a
checkout named by HETEROSPEC_LLAMA_CPP_DIR, or the pin fetched by this repository's
`third_party/fetch_llama_cpp.py` into the cache folder.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

# llama.cpp's speculation settings the benchmark tries; it reports the best. With a draft model:
# draft-simple over n_max / p_min.
PEER_GRID = [(n_max, p_min) for n_max in (2, 3, 4, 6, 8) for p_min in (0.0, 0.75)]
# Without one: the draftless types of the pin, each as llama.cpp documents it (common/arg.cpp),
# with its defaults and with short settings that draft more often on a small model.
NGRAM_GRID = [
    ("ngram-simple", ["--spec-type", "ngram-simple"]),   # size-n 12, size-m 48
    ("ngram-simple n=3 m=8", ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3",
                              "--spec-ngram-simple-size-m", "8"]),
    ("ngram-map-k n=4 m=16", ["--spec-type", "ngram-map-k", "--spec-ngram-map-k-size-n", "4",
                              "--spec-ngram-map-k-size-m", "16"]),
    ("ngram-mod n_match=16 n_max=16 n_min=2", ["--spec-type", "ngram-mod", "--spec-ngram-mod-n-match", "16",
                                               "--spec-ngram-mod-n-max", "16", "--spec-ngram-mod-n-min", "2"]),
    ("ngram-cache", ["--spec-type", "ngram-cache"]),     # n_draft 8, fixed at the pin
]


# With the target's own MTP head and no draft model: draft-mtp over n_max (llama.cpp's defaults
# otherwise), ngram-mod, and both chained (the n-gram draft wins a step whenever it has one).
_NGRAM_MOD = ["--spec-type", "ngram-mod", "--spec-ngram-mod-n-match", "16", "--spec-ngram-mod-n-max", "16",
              "--spec-ngram-mod-n-min", "2"]
MTP_GRID = [(f"draft-mtp n_max={n}", ["--spec-type", "draft-mtp", "--spec-draft-n-max", str(n)]) for n in (1, 2, 3, 4, 6)]
MTP_GRID += [("ngram-mod n_match=16 n_max=16 n_min=2", _NGRAM_MOD)]
MTP_GRID += [(f"draft-mtp,ngram-mod n_max={n}", ["--spec-type", "draft-mtp,ngram-mod", "--spec-draft-n-max", str(n),
                                                 *_NGRAM_MOD[2:]]) for n in (2, 3)]


def head_grid(head, arch: str = "eagle3") -> list[tuple[str, list]]:
    """With an EAGLE-3 head or a DFlash draft (`arch`): draft-eagle3 / draft-dflash over n_max /
    p_min, and chained with ngram-mod (the n-gram draft wins a step whenever it has one)."""
    t = f"draft-{arch}"
    grid = [(f"{t} n_max={n} p_min={p:g}", ["-md", str(head), "--spec-type", t,
                                           "--spec-draft-n-max", str(n), "--spec-draft-p-min", str(p)])
            for n, p in PEER_GRID]
    grid += [(f"{t},ngram-mod n_max={n}", ["-md", str(head), "--spec-type", f"{t},ngram-mod",
                                           "--spec-draft-n-max", str(n), *_NGRAM_MOD[2:]]) for n in (2, 3)]
    return grid


def draft_spec_args(draft, n_max: int, p_min: float) -> list[str]:
    return ["-md", str(draft), "--spec-type", "draft-simple", "--spec-draft-n-max", str(n_max),
            "--spec-draft-p-min", str(p_min)]
# llama-speculative-simple needs a draft; plain llama.cpp decoding comes from llama-batched with
# one sequence, the same binary family (common's arguments, threads, sampler)
TARGETS = ["llama-speculative-simple", "llama-batched"]


class PeerError(RuntimeError):
    pass


def _fetch_script() -> Optional[Path]:
    # the wheel ships the script and the pin (CMakeLists.txt); a checkout has them in third_party/
    here = Path(__file__).resolve().parent
    for folder in (here / "_llama_cpp", here.parent / "third_party", Path.cwd() / "third_party"):
        script = folder / "fetch_llama_cpp.py"
        if script.exists():
            return script
    return None


def peer_binary(cache: Path, jobs: int = 2, log=sys.stderr) -> Path:
    """Path to llama-speculative-simple, building it first if needed (a few minutes)."""
    build = cache / "peer-build"
    exe = build / "bin" / "llama-speculative-simple"
    if exe.exists():
        return exe
    src = os.environ.get("HETEROSPEC_LLAMA_CPP_DIR")
    if src:
        src = Path(src)
        if not (src / "examples" / "speculative-simple").exists():
            raise PeerError(f"HETEROSPEC_LLAMA_CPP_DIR={src} has no examples/speculative-simple")
    else:
        script = _fetch_script()
        if script is None:
            raise PeerError("cannot find fetch_llama_cpp.py (the package ships it; reinstall) "
                            "or set HETEROSPEC_LLAMA_CPP_DIR to a llama.cpp checkout")
        src = cache / "llama.cpp-full"
        r = subprocess.run([sys.executable, str(script), "--dest", str(src), "--extra", "common/", "examples/",
                            "pocs/", "tools/", "licenses/",
                            "--unpatched"], stdout=subprocess.PIPE, stderr=log, text=True)
        if r.returncode != 0:
            raise PeerError("fetching the pinned llama.cpp for the peer failed")
    if shutil.which("cmake") is None:
        raise PeerError("cmake is needed to build the peer")
    print(f"heterospec bench: building llama.cpp's {', '.join(TARGETS)} (once, a few minutes)", file=log)
    cfg = ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
           "-DLLAMA_BUILD_EXAMPLES=ON", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TOOLS=OFF",
           "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
           "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF"]
    cfg += [a for a in os.environ.get("CMAKE_ARGS", "").split() if a]   # same convention as the package
    for cmd in (cfg, ["cmake", "--build", str(build), "--target", *TARGETS, "-j", str(jobs)]):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise PeerError(f"building the peer failed: {' '.join(cmd)}\n{r.stdout[-2000:]}")
    if not exe.exists():
        raise PeerError(f"the peer build produced no {exe}")
    return exe


_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) s(?:econds)?, speed:\s+([\d.]+) t/s")
_FIELD = re.compile(r"^(?:.*\s)?(n_drafted|n_accept)\s*=\s*(\d+)", re.M)


def parse_peer_output(text: str) -> dict:
    """Decoded tokens, decoding seconds and llama.cpp's draft counters from its log."""
    m = _DECODED.search(text)
    if not m:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise PeerError(f"no 'decoded N tokens' line in llama.cpp's output (it ended: {tail[-300:]})")
    tokens, tps = int(m.group(1)), float(m.group(3))
    # the printed seconds are rounded (to 0.01 s in some examples): derive them from the rate
    out = {"tokens": tokens, "seconds": tokens / tps if tps > 0 else float(m.group(2)), "tokens_per_second": tps}
    for key, value in _FIELD.findall(text):
        out[key] = int(value)
    # llama.cpp's own words, for the record
    out["log"] = [line.strip() for line in text.splitlines()
                  if _DECODED.search(line) or _FIELD.search(line) or "accept    =" in line]
    return out


def run_peer(exe: Path, target, prompt_file: Path, n_predict: int, threads: int, n_ctx: int,
             spec: Optional[list] = None, timeout: float = 600, prompt_tokens: int = 0) -> dict:
    """One greedy generation by llama.cpp: plain (llama-batched, one sequence) when `spec` is None,
    else speculation (llama-speculative-simple) with the arguments `spec` (draft_spec_args or one
    of NGRAM_GRID's)."""
    if spec is None:
        # llama-batched counts the prompt in -n
        cmd = [str(exe.parent / "llama-batched"), "-m", str(target), "-f", str(prompt_file), "-np", "1",
               "-n", str(prompt_tokens + n_predict), "--temp", "0", "-t", str(threads)]
    else:
        cmd = [str(exe), "-m", str(target), "-f", str(prompt_file), "-n", str(n_predict), "--temp", "0",
               # a little headroom: llama.cpp drafts past the last position it will keep
               "-t", str(threads), "-c", str(n_ctx + 64), "--ignore-eos", *spec]
    for attempt in range(3):
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                               errors="replace")
        except subprocess.TimeoutExpired:
            raise PeerError(f"llama.cpp did not finish in {timeout} s") from None
        if r.returncode != 0:
            raise PeerError(f"llama.cpp exited with {r.returncode}: {r.stdout[-500:]}")
        try:
            return parse_peer_output(r.stdout)
        except PeerError:
            # llama.cpp logs from a worker thread; on a busy machine the last lines (its timing)
            # are sometimes lost at exit: run again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
