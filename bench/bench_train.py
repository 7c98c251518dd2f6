#!/usr/bin/env python3
"""Training throughput: loom against PyTorch, side by side, alternating, same configs.

    /usr/bin/python3 bench/bench_train.py [--loom build/loom] [--models gpt2-124m,gpt2-l6]
                                          [--steps 10] [--rounds 3] [--threads 2] [--precision fp32[,bf16]]
                                          [--systems loom,torch]

Each round runs every model once in loom and once in PyTorch (bench/torch_gpt.py, in PyTorch's tuned
configuration from ../shared/PERFORMANCE.md via bench/peer_env.sh). Per-step times after the first two
(warm-up) steps are pooled over rounds; the table gives medians, tokens/s, MFU against this machine's
measured GEMM peak in the run's precision (`loom bench peak`), peak memory, and loom/PyTorch ratios; with two
precisions (`--precision fp32,bf16`), also each system's bf16/fp32 ratio. Prints figures; asserts nothing.
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
CONFIGS = {"gpt2-124m": (12, 768), "gpt2-l6": (6, 384)}


def n_params(L, C, V=50257):
    """the parameters a token's products go through (loom's count): the position table is only looked up"""
    return V * C + 2 * C + L * (12 * C * C + 13 * C)


def flops_per_token(model, seq):
    L, C = CONFIGS[model]
    return 6 * n_params(L, C) + 12 * L * C * seq


def peak_gflops(loom, threads, precision):
    """this machine's measured GEMM peak in the run's precision (fp16 runs on fp32 units: fp32's)"""
    out = subprocess.run([loom, "-q", "bench", "peak", "--threads", str(threads), "--quick"],
                         capture_output=True, text=True, check=True).stdout
    vals, kernels = {}, {"fp32": "?", "bf16": "?"}
    for line in out.splitlines():
        if "=" in line and line.split("=")[0] in ("peak_gflops", "peak_bf16_gflops"):
            vals[line.split("=")[0]] = float(line.split("=")[1])
        elif line.startswith("best fp32 kernel:"):  # "best fp32 kernel: K1; bf16: K2; ..."
            parts = line.split(";")
            kernels["fp32"] = parts[0].split(":", 1)[1].strip()
            kernels["bf16"] = parts[1].split(":", 1)[1].strip()
    key = "bf16" if precision == "bf16" else "fp32"
    return vals["peak_bf16_gflops" if key == "bf16" else "peak_gflops"], key + " " + kernels[key]


def run_loom(loom, model, args, workdir):
    out = os.path.join(workdir, f"loom-{model}")
    metrics = os.path.join(out, "m.jsonl")
    cmd = [loom, "-q", "train", "--preset", model, "--data", "synthetic", "--steps", str(args.steps),
           "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--threads", str(args.threads),
           "--out", out, "--metrics", metrics, "--peak-gflops", "1", "--set", "train.eval_batches=1",
           "--precision", args.precision]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(l) for l in open(metrics) if '"loss"' in l]
    return [r["ms"] for r in rows[2:]], max(r["rss_peak_bytes"] for r in rows)


def run_torch(model, args):
    cmd = [os.path.join(HERE, "peer_env.sh"), "/usr/bin/python3", os.path.join(HERE, "torch_gpt.py"),
           "--model", model, "--steps", str(args.steps), "--batch", str(args.batch), "--seq-len",
           str(args.seq_len), "--threads", str(args.threads), "--precision", args.precision]
    env = dict(os.environ, THREADS=str(args.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    steps = [r for r in rows if "ms" in r and not r.get("summary")]
    summary = [r for r in rows if r.get("summary")][-1]
    return [r["ms"] for r in steps[2:]], summary["peak_rss_bytes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loom", default=os.path.join(ROOT, "build", "loom"))
    ap.add_argument("--models", default="gpt2-124m,gpt2-l6")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--precision", default="fp32", help="one, or several side by side (fp32,bf16)")
    ap.add_argument("--systems", default="loom,torch", help="loom,torch or one of them")
    args = ap.parse_args()
    models, precisions, systems = args.models.split(","), args.precision.split(","), args.systems.split(",")
    peaks = {}
    for p in precisions:
        peaks[p] = peak_gflops(args.loom, args.threads, p)
        print(f"peak {p}: {peaks[p][0]:.1f} GFLOP/s ({peaks[p][1]}, {args.threads} threads; MFU against it)")
    print(f"B={args.batch} T={args.seq_len}, {args.rounds} rounds x {args.steps} steps, first 2 steps of each run "
          f"dropped; every configuration once per round, in turn", flush=True)
    runs = [(m, s, p) for m in models for p in precisions for s in systems]
    res = {k: ([], 0) for k in runs}
    with tempfile.TemporaryDirectory() as wd:
        for r in range(args.rounds):
            for m, system, prec in runs:
                a = argparse.Namespace(**{**vars(args), "precision": prec})
                ms, mem = run_loom(args.loom, m, a, wd) if system == "loom" else run_torch(m, a)
                acc, old = res[(m, system, prec)]
                res[(m, system, prec)] = (acc + ms, max(old, mem))
                print(f"  round {r + 1} {m:10s} {system:5s} {prec:4s} median {statistics.median(ms):8.1f} ms/step",
                      flush=True)
    tok = args.batch * args.seq_len
    print(f"\n{'model':10s} {'system':6s} {'prec':4s} {'ms/step':>9s} {'tokens/s':>9s} {'MFU':>7s} {'peak RSS':>10s}")
    for m in models:
        tps = {}
        for _, system, prec in [k for k in runs if k[0] == m]:
            ms, mem = res[(m, system, prec)]
            med = statistics.median(ms)
            tps[(system, prec)] = tok / (med / 1e3)
            mfu = flops_per_token(m, args.seq_len) * tps[(system, prec)] / (peaks[prec][0] * 1e9)
            print(f"{m:10s} {system:6s} {prec:4s} {med:9.1f} {tps[(system, prec)]:9.1f} {100 * mfu:6.1f}% "
                  f"{mem / 2**20:8.0f} MiB")
        for prec in precisions:
            if ("loom", prec) in tps and ("torch", prec) in tps:
                print(f"{m:10s} ratio  {prec} loom/torch tokens/s = {tps[('loom', prec)] / tps[('torch', prec)]:.2f}x")
        for system in systems:
            if (system, "fp32") in tps and (system, "bf16") in tps:
                print(f"{m:10s} ratio  {system} bf16/fp32 tokens/s = "
                      f"{tps[(system, 'bf16')] / tps[(system, 'fp32')]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
