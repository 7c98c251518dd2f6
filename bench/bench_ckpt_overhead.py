#!/usr/bin/env python3
"""What cheap checkpoints cost (issue 17): training throughput with in-memory snapshots every 10 steps and an
asynchronous disk checkpoint every 100, side by side with checkpoints off, in the same session.

    /usr/bin/python3 bench/bench_ckpt_overhead.py [--preset gpt2-124m] [--ranks 2] [--steps 210]
                                                  [--batch 4] [--seq-len 64] [--rounds 3] [--threads 1]

Each round trains both configurations (alternating which goes first) under `loom launch -n RANKS`; a run's
throughput is its tokens from the end of step FROM (default 30) to the end of its last step over the wall
time between them (metrics.jsonl's "time": snapshot and checkpoint pauses between steps count, unlike the
step's "ms"). From step 30 on is the steady state: the first two snapshots allocate their shared memory
(once per run; the later ones reuse it), which the table reports apart as "first two snapshots". The table
gives each configuration's median tokens/s over the rounds (and each round's), the overhead 1 - with/without
(the bar is <= 3%), and two measures taken within each run, free of the speed drift between runs that the
A/B comparison carries (on a shared VM, runs of one configuration differ by several percent): the pauses
(the share of the run's wall time spent between its steps) and the in-run overhead (the pauses plus what the
steps checkpoint work can touch, the one after each snapshot and those while a disk checkpoint's background
copy runs, took beyond the run's median of its other steps; measured in the same windows without
checkpoints, it gives the estimate's own noise).
Synthetic tokens; snapshots in /dev/shm; the disk checkpoints in a temporary directory.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--loom", default=os.path.join(HERE, "..", "build", "loom"))
ap.add_argument("--preset", default="gpt2-124m")
ap.add_argument("--ranks", type=int, default=2)
ap.add_argument("--steps", type=int, default=210)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq-len", type=int, default=64)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--zero", type=int, default=1)
ap.add_argument("--from-step", type=int, default=30)
a = ap.parse_args()
LOOM = os.path.abspath(a.loom)
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
W = tempfile.mkdtemp(prefix="loom_ckpt_overhead_")
CONFIGS = {
    "off": ["--set", "train.save_checkpoints=false"],
    "snap10+async100": ["--set", "train.snapshot_interval=10", "--ckpt-interval", "100", "--set", "train.ckpt_async=true",
                        "--set", "train.snapshot_dir=/dev/shm/loom-bench-overhead-%d" % os.getpid()],
}


def run(name, rnd):
    out = os.path.join(W, "%s-%d" % (name, rnd))
    cmd = [LOOM, "-v", "launch", "-n", str(a.ranks), "--", "train", "--preset", a.preset, "--data", "synthetic",
           "--steps", str(a.steps), "--batch", str(a.batch), "--seq-len", str(a.seq_len), "--threads", str(a.threads),
           "--zero", str(a.zero), "--peak-gflops", "100", "--out", out, "--set", "train.progress=0",
           "--set", "train.sample_tokens=0", "--set", "train.log_interval=1000"] + CONFIGS[name]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit("%s failed:\n%s" % (name, r.stderr[-3000:]))
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"ms"' in l]
    t = {l["step"]: l["time"] for l in lines}
    ms_of = {l["step"]: l["ms"] for l in lines}
    tokens = a.batch * a.seq_len * (a.steps - a.from_step)
    tps = tokens / (t[a.steps] - t[a.from_step])
    ms = statistics.median(l["ms"] for l in lines[10:])
    # the pauses after steps 10 and 20 beyond their neighbours' step time: the first two snapshots
    first = sum(t[s + 1] - t[s] - ms_of[s + 1] / 1e3 for s in (10, 20))
    # within this run: the share of the wall time spent between steps (snapshot and checkpoint pauses), free of
    # the step-time noise between runs that the A/B comparison carries
    paused = sum(t[s] - t[s - 1] - ms_of[s] / 1e3 for s in range(a.from_step + 1, a.steps + 1))
    wall = t[a.steps] - t[a.from_step]
    pause_share = paused / wall
    # within this run, free of the speed drift between runs: the pauses plus what the steps that checkpoint
    # work can touch (the step after each snapshot, the steps while a disk checkpoint's background copy runs,
    # up to the next snapshot) took beyond this run's median of the other steps
    window = set()
    for s in range(a.from_step + 1, a.steps + 1):
        if s % 10 == 0 and s < a.steps:
            window.add(s + 1)
        if s % 100 == 0:
            window.update(range(s + 1, min(s + 11, a.steps + 1)))
    steps = range(a.from_step + 1, a.steps + 1)
    calm = statistics.median(ms_of[s] for s in steps if s not in window)
    extra = sum(ms_of[s] - calm for s in steps if s in window) / 1e3
    inrun = (paused + extra) / wall
    shutil.rmtree(out, ignore_errors=True)
    return tps, ms, first, pause_share, inrun


results = {k: [] for k in CONFIGS}
for rnd in range(a.rounds):
    order = list(CONFIGS) if rnd % 2 == 0 else list(reversed(CONFIGS))
    for name in order:
        results[name].append(run(name, rnd))
    print("round %d/%d done" % (rnd + 1, a.rounds), flush=True)
shutil.rmtree(W, ignore_errors=True)
base = statistics.median(r[0] for r in results["off"])
print("%s, %d ranks x %d thread(s), B%d T%d, ZeRO-%d, %d steps (throughput over steps %d-%d), %d rounds, medians" %
      (a.preset, a.ranks, a.threads, a.batch, a.seq_len, a.zero, a.steps, a.from_step + 1, a.steps, a.rounds))
print("%-18s %12s %12s %10s %10s %10s %24s  %s" % ("checkpoints", "tokens/s", "step ms", "overhead", "pauses",
                                                 "in-run", "first two snapshots (s)", "tokens/s by round"))
for name in CONFIGS:
    tps = statistics.median(r[0] for r in results[name])
    ms = statistics.median(r[1] for r in results[name])
    first = statistics.median(r[2] for r in results[name])
    pauses = statistics.median(r[3] for r in results[name])
    inrun = statistics.median(r[4] for r in results[name])
    print("%-18s %12.1f %12.1f %9.2f%% %9.2f%% %9.2f%% %24.2f  %s" % (
        name, tps, ms, 100 * (1 - tps / base), 100 * pauses, 100 * inrun, first,
        " ".join("%.1f" % r[0] for r in results[name])))
offs = [r[0] for r in results["off"]]
print("overhead: 1 - tokens/s over the run without checkpoints (bar <= 3%%); the runs without checkpoints alone "
      "spread by %.1f%% (max/min - 1): the machine's drift between runs, which this A/B figure carries" %
      (100 * (max(offs) / min(offs) - 1)))
print("pauses: the share of a run's own wall time between steps; in-run: the pauses plus what the steps that "
      "checkpoint work can touch took beyond the run's median of its other steps (without checkpoints, the same "
      "windows: the estimate's own noise); both free of the drift between runs")
