#!/usr/bin/env python3
"""Resilience (issue 17), against an uninterrupted run of the same layout.

  chaos     4 ranks under `loom launch --max-restarts`: a kill -9 of a random rank, a kill of a rank in the
            middle of writing an asynchronous checkpoint (its copies slowed by the LOOM_TEST_FAULT hook so the
            moment can be hit), a SIGSTOP of a rank (a hang), and a corrupted in-memory snapshot followed by
            a kill (the restart must skip the damaged one). The run must reach its last step with the final
            parameters and optimizer state bit-identical to an uninterrupted 4-rank run's; each dead rank
            detected within 5 s of the kill, the hung one within the heartbeat timeout + 5 s; no process
            left; the snapshots removed at the end; `loom events` counts the four failures.
  bad_steps 2 ranks: a NaN gradient at step 15 is skipped and a loss spike at step 45 rolled back (to the
            snapshot of step 40, the data of steps 41-45 skipped); both in events.jsonl; the final state is
            bit-identical to a run told to skip steps 15 and 41-45 (train.skip_steps).
  give_up   the failures the supervisor cannot recover from end with one clear message, a non-zero exit
            and the last good checkpoint intact: the maximum of restarts, a configuration error (exit 2,
            no restart), no intact checkpoint (exit 3, no restart).
  stuck     a deadlocked rank (LOOM_TEST_FAULT=hang) found within the heartbeat timeout and blamed.
  slurm     inside a Slurm allocation (a private one-node cluster, tests/slurm_local.sh; exit 77 without
            Slurm): `salloc loom launch --mpirun srun`, a kill -9 of a rank under srun detected, a new srun
            resumes, and the final state is bit-identical to an uninterrupted run's.

Usage: test_resilience.py LOOM CHECK
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loom_run import final_state, procs_of, rank_pids, wait_for  # noqa: E402

LOOM = os.path.abspath(sys.argv[1])
CHECK = sys.argv[2] if len(sys.argv) > 2 else "chaos"
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
ENV.pop("LOOM_TEST_FAULT", None)
# real text where there is some (../shared's corpus, Debian's fortunes): a loss spike stands out from it
DATA = "synthetic"
for cand in ("/usr/share/games/fortunes",
             os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "tinyshakespeare.txt")):
    if os.path.exists(cand):
        DATA = os.path.abspath(cand)
W = tempfile.mkdtemp(prefix="loom_resilience_")
failed = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failed.append(what)


def base_args(out, steps, extra=()):
    return ["train", "--preset", "demo", "--data", DATA, "--steps", str(steps), "--batch", "8", "--seq-len", "64",
            "--threads", "1", "--peak-gflops", "100", "--set", "train.progress=0", "--set", "train.sample_tokens=0",
            "--set", "train.log_interval=100", "--out", out] + list(extra)


def events(out):
    p = os.path.join(out, "events.jsonl")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []


def metrics_steps(out):
    p = os.path.join(out, "metrics.jsonl")
    n = 0
    if os.path.exists(p):
        for l in open(p):
            if '"ms"' in l:
                n += 1
    return n


def chaos():
    rng = random.Random(17)
    steps = 300
    snap = "/dev/shm/loom-test-chaos-%d" % os.getpid()
    extra = ["--zero", "2", "--set", "train.snapshot_interval=5", "--ckpt-interval", "20", "--set", "train.ckpt_async=true",
             "--set", "train.keep_checkpoints=2", "--set", "train.snapshot_dir=" + snap]
    ref = os.path.join(W, "ref")
    r = subprocess.run([LOOM, "launch", "-n", "4", "--"] + base_args(ref, steps, extra), env=ENV, capture_output=True,
                       text=True)
    check(r.returncode == 0, "uninterrupted 4-rank run (%d steps)" % steps)
    if r.returncode:
        print(r.stdout[-2000:], r.stderr[-3000:])
        return
    shutil.rmtree(snap, ignore_errors=True)
    out = os.path.join(W, "chaos")
    slow_rank = rng.randrange(4)
    timeout = 4.0
    env = dict(ENV, LOOM_TEST_FAULT="slowcopy@%d:120" % slow_rank)
    log = open(os.path.join(W, "chaos.log"), "w")
    sup = subprocess.Popen([LOOM, "launch", "-n", "4", "--max-restarts", "8", "--heartbeat-timeout", "%gs" % timeout,
                            "--restart-backoff", "0.5s", "--"] + base_args(out, steps, extra),
                           env=env, stdout=log, stderr=subprocess.STDOUT)
    injected = []  # (kind, rank, time)

    def progressed(n_resumed, more):
        """the attempt after `n_resumed` resumes has trained `more` steps"""
        def ok():
            if len([e for e in events(out) if e["event"] == "resumed"]) < n_resumed:
                return False
            pids = rank_pids(out)
            return len(pids) == 4 and metrics_steps(out) >= base + more
        base = metrics_steps(out)
        return ok

    try:
        # 1: kill -9 of a random rank, some steps in
        wait_for(progressed(0, 60), 120, "the first steps")
        rank = rng.randrange(4)
        os.kill(rank_pids(out)[rank], signal.SIGKILL)
        injected.append(("kill", rank, time.time()))
        # 2: a kill in the middle of an asynchronous checkpoint write (a temporary file of the slowed rank)
        wait_for(progressed(1, 10), 120, "the restart after the kill")
        shards = os.path.join(out, "shards")

        def writer():  # a temporary of the slowed rank's running process (not one a killed writer left)
            live = rank_pids(out).get(slow_rank)
            for dp, _, fs in os.walk(shards):
                for f in fs:
                    if f.startswith("rank-%05d.bin.tmp." % slow_rank) and f.endswith(".%d" % (live or -1)):
                        return live
            return None
        pid = wait_for(writer, 120, "an asynchronous checkpoint write")
        os.kill(pid, signal.SIGKILL)
        injected.append(("kill_during_checkpoint", slow_rank, time.time()))
        # 3: a hang: SIGSTOP of a random rank
        wait_for(progressed(2, 10), 120, "the restart after the kill during a checkpoint")
        rank = rng.randrange(4)
        os.kill(rank_pids(out)[rank], signal.SIGSTOP)
        injected.append(("hang", rank, time.time()))
        # 4: the newest snapshot damaged, then a kill: the restart must load an older intact checkpoint
        wait_for(progressed(3, 10), 120, "the restart after the hang")
        # every rank stopped while the snapshot is damaged, so no newer one is written in between (a newer intact
        # one written after the kill would be a correct, but untested, choice)
        pids = rank_pids(out)
        for p in pids.values():
            os.kill(p, signal.SIGSTOP)
        man = json.load(open(os.path.join(snap, "checkpoint.json")))
        victim = rng.randrange(4)
        shard = os.path.join(snap, man["dir"], "rank-%05d.bin" % victim)
        with open(shard, "r+b") as f:
            f.seek(os.path.getsize(shard) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0xFF]))
        rank = rng.randrange(4)
        os.kill(pids[rank], signal.SIGKILL)
        for r, p in pids.items():
            if r != rank:
                os.kill(p, signal.SIGCONT)
        injected.append(("corrupt_then_kill", rank, time.time()))
        corrupted_step = man["step"]
        rc = sup.wait(timeout=300)
    except Exception as e:  # a fault that could not be placed: the run is stopped, the test fails
        check(False, "fault injection: %s" % e)
        sup.terminate()  # the supervisor stops the job
        sup.wait()
        rc = -1
        corrupted_step = -1
    log.close()
    print("faults injected:", ", ".join("%s of rank %d" % (k, r) for k, r, _ in injected))
    check(rc == 0, "the supervised run finished (exit %d)" % rc)
    if rc != 0:
        print(open(os.path.join(W, "chaos.log")).read()[-6000:])
    ev = events(out)
    fails = [e for e in ev if e["event"] == "failure"]
    check(len(fails) == len(injected) == 4, "one failure detected per fault (%d failures, %d faults)" %
          (len(fails), len(injected)))
    for (kind, rank, t), f in zip(injected, fails):
        delay = f["time"] - t
        limit = timeout + 5 if kind == "hang" else 5
        check(delay <= limit and f["left"] == 0 and f["rank"] == rank,
              "%s of rank %d: detected as %s of rank %d in %.2f s (limit %g), %d process(es) left" %
              (kind, rank, f["kind"], f["rank"], delay, limit, f["left"]))
    resumed = [e for e in ev if e["event"] == "resumed"]
    if len(resumed) >= 4:
        # the damaged snapshot itself is never loaded; a newer intact one (the stopped ranks had passed the
        # snapshot's barrier) would be a right choice too
        check(resumed[3]["step"] != corrupted_step or resumed[3]["source"] == "disk",
              "after the damaged snapshot of step %d: resumed at step %d from %s" %
              (corrupted_step, resumed[3]["step"], resumed[3]["source"]))
    check(not procs_of(out), "no process of the job left")
    check(not os.path.exists(snap), "the snapshots were removed at the end")
    a, b = final_state(ref), final_state(out)
    check(a == b and len(a) == 4, "final parameters and optimizer state bit-identical to the uninterrupted run's "
          "(%d shards)" % len(a))
    r = subprocess.run([LOOM, "events", out], capture_output=True, text=True)
    print(r.stdout)
    j = json.loads(subprocess.run([LOOM, "events", out, "--json"], capture_output=True, text=True).stdout)
    check(j["finished"] and j["failures"] == 4 and j["final_step"] == steps and 0 < j["ettr"] <= 1,
          "loom events: finished, 4 failures, final step %d, ETTR %.1f%%" % (j["final_step"], 100 * j["ettr"]))
    shutil.rmtree(snap, ignore_errors=True)


def bad_steps():
    extra = ["--zero", "2", "--set", "train.spike_zscore=4", "--set", "train.spike_window=16"]
    steps = 60
    out = os.path.join(W, "faults")
    runs = []
    for name, fault, more in (("faults", None, ["--set", "train.snapshot_interval=5"]),
                              ("skipped", None, ["--set", "train.skip_steps=15,41-45"])):
        o = os.path.join(W, name)
        env = dict(ENV)
        cmd = [LOOM, "launch", "-n", "2", "--"] + base_args(o, steps, extra + more)
        if name == "faults":  # two processes, one fault each: a NaN on rank 1 at 15, a spike on rank 0 at 45
            cmd = ["mpirun", "--bind-to", "none", "-np", "1", "-x", "LOOM_TEST_FAULT=spike@0:45", LOOM] + cmd[5:] + \
                  [":", "-np", "1", "-x", "LOOM_TEST_FAULT=nan@1:15", LOOM] + cmd[5:]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        check(r.returncode == 0, "%s run" % name)
        if r.returncode:
            print(r.stdout[-2000:], r.stderr[-3000:])
            return
        runs.append(o)
    ev = events(out)
    bad = [e for e in ev if e["event"] == "bad_step"]
    spikes = [e for e in ev if e["event"] == "spike"]
    check(len(bad) == 1 and bad[0]["step"] == 15, "the NaN gradient of step 15 skipped (events: %s)" % bad)
    check(len(spikes) == 1 and spikes[0]["step"] == 45 and spikes[0].get("rolled_back_to") == 40,
          "the loss spike of step 45 rolled back to step 40 (events: %s)" % spikes)
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"ms"' in l]
    nan_line = [l for l in lines if l["step"] == 15][0]
    check(nan_line.get("skipped") == 1 and nan_line["grad_norm"] is None, "metrics: step 15 skipped, norm null")
    a, b = final_state(runs[0]), final_state(runs[1])
    check(a == b and len(a) == 2, "final state bit-identical to a run that skipped steps 15 and 41-45")


def stuck():
    """a rank that beats but never leaves step 10 (a deadlock): detected as stuck within the timeout + 5 s,
    the job restarted from the snapshot of step 10, finished"""
    out = os.path.join(W, "stuck")
    env = dict(ENV, LOOM_TEST_FAULT="hang@1:11")
    t0 = time.time()
    r = subprocess.run([LOOM, "launch", "-n", "2", "--max-restarts", "2", "--heartbeat-timeout", "3s",
                        "--restart-backoff", "0.1s", "--"] +
                       base_args(out, 30, ["--set", "train.snapshot_interval=5"]), env=env, capture_output=True, text=True)
    fails = [e for e in events(out) if e["event"] == "failure"]
    check(r.returncode == 0 and len(fails) == 1 and fails[0]["kind"] == "stuck" and fails[0]["rank"] == 1 and
          fails[0]["detect_s"] <= 3 + 5, "deadlocked rank 1: %s in %.1f s" %
          (fails[0] if fails else r.stderr[-500:], time.time() - t0))


def give_up():
    # the maximum of restarts: every attempt fails at step 5 (no checkpoint before it)
    out = os.path.join(W, "max")
    env = dict(ENV, LOOM_TEST_FAULT="step@1:5")
    r = subprocess.run([LOOM, "launch", "-n", "2", "--max-restarts", "1", "--restart-backoff", "0.1s", "--"] +
                       base_args(out, 20), env=env, capture_output=True, text=True)
    last = [e for e in events(out) if e["event"] == "gave_up"]
    check(r.returncode != 0 and "giving up" in r.stderr and "--max-restarts 1 reached" in r.stderr and len(last) == 1,
          "max restarts: exit %d, %s" % (r.returncode, (last[0]["cause"] if last else r.stderr[-300:])))
    check(len([e for e in events(out) if e["event"] == "start"]) == 2, "max restarts: 2 attempts")
    # a configuration error: exit 2 and no restart
    out = os.path.join(W, "config")
    r = subprocess.run([LOOM, "launch", "-n", "2", "--max-restarts", "3", "--"] + base_args(out, 20, ["--batch", "3"]),
                       env=ENV, capture_output=True, text=True)
    starts = [e for e in events(out) if e["event"] == "start"]
    check(r.returncode == 2 and len(starts) == 1 and "configuration error" in r.stderr,
          "configuration error: exit %d after %d attempt(s)" % (r.returncode, len(starts)))
    # no intact checkpoint: a run's only checkpoint damaged, then a supervised resume
    out = os.path.join(W, "damaged")
    r = subprocess.run([LOOM, "launch", "-n", "2", "--"] + base_args(out, 10, ["--zero", "2"]), env=ENV,
                       capture_output=True, text=True)
    shard = os.path.join(out, "shards", "step-00000010", "rank-00001.bin")
    before = open(shard, "rb").read()
    with open(shard, "r+b") as f:
        f.seek(len(before) // 2)
        f.write(bytes([before[len(before) // 2] ^ 0xFF]))
    damaged = open(shard, "rb").read()
    r = subprocess.run([LOOM, "launch", "-n", "2", "--max-restarts", "3", "--"] +
                       base_args(out, 20, ["--zero", "2", "--resume-if-any"]), env=ENV, capture_output=True, text=True)
    starts = [e for e in events(out) if e["event"] == "start"]
    check(r.returncode == 3 and len(starts) == 1 and "no intact checkpoint" in r.stderr,
          "no intact checkpoint: exit %d after %d attempt(s)" % (r.returncode, len(starts)))
    check(open(shard, "rb").read() == damaged, "the damaged checkpoint left as it was")


def slurm():
    """the supervisor inside a Slurm allocation (a private one-node cluster): srun launches the ranks, a kill -9
    of one is detected, the job step ended and the run restarted by a new srun in the same allocation, to a
    final state bit-identical to an uninterrupted run's"""
    here = os.path.dirname(os.path.abspath(__file__))
    cluster = os.path.join(W, "slurm")
    r = subprocess.run([os.path.join(here, "slurm_local.sh"), "start", cluster], capture_output=True, text=True)
    if r.returncode == 77:
        print(r.stdout.strip())
        sys.exit(77)
    check(r.returncode == 0, "a private Slurm cluster started")
    if r.returncode:
        print(r.stdout[-2000:], r.stderr[-3000:])
        return
    env = dict(ENV, SLURM_CONF=os.path.join(cluster, "slurm.conf"))
    steps = 60
    extra = ["--zero", "1", "--ckpt-interval", "10"]
    try:
        ref = os.path.join(W, "slurm-ref")
        r = subprocess.run([LOOM, "launch", "-n", "2", "--"] + base_args(ref, steps, extra), env=ENV,
                           capture_output=True, text=True)
        check(r.returncode == 0, "uninterrupted 2-rank run (mpirun, %d steps)" % steps)
        out = os.path.join(W, "slurm-run")
        log = open(os.path.join(W, "slurm.log"), "w")
        sup = subprocess.Popen(["salloc", "-n", "2", "--quiet", LOOM, "launch", "--mpirun", "srun", "-n", "2",
                                "--max-restarts", "2", "--heartbeat-timeout", "10s", "--restart-backoff", "0.5s",
                                "--"] + base_args(out, steps, extra), env=env, stdout=log, stderr=subprocess.STDOUT)
        t_kill = None
        try:
            wait_for(lambda: len(rank_pids(out)) == 2 and metrics_steps(out) >= 25, 180, "the first steps under srun")
            os.kill(rank_pids(out)[1], signal.SIGKILL)
            t_kill = time.time()
            rc = sup.wait(timeout=300)
        except Exception as e:
            check(False, "fault injection under Slurm: %s" % e)
            sup.terminate()
            sup.wait()
            rc = -1
        log.close()
        check(rc == 0, "salloc ... loom launch --mpirun srun finished (exit %d)" % rc)
        if rc != 0:
            print(open(os.path.join(W, "slurm.log")).read()[-6000:])
        fails = [e for e in events(out) if e["event"] == "failure"]
        resumed = [e for e in events(out) if e["event"] == "resumed"]
        if fails and t_kill:
            f = fails[0]
            check(len(fails) == 1 and f["rank"] == 1 and f["time"] - t_kill <= 5 and f["left"] == 0,
                  "kill -9 of rank 1 under srun: detected as %s of rank %d in %.2f s, %d process(es) left" %
                  (f["kind"], f["rank"], f["time"] - t_kill, f["left"]))
        else:
            check(False, "the kill under srun was detected (%d failures)" % len(fails))
        check(len(resumed) == 1, "one restart by a new srun, resumed at step %s" %
              (resumed[0]["step"] if resumed else "-"))
        check(not procs_of(out), "no process of the job left")
        a, b = final_state(ref), final_state(out)
        check(a == b and len(a) == 2, "final parameters and optimizer state bit-identical to the uninterrupted run's")
    finally:
        subprocess.run([os.path.join(here, "slurm_local.sh"), "stop", cluster])


{"chaos": chaos, "bad_steps": bad_steps, "give_up": give_up, "stuck": stuck, "slurm": slurm}[CHECK]()
if failed:
    print("logs kept in", W)
else:
    shutil.rmtree(W, ignore_errors=True)
print("%s: %d failure(s)" % (CHECK, len(failed)))
sys.exit(1 if failed else 0)
