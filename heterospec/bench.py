"""`heterospec bench`: decoding modes measured side by side, in one process, interleaved.

A mode is written NAME[:key=value,...], for example `ar`, `chain:n_max=4,p_min=0.75` or
`tree:depth=6,branching=8,width=8,budget=32`. Every repeat runs every mode over every prompt
before the next repeat starts, so that drifts of a shared machine hit all modes alike.
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from .engine import Engine

SPEC_KEYS = {"depth": int, "branching": int, "width": int, "budget": int, "n_max": int, "p_min": float,
             "policy": str, "cost_aware": lambda v: v.lower() in ("1", "true", "yes", "on")}


def parse_mode(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    if name not in ("ar", "chain", "tree", "heterospec"):
        raise ValueError(f"unknown mode {name!r} in {text!r} (ar, chain, tree or heterospec)")
    kw = {"mode": name}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in SPEC_KEYS:
            raise ValueError(f"unknown setting {key!r} in {text!r} ({', '.join(SPEC_KEYS)})")
        kw[key] = SPEC_KEYS[key](value)
    return text, kw


def load_prompts(path: str, engine: Engine, limit: Optional[int] = None, skip: int = 0) -> list[tuple[str, str]]:
    """(category, prompt text) from a JSONL file with a `prompt` or `turns` field; bad lines are
    reported and skipped."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or n <= skip:
                continue
            try:
                rec = json.loads(line)
                if "prompt" in rec:
                    text = str(rec["prompt"])
                else:
                    text = engine.format_chat([{"role": "user", "content": str(rec["turns"][0])}])
            except (ValueError, KeyError, IndexError, TypeError) as e:
                print(f"heterospec bench: {path}:{n}: skipped ({e})", file=sys.stderr)
                continue
            out.append((str(rec.get("category", "all")), text))
            if limit and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path}: no usable prompts")
    return out


def run(args) -> int:
    modes = [parse_mode(m) for m in args.modes]
    engine_kw = {k: getattr(args, k) for k in ("n_threads", "n_ctx", "n_gpu_layers") if getattr(args, k) is not None}
    with Engine(args.model, draft=args.model_draft, **engine_kw) as engine:
        prompts = load_prompts(args.prompts, engine, args.limit, args.skip)
        room = engine.n_ctx - args.max_tokens - 1
        token_prompts = [(cat, engine.tokenize(p, parse_special=True)[-room:]) for cat, p in prompts]
        runs = {name: [] for name, _ in modes}
        reference = {}
        total = args.repeats * len(modes) * len(token_prompts)
        done = 0
        t0 = time.time()
        for rep in range(args.repeats):
            for name, kw in modes:
                per_prompt = []
                for i, (cat, ids) in enumerate(token_prompts):
                    r = engine.generate(ids, max_tokens=args.max_tokens, temperature=0, ignore_eos=True, **kw)
                    per_prompt.append((cat, r))
                    if kw["mode"] == "ar":
                        reference.setdefault(i, r.tokens)
                    done += 1
                    if sys.stderr.isatty():
                        print(f"\r{done}/{total} runs, {time.time() - t0:.0f} s", end="", file=sys.stderr)
                runs[name].append(per_prompt)
        if sys.stderr.isatty():
            print(file=sys.stderr)

    results = {}
    for name, kw in modes:
        reps = runs[name]
        tps = []
        for per_prompt in reps:
            gen = sum(r.stats.generated_tokens - 1 for _, r in per_prompt)
            ms = sum(r.stats.decode_ms for _, r in per_prompt)
            tps.append(gen * 1e3 / ms if ms else 0.0)
        last = reps[-1]
        steps = sum(r.stats.steps for _, r in last)
        tokens = sum(r.stats.generated_tokens for _, r in last)
        decode = sum(r.stats.decode_ms for _, r in last)
        matched = None
        if reference:
            matched = sum(r.tokens == reference.get(i) for i, (_, r) in enumerate(last)) / len(last)
        results[name] = {
            "settings": kw,
            "tokens_per_second": statistics.median(tps),
            "tokens_per_second_min": min(tps), "tokens_per_second_max": max(tps),
            "tau": tokens / steps if steps else 0.0,
            "nodes_per_step": sum(r.stats.nodes_verified for _, r in last) / steps if steps else 0.0,
            "target_calls": sum(r.stats.target_calls for _, r in last),
            "draft_calls": sum(r.stats.draft_calls for _, r in last),
            "host_share": sum(r.stats.host_ms for _, r in last) / decode if decode else 0.0,
            "step_ms": decode / steps if steps else 0.0,
            "greedy_matches_ar": matched,
        }
    base = results.get("ar", {}).get("tokens_per_second")
    for v in results.values():
        v["speedup"] = v["tokens_per_second"] / base if base else None

    print(f"{'mode':<44} {'tok/s':>8} {'speedup':>7} {'tau':>5} {'nodes':>6} {'calls':>6} {'host':>6} {'same':>5}")
    for name, v in results.items():
        sp = f"{v['speedup']:.2f}x" if v["speedup"] else "-"
        same = f"{v['greedy_matches_ar']:.0%}" if v["greedy_matches_ar"] is not None else "-"
        print(f"{name:<44} {v['tokens_per_second']:8.1f} {sp:>7} {v['tau']:5.2f} {v['nodes_per_step']:6.1f} "
              f"{v['target_calls']:6d} {v['host_share']:6.1%} {same:>5}")
    if args.json:
        doc = {"command": " ".join(sys.argv), "modes": results,
               "environment": {"platform": platform.platform(), "python": platform.python_version(),
                               "model": str(args.model), "draft": str(args.model_draft),
                               "prompts": str(args.prompts), "n_prompts": len(token_prompts),
                               "max_tokens": args.max_tokens, "repeats": args.repeats,
                               "threads": args.n_threads}}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0
