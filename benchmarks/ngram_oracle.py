"""How fast could n-gram speculation be for a model on this machine, with and without foresight?

For each prompt, plain decoding's greedy output (stopping where the bench's does) is replayed
against the engine's own n-gram memory (the prompt and the output so far). At each step:

- **perfect foresight**: an oracle knows how far the n-gram trie's paths agree with the output
  and verifies exactly that path (L nodes, costing t(L + 1)) when that beats L + 1 plain steps.
  No allocation can beat it.
- **fixed chain k**: no foresight; whenever there is a match, verify the trie's most frequent
  path, k nodes deep. The best k is what the simplest allocation reaches.
- **calibrated**: no foresight, but the chance of accepting a node at depth d given its parent
  (the hazard, measured on these very outputs, so optimistic) times its share of its parent's
  occurrences; each step verifies the n best nodes of the trie that maximise expected tokens
  per ms. This is about the best an allocation that knows only the trie can do.

Steps are priced at the engine's measured cost profile t(n) (an empty context) plus what the
prompt's context adds: plain decoding's measured ms per token less t(1), grown for a batch of
n tokens as n ** 0.72 (the patched CPU attention kernel's cost at 1,500 keys for n = 1..16).
No noise, no host overhead.

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
CHAINS = (1, 2, 3, 4, 6, 8)
ATTENTION_GROWTH = 0.72


class Replay:
    """One prompt's output replayed step by step against a fresh n-gram memory."""

    def __init__(self, ids, out):
        self.out, self.i = out, 0
        self.index = _core.testing.SuffixIndex()
        self.index.push(ids)

    def trie(self):
        """The drafts at this step: rows of (token, parent, count), parents first; [] for no match."""
        match, starts = self.index.match(16, 64)
        return self.index.trie(starts, MAX_DEPTH) if match else []

    def advance(self, accepted: int) -> None:
        step = accepted + 1   # the accepted nodes and the target's own token
        self.index.push(self.out[self.i:self.i + step])
        self.i += step


def children(trie, node):
    """A trie node's children as (row, token, count), most frequent first."""
    return sorted(((c, tok, n) for c, (tok, parent, n) in enumerate(trie) if parent == node), key=lambda x: -x[2])


def agreeing_path(trie, chosen, out, i) -> list[int]:
    """The chosen trie rows that spell out[i:] from the root, in order: the accepted path."""
    path, node = [], 0
    while i + len(path) < len(out):
        node = next((c for c in chosen if trie[c][1] == node and trie[c][0] == out[i + len(path)]), -1)
        if node < 0:
            break
        path.append(node)
    return path


def top_chain(trie, k):
    """The rows of the trie's most frequent path, k deep at most."""
    rows, node = [], 0
    while len(rows) < k:
        kids = children(trie, node)
        if not kids:
            break
        node = kids[0][0]
        rows.append(node)
    return rows


def depths(trie):
    d = [0] * len(trie)
    for c, (_, parent, _) in enumerate(trie):
        if c:
            d[c] = d[parent] + 1
    return d


def replay(ids, out, t, choose) -> tuple[float, list[int]]:
    """Speedup over plain decoding when each step verifies the trie rows choose(trie) returns
    (None: the oracle's agreeing path), and the agreeing lengths seen (for the hazard)."""
    r, cost, seen = Replay(ids, out), 0.0, []
    while r.i < len(out):
        trie = r.trie()
        agree = agreeing_path(trie, range(1, len(trie)), out, r.i)
        seen.append(len(agree))
        if choose is None:   # the oracle: the agreeing path, when it beats plain steps
            chosen = agree if t(len(agree) + 1) < (len(agree) + 1) * t(1) else []
        else:
            chosen = choose(trie) if trie else []
        cost += t(len(chosen) + 1)
        r.advance(len(agreeing_path(trie, chosen, out, r.i)))
    return len(out) * t(1) / cost, seen


def calibrated(t, hazard):
    def choose(trie):
        d = depths(trie)
        est = [1.0] * len(trie)
        for c in range(1, len(trie)):
            _, parent, n = trie[c]
            est[c] = est[parent] * hazard[min(d[c], len(hazard)) - 1] * n / trie[parent][2]
        order = sorted(range(1, len(trie)), key=lambda c: -est[c])
        best, tokens, rate = 0, 1.0, 1.0 / t(1)
        for k, c in enumerate(order[:64], 1):
            tokens += est[c]
            if tokens / t(k + 1) > rate:
                best, rate = k, tokens / t(k + 1)
        return order[:best]
    return choose


def geomean(xs) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--prompts", nargs="+", required=True)
    ap.add_argument("--per-category", type=int, default=10)
    ap.add_argument("-n", "--max-tokens", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    items = []
    with Engine(args.model, n_threads=args.threads) as engine:
        prof = engine.cost_profile()
        t0 = lambda n: float(np.interp(n, prof["sizes"], prof["verify_ms"]))
        for cat, text in load_prompts(args.prompts, engine, per_category=args.per_category):
            ids = engine.tokenize(text, parse_special=True)
            r = engine.generate(ids, max_tokens=args.max_tokens, temperature=0, mode="ar")
            plain_ms = r.stats.decode_ms / max(1, r.stats.generated_tokens - 1)
            items.append((cat, ids, r.tokens, max(0.0, plain_ms - t0(1))))
    print(f"t(n)/t(1) at an empty context for n = 2, 4, 8: {t0(2) / t0(1):.2f}, {t0(4) / t0(1):.2f}, "
          f"{t0(8) / t0(1):.2f}")
    priced = lambda extra: (lambda n: t0(n) + extra * n ** ATTENTION_GROWTH)
    # the hazard: P(the output agrees at depth d | it agrees at d - 1), over every category's steps
    seen = [a for _, ids, out, extra in items for a in replay(ids, out, priced(extra), None)[1]]
    hazard = [sum(a >= d for a in seen) / max(1, sum(a >= d - 1 for a in seen)) for d in range(1, MAX_DEPTH + 1)]
    by_cat: dict[str, dict[str, list[float]]] = {}
    for cat, ids, out, extra in items:
        t = priced(extra)
        row = by_cat.setdefault(cat, {})
        row.setdefault("foresight", []).append(replay(ids, out, t, None)[0])
        for k in CHAINS:
            row.setdefault(f"chain {k}", []).append(replay(ids, out, t, lambda trie: top_chain(trie, k))[0])
        row.setdefault("calibrated", []).append(replay(ids, out, t, calibrated(t, hazard))[0])
    print("hazard by depth 1-8:", " ".join(f"{h:.2f}" for h in hazard[:8]))
    print("n-gram speedup over plain decoding, priced at the measured costs with the context's (geometric mean)")
    print(f"  {'category':<16} {'foresight':>9} {'best chain':>14} {'calibrated':>10}")
    summary = {}
    for cat, row in sorted(by_cat.items()):
        g = {name: geomean(v) for name, v in row.items()}
        k = max(CHAINS, key=lambda k: g[f"chain {k}"])
        print(f"  {cat:<16} {g['foresight']:>8.3f}x {g[f'chain {k}']:>8.3f}x (k={k}) {g['calibrated']:>9.3f}x")
        summary[cat] = {"prompts": len(row["foresight"]), **g}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
