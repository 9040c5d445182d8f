#!/usr/bin/env python3
"""An EAGLE-3 head trained for ../shared/models/code-target.gguf (issue #20 item 5).

The recipe of EAGLE-3 (Li et al., 2025), scaled to this CPU: the target stays frozen; the head
reads the inputs of three of its layers (low, middle, high: target layers 1, 3 and 5 of 6),
concatenated and projected by `fc` to g_p, and one decoder layer whose row for token x_p pairs
its embedding with g_{p-1} predicts x_{p+1}; its labels are the target's own next-token
distributions (a forward KL to them), so that it learns what the target would say. Training-time
test: the head is unrolled over --ttt steps, step j feeding each row the head's own output state
of step j-1 (as drafting does beyond the first level), its attention covering the target-state
rows before it and its own chain of earlier steps.

The PyTorch head computes what the pin's eagle3 graphs compute (third_party llama.cpp
src/models/eagle3.cpp): encoder g = fc(features); decoder u = concat(rms(emb x) * attn_norm,
rms(g) * attn_norm_2); h = g + attn(u) (causal, RoPE on adjacent pairs as the llama
architecture, heads of 64); out = h + ffn(rms(h) * ffn_norm) (the pre-norm state fed back); logits =
rms(out) * output_norm @ token_embd^T (the target's, borrowed: code-target ties its output to its
embedding). Row p runs at position p, as HeteroSpec runs it (the pin's driver runs the same row
at p - 1: attention only sees differences of positions).

Written as a GGUF of architecture eagle3 (F32, the target's tokenizer metadata), which
HeteroSpec (drafter="eagle3") and llama.cpp's `--spec-type draft-eagle3` both load.

Stages (each skipped when its output exists; --work, default benchmarks/.cache/code-eagle3/):
  tokens   the Python-source corpus and its tokens, made by make_qwen35_mtp.py's stages (same
           corpus, same held-out packages, same tokenizer as code-target.gguf); reused from
           benchmarks/.cache/qwen35-mtp/ when there
  head     train the head (AdamW, warmup + cosine over the step count or the time budget)
  export   the GGUF
  checks   held-out acceptance by depth in PyTorch (greedy chains of --depth tokens drafted from
           the target's greedy text), llama.cpp vs PyTorch logits of the head, and acceptance
           through the engine (drafter="eagle3"); saved as <gguf>.checks.json

Usage: make_code_eagle3.py [OUT.gguf] [--target code-target.gguf] [--minutes M] [--steps N]
       [--ttt K] [--threads 2] [--no-engine]
Needs torch, numpy, gguf (gguf-py) and, for the checks, heterospec.
"""
import argparse, json, math, os, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
TARGET = REPO.parent / "shared" / "models" / "code-target.gguf"
LAYERS = (1, 3, 5)     # low, middle, high of the target's 6 layers (inputs of these layers)
EPS = 1e-5


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rope_tables(T, hd):
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(T).float(), inv)
    return ang.cos(), ang.sin()


def rope(x, cos, sin):   # x: B, H, T, hd; adjacent pairs (llama.cpp's NORM rope)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


# ---------------------------------------------------------------------------- the target

class Target(nn.Module):
    """code-target.gguf in PyTorch (make_code_pair.py's model), frozen."""

    def __init__(self, path: Path):
        super().__init__()
        import gguf
        r = gguf.GGUFReader(str(path))
        f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}
        self.d, self.n_layer = int(f["llama.embedding_length"]), int(f["llama.block_count"])
        self.n_head, self.n_kv = int(f["llama.attention.head_count"]), int(f["llama.attention.head_count_kv"])
        self.hd = self.d // self.n_head
        W = {t.name: torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(list(reversed(t.shape.tolist()))))
             for t in r.tensors}
        self.W = W
        for p in W.values():
            p.requires_grad_(False)

    def forward(self, x, layers=LAYERS):
        """(features of `layers` concatenated: B, T, 3d; logits: B, T, V)."""
        W, B, T = self.W, *x.shape
        cos, sin = rope_tables(T, self.hd)
        h = W["token_embd.weight"][x]
        feats = []
        for i in range(self.n_layer):
            if i in layers:
                feats.append(h)
            b = f"blk.{i}."
            u = rms(h, W[b + "attn_norm.weight"])
            q = (u @ W[b + "attn_q.weight"].T).view(B, T, self.n_head, self.hd).transpose(1, 2)
            k = (u @ W[b + "attn_k.weight"].T).view(B, T, self.n_kv, self.hd).transpose(1, 2)
            v = (u @ W[b + "attn_v.weight"].T).view(B, T, self.n_kv, self.hd).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + a.transpose(1, 2).reshape(B, T, -1) @ W[b + "attn_output.weight"].T
            u = rms(h, W[b + "ffn_norm.weight"])
            h = h + (F.silu(u @ W[b + "ffn_gate.weight"].T) * (u @ W[b + "ffn_up.weight"].T)) @ W[b + "ffn_down.weight"].T
        logits = rms(h, W["output_norm.weight"]) @ W["token_embd.weight"].T
        return torch.cat(feats, -1), logits


# ---------------------------------------------------------------------------- the head

class Eagle3(nn.Module):
    def __init__(self, d, n_head, n_ff, n_feat, emb):
        super().__init__()
        self.d, self.n_head, self.hd = d, n_head, d // n_head
        self.emb = emb   # the target's token embedding (and output matrix), frozen
        self.fc = nn.Linear(n_feat, d, bias=False)
        self.attn_norm = nn.Parameter(torch.ones(d))
        self.hidden_norm = nn.Parameter(torch.ones(d))
        self.q = nn.Linear(2 * d, d, bias=False)
        self.k = nn.Linear(2 * d, d, bias=False)
        self.v = nn.Linear(2 * d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.ffn_norm = nn.Parameter(torch.ones(d))
        self.gate = nn.Linear(d, n_ff, bias=False)
        self.up = nn.Linear(d, n_ff, bias=False)
        self.down = nn.Linear(n_ff, d, bias=False)
        self.output_norm = nn.Parameter(torch.ones(d))
        for lin in (self.fc, self.q, self.k, self.v, self.gate, self.up):
            nn.init.normal_(lin.weight, std=0.02)
        for lin in (self.o, self.down):
            nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2))

    def qkv(self, tokens, g, pos0):
        """Rows (token, state) at positions pos0..: q, k, v (B, H, T, hd)."""
        B, T = tokens.shape
        u = torch.cat((rms(self.emb[tokens], self.attn_norm), rms(g, self.hidden_norm)), -1)
        cos, sin = rope_tables(pos0 + T, self.hd)
        cos, sin = cos[pos0:], sin[pos0:]
        sh = lambda t: t.view(B, T, self.n_head, self.hd).transpose(1, 2)   # noqa: E731
        return rope(sh(self.q(u)), cos, sin), rope(sh(self.k(u)), cos, sin), sh(self.v(u))

    def finish(self, g, a):
        B, T, _ = g.shape
        h = g + self.o(a.transpose(1, 2).reshape(B, T, -1))
        u = rms(h, self.ffn_norm)
        return h + self.down(F.silu(self.gate(u)) * self.up(u))

    def logits(self, out):
        return rms(out, self.output_norm) @ self.emb.T

    def unrolled(self, x, feats, steps):
        """Training-time test. Step 0: row p = (x_p, g_{p-1}) for p = 1..T-1, causal. Step j:
        row p = (x_{p+j}, out_{j-1, p}), attending to step 0's rows up to p and to its own chain
        (steps 1..j at p). Returns each step's logits (B, T-1-j, V), row p predicting x_{p+j+1}."""
        g = self.fc(feats[:, :-1])                  # g_0 .. g_{T-2}
        tok = x[:, 1:]                               # x_1 .. x_{T-1}
        q0, k0, v0 = self.qkv(tok, g, 1)
        out = self.finish(g, F.scaled_dot_product_attention(q0, k0, v0, is_causal=True))
        result = [self.logits(out)]
        scale = 1.0 / math.sqrt(self.hd)
        chain_k, chain_v = [], []
        for j in range(1, steps):
            n = tok.shape[1] - j                     # rows with a token x_{p+j} inside the window
            state = out[:, :n]
            qj, kj, vj = self.qkv(x[:, 1 + j:1 + j + n], state, 1 + j)
            chain_k = [c[:, :, :n] for c in chain_k] + [kj]
            chain_v = [c[:, :, :n] for c in chain_v] + [vj]
            s0 = (qj @ k0[:, :, :n].transpose(-1, -2)) * scale           # B, H, n, n: causal over step 0
            s0 = s0.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            sd = torch.stack([(qj * c).sum(-1) * scale for c in chain_k], -1)   # B, H, n, j: the chain
            w = torch.softmax(torch.cat((s0, sd), -1), -1)
            a = w[..., :n] @ v0[:, :, :n] + (w[..., n:].unsqueeze(-1) * torch.stack(chain_v, -2)).sum(-2)
            out = self.finish(state, a)
            result.append(self.logits(out))
        return result


def ttt_loss(head, target, x, steps, decay=0.8):
    with torch.no_grad():
        feats, tl = target(x)
        tp = F.log_softmax(tl, -1)
    total, weights = 0.0, 0.0
    for j, lg in enumerate(head.unrolled(x, feats, steps)):
        n = lg.shape[1]
        ref = tp[:, 1 + j:1 + j + n]                 # the target's distribution of x_{p+j+1}
        kl = (ref.exp() * (ref - F.log_softmax(lg, -1))).sum(-1).mean()
        total, weights = total + decay ** j * kl, weights + decay ** j
    return total / weights


# ---------------------------------------------------------------------------- checks

def greedy_text(target, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(target(torch.tensor([seq]))[1][0, -1].argmax()))
    return seq[len(prompt):]


def chain_acceptance(head, target, text, P, depth):
    """At every root position r of the greedy continuation: the head drafts `depth` tokens greedily
    from its state (as drafting does: its own rows for the drafts, the target's before); returns,
    per depth k, whether the first k drafts all equal the target's greedy tokens."""
    seq = torch.tensor([text])
    with torch.no_grad():
        feats, _ = target(seq)
        g = head.fc(feats)
        hits = []
        for r in range(P, len(text) - depth):
            # rows 1..r with the target's states (row p: x_p with g_{p-1}), then the chain
            tok = seq[:, 1:r + 1]
            q, k, v = head.qkv(tok, g[:, :r], 1)
            out = head.finish(g[:, :r], F.scaled_dot_product_attention(q, k, v, is_causal=True))
            ks, vs = k, v
            state, ok = out[:, -1:], []
            for j in range(depth):
                d = int(head.logits(state)[0, -1].argmax())
                ok.append(d == text[r + 1 + j])
                qj, kj, vj = head.qkv(torch.tensor([[d]]), state, r + 1 + j)
                ks, vs = torch.cat((ks, kj), 2), torch.cat((vs, vj), 2)
                state = head.finish(state, F.scaled_dot_product_attention(qj, ks, vs))
            hits.append([all(ok[:k + 1]) for k in range(depth)])
    return np.array(hits, dtype=np.float64)


def checks(head, target, held, gguf_path, a):
    res = {}
    rng = np.random.default_rng(7)
    prompts = [held[o:o + 96].tolist() for o in rng.integers(0, len(held) - 200, a.n_prompts)]
    hits = []
    for pr in prompts:
        gen = greedy_text(target, pr, a.gen_tokens)
        hits.append(chain_acceptance(head, target, pr + gen, len(pr) - 1, a.depth))
    h = np.concatenate(hits)
    res["heldout_chain_acceptance_by_depth_pytorch"] = {str(k + 1): round(float(h[:, k].mean()), 4)
                                                       for k in range(a.depth)}
    res["heldout_expected_accepted_per_chain_pytorch"] = round(float(h.sum(1).mean()), 3)
    if a.no_engine:
        return res
    from heterospec import Engine
    with Engine(str(a.target), draft=str(gguf_path), n_threads=a.threads) as e:
        # the head's logits through llama.cpp (its first level) against PyTorch's, and acceptance
        acc, verified, eq, full = 0, 0, 0, []
        for pr in prompts:
            ref = e.generate(pr, max_tokens=a.gen_tokens, temperature=0, mode="ar")
            got = e.generate(pr, max_tokens=a.gen_tokens, temperature=0, mode="chain", drafter="eagle3",
                             n_max=a.depth, p_min=0.0, trace=True)
            eq += got.tokens == ref.tokens
            acc += got.stats.accepted_eagle3
            verified += got.stats.nodes_verified
            # steps that verified a whole chain: accepted drafts = tokens emitted - 1
            full += [t[2] - 1 for t in got.trace if t[1] == a.depth]
            e.clear_ngram_memory()
        full = np.array(full)
        res["engine_chain"] = {"n_max": a.depth, "greedy_equal": f"{eq}/{len(prompts)}",
                               "acceptance_rate": round(acc / max(verified, 1), 4),
                               "acceptance_by_depth": {str(k): round(float((full >= k).mean()), 4)
                                                       for k in range(1, a.depth + 1)},
                               "accepted_per_chain": round(float(full.mean()), 3)}
    return res


# ---------------------------------------------------------------------------- export

def export(head, target_path: Path, out: Path, ctx: int):
    import gguf
    sd = {k: v.detach().float().numpy() for k, v in head.state_dict().items() if k != "emb"}
    w = gguf.GGUFWriter(str(out), "eagle3")
    w.add_name("heterospec-code-eagle3")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(ctx)
    w.add_embedding_length(head.d)
    w.add_block_count(1)
    w.add_feed_forward_length(head.gate.weight.shape[0])
    w.add_head_count(head.n_head)
    w.add_head_count_kv(head.n_head)
    w.add_rope_dimension_count(head.hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(EPS)
    w.add_array("eagle3.target_layers", list(LAYERS))
    w.add_uint32("eagle3.target_hidden_size", head.fc.weight.shape[1] // len(LAYERS))
    from make_qwen35_mtp import copy_tokenizer
    copy_tokenizer(w, target_path)   # the target's tokenizer, as llama.cpp's converter copies it
    names = {"fc.weight": "fc.weight", "attn_norm": "blk.0.attn_norm.weight", "hidden_norm": "blk.0.attn_norm_2.weight",
             "q.weight": "blk.0.attn_q.weight", "k.weight": "blk.0.attn_k.weight", "v.weight": "blk.0.attn_v.weight",
             "o.weight": "blk.0.attn_output.weight", "ffn_norm": "blk.0.ffn_norm.weight",
             "gate.weight": "blk.0.ffn_gate.weight", "up.weight": "blk.0.ffn_up.weight",
             "down.weight": "blk.0.ffn_down.weight", "output_norm": "output_norm.weight"}
    for k, v in names.items():
        w.add_tensor(v, np.ascontiguousarray(sd[k], dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


# ---------------------------------------------------------------------------- main

def corpus_tokens(toks: Path):
    """(train, held-out) tokens of the Python corpus in `toks`, made there by make_qwen35_mtp.py's
    stages when absent."""
    if not (toks / "heldout.u16").exists():
        import make_qwen35_mtp as m
        toks.mkdir(parents=True, exist_ok=True)
        if not (toks / "heldout.txt").exists():
            m.collect_corpus(toks, [os.path.dirname(os.__file__)])
        m.encode(toks, 40_000_000)
    return (np.fromfile(toks / "train.u16", dtype=np.uint16), np.fromfile(toks / "heldout.u16", dtype=np.uint16))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=str(REPO / "benchmarks/.cache/code-eagle3.gguf"))
    ap.add_argument("--target", default=str(TARGET))
    ap.add_argument("--work", default=None, help="stage outputs (default: <out dir>/code-eagle3/)")
    ap.add_argument("--tokens", default=None, help="folder with train.u16/heldout.u16 (default: "
                    "<out dir>/qwen35-mtp/, made by make_qwen35_mtp.py's stages when absent)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=25)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ttt", type=int, default=3, help="training-time-test steps")
    ap.add_argument("--depth", type=int, default=4, help="chain depth of the acceptance checks")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--no-engine", action="store_true", help="skip the checks through llama.cpp")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else out.parent / "code-eagle3"
    work.mkdir(parents=True, exist_ok=True)
    train, held = corpus_tokens(Path(a.tokens) if a.tokens else out.parent / "qwen35-mtp")

    target = Target(Path(a.target))
    head = Eagle3(target.d, target.n_head, int(target.W["blk.0.ffn_gate.weight"].shape[0]),
                  len(LAYERS) * target.d, target.W["token_embd.weight"])
    ck = work / "head.pt"
    if ck.exists():
        state = torch.load(ck)
        head.load_state_dict(state["head"], strict=False)
        info = state["info"]
        print(f"[head] {ck} exists, skipped", flush=True)
    else:
        from make_qwen35_mtp import run_schedule
        params = [p for n, p in head.named_parameters() if n != "emb"]
        info = run_schedule("eagle3", params, lambda x: ttt_loss(head, target, x, a.ttt), train, a,
                            a.steps, a.minutes, a.lr, warmup=50)
        info["ttt"] = a.ttt
        torch.save({"head": {k: v for k, v in head.state_dict().items() if k != "emb"}, "info": info}, ck)
    head.eval()
    with torch.no_grad():   # held-out KL of the first step
        rng = np.random.default_rng(3)
        xs = torch.from_numpy(np.stack([held[i:i + a.ctx] for i in rng.integers(0, len(held) - a.ctx, 16)])
                              .astype(np.int64))
        held_kl = float(ttt_loss(head, target, xs, 1))
    export(head, Path(a.target), out, 512)
    print("wrote", out, flush=True)
    res = {"target": str(a.target), "layers": list(LAYERS), "heldout_kl_first_step": round(held_kl, 4),
           "training": {k: v for k, v in info.items() if k != "log"}}
    res.update(checks(head, target, held, out, a))
    path = out.with_suffix(".checks.json")
    path.write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
