"""`heterospec bench`: decoding modes measured side by side, in one process, interleaved.

A mode is written NAME[:key=value,...], for example `ar`, `chain:n_max=4,p_min=0.75` or
`tree:depth=6,branching=8,width=8,budget=32`. Every repeat runs every mode over every prompt
before the next repeat starts, so that drifts of a shared machine hit all modes alike.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from .engine import Engine

SPEC_KEYS = {"drafter": str, "depth": int, "branching": int, "width": int, "budget": int, "n_max": int, "p_min": float,
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


# Spec-Bench's six task types: its eight MT-bench categories are one type, multi-turn conversation.
MT_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}


def load_prompts(paths, engine: Engine, limit: Optional[int] = None, skip: int = 0,
                 per_category: Optional[int] = None) -> list[tuple[str, str]]:
    """(category, prompt text) from JSONL files with a `prompt` or `turns` (Spec-Bench) field,
    `turns` formatted with the model's chat template; bad lines are reported and skipped. skip,
    limit and per_category apply to each file."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for path in paths:
        out += _load_prompt_file(path, engine, limit, skip, per_category)
    return out


def _load_prompt_file(path, engine: Engine, limit: Optional[int], skip: int,
                      per_category: Optional[int]) -> list[tuple[str, str]]:
    out = []
    taken: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or n <= skip:
                continue
            try:
                rec = json.loads(line)
                if "prompt" in rec:
                    text = str(rec["prompt"])
                else:
                    turns = rec["turns"]
                    first = turns if isinstance(turns, str) else turns[0]
                    text = engine.format_chat([{"role": "user", "content": str(first)}])
                cat = str(rec.get("category", "all"))
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                print(f"heterospec bench: {path}:{n}: skipped ({e})", file=sys.stderr)
                continue
            cat = "mt_bench" if cat in MT_BENCH else cat
            if per_category and taken.get(cat, 0) >= per_category:
                continue
            taken[cat] = taken.get(cat, 0) + 1
            out.append((cat, text))
            if limit and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path}: no usable prompts")
    return out


def _progress(done: int, total: int, t0: float) -> None:
    """A progress bar on a terminal's stderr (nothing when it is redirected)."""
    if sys.stderr.isatty():
        filled = int(30 * done / max(1, total))
        print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} runs, {time.time() - t0:.0f} s",
              end="", file=sys.stderr, flush=True)


def _head_arch(path) -> Optional[str]:
    """"eagle3" or "dflash" for a draft that reads the target's features, else None."""
    from .padding import gguf_architecture
    arch = gguf_architecture(path)
    return arch if arch in ("eagle3", "dflash") else None


def _peer_modes(draft, mtp: bool = False, head: Optional[str] = None) -> list[tuple[str, Optional[list], dict]]:
    """(name, llama-speculative-simple arguments or None for plain decoding, settings): with a
    draft model, draft-simple over n_max / p_min; with an EAGLE-3 head or a DFlash draft
    (`head`: its architecture), draft-eagle3 / draft-dflash over n_max / p_min and chained with
    ngram-mod; with the target's MTP head, draft-mtp, ngram-mod and both; otherwise the
    draftless n-gram types."""
    from .peer import MTP_GRID, NGRAM_GRID, PEER_GRID, draft_spec_args, head_grid
    modes = [("llama.cpp", None, {})]
    if draft and head:
        modes += [(f"llama.cpp-spec {label}", args, {"args": " ".join(args)})
                  for label, args in head_grid(draft, head)]
    elif draft:
        modes += [(f"llama.cpp-spec n_max={n} p_min={p:g}", draft_spec_args(draft, n, p), {"n_max": n, "p_min": p})
                  for n, p in PEER_GRID]
    elif mtp:
        modes += [(f"llama.cpp-spec {label}", args, {"args": " ".join(args)}) for label, args in MTP_GRID]
    else:
        modes += [(f"llama.cpp-spec {label}", args, {"args": " ".join(args)}) for label, args in NGRAM_GRID]
    return modes


def _rotated(items: list, rep: int) -> list:
    """The modes in the order repeat `rep` runs them: each starts a repeat in turn, so that no
    mode always runs first (after the previous repeat's last) or last."""
    k = rep % len(items) if items else 0
    return items[k:] + items[:k]


def _warm_up(engine, modes, token_prompts, failed: dict) -> None:
    """One short untimed generation per mode before the timed repeats: the first call of a
    process pays for page faults, a cold cache and each drafter's cost profile, which would
    otherwise land on whichever mode runs first (plain decoding ran 15% slower in the first
    repeat than in the others)."""
    if not token_prompts:
        return
    for name, kw in modes:
        try:
            engine.generate(token_prompts[0][1], max_tokens=8, temperature=0, ignore_eos=True, **kw)
        except (ValueError, RuntimeError, OSError) as e:
            failed[name] = f"{type(e).__name__}: {e}"
    engine.clear_ngram_memory()


def _padded(args, role: str, src: str, shape: Optional[str], head: Optional[str] = None) -> str:
    """`src` padded for the run (or as it is without a shape), recorded in args.pad[role]. A head
    reads the target's features: it grows with the target, to its shape."""
    target = None
    if head and "target" in args.pad:
        if shape and shape != args.pad["target"]["shape"]:
            raise ValueError(f"an {head} head is padded with its target: give --pad-draft the target's shape")
        shape, target = args.pad["target"]["shape"], args.pad["target"]["source"]
    if not shape:
        return src
    from .padding import padded_model
    args.pad[role] = {"source": src, "shape": shape, "type": args.pad_type}
    return str(padded_model(src, shape, args.pad_type, bench_cache(args), target=target))


def run(args) -> int:
    modes = [parse_mode(m) for m in args.modes]
    device_profile = None
    if getattr(args, "cost_profile", None):
        from .projection import load_profile
        device_profile = load_profile(args.cost_profile)   # a bad file fails before any run
    compare_profile = None
    if getattr(args, "compare_cost_profile", None):
        if not (device_profile and getattr(args, "compare_draft", None)):
            raise ValueError("--compare-cost-profile prices --compare-draft's passes beside --cost-profile: give both")
        compare_profile = load_profile(args.compare_cost_profile)
    args.pad = {}
    head = _head_arch(args.model_draft) if args.model_draft else None
    if getattr(args, "pad_target", None):
        args.model = _padded(args, "target", args.model, args.pad_target)
    if args.model_draft:
        args.model_draft = _padded(args, "draft", args.model_draft, getattr(args, "pad_draft", None), head)
    elif getattr(args, "pad_draft", None):
        raise ValueError("--pad-draft needs a draft model")
    other = getattr(args, "compare_draft", None)
    if other:
        if not args.model_draft:
            raise ValueError("--compare-draft compares two drafts: give -md too")
        other_head = _head_arch(other)
        other = _padded(args, "compare_draft", other, None if other_head else getattr(args, "pad_draft", None),
                        other_head)
    args.compare_draft_model = other
    peer_exe, peer_error = None, None
    if getattr(args, "peer", False):
        from .peer import PeerError, peer_binary
        try:
            peer_exe = peer_binary(bench_cache(args), jobs=max(1, os.cpu_count() or 1))
        except PeerError as e:
            peer_error = str(e)
            print(f"heterospec bench: llama.cpp peer unavailable: {e}", file=sys.stderr)
    peer_modes = []
    engine_kw = {k: getattr(args, k) for k in ("n_threads", "n_ctx", "n_gpu_layers") if getattr(args, k) is not None}
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(Engine(args.model, draft=args.model_draft, **engine_kw))
        # (engine, mode name, settings) in the order of a repeat: with --compare-draft, every
        # speculative mode runs again on a second engine, named after its draft
        engines = [engine]
        runnable = [(engine, name, kw) for name, kw in modes]
        compared = {}   # the second draft's mode -> the same mode with -md
        if other:
            engine2 = stack.enter_context(Engine(args.model, draft=other, **engine_kw))
            engines.append(engine2)
            tag = Path(args.compare_draft).stem
            for name, kw in modes:
                if kw["mode"] != "ar":
                    compared[f"{name} [{tag}]"] = name
                    runnable.append((engine2, f"{name} [{tag}]", kw))
        if getattr(args, "peer", False):
            peer_modes = _peer_modes(args.model_draft, engine.has_mtp, head)
        prompts = load_prompts(args.prompts, engine, args.limit, args.skip, getattr(args, "per_category", None))
        room = engine.n_ctx - args.max_tokens - 1
        token_prompts = [(cat, engine.tokenize(p, parse_special=True)[-room:]) for cat, p in prompts]
        runs = {name: [] for _, name, _ in runnable}
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
        failed = {}
        total = args.repeats * (len(runnable) + (len(peer_modes) if peer_exe else 0)) * len(token_prompts)
        done = 0
        t0 = time.time()
        for e in engines:
            _warm_up(e, [(name, kw) for e2, name, kw in runnable if e2 is e], token_prompts, failed)
        for rep in range(args.repeats):
            for eng, name, kw in _rotated(runnable, rep):
                if name in failed:
                    done += len(token_prompts)
                    continue
                per_prompt = []
                # every pass serves the same stream of distinct requests from an empty memory:
                # no mode drafts from another's output of the same prompt
                eng.clear_ngram_memory()
                try:
                    for i, (cat, ids) in enumerate(token_prompts):
                        r = eng.generate(ids, max_tokens=args.max_tokens, temperature=0, ignore_eos=True,
                                         trace=True, **kw)
                        per_prompt.append((cat, r))
                        if kw["mode"] == "ar":
                            reference.setdefault(i, r.tokens)
                        done += 1
                        _progress(done, total, t0)
                except (ValueError, RuntimeError, OSError) as e:   # one failing mode does not lose the others
                    failed[name] = f"{type(e).__name__}: {e}"
                    done += len(token_prompts) - len(per_prompt)
                    continue
                runs[name].append(per_prompt)
            for name, spec, _ in (peer_modes if peer_exe else []):
                if name in peer_failed:
                    continue
                from .peer import PeerError, run_peer
                try:
                    per_prompt = [run_peer(peer_exe, args.model, f, args.max_tokens,
                                           args.n_threads or os.cpu_count() or 1, engine.n_ctx, spec,
                                           prompt_tokens=len(ids))
                                  for f, (_, ids) in zip(prompt_files, token_prompts)]
                    peer_runs[name].append(per_prompt)
                except PeerError as e:   # one failing mode does not lose the others
                    peer_failed[name] = str(e)
                done += len(prompt_files)
                _progress(done, total, t0)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        engine_info = {"target": engine.description, "n_ctx": engine.n_ctx}
        own = {id(e): e.cost_profile() if e.can_speculate else None for e in engines}
        profiles = {name: own[id(e)] for e, name, _ in runnable}
        projected = None
        if device_profile:
            projected = project(engine, device_profile, modes, runs, failed, token_prompts, args)
            if compare_profile:   # the second draft, priced at its own draft pass on that device
                more = project(engine2, compare_profile, [(n, kw) for e, n, kw in runnable if e is engine2],
                               runs, failed, token_prompts, args)
                _add_projected_drafts(projected, more, compared, args.compare_cost_profile)

    results = summarize([(name, kw) for _, name, kw in runnable], runs, failed, reference, peer_modes,
                        peer_runs, peer_failed, [cat for cat, _ in token_prompts], profiles)
    _add_paired_drafts(results, compared)
    print_table(results)
    if projected:
        print_projection(projected)
    env = environment(args, engine_info, len(token_prompts))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "modes": results,
                                               "projected": projected, "environment": env}, indent=2))
    plot = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if plot:
        from .chart import ChartUnavailable, write_chart
        try:
            write_chart(results, plot, title=f"{Path(args.model).name} + {Path(args.model_draft or '-').name}, "
                                             f"{env['device']}, {args.max_tokens} tokens")
            print(f"chart: {plot}")
        except ChartUnavailable as e:
            print(f"heterospec bench: no chart: {e}", file=sys.stderr)
    return 0


def _median_rate(reps, tokens, seconds, keep=lambda i: True) -> list[float]:
    """Tokens per second of each repeat over the prompts `keep` selects."""
    out = []
    for per_prompt in reps:
        t = sum(tokens(r) for i, r in enumerate(per_prompt) if keep(i))
        s = sum(seconds(r) for i, r in enumerate(per_prompt) if keep(i))
        out.append(t / s if s else 0.0)
    return out


def _breakdown(results, profile: Optional[dict]) -> dict:
    """Where a step's time goes, in ms per step: drafting (draft passes and the host work between
    them), verification, host time outside llama.cpp, and what the cost profile prices the
    verified batches at; `excess` is the step time the profile does not explain."""
    from .projection import verify_ms
    steps = sum(r.stats.steps for r in results)
    if not steps:
        return {}
    out = {k: sum(getattr(r.stats, f"{k}_ms") for r in results) / steps for k in ("draft", "verify", "host")}
    out["step"] = sum(r.stats.decode_ms for r in results) / steps
    if profile:
        priced = sum(verify_ms(profile, t[9]) for r in results for t in r.trace) if results[0].trace \
            else steps * verify_ms(profile, 1)
        out["profile_verify"] = priced / steps
        out["excess"] = out["step"] - out["profile_verify"]
    return out


def _best(results: dict, family: str) -> Optional[str]:
    """The fastest measured mode of a family (ar, chain, tree, heterospec, llama.cpp-spec)."""
    names = [k for k, v in results.items() if "error" not in v and k.split(":")[0].split(" ")[0] == family]
    return max(names, key=lambda k: results[k]["tokens_per_second"]) if names else None


def _add_paired(results: dict) -> None:
    """Each mode against plain decoding and the best chain, tree and llama.cpp configuration."""
    from .paired import paired_ratio
    refs = {"ar": "ar" if "ar" in results and "error" not in results["ar"] else None,
            "best chain": _best(results, "chain"), "best tree": _best(results, "tree"),
            "best llama.cpp": best_peer(results)}
    for name, v in results.items():
        if "error" in v:
            continue
        v["paired"] = {}
        for label, ref in refs.items():
            if ref and ref != name:
                r = paired_ratio(v["per_prompt_tokens_per_second"], results[ref]["per_prompt_tokens_per_second"])
                if r:
                    v["paired"][label] = {"against": ref, **r}


def _add_paired_drafts(results: dict, compared: dict) -> None:
    """Each mode run with --compare-draft against the same mode with -md."""
    from .paired import paired_ratio
    for name, base in compared.items():
        if any("error" in results.get(k, {"error": "did not run"}) for k in (name, base)):
            continue
        r = paired_ratio(results[name]["per_prompt_tokens_per_second"], results[base]["per_prompt_tokens_per_second"])
        if r:
            results[name].setdefault("paired", {})["same mode with -md"] = {"against": base, **r}


def summarize(modes, runs, failed, reference, peer_modes, peer_runs, peer_failed, categories,
              profiles: Optional[dict] = None) -> dict:
    """Every figure per mode, overall and per prompt category; speedups are over this engine's
    plain decoding (`ar`) in the same run; paired ratios with their intervals against plain
    decoding and the best chain, tree and llama.cpp configuration."""
    cats = sorted(set(categories))
    results = {}
    for name, kw in modes:
        if name in failed:
            results[name] = {"settings": kw, "error": failed[name]}
            continue
        reps = [[r for _, r in per_prompt] for per_prompt in runs[name]]
        tok = lambda r: r.stats.generated_tokens - 1            # decoding rate: after the first token
        sec = lambda r: r.stats.decode_ms / 1e3
        tps = _median_rate(reps, tok, sec)
        last = reps[-1]
        steps = sum(r.stats.steps for r in last)
        tokens = sum(r.stats.generated_tokens for r in last)
        decode = sum(r.stats.decode_ms for r in last)
        matched = None
        if reference:
            matched = sum(r.tokens == reference.get(i) for i, r in enumerate(last)) / len(last)
        per_cat = {}
        for c in cats:
            keep = lambda i, c=c: categories[i] == c
            sel = [r for i, r in enumerate(last) if keep(i)]
            c_steps = sum(r.stats.steps for r in sel)
            per_cat[c] = {"tokens_per_second": statistics.median(_median_rate(reps, tok, sec, keep)),
                          "tau": sum(r.stats.generated_tokens for r in sel) / c_steps if c_steps else 0.0,
                          "prompts": len(sel), **_accepted_by_source(sel)}
        calib = [r.stats for r in last if r.stats.predicted_steps]
        n_pred = sum(s.predicted_steps for s in calib)
        results[name] = {
            "settings": kw,
            "per_prompt_tokens_per_second": [[tok(r) / sec(r) if sec(r) else 0.0 for r in rep] for rep in reps],
            "breakdown_ms_per_step": _breakdown(last, (profiles or {}).get(name)),
            "calibration": {"steps": n_pred,
                            "predicted_tokens_per_step": sum(s.predicted_tokens for s in calib) / n_pred,
                            "realised_tokens_per_step": sum(s.realised_tokens for s in calib) / n_pred}
            if n_pred else None,
            "tokens_per_second": statistics.median(tps),
            "tokens_per_second_min": min(tps), "tokens_per_second_max": max(tps),
            "tau": tokens / steps if steps else 0.0,
            "nodes_per_step": sum(r.stats.nodes_verified for r in last) / steps if steps else 0.0,
            "target_calls": sum(r.stats.target_calls for r in last),
            "draft_calls": sum(r.stats.draft_calls for r in last),
            "host_share": sum(r.stats.host_ms for r in last) / decode if decode else 0.0,
            "step_ms": decode / steps if steps else 0.0,
            "greedy_matches_ar": matched,
            "categories": per_cat,
            **_accepted_by_source(last),
        }
    for name, _, settings in peer_modes:
        if name in peer_failed or not peer_runs[name]:
            results[name] = {"error": peer_failed.get(name, "did not run")}
            continue
        reps = peer_runs[name]
        tok, sec = (lambda r: r["tokens"]), (lambda r: r["seconds"])
        tps = _median_rate(reps, tok, sec)
        last = reps[-1]
        drafted = sum(r.get("n_drafted", 0) for r in last)
        results[name] = {
            "settings": settings,
            "llama_cpp_output": last[0].get("log", []),   # its own lines, first prompt of the last repeat
            "per_prompt_tokens_per_second": [[tok(r) / sec(r) if sec(r) else 0.0 for r in rep] for rep in reps],
            "tokens_per_second": statistics.median(tps),
            "tokens_per_second_min": min(tps), "tokens_per_second_max": max(tps),
            "acceptance": sum(r.get("n_accept", 0) for r in last) / drafted if drafted else None,
            "tau": None, "nodes_per_step": None, "target_calls": None, "draft_calls": None,
            "host_share": None, "step_ms": None, "greedy_matches_ar": None,
            "categories": {c: {"tokens_per_second": statistics.median(
                               _median_rate(reps, tok, sec, lambda i, c=c: categories[i] == c)),
                               "tau": None, "prompts": categories.count(c),
                               "acceptance": _peer_acceptance([r for i, r in enumerate(last) if categories[i] == c])}
                           for c in cats},
        }
    base = results.get("ar", {})
    for v in results.values():
        if "error" in v:
            continue
        v["speedup"] = v["tokens_per_second"] / base["tokens_per_second"] if base.get("tokens_per_second") else None
        for c, f in v["categories"].items():
            b = base.get("categories", {}).get(c, {}).get("tokens_per_second")
            f["speedup"] = f["tokens_per_second"] / b if b else None
    _add_paired(results)
    _add_paired_categories(results, categories)
    return results


def _accepted_by_source(results) -> dict:
    """Accepted draft tokens per generated token, by the drafter that proposed them."""
    tokens = sum(r.stats.generated_tokens for r in results)
    return {f"accepted_{src}": sum(getattr(r.stats, f"accepted_{src}") for r in results) / tokens if tokens else 0.0
            for src in ("model", "ngram", "mtp", "eagle3", "dflash")}


def _peer_acceptance(runs) -> Optional[float]:
    drafted = sum(r.get("n_drafted", 0) for r in runs)
    return sum(r.get("n_accept", 0) for r in runs) / drafted if drafted else None


def _add_paired_categories(results: dict, categories: list) -> None:
    """Per category: each mode against plain decoding and against llama.cpp's best configuration
    in that category (paired over the category's prompts)."""
    from .paired import paired_ratio
    peers = [k for k, v in results.items() if k.startswith("llama.cpp") and "error" not in v]
    for c in sorted(set(categories)):
        idx = [i for i, x in enumerate(categories) if x == c]
        sub = lambda v: [[rep[i] for i in idx] for rep in v["per_prompt_tokens_per_second"]]
        best = max(peers, key=lambda k: results[k]["categories"][c]["tokens_per_second"]) if peers else None
        for name, v in results.items():
            if "error" in v or name.startswith("llama.cpp"):
                continue
            paired = {}
            for label, ref in (("ar", "ar" if "ar" in results and "error" not in results["ar"] else None),
                               ("best llama.cpp", best)):
                if ref and ref != name:
                    r = paired_ratio(sub(v), sub(results[ref])) if len(idx) > 1 else None
                    if r:
                        paired[label] = {"against": ref, **r}
            v["categories"][c]["paired"] = paired


def best_peer(results: dict) -> Optional[str]:
    peers = {k: v for k, v in results.items() if k.startswith("llama.cpp") and "error" not in v}
    return max(peers, key=lambda k: peers[k]["tokens_per_second"]) if peers else None


def print_table(results: dict) -> None:
    def cell(v, key, fmt):
        return format(v[key], fmt) if v.get(key) is not None else "-"

    print(f"{'mode':<44} {'tok/s':>8} {'min-max':>13} {'speedup':>7} {'tau':>5} {'nodes':>6} {'calls':>6} "
          f"{'host':>6} {'same':>5}")
    for name, v in results.items():
        if "error" in v:
            print(f"{name:<44} failed: {v['error'][:70]}")
            continue
        sp = f"{v['speedup']:.2f}x" if v["speedup"] else "-"
        same = f"{v['greedy_matches_ar']:.0%}" if v["greedy_matches_ar"] is not None else "-"
        spread = f"{v['tokens_per_second_min']:.0f}-{v['tokens_per_second_max']:.0f}"
        print(f"{name:<44} {v['tokens_per_second']:8.1f} {spread:>13} {sp:>7} {cell(v, 'tau', '5.2f'):>5} "
              f"{cell(v, 'nodes_per_step', '6.1f'):>6} {cell(v, 'target_calls', '6d'):>6} "
              f"{cell(v, 'host_share', '6.1%'):>6} {same:>5}")
    ok = {k: v for k, v in results.items() if "error" not in v}
    cats = sorted({c for v in ok.values() for c in v["categories"]})
    if len(cats) > 1:   # Spec-Bench style prompt files: speedup over plain per category
        print(f"\nspeedup over plain decoding (ar) per category")
        w = max(7, *(len(c) for c in cats))
        print(f"{'mode':<44} " + " ".join(f"{c:>{w}}" for c in cats))
        for name, v in ok.items():
            row = [v["categories"].get(c, {}).get("speedup") for c in cats]
            print(f"{name:<44} " + " ".join(f"{x:{w - 1}.2f}x" if x else f"{'-':>{w}}" for x in row))
    if len(cats) > 1:
        _print_categories(ok, cats)
    best = best_peer(results)
    if best:
        b = results[best]["tokens_per_second"]
        print(f"\nbest llama.cpp configuration: {best} at {b:.1f} tok/s")
    from .paired import describe
    print("\npaired speed ratios, per prompt and repeat (geometric mean, 95% interval over prompts)")
    for name, v in ok.items():
        for label, r in v.get("paired", {}).items():
            if not name.startswith("llama.cpp"):
                print(f"  {name:<44} / {label} ({r['against']}): {describe(r)}")
    rows = {k: v for k, v in ok.items() if v.get("breakdown_ms_per_step")}
    if rows:
        print("\nstep time, ms per step (profile: the cost profile's price of the verified batches; "
              "excess: step - profile)")
        print(f"{'mode':<44} {'step':>7} {'draft':>7} {'verify':>7} {'profile':>7} {'excess':>7} {'host':>6}")
        for name, v in rows.items():
            b = v["breakdown_ms_per_step"]
            print(f"{name:<44} {b['step']:7.2f} {b['draft']:7.2f} {b['verify']:7.2f} "
                  f"{b.get('profile_verify', float('nan')):7.2f} {b.get('excess', float('nan')):7.2f} {b['host']:6.2f}")
    for name, v in ok.items():
        c = v.get("calibration")
        if c:
            print(f"calibration of {name}: predicted {c['predicted_tokens_per_step']:.2f} tokens per verifying "
                  f"step, realised {c['realised_tokens_per_step']:.2f} ({c['steps']} steps)")


def _print_categories(ok: dict, cats: list) -> None:
    """Per category and mode: tok/s, tau, accepted tokens per generated token by source, and the
    paired ratios against plain decoding and llama.cpp's best configuration in the category."""
    from .paired import describe
    print("\nper category: tok/s, tau, accepted draft tokens per generated token (by source), "
          "paired ratios")
    for c in cats:
        print(f"  {c}")
        for name, v in ok.items():
            f = v["categories"].get(c)
            if not f:
                continue
            tau = f"tau {f['tau']:.2f}" if f.get("tau") else ""
            heads = "".join(f" {src} {f['accepted_' + src]:.2f}" for src in ("mtp", "eagle3", "dflash")
                            if f.get(f"accepted_{src}"))
            acc = (f"accepted ngram {f['accepted_ngram']:.2f} model {f['accepted_model']:.2f}{heads}"
                   if "accepted_ngram" in f else
                   f"acceptance {f['acceptance']:.0%}" if f.get("acceptance") is not None else "")
            print(f"    {name:<44} {f['tokens_per_second']:7.1f} tok/s {tau:>9} {acc}")
            for label, r in f.get("paired", {}).items():
                print(f"      / {label} ({r['against']}): {describe(r)}")


def bench_cache(args) -> Path:
    """Where padded models, the peer build and file hashes are kept: --cache-dir, else the user's
    heterospec cache (never the current folder: the package works from any directory)."""
    from .profile_cache import cache_dir
    return Path(args.cache_dir) if args.cache_dir else cache_dir() / "bench"


def _sha256(path: str, cache: Path) -> str:
    """A model file's sha256, remembered by path, size and mtime (an 8B file takes a while)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}:{st.st_size}:{st.st_mtime_ns}"
    memo = cache / "sha256.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        known[key] = h.hexdigest()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            memo.write_text(json.dumps(known, indent=1))
        except OSError:
            pass
    return known[key]


def environment(args, engine_info: dict, n_prompts: int) -> dict:
    from . import _core
    from .profile_cache import _cpu_name

    info = _core.build_info()
    gpus = [d for d in info["devices"] if not d.startswith("CPU")]
    cache = bench_cache(args)
    models = {"target": args.model, "draft": args.model_draft}
    if getattr(args, "compare_draft_model", None):
        models["compare_draft"] = args.compare_draft_model
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_name(),
            "cores": os.cpu_count(), "device": gpus[0] if gpus and args.n_gpu_layers != 0 else _cpu_name(),
            "devices": info["devices"], "llama_cpp": info["llama_cpp"], "system_info": info["system_info"],
            "threads": args.n_threads, "n_gpu_layers": args.n_gpu_layers, "n_ctx": engine_info["n_ctx"],
            "target_description": engine_info["target"],
            **{k: str(v) for k, v in models.items() if v},
            **{f"{k}_sha256": _sha256(v, cache) for k, v in models.items() if v},
            "padded": getattr(args, "pad", {}),
            "prompts": [str(p) for p in args.prompts] if isinstance(args.prompts, list) else str(args.prompts), "n_prompts": n_prompts, "skip": args.skip,
            "max_tokens": args.max_tokens, "repeats": args.repeats}


def project(engine: Engine, prof: dict, modes, runs, failed, token_prompts, args) -> dict:
    """Every mode's speed projected under another device's cost profile (see projection.py)."""
    from .projection import projected_rate
    out = {"profile": {k: prof[k] for k in ("device", "kind", "source") if k in prof},
           "profile_file": str(args.cost_profile), "modes": {}}
    engine._engine.set_cost_profile(prof["sizes"], prof["verify_ms"], prof["draft_level_ms"], projected=True)
    for name, kw in modes:
        if name in failed or not runs[name]:
            continue
        if kw["mode"] == "heterospec" and kw.get("cost_aware", True):
            # decides by the device's costs: run it again with that profile installed
            engine.clear_ngram_memory()
            try:
                results = [engine.generate(ids, max_tokens=args.max_tokens, temperature=0, ignore_eos=True,
                                           trace=True, **kw) for _, ids in token_prompts]
            except (ValueError, RuntimeError, OSError) as e:   # the measured figures stand
                out["modes"][name] = {"error": f"{type(e).__name__}: {e}"}
                continue
        else:
            results = [r for _, r in runs[name][-1]]
        steps = sum(r.stats.steps for r in results)
        out["modes"][name] = {"tokens_per_second": projected_rate(prof, results),
                              "tau": sum(r.stats.generated_tokens for r in results) / steps if steps else 0.0,
                              "nodes_per_step": sum(r.stats.nodes_verified for r in results) / steps if steps else 0.0}
    base = out["modes"].get("ar", {}).get("tokens_per_second")
    for v in out["modes"].values():
        if "error" not in v:
            v["speedup"] = v["tokens_per_second"] / base if base else None
    engine._profile_ready = False   # the engine's own profile is back on the next cost-aware call
    return out


def _add_projected_drafts(projected: dict, more: dict, compared: dict, profile_file: str) -> None:
    """The second draft's projected modes beside the first's, each with its ratio to the same
    mode with -md (one deterministic pricing of the recorded steps: no interval)."""
    projected["compare_profile_file"] = str(profile_file)
    base = projected["modes"].get("ar", {}).get("tokens_per_second")
    for name, v in more["modes"].items():
        if "error" not in v:
            v["speedup"] = v["tokens_per_second"] / base if base else None
            ref = projected["modes"].get(compared.get(name), {})
            if ref.get("tokens_per_second"):
                v["against"] = compared[name]
                v["ratio_to_against"] = v["tokens_per_second"] / ref["tokens_per_second"]
        projected["modes"][name] = v


def print_projection(p: dict) -> None:
    prof = p["profile"]
    print(f"\nPROJECTED (not measured) under the {prof['kind']} cost profile of {prof['device']} "
          f"({p['profile_file']}): this run's steps priced at that device's t_verify(n) and draft pass")
    print(f"{'mode':<44} {'tok/s':>8} {'speedup':>7} {'tau':>5} {'nodes':>6}")
    for name, v in p["modes"].items():
        if "error" in v:
            print(f"{name:<44} failed: {v['error']}")
            continue
        sp = f"{v['speedup']:.2f}x" if v["speedup"] else "-"
        against = f"  {v['ratio_to_against']:.3f}x {v['against']}" if v.get("against") else ""
        print(f"{name:<44} {v['tokens_per_second']:8.1f} {sp:>7} {v['tau']:5.2f} {v['nodes_per_step']:6.1f}{against}")
