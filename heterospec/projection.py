"""Projected speeds: what each mode's recorded steps would cost on another device.

A cost profile (benchmarks/profiles/*.json) gives a device's t_verify(n) for a ladder of batch
sizes n and the cost of one draft pass. A step that ran `levels` draft passes and verified
`nodes` nodes plus the root costs levels * t_draft + t_verify(nodes + 1) there; a plain step
costs t_verify(1). Acceptance is this run's, so a projection shows how the same decisions would
pay on that device. Modes with fixed shapes decide the same everywhere; the cost-aware mode is
re-run with the profile installed (Engine.set_cost_profile(..., projected=True)) so that it
decides as it would on that device. Projected figures are labelled as such and never mixed with
measured ones.
"""
from __future__ import annotations

import bisect
import json
from pathlib import Path


def load_profile(path: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"cost profile not found: '{path}'") from None
    except ValueError as e:
        raise ValueError(f"{path}: not a cost profile ({e})") from None
    try:
        sizes, verify = [int(x) for x in doc["sizes"]], [float(x) for x in doc["verify_ms"]]
        draft = float(doc["draft_level_ms"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: a cost profile needs sizes, verify_ms and draft_level_ms ({e})") from None
    if not sizes or sizes[0] != 1 or len(sizes) != len(verify) or sorted(set(sizes)) != sizes \
            or min(verify) <= 0 or draft < 0:
        raise ValueError(f"{path}: sizes must ascend from 1 and match positive verify_ms")
    if not doc.get("device") or doc.get("kind") not in ("measured", "published", "roofline"):
        raise ValueError(f"{path}: a cost profile must name its device and its kind "
                         "(measured, published or roofline)")
    return {**doc, "sizes": sizes, "verify_ms": verify, "draft_level_ms": draft}


def verify_ms(profile: dict, n: int) -> float:
    """t_verify(n), linear between ladder sizes and beyond the last (as cpp/src/cost_model.cpp)."""
    sizes, t = profile["sizes"], profile["verify_ms"]
    if n <= sizes[0]:
        return t[0]
    i = bisect.bisect_left(sizes, n)
    if i == len(sizes):
        i = len(sizes) - 1
        slope = (t[i] - t[i - 1]) / (sizes[i] - sizes[i - 1]) if i else t[i]
        return t[i] + slope * (n - sizes[i])
    f = (n - sizes[i - 1]) / (sizes[i] - sizes[i - 1])
    return t[i - 1] + f * (t[i] - t[i - 1])


def projected_rate(profile: dict, results) -> float:
    """Tokens per second of generations (with traces; plain ones need none) under `profile`."""
    tokens = ms = 0.0
    for r in results:
        if r.stats.mode == "ar":   # one token per step (the first comes with the prompt)
            tokens += r.stats.steps
            ms += r.stats.steps * verify_ms(profile, 1)
            continue
        for step in r.trace:
            emitted, levels, batch = step[2], step[7], step[9]   # batch: tokens the target ran
            tokens += emitted
            ms += levels * profile["draft_level_ms"] + verify_ms(profile, batch)
    return tokens / ms * 1e3 if ms else 0.0
