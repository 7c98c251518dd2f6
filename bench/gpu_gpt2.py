#!/usr/bin/env python3
"""PyTorch peer for loom's GPU check (scripts/gpu_check.sh): loom's GPT-2 in PyTorch, trained from loom's
initial weights on exactly loom's batches, so that the two runs' losses can be compared step by step, and
their speed and memory side by side.

The model is loom's gpt2 family (src/model/gpt.c; tests/torch_ref.py and bench/torch_gpt.py map it the same
way): learned positions, pre-LayerNorm blocks with biases (eps from the checkpoint, 1e-5), one fused qkv
projection whose weight rows are [q | k | v] ([out, in] layout, as nn.Linear), causal attention with scale
1/sqrt(head size), an MLP of width d_ff with GPT-2's tanh GELU, a final LayerNorm and a head tied to the token
embedding. The optimizer is loom's AdamW: decoupled weight decay on matrices and embeddings only, global
gradient-norm clipping as torch's clip_grad_norm_, and src/optim/optim.c's schedule (linear warm-up, then
cosine to min_lr at --steps). Batches are loom's sampler (src/data/loader.c, src/core/rng.c): for a .bin of
uint16 tokens, the first floor(n * (1 - val_fraction)) tokens are the training stream and each of a step's B
windows starts at rng.below(n_train - T) from xoshiro256** seeded through splitmix64 with seed ^ "rain".

bf16 is torch.autocast(bfloat16) in eager mode: products in bf16 with fp32 accumulation (loom keeps their
fp32 outputs, autocast rounds them to bf16; attention runs in bf16 in PyTorch, fp32 in loom), master weights,
gradients and optimizer state in fp32 in both. So the two trajectories are close, not equal: the tolerance
(--tol, default 5e-2 on any step's loss over 50 steps) is bf16's, ~2^-8 relative noise per product compounding
through 12 layers; with --precision fp32 on the CPU (the self-check below) they agree to ~1e-5.

Subcommands:
  make-data OUT.bin [--tokens N] [--vocab V] [--seed S]
      a fixed, seeded, learnable token stream (phrases drawn from a Zipf-weighted set, so the loss falls well
      below ln V in a few dozen steps) as uint16 tokens, loom's .bin data format.
  train --init CKPT --data TOKENS.bin [--steps 50 --batch 16 --seq-len 1024 --device cuda --precision bf16 ...]
        [--loom-metrics METRICS.jsonl] [--peak-tflops X] [--summary OUT.json]
      trains; prints one JSON line per step; with --loom-metrics prints both runs side by side (losses, their
      largest difference, tokens/s, MFU against --peak-tflops, peak memory) and exits 1 when a step's losses
      differ by more than --tol.

Self-check without a GPU (fp32, both on the CPU; agreement ~1e-5):
  loom train --preset demo --data t.bin --steps 1 --lr 0 --set optim.min_lr=0 --out init
  loom train --preset demo --data t.bin --steps 5 --out run
  bench/gpu_gpt2.py train --init init/checkpoint.bin --data t.bin --steps 5 --batch 8 --seq-len 64 \\
      --device cpu --precision fp32 --lr 6e-4 --loom-metrics run/metrics.jsonl --tol 1e-4
"""
import argparse
import array
import json
import math
import statistics
import struct
import subprocess
import sys
import threading
import time

import torch

MASK = (1 << 64) - 1


def read_ckpt_params(path):
    """(meta, {loom parameter name: float32 tensor}) of a single-file checkpoint, from docs/FORMATS.md's container
    (as tests/loom_files.py reads it, with torch instead of numpy: the GPU machine needs nothing but torch)."""
    with open(path, "rb") as f:
        buf = f.read()
    assert buf[:8] == b"LOOMCKPT", "%s: not a loom checkpoint" % path
    version, n = struct.unpack("<II", buf[8:16])
    assert version == 1, "%s: checkpoint version %d" % (path, version)
    secs = {}
    for i in range(n):
        e = buf[24 + 72 * i:24 + 72 * (i + 1)]
        off, size = struct.unpack("<QQ", e[48:64])
        secs[e[:48].rstrip(b"\0").decode()] = (off, size)
    meta = json.loads(buf[secs["meta"][0]:secs["meta"][0] + secs["meta"][1]])
    off, size = secs["params"]
    flat = torch.frombuffer(bytearray(buf[off:off + size]), dtype=torch.float32)
    params = {}
    for p in meta["params"]:
        k = math.prod(p["shape"])
        params[p["name"]] = flat[p["offset"]:p["offset"] + k].reshape(p["shape"]).clone()
    return meta, params


def read_tokens(path):
    """a .bin of little-endian uint16 tokens, as int64"""
    a = array.array("H")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    return torch.frombuffer(a, dtype=torch.int16).to(torch.int64) & 0xFFFF


class LoomRng:
    """src/core/rng.c: xoshiro256** seeded through splitmix64; below(n) rejects the top partial range."""

    def __init__(self, seed):
        self.s = []
        x = seed & MASK
        for _ in range(4):
            x = (x + 0x9e3779b97f4a7c15) & MASK
            z = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9) & MASK
            z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & MASK
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & MASK

    def next(self):
        s0, s1, s2, s3 = self.s
        r = (self._rotl((s1 * 5) & MASK, 7) * 9) & MASK
        t = (s1 << 17) & MASK
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = self._rotl(s3, 45)
        self.s = [s0, s1, s2, s3]
        return r

    def below(self, n):
        limit = MASK - MASK % n
        while True:
            x = self.next()
            if x < limit:
                return x % n


def make_data(a):
    """Phrases of 4-24 tokens over a Zipf-weighted vocabulary, concatenated in a Zipf-weighted random order."""
    g = torch.Generator().manual_seed(a.seed)
    p_tok = 1.0 / torch.arange(1, a.vocab + 1, dtype=torch.float64)
    lengths = torch.randint(4, 25, (a.phrases,), generator=g)
    flat = torch.multinomial(p_tok, int(lengths.sum()), replacement=True, generator=g)
    phrases = torch.split(flat, lengths.tolist())
    p_phr = 1.0 / torch.arange(1, a.phrases + 1, dtype=torch.float64) ** 0.8
    out, n = [], 0
    while n < a.tokens:
        for i in torch.multinomial(p_phr, 4096, replacement=True, generator=g).tolist():
            out.append(phrases[i])
            n += len(phrases[i])
    toks = array.array("H", torch.cat(out)[:a.tokens].tolist())
    if sys.byteorder != "little":
        toks.byteswap()
    with open(a.out, "wb") as f:
        toks.tofile(f)
    print("make-data: %d tokens (vocabulary %d, %d phrases) in %s" % (len(toks), a.vocab, a.phrases, a.out))


# ------------------------------------------------------------------------------------------------ the model
def build_model(meta, device):
    nn, F = torch.nn, torch.nn.functional
    m = meta["model"]
    assert m["family"] == "gpt2", "gpu_gpt2.py models loom's gpt2 family, not %s" % m["family"]
    assert m["tie_embeddings"] and m["bias"], "this peer has biases and a tied head, as the gpt2-124m preset"
    C, H, L, V, Tmax, Fd, eps = (m["d_model"], m["n_head"], m["n_layer"], m["vocab_size"], m["max_seq_len"],
                                 m["d_ff"], m["norm_eps"])
    exact = m.get("gelu", "tanh") == "erf"
    sdpa = hasattr(F, "scaled_dot_product_attention")

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C, eps=eps), nn.LayerNorm(C, eps=eps)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)  # qkv rows: [q | k | v]
            self.fc, self.mlp_proj = nn.Linear(C, Fd), nn.Linear(Fd, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            if sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # torch 1.13 (the CPU self-check)
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
                att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
                y = F.softmax(att, dim=-1) @ v
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            h = F.gelu(self.fc(self.ln_2(x)), approximate="none" if exact else "tanh")
            return x + self.mlp_proj(h)

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(Tmax, C)
            self.h = nn.ModuleList([Block() for _ in range(L)])
            self.ln_f = nn.LayerNorm(C, eps=eps)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for blk in self.h:
                x = blk(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # the tied head
            return F.cross_entropy(logits.float().view(-1, V), targets.reshape(-1))

    return GPT().to(device)


LOOM_NAMES = {"mlp_proj": "mlp.proj", "fc": "mlp.fc", "qkv": "attn.qkv", "proj": "attn.proj"}


def load_loom_weights(model, params):
    """loom's parameter names (h.0.attn.qkv.weight, ...) onto this model's."""
    state = {}
    for k, v in model.state_dict().items():
        parts = k.split(".")
        if parts[0] in ("wte", "wpe"):
            name = parts[0]
        elif parts[0] == "h":
            name = ".".join(["h", parts[1], LOOM_NAMES.get(parts[2], parts[2]), parts[3]])
        else:
            name = k
        w = params[name]
        assert tuple(w.shape) == tuple(v.shape), "%s: loom %s, torch %s" % (name, w.shape, tuple(v.shape))
        state[k] = w
    model.load_state_dict(state)


# ------------------------------------------------------------------------------------------------ memory
class GpuMemPoll:
    """The GPU's used memory, polled with nvidia-smi every 0.2 s (includes the CUDA context and the caching
    allocator's reserve: what the process holds, comparable between loom and PyTorch)."""

    def __init__(self):
        self.peak, self.base, self.proc, self.ok = 0, None, None, True

    def __enter__(self):
        try:
            self.base = self._once()
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          "-lms", "200"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        except (OSError, subprocess.CalledProcessError, ValueError):
            self.ok = False
        return self

    @staticmethod
    def _once():
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
        return int(out.split()[0])

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.peak = max(self.peak, int(line.split()[0]))
            except (ValueError, IndexError):
                pass

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()


# ------------------------------------------------------------------------------------------------ training
def lr_at(a, step):
    """src/optim/optim.c loom_optim_lr, decay_steps = the run's steps."""
    if step < a.warmup:
        return a.lr * (step + 1) / (a.warmup + 1)
    if step >= a.steps or a.steps <= a.warmup:
        return a.min_lr
    ratio = (step - a.warmup) / (a.steps - a.warmup)
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (a.lr - a.min_lr)


def train(a):
    device = torch.device(a.device)
    if device.type == "cuda":
        assert torch.cuda.is_available(), "PyTorch sees no CUDA device"
        torch.backends.cuda.matmul.allow_tf32 = False  # loom's fp32 GEMMs are fp32 (LOOM_CUDA_TF32 unset)
        torch.backends.cudnn.allow_tf32 = False
    meta, params = read_ckpt_params(a.init)
    model = build_model(meta, device)
    load_loom_weights(model, params)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())  # tied head counted once, as loom
    m = meta["model"]
    flops_tok = 6.0 * n_params + 12.0 * m["n_layer"] * m["d_model"] * a.seq_len  # loom_model_config_flops_per_token
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # PyTorch's fastest AdamW on a GPU (torch >= 2.0); the same update
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps, fused=device.type == "cuda")
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps)
    tokens = read_tokens(a.data)
    n_train = int(math.floor(len(tokens) * (1.0 - a.val_fraction)))  # loom_data_split_point
    train_tok = tokens[:n_train]
    B, T = a.batch, a.seq_len
    assert n_train > T + 1, "the training split is shorter than a window"
    rng = LoomRng(a.seed ^ 0x7261696e)  # loom_data_open: the train stream's seed
    arange = torch.arange(T)
    bf16 = a.precision == "bf16"
    losses, times = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with GpuMemPoll() if device.type == "cuda" else _Null() as poll:
        for step in range(a.steps):
            ix = torch.tensor([rng.below(n_train - T) for _ in range(B)])  # loom: below(n - T - 1 + 1)
            idx = ix[:, None] + arange
            x, y = train_tok[idx].to(device, non_blocking=True), train_tok[idx + 1].to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = lr_at(a, step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if bf16:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = model(x, y)
            else:
                loss = model(x, y)
            loss.backward()
            if a.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            lv = loss.item()  # synchronises
            ms = (time.perf_counter() - t0) * 1e3
            losses.append(lv)
            times.append(ms)
            print(json.dumps({"step": step + 1, "loss": lv, "ms": round(ms, 3),
                              "tokens_per_sec": round(B * T / ms * 1e3, 1)}), flush=True)
    skip = min(a.skip, max(0, a.steps - 1))
    med = statistics.median(times[skip:])
    summary = {"system": "pytorch", "torch": torch.__version__, "device": a.device, "precision": a.precision,
               "params": n_params, "flops_per_token": flops_tok, "batch": B, "seq_len": T, "steps": a.steps,
               "median_ms": med, "tokens_per_sec": B * T / med * 1e3, "losses": losses,
               "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention")}
    if device.type == "cuda":
        summary.update(gpu=torch.cuda.get_device_name(device), max_memory_allocated=torch.cuda.max_memory_allocated(),
                       max_memory_reserved=torch.cuda.max_memory_reserved(),
                       nvidia_smi_peak_mib=poll.peak if poll.ok else None,
                       nvidia_smi_base_mib=poll.base if poll.ok else None)
    if a.summary:
        with open(a.summary, "w") as f:
            json.dump(summary, f)
    return compare(a, summary) if a.loom_metrics else 0


class _Null:
    ok, peak, base = False, 0, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def compare(a, torch_sum):
    """Both runs side by side; exit status 1 when a step's losses differ by more than --tol."""
    loom = {}
    with open(a.loom_metrics) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r and "step" in r:
                loom[r["step"]] = r
    steps = len(torch_sum["losses"])
    missing = [s for s in range(1, steps + 1) if s not in loom]
    if missing:
        print("gpu_gpt2: loom's metrics lack steps %s" % missing[:5], file=sys.stderr)
        return 2
    print("\nstep   loom loss     torch loss    |diff|")
    worst, worst_step = 0.0, 0
    for s in range(1, steps + 1):
        ll, tl = loom[s]["loss"], torch_sum["losses"][s - 1]
        d = abs(ll - tl) if ll is not None else float("inf")
        if d > worst or math.isnan(d):
            worst, worst_step = d, s
        if s <= 3 or s % 5 == 0 or s == steps:
            print("%-6d %-13.6f %-13.6f %.2e" % (s, ll if ll is not None else float("nan"), tl, d))
    skip = min(a.skip, max(0, steps - 1))
    loom_ms = statistics.median(loom[s]["ms"] for s in range(skip + 1, steps + 1))
    tok = a.batch * a.seq_len
    loom_tps, torch_tps = tok / loom_ms * 1e3, torch_sum["tokens_per_sec"]
    flops = torch_sum["flops_per_token"]
    print("\nlargest per-step |loss difference| over %d steps: %.3e (step %d); tolerance %g (%s)"
          % (steps, worst, worst_step, a.tol, a.precision))
    print("%-28s %-16s %-16s" % ("", "loom", "pytorch"))
    print("%-28s %-16.1f %-16.1f" % ("median ms/step (after %d)" % skip, loom_ms, torch_sum["median_ms"]))
    print("%-28s %-16.0f %-16.0f" % ("tokens/s", loom_tps, torch_tps))
    if a.peak_tflops > 0:
        print("%-28s %-16.2f %-16.2f" % ("MFU %% of %.0f TFLOP/s" % a.peak_tflops, 100 * flops * loom_tps / (a.peak_tflops * 1e12),
                                        100 * flops * torch_tps / (a.peak_tflops * 1e12)))
    print("%-28s %.4f (6 N + 12 L C T, loom's formula; the same for both)" % ("GFLOP/token", flops / 1e9))
    lm = loom[steps].get("mem_peak_bytes")
    print("%-28s %-16s %-16s" % ("peak accounted (GiB)", "%.2f" % (lm / 2**30) if lm else "?",
                                 "%.2f" % (torch_sum["max_memory_allocated"] / 2**30)
                                 if "max_memory_allocated" in torch_sum else "?"))
    if a.loom_gpu_peak_mib:
        tp = torch_sum.get("nvidia_smi_peak_mib")
        print("%-28s %-16.2f %-16s" % ("peak GPU used, nvidia-smi", a.loom_gpu_peak_mib / 1024,
                                        "%.2f" % (tp / 1024) if tp else "?"))
    ok = worst <= a.tol
    print("%s: loom and PyTorch losses agree within %g at every one of %d steps" % ("PASS" if ok else "FAIL", a.tol, steps))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("make-data", help="a seeded learnable token stream (.bin of uint16)")
    d.add_argument("out")
    d.add_argument("--tokens", type=int, default=4_000_000)
    d.add_argument("--vocab", type=int, default=50257)
    d.add_argument("--phrases", type=int, default=20000)
    d.add_argument("--seed", type=int, default=1234)
    t = sub.add_parser("train", help="train from loom's initial weights on loom's batches")
    t.add_argument("--init", required=True, help="loom's checkpoint.bin holding the initial weights")
    t.add_argument("--data", required=True, help="the .bin token file loom trains on")
    t.add_argument("--steps", type=int, default=50)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--seq-len", type=int, default=1024)
    t.add_argument("--seed", type=int, default=1337, help="loom's --seed (the sampler's)")
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--lr", type=float, default=6e-4)
    t.add_argument("--min-lr", type=float, default=6e-5)
    t.add_argument("--warmup", type=int, default=0)
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.95)
    t.add_argument("--eps", type=float, default=1e-8)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--device", default="cuda")
    t.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    t.add_argument("--skip", type=int, default=5, help="first steps left out of the speed medians (warm-up)")
    t.add_argument("--loom-metrics", help="loom's metrics.jsonl of the same run: compare")
    t.add_argument("--loom-gpu-peak-mib", type=float, default=0, help="loom's peak GPU memory (nvidia-smi), to print")
    t.add_argument("--peak-tflops", type=float, default=0, help="the GPU's dense bf16 peak, for MFU")
    t.add_argument("--tol", type=float, default=5e-2, help="largest allowed per-step |loss difference|")
    t.add_argument("--summary", help="write the run's summary JSON here")
    a = ap.parse_args()
    if a.cmd == "make-data":
        make_data(a)
        return 0
    if a.steps < 1 or a.batch < 1 or a.seq_len < 1:
        ap.error("need --steps, --batch and --seq-len >= 1")
    return train(a)


if __name__ == "__main__":
    sys.exit(main())
