"""Load and prompt-cache benchmark of `heterospec serve` (issue 10), bounded, on 127.0.0.1 only.

  python3 benchmarks/serve_load.py -m ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --prompts benchmarks/data/spec_bench_smollm2_subset.jsonl --clients 8 --requests 25 \
      --json benchmarks/results/serve-load.json

1. Starts `heterospec serve` (port 0) and reads its resident memory.
2. Serial pass: each distinct prompt once, greedy, one request at a time.
3. Load: `--clients` threads each send `--requests` requests (the same prompts, each client in
   its own rotation); every reply is compared with the serial reply of its prompt; latency
   p50/p95, throughput, resident memory after.
4. Prompt cache: a chat whose history is about `--history-tokens` tokens; the next turn's time to
   first token (first streamed piece, client side) with the history cached (its previous turn
   just ran) against a cold start (cache_prompt false), interleaved, `--cache-repeats` pairs.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, model: str, threads: int, n_ctx: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "heterospec", "serve", "-m", model, "--port", "0",
                                      "-t", str(threads), "-c", str(n_ctx)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = None
        found = threading.Event()

        def drain():   # read the log to the end, so that the pipe never fills
            for line in self.proc.stderr:
                m = re.search(r"(http://127\.0\.0\.1:\d+)/v1", line)
                if m and not self.url:
                    self.url = m.group(1)
                    found.set()
        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(120):
            self.proc.kill()
            raise RuntimeError("heterospec serve did not start")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def chat(client: httpx.Client, url: str, messages, max_tokens: int, **extra) -> dict:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}
    r = client.post(url + "/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json()


def reply(r: dict) -> tuple[str, list[str]]:
    """The reply's text and its tokens (from logprobs: load requests ask for them)."""
    c = r["choices"][0]
    return c["message"]["content"], [t["token"] for t in (c.get("logprobs") or {}).get("content") or []]


def ttft(client: httpx.Client, url: str, messages, max_tokens: int, **extra) -> tuple[float, str]:
    """Seconds to the first streamed piece of text, and the whole reply."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True, **extra}
    t0 = time.perf_counter()
    first, text = None, []
    with client.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for c in json.loads(line[6:]).get("choices", []):
                piece = c.get("delta", {}).get("content")
                if piece:
                    first = first or time.perf_counter() - t0
                    text.append(piece)
    return first, "".join(text)


def load_prompts(path: str, n: int) -> list[list[dict]]:
    out = []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        out.append([{"role": "user", "content": row["turns"][0] if "turns" in row else row["prompt"]}])
        if len(out) == n:
            break
    return out


def history_chat(tokens: int) -> list[dict]:
    """A code-review chat of about `tokens` tokens (Python sources from the standard library)."""
    import inspect
    import textwrap
    source = textwrap.dedent(inspect.getsource(textwrap))
    code = source[: int(tokens * 3.6)]   # about 3.6 characters a token for this code and vocabulary
    return [{"role": "user", "content": "Here is a module:\n```python\n" + code + "\n```\nWhat does it do?"},
            {"role": "assistant", "content": "It wraps and fills paragraphs of text, and dedents and indents blocks."}]


def parting_gaps(model: str, prompts, serial, mismatches, max_tokens: int, n_ctx: int) -> dict:
    """Certifies replies that part from their serial reply: for each of the two, the position where
    it leaves llama.cpp's own greedy loop, and llama.cpp's top-two logit gap there; and llama.cpp's
    own noise (a position's gap in its one-token loop against a batched pass, as in
    tests/test_ngram.py). Gaps within the noise are near-ties that batching may flip."""
    from heterospec import Engine, _core

    gaps_at, noise = [], 0.0
    with Engine(model, n_ctx=n_ctx, n_threads=2) as e:
        for i in sorted({m["prompt"] for m in mismatches}):
            ids = e.tokenize(e.format_chat(prompts[i]), parse_special=True)
            toks, gaps = _core.testing.llama_cpp_greedy(model, ids, max_tokens, n_ctx, 2)
            ref = [e.detokenize([t], special=True) for t in toks]
            replies = {tuple(serial[i][1])} | {tuple(m["tokens"]) for m in mismatches if m["prompt"] == i}
            for tokens in replies:
                k = next((j for j, (a, b) in enumerate(zip(tokens, ref)) if a != b), None)
                if k is not None:   # else equal to llama.cpp's greedy reply (or a prefix of it)
                    gaps_at.append(float(gaps[k]))
            for k in range(0, len(toks), 8):   # llama.cpp's noise on this prompt
                t, g = _core.testing.llama_cpp_greedy(model, list(ids) + list(toks[:k]), 1, n_ctx, 2)
                noise = max(noise, abs(gaps[k] - g[0]) if t[0] == toks[k] else gaps[k] + g[0])
    return {"gaps_at_parting": sorted(gaps_at), "llama_cpp_batch_noise": noise,
            "all_within_2x_noise": all(g < 2 * noise for g in gaps_at)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="requests per client (also the distinct prompts)")
    ap.add_argument("-n", "--max-tokens", type=int, default=48)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    ap.add_argument("--history-tokens", type=int, default=1000)
    ap.add_argument("--cache-repeats", type=int, default=5)
    ap.add_argument("--extra", type=json.loads, default={},
                    help='JSON fields added to every load request, e.g. \'{"mode": "ar", "cache_prompt": false}\'')
    ap.add_argument("--json")
    args = ap.parse_args()

    prompts = load_prompts(args.prompts, args.requests)
    server = Server(args.model, args.threads, args.ctx_size)
    url = server.url
    out: dict = {"command": " ".join(sys.argv), "model": args.model, "clients": args.clients,
                 "requests_per_client": args.requests, "max_tokens": args.max_tokens}
    try:
        with httpx.Client() as c:
            chat(c, url, prompts[0], 4)   # warm-up: the cost profile, first allocations
            out["rss_mib_before"] = rss_mib(server.proc.pid)
            t0 = time.perf_counter()
            serial = [reply(chat(c, url, p, args.max_tokens, logprobs=True, **args.extra)) for p in prompts]
            out["serial_requests_per_s"] = len(prompts) / (time.perf_counter() - t0)

        latencies, mismatches, tokens = [], [], [0]
        lock = threading.Lock()

        def client(k: int) -> None:
            with httpx.Client() as c:
                for j in range(args.requests):
                    i = (j + 3 * k) % len(prompts)
                    t0 = time.perf_counter()
                    r = chat(c, url, prompts[i], args.max_tokens, logprobs=True, **args.extra)
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
                        tokens[0] += r["usage"]["completion_tokens"]
                        got, got_tokens = reply(r)
                        if got != serial[i][0]:   # where it parts, and whether it is another prompt's reply
                            same = next((k for k, (a, b) in enumerate(zip(got_tokens, serial[i][1])) if a != b),
                                        min(len(got_tokens), len(serial[i][1])))
                            mismatches.append({"prompt": i, "parted_at_token": same, "tokens": got_tokens,
                                               "another_prompts_reply": got in [t for t, _ in serial], "text": got})

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
        out["rss_mib_after"] = rss_mib(server.proc.pid)
        q = statistics.quantiles(latencies, n=20)
        out.update(completed=len(latencies), equal_to_serial=len(latencies) - len(mismatches),
                   mismatches=mismatches, wall_s=wall, p50_s=statistics.median(latencies),
                   p95_s=q[18], requests_per_s=len(latencies) / wall, tokens_per_s=tokens[0] / wall)

        # prompt cache: the next turn of a long chat, warm against cold, interleaved
        hist = history_chat(args.history_tokens)
        warm, cold = [], []
        with httpx.Client() as c:
            for r in range(args.cache_repeats):
                turn = hist + [{"role": "user", "content": f"Summarise it in {r + 2} words."}]
                prev = chat(c, url, hist + [{"role": "user", "content": "Name one function in it."}], 8)
                out["history_prompt_tokens"] = prev["usage"]["prompt_tokens"]
                w, wtext = ttft(c, url, turn, 8)
                cl, ctext = ttft(c, url, turn, 8, cache_prompt=False)
                warm.append(w)
                cold.append(cl)
                out.setdefault("cache_outputs_equal", True)
                out["cache_outputs_equal"] &= wtext == ctext
        out.update(ttft_warm_s=warm, ttft_cold_s=cold, ttft_warm_median_s=statistics.median(warm),
                   ttft_cold_median_s=statistics.median(cold),
                   ttft_ratio_paired=statistics.median(w / c for w, c in zip(warm, cold)))
    finally:
        out["exit_code"] = server.stop()
    if mismatches:
        out["certification"] = parting_gaps(args.model, prompts, serial, mismatches, args.max_tokens, args.ctx_size)

    print(f"serial: {out['serial_requests_per_s']:.2f} req/s")
    print(f"load: {out['completed']} requests ({args.clients} clients x {args.requests}), "
          f"{out['equal_to_serial']} equal to their serial reply; p50 {out['p50_s']:.2f} s, p95 {out['p95_s']:.2f} s; "
          f"{out['requests_per_s']:.2f} req/s, {out['tokens_per_s']:.1f} tok/s; "
          f"RSS {out['rss_mib_before']:.0f} -> {out['rss_mib_after']:.0f} MiB")
    print(f"prompt cache ({out['history_prompt_tokens']}-token history): TTFT warm {out['ttft_warm_median_s'] * 1e3:.0f} ms, "
          f"cold {out['ttft_cold_median_s'] * 1e3:.0f} ms, paired ratio {out['ttft_ratio_paired']:.3f}; "
          f"outputs equal: {out['cache_outputs_equal']}; serve exit code {out['exit_code']}")
    if mismatches:
        cert = out["certification"]
        print(f"replies that part from their serial reply: {len(mismatches)} "
              f"(another prompt's reply: {sum(m['another_prompts_reply'] for m in mismatches)}); llama.cpp's top-two "
              f"gap where they leave its greedy loop: max {max(cert['gaps_at_parting'], default=0):.3f}, its own "
              f"batch noise {cert['llama_cpp_batch_noise']:.3f}: all near-ties: {cert['all_within_2x_noise']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0 if out["equal_to_serial"] == out["completed"] or out["certification"]["all_within_2x_noise"] else 1


if __name__ == "__main__":
    sys.exit(main())
