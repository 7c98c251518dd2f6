#!/usr/bin/env python3
"""loom plan --memory against measured runs (issue 6, memory estimator).

For each configuration (recompute none/attn/full x ZeRO 0-3 on 2 data-parallel ranks; bf16 and fp16 mixed
precision with recompute and ZeRO; the memory manager under a budget (offload) on one rank and with ZeRO 1-3 on two,
with recompute and SGD; one process, tensor, sequence (ring), pipeline (1F1B and interleaved) and Megatron
sequence-parallel layouts; both model families), the prediction is made first, then the run trains 2 steps; on every rank the measured peak bytes
(params + grads + optim + acts + workspace, each category's peak, from the metrics log) must be within 10%
of the predicted total, and the persistent state (params + grads + optim) within 1%.

Usage: test_plan_memory.py LOOM   (exit 77 = skipped: no MPI for the multi-rank configurations)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

LOOM = os.path.abspath(sys.argv[1])
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
W = tempfile.mkdtemp(prefix="loom_plan_")
FAM = {"gpt2": ["--preset", "demo"], "llama": ["--preset", "llama-tiny", "--set", "model.vocab_size=512"]}
BASE = ["--batch", "8", "--seq-len", "32", "--threads", "1"]
CONFIGS = []
for rc in ("none", "attn", "full"):
    for z in (0, 1, 2, 3):
        CONFIGS.append(("gpt2", f"dp=2 ZeRO-{z} recompute {rc}", 2, ["--mesh", "dp=2", "--zero", str(z), "--recompute", rc]))
CONFIGS += [
    ("gpt2", "one process", 1, []),
    ("llama", "one process recompute attn", 1, ["--recompute", "attn"]),
    ("llama", "dp=2 ZeRO-3", 2, ["--mesh", "dp=2", "--zero", "3"]),
    ("gpt2", "tp=2", 2, ["--mesh", "tp=2"]),
    ("llama", "tp=2 sequence-parallel", 2, ["--mesh", "tp=2", "--set", "train.tp_seq_parallel=1"]),
    ("llama", "sp=2", 2, ["--mesh", "sp=2"]),
    ("gpt2", "pp=2 1F1B", 2, ["--mesh", "pp=2", "--grad-accum", "4"]),
    ("llama", "pp=2 interleaved", 2, ["--mesh", "pp=2", "--grad-accum", "4", "--set", "train.pp_schedule=interleaved"]),
    ("gpt2", "bf16 one process", 1, ["--precision", "bf16"]),
    ("llama", "bf16 recompute full", 1, ["--precision", "bf16", "--recompute", "full"]),
    ("gpt2", "bf16 dp=2 ZeRO-1 recompute attn", 2, ["--precision", "bf16", "--mesh", "dp=2", "--zero", "1", "--recompute", "attn"]),
    ("gpt2", "bf16 dp=2 ZeRO-2", 2, ["--precision", "bf16", "--mesh", "dp=2", "--zero", "2"]),
    # bf16 stores the norms' and the MLP's outputs in bf16: per pipeline slot, and not under Megatron-SP
    ("gpt2", "bf16 pp=2 1F1B", 2, ["--precision", "bf16", "--mesh", "pp=2", "--grad-accum", "4"]),
    ("llama", "bf16 tp=2 sequence-parallel", 2, ["--precision", "bf16", "--mesh", "tp=2", "--set", "train.tp_seq_parallel=1"]),
    ("gpt2", "fp16 one process recompute attn", 1, ["--precision", "fp16", "--recompute", "attn"]),
    ("llama", "fp16 dp=2 ZeRO-1", 2, ["--precision", "fp16", "--mesh", "dp=2", "--zero", "1"]),
]
# the memory manager: budgets below the state, so it offloads (the chunk small enough to place many)
OFF = ["--set", "train.mem_chunk=64K"]
CONFIGS += [
    ("gpt2", "offload one process", 1, OFF + ["--mem-budget", "6M"]),
    ("gpt2", "offload one process recompute full", 1, OFF + ["--mem-budget", "5M", "--recompute", "full"]),
    ("llama", "offload one process recompute attn", 1, OFF + ["--mem-budget", "24M", "--recompute", "attn"]),
    ("gpt2", "offload dp=2 ZeRO-1", 2, OFF + ["--mesh", "dp=2", "--zero", "1", "--mem-budget", "9M"]),
    ("gpt2", "offload dp=2 ZeRO-2 sgd", 2, OFF + ["--mesh", "dp=2", "--zero", "2", "--mem-budget", "10M", "--optimizer", "sgd"]),
    ("gpt2", "offload dp=2 ZeRO-3", 2, OFF + ["--mesh", "dp=2", "--zero", "3", "--mem-budget", "6M"]),
    ("gpt2", "bf16 offload dp=2 ZeRO-1", 2, OFF + ["--precision", "bf16", "--mesh", "dp=2", "--zero", "1", "--mem-budget", "9M"]),
    # mixed precision at ZeRO-3 (the low-precision copy a unit at a time) and with parameter offload
    ("gpt2", "bf16 dp=2 ZeRO-3", 2, ["--precision", "bf16", "--mesh", "dp=2", "--zero", "3"]),
    # more rows than a piece of the head (LOOM_MODEL_HEAD_PIECE_ROWS): the fp32 logits are held a piece at a time
    ("llama", "bf16 one process, 1280 rows", 1, ["--precision", "bf16", "--batch", "40"]),
    ("gpt2", "bf16 tp=2, 1280 rows", 2, ["--precision", "bf16", "--mesh", "tp=2", "--batch", "40"]),
    ("llama", "fp16 dp=2 ZeRO-3 recompute attn", 2, ["--precision", "fp16", "--mesh", "dp=2", "--zero", "3", "--recompute", "attn"]),
    ("gpt2", "bf16 offload dp=2 ZeRO-3", 2, OFF + ["--precision", "bf16", "--mesh", "dp=2", "--zero", "3", "--mem-budget", "6M"]),
    ("gpt2", "bf16 offload one process", 1, OFF + ["--precision", "bf16", "--mem-budget", "7M"]),
]
fails = 0


def check(ok, what):
    global fails
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    fails += not ok


if shutil.which("mpirun") is None:
    print("SKIP: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)")
    sys.exit(77)
for fam, name, n, extra in CONFIGS:
    args = FAM[fam] + BASE + extra
    p = subprocess.run([LOOM, "plan", "--memory", "--json", "--world", str(n)] + args, capture_output=True, text=True)
    if p.returncode != 0:
        check(False, f"{fam} {name}: plan failed: {p.stderr.strip()[-400:]}")
        continue
    pred = [json.loads(l) for l in p.stdout.splitlines()]
    out = os.path.join(W, "run")
    shutil.rmtree(out, ignore_errors=True)
    cmd = (["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(n)] if n > 1 else []) + \
        [LOOM, "-q", "train", "--steps", "2", "--out", out, "--set", "train.progress=0"] + args
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        if n > 1 and "world" not in r.stdout + r.stderr and "MPI" in r.stderr:
            print("SKIP: this loom has no MPI communicator")
            sys.exit(77)
        check(False, f"{fam} {name}: run failed: {r.stderr.strip()[-600:]}")
        continue
    last = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"mem_rank_peak_bytes"' in l][-1]
    for rank, cats in enumerate(last["mem_rank_peak_bytes"]):
        pr = pred[rank]
        measured, predicted = sum(cats), pr["total_bytes"]
        state_m = cats[0] + cats[1] + cats[2]
        state_p = pr["params_bytes"] + pr["grads_bytes"] + pr["optim_bytes"]
        err = measured / predicted - 1
        check(abs(err) <= 0.10 and abs(state_m / state_p - 1) <= 0.01,
              f"{fam} {name} rank {rank}: measured {measured} bytes, predicted {predicted} ({100 * err:+.1f}%); "
              f"state {state_m} vs {state_p}; acts {cats[3]} vs {pr['acts_bytes']}; "
              f"workspace {cats[4]} vs {pr['workspace_bytes']}")
shutil.rmtree(W, ignore_errors=True)
print(f"{len(CONFIGS)} configurations, {fails} failed")
sys.exit(1 if fails else 0)
