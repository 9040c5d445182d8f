"""On-disk cache of cost profiles (t_verify(n) ladder and draft-level cost), per model pair,
engine settings and machine. Location: $HETEROSPEC_CACHE_DIR, else $XDG_CACHE_HOME/heterospec,
else ~/.cache/heterospec. Pass cost_profile_cache=False to Engine to measure afresh every time,
or a directory to keep the cache there."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Union

from . import __version__, _core
from .policy import model_fingerprint


def cache_dir(setting: Union[bool, str, os.PathLike] = True) -> Path:
    if setting not in (True, False, None):
        return Path(setting)
    env = os.environ.get("HETEROSPEC_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "heterospec"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def profile_key(paths, engine_opts: dict, width: int) -> str:
    doc = {"target": model_fingerprint(paths[0]), "draft": model_fingerprint(paths[1]) if paths[1] else None,
           "engine": engine_opts,
           "width": width, "machine": platform.machine(), "cpu": _cpu_name(), "cores": os.cpu_count(),
           "format": 2,   # 2: draft_level_ms is the MTP head's pass on engines without a draft model
           "version": __version__, "llama_cpp": _core.build_info()["llama_cpp"]}   # patched kernels cost differently
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


@contextlib.contextmanager
def _progress_bar():
    """A progress callback for a measurement: tqdm's bar on stderr when tqdm is installed (shown
    only once the measurement has run for a few seconds: a big model's), else none."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield None
        return
    bar = tqdm(total=1, desc="heterospec: cost profile", unit="step", delay=3, file=sys.stderr, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    try:
        yield progress
    finally:
        bar.close()


def cached_profile(native, paths, engine_opts: dict, width: int, setting, fresh: bool = False,
                   announce=None) -> None:
    """Loads the profile into the engine from the cache, or measures and stores it (`fresh`:
    measures again whatever the cache holds). `announce(message)` is told before a measurement."""
    path = None
    if setting is not False:
        path = cache_dir(setting) / f"profile-{profile_key(paths, engine_opts, width)}.json"
        if not fresh:
            try:
                doc = json.loads(path.read_text())
                native.set_cost_profile(doc["sizes"], doc["verify_ms"], doc["draft_level_ms"])
                return
            except (OSError, ValueError, KeyError, TypeError):
                pass   # absent or unreadable: measure
    if announce is not None:
        where = f"; cached in {path.parent}" if path is not None else ""
        announce(f"measuring what verification and drafting cost on this machine "
                 f"({os.path.basename(paths[0])}{' + ' + os.path.basename(paths[1]) if paths[1] else ''}{where})")
    with _progress_bar() as progress:
        sizes, verify_ms, draft_ms = native.cost_profile(width, fresh, progress)
    native.set_cost_profile(sizes, verify_ms, draft_ms)   # every drafter, now: none measures inside a generation
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"sizes": list(sizes), "verify_ms": list(verify_ms),
                                       "draft_level_ms": draft_ms, "models": [str(p) for p in paths if p]}))
            tmp.replace(path)
        except OSError:
            pass   # a read-only home is no reason to fail a generation
