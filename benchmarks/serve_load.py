"""Load and prompt-cache benchmark of `heterospec serve` (issue 10), bounded, on 127.0.0.1 only.

  python3 benchmarks/serve_load.py -m ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --prompts benchmarks/data/spec_bench_smollm2_subset.jsonl --clients 8 --requests 25 \
      --json benchmarks/results-serve-load.json

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
    code = source[: tokens * 3]   # about 3 characters a token for code with this vocabulary
    return [{"role": "user", "content": "Here is a module:\n```python\n" + code + "\n```\nWhat does it do?"},
            {"role": "assistant", "content": "It wraps and fills paragraphs of text, and dedents and indents blocks."}]


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
            serial = [chat(c, url, p, args.max_tokens)["choices"][0]["message"]["content"] for p in prompts]

        latencies, mismatches, tokens = [], [], [0]
        lock = threading.Lock()

        def client(k: int) -> None:
            with httpx.Client() as c:
                for j in range(args.requests):
                    i = (j + 3 * k) % len(prompts)
                    t0 = time.perf_counter()
                    r = chat(c, url, prompts[i], args.max_tokens)
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
                        tokens[0] += r["usage"]["completion_tokens"]
                        if r["choices"][0]["message"]["content"] != serial[i]:
                            mismatches.append(i)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
        out["rss_mib_after"] = rss_mib(server.proc.pid)
        q = statistics.quantiles(latencies, n=20)
        out.update(completed=len(latencies), equal_to_serial=len(latencies) - len(mismatches),
                   mismatched_prompts=sorted(set(mismatches)), wall_s=wall, p50_s=statistics.median(latencies),
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

    print(f"load: {out['completed']} requests ({args.clients} clients x {args.requests}), "
          f"{out['equal_to_serial']} equal to their serial reply; p50 {out['p50_s']:.2f} s, p95 {out['p95_s']:.2f} s; "
          f"{out['requests_per_s']:.2f} req/s, {out['tokens_per_s']:.1f} tok/s; "
          f"RSS {out['rss_mib_before']:.0f} -> {out['rss_mib_after']:.0f} MiB")
    print(f"prompt cache ({out['history_prompt_tokens']}-token history): TTFT warm {out['ttft_warm_median_s'] * 1e3:.0f} ms, "
          f"cold {out['ttft_cold_median_s'] * 1e3:.0f} ms, paired ratio {out['ttft_ratio_paired']:.3f}; "
          f"outputs equal: {out['cache_outputs_equal']}; serve exit code {out['exit_code']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0 if out["equal_to_serial"] == out["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
