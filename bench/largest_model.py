#!/usr/bin/env python3
"""The largest GPT-2-family model that trains under a fixed RAM budget, without and with the memory
manager (issue 6).

The budget (--mem-budget, default 1G) covers one rank's parameters, gradients and optimizer state (fp32
AdamW: 16 bytes a parameter in RAM), pinned chunks and working buffers alike; activations are outside it.
The family: GPT-2 blocks (LayerNorm, GELU MLP 4x, tied head, 50257-token vocabulary, 1024 positions) at
the GPT-2 widths (256/4 heads .. 1600/25 heads) and any depth.

1. Search. For each width, the deepest model whose run is feasible, asked of `loom plan --memory` (the
   same planning code the run uses): without offload (train.offload=0) the whole state must fit the
   budget; with the memory manager its working set must fit and its files must fit the disk. The
   offloaded search stops at MAX_PARAMS (default 1.5e9: ~50 GB of file traffic a step, about a minute
   a step on the reference machine); the disk is the limit beyond it (reported).
2. Proof. Each winner trains for real (STEPS optimizer steps, batch 1 x 64 tokens, synthetic data), and
   the next model up is shown to be refused without offload. Among shapes within 2% of the most
   parameters the widest is taken. Printed: parameters, tokens/s, the
   process's peak RSS, the bytes moved to and from files per step, and the ratio of the two sizes.

Usage: bench/largest_model.py [LOOM] [--budget 1G] [--steps 2] [--max-params 1.5e9] [--dir DIR]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("loom", nargs="?", default=os.path.join(os.path.dirname(__file__), "..", "build", "loom"))
ap.add_argument("--budget", default="1G")
ap.add_argument("--steps", type=int, default=2)
ap.add_argument("--max-params", type=float, default=1.5e9)
ap.add_argument("--dir", default=None, help="where the run (and its offload files) go (default: a temp dir)")
a = ap.parse_args()
LOOM = os.path.abspath(a.loom)
WIDTHS = [(256, 4), (384, 6), (512, 8), (640, 10), (768, 12), (1024, 16), (1280, 20), (1600, 25)]
W = a.dir or tempfile.mkdtemp(prefix="loom_largest_")
os.makedirs(W, exist_ok=True)
COMMON = ["--preset", "gpt2-124m", "--batch", "1", "--seq-len", "64", "--mem-budget", a.budget, "--threads", "0"]


def shape(d, h, L):
    return ["--set", f"model.d_model={d}", "--set", f"model.n_head={h}", "--set", f"model.n_kv_head={h}",
            "--set", f"model.d_ff={4 * d}", "--set", f"model.n_layer={L}"]


def params(d, L):
    return 50257 * d + 1024 * d + L * (12 * d * d + 13 * d) + 2 * d


def plan(d, h, L, offload):
    r = subprocess.run([LOOM, "plan", "--memory", "--json"] + COMMON + shape(d, h, L) +
                       ["--set", f"train.offload={int(offload)}", "--set", f"train.offload_dir={W}"],
                       capture_output=True, text=True)
    return json.loads(r.stdout.splitlines()[0]) if r.returncode == 0 else None


def feasible(d, h, L, offload, disk_free):
    p = plan(d, h, L, offload)
    if p is None:
        return False
    if offload:
        return p["offload_file_bytes"] <= 0.9 * disk_free and params(d, L) <= a.max_params
    return p["offload_file_bytes"] == 0


def deepest(d, h, offload, disk_free):
    if not feasible(d, h, 1, offload, disk_free):
        return 0
    lo, hi = 1, 2
    while feasible(d, h, hi, offload, disk_free):
        lo, hi = hi, hi * 2
        if hi > 100000:
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if feasible(d, h, mid, offload, disk_free) else (lo, mid)
    return lo


def train(name, d, h, L, offload):
    out = os.path.join(W, name)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [LOOM, "train"] + COMMON + shape(d, h, L) + [
        "--steps", str(a.steps), "--out", out, "--sample", "0", "--set", "train.progress=0",
        "--set", f"train.offload={int(offload)}", "--set", "train.eval_batches=1", "--set", "train.save_checkpoints=false",
        "--mem-trace", os.path.join(W, name + "-trace.jsonl")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip()[-400:]
    ms = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    steps = [m for m in ms if "loss" in m]
    last = steps[-1]  # the first step pays one-time start-up (page faults, the first file writes)
    return {"tokens_per_sec": last["tokens_per_sec"], "ms": last["ms"], "rss": last["rss_peak_bytes"],
            "state_peak": last["mem_peak_params"] + last["mem_peak_grads"] + last["mem_peak_optim"] +
            last["mem_peak_workspace"], "moved": last.get("offload_read_bytes", 0) + last.get("offload_write_bytes", 0),
            "loss": [m["loss"] for m in steps]}, None


disk_free = shutil.disk_usage(W).free
best = {}
for offload in (False, True):
    cands = []
    for d, h in WIDTHS:
        L = deepest(d, h, offload, disk_free)
        if L:
            cands.append((params(d, L), d, h, L))
            print(f"  {'offloaded' if offload else 'in RAM   '} width {d:5d}: deepest {L:4d} layers = "
                  f"{params(d, L) / 1e6:8.1f}M parameters", flush=True)
    top = max(cands)[0]  # the most parameters; within 2% of it, the widest shape (fewer, wider layers)
    best[offload] = max((c for c in cands if c[0] >= 0.98 * top), key=lambda c: c[1])
(n0, d0, h0, L0), (n1, d1, h1, L1) = best[False], best[True]
print(f"\nbudget {a.budget} for parameters, gradients and AdamW state; disk free {disk_free / 2**30:.0f} GiB; "
      f"offloaded search capped at {a.max_params / 1e9:.2f}B parameters")
r0, e0 = train("in-ram", d0, h0, L0, False)
r1, e1 = train("offloaded", d1, h1, L1, True)
_, up = train("in-ram-next", d0, h0, L0 + 1, False)
ok = r0 is not None and r1 is not None
print("| run | model | parameters | tokens/s | ms/step | peak RSS MiB | state+working MiB | file bytes/step |")
print("|---|---|---|---|---|---|---|---|")
for name, (n, d, h, L), r, e in (("without offload", best[False], r0, e0), ("memory manager", best[True], r1, e1)):
    if r is None:
        print(f"| {name} | d={d} L={L} | {n / 1e6:.1f}M | FAILED: {e} |")
        continue
    print(f"| {name} | d={d} h={h} L={L} | {n / 1e6:.1f}M | {r['tokens_per_sec']:.1f} | {r['ms']:.0f} | "
          f"{r['rss'] / 2**20:.0f} | {r['state_peak'] / 2**20:.0f} | {r['moved'] / 1e9:.2f} GB |")
print(f"\nnext size up without offload (L={L0 + 1}): {'refused: ' + up if up else 'TRAINED (the search was wrong)'}")
ratio = n1 / n0
print(f"ratio of parameters, memory manager / without offload: {ratio:.1f}x (bar: 15x)")
if a.dir is None:
    shutil.rmtree(W, ignore_errors=True)
sys.exit(0 if ok and ratio >= 15 and up else 1)
