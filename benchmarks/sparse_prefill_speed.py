"""Sparse prefill speed against prompt length: TTFT and attention time, dense vs sparse, on the
random long-context model of `long_context_model.py` (its outputs mean nothing; only its speed
is measured), plotted against length.

Attention time is not timed apart (the prefill is one graph); it is the prefill less its part
linear in the length. That part comes from a least-squares fit TTFT(L) = a L + b L^2 over dense
prefills of short prompts (512 to 2048 tokens, where attention is a small share), so
attention(L) = TTFT(L) - a L for dense and sparse alike: the sparse branch's own work (sampling
rows, scoring and sorting columns, gathering) counts as attention.

  python3 benchmarks/sparse_prefill_speed.py --lengths 8192 16384 32768 -t 2 \\
      --json benchmarks/results/sparse-prefill-long-random.json --plot benchmarks/results/sparse-prefill-long-random.png
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from heterospec import Engine

HERE = Path(__file__).resolve().parent
MODEL = HERE / ".cache" / "long-ctx-random.gguf"
SHORT = [512, 1024, 2048]


def prompt(n: int, n_vocab: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(4, n_vocab, size=n)]


def ttft(engine: Engine, ids: list[int]) -> tuple[float, float]:
    r = engine.generate(ids, max_tokens=1, temperature=0, mode="ar", cache_prompt=False)
    return r.stats.prompt_ms, r.stats.sparse_kept_fraction


def linear_part(dense: Engine, repeats: int) -> dict:
    """a (ms per token) and b (ms per token^2) of TTFT(L) = a L + b L^2 over short dense prefills."""
    xs, ys = [], []
    for _ in range(repeats):
        for n in SHORT:
            xs.append(n)
            ys.append(ttft(dense, prompt(n, dense.n_vocab, n))[0])
    x = np.array(xs, dtype=np.float64)
    (a, b), *_ = np.linalg.lstsq(np.stack([x, x * x], axis=1), np.array(ys), rcond=None)
    return {"a_ms_per_token": float(a), "b_ms_per_token2": float(b), "points": list(zip(xs, ys))}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    lengths = [r["length"] for r in rows]
    ax.plot(lengths, [r["ttft_speedup"] for r in rows], "o-", label="TTFT (whole prefill)")
    ax.plot(lengths, [r["attention_speedup"] for r in rows], "s-", label="attention (prefill less its linear part)")
    for r in rows:
        ax.annotate(f"{r['kept_fraction']:.0%} kept", (r["length"], r["attention_speedup"]),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{n // 1024}k" for n in lengths])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("speedup of sparse over dense prefill")
    ax.set_title("SampleAttention prefill, random 8-layer model, SmolLM2's attention shape, CPU 2 threads",
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=MODEL, help="made by long_context_model.py when missing")
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="dense/sparse pairs per length, order alternating")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    if not args.model.exists():
        subprocess.run([sys.executable, str(HERE / "long_context_model.py"), str(args.model)], check=True)
    common = dict(n_ctx=max(args.lengths) + 64, n_threads=args.threads)
    dense = Engine(args.model, **common)
    sparse = Engine(args.model, sparse_prefill="sample", **common)
    lin = linear_part(dense, 2)
    print(f"linear part {lin['a_ms_per_token']:.3f} ms/token (fit over {SHORT}, 2 repeats)", flush=True)
    rows = []
    for n in args.lengths:
        ids = prompt(n, dense.n_vocab, n)
        times = {"dense": [], "sparse": []}
        kept = []
        for r in range(args.repeats):
            for name in (("dense", "sparse") if r % 2 == 0 else ("sparse", "dense")):
                t, k = ttft(dense if name == "dense" else sparse, ids)
                times[name].append(t)
                if name == "sparse":
                    kept.append(k)
        d, s = statistics.median(times["dense"]), statistics.median(times["sparse"])
        lin_ms = lin["a_ms_per_token"] * n
        row = {"length": n, "ttft_dense_ms": d, "ttft_sparse_ms": s, "ttft_speedup": d / s,
               "linear_ms": lin_ms, "attention_dense_ms": d - lin_ms, "attention_sparse_ms": s - lin_ms,
               "attention_speedup": (d - lin_ms) / (s - lin_ms), "attention_share_dense": (d - lin_ms) / d,
               "kept_fraction": statistics.median(kept), "ttft_dense_all_ms": times["dense"],
               "ttft_sparse_all_ms": times["sparse"]}
        rows.append(row)
        print(f"length {n}: TTFT dense {d / 1000:.1f} s, sparse {s / 1000:.1f} s ({row['ttft_speedup']:.2f}x); "
              f"attention dense {row['attention_dense_ms'] / 1000:.1f} s ({row['attention_share_dense']:.0%} of the "
              f"prefill), sparse {row['attention_sparse_ms'] / 1000:.1f} s ({row['attention_speedup']:.2f}x); "
              f"kept {row['kept_fraction']:.1%}", flush=True)
    out = {"command": " ".join(sys.argv), "model": "random weights, SmolLM2's attention shape (9 query heads on 3 "
           "KV heads of 64), 8 layers, F16", "threads": args.threads, "linear_fit": lin, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
