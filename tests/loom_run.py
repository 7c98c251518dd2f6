"""A running or finished loom job as the resilience tests and bench/chaos.py see it: its processes, its final
state, and waiting for a condition on it."""
import json
import os
import time

from loom_files import read_ckpt_sections


def final_state(out):
    """{file: (params, optim.0, optim.1)} of the run's newest checkpoint (shards or the single file)"""
    man = os.path.join(out, "checkpoint.json")
    if os.path.exists(man):
        m = json.load(open(man))
        d = os.path.join(out, m["dir"])
        files = sorted(f for f in os.listdir(d) if f.startswith("rank-"))
    else:
        d, files = out, ["checkpoint.bin"]
    state = {}
    for f in files:
        s = read_ckpt_sections(os.path.join(d, f))
        state[f] = tuple(s.get(k) for k in ("params", "optim.0", "optim.1"))
    return state


def procs_of(out):
    """{pid: world rank or None} of this machine's processes whose command line names `out` (the launchers left
    out)"""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
            if out.encode() not in cmd:
                continue
            env = open("/proc/%s/environ" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        rank = None
        for e in env:
            if e.startswith(b"OMPI_COMM_WORLD_RANK=") or e.startswith(b"SLURM_PROCID="):  # mpirun's, srun's
                rank = int(e.split(b"=")[1])
        if b"launch" not in cmd and os.path.basename(cmd[0]) not in (b"mpirun", b"srun", b"salloc"):
            found[int(pid)] = rank
    return found


def rank_pids(out):
    """{world rank: pid} of the job's ranks on this machine"""
    return {r: p for p, r in procs_of(out).items() if r is not None}


def wait_for(cond, limit, what):
    """cond()'s first true value within `limit` seconds, else RuntimeError"""
    t0 = time.time()
    while time.time() - t0 < limit:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise RuntimeError("timed out (%d s) waiting for %s" % (limit, what))
