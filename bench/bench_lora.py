#!/usr/bin/env python3
"""LoRA fine-tuning against full fine-tuning: step time and memory, loom and PyTorch side by side.

    /usr/bin/python3 bench/bench_lora.py [--loom build/loom] [--model gpt2-124m] [--batch 4] [--seq-len 256]
                                         [--steps 6] [--rounds 3] [--threads 2] [--rank 16] [--systems loom,torch]

Each round runs, in this order: full fine-tuning (fp32), LoRA r=16 alpha=32 on attn+mlp (fp32), and LoRA in
bf16 with the frozen base held in bf16 (`--precision bf16 --lora-base-dtype bf16`), in loom; then full and LoRA
fp32 in PyTorch (bench/torch_gpt.py --lora, PEFT's recipe written out: frozen weights with requires_grad False,
AdamW over the adapters) under the tuned environment. Per-step times after two warm-up steps are pooled over
rounds (medians). Memory: loom's own accounting of parameters + gradients + optimizer state (the metrics'
mem_peak_params/grads/optim) and the process's peak RSS; PyTorch's peak RSS. Ratios are against the same
system's full fine-tuning. MFU counts the model FLOPs each run needs (LoRA: no weight gradients for the frozen
weights), against the machine's measured peak in the run's precision. Prints figures; asserts nothing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1 << 20


def run_loom(a, workdir, name, extra):
    out = os.path.join(workdir, name)
    metrics = os.path.join(out, "m.jsonl")
    cmd = [a.loom, "-q", "train", "--preset", a.model, "--data", "synthetic", "--steps", str(a.steps + 2),
           "--batch", str(a.batch), "--seq-len", str(a.seq_len), "--threads", str(a.threads), "--out", out,
           "--metrics", metrics, "--set", "train.eval_batches=1", "--set", "train.save_checkpoints=false"] + extra
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(l) for l in open(metrics) if '"loss"' in l]
    last = rows[-1]
    state = last["mem_peak_params"] + last["mem_peak_grads"] + last["mem_peak_optim"]
    return {"ms": [r["ms"] for r in rows[2:]], "mfu": [r.get("mfu", 0) for r in rows[2:]], "state": state,
            "rss": max(r["rss_peak_bytes"] for r in rows), "acts": last["mem_peak_acts"] + last["mem_peak_workspace"]}


def run_torch(a, lora):
    cmd = [os.path.join(HERE, "peer_env.sh"), "/usr/bin/python3", os.path.join(HERE, "torch_gpt.py"),
           "--model", a.model, "--steps", str(a.steps), "--batch", str(a.batch), "--seq-len", str(a.seq_len),
           "--threads", str(a.threads), "--lora", str(lora)]
    env = dict(os.environ, THREADS=str(a.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    steps = [r for r in rows if "ms" in r and not r.get("summary") and not r.get("warmup")]
    summary = [r for r in rows if r.get("summary")][-1]
    return {"ms": [r["ms"] for r in steps], "rss": summary["peak_rss_bytes"], "state": None, "mfu": None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loom", default=os.path.join(ROOT, "build", "loom"))
    ap.add_argument("--model", default="gpt2-124m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--systems", default="loom,torch")
    a = ap.parse_args()
    systems = a.systems.split(",")
    lora = ["--lora", "r=%d,alpha=%d,targets=attn,mlp" % (a.rank, 2 * a.rank)]
    runs = []
    if "loom" in systems:
        runs += [("loom full fp32", lambda w: run_loom(a, w, "full", [])),
                 ("loom LoRA fp32", lambda w: run_loom(a, w, "lora", lora)),
                 ("loom LoRA bf16, bf16 base", lambda w: run_loom(a, w, "lora16", lora + [
                     "--precision", "bf16", "--lora-base-dtype", "bf16"]))]
    if "torch" in systems:
        runs += [("torch full fp32", lambda w: run_torch(a, 0)), ("torch LoRA fp32", lambda w: run_torch(a, a.rank))]
    pooled = {name: {"ms": [], "mfu": [], "state": [], "rss": [], "acts": []} for name, _ in runs}
    with tempfile.TemporaryDirectory() as w:
        for rnd in range(a.rounds):
            for name, fn in runs:
                r = fn(w)
                p = pooled[name]
                p["ms"] += r["ms"]
                p["rss"].append(r["rss"])
                if r["mfu"]:
                    p["mfu"] += r["mfu"]
                if r["state"] is not None:
                    p["state"].append(r["state"])
                    p["acts"].append(r["acts"])
                print("round %d %-28s median %.1f ms" % (rnd + 1, name, statistics.median(r["ms"])), file=sys.stderr)
    tokens = a.batch * a.seq_len
    print("%s, B %d, T %d, %d threads, LoRA r=%d alpha=%d on attn+mlp; %d rounds x %d steps, medians" % (
        a.model, a.batch, a.seq_len, a.threads, a.rank, 2 * a.rank, a.rounds, a.steps))
    print("%-28s %10s %9s %7s %10s %16s %14s %10s %14s" % ("run", "ms/step", "tok/s", "MFU", "vs full",
                                                           "params+grads+optim", "state vs full", "peak RSS",
                                                           "RSS-acts vs full"))
    for name, _ in runs:
        p = pooled[name]
        sysname = name.split()[0]
        full = pooled[sysname + " full fp32"]
        ms = statistics.median(p["ms"])
        state = statistics.median(p["state"]) if p["state"] else None
        fstate = statistics.median(full["state"]) if full["state"] else None
        # the process's peak RSS less the activations and workspace it accounted (equal in both runs): what RSS
        # says the parameters, gradients and optimizer state (and the runtime) take
        rest = statistics.median(p["rss"]) - statistics.median(p["acts"]) if p["acts"] else None
        frest = statistics.median(full["rss"]) - statistics.median(full["acts"]) if full["acts"] else None
        print("%-28s %10.1f %9.1f %7s %9.3fx %16s %14s %8.0f MiB %14s" % (
            name, ms, tokens / ms * 1e3, "%.1f%%" % (100 * statistics.median(p["mfu"])) if p["mfu"] else "-",
            ms / statistics.median(full["ms"]), "%.1f MiB" % (state / MiB) if state else "-",
            "%.1f%%" % (100 * state / fstate) if state else "-", statistics.median(p["rss"]) / MiB,
            "%.1f%%" % (100 * rest / frest) if rest else "-"))
    ratios = [statistics.median(pooled["loom LoRA fp32"]["ms"][i:i + a.steps]) /
              statistics.median(pooled["loom full fp32"]["ms"][i:i + a.steps])
              for i in range(0, len(pooled["loom LoRA fp32"]["ms"]), a.steps)] if "loom" in systems else []
    if ratios:
        print("loom LoRA/full step time by round: %s" % ", ".join("%.3f" % r for r in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
