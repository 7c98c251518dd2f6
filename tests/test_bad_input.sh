#!/usr/bin/env bash
# Bad input gets a clear one-line error naming the problem, a non-zero exit, and nothing is overwritten.
set -uo pipefail
# grep -q exits at the first match; under pipefail the writer then dies of SIGPIPE
# and the pipeline fails at random, so read all input and drop it instead.
grepq() { grep "$@" >/dev/null; }
LOOM=${1:?usage: test_bad_input.sh LOOM_BINARY}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
# expect_error NAME PATTERN -- command...: exit code 1, exactly one stderr line, matching PATTERN
expect_error() {
  local name=$1 pattern=$2; shift 3
  "$@" > "$W/out" 2> "$W/err"
  local rc=$? lines
  lines=$(grep -v '^\[loom' "$W/err" | wc -l)
  if [[ $rc -ne 0 && $lines -eq 1 ]] && grep -v '^\[loom' "$W/err" | grepq -iE "$pattern"; then
    pass=$((pass + 1)); echo "ok   $name: $(grep -v '^\[loom' "$W/err")"
  else
    fail=$((fail + 1)); echo "FAIL $name (exit $rc, $lines error lines):"; cat "$W/err"
  fi
}
base=(--threads 2 --peak-gflops 100 --data synthetic --batch 2 --seq-len 16)

printf '{"preset": "demo", "model": {"n_layer": 2,}}' > "$W/trailing_comma.json"
expect_error malformed-json 'trailing_comma.json.*line 1' -- "$LOOM" -q train --config "$W/trailing_comma.json" "${base[@]}" --out "$W/x"
printf '{"model": {"n_layer": "two"}}' > "$W/wrong_type.json"
expect_error wrong-type 'model.n_layer' -- "$LOOM" -q train --config "$W/wrong_type.json" "${base[@]}" --out "$W/x"
printf '{"model": {"d_model": 100, "n_head": 3}}' > "$W/inconsistent.json"
expect_error inconsistent 'd_model \(100\).*divisible.*n_head \(3\)' -- "$LOOM" -q train --config "$W/inconsistent.json" "${base[@]}" --out "$W/x"
printf '{"model": {"n_layers": 2}}' > "$W/unknown_key.json"
expect_error unknown-key-file "unknown config key 'model.n_layers'" -- "$LOOM" -q train --config "$W/unknown_key.json" "${base[@]}" --out "$W/x"
expect_error unknown-key-set "unknown config key 'optim.learning_rate'" -- "$LOOM" -q train --set optim.learning_rate=1 "${base[@]}" --out "$W/x"
expect_error unknown-preset "unknown preset 'gpt5'" -- "$LOOM" -q train --preset gpt5 "${base[@]}" --out "$W/x"
expect_error missing-config "cannot open|No such file" -- "$LOOM" -q train --config "$W/nope.json" "${base[@]}" --out "$W/x"
expect_error bad-number "optim.lr expects a number" -- "$LOOM" -q train --lr fast "${base[@]}" --out "$W/x"
expect_error seq-too-long "train.seq_len" -- "$LOOM" -q train --seq-len 100000 --threads 2 --peak-gflops 100 --out "$W/x"
expect_error missing-data "data source" -- "$LOOM" -q train --data "$W/none.txt" --threads 2 --peak-gflops 100 --out "$W/x"
[[ ! -e "$W/x" ]] && { pass=$((pass + 1)); echo "ok   no run directory was created by the failures above"; } || { fail=$((fail + 1)); echo "FAIL run directory created"; }

# a good run to damage
"$LOOM" -q train --preset demo "${base[@]}" --steps 3 --out "$W/run" > /dev/null || { echo "FAIL: base run"; exit 1; }
cp "$W/run/checkpoint.bin" "$W/good.bin"
sum_before=$(md5sum "$W/run/metrics.jsonl" | cut -d' ' -f1)
resume=("$LOOM" -q train --preset demo "${base[@]}" --steps 6 --out "$W/run" --resume)

head -c 5000 "$W/good.bin" > "$W/run/checkpoint.bin"
expect_error truncated 'truncated' -- "${resume[@]}"
cmp -s <(head -c 5000 "$W/good.bin") "$W/run/checkpoint.bin" && { pass=$((pass + 1)); echo "ok   truncated checkpoint left untouched"; } || { fail=$((fail + 1)); echo "FAIL truncated checkpoint changed"; }

cp "$W/good.bin" "$W/run/checkpoint.bin"
size=$(stat -c %s "$W/good.bin")
printf '\xff' | dd of="$W/run/checkpoint.bin" bs=1 seek=$((size - 100)) conv=notrunc status=none
expect_error checksum 'checksum' -- "${resume[@]}"

# a flipped weight (the params section: the first of three equal flat sections): generation reads the weights
# in pieces, checked once for the whole section
cp "$W/good.bin" "$W/run/checkpoint.bin"
printf '\xff' | dd of="$W/run/checkpoint.bin" bs=1 seek=$((size / 6)) conv=notrunc status=none
expect_error generate-checksum "section 'params' fails its checksum" -- "$LOOM" -q generate --ckpt "$W/run" --prompt hi --max-tokens 2
expect_error generate-kv-dtype "kv-dtype is f32 or bf16, not .f16." -- "$LOOM" -q generate --ckpt "$W/run" --prompt hi --kv-dtype f16

printf 'not a checkpoint at all' > "$W/run/checkpoint.bin"
expect_error not-a-checkpoint 'not a loom checkpoint' -- "${resume[@]}"

cp "$W/good.bin" "$W/run/checkpoint.bin"
expect_error other-shape 'another model: model.n_layer is 4 there and 3' -- "$LOOM" -q train --preset demo "${base[@]}" --steps 6 --out "$W/run" --resume --set model.n_layer=3
expect_error other-optimizer 'optimizer adamw, this run uses sgd' -- "${resume[@]}" --optimizer sgd
expect_error no-checkpoint 'cannot open checkpoint' -- "$LOOM" -q train --preset demo "${base[@]}" --steps 6 --out "$W/empty" --resume

cmp -s "$W/good.bin" "$W/run/checkpoint.bin" && [[ $(md5sum "$W/run/metrics.jsonl" | cut -d' ' -f1) == "$sum_before" ]] \
  && { pass=$((pass + 1)); echo "ok   checkpoint and metrics unchanged by every failed resume"; } \
  || { fail=$((fail + 1)); echo "FAIL a failed resume changed the run directory"; }

expect_error bench-unknown "unknown benchmark" -- "$LOOM" bench nonsense
echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
