#!/usr/bin/env python3
"""The long chaos benchmark (issue 17): a supervised training run while faults strike at random.

    /usr/bin/python3 bench/chaos.py [--minutes 10] [--ranks 4] [--mean-interval 60] [--timeout 3]
                                    [--seed 1] [--preset demo] [--set KEY=VALUE ...] [--keep DIR]

1. Calibrates the step time and sizes the run to --minutes of uninterrupted training.
2. Trains it once uninterrupted (`loom launch -n R`): the reference.
3. Trains it again under the supervisor (`loom launch -n R --max-restarts 1000 --heartbeat-timeout T`) while
   faults arrive as a Poisson process (mean --mean-interval seconds): kill -9 of a random rank, SIGSTOP of a
   random rank (a hang), or a kill -9 of a rank while it writes a checkpoint file (a snapshot or the
   background disk copy: the first temporary file seen after the fault's moment; if none appears within
   30 s, a plain kill). Faults wait while the job restarts.
4. Prints every fault with its detection time (the supervisor's failure event minus the moment of the
   fault), the steps lost, the ETTR (loom events), whether any process was left behind, and whether the
   final parameters and optimizer state are bit-identical to the reference's; the bars: ETTR >= 90%,
   dead rank detected <= 5 s, hung rank <= timeout + 5 s, nothing left, bit-identical.

Snapshots every 10 steps, asynchronous disk checkpoints every 100 (two kept). Needs mpirun.
"""
import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from loom_run import final_state, rank_pids  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--loom", default=os.path.join(HERE, "..", "build", "loom"))
ap.add_argument("--minutes", type=float, default=10)
ap.add_argument("--ranks", type=int, default=4)
ap.add_argument("--mean-interval", type=float, default=60)
ap.add_argument("--timeout", type=float, default=3)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--preset", default="demo")
ap.add_argument("--set", action="append", default=[], dest="sets")
ap.add_argument("--keep", help="keep the runs in this directory")
a = ap.parse_args()
LOOM = os.path.abspath(a.loom)
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
ENV.pop("LOOM_TEST_FAULT", None)
W = a.keep or tempfile.mkdtemp(prefix="loom_chaos_")
os.makedirs(W, exist_ok=True)
data = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")
data = os.path.abspath(data) if os.path.exists(data) else "synthetic"
SNAP = "/dev/shm/loom-chaos-%d" % os.getpid()


def args(out, steps):
    sets = ["model.n_layer=6", "model.d_model=256", "model.n_head=8", "model.n_kv_head=8", "model.d_ff=1024"] + a.sets
    cmd = ["train", "--preset", a.preset, "--data", data, "--steps", str(steps), "--batch", "8", "--seq-len", "128",
           "--threads", "1", "--zero", "2", "--peak-gflops", "100", "--out", out, "--ckpt-interval", "100",
           "--set", "train.snapshot_interval=10", "--set", "train.ckpt_async=true", "--set", "train.keep_checkpoints=2",
           "--set", "train.snapshot_dir=" + SNAP, "--set", "train.progress=0", "--set", "train.sample_tokens=0",
           "--set", "train.log_interval=1000"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def left_behind(out):
    n = 0
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and out.encode() in open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0"):
                n += 1
        except OSError:
            pass
    return n


def step_ms(out):
    ms = [json.loads(l)["ms"] for l in open(os.path.join(out, "metrics.jsonl")) if '"ms"' in l]
    return statistics.median(ms[3:]) if len(ms) > 3 else None


# 1. calibration
cal = os.path.join(W, "calibrate")
r = subprocess.run([LOOM, "launch", "-n", str(a.ranks), "--"] + args(cal, 20) + ["--set", "train.save_checkpoints=false",
                    "--set", "train.snapshot_interval=0", "--set", "train.ckpt_async=false"], env=ENV,
                   capture_output=True, text=True)
if r.returncode:
    sys.exit("calibration failed:\n" + r.stderr[-3000:])
ms = step_ms(cal)
steps = max(100, int(a.minutes * 60e3 / ms))
print("step %.0f ms on %d ranks: %d steps for %.1f minutes" % (ms, a.ranks, steps, a.minutes), flush=True)

# 2. the reference
ref = os.path.join(W, "reference")
t0 = time.time()
r = subprocess.run([LOOM, "launch", "-n", str(a.ranks), "--"] + args(ref, steps), env=ENV, capture_output=True, text=True)
if r.returncode:
    sys.exit("reference run failed:\n" + r.stderr[-3000:])
print("reference: %.0f s" % (time.time() - t0), flush=True)
shutil.rmtree(SNAP, ignore_errors=True)

# 3. under faults
out = os.path.join(W, "chaos")
log = open(os.path.join(W, "chaos.log"), "w")
sup = subprocess.Popen([LOOM, "launch", "-n", str(a.ranks), "--max-restarts", "1000", "--heartbeat-timeout",
                        "%gs" % a.timeout, "--restart-backoff", "0.2s", "--"] + args(out, steps), env=ENV, stdout=log,
                       stderr=subprocess.STDOUT)
rng = random.Random(a.seed)
faults = []  # (time, kind, rank)
done = threading.Event()


def writer_now(deadline):
    """a rank writing a checkpoint file right now: (rank, pid), watching until the deadline"""
    while time.time() < deadline and not done.is_set():
        live = {p: r for r, p in rank_pids(out).items()}
        for d in (SNAP, out):
            for dp, _, fs in os.walk(d):
                for f in fs:
                    if ".tmp." in f:
                        pid = int(f.rsplit(".", 1)[1])
                        if pid in live:
                            return live[pid], pid
        time.sleep(0.001)
    return None


def inject():
    while not done.is_set():
        wait = rng.expovariate(1.0 / a.mean_interval)
        if done.wait(wait):
            return
        pids = rank_pids(out)
        while len(pids) < a.ranks and not done.is_set():  # restarting: the fault waits
            time.sleep(0.1)
            pids = rank_pids(out)
        if done.is_set():
            return
        kind = rng.choice(["kill", "hang", "kill_during_checkpoint"])
        try:
            if kind == "kill_during_checkpoint":
                w = writer_now(time.time() + 30)
                if w is None:
                    kind = "kill"
                else:
                    rank, pid = w
            if kind != "kill_during_checkpoint":
                rank = rng.randrange(a.ranks)
                pid = rank_pids(out)[rank]
            os.kill(pid, signal.SIGSTOP if kind == "hang" else signal.SIGKILL)
            faults.append((time.time(), kind, rank))
            print("  %6.1f s  %s of rank %d" % (time.time() - t_start, kind, rank), flush=True)
        except (KeyError, ProcessLookupError):
            pass  # it ended (or restarted) meanwhile


t_start = time.time()
th = threading.Thread(target=inject, daemon=True)
th.start()
try:
    rc = sup.wait(timeout=max(3600, a.minutes * 60 * 4))
except subprocess.TimeoutExpired:
    rc = None
done.set()
th.join()
if rc is None:
    sup.terminate()
    sup.wait()
log.close()
wall = time.time() - t_start
events = [json.loads(l) for l in open(os.path.join(out, "events.jsonl"))]
fails = [e for e in events if e["event"] == "failure"]
summary = json.loads(subprocess.run([LOOM, "events", out, "--json"], capture_output=True, text=True).stdout)

print("\nfault                      rank  detected as        in (s)   left")
det_ok = True
for (t, kind, rank) in faults:  # the first failure event after the fault
    f = next((e for e in fails if e["time"] >= t - 0.5), None)
    if f is None:
        print("%-26s %4d  (not detected)" % (kind, rank))
        det_ok = False
        continue
    fails.remove(f)
    d = f["time"] - t
    limit = a.timeout + 5 if kind == "hang" else 5
    det_ok &= d <= limit
    print("%-26s %4d  %-8s rank %-4d %7.2f %6d" % (kind, rank, f["kind"], f["rank"], d, f["left"]))
left = left_behind(out)
same = rc == 0 and final_state(ref) == final_state(out)
print("\n%d faults in %.0f s (one per %.0f s); supervisor exit %s; %d attempt(s); steps trained again %d" %
      (len(faults), wall, wall / max(1, len(faults)), rc, summary["attempts"], summary["steps_lost"]))
print("ETTR %.1f%% (%.0f s of steps in the final model over %.0f s)" % (100 * summary["ettr"], summary["productive_s"],
                                                                        summary["wall_s"]))
print("bars: ETTR >= 90%%: %s; detection: %s; processes left: %d; final state bit-identical: %s" %
      ("yes" if summary["ettr"] >= 0.9 else "NO", "yes" if det_ok else "NO", left, "yes" if same else "NO"))
shutil.rmtree(SNAP, ignore_errors=True)
if not a.keep:
    shutil.rmtree(W, ignore_errors=True)
