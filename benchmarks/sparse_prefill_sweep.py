"""Tuning SampleAttention's defaults (issue #24, item 4): speed and accuracy of sparse prefill
settings on one plot, at one prompt length, on a real model.

For each document (the same Python-source documents as `heterospec eval-prefill`, the first
--documents of them): a dense prefill gives the reference (its TTFT, its greedy continuation and
the log-probabilities of that continuation); then every setting prefills the same document
sparse, in an order that rotates from document to document, and scores the same continuation
(its TTFT, kept share, KL(dense || sparse) and top-1 agreement); a second dense prefill closes the
document. A setting's speedup on a document is the mean of its two dense TTFTs over its own, and
its figure the geometric mean over documents with a 95% interval. Then the needle grid of
eval-prefill (same depths, same codes) for dense and for every setting.

One engine per setting, made and closed in turn: two engines never run at once.

  python3 benchmarks/sparse_prefill_sweep.py -m ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf -t 2 \\
      --json benchmarks/results/sparse-prefill-sweep.json --plot benchmarks/results/sparse-prefill-sweep.png
"""
import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

from heterospec import Engine
from heterospec.eval_prefill import documents, kl_and_top1, needle_prompt, source_text
from heterospec.paired import describe, paired_ratio

# (alpha, window_frac, dense_tail): the defaults first, then one lever at a time around them
SETTINGS = [(0.95, 0.08, 1024), (0.95, 0.08, 512), (0.95, 0.08, 256), (0.95, 0.04, 512), (0.95, 0.12, 512),
            (0.90, 0.08, 512), (0.98, 0.08, 512)]


def label(s) -> str:
    return f"alpha {s[0]:g}, window {s[1]:g}, tail {s[2]}"


def engine_for(args, s) -> Engine:
    kw = dict(n_ctx=args.n_ctx, n_threads=args.n_threads)
    if s is None:
        return Engine(args.model, **kw)
    return Engine(args.model, **kw, sparse_prefill="sample", sparse_alpha=s[0], sparse_window_frac=s[1],
                  sparse_dense_tail=s[2])


def dense_reference(args, ids):
    with engine_for(args, None) as e:
        r = e.generate(ids, max_tokens=args.n_predict, temperature=0, mode="ar", cache_prompt=False)
        rows, _ = e.score(ids, r.tokens, cache_prompt=True)   # on the prompt's KV the run left
    return r.tokens, rows, r.stats.prompt_ms


def parse_setting(text: str):
    a, w, t = text.split(",")
    return float(a), float(w), int(t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-t", "--threads", type=int, dest="n_threads")
    p.add_argument("-c", "--ctx-size", type=int, default=8448, dest="n_ctx")
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--documents", type=int, default=3)
    p.add_argument("-n", "--n-predict", type=int, default=64, dest="n_predict")
    p.add_argument("--needle-depths", type=float, nargs="*", default=[0.1, 0.5, 0.9])
    p.add_argument("--settings", nargs="*", type=parse_setting, help="ALPHA,WINDOW,TAIL ... (default: a grid)")
    p.add_argument("--json")
    p.add_argument("--plot")
    p.add_argument("--replot", metavar="JSON", help="only draw --plot again from an earlier run's --json")
    args = p.parse_args()
    if args.replot:
        doc = json.loads(Path(args.replot).read_text())
        args.length, args.model = doc["length"], doc.get("model", args.model)
        plot(doc["settings"], args, args.plot)
        return 0
    settings = args.settings or SETTINGS

    with engine_for(args, None) as e:
        text = source_text(args.length * 6 * 6)      # eval-prefill's text for 6 documents
        docs = documents(e, text, args.length, 6)[:args.documents]
        rng = random.Random(0)   # eval-prefill's codes, drawn in its order
        codes = [f"{rng.randrange(10**5, 10**6)}" for _ in args.needle_depths]
        needles = [needle_prompt(e, text, args.length, d, c) for d, c in zip(args.needle_depths, codes)]

    res = {label(s): {"setting": dict(alpha=s[0], window_frac=s[1], dense_tail=s[2]), "dense_ms": [],
                      "sparse_ms": [], "kept": [], "kl": [], "top1": [], "positions": []} for s in settings}
    for i, ids in enumerate(docs):
        ref, dense_rows, d0 = dense_reference(args, ids)
        order = settings[i % len(settings):] + settings[:i % len(settings)]
        got = {}
        for s in order:
            with engine_for(args, s) as e:
                rows, stats = e.score(ids, ref, cache_prompt=False)
            got[s] = (rows, stats)
        with engine_for(args, None) as e:
            d1 = e.generate(ids, max_tokens=1, temperature=0, mode="ar", cache_prompt=False).stats.prompt_ms
        for s, (rows, stats) in got.items():
            r = res[label(s)]
            kl, top1 = kl_and_top1(dense_rows, rows)
            r["dense_ms"].append((d0 + d1) / 2)
            r["sparse_ms"].append(stats.prompt_ms)
            r["kept"].append(stats.sparse_kept_fraction)
            r["kl"].append(kl)
            r["top1"].append(top1)
            r["positions"].append(len(ref))
            print(f"document {i} {label(s)}: dense {(d0 + d1) / 2:.0f} ms, sparse {stats.prompt_ms:.0f} ms, "
                  f"kept {stats.sparse_kept_fraction:.3f}, KL {kl:.4f}, top-1 {top1:.3f}", flush=True)

    needle = {"dense": []}
    with engine_for(args, None) as e:
        for ids, code in zip(needles, codes):
            needle["dense"].append(code in e.generate(ids, max_tokens=16, temperature=0, mode="ar",
                                                      cache_prompt=False).text)
    for s in settings:
        with engine_for(args, s) as e:
            needle[label(s)] = [code in e.generate(ids, max_tokens=16, temperature=0, mode="ar",
                                                   cache_prompt=False).text for ids, code in zip(needles, codes)]
        print(f"needle {label(s)}: {needle[label(s)]} (dense {needle['dense']})", flush=True)

    print(f"\n{args.length} tokens, {len(docs)} documents; needle depths {args.needle_depths}: dense {needle['dense']}")
    for s in settings:
        r = res[label(s)]
        ratios = np.array(r["dense_ms"]) / np.array(r["sparse_ms"])
        # the geometric mean, with its interval where there are documents enough for one
        r["speedup"] = paired_ratio([r["dense_ms"]], [r["sparse_ms"]]) or {
            "ratio": float(np.exp(np.log(ratios).mean())), "low": None, "high": None}
        r["kl_mean"] = float(np.average(r["kl"], weights=r["positions"]))
        r["top1_mean"] = float(np.average(r["top1"], weights=r["positions"]))
        r["kept_mean"] = float(np.mean(r["kept"]))
        r["needle"] = needle[label(s)]
        r["needle_equals_dense"] = r["needle"] == needle["dense"]
        speed = describe(r["speedup"]) if r["speedup"]["low"] else f"{r['speedup']['ratio']:.3f}x"
        print(f"{label(s):<34} speedup {speed}, kept {r['kept_mean']:.3f}, KL {r['kl_mean']:.4f}, "
              f"top-1 {r['top1_mean']:.3f}, needle {sum(r['needle'])}/{len(r['needle'])}"
              f"{'' if r['needle_equals_dense'] else ' (dense: ' + str(sum(needle['dense'])) + ')'}")
    out = {"command": " ".join(sys.argv), "model": str(args.model), "length": args.length, "documents": len(docs),
           "needle_depths": args.needle_depths, "needle_dense": needle["dense"], "settings": res}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.plot:
        plot(res, args, args.plot)
    return 0


def plot(res: dict, args, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=110)
    for i, (name, r) in enumerate(res.items()):
        x, y = r["speedup"]["ratio"], r["kl_mean"]
        low, high = r["speedup"]["low"] or x, r["speedup"]["high"] or x
        ax.errorbar([x], [y], xerr=[[x - low], [high - x]], fmt="o",
                    mfc="C0" if r["needle_equals_dense"] else "white", mec="C0", ecolor="0.7")
        ax.annotate(name, (x, y), fontsize=7, xytext=(4, (4, -10, 16)[i % 3]), textcoords="offset points")
    ax.axhline(0.01, color="C3", lw=0.8, ls="--", label="KL target 0.01")
    ax.axvline(1.4, color="C2", lw=0.8, ls="--", label="TTFT target 1.4x")
    ax.set_xlabel(f"TTFT speedup over dense (paired, {args.length} tokens)")
    ax.set_ylabel("KL(dense || sparse), nats, over the continuation")
    ax.set_title(f"{Path(args.model).name}: SampleAttention settings (filled: needle grid equals dense)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
