"""Padded models for the benchmark: a small Llama GGUF grown into a big shape that computes the
same function (zero-padded width, identity layers), so that tau stays the trained pair's while
every forward pass costs what a big model's does. The padding itself is the project's shared tool
(`shared/tools/pad_model.py`); this module finds it, runs it once per (model, shape, type) and
keeps the result in the benchmark's cache folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from .policy import model_fingerprint

SHAPES = ("llama-8b", "llama-1b", "cpu-300m")
TYPES = ("f32", "f16", "q8_0", "q4_0")


def find_pad_tool(explicit: Optional[str] = None) -> Path:
    explicit = explicit or os.environ.get("HETEROSPEC_PAD_TOOL")
    if explicit:   # named by the user: that one or an error, never a silent substitute
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"pad tool not found: '{explicit}'")
        return Path(explicit)
    candidates = []
    here = Path(__file__).resolve().parents[1]
    for root in (Path.cwd(), here):
        candidates += [root / "shared" / "tools" / "pad_model.py", root.parent / "shared" / "tools" / "pad_model.py"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise FileNotFoundError("cannot find pad_model.py (looked in ../shared/tools); pass --pad-tool PATH "
                            "or set HETEROSPEC_PAD_TOOL")


def padded_model(src: str, shape: str, qtype: str, cache: Path, tool: Optional[str] = None,
                 log=sys.stderr) -> Path:
    """Path of `src` padded to `shape` and quantized to `qtype`, made on first use."""
    if shape not in SHAPES:
        raise ValueError(f"unknown pad shape {shape!r} ({', '.join(SHAPES)})")
    if qtype not in TYPES:
        raise ValueError(f"unknown pad type {qtype!r} ({', '.join(TYPES)})")
    fp = model_fingerprint(src)   # raises FileNotFoundError for a missing source
    out = cache / f"{Path(src).stem}-{shape}-{qtype}-{fp['sha256_head_tail'][:12]}.gguf"
    if out.exists():
        return out
    script = find_pad_tool(tool)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    print(f"heterospec bench: padding {src} to {shape} ({qtype}) once, into {out}", file=log)
    r = subprocess.run([sys.executable, str(script), str(src), str(tmp), "--shape", shape, "--type", qtype],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"padding {src} to {shape} failed: {r.stdout.strip()[-500:]}")
    tmp.replace(out)
    return out
