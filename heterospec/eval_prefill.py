"""`heterospec eval-prefill`: SampleAttention (sparse prefill) against dense flash attention on
the same long prompts, in one run.

Per prompt length, over several documents: time to first token dense vs sparse (paired per
document, the order alternating), the share of attention columns the sparse prefill kept, the
mean KL divergence KL(dense || sparse) and top-1 agreement of the next-token distributions over a
continuation (teacher-forced on the dense greedy continuation), the length of identical greedy
continuation; and a needle-in-a-haystack grid (needle depth x prompt length): pass rates dense vs
sparse.

Long documents are built from Python sources at hand (the standard library), so nothing is
downloaded.
"""
from __future__ import annotations

import json
import random
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .engine import Engine
from .paired import describe, paired_ratio

NEEDLE = "The secret passphrase is {code}."
PROBE = "\n\nThe secret passphrase is"   # the document then asks for it to be copied


def source_text(min_chars: int, root: Optional[Path] = None) -> str:
    """Python sources concatenated, in a fixed order, at least `min_chars` long."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    parts, n = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(f"# file: {path.name}\n{text}\n")
        n += len(parts[-1])
        if n >= min_chars:
            break
    if n < min_chars:
        raise ValueError(f"not enough source text under {root} for {min_chars} characters")
    return "".join(parts)


def documents(engine: Engine, text: str, n_tokens: int, count: int) -> list[list[int]]:
    """`count` documents of n_tokens tokens each (BOS first, as the model adds it), from disjoint
    stretches of `text`."""
    ids = engine.tokenize(text)
    bos, body, n = ids[:1], ids[1:], n_tokens - 1
    if len(body) < n * count:
        raise ValueError(f"the source text has {len(ids)} tokens, fewer than {count} documents of {n_tokens}")
    return [bos + body[i * n:(i + 1) * n] for i in range(count)]


def kl_and_top1(dense: np.ndarray, sparse: np.ndarray) -> tuple[float, float]:
    """Mean KL(dense || sparse) in nats and top-1 agreement over rows of log-probabilities."""
    p = np.exp(dense.astype(np.float64))
    kl = (p * (dense.astype(np.float64) - sparse.astype(np.float64))).sum(axis=1)
    top1 = (dense.argmax(axis=1) == sparse.argmax(axis=1)).mean()
    return float(kl.mean()), float(top1)


def common_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def needle_prompt(engine: Engine, text: str, n_tokens: int, depth: float, code: str) -> list[int]:
    """About n_tokens tokens: the document with the needle at `depth` (0: start, 1: end), then the
    start of the needle's sentence, for the model to complete by copying (retrieval through
    attention, which small models do too)."""
    probe = engine.tokenize(PROBE, add_special=False)
    needle = engine.tokenize(" " + NEEDLE.format(code=code) + " ", add_special=False)
    body = engine.tokenize(text)[: max(0, n_tokens - len(probe) - len(needle))]
    at = max(1, int(len(body) * depth))   # after BOS
    return body[:at] + needle + body[at:] + probe


# One engine runs both: sparse prefill is switched per call, so that the two never share the
# machine at once nor differ in anything but the prefill (two engines slowed each other).
PREFILL = {"dense": "off", "sparse": "sample"}


def ttft(engine: Engine, ids: list[int], name: str) -> tuple[float, float]:
    """Time to the first token (ms, the prompt's processing and the first token) and the share of
    columns kept, with `name`'s prefill ("dense" or "sparse")."""
    r = engine.generate(ids, max_tokens=1, temperature=0, mode="ar", cache_prompt=False,
                        sparse_prefill=PREFILL[name])
    return r.stats.prompt_ms, r.stats.sparse_kept_fraction


def measure_document(engine: Engine, ids: list[int], n_predict: int, sparse_first: bool) -> dict:
    """One document with each prefill, in the order asked: TTFT and the greedy continuation of
    each (from a cold cache), and the log-probabilities of dense's continuation under each (scored
    right after each run, on the prompt's KV it left, so that only the continuation runs again)."""
    runs, rows = {}, {}
    for name in (("sparse", "dense") if sparse_first else ("dense", "sparse")):
        runs[name] = engine.generate(ids, max_tokens=n_predict, temperature=0, mode="ar", cache_prompt=False,
                                     sparse_prefill=PREFILL[name])
        if name == "dense":   # the reference continuation, scored on the KV this run left
            ref = runs["dense"].tokens
            rows["dense"] = engine.score(ids, ref, cache_prompt=True, sparse_prefill="off")[0]
    # the reference under sparse prefill: on sparse's KV when it ran last, else over a new one
    rows["sparse"] = engine.score(ids, ref, cache_prompt=not sparse_first, sparse_prefill="sample")[0]
    return {"ttft": {name: r.stats.prompt_ms for name, r in runs.items()},
            "kept": runs["sparse"].stats.sparse_kept_fraction,
            "tokens": {name: r.tokens for name, r in runs.items()}, "rows": rows}


def evaluate_length(engine: Engine, docs: list[list[int]], args, floor: Optional[Engine] = None) -> dict:
    """TTFT (paired per document, the order alternating so that drift hits both alike; `repeats`
    - 1 more pairs each), kept share, KL and top-1 over every document's continuation, identical
    greedy continuation; with `floor`, the same KL and top-1 for a dense run that differs from
    dense only in its rounding (what agreement llama.cpp itself reaches)."""
    n = len(docs[0])
    times = {"dense": [], "sparse": []}
    kept, kls, agree, same, counts, floor_kl, floor_agree = [], [], [], [], [], [], []
    for i, ids in enumerate(docs):
        m = measure_document(engine, ids, args.n_predict, sparse_first=i % 2 == 1)
        for name in times:
            times[name].append(m["ttft"][name])
        kept.append(m["kept"])
        kl, top1 = kl_and_top1(m["rows"]["dense"], m["rows"]["sparse"])
        positions = len(m["tokens"]["dense"])
        counts.append(positions)
        kls.append(kl * positions)
        agree.append(top1 * positions)
        same.append(common_prefix(m["tokens"]["dense"], m["tokens"]["sparse"]))
        if floor is not None:
            f_kl, f_top1 = kl_and_top1(m["rows"]["dense"], floor.score(ids, m["tokens"]["dense"])[0])
            floor_kl.append(f_kl * positions)
            floor_agree.append(f_top1 * positions)
            print(f"  length {n} document {i}: floor (dense, half the ubatch) KL {f_kl:.4f}, top-1 {f_top1:.3f}",
                  flush=True)
        for r in range(args.repeats - 1):
            for name in (("sparse", "dense") if (i + r) % 2 == 0 else ("dense", "sparse")):
                times[name].append(ttft(engine, ids, name)[0])
        print(f"  length {n} document {i}: TTFT dense {m['ttft']['dense']:.0f} ms, sparse {m['ttft']['sparse']:.0f} ms; "
              f"KL {kl:.4f}, top-1 {top1:.3f}, identical greedy {same[-1]}/{positions}", flush=True)
    total = sum(counts)
    row = {"length": n, "documents": len(docs), "positions": total,
           "ttft_dense_ms": statistics.median(times["dense"]), "ttft_sparse_ms": statistics.median(times["sparse"]),
           "ttft_speedup": statistics.median(d / s for d, s in zip(times["dense"], times["sparse"])),
           # geometric mean of the paired ratios, with its 95% interval
           "ttft_speedup_paired": paired_ratio([times["dense"]], [times["sparse"]]),
           "kept_fraction": statistics.median(kept), "kl_mean": sum(kls) / total,
           "top1_agreement": sum(agree) / total, "top1_disagreements": round(total - sum(agree)),
           "identical_greedy_tokens": statistics.median(same), "identical_greedy_all": same,
           "continuation": args.n_predict, "ttft_dense_all_ms": times["dense"], "ttft_sparse_all_ms": times["sparse"]}
    if floor is not None:
        row.update(floor_kl_mean=sum(floor_kl) / total, floor_top1_agreement=sum(floor_agree) / total)
    print(f"length {n}: TTFT dense {row['ttft_dense_ms']:.0f} ms, sparse {row['ttft_sparse_ms']:.0f} ms, "
          f"paired speedup {row['ttft_speedup']:.2f}x (median; geometric mean {describe(row['ttft_speedup_paired'])}); kept {row['kept_fraction']:.3f} of the columns; "
          f"KL {row['kl_mean']:.4f} nats, top-1 {row['top1_agreement']:.4f} ({row['top1_disagreements']} of "
          f"{total} differ), identical greedy (median) {row['identical_greedy_tokens']}/{args.n_predict}", flush=True)
    if floor is not None:
        print(f"length {n}: floor (dense with half the ubatch against dense) KL {row['floor_kl_mean']:.4f} nats, "
              f"top-1 {row['floor_top1_agreement']:.4f}", flush=True)
    return row


def run(args) -> int:
    common = dict(n_ctx=args.n_ctx, n_threads=args.n_threads, n_batch=args.n_batch)
    sparse_opts = {k: getattr(args, k) for k in ("sparse_alpha", "sparse_row_frac", "sparse_window_frac",
                                                  "sparse_k_max", "sparse_min_ctx", "sparse_dense_tail")
                   if getattr(args, k) is not None}
    lengths = sorted(args.lengths)
    engine = Engine(args.model, **common, **sparse_opts)   # sparse prefill switched per call
    # the floor: dense again with half the ubatch, a change that moves only llama.cpp's rounding
    floor = Engine(args.model, **{**common, "n_batch": max(1, (args.n_batch or 512) // 2)}) if args.floor else None
    if max(lengths) + args.n_predict > engine.n_ctx:
        raise ValueError(f"length {max(lengths)} + {args.n_predict} does not fit the context ({engine.n_ctx}); raise -c")
    text = source_text(max(lengths) * 6 * args.documents)
    out = {"command": " ".join(sys.argv), "model": str(args.model), "lengths": lengths, "sparse": sparse_opts,
           "n_predict": args.n_predict, "rows": [], "needle": []}

    for n in lengths:
        out["rows"].append(evaluate_length(engine, documents(engine, text, n, args.documents), args, floor))

    rng = random.Random(0)
    for n in args.needle_lengths or lengths:
        for depth in args.needle_depths:
            code = f"{rng.randrange(10**5, 10**6)}"
            ids = needle_prompt(engine, text, n, depth, code)
            got = {}
            for name in ("dense", "sparse"):
                r = engine.generate(ids, max_tokens=16, temperature=0, mode="ar", cache_prompt=False,
                                    sparse_prefill=PREFILL[name])
                got[name] = code in r.text
            out["needle"].append({"length": n, "depth": depth, **got})
            print(f"needle length {n} depth {depth:.2f}: dense {'pass' if got['dense'] else 'fail'}, "
                  f"sparse {'pass' if got['sparse'] else 'fail'}", flush=True)
    if out["needle"]:
        out["needle_pass_dense"] = sum(c["dense"] for c in out["needle"])
        out["needle_pass_sparse"] = sum(c["sparse"] for c in out["needle"])
        print(f"needle grid: dense {out['needle_pass_dense']}/{len(out['needle'])}, "
              f"sparse {out['needle_pass_sparse']}/{len(out['needle'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    for e in (engine, floor):
        if e is not None:
            e.close()
    return 0
