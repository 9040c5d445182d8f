#!/usr/bin/env python3
"""A small, trained Qwen3.5-architecture ("qwen35") model with one MTP (nextn) head.

A stand-in for the real Qwen3.5/3.6 models for MTP speculation work (issue #19 item 5): a
hybrid trunk (Gated DeltaNet linear-attention layers, every `full_attention_interval`-th layer
gated full attention with partial interleaved-M-RoPE) trained from scratch on Python source,
then an MTP head trained on the frozen trunk, exported as a GGUF the pinned llama.cpp loads.
Its MTP acceptance is therefore real: the head has learnt to guess the trunk's next-next token.

The PyTorch model computes exactly what the pin's qwen35 graphs compute
(third_party/llama.cpp/src/models/qwen35.cpp, delta-net-base.cpp, models.h; ggml's rope_multi
with GGML_ROPE_TYPE_IMROPE, ssm_conv, gated_delta_net):

  trunk layer:  h = x + mixer(rms(x) * attn_norm);  x' = h + ffn(rms(h) * post_attention_norm)
                ffn(u) = down(silu(gate u) * up u)
  full attn:    attn_q gives per head [query (hd) | output gate (hd)]; q, k RMS-normed per head
                (attn_q_norm, attn_k_norm), IMRoPE over the first n_rot dims (NeoX pairs
                (i, i + n_rot/2), text positions: t = h = w = pos, e = 0), causal GQA softmax
                attention with scale 1/sqrt(hd), times sigmoid(gate), attn_output.
  Gated DeltaNet: attn_qkv -> [q | k | v] -> causal depthwise conv (width ssm_d_conv, no bias,
                kernel tap d_conv-1 on the current token) -> silu; q, k L2-normed
                (x / sqrt(sum x^2 + eps)); beta = sigmoid(ssm_beta x); log-decay
                g = ssm_a * softplus(ssm_alpha x + ssm_dt.bias) (ssm_a < 0);
                S_t = e^g S_{t-1} + beta (v - e^g S_{t-1} k) k^T, o_t = S_t q_t / sqrt(d_k);
                o = rms(o) * ssm_norm * silu(attn_gate x) per head; ssm_out.
  output:       H = rms(x_L) * output_norm (this is also llama.cpp's t_h_nextn, the MTP input);
                logits = H @ token_embd^T (tied: no output.weight).
  MTP (graph_mtp), row p (position p, as the engine feeds it: token x_p with H_{p-1}, zeros
                for p = 0): u = eh_proj [rms(emb x_p) * enorm | rms(H_{p-1}) * hnorm], one
                full-attention block as above over the head's own causal cache, then
                rms(.) * shared_head_norm @ token_embd^T: predicts x_{p+1}.

Stages (each skipped when its output exists, in --work, default benchmarks/.cache/qwen35-mtp/):
  corpus   .py files of the local Python installation, deduped, held-out packages
           email/json/asyncio/http/xml (as /work/shared/tools/make_code_pair.py does; packages
           that installing torch adds are left out, so the corpus is the one make_code_pair.py
           saw)
  tokens   encode with the 4096-token code tokenizer (/work/shared/models/code-tokenizer.json)
  trunk    train the trunk (AdamW, warmup + cosine; the schedule follows steps or the time
           budget, whichever runs out first)
  mtp      freeze the trunk, train the MTP head on its hidden states
  export   GGUF (F32) with nextn_predict_layers = 1; tokenizer metadata copied from
           code-target.gguf
  checks   llama.cpp (through heterospec) vs PyTorch logits on held-out text, with the engine's
           defaults and with F32 attention (flash_attn=False, F32 KV cache: the two agree to
           ~1e-5 in log-probability; the defaults' F16 attention arithmetic gives ~5e-4, up to
           ~4e-3 on unlikely tokens); tokenization vs the HF tokenizer; held-out losses; MTP
           acceptance in PyTorch (a simulation of chain speculation, n_max 1) and through the
           engine (drafter="mtp"), step by step; saved as <gguf>.checks.json

Defaults: trunk 27 min, head 9 min of a 2-core CPU (bf16 autocast on AVX-512; float32 elsewhere,
where bf16 is emulated, --fp32 to force it), batch 8 x 512; about 6.6M trunk tokens there (2.6M in
20 minutes of float32 on an AVX2 CPU). Re-running skips finished stages and redoes only export and checks.

Usage: make_qwen35_mtp.py [OUT.gguf] [--steps N] [--mtp-steps N] [--threads 2] [--minutes M]
       [--mtp-minutes M] [--no-engine]
Needs torch, tokenizers, numpy, gguf (gguf-py) and, for the checks, heterospec.
"""
import argparse, hashlib, json, math, os, random, sys, time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HELD_OUT = ("/email/", "/json/", "/asyncio/", "/http/", "/xml/")  # evaluation-only packages
# what `pip install torch tokenizers` adds to site-packages: not part of make_code_pair.py's corpus
EXCLUDE = ("/site-packages/torch/", "/site-packages/torchgen/", "/site-packages/functorch/",
           "/site-packages/triton/", "/site-packages/nvidia/", "/site-packages/cuda/",
           "/site-packages/huggingface_hub/", "/site-packages/hf_xet/", "/site-packages/tokenizers/")
TOKENIZER = Path("/work/shared/models/code-tokenizer.json")
TOKENIZER_GGUF = Path("/work/shared/models/code-target.gguf")
DOC_SEP = "\n<|endoftext|>\n"

# ---------------------------------------------------------------------------- shape

CFG = dict(
    n_vocab=4096, n_embd=256, n_layer=6, full_attention_interval=3,
    n_head=4, n_head_kv=2, head_dim=64, n_ff=704,
    n_rot=16,                 # partial RoPE: a quarter of the head, as Qwen3.5 (64 of 256)
    rope_sections=[3, 3, 2, 0],  # IMRoPE sections in dim pairs (Qwen3.5: 11, 11, 10 of 32)
    rope_base=10000.0,
    ssm_d_state=64,           # key / value head dim of the DeltaNet layers
    ssm_n_group=4,            # key heads
    ssm_dt_rank=4,            # value heads (ssm.time_step_rank)
    ssm_d_conv=4,
    eps=1e-6, ctx=512,
)


def is_full_attn(cfg, il):
    return (il + 1) % cfg["full_attention_interval"] == 0


# ---------------------------------------------------------------------------- corpus, tokens

def collect_corpus(work: Path, roots):
    seen, train, held = set(), [], []
    for root in roots:
        for p in sorted(Path(root).rglob("*.py")):
            s = str(p)
            if any(k in s for k in EXCLUDE):
                continue
            try:
                if p.stat().st_size > 200_000 or p.stat().st_size < 200:
                    continue
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            h = hashlib.sha1(text.encode()).hexdigest()
            if h in seen:
                continue
            seen.add(h)
            (held if any(k in s for k in HELD_OUT) else train).append(text)
    random.Random(0).shuffle(train)
    (work / "train.txt").write_text(DOC_SEP.join(train))
    (work / "heldout.txt").write_text(DOC_SEP.join(held))
    print(f"corpus: {len(train)} train files, {len(held)} held-out files", flush=True)


def encode(work: Path, max_tokens: int):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(TOKENIZER))
    eot = tok.token_to_id("<|endoftext|>")
    for name, cap in (("train", max_tokens), ("heldout", None)):
        docs = (work / f"{name}.txt").read_text().split(DOC_SEP)
        parts, n = [], 0
        for i in range(0, len(docs), 256):
            for enc in tok.encode_batch(docs[i:i + 256]):
                parts.append(np.array(enc.ids + [eot], dtype=np.uint16))
                n += len(parts[-1])
            if cap and n >= cap:
                break
        arr = np.concatenate(parts)
        arr.tofile(work / f"{name}.u16")
        print(f"tokens {name}: {len(arr):,}", flush=True)


# ---------------------------------------------------------------------------- the model

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms(x, eps):
    """ggml_rms_norm: x / sqrt(mean(x^2) + eps)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return rms(x, self.eps) * self.weight


def imrope_tables(cfg, T, device=None):
    """cos/sin (T, n_rot/2) of ggml's IMRoPE (ggml_mrope_cache_init, is_imrope) for text positions:
    the t, h and w components are the token position, the e component 0."""
    n_rot = cfg["n_rot"]
    s0, s1, s2, s3 = cfg["rope_sections"]
    sect_dims = s0 + s1 + s2 + s3
    pos = torch.arange(T, dtype=torch.float64, device=device)
    cols = []
    for i in range(n_rot // 2):
        sector = i % sect_dims
        if sector % 3 == 1 and sector < 3 * s1:
            p = pos          # h
        elif sector % 3 == 2 and sector < 3 * s2:
            p = pos          # w
        elif sector % 3 == 0 and sector < 3 * s0:
            p = pos          # t
        else:
            p = pos * 0      # e: the 4th position component is 0 for text
        cols.append(p * cfg["rope_base"] ** (-2.0 * i / n_rot))
    theta = torch.stack(cols, -1)
    return theta.cos().float(), theta.sin().float()


def apply_rope(x, cos, sin, n_rot):
    """x: (B, T, H, hd); NeoX pairs (i, i + n_rot/2) over the first n_rot dims, the rest as is."""
    h = n_rot // 2
    x0, x1, rest = x.split((h, h, x.shape[-1] - n_rot), -1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x0 * c - x1 * s, x0 * s + x1 * c, rest), -1)


class FFN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate = nn.Linear(cfg["n_embd"], cfg["n_ff"], bias=False)
        self.up = nn.Linear(cfg["n_embd"], cfg["n_ff"], bias=False)
        self.down = nn.Linear(cfg["n_ff"], cfg["n_embd"], bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class FullAttn(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        E, H, Hkv, hd = cfg["n_embd"], cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"]
        self.q = nn.Linear(E, 2 * H * hd, bias=False)   # per head [query | gate]
        self.k = nn.Linear(E, Hkv * hd, bias=False)
        self.v = nn.Linear(E, Hkv * hd, bias=False)
        self.o = nn.Linear(H * hd, E, bias=False)
        self.q_norm = RMSNorm(hd, cfg["eps"])
        self.k_norm = RMSNorm(hd, cfg["eps"])

    def forward(self, x, rope):
        cfg = self.cfg
        B, T, _ = x.shape
        H, Hkv, hd = cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"]
        q, gate = self.q(x).view(B, T, H, 2 * hd).split(hd, -1)
        q = self.q_norm(q)
        k = self.k_norm(self.k(x).view(B, T, Hkv, hd))
        v = self.v(x).view(B, T, Hkv, hd)
        cos, sin = rope
        q = apply_rope(q, cos[:T], sin[:T], cfg["n_rot"])
        k = apply_rope(k, cos[:T], sin[:T], cfg["n_rot"])
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if Hkv != H:   # ggml_mul_mat broadcast: query head h reads KV head h // (H / Hkv)
            k = k.repeat_interleave(H // Hkv, 1)
            v = v.repeat_interleave(H // Hkv, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(hd))
        a = a.transpose(1, 2).reshape(B, T, H * hd)
        return self.o(a * torch.sigmoid(gate.reshape(B, T, H * hd)))


def l2norm(x, eps):
    """build_gdn_l2_norm: rms_norm(x, eps/n) / sqrt(n) = x / sqrt(sum x^2 + eps)."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def delta_rule_recurrent(q, k, v, g, beta):
    """Reference gated delta rule, one token at a time (ggml's autoregressive path).
    q, k: (B, T, H, dk) (already expanded to the value heads), v: (B, T, H, dv), g, beta: (B, T, H).
    State M (B, H, dv, dk): M = e^g M; M += beta (v - M k) k^T; o = M q / sqrt(dk)."""
    B, T, H, dk = k.shape
    dv = v.shape[-1]
    q = q / math.sqrt(dk)
    M = q.new_zeros(B, H, dv, dk)
    out = []
    for t in range(T):
        M = M * g[:, t].exp()[..., None, None]
        kt = k[:, t]
        d = (v[:, t] - (M @ kt[..., None])[..., 0]) * beta[:, t][..., None]
        M = M + d[..., None] * kt[..., None, :]
        out.append((M @ q[:, t][..., None])[..., 0])
    return torch.stack(out, 1)


def unit_lower_inverse(L):
    """(I + L)^-1 for strictly lower triangular L (..., n, n), n a power of two: recursive 2x2 block
    inversion, [[A, 0], [C, B]]^-1 = [[A^-1, 0], [-B^-1 C A^-1, B^-1]], all batched matmuls
    (a batched triangular solve is slow on a CPU; the Neumann product prod (I + (-L)^(2^j))
    overflows when the keys are alike)."""
    n = L.shape[-1]
    lead = L.shape[:-2]
    D = torch.ones(*lead, n, 1, 1, dtype=L.dtype, device=L.device)   # inverses of the diagonal blocks
    s = 1
    while s < n:
        nb = n // (2 * s)
        blocks = torch.diagonal(L.reshape(*lead, nb, 2 * s, nb, 2 * s), dim1=-4, dim2=-2)  # (..., 2s, 2s, nb)
        C = blocks.permute(*range(len(lead)), -1, -3, -2)[..., s:, :s]                        # (..., nb, s, s)
        D = D.reshape(*lead, nb, 2, s, s)
        Ai, Bi = D[..., 0, :, :], D[..., 1, :, :]
        X = -(Bi @ C @ Ai)
        top = torch.cat((Ai, torch.zeros_like(Ai)), -1)
        bot = torch.cat((X, Bi), -1)
        D = torch.cat((top, bot), -2)                                                          # (..., nb, 2s, 2s)
        s *= 2
    return D.reshape(*lead, n, n)


def delta_rule_chunked(q, k, v, g, beta, chunk=64):
    """The same function, chunked (the WY form of ggml's chunking path / HF's
    torch_chunk_gated_delta_rule, with the in-chunk inverse by a triangular solve)."""
    B, T, H, dk = k.shape
    dv = v.shape[-1]
    pad = (chunk - T % chunk) % chunk
    q, k, v = (F.pad(t.transpose(1, 2), (0, 0, 0, pad)) for t in (q, k, v))      # B H T' d
    g, beta = (F.pad(t.transpose(1, 2), (0, pad)) for t in (g, beta))            # B H T'
    n = (T + pad) // chunk
    q = q / math.sqrt(dk)
    q, k, v = (t.reshape(B, H, n, chunk, t.shape[-1]) for t in (q, k, v))
    g, beta = g.reshape(B, H, n, chunk), beta.reshape(B, H, n, chunk)
    g = g.cumsum(-1)
    kb, vb = k * beta[..., None], v * beta[..., None]
    lower = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    diff = (g[..., :, None] - g[..., None, :]).masked_fill(~lower, 0.0)
    decay = diff.exp().masked_fill(~lower, 0.0)                                   # e^(g_i - g_j), i >= j
    L = ((kb @ k.transpose(-1, -2)) * decay).masked_fill(lower.logical_not().logical_or(
        torch.eye(chunk, dtype=torch.bool, device=q.device)), 0.0)                # strictly lower
    Tinv = unit_lower_inverse(L)
    u = Tinv @ vb
    w = Tinv @ (kb * g.exp()[..., None])
    S = q.new_zeros(B, H, dk, dv)
    outs = []
    for i in range(n):
        qi, ki, gi = q[:, :, i], k[:, :, i], g[:, :, i]
        a = (qi @ ki.transpose(-1, -2)) * decay[:, :, i]
        vn = u[:, :, i] - w[:, :, i] @ S
        outs.append((qi * gi.exp()[..., None]) @ S + a @ vn)
        glast = gi[..., -1:]
        S = S * glast.exp()[..., None] + (ki * (glast - gi).exp()[..., None]).transpose(-1, -2) @ vn
    o = torch.stack(outs, 2).reshape(B, H, n * chunk, dv)[:, :, :T]
    return o.transpose(1, 2)


class GatedDeltaNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        E = cfg["n_embd"]
        dk, Hk, Hv = cfg["ssm_d_state"], cfg["ssm_n_group"], cfg["ssm_dt_rank"]
        self.key_dim, self.value_dim = dk * Hk, dk * Hv
        conv_dim = 2 * self.key_dim + self.value_dim
        self.qkv = nn.Linear(E, conv_dim, bias=False)
        self.gate = nn.Linear(E, self.value_dim, bias=False)      # z
        self.beta = nn.Linear(E, Hv, bias=False)
        self.alpha = nn.Linear(E, Hv, bias=False)
        self.conv = nn.Parameter(torch.randn(conv_dim, cfg["ssm_d_conv"]) / math.sqrt(cfg["ssm_d_conv"]))
        self.dt_bias = nn.Parameter(torch.ones(Hv))
        self.A_log = nn.Parameter(torch.empty(Hv).uniform_(0, 16).clamp_min(0.5).log())  # ssm_a = -exp(A_log)
        self.norm = RMSNorm(dk, cfg["eps"])
        self.out = nn.Linear(self.value_dim, E, bias=False)
        self.recurrent = False   # True: the per-token reference scan

    def forward(self, x):
        cfg = self.cfg
        B, T, _ = x.shape
        dk, Hk, Hv, K = cfg["ssm_d_state"], cfg["ssm_n_group"], cfg["ssm_dt_rank"], cfg["ssm_d_conv"]
        mixed = self.qkv(x)                                   # B T C
        z = self.gate(x)
        beta = torch.sigmoid(self.beta(x)).float()
        g = (F.softplus(self.alpha(x) + self.dt_bias) * -self.A_log.exp()).float()
        # causal depthwise conv: out[t] = sum_j w[:, j] * in[t - (K-1) + j] (ggml_ssm_conv)
        xp = F.pad(mixed.float(), (0, 0, K - 1, 0))
        w = self.conv.float()
        c = xp[:, K - 1:] * w[:, K - 1]
        for j in range(K - 1):
            c = c + xp[:, j:j + T] * w[:, j]
        c = F.silu(c)
        q, k, v = c.split((self.key_dim, self.key_dim, self.value_dim), -1)
        q, k, v = q.reshape(B, T, Hk, dk), k.reshape(B, T, Hk, dk), v.reshape(B, T, Hv, dk)
        q, k = l2norm(q, cfg["eps"]), l2norm(k, cfg["eps"])
        if Hk != Hv:   # value head h reads key head h % Hk (ggml_repeat_4d / the fused op)
            q = q.repeat(1, 1, Hv // Hk, 1)
            k = k.repeat(1, 1, Hv // Hk, 1)
        with torch.autocast(x.device.type, enabled=False):
            o = (delta_rule_recurrent if self.recurrent else delta_rule_chunked)(q, k, v, g, beta)
        o = self.norm(o) * F.silu(z.float().view(B, T, Hv, dk))
        return self.out(o.reshape(B, T, self.value_dim).to(x.dtype))


class Block(nn.Module):
    def __init__(self, cfg, full_attn):
        super().__init__()
        self.attn_norm = RMSNorm(cfg["n_embd"], cfg["eps"])
        self.mixer = FullAttn(cfg) if full_attn else GatedDeltaNet(cfg)
        self.post_norm = RMSNorm(cfg["n_embd"], cfg["eps"])
        self.ffn = FFN(cfg)

    def forward(self, x, rope):
        h = self.attn_norm(x)
        h = self.mixer(h, rope) if isinstance(self.mixer, FullAttn) else self.mixer(h)
        x = x + h
        return x + self.ffn(self.post_norm(x))


class MTP(nn.Module):
    """graph_mtp: [enorm(emb x_p) | hnorm(H_{p-1})] -> eh_proj -> full-attention block -> shared_head_norm."""
    def __init__(self, cfg):
        super().__init__()
        E = cfg["n_embd"]
        self.enorm = RMSNorm(E, cfg["eps"])
        self.hnorm = RMSNorm(E, cfg["eps"])
        self.eh_proj = nn.Linear(2 * E, E, bias=False)
        self.block = Block(cfg, full_attn=True)
        self.shared_head_norm = RMSNorm(E, cfg["eps"])


class Qwen35(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg["n_vocab"], cfg["n_embd"])
        self.layers = nn.ModuleList(Block(cfg, is_full_attn(cfg, i)) for i in range(cfg["n_layer"]))
        self.output_norm = RMSNorm(cfg["n_embd"], cfg["eps"])
        self.mtp = MTP(cfg)
        cos, sin = imrope_tables(cfg, cfg["ctx"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self._init()

    def _init(self):
        std, n = 0.02, self.cfg["n_layer"]
        nn.init.normal_(self.emb.weight, std=std)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                small = name.endswith((".o", ".out", ".down"))
                nn.init.normal_(m.weight, std=std / math.sqrt(2 * n) if small else std)

    def trunk(self, idx):
        """Hidden state H (after output_norm: llama.cpp's t_h_nextn) at every position."""
        x = self.emb(idx)
        rope = (self.cos, self.sin)
        for layer in self.layers:
            x = layer(x, rope)
        return self.output_norm(x)

    def logits(self, H):
        return H @ self.emb.weight.T.to(H.dtype)

    def mtp_hidden(self, idx, H):
        """Row p: token idx[p] with H[p-1] (zeros at p = 0); returns the head's normed state."""
        m = self.mtp
        Hprev = torch.cat((torch.zeros_like(H[:, :1]), H[:, :-1]), 1)
        u = m.eh_proj(torch.cat((m.enorm(self.emb(idx)), m.hnorm(Hprev)), -1))
        u = m.block(u, (self.cos, self.sin))
        return m.shared_head_norm(u)


# ---------------------------------------------------------------------------- training

def batches(data, ctx, batch, rng):
    ix = rng.integers(0, len(data) - ctx - 1, batch)
    return torch.from_numpy(np.stack([data[i:i + ctx] for i in ix]).astype(np.int64))


def param_groups(params, wd):
    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": other, "weight_decay": 0.0}]


def run_schedule(name, params, loss_fn, data, a, steps, minutes, lr, warmup):
    """AdamW, linear warmup, cosine to 10%; progress = max(step/steps, time/budget)."""
    opt = torch.optim.AdamW(param_groups(params, 0.1), lr=lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(1 if name == "mtp" else 0)
    t0 = time.time()
    log, step, avg, skipped = [], 0, None, 0
    while True:
        frac = max(step / steps, (time.time() - t0) / (60 * minutes))
        if frac >= 1.0:
            break
        cur = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cur
        x = batches(data, a.ctx, a.batch, rng)
        loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not (torch.isfinite(loss) and torch.isfinite(gn)):   # never step on a non-finite loss
            skipped += 1
            print(f"{name} step {step}: non-finite loss/gradient, skipped ({skipped})", flush=True)
            if skipped > 20:
                raise RuntimeError("training diverged")
            step += 1
            continue
        opt.step()
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        if step % 25 == 0:
            el = time.time() - t0
            print(f"{name} step {step} loss {loss.item():.3f} (avg {avg:.3f}) lr {cur:.2e} "
                  f"{(step + 1) * a.batch * a.ctx / el:.0f} tok/s {el / 60:.1f} min", flush=True)
            log.append((step, round(avg, 4), round(el, 1)))
        step += 1
    el = time.time() - t0
    print(f"{name}: {step} steps, {step * a.batch * a.ctx:,} tokens, {el / 60:.1f} min, loss avg {avg:.3f}", flush=True)
    return {"steps": step, "tokens": step * a.batch * a.ctx, "seconds": round(el, 1), "final_avg_loss": avg,
            "skipped_steps": skipped,
            "lr": lr, "batch": a.batch, "ctx": a.ctx, "log": log}


def train_trunk(work: Path, a):
    torch.manual_seed(0)
    data = np.fromfile(work / "train.u16", dtype=np.uint16)
    model = Qwen35(CFG)
    params = [p for n, p in model.named_parameters() if not n.startswith("mtp.")]
    print(f"trunk: {sum(p.numel() for p in params) / 1e6:.2f}M params, {len(data):,} tokens", flush=True)
    model.train()

    def loss_fn(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not a.fp32):
            H = model.trunk(x[:, :-1])
            lg = model.logits(H)
        return F.cross_entropy(lg.float().reshape(-1, CFG["n_vocab"]), x[:, 1:].reshape(-1))

    a_ctx = a.ctx
    a.ctx = a_ctx + 1   # windows of ctx + 1 tokens: ctx inputs, ctx targets
    info = run_schedule("trunk", params, loss_fn, data, a, a.steps, a.minutes, a.lr, 100)
    a.ctx = a_ctx
    torch.save({"cfg": CFG, "state": model.state_dict(), "info": info}, work / "trunk.pt")


def mtp_loss(model, x, distill=0.0):
    """Row p: (x_p, H_{p-1}) -> x_{p+1}; the trunk is frozen (no grad)."""
    with torch.no_grad():
        H = model.trunk(x[:, :-1]).float()
        tl = model.logits(H).float() if distill > 0 else None
    hm = model.mtp_hidden(x[:, :-1], H)
    lg = model.logits(hm).float()
    V = CFG["n_vocab"]
    loss = F.cross_entropy(lg.reshape(-1, V), x[:, 1:].reshape(-1))
    if distill > 0:
        kl = F.kl_div(F.log_softmax(lg, -1).reshape(-1, V), F.log_softmax(tl, -1).reshape(-1, V),
                      log_target=True, reduction="batchmean")
        loss = (1 - distill) * loss + distill * kl
    return loss


def train_mtp(work: Path, a):
    torch.manual_seed(1)
    data = np.fromfile(work / "train.u16", dtype=np.uint16)
    model = Qwen35(CFG)
    ck = torch.load(work / "trunk.pt")
    trunk_state = {k: v for k, v in ck["state"].items() if not k.startswith("mtp.")}
    missing, unexpected = model.load_state_dict(trunk_state, strict=False)
    assert not unexpected and all(k.startswith("mtp.") for k in missing)
    model.requires_grad_(False)
    model.mtp.requires_grad_(True)
    params = list(model.mtp.parameters())
    print(f"mtp: {sum(p.numel() for p in params) / 1e6:.2f}M params (trunk frozen)", flush=True)
    model.eval()   # no dropout anywhere; eval for the frozen trunk

    def loss_fn(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not a.fp32):
            return mtp_loss(model, x, a.mtp_distill)

    a_ctx = a.ctx
    a.ctx = a_ctx + 1
    info = run_schedule("mtp", params, loss_fn, data, a, a.mtp_steps, a.mtp_minutes, a.mtp_lr, 50)
    a.ctx = a_ctx
    info["distill"] = a.mtp_distill
    torch.save({"cfg": CFG, "state": model.state_dict(), "trunk_info": ck["info"], "info": info}, work / "mtp.pt")


def load_model(work: Path):
    ck = torch.load(work / "mtp.pt")
    model = Qwen35(ck["cfg"])
    model.load_state_dict(ck["state"])
    model.eval()
    return model, ck


# ---------------------------------------------------------------------------- export

def copy_tokenizer(w, src: Path):
    """Every tokenizer.* key of the GGUF `src` into GGUFWriter `w`."""
    import gguf
    r = gguf.GGUFReader(str(src))
    for name, f in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), gguf.GGUFValueType.ARRAY, sub_type=f.types[-1])
        else:
            w.add_key_value(name, f.contents(), f.types[0])


def export(model, out: Path):
    import gguf
    cfg = model.cfg
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    n_layer = cfg["n_layer"]
    w = gguf.GGUFWriter(str(out), "qwen35")
    w.add_name("heterospec-qwen35-code-mtp")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg["ctx"])
    w.add_embedding_length(cfg["n_embd"])
    w.add_block_count(n_layer + 1)
    w.add_nextn_predict_layers(1)
    w.add_feed_forward_length(cfg["n_ff"])
    w.add_head_count(cfg["n_head"])
    w.add_head_count_kv(cfg["n_head_kv"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_dimension_count(cfg["n_rot"])
    w.add_rope_dimension_sections(list(cfg["rope_sections"]))
    w.add_rope_freq_base(cfg["rope_base"])
    w.add_layer_norm_rms_eps(cfg["eps"])
    w.add_full_attention_interval(cfg["full_attention_interval"])
    w.add_ssm_conv_kernel(cfg["ssm_d_conv"])
    w.add_ssm_state_size(cfg["ssm_d_state"])
    w.add_ssm_group_count(cfg["ssm_n_group"])
    w.add_ssm_time_step_rank(cfg["ssm_dt_rank"])
    w.add_ssm_inner_size(cfg["ssm_d_state"] * cfg["ssm_dt_rank"])
    w.add_vocab_size(cfg["n_vocab"])
    copy_tokenizer(w, TOKENIZER_GGUF)   # the code tokenizer, exactly as code-target.gguf carries it

    T = {"token_embd.weight": sd["emb.weight"], "output_norm.weight": sd["output_norm.weight"]}

    def attn(b, p):   # p: state-dict prefix of a Block with FullAttn
        T.update({
            b + "attn_norm.weight": sd[p + "attn_norm.weight"],
            b + "attn_q.weight": sd[p + "mixer.q.weight"],
            b + "attn_k.weight": sd[p + "mixer.k.weight"],
            b + "attn_v.weight": sd[p + "mixer.v.weight"],
            b + "attn_output.weight": sd[p + "mixer.o.weight"],
            b + "attn_q_norm.weight": sd[p + "mixer.q_norm.weight"],
            b + "attn_k_norm.weight": sd[p + "mixer.k_norm.weight"],
        })

    def common(b, p):
        T.update({
            b + "post_attention_norm.weight": sd[p + "post_norm.weight"],
            b + "ffn_gate.weight": sd[p + "ffn.gate.weight"],
            b + "ffn_up.weight": sd[p + "ffn.up.weight"],
            b + "ffn_down.weight": sd[p + "ffn.down.weight"],
        })

    for i in range(n_layer):
        b, p = f"blk.{i}.", f"layers.{i}."
        if is_full_attn(cfg, i):
            attn(b, p)
        else:
            T.update({
                b + "attn_norm.weight": sd[p + "attn_norm.weight"],
                b + "attn_qkv.weight": sd[p + "mixer.qkv.weight"],
                b + "attn_gate.weight": sd[p + "mixer.gate.weight"],
                b + "ssm_conv1d.weight": sd[p + "mixer.conv"],
                b + "ssm_dt.bias": sd[p + "mixer.dt_bias"],
                b + "ssm_a": -np.exp(sd[p + "mixer.A_log"]),
                b + "ssm_beta.weight": sd[p + "mixer.beta.weight"],
                b + "ssm_alpha.weight": sd[p + "mixer.alpha.weight"],
                b + "ssm_norm.weight": sd[p + "mixer.norm.weight"],
                b + "ssm_out.weight": sd[p + "mixer.out.weight"],
            })
        common(b, p)
    b = f"blk.{n_layer}."
    attn(b, "mtp.block.")
    common(b, "mtp.block.")
    T.update({
        b + "nextn.eh_proj.weight": sd["mtp.eh_proj.weight"],          # input [enorm(e) | hnorm(h)]
        b + "nextn.enorm.weight": sd["mtp.enorm.weight"],
        b + "nextn.hnorm.weight": sd["mtp.hnorm.weight"],
        b + "nextn.shared_head_norm.weight": sd["mtp.shared_head_norm.weight"],
    })
    for k, v in T.items():
        w.add_tensor(k, np.ascontiguousarray(v, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {len(T)} tensors)", flush=True)


# ---------------------------------------------------------------------------- checks

@torch.no_grad()
def heldout_eval(model, held, ctx, n_windows):
    """Held-out losses (nats/token) of the trunk (x_{p+1} from H_p) and of the MTP head (x_{p+1}
    from row p = (x_p, H_{p-1}), i.e. two tokens past the trunk state it reads), and the head's
    teacher-forced agreement with the trunk's greedy token (argmax head row p == argmax trunk at p)."""
    offs = np.linspace(0, len(held) - ctx - 2, n_windows).astype(np.int64)
    x = torch.from_numpy(np.stack([held[o:o + ctx + 1] for o in offs]).astype(np.int64))
    tl, ml, agree, n = 0.0, 0.0, 0, 0
    for i in range(0, n_windows, 4):
        xb = x[i:i + 4]
        H = model.trunk(xb[:, :-1])
        lt = model.logits(H)
        lm = model.logits(model.mtp_hidden(xb[:, :-1], H))
        y = xb[:, 1:]
        tl += F.cross_entropy(lt.reshape(-1, lt.shape[-1]), y.reshape(-1), reduction="sum").item()
        ml += F.cross_entropy(lm.reshape(-1, lm.shape[-1]), y.reshape(-1), reduction="sum").item()
        agree += (lm.argmax(-1) == lt.argmax(-1)).sum().item()
        n += y.numel()
    return {"tokens": n, "trunk_loss": tl / n, "mtp_loss": ml / n, "mtp_agree_teacher_forced": agree / n}


@torch.no_grad()
def greedy(model, prompt, n, eot):
    toks = list(prompt)
    for _ in range(n):
        H = model.trunk(torch.tensor([toks]))
        t = int(model.logits(H[:, -1]).argmax(-1))
        toks.append(t)
        if t == eot:
            break
    return toks[len(prompt):]


@torch.no_grad()
def chain_sim(model, prompt, gen):
    """What chain speculation with n_max = 1 does on the greedy path `gen` (the engine's steps:
    the first step's root is the prompt's last token): each step the head drafts one token from
    (root token, H before it); it is accepted when it is the greedy token, and the step emits 2
    tokens, else 1. Returns the tokens emitted per step and the head's agreement with the greedy
    token at every position."""
    seq = torch.tensor([list(prompt) + list(gen)])
    H = model.trunk(seq)
    hm = model.logits(model.mtp_hidden(seq, H)).argmax(-1)[0]
    P = len(prompt)
    ok = [int(hm[P - 1 + j]) == gen[j] for j in range(len(gen))]   # the draft for gen[j]
    steps, accepted, j = [], 0, 0
    while j < len(gen):
        accepted += ok[j]            # (the last step's draft may be accepted with no room for a bonus token)
        n = 2 if ok[j] and j + 1 < len(gen) else 1
        steps.append(n)
        j += n
    return steps, ok, accepted


def logit_match(eng, model, held, a):
    maxdiff, maxdiff_tok, top1, n_pos, ties, disagree, rowmax = 0.0, 0.0, 0, 0, 0, [], []
    n_prompt, n_cont = 96, 128
    for o in np.linspace(0, len(held) - 600, a.n_logit_windows).astype(np.int64):
        w = [int(t) for t in held[o:o + n_prompt + n_cont]]
        rows, _ = eng.score(w[:n_prompt], w[n_prompt:])
        rows = np.asarray(rows, dtype=np.float64)
        with torch.no_grad():
            lp = F.log_softmax(model.logits(model.trunk(torch.tensor([w]))).double(), -1)[0]
        ref = lp[n_prompt - 1:n_prompt - 1 + n_cont].numpy()
        diff = np.abs(rows - ref)
        rowmax.extend(diff.max(-1).tolist())
        maxdiff = max(maxdiff, float(diff.max()))
        maxdiff_tok = max(maxdiff_tok, float(diff[np.arange(n_cont), w[n_prompt:]].max()))
        a1, b1 = rows.argmax(-1), ref.argmax(-1)
        top1 += int((a1 == b1).sum())
        n_pos += n_cont
        srt = np.sort(ref, -1)
        gap = srt[:, -1] - srt[:, -2]
        for i in np.nonzero(a1 != b1)[0]:
            disagree.append(float(gap[i]))
            ties += gap[i] < 1e-2
    return {"positions": n_pos, "max_abs_diff_logprob_all_vocab": maxdiff,
            "median_over_positions_of_max_abs_diff": float(np.median(rowmax)),
            "max_abs_diff_logprob_actual_token": maxdiff_tok,
            "top1_agreement": top1 / n_pos, "top1_disagreements": len(disagree),
            "disagreements_with_top2_gap_below_1e-2": int(ties),
            "disagreement_gaps": disagree[:20]}


def checks(model, work: Path, gguf_path: Path, a, timings):
    res = {"gguf": str(gguf_path), "shape": CFG, "timings_s": timings}
    res["params"] = {
        "trunk": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp.")),
        "mtp_head": sum(p.numel() for p in model.mtp.parameters()),
        "embedding (tied with the output)": model.emb.weight.numel(),
    }
    held = np.fromfile(work / "heldout.u16", dtype=np.uint16)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(TOKENIZER))
    eot = tok.token_to_id("<|endoftext|>")

    t0 = time.time()
    res["heldout"] = heldout_eval(model, held, CFG["ctx"], a.eval_windows)
    res["heldout"]["seconds"] = round(time.time() - t0, 1)
    print("held-out:", json.dumps(res["heldout"]), flush=True)

    # prompts for the greedy checks: 64 tokens from held-out documents
    docs = (work / "heldout.txt").read_text().split(DOC_SEP)
    rng = random.Random(0)
    pdocs = [d for d in rng.sample(docs, min(len(docs), 200)) if len(d) > 2000][:a.n_prompts]
    prompts = [tok.encode(d).ids[:64] for d in pdocs]
    t0 = time.time()
    gens = [greedy(model, p, a.gen_tokens, eot) for p in prompts]
    sims = [chain_sim(model, p, g) for p, g in zip(prompts, gens)]
    ok = [x for s in sims for x in s[1]]
    st = [x for s in sims for x in s[0]]
    res["pytorch_greedy"] = {"prompts": len(prompts), "tokens": sum(map(len, gens)),
                             "mtp_agree_on_greedy_path": sum(ok) / max(len(ok), 1),
                             "chain_n_max1_steps": len(st), "chain_n_max1_accepted": sum(s[2] for s in sims),
                             "chain_n_max1_acceptance": sum(s[2] for s in sims) / max(len(st), 1),
                             "seconds": round(time.time() - t0, 1)}
    print("pytorch greedy:", json.dumps(res["pytorch_greedy"]), flush=True)

    if a.no_engine:
        return res
    try:
        import heterospec
        from heterospec import Engine
    except ImportError as e:
        res["engine_error"] = f"heterospec not importable: {e}"
        return res

    t0 = time.time()
    eng = Engine(str(gguf_path), n_threads=a.threads)
    res["engine"] = {"has_mtp": bool(eng.has_mtp), "n_ctx": eng.n_ctx, "description": eng.description}

    # 1. tokenization: llama.cpp (the GGUF's copied metadata) vs the HF tokenizer
    texts = [d[:3000] for d in docs[:40]] + ["def f(x):\n    return x ** 2  # ünïcode ✓\n", "\t\tif a != b:\n"]
    mism = sum(eng.tokenize(s, add_special=False) != tok.encode(s).ids for s in texts)
    res["tokenizer_match"] = {"texts": len(texts), "mismatches": mism}
    print("tokenizer:", res["tokenizer_match"], flush=True)

    # 2. logits: llama.cpp (prompt in one batch, then token by token) vs PyTorch F32, with the
    # engine's defaults (flash attention auto, F16 KV cache) and with F32 attention throughout
    res["logit_match"] = logit_match(eng, model, held, a)
    print("logit match (engine defaults):", json.dumps(res["logit_match"]), flush=True)
    exact = Engine(str(gguf_path), n_threads=a.threads, flash_attn=False, cache_type_k="f32", cache_type_v="f32")
    res["logit_match_f32_attention"] = logit_match(exact, model, held, a)
    res["logit_match_f32_attention"]["engine_options"] = "flash_attn=False, cache_type_k/v=f32"
    exact.close()
    print("logit match (flash_attn off, F32 KV):", json.dumps(res["logit_match_f32_attention"]), flush=True)

    # 3. llama.cpp's own greedy loop vs PyTorch's greedy continuation
    from heterospec._core import testing
    same = 0
    for p, g in zip(prompts[:4], gens[:4]):
        toks, _gaps = testing.llama_cpp_greedy(str(gguf_path), p, len(g), 512, a.threads)
        same += list(toks)[:len(g)] == list(g)
    res["llama_cpp_greedy_equal_pytorch"] = f"{same}/{min(4, len(prompts))}"

    # 4. MTP speculation through the engine: chain, n_max = 1, greedy
    acc, ver, eq, steps, gen_tok, same_steps = 0, 0, 0, 0, 0, 0
    for p, g, (sim_steps, _ok, _acc) in zip(prompts, gens, sims):
        r = eng.generate(p, max_tokens=len(g), temperature=0, mode="chain", drafter="mtp",
                         n_max=1, p_min=0.0, cache_prompt=False, trace=True)
        acc += r.stats.accepted_draft
        ver += r.stats.nodes_verified
        steps += r.stats.steps
        gen_tok += r.stats.generated_tokens
        eq += list(r.tokens) == [t for t in g if t != eot]
        # the engine's steps (tokens emitted per step) against the PyTorch simulation: the same
        # sequence when llama.cpp's MTP head drafts what the PyTorch head drafts
        same_steps += [t[2] for t in r.trace] == sim_steps
    res["engine_mtp"] = {"prompts": len(prompts), "accepted_draft": acc, "nodes_verified": ver,
                         "acceptance": acc / max(ver, 1), "steps": steps, "generated_tokens": gen_tok,
                         "tokens_per_step": gen_tok / max(steps, 1),
                         "outputs_equal_pytorch_greedy": f"{eq}/{len(prompts)}",
                         "step_sequences_equal_pytorch_simulation": f"{same_steps}/{len(prompts)}"}
    res["engine"]["seconds"] = round(time.time() - t0, 1)
    print("engine mtp:", json.dumps(res["engine_mtp"]), flush=True)
    eng.close()
    return res


# ---------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=str(REPO / "benchmarks/.cache/qwen35-code-mtp.gguf"))
    ap.add_argument("--work", default=None, help="stage outputs (default: <out dir>/qwen35-mtp/)")
    ap.add_argument("--roots", nargs="*", default=[os.path.dirname(os.__file__)])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=CFG["ctx"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4000, help="trunk steps (the schedule's length)")
    ap.add_argument("--minutes", type=float, default=27, help="trunk time budget")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--mtp-steps", type=int, default=2000)
    ap.add_argument("--mtp-minutes", type=float, default=9)
    ap.add_argument("--mtp-lr", type=float, default=2e-3)
    ap.add_argument("--mtp-distill", type=float, default=0.0,
                    help="weight of a KL term towards the trunk's own next-token distribution (0: data only)")
    ap.add_argument("--max-train-tokens", type=int, default=40_000_000)
    ap.add_argument("--eval-windows", type=int, default=24)
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--n-logit-windows", type=int, default=3)
    ap.add_argument("--no-engine", action="store_true", help="skip the llama.cpp checks")
    ap.add_argument("--fp32", action="store_true",
                    help="train in float32 (the default where the CPU lacks AVX-512: bf16 autocast on an "
                         "AVX2-only CPU ran about 50x slower)")
    a = ap.parse_args()
    if not a.fp32 and torch.backends.cpu.get_cpu_capability() != "AVX512":
        print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}: training in float32 (bf16 autocast "
              "is emulated there, about 50x slower)", flush=True)
        a.fp32 = True
    torch.set_num_threads(a.threads)
    out = Path(a.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else out.parent / "qwen35-mtp"
    work.mkdir(parents=True, exist_ok=True)
    tfile = work / "timings.json"
    timings = json.loads(tfile.read_text()) if tfile.exists() else {}

    def stage(name, done, fn):
        if done:
            print(f"[{name}] exists, skipped", flush=True)
            return
        t0 = time.time()
        fn()
        timings[name] = round(time.time() - t0, 1)
        tfile.write_text(json.dumps(timings, indent=1))
        print(f"[{name}] {timings[name]:.0f} s", flush=True)

    stage("corpus", (work / "heldout.txt").exists(), lambda: collect_corpus(work, a.roots))
    stage("tokens", (work / "heldout.u16").exists(), lambda: encode(work, a.max_train_tokens))
    stage("trunk", (work / "trunk.pt").exists(), lambda: train_trunk(work, a))
    stage("mtp", (work / "mtp.pt").exists(), lambda: train_mtp(work, a))
    model, ck = load_model(work)
    t0 = time.time()
    export(model, out)
    timings["export"] = round(time.time() - t0, 1)
    t0 = time.time()
    res = checks(model, work, out, a, timings)
    timings["checks"] = round(time.time() - t0, 1)
    res["training"] = {"trunk": {k: v for k, v in ck["trunk_info"].items() if k != "log"},
                       "mtp": {k: v for k, v in ck["info"].items() if k != "log"}}
    tfile.write_text(json.dumps(timings, indent=1))
    path = out.with_suffix(".checks.json")
    path.write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps(res, indent=1, default=float))
    print("saved", path)


if __name__ == "__main__":
    main()
