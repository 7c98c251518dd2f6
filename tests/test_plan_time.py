#!/usr/bin/env python3
"""loom plan --time's inputs against real runs, without timing anything (issue 18).

For each layout the run trains 2 steps on 2 ranks and reports, per step, the collectives it issued (metrics:
tp_*, sp_send_*, dp_* calls and bytes) and the floats ZeRO-2/3 gave back to the system and wrote again
(dp_refill_floats); `loom plan --time --json` with the same arguments must predict exactly those counts and
bytes (the time model prices each of them), and, for one rank over a memory budget, its files' reads and writes
(offload_read_bytes, offload_write_bytes) and the floats it gives back, and the model FLOPs the run's MFU counts. The
cluster description is a small hand-written one: the counts do not depend on the rates.

Usage: test_plan_time.py LOOM   (exit 77 = skipped: no MPI)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

LOOM = os.path.abspath(sys.argv[1])
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
W = tempfile.mkdtemp(prefix="loom_plan_time_")
CLUSTER = os.path.join(W, "cluster.json")
json.dump({"format": "loom-cluster", "version": 1, "name": "test", "source": "measured", "device": "cpu", "gpu": False,
           "hosts": 1, "cores_per_host": 2, "memory_per_rank_bytes": 8 << 30, "peak_gflops": {"fp32": 100, "bf16": 200},
           "compute": [{"threads": 1, "precision": "fp32", "gemm": [[256, 256, 256, t, 50] for t in range(3)],
                        "attention": [[64, 10, 10]],
                        "ns_per_element": {k: 1 for k in ("norm", "activation", "elementwise", "embedding", "loss",
                                                          "optimizer", "copy")}}],
           "links": [{"ranks": 2, "cross_host": False, "all_reduce": [10, 2], "send": [5, 4]}],
           "disk": {"read_GBps": 1, "write_GBps": 1}}, open(CLUSTER, "w"))
GPT = ["--preset", "demo"]
LLAMA = ["--preset", "llama-tiny", "--set", "model.vocab_size=512"]
BASE = ["--batch", "8", "--seq-len", "32", "--threads", "1", "--data", "synthetic", "--set", "train.dp_transport=mpi"]
CONFIGS = [
    ("gpt2 dp=2 ZeRO-0, 2 micro-batches", GPT + ["--mesh", "dp=2", "--zero", "0", "--grad-accum", "2"]),
    ("gpt2 dp=2 ZeRO-1", GPT + ["--mesh", "dp=2", "--zero", "1"]),
    ("llama dp=2 ZeRO-2, 2 micro-batches", LLAMA + ["--mesh", "dp=2", "--zero", "2", "--grad-accum", "2"]),
    ("gpt2 dp=2 ZeRO-3, 2 micro-batches", GPT + ["--mesh", "dp=2", "--zero", "3", "--grad-accum", "2"]),
    ("gpt2 tp=2", GPT + ["--mesh", "tp=2"]),
    ("gpt2 tp=2 recompute full", GPT + ["--mesh", "tp=2", "--recompute", "full"]),
    ("gpt2 tp=2 Megatron-SP", GPT + ["--mesh", "tp=2", "--set", "train.tp_seq_parallel=1"]),
    ("llama tp=2 Megatron-SP, 2 micro-batches", LLAMA + ["--mesh", "tp=2", "--set", "train.tp_seq_parallel=1",
                                                        "--grad-accum", "2"]),
    ("llama sp=2", LLAMA + ["--mesh", "sp=2"]),
    ("gpt2 sp=2 ZeRO-1", GPT + ["--mesh", "sp=2", "--zero", "1"]),
    ("llama sp=2 recompute full, ZeRO-3 bf16", LLAMA + ["--mesh", "sp=2", "--recompute", "full", "--zero", "3",
                                                       "--precision", "bf16"]),
    ("llama tp=2 Megatron-SP recompute attn", LLAMA + ["--mesh", "tp=2", "--set", "train.tp_seq_parallel=1",
                                                      "--recompute", "attn"]),
    # bf16 gathers the norms' outputs in bf16 (half the bytes); the residual stream's gradient stays fp32
    ("gpt2 tp=2 Megatron-SP bf16", GPT + ["--mesh", "tp=2", "--set", "train.tp_seq_parallel=1", "--precision", "bf16"]),
    ("llama tp=2 Megatron-SP bf16 recompute full", LLAMA + ["--mesh", "tp=2", "--set", "train.tp_seq_parallel=1",
                                                           "--precision", "bf16", "--recompute", "full"]),
    # 1280 rows: the head scores its logits in two pieces, the vocabulary-parallel loss reducing each's rows
    ("gpt2 tp=2 bf16, 1280 rows", GPT + ["--mesh", "tp=2", "--precision", "bf16", "--batch", "40"]),
]
KEYS = [f"{axis}_{op}_{what}" for axis in ("tp", "dp") for op in ("allreduce", "reduce_scatter", "allgather")
        for what in ("calls", "bytes")] + ["sp_send_calls", "sp_send_bytes", "dp_refill_floats"]

if subprocess.run(["mpirun", "--version"], capture_output=True).returncode != 0:
    print("mpirun not found: skipped")
    sys.exit(77)
fails = 0
try:
    for name, args in CONFIGS:
        out = os.path.join(W, "run")
        shutil.rmtree(out, ignore_errors=True)
        p = subprocess.run([LOOM, "plan", "--time", "--json", "--cluster", CLUSTER, "--world", "2"] + BASE + args,
                           capture_output=True, text=True, env=ENV)
        if p.returncode != 0:
            print(f"FAIL {name}: plan: {p.stderr.strip()}")
            fails += 1
            continue
        pred = json.loads(p.stdout.strip().splitlines()[-1])
        r = subprocess.run(["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "2", LOOM, "-q", "train"] + BASE +
                           args + ["--steps", "2", "--set", "train.progress=0", "--set", "train.sample_tokens=0",
                                   "--set", "train.save_checkpoints=0", "--set", "train.eval_interval=0",
                                   "--set", "train.eval_batches=1", "--out", out],
                           capture_output=True, text=True, env=ENV, timeout=600)
        if r.returncode != 0:
            print(f"FAIL {name}: run: {r.stderr[-800:]}")
            fails += 1
            continue
        steps = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"ms"' in l]
        got = steps[-1]
        bad = [f"{k}: predicted {pred.get(k, 0)}, the run {got.get(k, 0)}" for k in KEYS
               if pred.get(k, 0) != got.get(k, 0)]
        checked = [k for k in KEYS if got.get(k, 0)]
        if bad:
            fails += 1
            print(f"FAIL {name}:\n  " + "\n  ".join(bad))
        else:
            print(f"ok   {name}: {', '.join(f'{k}={got[k]}' for k in checked if not k.endswith('bytes'))}")
        if not checked:
            fails += 1
            print(f"FAIL {name}: the run reported no collectives to compare")
        if ("ZeRO-2" in name or "ZeRO-3" in name) and not got.get("dp_refill_floats"):
            fails += 1
            print(f"FAIL {name}: the run reported no floats given back (dp_refill_floats)")
    # one rank over a memory budget (the memory manager streams its state through files, ZeRO-3's layout): the
    # files' reads and writes per step and the floats given back, each budget pinning a different share in RAM
    OFF = ["--preset", "demo", "--batch", "8", "--seq-len", "32", "--grad-accum", "2", "--threads", "1", "--data",
           "synthetic", "--set", "train.offload=1", "--set", "train.mem_chunk=65536"]
    for budget in ("6M", "8M"):
        name = f"gpt2 1 rank, --mem-budget {budget}, 2 micro-batches"
        args = OFF + ["--mem-budget", budget]
        p = subprocess.run([LOOM, "plan", "--time", "--json", "--cluster", CLUSTER, "--world", "1"] + args,
                           capture_output=True, text=True, env=ENV)
        out = os.path.join(W, "offload")
        shutil.rmtree(out, ignore_errors=True)
        r = subprocess.run([LOOM, "-q", "train"] + args + ["--steps", "2", "--set", "train.progress=0", "--set",
                                                           "train.sample_tokens=0", "--set", "train.save_checkpoints=0",
                                                           "--set", "train.eval_interval=0", "--out", out],
                           capture_output=True, text=True, env=ENV, timeout=600)
        if p.returncode != 0 or r.returncode != 0:
            fails += 1
            print(f"FAIL {name}: {p.stderr[-500:]} {r.stderr[-500:]}")
            continue
        pred = json.loads(p.stdout.strip().splitlines()[-1])
        got = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"ms"' in l][-1]
        keys = ["offload_read_bytes", "offload_write_bytes", "dp_refill_floats"]
        bad = [f"{k}: predicted {pred.get(k, 0)}, the run {got.get(k, 0)}" for k in keys if pred.get(k, 0) != got.get(k, 0)]
        if bad or not all(got.get(k) for k in keys) or not 0 < got.get("offload_pinned_bytes", 0):
            fails += 1
            print(f"FAIL {name}: " + "; ".join(bad or [f"the run reported {', '.join(f'{k}={got.get(k)}' for k in keys)}"
                                                        f" and pinned {got.get('offload_pinned_bytes')}"]))
        else:
            print(f"ok   {name}: " + ", ".join(f"{k}={got[k]}" for k in keys) +
                  f" ({got['offload_pinned_bytes']} bytes pinned)")
    # --explain: a profiled run's kernel time per step in the prediction's categories, beside it
    out = os.path.join(W, "profiled")
    args = GPT + ["--batch", "8", "--seq-len", "32", "--threads", "1", "--data", "synthetic"]
    r = subprocess.run([LOOM, "-q", "train"] + args + ["--steps", "3", "--profile", "--set", "train.progress=0",
                                                      "--set", "train.sample_tokens=0", "--out", out],
                       capture_output=True, text=True, env=ENV, timeout=600)
    p = subprocess.run([LOOM, "plan", "--time", "--json", "--cluster", CLUSTER, "--explain", out] + args,
                       capture_output=True, text=True, env=ENV)
    meas = json.loads(p.stdout.strip().splitlines()[-1]).get("measured_ms", {}) if p.returncode == 0 else {}
    missing = subprocess.run([LOOM, "plan", "--time", "--cluster", CLUSTER, "--explain", W] + args,
                             capture_output=True, text=True, env=ENV)
    if r.returncode != 0 or not (meas.get("gemm", 0) > 0 and meas.get("step", 0) >= meas["gemm"]) or \
            missing.returncode == 0 or "--profile" not in missing.stderr:
        fails += 1
        print(f"FAIL plan --explain: {r.stderr[-500:]} {p.stdout[-500:]} {p.stderr[-500:]} / {missing.stderr[-300:]}")
    else:
        print("ok   plan --time --explain: measured", ", ".join(f"{k} {v:.1f} ms" for k, v in meas.items()))
    # loom train --auto: the planner's first layout for 2 ranks runs, with its prediction beside the measurement
    out = os.path.join(W, "auto")
    r = subprocess.run(["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "2", LOOM, "train", "--auto",
                        "--cluster", CLUSTER] + GPT + ["--batch", "8", "--grad-accum", "2", "--seq-len", "32",
                                                       "--data", "synthetic", "--steps", "3", "--set", "train.progress=0",
                                                       "--set", "train.sample_tokens=0", "--out", out],
                       capture_output=True, text=True, env=ENV, timeout=600)
    said = [l for l in (r.stderr + r.stdout).splitlines() if "auto:" in l]  # the plan (log), then the comparison
    if r.returncode != 0 or len(said) != 2 or "layouts searched" not in said[0] or "measured" not in said[1]:
        fails += 1
        print(f"FAIL train --auto: exit {r.returncode}\n{r.stdout[-800:]}{r.stderr[-800:]}")
    else:
        print("ok   train --auto:", said[0].split("auto: ")[1], "|", said[1].split("auto: ")[1])
finally:
    shutil.rmtree(W, ignore_errors=True)
print("plan time inputs:", "all match" if not fails else f"{fails} layouts differ")
sys.exit(1 if fails else 0)
