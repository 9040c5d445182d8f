"""`heterospec bench`: decoding modes measured side by side, in one process, interleaved.

A mode is written NAME[:key=value,...], for example `ar`, `chain:n_max=4,p_min=0.75` or
`tree:depth=6,branching=8,width=8,budget=32`. Every repeat runs every mode over every prompt
before the next repeat starts, so that drifts of a shared machine hit all modes alike.
"""
from __future__ import annotations

import json
import os
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


def _peer_modes(grid) -> list[tuple[str, Optional[int], Optional[float]]]:
    return [("llama.cpp", None, None)] + [(f"llama.cpp-spec n_max={n} p_min={p:g}", n, p) for n, p in grid]


def run(args) -> int:
    modes = [parse_mode(m) for m in args.modes]
    peer_exe, peer_error = None, None
    if getattr(args, "peer", False):
        from .peer import PEER_GRID, PeerError, peer_binary
        try:
            peer_exe = peer_binary(Path(args.cache_dir), jobs=max(1, os.cpu_count() or 1))
        except PeerError as e:
            peer_error = str(e)
            print(f"heterospec bench: llama.cpp peer unavailable: {e}", file=sys.stderr)
        peer_modes = _peer_modes(PEER_GRID)
    else:
        peer_modes = []
    engine_kw = {k: getattr(args, k) for k in ("n_threads", "n_ctx", "n_gpu_layers") if getattr(args, k) is not None}
    with Engine(args.model, draft=args.model_draft, **engine_kw) as engine:
        prompts = load_prompts(args.prompts, engine, args.limit, args.skip)
        room = engine.n_ctx - args.max_tokens - 1
        token_prompts = [(cat, engine.tokenize(p, parse_special=True)[-room:]) for cat, p in prompts]
        runs = {name: [] for name, _ in modes}
        peer_runs = {name: [] for name, _, _ in peer_modes}
        peer_failed = {name: peer_error for name, _, _ in peer_modes if peer_error}
        prompt_files = []
        if peer_exe is not None:
            import tempfile
            tmp = Path(tempfile.mkdtemp(prefix="heterospec-bench-"))
            for i, (_, ids) in enumerate(token_prompts):
                f = tmp / f"prompt-{i}.txt"
                f.write_text(engine.detokenize(ids, special=True))
                prompt_files.append(f)
        reference = {}
        total = args.repeats * (len(modes) + (len(peer_modes) if peer_exe else 0)) * len(token_prompts)
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
            for name, n_max, p_min in (peer_modes if peer_exe else []):
                if name in peer_failed:
                    continue
                from .peer import PeerError, run_peer
                try:
                    per_prompt = [run_peer(peer_exe, args.model, args.model_draft, f, args.max_tokens,
                                           args.n_threads or os.cpu_count() or 1, engine.n_ctx, n_max, p_min,
                                           prompt_tokens=len(ids))
                                  for f, (_, ids) in zip(prompt_files, token_prompts)]
                    peer_runs[name].append(per_prompt)
                except PeerError as e:   # one failing mode does not lose the others
                    peer_failed[name] = str(e)
                done += len(prompt_files)
                if sys.stderr.isatty():
                    print(f"\r{done}/{total} runs, {time.time() - t0:.0f} s", end="", file=sys.stderr)
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
    for name, n_max, p_min in peer_modes:
        if name in peer_failed or not peer_runs[name]:
            results[name] = {"error": peer_failed.get(name, "did not run")}
            continue
        tps = [sum(r["tokens"] for r in rep) / sum(r["seconds"] for r in rep) for rep in peer_runs[name]]
        last = peer_runs[name][-1]
        drafted = sum(r.get("n_drafted", 0) for r in last)
        results[name] = {
            "settings": {"n_max": n_max, "p_min": p_min},
            "tokens_per_second": statistics.median(tps),
            "tokens_per_second_min": min(tps), "tokens_per_second_max": max(tps),
            "acceptance": sum(r.get("n_accept", 0) for r in last) / drafted if drafted else None,
            "tau": None, "nodes_per_step": None, "target_calls": None, "draft_calls": None,
            "host_share": None, "step_ms": None, "greedy_matches_ar": None,
        }
    base = results.get("ar", {}).get("tokens_per_second")
    for v in results.values():
        if "error" not in v:
            v["speedup"] = v["tokens_per_second"] / base if base else None

    def cell(v, key, fmt):
        return format(v[key], fmt) if v.get(key) is not None else "-"

    print(f"{'mode':<44} {'tok/s':>8} {'speedup':>7} {'tau':>5} {'nodes':>6} {'calls':>6} {'host':>6} {'same':>5}")
    for name, v in results.items():
        if "error" in v:
            print(f"{name:<44} failed: {v['error'][:70]}")
            continue
        sp = f"{v['speedup']:.2f}x" if v["speedup"] else "-"
        same = f"{v['greedy_matches_ar']:.0%}" if v["greedy_matches_ar"] is not None else "-"
        print(f"{name:<44} {v['tokens_per_second']:8.1f} {sp:>7} {cell(v, 'tau', '5.2f'):>5} "
              f"{cell(v, 'nodes_per_step', '6.1f'):>6} {cell(v, 'target_calls', '6d'):>6} "
              f"{cell(v, 'host_share', '6.1%'):>6} {same:>5}")
    peers = {k: v for k, v in results.items() if k.startswith("llama.cpp") and "error" not in v}
    if peers:
        best = max(peers, key=lambda k: peers[k]["tokens_per_second"])
        print(f"best llama.cpp configuration: {best} at {peers[best]['tokens_per_second']:.1f} tok/s")
    if args.json:
        doc = {"command": " ".join(sys.argv), "modes": results,
               "environment": {"platform": platform.platform(), "python": platform.python_version(),
                               "model": str(args.model), "draft": str(args.model_draft),
                               "prompts": str(args.prompts), "n_prompts": len(token_prompts),
                               "max_tokens": args.max_tokens, "repeats": args.repeats,
                               "threads": args.n_threads}}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0
