#!/usr/bin/env python3
"""GGUF export (`loom export --format gguf`) against llama.cpp itself (node-llama-cpp 3.21.1's prebuilt CPU
binary, installed by scripts/setup.sh --test into build/peers/llama-cpp; tests/gguf_llama.mjs runs it).

For each model, exported as f32: llama.cpp loads the file, tokenizes five prompts into the ids loom's
tokenizer gives, and its greedy continuation of each (32 tokens) is loom's own (`loom generate
--temperature 0`), as text. Models: GPT-2 family (demo) and LLaMA family (llama-tiny, whose q and k rows the
export reorders for GGML's rotary pairs) with the GPT-2 tokenizer, GPT-2 family with the byte tokenizer
(a BPE without merges), and LLaMA family with a BPE trained by `loom tokenizer train` (300 tokens). The weights are random with init_std 0.1: the logits then differ by clear margins
at every step, so 32 equal tokens are not luck (a wrong tensor, a transposition or a wrong rotary order
changes the first token), while f32 llama.cpp (f16 KV cache) and loom agree to rounding. f16 and bf16
exports: 2-D weights in half the bytes, loaded by llama.cpp, and the first continuation token equal to f32's.
Errors: an erf-GELU model (nanogpt-char) and a char tokenizer are refused with a message naming why; a file
that cannot be written leaves nothing behind.

Usage: test_gguf.py LOOM   (exit 77 = skipped: no node-llama-cpp or no GPT-2 tokenizer files)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

LOOM = os.path.abspath(sys.argv[1])
HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.environ.get("LOOM_LLAMA_CPP", os.path.join(os.path.dirname(LOOM), "peers", "llama-cpp"))
GPT2 = os.path.join(os.path.dirname(LOOM), "share", "gpt2")
NODE = os.path.join(PEER, "bin", "node")  # Node.js >= 20, as node-llama-cpp needs (scripts/fetch_llama_cpp.sh)
PROMPTS = ["To be, or not to be, that is", "The quick brown fox", "Once upon a time there",
           "In 1905, Albert Einstein published", "def main():\n    print("]
N = 32
fails = 0


def check(ok, what):
    global fails
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    fails += 0 if ok else 1


def run(cmd, ok=True):
    r = subprocess.run(cmd, capture_output=True)
    if ok and r.returncode != 0:
        print("command failed (%d): %s\n%s" % (r.returncode, " ".join(cmd), r.stderr.decode(errors="replace")))
    return r


def llama(gguf, prompts, n=N):
    r = run([NODE, os.path.join(HERE, "gguf_llama.mjs"), PEER, gguf, str(n)] + prompts)
    return [json.loads(l) for l in r.stdout.decode().splitlines() if l.startswith("{")] if r.returncode == 0 else []


def loom_greedy(run_dir, prompt, n=N):
    r = run([LOOM, "-q", "generate", "--ckpt", run_dir, "--prompt", prompt, "--max-tokens", str(n),
             "--temperature", "0", "--no-stop", "--threads", "2"])
    text = r.stdout.decode("utf-8", errors="replace")
    return text[len(prompt):].rstrip("\n") if text.startswith(prompt) else None


def loom_ids(tokenizer, text):
    r = subprocess.run([LOOM, "tokenizer", "encode", "--tokenizer", tokenizer], input=text.encode(), capture_output=True)
    return [int(x) for x in r.stdout.split()]


def train(out, preset, data, extra=()):
    return run([LOOM, "-q", "train", "--preset", preset, "--data", data, "--steps", "1", "--batch", "2",
                "--seq-len", "16", "--threads", "2", "--set", "model.init_std=0.1", "--set", "train.progress=0",
                "--out", out] + list(extra)).returncode == 0


def export(run_dir, gguf, dtype="f32", ok=True):
    return run([LOOM, "-q", "export", "--ckpt", run_dir, "--format", "gguf", "--out", gguf, "--dtype", dtype], ok=ok)


def main():
    if not os.path.exists(NODE) or not os.path.exists(os.path.join(PEER, "node_modules", "node-llama-cpp")):
        print(f"SKIP: node-llama-cpp not found in {PEER} (scripts/setup.sh --test installs it)")
        return 77
    if not os.path.exists(os.path.join(GPT2, "encoder.json")):
        print(f"SKIP: GPT-2 tokenizer files not in {GPT2} (scripts/setup.sh fetches them)")
        return 77
    w = tempfile.mkdtemp(prefix="loom_gguf_")
    corpus = os.path.join(w, "corpus.txt")
    with open(corpus, "w") as f:
        for i in range(200):
            f.write(f"Line {i}: the quick brown fox jumps over the lazy dog, and then it rests a while.\n")
    bpe = os.path.join(w, "bpe.tok")  # a trained byte-level BPE (its merges in the order it learned them)
    run([LOOM, "-q", "tokenizer", "train", corpus, "--vocab-size", "300", "--out", bpe])
    for tok in ("gpt2", "byte", bpe):
        run([LOOM, "-q", "data", "prepare", corpus, "--tokenizer", tok, "--out",
             os.path.join(w, "data-" + os.path.basename(tok))])
    models = [("gpt2 family, gpt2 tokenizer", "demo", "gpt2"), ("llama family, gpt2 tokenizer", "llama-tiny", "gpt2"),
              ("gpt2 family, byte tokenizer", "demo", "byte"), ("llama family, trained BPE", "llama-tiny", bpe)]
    for name, preset, tok in models:
        tok_tag = os.path.basename(tok)
        d = os.path.join(w, f"{preset}-{tok_tag}")
        if not train(d, preset, os.path.join(w, "data-" + tok_tag)):
            check(False, f"{name}: training the model")
            continue
        gguf = d + ".gguf"
        check(export(d, gguf).returncode == 0 and os.path.exists(gguf) and not os.path.exists(gguf + ".tmp"),
              f"{name}: loom export --format gguf writes {os.path.basename(gguf)} ({os.path.getsize(gguf) if os.path.exists(gguf) else 0} bytes)")
        got = llama(gguf, PROMPTS)
        check(len(got) == len(PROMPTS), f"{name}: llama.cpp loads the file and generates")
        for p, g in zip(PROMPTS, got):
            ids = loom_ids(tok, p)
            check(g["prompt_ids"] == ids, f"{name}: llama.cpp tokenizes {p!r} as loom does ({len(ids)} tokens)")
            mine = loom_greedy(d, p)
            same = mine == g["text"]
            check(same and len(g["ids"]) == N, f"{name}: {p!r}: llama.cpp's greedy {N} tokens equal loom's" +
                  ("" if same else f"\n  llama.cpp: {g['text']!r}\n  loom:      {mine!r}"))
        if preset == "demo" and tok == "gpt2":  # half-precision files
            f32_first = got[0]["ids"][0] if got else None
            for dt in ("f16", "bf16"):
                h = d + f"-{dt}.gguf"
                ok = export(d, h, dt).returncode == 0
                ratio = os.path.getsize(h) / os.path.getsize(gguf) if ok else 0
                hg = llama(h, PROMPTS[:1]) if ok else []
                check(ok and 0.45 < ratio < 0.55 and len(hg) == 1 and hg[0]["ids"][0] == f32_first,
                      f"{name}: --dtype {dt}: {ratio:.2f} of f32's size, llama.cpp runs it, first token as f32's")
    # errors
    d = os.path.join(w, "erf")
    if train(d, "nanogpt-char", os.path.join(w, "data-byte")):
        r = export(d, d + ".gguf", ok=False)
        check(r.returncode != 0 and b"tanh GELU" in r.stderr and not os.path.exists(d + ".gguf"),
              "an erf-GELU model is refused (llama.cpp's gpt2 runs the tanh GELU)")
    ch = os.path.join(w, "char.tok")
    run([LOOM, "-q", "tokenizer", "train", corpus, "--kind", "char", "--out", ch])
    r = run([LOOM, "-q", "export", "--ckpt", os.path.join(w, "demo-byte"), "--format", "gguf", "--out",
             os.path.join(w, "c.gguf"), "--tokenizer", ch], ok=False)
    check(r.returncode != 0 and b"byte-level tokenizer" in r.stderr, "a char tokenizer is refused with the reason")
    bad = os.path.join(w, "no-such-dir", "x.gguf")
    r = export(os.path.join(w, "demo-gpt2"), bad, ok=False)
    check(r.returncode != 0 and b"cannot create" in r.stderr and not os.path.exists(os.path.dirname(bad)),
          "an unwritable path is an error and leaves nothing")
    shutil.rmtree(w, ignore_errors=True)
    print(f"{'FAILED' if fails else 'passed'}: {fails} failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
