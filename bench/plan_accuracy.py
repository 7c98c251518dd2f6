#!/usr/bin/env python3
"""How close `loom plan --time` comes to measured runs (issue 18): predicted and measured median ms/step, layout by
layout, on this machine.

Each layout trains the same model and global batch (gpt2-l6, 8 x 64 tokens x 4 micro-batches unless told) for
--steps steps; its measured ms/step is the median over the steps after the first (rank 0's metrics). The prediction
is `loom plan --time --json` with exactly the run's arguments, from the cluster description --cluster (measured by
`loom bench cluster` beforehand: the planner takes no trial run). Rounds alternate the layouts, so drift of the
machine spreads over all of them; the median over rounds is kept.

Usage: bench/plan_accuracy.py --cluster cluster.json [--loom build/loom] [--preset gpt2-l6] [--batch 8]
                              [--seq-len 64] [--accum 4] [--steps 4] [--rounds 1] [--ranks 4] [--only NAME,...]
Prints a table (layout, ranks, predicted, measured, error) and the largest and median absolute error; --json F
writes the rows.
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
ap.add_argument("--cluster", required=True)
ap.add_argument("--preset", default="gpt2-l6")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--seq-len", type=int, default=64)
ap.add_argument("--accum", type=int, default=4)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--rounds", type=int, default=1)
ap.add_argument("--ranks", type=int, default=4)
ap.add_argument("--only", default="")
ap.add_argument("--json", default="")
a = ap.parse_args()

T1, T2 = ["--threads", "1"], ["--threads", "2"]
ZERO = lambda z: ["--zero", str(z)]
layouts = [
    ("1 rank x 2 threads", 1, T2),
    ("1 rank x 1 thread", 1, T1),
    ("1 rank bf16", 1, T2 + ["--precision", "bf16"]),
    ("1 rank recompute full", 1, T2 + ["--recompute", "full"]),
    ("1 rank recompute attn", 1, T2 + ["--recompute", "attn"]),
    ("1 rank offload (files)", 1, T2 + ["--mem-budget", "330M", "--set", "train.offload=1"]),
    ("dp=2 ZeRO-0", 2, T1 + ["--mesh", "dp=2"] + ZERO(0)),
    ("dp=2 ZeRO-1", 2, T1 + ["--mesh", "dp=2"] + ZERO(1)),
    ("dp=2 ZeRO-2", 2, T1 + ["--mesh", "dp=2"] + ZERO(2)),
    ("dp=2 ZeRO-3", 2, T1 + ["--mesh", "dp=2"] + ZERO(3)),
    ("tp=2", 2, T1 + ["--mesh", "tp=2"]),
    ("tp=2 Megatron-SP", 2, T1 + ["--mesh", "tp=2", "--set", "train.tp_seq_parallel=1"]),
    ("sp=2", 2, T1 + ["--mesh", "sp=2"]),
    ("pp=2 1F1B", 2, T1 + ["--mesh", "pp=2"]),
    ("pp=2 interleaved", 2, T1 + ["--mesh", "pp=2", "--set", "train.pp_schedule=interleaved"]),
    ("dp=2 x tp=2", 4, T1 + ["--mesh", "dp=2,tp=2"] + ZERO(1)),
    ("tp=2 x pp=2", 4, T1 + ["--mesh", "tp=2,pp=2"]),
    ("dp=2 x pp=2", 4, T1 + ["--mesh", "dp=2,pp=2"] + ZERO(1)),
    ("dp=4 ZeRO-1", 4, T1 + ["--mesh", "dp=4"] + ZERO(1)),
]
layouts = [l for l in layouts if l[1] <= a.ranks and (not a.only or l[0] in a.only.split(","))]
common = ["--preset", a.preset, "--batch", str(a.batch), "--seq-len", str(a.seq_len), "--grad-accum", str(a.accum),
          "--data", "synthetic"]
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
work = tempfile.mkdtemp(prefix="loom_plan_acc_")
predicted, measured = {}, {name: [] for name, *_ in layouts}
try:
    for name, n, extra in layouts:
        r = subprocess.run([a.loom, "plan", "--time", "--json", "--cluster", a.cluster, "--world", str(n)] + common + extra,
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(f"{name}: plan failed: {r.stderr.strip()[-500:]}")
            continue
        predicted[name] = json.loads(r.stdout.strip().splitlines()[-1])
    for rnd in range(a.rounds):
        for name, n, extra in layouts:
            out = os.path.join(work, "run")
            shutil.rmtree(out, ignore_errors=True)
            cmd = ([] if n == 1 else ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(n)]) + \
                [a.loom, "-q", "train"] + common + extra + \
                ["--steps", str(a.steps), "--set", "train.progress=0", "--set", "train.sample_tokens=0",
                 "--set", "train.save_checkpoints=0", "--set", "train.eval_batches=1", "--out", out]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{name}: run failed\n{r.stderr[-1500:]}")
                continue
            ms = [json.loads(l)["ms"] for l in open(os.path.join(out, "metrics.jsonl")) if '"ms"' in l]
            measured[name].append(statistics.median(ms[1:]))
finally:
    shutil.rmtree(work, ignore_errors=True)

rows = []
print(f"{'layout':26} {'ranks':>5} {'predicted':>10} {'measured':>10} {'error':>7}  dominant (predicted)")
for name, n, extra in layouts:
    if name not in predicted or not measured[name]:
        continue
    p, m = predicted[name]["step_ms"], statistics.median(measured[name])
    err = (p - m) / m
    rows.append({"layout": name, "ranks": n, "predicted_ms": p, "measured_ms": m, "error": err,
                 "dominant": predicted[name]["dominant"]})
    print(f"{name:26} {n:5d} {p:10.1f} {m:10.1f} {100 * err:+6.1f}%  {predicted[name]['dominant']}")
if rows:
    errs = sorted(abs(r["error"]) for r in rows)
    within = sum(e <= 0.10 for e in errs)
    print(f"{len(rows)} layouts: median |error| {100 * statistics.median(errs):.1f}%, largest {100 * errs[-1]:.1f}%, "
          f"{within} within 10%")
if a.json:
    json.dump(rows, open(a.json, "w"), indent=1)
