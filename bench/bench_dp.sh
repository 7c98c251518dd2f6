#!/usr/bin/env bash
# Issue 4, "overlap measured, and faster than the peer": GPT-2 124M, global batch 4 x 64 tokens, synthetic
# data, fp32 AdamW, side by side and alternating (ROUNDS rounds) on this machine:
#   loom  2 ranks x 1 thread, ZeRO-$ZERO, gradient reductions overlapped with the backward pass
#   loom  2 ranks x 1 thread, ZeRO-$ZERO, reductions after the backward pass (every wait exposed: the
#         communication's full cost, against which the overlapped run's exposed wait is compared)
#   loom  1 rank x 2 threads
#   PyTorch DDP (gloo, 2 ranks x 1 thread, 25 MB buckets, gradient-as-bucket-view; bench/torch_ddp.py in the
#         tuned environment of bench/peer_env.sh)
# Per configuration: median ms/step and tokens/s over the steps after the first of each run, the median
# exposed communication wait per step (loom: time blocked in MPI waits; DDP: from the last bucket's launch to
# the end of backward), and for loom the share of communication the backward pass hid:
#   hidden = 1 - wait(overlapped) / wait(not overlapped).
# Usage: bench/bench_dp.sh   (env: ROUNDS=2 STEPS=6 ZERO=1 LOOM=build/loom PYTHON=/usr/bin/python3)
set -uo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2} STEPS=${STEPS:-6} ZERO=${ZERO:-1} LOOM=${LOOM:-build/loom} PYTHON=${PYTHON:-/usr/bin/python3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
ARGS=(-q train --preset gpt2-124m --batch 4 --seq-len 64 --steps "$STEPS" --data synthetic --set train.progress=0
      --set train.sample_tokens=0)
# per-step values of a loom metrics file after the first step: "ms tokens_per_sec comm_wait_ms"
loom_rows() { grep '"tokens_per_sec"' "$1" | tail -n +2 | sed -E 's/.*"tokens_per_sec":([0-9.]+).*"ms":([0-9.]+).*"comm_wait_ms":([0-9.]+).*/\2 \1 \3/'; }
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS ..." >&2
    mpirun --oversubscribe --bind-to none -np 2 "$LOOM" "${ARGS[@]}" --threads 1 --zero "$ZERO" --out "$W/o" > /dev/null 2>&1 \
        && loom_rows "$W/o/metrics.jsonl" >> "$W/loom_overlap" || echo "loom overlapped run failed" >&2
    mpirun --oversubscribe --bind-to none -np 2 "$LOOM" "${ARGS[@]}" --threads 1 --zero "$ZERO" --set train.dp_overlap=0 \
        --out "$W/n" > /dev/null 2>&1 && loom_rows "$W/n/metrics.jsonl" >> "$W/loom_serial" || echo "loom serial run failed" >&2
    "$LOOM" "${ARGS[@]}" --threads 2 --out "$W/s" > /dev/null 2>&1 && loom_rows "$W/s/metrics.jsonl" >> "$W/loom_single" \
        || echo "loom single-process run failed" >&2
    bench/peer_env.sh "$PYTHON" bench/torch_ddp.py --model gpt2-124m --ranks 2 --threads 1 --batch 4 --seq-len 64 \
        --steps "$((STEPS - 1))" --warmup 1 > "$W/ddp.log" 2>&1 || { echo "torch DDP failed:" >&2; tail -5 "$W/ddp.log" >&2; }
    grep '"tokens_per_sec"' "$W/ddp.log" | grep -v '"warmup": true' | grep -v summary \
        | sed -E 's/.*"ms": ([0-9.]+).*"tokens_per_sec": ([0-9.]+).*/\1 \2 0/' >> "$W/ddp"
    grep -o '"comm_wait_ms": [0-9.]*' "$W/ddp.log" | tail -1 | awk '{print $2}' >> "$W/ddp_wait"
done
median() { sort -g | awk '{a[NR] = $1} END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { [ -s "$1" ] && awk -v c="$2" '{print $c}' "$1" | median || echo nan; }
printf '\n%-44s %10s %10s %16s\n' "configuration (GPT-2 124M, B 4, T 64)" "ms/step" "tokens/s" "exposed comm ms"
printf '%-44s %10s %10s %16s\n' "loom 2 ranks x 1 thread, ZeRO-$ZERO, overlapped" "$(col "$W/loom_overlap" 1)" "$(col "$W/loom_overlap" 2)" "$(col "$W/loom_overlap" 3)"
printf '%-44s %10s %10s %16s\n' "loom 2 ranks x 1 thread, ZeRO-$ZERO, after backward" "$(col "$W/loom_serial" 1)" "$(col "$W/loom_serial" 2)" "$(col "$W/loom_serial" 3)"
printf '%-44s %10s %10s %16s\n' "loom 1 rank x 2 threads" "$(col "$W/loom_single" 1)" "$(col "$W/loom_single" 2)" "-"
printf '%-44s %10s %10s %16s\n' "PyTorch DDP gloo 2 ranks x 1 thread" "$(col "$W/ddp" 1)" "$(col "$W/ddp" 2)" "$(median < "$W/ddp_wait")"
awk -v o="$(col "$W/loom_overlap" 3)" -v s="$(col "$W/loom_serial" 3)" -v lt="$(col "$W/loom_overlap" 2)" -v pt="$(col "$W/ddp" 2)" 'BEGIN {
    if (s > 0) printf "communication hidden by the backward pass: %.0f%% (exposed %.1f ms of %.1f ms)\n", 100 * (1 - o / s), o, s
    if (pt > 0) { r = lt / pt; printf "loom 2-rank / PyTorch DDP tokens/s: %.2fx (bar >= 1.5x): %s\n", r, (r >= 1.5) ? "PASS" : "FAIL" }
}'
