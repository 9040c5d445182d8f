#!/usr/bin/env python3
"""A DFlash draft trained for ../shared/models/code-target.gguf (issue #20 items 2 and 5).

The recipe of DFlash (block diffusion drafting, z-lab 2025), scaled to this CPU: the target stays
frozen; the draft reads the inputs of three of its layers (1, 3 and 5 of 6) at every committed
position, fused by `fc` and an RMS norm into g_p, from which each draft layer makes its keys and
values there ("injected" into its KV cache). A block [x_r, <mask> x (B - 1)] at positions
r..r+B-1 then runs through the draft's layers, attending to the injected context (positions < r)
and to the whole block (no causal mask inside it), and its row i gives a distribution for
x_{r+i}. Labels are the target's own next-token distributions there (a forward KL), weighted
0.8^(i-1) by depth, at random anchors r of each training sequence: every position of a block
is predicted from the context alone, as it is when drafting.

The PyTorch draft computes what the pin's dflash graph computes (third_party llama.cpp
src/models/dflash.cpp, graph<false>): injection k = rope(rms_head(W_k g) * k_norm), v = W_v g;
block h = token_embd[tokens] (the target's, borrowed); per layer u = rms(h) * attn_norm,
q/k = rope(rms_head(W u) * q_norm/k_norm), v = W_v u, h += W_o attn, h += ffn(rms(h) * ffn_norm);
logits = rms(h) * output_norm @ token_embd^T (the target's tied output). RoPE is NeoX's (the pin's
rope type for dflash), heads of 64. The mask token is token 0 (<|endoftext|>): the draft embeds
only the block's tokens, so its row is free to act as the mask (a root is never token 0 past the
text's first position).

Written as a GGUF of architecture dflash (F32, the target's tokenizer metadata and
tokenizer.ggml.mask_token_id), which HeteroSpec (drafter="dflash") and llama.cpp's
`--spec-type draft-dflash` both load.

Stages (each skipped when its output exists; --work, default benchmarks/.cache/code-dflash/):
  tokens   the corpus tokens of make_qwen35_mtp.py (benchmarks/.cache/qwen35-mtp/), as
           make_code_eagle3.py uses them
  draft    train (AdamW, warmup + cosine over the step count or the time budget)
  export   the GGUF
  checks   held-out acceptance by depth in PyTorch (the greedy block's first k tokens all equal
           the target's greedy text) and through the engine (drafter="dflash", chains of --depth);
           saved as <gguf>.checks.json

Usage: make_code_dflash.py [OUT.gguf] [--target code-target.gguf] [--minutes M] [--layers-draft N]
       [--block B] [--threads 2] [--no-engine]
Needs torch, numpy, gguf (gguf-py) and, for the checks, heterospec.
"""
import argparse, json, math, sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from make_code_eagle3 import EPS, TARGET, Target, corpus_tokens, greedy_text, rms, rope_tables   # noqa: E402

LAYERS = (1, 3, 5)     # the target layers whose inputs the draft reads
MASK = 0               # the mask token


def rope_neox(x, cos, sin):   # x: ..., T, hd; NeoX pairs (i, i + hd/2)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1)


class Layer(nn.Module):
    def __init__(self, d, n_head, n_ff):
        super().__init__()
        hd = d // n_head
        self.attn_norm, self.ffn_norm = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))
        self.q_norm, self.k_norm = nn.Parameter(torch.ones(hd)), nn.Parameter(torch.ones(hd))
        self.q, self.k, self.v = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.o = nn.Linear(d, d, bias=False)
        self.gate, self.up = nn.Linear(d, n_ff, bias=False), nn.Linear(d, n_ff, bias=False)
        self.down = nn.Linear(n_ff, d, bias=False)
        for lin in (self.q, self.k, self.v, self.gate, self.up):
            nn.init.normal_(lin.weight, std=0.02)
        for lin in (self.o, self.down):
            nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2))


class DFlash(nn.Module):
    def __init__(self, d, n_head, n_ff, n_feat, n_layer, emb):
        super().__init__()
        self.d, self.n_head, self.hd = d, n_head, d // n_head
        self.emb = emb   # the target's token embedding (and output matrix), frozen
        self.fc = nn.Linear(n_feat, d, bias=False)
        nn.init.normal_(self.fc.weight, std=0.02)
        self.enc_norm = nn.Parameter(torch.ones(d))
        self.layers = nn.ModuleList([Layer(d, n_head, n_ff) for _ in range(n_layer)])
        self.output_norm = nn.Parameter(torch.ones(d))

    def heads(self, x):   # B, T, d -> B, H, T, hd
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.hd).transpose(1, 2)

    def context(self, feats):
        """The injected keys and values of positions 0..T-1, per layer."""
        g = rms(self.fc(feats), self.enc_norm)
        cos, sin = rope_tables(feats.shape[1], self.hd)
        return [(rope_neox(rms(self.heads(l.k(g)), l.k_norm), cos, sin), self.heads(l.v(g))) for l in self.layers]

    def blocks(self, tokens, pos, ctx, mask):
        """Block rows `tokens` (B, N) at positions `pos` (N), attending where `mask` (N, T + N) says."""
        B, N = tokens.shape
        cos, sin = rope_tables(int(pos.max()) + 1, self.hd)
        cos, sin = cos[pos], sin[pos]
        h = self.emb[tokens]
        for l, (kc, vc) in zip(self.layers, ctx):
            u = rms(h, l.attn_norm)
            q = rope_neox(rms(self.heads(l.q(u)), l.q_norm), cos, sin)
            k = rope_neox(rms(self.heads(l.k(u)), l.k_norm), cos, sin)
            a = F.scaled_dot_product_attention(q, torch.cat((kc, k), 2), torch.cat((vc, self.heads(l.v(u))), 2),
                                               attn_mask=mask)
            h = h + l.o(a.transpose(1, 2).reshape(B, N, -1))
            u = rms(h, l.ffn_norm)
            h = h + l.down(F.silu(l.gate(u)) * l.up(u))
        return rms(h, self.output_norm) @ self.emb.T


def block_inputs(x, anchors, block):
    """Blocks [x_r, mask...] at anchors r (shared by the batch): tokens (B, N), positions (N), and
    the attention mask (N, T + N): the context before r, the block itself."""
    B, T = x.shape
    A = len(anchors)
    r = torch.as_tensor(anchors).repeat_interleave(block)                  # N
    i = torch.arange(block).repeat(A)
    pos = r + i
    tokens = torch.full((B, A * block), MASK, dtype=torch.long)
    tokens[:, i == 0] = x[:, torch.as_tensor(anchors)]
    ctx_ok = torch.arange(T)[None, :] < r[:, None]
    blk = torch.arange(A).repeat_interleave(block)
    return tokens, pos, torch.cat((ctx_ok, blk[:, None] == blk[None, :]), 1)


def dflash_loss(draft, target, x, block, anchors_per_seq, rng, decay=0.8):
    B, T = x.shape
    with torch.no_grad():
        feats, tl = target(x)
        tp = F.log_softmax(tl, -1)
    anchors = np.sort(rng.choice(np.arange(1, T - block + 1), anchors_per_seq, replace=False))
    tokens, pos, mask = block_inputs(x, anchors, block)
    lg = draft.blocks(tokens, pos, draft.context(feats), mask)             # B, N, V
    i = torch.arange(block).repeat(len(anchors))
    rows = (i > 0).nonzero().squeeze(1)
    ref = tp[:, pos[rows] - 1]                                             # the target's view of x_{r+i}
    kl = (ref.exp() * (ref - F.log_softmax(lg[:, rows], -1))).sum(-1)      # B, rows
    w = decay ** (i[rows] - 1).float()
    return (kl * w).sum(-1).mean() / w.sum()


# ---------------------------------------------------------------------------- checks

def block_acceptance(draft, target, text, P, block):
    """At every root r >= P of the text (the target's greedy continuation): does the greedy block
    drafted there agree with the text for its first k tokens, k = 1..block-1?"""
    x = torch.tensor([text])
    anchors = list(range(P, len(text) - block + 1))
    with torch.no_grad():
        feats, _ = target(x)
        tokens, pos, mask = block_inputs(x, anchors, block)
        top = draft.blocks(tokens, pos, draft.context(feats), mask).argmax(-1)[0]
    hits = []
    for j, r in enumerate(anchors):
        ok = [int(top[j * block + i]) == text[r + i] for i in range(1, block)]
        hits.append([all(ok[:k + 1]) for k in range(block - 1)])
    return np.array(hits, dtype=np.float64)


def checks(draft, target, held, gguf_path, a):
    res = {}
    rng = np.random.default_rng(7)
    prompts = [held[o:o + 96].tolist() for o in rng.integers(0, len(held) - 200, a.n_prompts)]
    hits = [block_acceptance(draft, target, pr + greedy_text(target, pr, a.gen_tokens), len(pr), a.block)
            for pr in prompts]
    h = np.concatenate(hits)
    res["heldout_block_acceptance_by_depth_pytorch"] = {str(k + 1): round(float(h[:, k].mean()), 4)
                                                       for k in range(a.block - 1)}
    res["heldout_expected_accepted_per_block_pytorch"] = round(float(h.sum(1).mean()), 3)
    if a.no_engine:
        return res
    from heterospec import Engine
    with Engine(str(a.target), draft=str(gguf_path), n_threads=a.threads) as e:
        acc, verified, eq, full = 0, 0, 0, []
        for pr in prompts:
            ref = e.generate(pr, max_tokens=a.gen_tokens, temperature=0, mode="ar")
            got = e.generate(pr, max_tokens=a.gen_tokens, temperature=0, mode="chain", drafter="dflash",
                             n_max=a.depth, p_min=0.0, trace=True)
            eq += got.tokens == ref.tokens
            acc += got.stats.accepted_dflash
            verified += got.stats.nodes_verified
            full += [t[2] - 1 for t in got.trace if t[1] == a.depth]   # accepted drafts of whole chains
            e.clear_ngram_memory()
        full = np.array(full)
        res["engine_chain"] = {"n_max": a.depth, "greedy_equal": f"{eq}/{len(prompts)}",
                               "acceptance_rate": round(acc / max(verified, 1), 4),
                               "acceptance_by_depth": {str(k): round(float((full >= k).mean()), 4)
                                                       for k in range(1, a.depth + 1)},
                               "accepted_per_chain": round(float(full.mean()), 3)}
    return res


# ---------------------------------------------------------------------------- export

def export(draft, target_path: Path, out: Path, ctx: int, block: int):
    import gguf
    from make_qwen35_mtp import copy_tokenizer
    sd = {k: v.detach().float().numpy() for k, v in draft.state_dict().items() if k != "emb"}
    w = gguf.GGUFWriter(str(out), "dflash")
    w.add_name("heterospec-code-dflash")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(ctx)
    w.add_embedding_length(draft.d)
    w.add_block_count(len(draft.layers))
    w.add_feed_forward_length(draft.layers[0].gate.weight.shape[0])
    w.add_head_count(draft.n_head)
    w.add_head_count_kv(draft.n_head)
    w.add_rope_dimension_count(draft.hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(EPS)
    w.add_array("dflash.target_layers", list(LAYERS))
    w.add_uint32("dflash.block_size", block)
    copy_tokenizer(w, target_path)   # the target's tokenizer, as llama.cpp's converter copies it
    w.add_mask_token_id(MASK)
    names = {"fc.weight": "fc.weight", "enc_norm": "enc.output_norm.weight", "output_norm": "output_norm.weight"}
    per = {"attn_norm": "attn_norm.weight", "q.weight": "attn_q.weight", "k.weight": "attn_k.weight",
           "v.weight": "attn_v.weight", "o.weight": "attn_output.weight", "q_norm": "attn_q_norm.weight",
           "k_norm": "attn_k_norm.weight", "ffn_norm": "ffn_norm.weight", "gate.weight": "ffn_gate.weight",
           "up.weight": "ffn_up.weight", "down.weight": "ffn_down.weight"}
    for i in range(len(draft.layers)):
        names.update({f"layers.{i}.{k}": f"blk.{i}.{v}" for k, v in per.items()})
    for k, v in names.items():
        w.add_tensor(v, np.ascontiguousarray(sd[k], dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


# ---------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=str(REPO / "benchmarks/.cache/code-dflash.gguf"))
    ap.add_argument("--target", default=str(TARGET))
    ap.add_argument("--work", default=None, help="stage outputs (default: <out dir>/code-dflash/)")
    ap.add_argument("--tokens", default=None, help="folder with train.u16/heldout.u16 (default: "
                    "<out dir>/qwen35-mtp/, made by make_qwen35_mtp.py's stages when absent)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--minutes", type=float, default=25)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--block", type=int, default=8, help="block size: the root and block-1 masked positions")
    ap.add_argument("--anchors", type=int, default=16, help="blocks per training sequence")
    ap.add_argument("--layers-draft", type=int, default=2, help="draft decoder layers")
    ap.add_argument("--depth", type=int, default=4, help="chain depth of the engine's acceptance check")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--no-engine", action="store_true", help="skip the checks through llama.cpp")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else out.parent / "code-dflash"
    work.mkdir(parents=True, exist_ok=True)
    train, held = corpus_tokens(Path(a.tokens) if a.tokens else out.parent / "qwen35-mtp")

    target = Target(Path(a.target))
    draft = DFlash(target.d, target.n_head, int(target.W["blk.0.ffn_gate.weight"].shape[0]),
                   len(LAYERS) * target.d, a.layers_draft, target.W["token_embd.weight"])
    ck = work / "draft.pt"
    if ck.exists():
        state = torch.load(ck)
        draft.load_state_dict(state["draft"], strict=False)
        info = state["info"]
        print(f"[draft] {ck} exists, skipped", flush=True)
    else:
        from make_qwen35_mtp import run_schedule
        params = [p for n, p in draft.named_parameters() if n != "emb"]
        rng = np.random.default_rng(5)
        info = run_schedule("dflash", params, lambda x: dflash_loss(draft, target, x, a.block, a.anchors, rng),
                            train, a, a.steps, a.minutes, a.lr, warmup=50)
        info.update(block=a.block, anchors=a.anchors, layers_draft=a.layers_draft)
        torch.save({"draft": {k: v for k, v in draft.state_dict().items() if k != "emb"}, "info": info}, ck)
    draft.eval()
    with torch.no_grad():   # held-out loss
        rng = np.random.default_rng(3)
        xs = torch.from_numpy(np.stack([held[i:i + a.ctx] for i in rng.integers(0, len(held) - a.ctx, 16)])
                              .astype(np.int64))
        held_kl = float(dflash_loss(draft, target, xs, a.block, a.anchors, rng))
    export(draft, Path(a.target), out, 512, a.block)
    print("wrote", out, flush=True)
    res = {"target": str(a.target), "layers": list(LAYERS), "block": a.block, "heldout_weighted_kl": round(held_kl, 4),
           "training": {k: v for k, v in info.items() if k != "log"}}
    res.update(checks(draft, target, held, out, a))
    path = out.with_suffix(".checks.json")
    path.write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
