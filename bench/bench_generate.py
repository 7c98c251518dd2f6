#!/usr/bin/env python3
"""Generation speed: loom (fp32 and bf16 decoding) against llama.cpp on loom's own exported GGUF (f32, f16 and
bf16 files), same model, prompt, token count and threads, alternating, medians over rounds.

    /usr/bin/python3 bench/bench_generate.py [--loom build/loom] [--preset gpt2-124m] [--tokens 64]
                                             [--prompt-tokens 128] [--rounds 3] [--threads 2] [--batch-invariant]

The model is the preset with loom's initial weights (one training step on synthetic data; the speed does not
depend on the values), tokens are greedy with end-of-text ignored. Prefill is the prompt up to the first new
token, decode the tokens after it. llama.cpp is node-llama-cpp 3.21.1 (scripts/setup.sh --test), run by
tests/gguf_llama.mjs. Prints figures; asserts nothing.
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


def loom_run(loom, ckpt, prompt, tokens, threads, precision, extra=()):
    r = subprocess.run([loom, "-q", "generate", "--ckpt", ckpt, "--prompt", prompt, "--max-tokens", str(tokens),
                        "--temperature", "0", "--no-stop", "--threads", str(threads), "--precision", precision, *extra],
                       capture_output=True, text=True, errors="replace", check=True)
    # "[loom] N tokens in S s (X tokens/s); prompt P tokens in Q s"
    line = [l for l in r.stderr.splitlines() if l.startswith("[loom]")][-1].split()
    n, dec, p, pre = int(line[1]), float(line[4]), int(line[9]), float(line[12])
    return {"decode_tps": (n - 1) / dec if n > 1 else 0.0, "prefill_tps": p / pre if pre > 0 else 0.0}


def llama_run(peer, gguf, prompt, tokens, n_prompt):
    r = subprocess.run([os.path.join(peer, "bin", "node"), os.path.join(ROOT, "tests", "gguf_llama.mjs"), peer, gguf,
                        str(tokens), prompt],
                       capture_output=True, text=True, check=True)
    d = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])
    return {"decode_tps": (len(d["ids"]) - 1) / (d["decode_ms"] / 1e3),
            "prefill_tps": len(d["prompt_ids"]) / (d["prefill_ms"] / 1e3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loom", default=os.path.join(ROOT, "build", "loom"))
    ap.add_argument("--peer", default=os.path.join(ROOT, "build", "peers", "llama-cpp"))
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128, help="about this many (GPT-2 tokens of plain words)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-invariant", action="store_true",
                    help="also loom generate --batch-invariant (what loom serve --batch-invariant runs)")
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.peer, "node_modules", "node-llama-cpp")):
        sys.exit(f"node-llama-cpp not found in {a.peer}: scripts/fetch_llama_cpp.sh {a.peer}")
    words = "the quick brown fox jumps over the lazy dog and".split()
    prompt = " ".join(words[i % len(words)] for i in range(a.prompt_tokens))
    with tempfile.TemporaryDirectory() as w:
        ckpt = os.path.join(w, "run")
        subprocess.run([a.loom, "-q", "train", "--preset", a.preset, "--data", "synthetic", "--steps", "1", "--batch",
                        "1", "--seq-len", "16", "--threads", str(a.threads), "--out", ckpt, "--set",
                        "train.progress=0"], check=True, stdout=subprocess.DEVNULL)
        systems = [("loom fp32", lambda: loom_run(a.loom, ckpt, prompt, a.tokens, a.threads, "fp32")),
                   ("loom bf16", lambda: loom_run(a.loom, ckpt, prompt, a.tokens, a.threads, "bf16"))]
        if a.batch_invariant:
            inv = ("--batch-invariant",)
            systems += [("loom fp32 inv", lambda: loom_run(a.loom, ckpt, prompt, a.tokens, a.threads, "fp32", inv)),
                        ("loom bf16 inv", lambda: loom_run(a.loom, ckpt, prompt, a.tokens, a.threads, "bf16", inv))]
        for dt in ("f32", "f16", "bf16"):
            g = os.path.join(w, f"model-{dt}.gguf")
            subprocess.run([a.loom, "-q", "export", "--ckpt", ckpt, "--format", "gguf", "--out", g, "--dtype", dt,
                            "--tokenizer", "gpt2"], check=True)
            systems.append((f"llama.cpp {dt}", lambda g=g: llama_run(a.peer, g, prompt, a.tokens, a.prompt_tokens)))
        res = {name: [] for name, _ in systems}
        print(f"{a.preset}, prompt of ~{a.prompt_tokens} tokens, {a.tokens} new tokens, {a.threads} threads, "
              f"{a.rounds} rounds (every system once per round, in turn)", flush=True)
        for r in range(a.rounds):
            for name, fn in systems:
                res[name].append(fn())
                x = res[name][-1]
                print(f"  round {r + 1} {name:14s} decode {x['decode_tps']:7.1f} tok/s  prefill "
                      f"{x['prefill_tps']:8.1f} tok/s", flush=True)
    print(f"\n{'system':14s} {'decode tok/s':>13s} {'prefill tok/s':>14s}   (medians)")
    med = {}
    for name, _ in systems:
        med[name] = (statistics.median(x["decode_tps"] for x in res[name]),
                     statistics.median(x["prefill_tps"] for x in res[name]))
        print(f"{name:14s} {med[name][0]:13.1f} {med[name][1]:14.1f}")
    pairs = [("loom fp32", "llama.cpp f32"), ("loom bf16", "llama.cpp bf16"), ("loom bf16", "llama.cpp f16")]
    if a.batch_invariant:
        pairs += [("loom fp32 inv", "loom fp32"), ("loom bf16 inv", "loom bf16"), ("loom bf16 inv", "llama.cpp bf16")]
    for mine, peer in pairs:
        print(f"{mine} / {peer}: decode {med[mine][0] / med[peer][0]:.2f}x, prefill {med[mine][1] / med[peer][1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
