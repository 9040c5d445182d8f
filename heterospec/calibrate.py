"""`heterospec calibrate`: fit the entropy partition of algorithm section 4 for a model pair.

Runs the base tree over a prompt file, records per step H(P*) and the terminal confidence rank
(TCR: rank by V, among the verified nodes, of the last accepted node; steps that accept no node
count as rank N + 1), fits a depth-3 regression tree of TCR on H with the per-side mean squared
deviation criterion, and writes the seven thresholds with per-bin statistics.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Optional, Sequence

import numpy as np

from .bench import load_prompts
from .engine import Engine
from .policy import model_fingerprint


def best_split(x: np.ndarray, y: np.ndarray, min_leaf: int) -> Optional[tuple[float, float]]:
    """(threshold, L) minimising L(s) = msd(left) + msd(right), or None. x must be sorted."""
    n = len(x)
    if n < 2 * min_leaf:
        return None
    cs, cs2 = np.cumsum(y), np.cumsum(y * y)
    i = np.arange(min_leaf, n - min_leaf + 1)            # left = x[:i]
    i = i[x[i - 1] < x[np.minimum(i, n - 1)]]            # split only between distinct values
    if len(i) == 0:
        return None
    nl, nr = i, n - i
    sl, sl2 = cs[i - 1], cs2[i - 1]
    sr, sr2 = cs[-1] - sl, cs2[-1] - sl2
    loss = (sl2 / nl - (sl / nl) ** 2) + (sr2 / nr - (sr / nr) ** 2)
    k = int(np.argmin(loss))
    return float((x[i[k] - 1] + x[i[k]]) / 2), float(loss[k])


def fit_thresholds(h: Sequence[float], y: Sequence[float], depth: int = 3, min_leaf: Optional[int] = None) -> list[float]:
    """Thresholds of a regression tree of the given depth (at most 2**depth - 1), ascending."""
    x = np.asarray(h, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    x, t = x[order], t[order]
    if min_leaf is None:
        min_leaf = max(3, len(x) // 20)   # the per-side criterion favours lopsided splits: keep bins populated
    out: list[float] = []

    def grow(lo: int, hi: int, d: int) -> None:
        if d == 0:
            return
        split = best_split(x[lo:hi], t[lo:hi], min_leaf)
        if split is None:
            return
        s = split[0]
        mid = lo + int(np.searchsorted(x[lo:hi], s, side="right"))
        out.append(s)
        grow(lo, mid, d - 1)
        grow(mid, hi, d - 1)

    grow(0, len(x), depth)
    return sorted(out)


def pad_thresholds(th: list[float], n: int = 7) -> list[float]:
    """Fewer splits than bins (little data): repeat the largest so the top bins stay empty."""
    if not th:
        th = [float("inf")]
    return th + [th[-1]] * (n - len(th))


def run(args) -> int:
    shape = dict(depth=args.depth, branching=args.branching, width=args.width, budget=args.budget)
    if getattr(args, "drafter", None):
        shape["drafter"] = args.drafter   # a head's own distributions (eagle3, dflash), or with n-grams
    records = []   # (H, tcr, accepted)
    interrupted = False
    with Engine(args.model, draft=args.model_draft, n_threads=args.n_threads, n_ctx=args.n_ctx) as engine:
        prompts = load_prompts(args.prompts, engine, args.limit, args.skip)
        room = engine.n_ctx - args.max_tokens - 1
        t0 = time.time()
        try:
            for n, (_, text) in enumerate(prompts, 1):
                ids = engine.tokenize(text, parse_special=True)[-room:]
                r = engine.generate(ids, max_tokens=args.max_tokens, temperature=0, ignore_eos=True,
                                    mode="tree", trace=True, **shape)
                for depth, nodes, accepted, rank, entropy, *_ in r.trace:
                    records.append((entropy, rank if rank > 0 else nodes + 1, accepted))
                bar = "#" * int(30 * n / len(prompts))
                print(f"\rcalibrate [{bar:<30}] {n}/{len(prompts)} prompts, {len(records)} steps, "
                      f"{time.time() - t0:.0f} s", end="", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: fitting on the steps recorded so far", file=sys.stderr)
        print(file=sys.stderr)
    if len(records) < 20:
        raise ValueError(f"only {len(records)} steps recorded: too few to fit a partition")

    h = np.array([r[0] for r in records])
    tcr = np.array([r[1] for r in records], dtype=float)
    acc = np.array([r[2] for r in records], dtype=float)
    thresholds = pad_thresholds(fit_thresholds(h, tcr))
    bins = np.searchsorted(np.array(thresholds), h, side="right")
    stats = []
    for b in range(8):
        m = bins == b
        stats.append({"bin": b, "steps": int(m.sum()),
                      "mean_accepted": float(acc[m].mean()) if m.any() else None,
                      "mean_tcr": float(tcr[m].mean()) if m.any() else None})
    doc = {
        "format": "heterospec-policy-1",
        "thresholds": thresholds,
        "gamma": [0.3, 0.6, 1.0],
        "bins": stats,
        "model_pair": {"target": model_fingerprint(args.model), "draft": model_fingerprint(args.model_draft)},
        "settings": {**shape, "max_tokens": args.max_tokens, "prompts": str(args.prompts),
                     "n_prompts": len(prompts), "steps": len(records), "interrupted": interrupted},
    }
    with open(args.output, "w") as f:
        json.dump(doc, f, indent=2)

    print(f"policy written to {args.output}: {len(records)} steps, thresholds "
          + " ".join(f"{t:.3f}" for t in thresholds))
    print(f"{'bin':>3} {'H from':>8} {'steps':>6} {'tokens/step':>11} {'mean TCR':>8}")
    lows = [float("-inf")] + thresholds
    for s, lo in zip(stats, lows):
        ma = f"{s['mean_accepted']:.2f}" if s["mean_accepted"] is not None else "-"
        mt = f"{s['mean_tcr']:.2f}" if s["mean_tcr"] is not None else "-"
        print(f"{s['bin']:>3} {lo:>8.3f} {s['steps']:>6} {ma:>11} {mt:>8}")
    return 0
