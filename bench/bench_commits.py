#!/usr/bin/env python3
"""Training throughput of two loom commits, side by side: was speed lost?

    /usr/bin/python3 bench/bench_commits.py BASE [NEW] [--models gpt2-124m] [--precisions fp32,bf16]
                                            [--batch 4] [--seq-len 64] [--steps 8] [--rounds 5] [--threads 2]

BASE and NEW are git revisions (NEW default: the working tree, as built in build/). Each revision other than
the working tree is built once in its own worktree under /tmp (cmake Release, the same flags). Then, for
`rounds` rounds, every (model, precision) is trained once by each build, alternating which goes first. The
per-step times after two warm-up steps are pooled over rounds; the table gives each build's median ms/step
and tokens/s and NEW/BASE. Synthetic tokens, no checkpoint, the same thread count. Prints; asserts nothing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(rev):
    """the loom binary of a revision, built in its own worktree (cached by commit)"""
    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    tree = f"/tmp/loom-bench-{sha}"
    if not os.path.isdir(tree):
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, sha], check=True,
                       stdout=subprocess.DEVNULL)
    binary = os.path.join(tree, "build", "loom")
    if not os.path.exists(binary):
        subprocess.run(["cmake", "-S", tree, "-B", os.path.join(tree, "build"), "-DCMAKE_BUILD_TYPE=Release",
                        "-DBUILD_TESTING=OFF"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", os.path.join(tree, "build"), "-j2", "--target", "loom_cli"], check=True,
                       stdout=subprocess.DEVNULL)
    return binary, sha


def step_ms(loom, model, prec, a):
    """milliseconds of each step after the warm-up"""
    with tempfile.TemporaryDirectory() as out:
        cmd = [loom, "-q", "train", "--preset", model, "--data", "synthetic", "--steps", str(a.steps), "--batch",
               str(a.batch), "--seq-len", str(a.seq_len), "--threads", str(a.threads), "--precision", prec,
               "--out", out, "--peak-gflops", "1", "--set", "train.save_checkpoints=false",
               "--set", "train.eval_batches=1", "--set", "train.progress=0", "--set", "train.sample_tokens=0"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
        return [r["ms"] for r in rows if "ms" in r][2:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("new", nargs="?", default=None)
    p.add_argument("--models", default="gpt2-124m")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    base, base_sha = build(a.base)
    if a.new:
        new, new_sha = build(a.new)
    else:
        new, new_sha = os.path.join(ROOT, "build", "loom"), "working tree"
    cases = [(m, pr) for m in a.models.split(",") for pr in a.precisions.split(",")]
    times = {(c, w): [] for c in cases for w in ("base", "new")}
    for r in range(a.rounds):
        for c in cases:
            order = [("base", base), ("new", new)] if r % 2 == 0 else [("new", new), ("base", base)]
            for who, binary in order:
                times[(c, who)] += step_ms(binary, c[0], c[1], a)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    tokens = a.batch * a.seq_len
    print(f"BASE {a.base} ({base_sha}) vs NEW {a.new or 'working tree'} ({new_sha}); B{a.batch} T{a.seq_len}, "
          f"{a.threads} threads, {a.rounds} rounds x {a.steps - 2} timed steps, medians")
    print(f"{'model':12} {'prec':5} {'base ms':>9} {'new ms':>9} {'base tok/s':>11} {'new tok/s':>10} {'new/base':>9}")
    for c in cases:
        mb, mn = statistics.median(times[(c, 'base')]), statistics.median(times[(c, 'new')])
        print(f"{c[0]:12} {c[1]:5} {mb:9.1f} {mn:9.1f} {tokens / mb * 1e3:11.1f} {tokens / mn * 1e3:10.1f} "
              f"{mb / mn:9.3f}")


if __name__ == "__main__":
    main()
