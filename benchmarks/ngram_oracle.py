"""How fast could n-gram speculation be, at best, for a model on this machine?

For each prompt, plain decoding's greedy output is replayed against the engine's own n-gram
memory (the prompt and the output so far): at each step an oracle knows how far the n-gram
trie's paths agree with the output and verifies exactly that path (length L, costing t(L + 1) by
the engine's measured cost profile) when that beats L + 1 plain steps, else it runs a plain
step. No allocation can beat it: it is the perfect-foresight bound of these drafts, priced at
the measured verification costs (no noise, no host overhead).

    python3 benchmarks/ngram_oracle.py -m ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --prompts benchmarks/data/code_edit_chats.jsonl benchmarks/data/spec_bench_smollm2_subset.jsonl
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np

from heterospec import Engine, _core
from heterospec.bench import load_prompts

MAX_DEPTH = 48   # as deep as the engine's n-gram drafts go


def agreeing_length(trie, out, i) -> int:
    """How many tokens of out[i:] the trie's paths spell from its root."""
    node, n = 0, 0
    while i + n < len(out):
        node = next((c for c, (tok, parent, _) in enumerate(trie) if parent == node and tok == out[i + n]), -1)
        if node < 0:
            break
        n += 1
    return n


def oracle_speedup(engine, ids, out, t) -> float:
    index = _core.testing.SuffixIndex()
    index.push(ids)
    i, cost = 0, 0.0
    while i < len(out):
        match, starts = index.match(16, 64)
        n = agreeing_length(index.trie(starts, MAX_DEPTH), out, i) if match else 0
        step = n + 1 if n and t(n + 1) < (n + 1) * t(1) else 1
        cost += t(step)
        index.push(out[i:i + step])
        i += step
    return len(out) * t(1) / cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--prompts", nargs="+", required=True)
    ap.add_argument("--per-category", type=int, default=10)
    ap.add_argument("-n", "--max-tokens", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    with Engine(args.model, n_threads=args.threads) as engine:
        prof = engine.cost_profile()
        t = lambda n: float(np.interp(n, prof["sizes"], prof["verify_ms"]))
        by_cat: dict[str, list[float]] = {}
        for cat, text in load_prompts(args.prompts, engine, per_category=args.per_category):
            ids = engine.tokenize(text, parse_special=True)
            out = engine.generate(ids, max_tokens=args.max_tokens, temperature=0, mode="ar", ignore_eos=True).tokens
            by_cat.setdefault(cat, []).append(oracle_speedup(engine, ids, out, t))
    print(f"t(n)/t(1) for n = 2, 4, 8: {t(2) / t(1):.2f}, {t(4) / t(1):.2f}, {t(8) / t(1):.2f}")
    print("perfect-foresight n-gram speedup over plain decoding, priced at the measured profile (geometric mean)")
    for cat, r in sorted(by_cat.items()):
        print(f"  {cat:<16} {math.exp(sum(map(math.log, r)) / len(r)):.3f}x over {len(r)} prompts "
              f"(best prompt {max(r):.2f}x)")
    print(json.dumps({c: r for c, r in by_cat.items()}))


if __name__ == "__main__":
    main()
