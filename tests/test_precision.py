#!/usr/bin/env python3
"""Mixed precision against fp32 (issue 6): the demo model trains 300 steps on real text (Debian's fortunes;
synthetic tokens where absent) in fp32, with --precision bf16 and with --precision fp16 (dynamic loss
scaling) from the same weights and data; every step's loss and the final validation loss must agree within
TOL. Then the loss scaler itself: started far too high (2^40) it overflows, skips those steps and halves
until the gradients fit fp16, then doubles after every window of good steps and overflows again, all in
the metrics' loss_scale history; a run stopped and resumed continues the scale exactly.

Tolerance: bf16 rounds each product's operands to 8 significant bits (relative error 2^-9) while
accumulating in fp32 and keeping fp32 master weights, so the two runs drift apart slowly; measured here the
largest step difference is ~1e-3 on losses of 2.5-5.5. TOL = 2e-2 absolute. A wrong bf16 path (a
transposed operand, a stale weight copy, a dropped beta) moves the loss by more than 0.1 within a few
steps. fp16 keeps 11 significant bits (2^-12) but also rounds every product's result, which bf16 does not;
measured its drift is smaller than bf16's.

Usage: test_precision.py LOOM
"""
import json
import os
import subprocess
import sys
import tempfile

LOOM = os.path.abspath(sys.argv[1])
DEV_ARGS = ["--device", os.environ["LOOM_TEST_DEVICE"]] if os.environ.get("LOOM_TEST_DEVICE") else []
TOL = 2e-2
corpus = "/usr/share/games/fortunes"
data = corpus if os.path.exists(corpus) else "synthetic"
W = tempfile.mkdtemp(prefix="loom_precision_")
runs = {}
for prec in ("fp32", "bf16", "fp16"):
    out = os.path.join(W, prec)
    r = subprocess.run([LOOM, "-q", "train"] + DEV_ARGS + ["--preset", "demo", "--data", data, "--steps", "300", "--batch", "8",
                        "--seq-len", "64", "--threads", "2", "--precision", prec, "--out", out,
                        "--set", "train.progress=0", "--set", "train.sample_tokens=0"], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"FAIL {prec} run: {r.stderr[-800:]}")
        sys.exit(1)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    runs[prec] = ({x["step"]: x["loss"] for x in rows if "loss" in x}, [x["val_loss"] for x in rows if "val_loss" in x][-1])
fails = 0
l32, v32 = runs["fp32"]
for prec in ("bf16", "fp16"):
    l16, v16 = runs[prec]
    d = max(abs(l32[s] - l16[s]) for s in l32)
    ok = len(l32) == 300 and len(l16) == 300 and d <= TOL and abs(v32 - v16) <= TOL and l16[300] < l16[1] - 1.0
    fails += not ok
    print(("ok   " if ok else "FAIL ") + f"{prec} follows fp32 over 300 steps on {data}: largest loss difference "
          f"{d:.2e}, val loss {v16:.4f} vs {v32:.4f} (tolerance {TOL}); loss {l16[1]:.3f} -> {l16[300]:.3f}")

# the dynamic loss scale: too high at first, halved on each overflow (the step skipped), doubled after WINDOW
WINDOW = 10
common = ["--preset", "demo", "--data", data, "--steps", "80", "--batch", "8", "--seq-len", "64", "--threads", "2",
          "--precision", "fp16", "--set", "train.progress=0", "--set", "train.sample_tokens=0",
          "--set", "train.loss_scale=1099511627776", "--set", f"train.loss_scale_window={WINDOW}"]


def scaled_run(name, extra):
    out = os.path.join(W, name)
    r = subprocess.run([LOOM, "-q", "train", "--out", out] + DEV_ARGS + common + extra, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"FAIL {name}: {r.stderr[-600:]}")
        sys.exit(1)
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"loss_scale"' in l]


rows = scaled_run("scale", [])
scales = [r["loss_scale"] for r in rows]
skipped = [r["step"] for r in rows if r["skipped"]]
good = True
for a, b in zip(rows, rows[1:]):  # the rule, step by step
    if a["skipped"]:
        good &= b["loss_scale"] == a["loss_scale"] / 2
    else:
        good &= b["loss_scale"] in (a["loss_scale"], a["loss_scale"] * 2)
first_ok = next(i for i, r in enumerate(rows) if not r["skipped"])
grew = any(b > a for a, b in zip(scales, scales[1:]))
ok = good and first_ok >= 3 and len(skipped) > first_ok and grew and rows[-1]["loss"] < rows[first_ok]["loss"] - 0.5
fails += not ok
print(("ok   " if ok else "FAIL ") + f"loss scale: from 2^40, {first_ok} overflowing steps skipped to "
      f"{scales[first_ok]:g}, then doubled every {WINDOW} good steps and backed off again: {len(skipped)} skipped "
      f"in 80 (steps {skipped[:12]}...), scale history {sorted(set(scales))[:3]}..{max(scales):g}; "
      f"loss {rows[first_ok]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
scaled_run("scale-resumed", ["--stop-after", "37"])
resumed = scaled_run("scale-resumed", ["--resume"])
ok = [(r["loss"], r["loss_scale"]) for r in resumed] == [(r["loss"], r["loss_scale"]) for r in rows]
fails += not ok
print(("ok   " if ok else "FAIL ") + "loss scale: a run stopped at step 37 and resumed continues the same scale and losses")
sys.exit(1 if fails else 0)
