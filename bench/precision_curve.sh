#!/usr/bin/env bash
# Issue 6, "bf16 (and fp16 with loss scaling) follow the fp32 loss curve": trains PRESET for STEPS steps in
# fp32 and in each of PRECS (default "bf16 fp16") from the same weights and data (Debian's fortunes, or
# synthetic tokens where absent), then prints the largest per-step loss difference, the validation losses,
# each run's median tokens/s and, for fp16, the loss scale's history (skipped steps).
# Usage: bench/precision_curve.sh [PRESET] [STEPS]   (default gpt2-124m 300; env LOOM, BATCH=4, SEQ=64, THREADS=2,
#        PRECS)
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-gpt2-124m} STEPS=${2:-300} LOOM=${LOOM:-build/loom} BATCH=${BATCH:-4} SEQ=${SEQ:-64} THREADS=${THREADS:-2} PRECS=${PRECS:-bf16 fp16}
DATA=/usr/share/games/fortunes
[ -e "$DATA" ] || DATA=synthetic
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
for p in fp32 $PRECS; do
    "$LOOM" -q train --preset "$PRESET" --data "$DATA" --steps "$STEPS" --batch "$BATCH" --seq-len "$SEQ" \
        --threads "$THREADS" --precision "$p" --out "$W/$p" --set train.progress=0 --set train.sample_tokens=0 \
        --set train.eval_interval=100 > "$W/$p.log" 2>&1 || { echo "$p run failed:"; tail -5 "$W/$p.log"; exit 1; }
done
python3 - "$W" "$PRESET" "$STEPS" "$DATA" $PRECS <<'PY'
import json, statistics, sys
w, preset, steps, data, *precs = sys.argv[1:]
r, scale = {}, {}
for p in ["fp32"] + precs:
    rows = [json.loads(l) for l in open(f"{w}/{p}/metrics.jsonl")]
    r[p] = ({x["step"]: x["loss"] for x in rows if "loss" in x}, {x["step"]: x["val_loss"] for x in rows if "val_loss" in x},
            statistics.median(x["tokens_per_sec"] for x in rows if "tokens_per_sec" in x))
    scale[p] = [(x["step"], x["loss_scale"], x["skipped"]) for x in rows if "loss_scale" in x]
for p in precs:
    d = max(abs(r["fp32"][0][s] - r[p][0][s]) for s in r["fp32"][0])
    print(f"{preset}, {steps} steps on {data}: largest per-step loss difference {p} - fp32 = {d:.2e}")
    for s in sorted(r["fp32"][1]):
        print(f"  step {s}: val loss fp32 {r['fp32'][1][s]:.4f}, {p} {r[p][1][s]:.4f}")
    print(f"  loss {r[p][0][1]:.3f} -> {r[p][0][int(steps)]:.3f} ({p}); tokens/s fp32 {r['fp32'][2]:.0f}, "
          f"{p} {r[p][2]:.0f} ({r[p][2] / r['fp32'][2]:.2f}x)")
    if scale[p]:
        skipped = [s for s, _, k in scale[p] if k]
        changes = [(s, v) for (s, v, _), (_, u, _) in zip(scale[p], [(0, None, 0)] + scale[p]) if v != u]
        print(f"  loss scale history (step, scale) where it changed: {changes}; skipped steps: {skipped}")
PY
