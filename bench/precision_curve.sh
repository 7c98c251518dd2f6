#!/usr/bin/env bash
# Issue 6, "bf16 follows the fp32 loss curve": trains PRESET for STEPS steps in fp32 and with --precision bf16
# from the same weights and data (Debian's fortunes, or synthetic tokens where absent), then prints the
# largest per-step loss difference, the final validation losses and each run's median tokens/s.
# Usage: bench/precision_curve.sh [PRESET] [STEPS]   (default gpt2-124m 300; env LOOM, BATCH=4, SEQ=64, THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-gpt2-124m} STEPS=${2:-300} LOOM=${LOOM:-build/loom} BATCH=${BATCH:-4} SEQ=${SEQ:-64} THREADS=${THREADS:-2}
DATA=/usr/share/games/fortunes
[ -e "$DATA" ] || DATA=synthetic
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
for p in fp32 bf16; do
    "$LOOM" -q train --preset "$PRESET" --data "$DATA" --steps "$STEPS" --batch "$BATCH" --seq-len "$SEQ" \
        --threads "$THREADS" --precision "$p" --out "$W/$p" --set train.progress=0 --set train.sample_tokens=0 \
        --set train.eval_interval=100 > "$W/$p.log" 2>&1 || { echo "$p run failed:"; tail -5 "$W/$p.log"; exit 1; }
done
python3 - "$W" "$PRESET" "$STEPS" "$DATA" <<'PY'
import json, statistics, sys
w, preset, steps, data = sys.argv[1:]
r = {}
for p in ("fp32", "bf16"):
    rows = [json.loads(l) for l in open(f"{w}/{p}/metrics.jsonl")]
    r[p] = ({x["step"]: x["loss"] for x in rows if "loss" in x}, {x["step"]: x["val_loss"] for x in rows if "val_loss" in x},
            statistics.median(x["tokens_per_sec"] for x in rows if "tokens_per_sec" in x))
d = max(abs(r["fp32"][0][s] - r["bf16"][0][s]) for s in r["fp32"][0])
print(f"{preset}, {steps} steps on {data}: largest per-step loss difference bf16 - fp32 = {d:.2e}")
for s in sorted(r["fp32"][1]):
    print(f"  step {s}: val loss fp32 {r['fp32'][1][s]:.4f}, bf16 {r['bf16'][1][s]:.4f}")
print(f"  loss {r['bf16'][0][1]:.3f} -> {r['bf16'][0][int(steps)]:.3f} (bf16); tokens/s fp32 {r['fp32'][2]:.0f}, "
      f"bf16 {r['bf16'][2]:.0f} ({r['bf16'][2] / r['fp32'][2]:.2f}x)")
PY
