#!/usr/bin/env bash
# Resume is exact: 2N steps straight equal N steps + resume + N steps, bit for bit (losses and final
# weights), for both model families, with gradient accumulation, on text and synthetic data, and after a
# real SIGINT at an arbitrary step. And --init: a new run from a checkpoint's (or its HF export's) weights.
set -euo pipefail
LOOM=${1:?usage: test_resume.sh LOOM_BINARY}   # LOOM_TEST_DEVICE=cpu-isolated: every run on that backend
dev=(); [[ -n "${LOOM_TEST_DEVICE:-}" ]] && dev=(--device "$LOOM_TEST_DEVICE")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
seq 1 30000 > "$W/corpus.txt"
pass=0 fail=0
check() { if "$@"; then pass=$((pass + 1)); else echo "FAIL: $*"; fail=$((fail + 1)); fi; }
losses() { grep -o '"step":[0-9]*,"loss":[^,]*' "$1"; }

run_case() {
  local name=$1; shift
  local common=(--threads 2 --peak-gflops 100 --steps 8 "$@")
  "$LOOM" -q train "${dev[@]}" "${common[@]}" --out "$W/$name-a" > /dev/null
  "$LOOM" -q train "${dev[@]}" "${common[@]}" --out "$W/$name-b" --stop-after 4 > /dev/null
  "$LOOM" -q train "${dev[@]}" "${common[@]}" --out "$W/$name-b" --resume > /dev/null
  check diff <(losses "$W/$name-a/metrics.jsonl") <(losses "$W/$name-b/metrics.jsonl")
  check cmp "$W/$name-a/checkpoint.bin" "$W/$name-b/checkpoint.bin"
  [[ $(losses "$W/$name-a/metrics.jsonl" | wc -l) -eq 8 ]] || { echo "FAIL: $name expected 8 loss lines"; fail=$((fail + 1)); }
  echo "case $name: $(losses "$W/$name-b/metrics.jsonl" | tail -1)"
}

run_case gpt2 --preset demo --data "$W/corpus.txt" --batch 2 --seq-len 32 --set optim.warmup_steps=2
run_case llama --preset llama-tiny --data synthetic --batch 2 --seq-len 16 --set model.n_layer=2 --set optim.kind=lamb
run_case accum --preset demo --data synthetic --batch 2 --seq-len 16 --grad-accum 2 --optimizer sgd --set optim.nesterov=true
run_case recompute --preset demo --data "$W/corpus.txt" --batch 2 --seq-len 32 --recompute full --optimizer lars

# A real signal: SIGINT after a few steps, then resume; the losses must match the uninterrupted run.
args=(--threads 2 --peak-gflops 100 --preset demo --data "$W/corpus.txt" --batch 4 --seq-len 64 --steps 40)
"$LOOM" -q train "${dev[@]}" "${args[@]}" --out "$W/sig-a" > /dev/null
"$LOOM" -q train "${dev[@]}" "${args[@]}" --out "$W/sig-b" > /dev/null 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  [[ -f "$W/sig-b/metrics.jsonl" && $(wc -l < "$W/sig-b/metrics.jsonl") -ge 3 ]] && break
  sleep 0.05
done
kill -INT "$pid"
set +e; wait "$pid"; rc=$?; set -e
if [[ $rc -eq 0 ]]; then
  echo "note: the run finished before the signal arrived; the resume below is a no-op"
else
  check test "$rc" -eq 130
fi
stopped=$(losses "$W/sig-b/metrics.jsonl" | wc -l)
echo "interrupted after $stopped steps (exit $rc)"
"$LOOM" -q train "${dev[@]}" "${args[@]}" --out "$W/sig-b" --resume > /dev/null
check diff <(losses "$W/sig-a/metrics.jsonl") <(losses "$W/sig-b/metrics.jsonl")
check cmp "$W/sig-a/checkpoint.bin" "$W/sig-b/checkpoint.bin"

# A new run from trained weights (--init, fine-tuning): the model taken from the checkpoint, its weights
# loaded, a fresh optimizer, step count and data position; from the checkpoint and from its Hugging Face
# export alike, bit for bit.
first_loss() { losses "$1" | head -1 | cut -d: -f3; }
fresh=(--threads 2 --peak-gflops 100 --data "$W/corpus.txt" --batch 4 --seq-len 64 --steps 3 --set train.sample_tokens=0)
"$LOOM" -q train "${dev[@]}" "${fresh[@]}" --preset demo --out "$W/init-fresh" > /dev/null
"$LOOM" -q train "${dev[@]}" "${fresh[@]}" --init "$W/sig-a" --out "$W/init-ckpt" > /dev/null
"$LOOM" -q export --ckpt "$W/sig-a" --format hf --out "$W/sig-a-hf" > /dev/null
"$LOOM" -q train "${dev[@]}" "${fresh[@]}" --init "$W/sig-a-hf" --out "$W/init-hf" > /dev/null
f0=$(first_loss "$W/init-fresh/metrics.jsonl") f1=$(first_loss "$W/init-ckpt/metrics.jsonl")
last_a=$(losses "$W/sig-a/metrics.jsonl" | tail -1 | cut -d: -f3)
echo "--init: first loss $f1 (the trained run ended at $last_a; from scratch $f0)"
check awk -v f0="$f0" -v f1="$f1" -v a="$last_a" 'BEGIN{exit !(f1 < f0 - 1.0 && f1 < a + 0.5)}'
check diff <(losses "$W/init-ckpt/metrics.jsonl") <(losses "$W/init-hf/metrics.jsonl")
check test -f "$W/init-hf/init-hf/checkpoint.bin"
"$LOOM" ckpt info "$W/init-ckpt" | grep -q '"step":3,' || { echo "FAIL: --init run's step count is not its own"; fail=$((fail + 1)); }
# its first learning rate is a fresh schedule's (warm-up from the start), not the trained run's
lr() { grep -o '"lr":[^,]*' "$1/metrics.jsonl" | head -1; }
check test "$(lr "$W/init-ckpt")" = "$(lr "$W/init-fresh")"
set +e
"$LOOM" -q train "${fresh[@]}" --init "$W/sig-a" --preset gpt2-l6 --out "$W/init-bad" > "$W/init-bad.log" 2>&1; rc=$?
"$LOOM" -q train "${fresh[@]}" --init "$W/sig-a" --resume --out "$W/init-both" > "$W/init-both.log" 2>&1; rc2=$?
set -e
check test "$rc" -eq 2
check grep -q "belongs to another model" "$W/init-bad.log"
check test "$rc2" -eq 2
check grep -q "give one of them" "$W/init-both.log"

echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
