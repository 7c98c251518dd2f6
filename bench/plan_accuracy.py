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
                              [--choice]
Prints a table (layout, ranks, predicted, measured, error) and the largest and median absolute error; --json F
writes the rows. --choice: instead, for three cases (model, global batch, world) `loom plan --auto`'s top 5
layouts are all run, and the planner's first choice is compared with the fastest of them as measured.
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
ap.add_argument("--choice", action="store_true")
a = ap.parse_args()
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def measure(n, args, out):
    """median ms/step over the steps after the first, or None"""
    shutil.rmtree(out, ignore_errors=True)
    cmd = ([] if n == 1 else ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(n)]) + \
        [a.loom, "-q", "train"] + args + \
        ["--steps", str(a.steps), "--set", "train.progress=0", "--set", "train.sample_tokens=0",
         "--set", "train.save_checkpoints=0", "--set", "train.eval_batches=1", "--out", out]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"run failed: {' '.join(args)}\n{r.stderr[-1000:]}")
        return None
    ms = [json.loads(l)["ms"] for l in open(os.path.join(out, "metrics.jsonl")) if '"ms"' in l]
    return statistics.median(ms[1:])


if a.choice:
    cases = [("gpt2-l6", 32, 64, 2), ("gpt2-l6", 32, 64, 4), ("llama-l6", 16, 128, 2)]
    work = tempfile.mkdtemp(prefix="loom_plan_choice_")
    rows = []
    try:
        for preset, global_batch, T, n in cases:
            base = ["--preset", preset, "--batch", str(global_batch), "--seq-len", str(T), "--data", "synthetic"]
            r = subprocess.run([a.loom, "plan", "--auto", "--json", "--top", "5", "--cluster", a.cluster, "--world", str(n)]
                               + base, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                print(f"{preset} on {n}: plan failed: {r.stderr[-500:]}")
                continue
            plans = [json.loads(l) for l in r.stdout.strip().splitlines()]
            meas = {}
            for rnd in range(a.rounds):
                for p in plans:
                    ms = measure(n, ["--preset", preset, "--seq-len", str(T), "--data", "synthetic"] + p["args"].split(),
                                 os.path.join(work, "run"))
                    if ms is not None:
                        meas.setdefault(p["rank"], []).append(ms)
            print(f"\n{preset}, global batch {global_batch} x {T}, {n} ranks (search: {plans[0]['evaluated']} layouts, "
                  f"{plans[0]['search_seconds']:.2f} s):")
            for p in plans:
                m = statistics.median(meas[p["rank"]]) if p["rank"] in meas else float("nan")
                print(f"  {p['rank']}. predicted {p['step_ms']:8.1f} measured {m:8.1f} ms  {p['args']}")
            done = {k: statistics.median(v) for k, v in meas.items()}
            if 1 in done:
                best = min(done.values())
                gap = done[1] / best - 1
                print(f"  first choice measured {done[1]:.1f} ms; fastest of the top 5 measured {best:.1f} ms: "
                      f"{'the first choice' if gap <= 0 else f'{100 * gap:.1f}% slower'}")
                rows.append({"case": f"{preset} {global_batch}x{T} world {n}", "first_ms": done[1], "best_ms": best,
                             "gap": gap})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    raise SystemExit(0)

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
            ms = measure(n, common + extra, os.path.join(work, "run"))
            if ms is not None:
                measured[name].append(ms)
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
