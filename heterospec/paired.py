"""Paired speed ratios between two decoding modes, with a confidence interval.

Absolute speeds on a shared machine drift by 20% between runs, so modes are compared prompt by
prompt within a repeat (the benchmark interleaves them): the log of mode A's rate over mode B's
on the same prompt in the same repeat, averaged over the repeats of each prompt, then over the
prompts. The interval is Student's t over the per-prompt means; a ratio whose interval holds 1
is within noise.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

# two-sided 95% points of Student's t for 1..30 degrees of freedom
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def t95(df: int) -> float:
    return _T95[df - 1] if df <= len(_T95) else 1.96


def paired_ratio(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> Optional[dict]:
    """a[r][i], b[r][i]: rates of two modes in repeat r on prompt i. Returns the geometric-mean
    ratio a/b with its 95% interval, or None without two prompts measured by both."""
    per_prompt = []
    for i in range(min(len(a[0]), len(b[0])) if a and b else 0):
        logs = [math.log(ra[i] / rb[i]) for ra, rb in zip(a, b) if ra[i] > 0 and rb[i] > 0]
        if logs:
            per_prompt.append(sum(logs) / len(logs))
    n = len(per_prompt)
    if n < 2:
        return None
    mean = sum(per_prompt) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in per_prompt) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    low, high = math.exp(mean - half), math.exp(mean + half)
    return {"ratio": math.exp(mean), "low": low, "high": high, "prompts": n, "within_noise": low <= 1.0 <= high}


def describe(r: Optional[dict]) -> str:
    if r is None:
        return "-"
    note = " (within noise)" if r["within_noise"] else ""
    return f"{r['ratio']:.3f}x [{r['low']:.3f}, {r['high']:.3f}]{note}"
