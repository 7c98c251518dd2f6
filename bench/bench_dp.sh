#!/usr/bin/env bash
# Issue 4, "overlap measured, and faster than the peer": GPT-2 124M, global batch 4 x 64 tokens, synthetic
# data, fp32 AdamW, side by side and alternating (ROUNDS rounds) on this machine:
#   loom  2 ranks x 1 thread, ZeRO-$ZERO, for each dp transport (shm: node-shared memory, loom's default on
#         one node; mpi: MPI's non-blocking collectives) with gradient reductions overlapped with the
#         backward pass, and with them after it (every wait exposed: the communication's full cost)
#   loom  1 rank x 2 threads
#   PyTorch DDP (gloo, 2 ranks x 1 thread, 25 MB buckets, gradient-as-bucket-view; bench/torch_ddp.py in the
#         tuned environment of bench/peer_env.sh)
# Per configuration: median ms/step and tokens/s over the steps after the first of each run; for loom the
# median communication per step, averaged over the ranks, in two parts: "wait" (blocked until peers or MPI
# finish) and "work" (shm: this rank's core summing and copying its peers' bytes; MPI does that work inside
# its waits and tests); for DDP the exposed wait (from the last bucket's launch to the end of backward).
# The share of communication the backward pass hid, per transport:
#   hidden = 1 - (wait + work)(overlapped) / (wait + work)(after backward).
# On a CPU the work runs on the cores that compute, so only waiting can hide behind compute; what the
# node-shared transport gains is less work (one read of each peer byte, no staging copies).
# Usage: bench/bench_dp.sh   (env: ROUNDS=2 STEPS=6 ZERO=1 LOOM=build/loom PYTHON=/usr/bin/python3)
set -uo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2} STEPS=${STEPS:-6} ZERO=${ZERO:-1} LOOM=${LOOM:-build/loom} PYTHON=${PYTHON:-/usr/bin/python3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
ARGS=(-q train --preset gpt2-124m --batch 4 --seq-len 64 --steps "$STEPS" --data synthetic --set train.progress=0
      --set train.sample_tokens=0)
# per-step values of a loom metrics file after the first step: "ms tokens_per_sec comm_wait_ms comm_work_ms"
loom_rows() { grep '"tokens_per_sec"' "$1" | tail -n +2 | sed -E 's/.*"tokens_per_sec":([0-9.]+).*"ms":([0-9.]+).*"comm_wait_ms":([0-9.]+),"comm_work_ms":([0-9.]+).*/\2 \1 \3 \4/'; }
dp_run() { # transport overlap file
    mpirun --oversubscribe --bind-to none -np 2 "$LOOM" "${ARGS[@]}" --threads 1 --zero "$ZERO" \
        --set train.dp_transport="$1" --set train.dp_overlap="$2" --out "$W/o" > "$W/log" 2>&1 \
        && loom_rows "$W/o/metrics.jsonl" >> "$W/$3" || { echo "loom $1 overlap=$2 run failed:" >&2; tail -3 "$W/log" >&2; }
}
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS ..." >&2
    for tp in shm mpi; do
        dp_run "$tp" 1 "${tp}_overlap"
        dp_run "$tp" 0 "${tp}_serial"
    done
    "$LOOM" "${ARGS[@]}" --threads 2 --out "$W/s" > /dev/null 2>&1 && loom_rows "$W/s/metrics.jsonl" >> "$W/loom_single" \
        || echo "loom single-process run failed" >&2
    bench/peer_env.sh "$PYTHON" bench/torch_ddp.py --model gpt2-124m --ranks 2 --threads 1 --batch 4 --seq-len 64 \
        --steps "$((STEPS - 1))" --warmup 1 > "$W/ddp.log" 2>&1 || { echo "torch DDP failed:" >&2; tail -5 "$W/ddp.log" >&2; }
    grep '"tokens_per_sec"' "$W/ddp.log" | grep -v '"warmup": true' | grep -v summary \
        | sed -E 's/.*"ms": ([0-9.]+).*"tokens_per_sec": ([0-9.]+).*/\1 \2 0 0/' >> "$W/ddp"
    grep -o '"comm_wait_ms": [0-9.]*' "$W/ddp.log" | tail -1 | awk '{print $2}' >> "$W/ddp_wait"
done
median() { sort -g | awk '{a[NR] = $1} END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { [ -s "$1" ] && awk -v c="$2" '{print $c}' "$1" | median || echo nan; }
comm() { [ -s "$1" ] && awk '{print $3 + $4}' "$1" | median || echo nan; }
printf '\n%-50s %9s %9s %9s %9s\n' "configuration (GPT-2 124M, B 4, T 64)" "ms/step" "tokens/s" "wait ms" "work ms"
row() { printf '%-50s %9s %9s %9s %9s\n' "$1" "$(col "$2" 1)" "$(col "$2" 2)" "$(col "$2" 3)" "$(col "$2" 4)"; }
for tp in shm mpi; do
    row "loom 2 ranks x 1 thread, ZeRO-$ZERO, $tp, overlapped" "$W/${tp}_overlap"
    row "loom 2 ranks x 1 thread, ZeRO-$ZERO, $tp, after backward" "$W/${tp}_serial"
done
printf '%-50s %9s %9s %9s %9s\n' "loom 1 rank x 2 threads" "$(col "$W/loom_single" 1)" "$(col "$W/loom_single" 2)" "-" "-"
printf '%-50s %9s %9s %9s %9s\n' "PyTorch DDP gloo 2 ranks x 1 thread" "$(col "$W/ddp" 1)" "$(col "$W/ddp" 2)" "$(median < "$W/ddp_wait")" "-"
for tp in shm mpi; do
    awk -v tp="$tp" -v o="$(comm "$W/${tp}_overlap")" -v s="$(comm "$W/${tp}_serial")" 'BEGIN {
        if (s > 0) printf "%s: communication hidden by the backward pass: %.0f%% (%.1f ms per step exposed of %.1f ms)\n", tp, 100 * (1 - o / s), o, s }'
done
awk -v lt="$(col "$W/shm_overlap" 2)" -v mt="$(col "$W/mpi_overlap" 2)" -v pt="$(col "$W/ddp" 2)" 'BEGIN {
    if (pt > 0) { r = lt / pt; printf "loom 2-rank (default transport, shm) / PyTorch DDP tokens/s: %.2fx (bar >= 1.5x): %s\n", r, (r >= 1.5) ? "PASS" : "FAIL"
                  printf "loom 2-rank over MPI collectives / PyTorch DDP tokens/s: %.2fx\n", mt / pt }
}'
