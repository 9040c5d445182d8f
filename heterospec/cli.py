"""The `heterospec` command line. Flags follow llama.cpp's names where it has them."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import __version__
from .padding import SHAPES, TYPES


def _model_source(p, draft: Optional[str] = "draft model (GGUF) with the target's vocabulary",
                  model: str = "target model (GGUF)", draft_required: bool = False) -> None:
    """-m PATH or -hf REPO[:QUANT] (llama.cpp's flags), and the same for the draft."""
    m = p.add_mutually_exclusive_group(required=True)
    m.add_argument("-m", "--model", help=model)
    m.add_argument("-hf", "-hfr", "--hf-repo", dest="hf_repo", metavar="REPO[:QUANT]",
                   help="the model from the Hugging Face Hub (needs heterospec[hf]); QUANT picks the GGUF "
                        "(default Q4_K_M, else the first)")
    p.add_argument("-hff", "--hf-file", dest="hf_file", help="with -hf: the GGUF file (a name or glob) to use")
    if draft is None:
        return
    d = p.add_mutually_exclusive_group(required=draft_required)
    d.add_argument("-md", "--model-draft", help=draft)
    d.add_argument("-hfd", "-hfrd", "--hf-repo-draft", dest="hf_repo_draft", metavar="REPO[:QUANT]",
                   help="the draft model from the Hugging Face Hub")
    p.add_argument("-hffd", "--hf-file-draft", dest="hf_file_draft", help="with -hfd: the draft's GGUF file")


def _resolve_models(args: argparse.Namespace) -> None:
    """Models named by repository are fetched (or found in the cache) before the command runs."""
    if getattr(args, "hf_repo", None):
        from .hub import fetch
        args.model = str(fetch(args.hf_repo, args.hf_file))
    elif getattr(args, "hf_file", None):
        raise ValueError("--hf-file needs -hf")
    if getattr(args, "hf_repo_draft", None):
        from .hub import fetch
        args.model_draft = str(fetch(args.hf_repo_draft, args.hf_file_draft))
    elif getattr(args, "hf_file_draft", None):
        raise ValueError("--hf-file-draft needs -hfd")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    _model_source(g)
    g.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, dest="n_gpu_layers",
                   help="layers of the target on the GPU (-1: all, the default)")
    g.add_argument("-ngld", "--n-gpu-layers-draft", "--gpu-layers-draft", type=int, dest="n_gpu_layers_draft",
                   help="layers of the draft on the GPU (default: as -ngl)")
    g.add_argument("-c", "--ctx-size", type=int, dest="n_ctx", help="context size (0: the model's, at most 4096)")
    g.add_argument("-b", "--batch-size", type=int, dest="n_batch", help="prompt tokens per decode call (512)")
    g.add_argument("-t", "--threads", type=int, dest="n_threads", help="threads (default: physical cores)")
    g.add_argument("-tb", "--threads-batch", type=int, dest="n_threads_batch", help="threads for prompt processing")
    g.add_argument("-fa", "--flash-attn", choices=["on", "off", "auto"], dest="flash_attn", help="flash attention")
    g.add_argument("-ctk", "--cache-type-k", dest="cache_type_k", help="KV cache type for K (f16)")
    g.add_argument("-ctv", "--cache-type-v", dest="cache_type_v", help="KV cache type for V (f16)")
    g.add_argument("--max-nodes", type=int, dest="max_nodes", help="largest tree budget a call may use (64)")
    g.add_argument("-v", "--verbose", action="store_true", default=None, help="show llama.cpp's log")
    s = p.add_argument_group("sparse prefill (SampleAttention, for long prompts)")
    s.add_argument("--sparse-prefill", choices=["off", "sample"], dest="sparse_prefill",
                   help="sample: adaptive structured sparse attention over the target's prompt processing (off)")
    s.add_argument("--sparse-alpha", type=float, dest="sparse_alpha", help="attention mass to keep (0.95)")
    s.add_argument("--sparse-row-frac", type=float, dest="sparse_row_frac", help="query rows sampled (0.05)")
    s.add_argument("--sparse-window-frac", type=float, dest="sparse_window_frac",
                   help="local window, a fraction of the context (0.08)")
    s.add_argument("--sparse-k-max", type=float, dest="sparse_k_max",
                   help="most columns selected, a fraction of the context (0.25)")
    s.add_argument("--sparse-min-ctx", type=int, dest="sparse_min_ctx", help="shorter contexts stay dense (2048)")
    s.add_argument("--sparse-dense-tail", type=int, dest="sparse_dense_tail",
                   help="the prompt's last N tokens run dense: what follows reads them the most (512)")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--n-predict", "--max-tokens", type=int, dest="max_tokens", default=-1,
                   help="tokens to generate (-1: until end of generation or a full context)")
    g.add_argument("--temp", "--temperature", type=float, dest="temperature", help="temperature (0.8; <= 0: greedy)")
    g.add_argument("--top-k", type=int, dest="top_k", help="top-k (40; <= 0: off)")
    g.add_argument("--top-p", type=float, dest="top_p", help="top-p (0.95; 1: off)")
    g.add_argument("--min-p", type=float, dest="min_p", help="min-p (0.05; 0: off)")
    g.add_argument("--repeat-penalty", type=float, dest="repeat_penalty", help="repetition penalty (1.0: off)")
    g.add_argument("--repeat-last-n", type=int, dest="repeat_last_n", help="tokens the penalty looks back on (64)")
    g.add_argument("-s", "--seed", type=int, help="random seed (-1: random)")
    g.add_argument("-r", "--reverse-prompt", "--stop", action="append", dest="stop", metavar="TEXT",
                   help="stop before this text (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", default=None, help="do not stop at end-of-generation tokens")


def _spec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculative decoding")
    g.add_argument("--mode", choices=["ar", "chain", "tree", "heterospec"],
                   help="ar: plain decoding; chain: llama.cpp-style draft chain; tree: draft trees; "
                        "heterospec: entropy-allocated trees with the cost-aware budget, which runs plain "
                        "steps where speculation does not pay (the default)")
    g.add_argument("--drafter", choices=["model", "mtp", "eagle3", "dflash", "ngram", "hybrid"],
                   help="what drafts: model: the draft model (-md; llama.cpp's --spec-type draft-simple); "
                        "mtp: the target's own MTP (nextn) layers (--spec-type draft-mtp); "
                        "eagle3: an EAGLE-3 head given as -md (--spec-type draft-eagle3); "
                        "ngram: continuations of earlier text (prompt, output, earlier requests) in a tree, "
                        "no model needed (the role of llama.cpp's --spec-type ngram-simple, ngram-map-k, "
                        "ngram-map-k4v, ngram-mod and ngram-cache); hybrid: n-grams merged into the draft "
                        "model's, EAGLE-3 head's or DFlash draft's trees, or the MTP head's (default: hybrid with -md or MTP "
                        "layers, else ngram); dflash: a DFlash draft given as -md, the top-k of its block "
                        "joined into a tree (--spec-type draft-dflash drafts a chain)")
    g.add_argument("--tree-depth", type=int, dest="depth", help="tree depth d (4)")
    g.add_argument("--tree-branching", type=int, dest="branching", help="children per expanded node k (4)")
    g.add_argument("--tree-width", type=int, dest="width", help="frontier width W (4)")
    g.add_argument("--tree-budget", type=int, dest="budget", help="nodes verified per step N (7)")
    g.add_argument("--spec-draft-n-max", "--draft-max", "--draft", type=int, dest="n_max",
                   help="chain: most tokens drafted per step (3, as llama.cpp)")
    g.add_argument("--spec-draft-p-min", "--draft-p-min", type=float, dest="p_min",
                   help="chain: stop drafting below this draft probability (0.0, as llama.cpp)")
    g.add_argument("--policy", help="heterospec: policy JSON from 'heterospec calibrate' (default: built-in)")
    g.add_argument("--no-cost-aware", dest="cost_aware", action="store_false", default=None,
                   help="heterospec: keep the paper's fixed gamma instead of the cost-aware budget")
    g.add_argument("--force-policy", action="store_true", default=None, dest="force_policy",
                   help="use a policy fitted for another model pair")


ENGINE_KEYS = ("n_gpu_layers", "n_gpu_layers_draft", "n_ctx", "n_batch", "n_threads", "n_threads_batch",
               "flash_attn", "cache_type_k", "cache_type_v", "drafter", "max_nodes", "verbose", "sparse_prefill",
               "sparse_alpha", "sparse_row_frac", "sparse_window_frac", "sparse_k_max", "sparse_min_ctx",
               "sparse_dense_tail")
SAMPLING_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                 "seed", "stop", "ignore_eos", "mode", "depth", "branching", "width", "budget", "n_max", "p_min", "policy", "force_policy", "cost_aware")


def _pick(args: argparse.Namespace, keys: Sequence[str]) -> dict:
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine import Engine

    if args.file:
        with open(args.file, encoding="utf-8") as f:
            prompt = f.read()
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        raise ValueError("give a prompt with -p/--prompt or -f/--file")

    with Engine(args.model, draft=args.model_draft, **_pick(args, ENGINE_KEYS)) as engine:
        if args.display_prompt:
            sys.stdout.write(prompt)
            sys.stdout.flush()
        for piece in engine.stream(prompt, **_pick(args, SAMPLING_KEYS)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        r = engine.last_result
        s = r.stats
        spec = (f", {s.mode} ({s.drafter} drafts): {s.mean_accepted:.2f} tokens/step over {s.steps} steps, "
                f"{s.mean_nodes:.1f} nodes verified/step" if s.mode != "ar" else "")
        print(f"heterospec: {s.generated_tokens} tokens, {s.tokens_per_second:.1f} tok/s "
              f"({s.decode_ms / 1e3:.2f} s), prompt {s.prompt_tokens} tokens at "
              f"{s.prompt_tokens_per_second:.1f} tok/s{spec}, finish: {r.finish_reason}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import serve
    except ImportError as e:
        raise RuntimeError(f"the server needs its extra: pip install 'heterospec[server]' ({e})") from None
    from pathlib import Path

    from .engine import Engine

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be at least 1, got {args.max_queue}")
    if args.max_body < 1024:
        raise ValueError(f"--max-body must be at least 1024 bytes, got {args.max_body}")
    name = args.alias or Path(args.model).stem
    template = args.chat_template
    if args.chat_template_file:
        template = Path(args.chat_template_file).read_text(encoding="utf-8")
    with Engine(args.model, draft=args.model_draft, **_pick(args, ENGINE_KEYS)) as engine:
        if template:   # a template that does not parse fails here, not at the first request
            engine.format_chat([{"role": "user", "content": "x"}], chat_template=template)
        serve(engine, name, host=args.host, port=args.port, api_key=args.api_key, chat_template=template,
              max_queue=args.max_queue, log_level="debug" if args.verbose else "info", max_body=args.max_body,
              docs=args.docs)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Measures the cost profile ahead of time (the first cost-aware generation would), caches
    it and prints it."""
    from .engine import Engine
    with Engine(args.model, draft=args.model_draft, **_pick(args, ENGINE_KEYS)) as engine:
        if args.force:
            engine._profile_stale = "--force"
        p = engine.cost_profile()
    print(f"{'n':>5} {'t_verify(n) ms':>15} {'per token':>10}")
    for n, ms in zip(p["sizes"], p["verify_ms"]):
        print(f"{n:>5} {ms:>15.3f} {ms / n:>10.3f}")
    print(f"one draft level: {p['draft_level_ms']:.3f} ms")
    return 0


# bench --regime: the standard configurations of benchmarks/README.md
REGIMES = {"memory-bound": ("cpu-300m", "f16"), "compute-bound": ("cpu-300m", "q8_0")}


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run
    if args.regime:
        if args.pad_target:
            raise ValueError("--regime sets the padding itself: give it or --pad-target, not both")
        args.pad_target, args.pad_type = REGIMES[args.regime]
    return run(args)


def cmd_eval_prefill(args: argparse.Namespace) -> int:
    from .eval_prefill import run
    if not args.lengths or min(args.lengths) < 16:
        raise ValueError("--lengths needs prompt lengths of at least 16 tokens")
    if args.n_predict < 1 or args.repeats < 1 or args.documents < 1:
        raise ValueError("-n, --repeats and --documents must be at least 1")
    if any(not 0.0 <= d <= 1.0 for d in args.needle_depths):
        raise ValueError("--needle-depths must be in [0, 1]")
    return run(args)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import run
    return run(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="heterospec", description="Exact tree speculative decoding for GGUF models.")
    ap.add_argument("--version", action="version", version=f"heterospec {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt, streaming it to stdout")
    _model_args(g)
    g.add_argument("-p", "--prompt", help="prompt text")
    g.add_argument("-f", "--file", help="read the prompt from a file")
    g.add_argument("--no-display-prompt", dest="display_prompt", action="store_false",
                   help="do not echo the prompt before the continuation")
    _sampling_args(g)
    _spec_args(g)
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API (needs heterospec[server])")
    _model_args(s)
    s.add_argument("--drafter", choices=["model", "mtp", "eagle3", "dflash", "ngram", "hybrid"],
                   help="what drafts (default: hybrid with -md or MTP layers, else ngram); requests may "
                        "override it")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8080, help="port (8080; 0: any free port)")
    s.add_argument("--api-key", dest="api_key", help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    s.add_argument("-a", "--alias", help="model name the API reports and accepts (default: the file's stem)")
    s.add_argument("--max-queue", type=int, default=64, dest="max_queue",
                   help="requests running or waiting beyond which the server answers 503 (64)")
    s.add_argument("--max-body", type=int, default=8 * 2**20, dest="max_body",
                   help="largest request body in bytes; larger ones get 413 (8 MiB)")
    s.add_argument("--docs", action="store_true", help="serve the OpenAPI schema and /docs (off by default)")
    s.add_argument("--chat-template", dest="chat_template",
                   help="chat template: Jinja source or a llama.cpp built-in name (default: the GGUF's)")
    s.add_argument("--chat-template-file", dest="chat_template_file", help="read the Jinja chat template from a file")
    s.set_defaults(func=cmd_serve)

    pr = sub.add_parser("profile", help="measure this machine's cost profile now, so that the first generation "
                                        "does not (cached per model pair, settings and machine)")
    _model_args(pr)
    pr.add_argument("--force", action="store_true", help="measure again even when a profile is cached")
    pr.set_defaults(func=cmd_profile)

    b = sub.add_parser("bench", help="measure decoding modes side by side (greedy)")
    _model_source(b, "draft model (GGUF)")
    b.add_argument("--prompts", required=True, nargs="+",
                   help="JSONL files with a 'prompt' or 'turns' field per line (turns: chat-formatted)")
    b.add_argument("--limit", type=int, help="use the first N prompts")
    b.add_argument("--skip", type=int, default=0, help="skip the first N lines (e.g. those used to calibrate)")
    b.add_argument("--per-category", type=int, help="use the first N prompts of each category")
    b.add_argument("-n", "--max-tokens", type=int, default=96, dest="max_tokens", help="tokens per prompt (96)")
    b.add_argument("--repeats", type=int, default=3, help="repeats, interleaved across modes (3)")
    b.add_argument("--modes", nargs="+", default=["ar", "chain", "tree"],
                   help="modes, e.g. ar chain:n_max=4,p_min=0.75 tree:depth=6,budget=16")
    b.add_argument("-t", "--threads", type=int, dest="n_threads")
    b.add_argument("-c", "--ctx-size", type=int, dest="n_ctx")
    b.add_argument("-ngl", "--n-gpu-layers", type=int, dest="n_gpu_layers")
    b.add_argument("--json", help="write every figure to this JSON file")
    b.add_argument("--peer", action="store_true",
                   help="also run llama.cpp from the same pin, built on demand: plain decoding and "
                        "llama-speculative-simple over a grid (with -md: draft-simple n_max/p_min; without: "
                        "the draftless types ngram-simple, ngram-map-k, ngram-mod, ngram-cache)")
    b.add_argument("--cache-dir", help="where the peer is built and padded models are kept (default: "
                   "$HETEROSPEC_CACHE_DIR/bench, else ~/.cache/heterospec/bench)")
    b.add_argument("--plot", help="write the speedup chart (PNG) here (default: beside --json)")
    b.add_argument("--pad-target", choices=SHAPES, help="benchmark the target padded to this shape "
                   "(same function, a big model's cost; made once, for llama and qwen35 models)")
    b.add_argument("--pad-draft", choices=SHAPES, help="likewise for the draft")
    b.add_argument("--compare-draft", metavar="PATH",
                   help="a second draft (model, EAGLE-3 head or DFlash draft): every speculative mode runs again "
                        "with it on a second engine, interleaved in the same repeats, with a paired ratio "
                        "against the same mode with -md (a draft model is padded by --pad-draft, a head "
                        "with the target)")
    b.add_argument("--pad-type", choices=TYPES, default="q8_0", help="weight type of padded models (q8_0)")
    b.add_argument("--regime", choices=sorted(REGIMES), help="standard configurations: 'memory-bound' pads the "
                   "target to cpu-300m in F16 (a GPU-like cost curve on a CPU), 'compute-bound' in q8_0")
    b.add_argument("--cost-profile", help="also PROJECT each mode's speed under another device's cost profile "
                   "(JSON, see benchmarks/profiles/); projected figures are printed apart from measured ones")
    b.add_argument("--compare-cost-profile", help="with --cost-profile and --compare-draft: the same device's "
                   "profile with --compare-draft's draft pass, to PROJECT the second draft's modes too")
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("eval-prefill", help="sparse prefill (SampleAttention) against dense attention: "
                                           "TTFT, KL, top-1 agreement, greedy continuation, needle grid")
    _model_source(e, None, model="model (GGUF)")
    e.add_argument("-c", "--ctx-size", type=int, default=8448, dest="n_ctx", help="context size (8448)")
    e.add_argument("-b", "--batch-size", type=int, dest="n_batch", help="prompt tokens per decode call (512)")
    e.add_argument("-t", "--threads", type=int, dest="n_threads")
    e.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192], help="prompt lengths in tokens")
    e.add_argument("-n", "--n-predict", type=int, default=64, dest="n_predict", help="continuation for KL and top-1 (64)")
    e.add_argument("--documents", type=int, default=4,
                   help="documents per length, disjoint stretches of the source text (4)")
    e.add_argument("--repeats", type=int, default=1,
                   help="TTFT pairs per document, the order alternating (1)")
    e.add_argument("--needle-depths", type=float, nargs="*", default=[0.1, 0.5, 0.9], dest="needle_depths",
                   help="needle depths (0: start, 1: end); none: no needle grid")
    e.add_argument("--needle-lengths", type=int, nargs="*", dest="needle_lengths",
                   help="needle grid prompt lengths (default: --lengths)")
    e.add_argument("--sparse-alpha", type=float, dest="sparse_alpha")
    e.add_argument("--sparse-row-frac", type=float, dest="sparse_row_frac")
    e.add_argument("--sparse-window-frac", type=float, dest="sparse_window_frac")
    e.add_argument("--sparse-k-max", type=float, dest="sparse_k_max")
    e.add_argument("--sparse-min-ctx", type=int, dest="sparse_min_ctx")
    e.add_argument("--sparse-dense-tail", type=int, dest="sparse_dense_tail")
    e.add_argument("--floor", action="store_true",
                   help="also score each document dense with half the ubatch: the KL and top-1 that "
                        "llama.cpp's own rounding leaves (one more dense prefill per document)")
    e.add_argument("--json", help="write every figure to this JSON file")
    e.set_defaults(func=cmd_eval_prefill)

    c = sub.add_parser("calibrate", help="fit the entropy partition (policy JSON) for a model pair")
    _model_source(c, "draft model or EAGLE-3 head (GGUF)", draft_required=True)
    c.add_argument("--prompts", required=True, help="JSONL file with a 'prompt' or 'turns' field per line")
    c.add_argument("--limit", type=int, help="use the first N prompts")
    c.add_argument("--skip", type=int, default=0, help="skip the first N lines")
    c.add_argument("-n", "--max-tokens", type=int, default=128, dest="max_tokens", help="tokens per prompt (128)")
    c.add_argument("--tree-depth", type=int, default=4, dest="depth")
    c.add_argument("--tree-branching", type=int, default=4, dest="branching")
    c.add_argument("--tree-width", type=int, default=4, dest="width")
    c.add_argument("--tree-budget", type=int, default=7, dest="budget")
    c.add_argument("--drafter", choices=["model", "eagle3", "dflash", "hybrid"],
                   help="what drafts the base trees (default: hybrid: the draft model's or the head's with n-grams)")
    c.add_argument("-t", "--threads", type=int, dest="n_threads")
    c.add_argument("-c", "--ctx-size", type=int, dest="n_ctx")
    c.add_argument("-o", "--output", default="policy.json", help="policy file to write (policy.json)")
    c.set_defaults(func=cmd_calibrate)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _resolve_models(args)
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"heterospec: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nheterospec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
