#!/usr/bin/python3
"""PyTorch peer for loom's training benchmark: nanoGPT-style GPT-2 (tied embeddings, V 50257, context 1024,
pre-LayerNorm blocks with biases, GELU-tanh MLP of width 4C, no dropout) trained with AdamW on synthetic uniform
random tokens.

Usage:
  bench/peer_env.sh /usr/bin/python3 bench/torch_gpt.py --model gpt2-124m|gpt2-l6 --steps N \\
      [--batch 4] [--seq-len 64] [--threads 2] [--precision fp32|bf16] [--warmup 2] [--lora R]

--lora R: LoRA fine-tuning as PEFT runs it (every weight frozen, requires_grad False; c_attn, c_proj, c_fc and
the MLP projection each gain y += (alpha/r) (x A^T) B^T with alpha = 2r; AdamW over the adapters only).

It must run under the "tuned" environment of shared PERFORMANCE.md (bench/peer_env.sh sets it up): OPENBLAS_CORETYPE
unset (OpenBLAS picks its AVX-512 kernels), tcmalloc preloaded with TCMALLOC_RELEASE_RATE=0, OMP_WAIT_POLICY=PASSIVE,
OMP/OpenBLAS thread counts = --threads. Without it the numbers are not PyTorch's best on this machine; the program
says so on stderr and reports "tuned_env": false in its summary.

Output: one JSON line per step {"step","loss","ms","tokens_per_sec"} (warm-up steps are marked "warmup": true and
left out of the summary), then {"summary": true, "median_ms", "tokens_per_sec" (at the median), "peak_rss_bytes",
...}. --steps counts the measured steps; --warmup steps run before them.
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MODELS = {
    "gpt2-124m": dict(n_layer=12, n_head=12, d_model=768),
    "gpt2-l6": dict(n_layer=6, n_head=6, d_model=384),
}
VOCAB = 50257
MAX_SEQ = 1024
HAS_SDPA = hasattr(F, "scaled_dot_product_attention")  # torch >= 2.0; Debian's 1.13 lacks it


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def attn(self, x, mask):
        B, T, C = x.shape
        H = self.H
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, H, C // H).transpose(1, 2)
        k = k.view(B, T, H, C // H).transpose(1, 2)
        v = v.view(B, T, H, C // H).transpose(1, 2)
        if HAS_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(mask[:T, :T], float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, d_model):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d_model)
        self.wpe = nn.Embedding(MAX_SEQ, d_model)
        self.h = nn.ModuleList([Block(d_model, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        # True above the diagonal = masked out
        self.register_buffer("mask", torch.ones(MAX_SEQ, MAX_SEQ, dtype=torch.bool).triu(1), persistent=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") or name.endswith(
                    "mlp_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for blk in self.h:
            x = blk(x, self.mask)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, VOCAB), targets.reshape(-1))


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus PEFT's LoRA update (A: kaiming-uniform, B: zero, scale alpha / r)."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + ((x @ self.lora_A.t()) @ self.lora_B.t()) * self.scale


def add_lora(model, r):
    for p in model.parameters():
        p.requires_grad_(False)
    for blk in model.modules():
        if isinstance(blk, Block):
            for name in ("c_attn", "c_proj", "c_fc", "mlp_proj"):
                setattr(blk, name, LoRALinear(getattr(blk, name), r, 2 * r))


def tuned_env_problems(threads):
    probs = []
    if "OPENBLAS_CORETYPE" in os.environ:
        probs.append("OPENBLAS_CORETYPE=%s is set (pins OpenBLAS's kernel)" % os.environ["OPENBLAS_CORETYPE"])
    if "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
        probs.append("tcmalloc not preloaded")
    if os.environ.get("TCMALLOC_RELEASE_RATE") != "0":
        probs.append("TCMALLOC_RELEASE_RATE is not 0")
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        probs.append("OMP_WAIT_POLICY is not PASSIVE")
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(v) != str(threads):
            probs.append("%s=%s, not %d" % (v, os.environ.get(v), threads))
    return probs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="gpt2-l6")
    ap.add_argument("--steps", type=int, default=10, help="measured steps")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--warmup", type=int, default=2, help="steps run first and left out of the summary")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1,
                    help="decoupled weight decay on matrices and embeddings (not norms or biases), as loom")
    ap.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip (0 = off), as loom")
    ap.add_argument("--foreach", choices=["on", "off"], default="off",
                    help="AdamW's multi-tensor (foreach) implementation; the per-tensor loop ('off', torch 1.13's "
                         "default) measured ~10%% faster here (L6: ~75 against ~85 ms per optimizer step)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank on attn+mlp (0: full training)")
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0 or a.batch < 1 or not 1 <= a.seq_len <= MAX_SEQ or a.threads < 1:
        ap.error("bad arguments")

    probs = tuned_env_problems(a.threads)
    for p in probs:
        print("torch_gpt.py: warning: not the tuned environment: %s (run under bench/peer_env.sh)" % p,
              file=sys.stderr)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = GPT(**MODELS[a.model])
    model.train()
    n_params = sum(p.numel() for p in model.parameters())  # tied head counted once
    if a.lora:
        add_lora(model, a.lora)
    trained = [p for p in model.parameters() if p.requires_grad]
    # the same recipe as loom's defaults: decay on 2-D parameters only, global-norm clipping
    decay = [p for p in trained if p.dim() >= 2]
    no_decay = [p for p in trained if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
                            foreach=(a.foreach == "on"))
    gen = torch.Generator().manual_seed(a.seed + 1)
    B, T = a.batch, a.seq_len
    bf16 = a.precision == "bf16"

    times = []
    for step in range(a.warmup + a.steps):
        data = torch.randint(0, VOCAB, (B, T + 1), generator=gen)
        x, y = data[:, :-1], data[:, 1:]
        t0 = time.perf_counter()
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, y)
        else:
            loss = model(x, y)
        loss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(trained, a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lossv = loss.item()
        ms = (time.perf_counter() - t0) * 1e3
        rec = {"step": step, "loss": round(lossv, 6), "ms": round(ms, 3), "tokens_per_sec": round(B * T / ms * 1e3, 2)}
        if step < a.warmup:
            rec["warmup"] = True
        else:
            times.append(ms)
        print(json.dumps(rec), flush=True)

    med = statistics.median(times)
    print(json.dumps({
        "summary": True, "system": "pytorch", "torch": torch.__version__, "model": a.model, "params": n_params,
        "precision": a.precision, "lora": a.lora, "trained_params": sum(p.numel() for p in trained), "batch": B, "seq_len": T, "threads": a.threads, "steps": a.steps,
        "warmup": a.warmup, "attention": "sdpa" if HAS_SDPA else "manual", "adamw_foreach": a.foreach == "on",
        "median_ms": round(med, 3), "mean_ms": round(statistics.mean(times), 3), "min_ms": round(min(times), 3),
        "tokens_per_sec": round(B * T / med * 1e3, 2),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "tuned_env": not probs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
