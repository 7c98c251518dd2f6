#!/usr/bin/env python3
"""Throughput and memory per rank of every parallel layout on one model (issue 5; the planner calibrates on it).

Each layout trains the same model, global micro-batch and micro-batches per step, side by side, alternating
over ROUNDS rounds on this machine; per layout: median ms/step and tokens/s over the steps after the first,
MFU against the machine peak loom measured, and the largest per-rank peak of parameters, gradients, optimizer
state and activations (MiB), from the metrics of rank 0 (which holds every rank's memory).

Usage: bench/bench_layouts.py [--loom build/loom] [--preset gpt2-l6] [--batch 8] [--seq-len 64] [--accum 4]
                              [--steps 6] [--rounds 2] [--ranks 2]
With --ranks 2 (this machine's cores) the layouts are 1 rank x 2 threads and, at 1 thread per rank,
dp=2 (ZeRO-1), tp=2, sp=2, pp=2 (1F1B) and pp=2 (interleaved); --ranks 4 adds the 2-axis layouts at 4 ranks
(oversubscribed on 2 cores: their times measure the schedule, not the machine).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--loom", default="build/loom")
ap.add_argument("--preset", default="gpt2-l6")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--seq-len", type=int, default=64)
ap.add_argument("--accum", type=int, default=4)
ap.add_argument("--steps", type=int, default=6)
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--ranks", type=int, default=2)
a = ap.parse_args()

env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
layouts = [("1 rank x 2 threads", 1, None, [], 2)]
layouts += [(f"dp=2 ZeRO-1", 2, "dp=2", ["--zero", "1"], 1), ("tp=2", 2, "tp=2", [], 1), ("sp=2", 2, "sp=2", [], 1),
            ("pp=2 1F1B", 2, "pp=2", [], 1),
            ("pp=2 interleaved", 2, "pp=2", ["--set", "train.pp_schedule=interleaved"], 1)]
if a.ranks >= 4:
    layouts += [("dp=2 x tp=2", 4, "dp=2,tp=2", ["--zero", "1"], 1), ("tp=2 x pp=2", 4, "tp=2,pp=2", [], 1),
                ("dp=2 x pp=2", 4, "dp=2,pp=2", ["--zero", "1"], 1), ("tp=2 x sp=2", 4, "tp=2,sp=2", [], 1)]
work = tempfile.mkdtemp(prefix="loom_layouts_")
rows = {name: [] for name, *_ in layouts}
mem = {}
mfu = {name: [] for name, *_ in layouts}
try:
    for rnd in range(a.rounds):
        for name, n, mesh, extra, threads in layouts:
            out = os.path.join(work, "run")
            shutil.rmtree(out, ignore_errors=True)
            cmd = ([] if n == 1 else ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(n)]) + [
                a.loom, "-q", "train", "--preset", a.preset, "--batch", str(a.batch), "--seq-len", str(a.seq_len),
                "--grad-accum", str(a.accum), "--steps", str(a.steps), "--threads", str(threads), "--data",
                "synthetic", "--set", "train.progress=0", "--set", "train.sample_tokens=0", "--out", out] + \
                (["--mesh", mesh] if mesh else []) + extra
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{name}: failed\n{r.stderr[-1500:]}")
                continue
            lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
            steps = [l for l in lines if "tokens_per_sec" in l][1:]
            rows[name] += [(l["ms"], l["tokens_per_sec"]) for l in steps]
            mfu[name] += [l["mfu"] for l in steps]
            per_rank = steps[-1]["mem_rank_peak_bytes"]
            mem[name] = [max(rk[c] for rk in per_rank) / 2**20 for c in range(4)]
        print(f"round {rnd + 1}/{a.rounds} done", flush=True)
finally:
    shutil.rmtree(work, ignore_errors=True)

tok = a.batch * a.seq_len * a.accum
print(f"\n{a.preset}: global batch {a.batch} x {a.seq_len} x {a.accum} micro-batches = {tok} tokens/step, fp32 AdamW; "
      f"medians over {a.rounds} round(s)")
print(f"{'layout':<22} {'ranks':>5} {'ms/step':>9} {'tokens/s':>9} {'MFU':>6}   per-rank peak MiB: params grads optim acts")
for name, n, *_ in layouts:
    if not rows[name]:
        print(f"{name:<22} {n:>5}   failed")
        continue
    ms = statistics.median(r[0] for r in rows[name])
    ts = statistics.median(r[1] for r in rows[name])
    m = mem[name]
    print(f"{name:<22} {n:>5} {ms:>9.1f} {ts:>9.1f} {100 * statistics.median(mfu[name]):>5.1f}%   "
          f"{m[0]:>8.1f} {m[1]:>6.1f} {m[2]:>6.1f} {m[3]:>6.1f}")
