#!/usr/bin/env python3
"""The isolating backend computes what the CPU backend computes, bit for bit (issue 14's proof).

cpu-isolated runs the CPU's kernels over buffers that host code cannot touch (PROT_NONE outside the
backend's own operations), so every value crossing the seam goes through an explicit copy. If a layout ran
only because host code read or wrote a buffer directly, it would crash there; if a copy were missing or
wrong, the numbers would differ. For each case below the same run is made with --device cpu and --device
cpu-isolated, and the two must agree exactly: every step's loss and gradient norm, every validation loss,
and the final parameters and optimizer state (the checkpoint's section checksums). Cases: both model
families, fp32/bf16/fp16, recompute, gradient accumulation, every optimizer, 2 ranks at each ZeRO stage
(MPI transport), tensor parallel (with Megatron-SP), sequence parallel, pipeline (1F1B and interleaved),
the memory manager offloading to files, resume, and generation (the sampled text).

Usage: test_device_equal.py LOOM [case-substring ...]   (exit 77: no MPI for the multi-rank cases is not a skip;
they fail)
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loom_files  # noqa: E402 (the checkpoint container, read from its format description)

LOOM = os.path.abspath(sys.argv[1])
ONLY = sys.argv[2:]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
W = tempfile.mkdtemp(prefix="loom_devequal_")
GPT = ["--preset", "demo"]
LLAMA = ["--preset", "llama-tiny", "--set", "model.vocab_size=512"]
COMMON = ["--data", "synthetic", "--steps", "6", "--batch", "8", "--seq-len", "32", "--set", "train.progress=0",
          "--set", "train.sample_tokens=0", "--eval-interval", "3", "--set", "train.eval_batches=2"]
# name, ranks, arguments
CASES = [
    ("gpt2 fp32", 1, GPT + ["--threads", "2"]),
    ("llama fp32", 1, LLAMA + ["--threads", "2"]),
    ("gpt2 bf16", 1, GPT + ["--threads", "2", "--precision", "bf16"]),
    ("llama fp16", 1, LLAMA + ["--threads", "2", "--precision", "fp16"]),
    ("gpt2 recompute full, 3 micro-batches", 1, GPT + ["--threads", "2", "--recompute", "full", "--grad-accum", "3"]),
    ("llama recompute attn, lamb", 1, LLAMA + ["--threads", "2", "--recompute", "attn", "--optimizer", "lamb"]),
    ("gpt2 sgd", 1, GPT + ["--threads", "2", "--optimizer", "sgd"]),
    ("llama lars", 1, LLAMA + ["--threads", "2", "--optimizer", "lars"]),
    ("gpt2 memory manager (files)", 1, ["--preset", "gpt2-l6", "--threads", "2", "--mem-budget", "230M",
                                        "--set", "train.mem_chunk=4M"]),
    ("gpt2 2 ranks ZeRO-0", 2, GPT + ["--threads", "1", "--zero", "0", "--set", "train.dp_transport=mpi"]),
    ("gpt2 2 ranks ZeRO-1", 2, GPT + ["--threads", "1", "--zero", "1", "--set", "train.dp_transport=mpi"]),
    ("llama 2 ranks ZeRO-2", 2, LLAMA + ["--threads", "1", "--zero", "2"]),
    ("gpt2 2 ranks ZeRO-3", 2, GPT + ["--threads", "1", "--zero", "3"]),
    ("gpt2 2 ranks ZeRO-3 offloaded", 2, GPT + ["--set", "model.d_model=256", "--set", "model.d_ff=1024", "--threads",
                                                "1", "--zero", "3", "--mem-budget", "24M", "--set", "train.mem_chunk=256K"]),
    ("llama tp=2", 2, LLAMA + ["--threads", "1", "--mesh", "tp=2"]),
    ("gpt2 tp=2 Megatron-SP", 2, GPT + ["--threads", "1", "--mesh", "tp=2", "--set", "train.tp_seq_parallel=1"]),
    ("llama sp=2", 2, LLAMA + ["--threads", "1", "--mesh", "sp=2"]),
    ("gpt2 pp=2 1F1B", 2, GPT + ["--threads", "1", "--mesh", "pp=2", "--grad-accum", "4"]),
    ("llama pp=2 interleaved", 2, LLAMA + ["--threads", "1", "--mesh", "pp=2", "--grad-accum", "4",
                                           "--set", "train.pp_schedule=interleaved", "--set", "model.n_layer=4"]),
]
fails = 0


def check(ok, what):
    global fails
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    fails += not ok


def run(device, name, ranks, args, extra=()):
    out = os.path.join(W, device, name.replace(" ", "_").replace(",", "").replace("=", ""))
    cmd = (["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)] if ranks > 1 else []) + \
        [LOOM, "-q", "train", "--out", out, "--device", device] + args + COMMON + list(extra)
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        print(" ".join(cmd), "\n", r.stdout[-1500:], r.stderr[-2500:], file=sys.stderr)
    return out, r.returncode


def numbers(out):
    """every loss, gradient norm and validation loss the run wrote, as text (exactly as printed)"""
    rows = []
    for line in open(os.path.join(out, "metrics.jsonl")):
        keep = [f for f in line.strip("{}\n").split(",") if f.split(":")[0] in ('"step"', '"loss"', '"grad_norm"',
                                                                                  '"val_loss"', '"loss_scale"')]
        rows.append(",".join(keep))
    return rows


def state(out):
    """the checkpoint's parameters, optimizer state and training state, as bytes (a sharded checkpoint is
    consolidated into one file first)"""
    path = os.path.join(out, "checkpoint.bin")
    if os.path.exists(os.path.join(out, "checkpoint.json")):
        path = os.path.join(out, "consolidated.bin")
        if subprocess.run([LOOM, "ckpt", "consolidate", out, "--out", path], capture_output=True).returncode:
            return None
    secs = loom_files.read_ckpt_sections(path)
    return {k: v for k, v in secs.items() if k != "meta"}


for name, ranks, args in CASES:
    if ONLY and not any(o in name for o in ONLY):
        continue
    a, ra = run("cpu", name, ranks, args)
    b, rb = run("cpu-isolated", name, ranks, args)
    if ra or rb:
        check(False, f"{name}: a run failed (cpu {ra}, cpu-isolated {rb})")
        continue
    if "memory" in name or "offloaded" in name:  # the case means something only if files were used
        fb = [l for l in open(os.path.join(b, "metrics.jsonl")) if '"offload_file_bytes"' in l]
        check(fb and '"offload_file_bytes":0,' not in fb[-1], f"{name}: the memory manager kept chunks in files")
    na, nb = numbers(a), numbers(b)
    check(na == nb and len(na) >= 6, f"{name}: {len(na)} metrics lines identical (last: {na[-1] if na else '-'})")
    sa, sb = state(a), state(b)
    check(sa is not None and sa == sb and "params" in sa, f"{name}: final parameters, optimizer and training state "
                                                          f"identical ({', '.join(sorted(sa or {}))})")

if not ONLY or any(o in "resume" for o in ONLY):  # stopped and resumed on the isolating backend
    a, ra = run("cpu", "resume", 1, GPT + ["--threads", "2"])
    b, rb = run("cpu-isolated", "resume", 1, GPT + ["--threads", "2", "--stop-after", "3"])
    rc = subprocess.run([LOOM, "-q", "train", "--out", b, "--device", "cpu-isolated", "--resume"] + GPT +
                        ["--threads", "2"] + COMMON, env=ENV, capture_output=True, text=True).returncode
    check(ra == 0 and rb == 0 and rc == 0 and numbers(a) == [l for l in numbers(b)],
          "resume: stopped at 3 on cpu-isolated and resumed there equals the straight cpu run")

if not ONLY or any(o in "generate" for o in ONLY):  # the sampled text, token for token
    texts = []
    for device in ("cpu", "cpu-isolated"):
        r = subprocess.run([LOOM, "generate", "--ckpt", os.path.join(W, "cpu", "llama_fp32"), "--device", device,
                            "--max-tokens", "40", "--temperature", "0.9", "--top-k", "20", "--seed", "7",
                            "--tokenizer", "byte", "--no-stop"], capture_output=True)
        texts.append(r.stdout if r.returncode == 0 else None)
    check(texts[0] is not None and texts[0] == texts[1] and len(texts[0]) > 0,
          f"generate: the same {len(texts[0] or b'')} bytes sampled on both backends")

shutil.rmtree(W, ignore_errors=True)
print(f"{fails} failed")
sys.exit(1 if fails else 0)
