#!/usr/bin/env bash
# The CLI as a user meets it: --version, every --help, a short training run whose metrics have the keys
# scripts rely on, a config file with --set overrides, bench peak's last line.
set -uo pipefail
# grep -q exits at the first match; under pipefail the writer then dies of SIGPIPE
# and the pipeline fails at random, so read all input and drop it instead.
grepq() { grep "$@" >/dev/null; }
LOOM=${1:?usage: test_cli.sh LOOM_BINARY}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
"$LOOM" --version | grepq -E '^loom [0-9]+\.[0-9]+' && ok version || bad version
for c in train bench ckpt; do "$LOOM" $c --help | grepq usage && ok "help $c" || bad "help $c"; done
"$LOOM" train --help | grepq 'optim.weight_decay' && ok "help lists config keys" || bad "help lists keys"

cat > "$W/cfg.json" <<'JSON'
{"preset": "llama-tiny", "model": {"n_layer": 2}, "optim": {"kind": "adamw", "lr": 0.001}, "train": {"eval_interval": 3}}
JSON
"$LOOM" -q train --config "$W/cfg.json" --set model.d_model=128 --data synthetic --steps 6 --batch 2 --seq-len 16 \
  --threads 2 --peak-gflops 50 --out "$W/run" > "$W/out" || bad "train with config"
m="$W/run/metrics.jsonl"
for k in step loss lr grad_norm tokens_per_sec mfu mem_peak_bytes; do
  [[ $(grep -c "\"$k\":" "$m") -ge 6 ]] && ok "metrics key $k" || bad "metrics key $k"
done
[[ $(grep -c '"val_loss"' "$m") -eq 2 ]] && ok "validation lines" || bad "validation lines"
"$LOOM" ckpt info "$W/run" | grepq '"d_model":128' && ok "config file + --set reached the model" || bad "config/--set"
"$LOOM" ckpt info "$W/run" | grepq '"n_layer":2' && ok "config file n_layer" || bad "config n_layer"
# learning on real text: the loss must fall
seq 1 20000 | tr '\n' ' ' > "$W/text.txt"
"$LOOM" -q train --preset demo --data "$W/text.txt" --steps 60 --batch 8 --seq-len 64 --lr 3e-3 --threads 2 \
  --peak-gflops 50 --out "$W/learn" > /dev/null || bad "demo train"
first=$(grep '"loss"' "$W/learn/metrics.jsonl" | head -1 | grep -o '"loss":[0-9.e+-]*' | cut -d: -f2)
last=$(grep '"loss"' "$W/learn/metrics.jsonl" | tail -1 | grep -o '"loss":[0-9.e+-]*' | cut -d: -f2)
awk -v a="$first" -v b="$last" 'BEGIN{exit !(b < a - 1.0)}' && ok "loss falls ($first -> $last)" || bad "loss did not fall ($first -> $last)"
export LOOM_CACHE_DIR="$W/cache" # this test's own peaks
"$LOOM" bench peak --threads 1 --quick > "$W/peak" && tail -1 "$W/peak" | grepq -E '^peak_gflops=[0-9]+(\.[0-9]+)?$' \
  && ok "bench peak: $(tail -1 "$W/peak")" || bad "bench peak"
tail -2 "$W/peak" | head -1 | grepq -E '^peak_bf16_gflops=[0-9]+(\.[0-9]+)?$' && ok "bench peak: $(tail -2 "$W/peak" | head -1)" \
  || bad "bench peak: no bf16 peak"
# the bf16 layer stack, B packed against plain B in one process (a benchmark: only its form is checked here)
"$LOOM" bench gemm --stack --threads 1 --quick > "$W/stack" && tail -1 "$W/stack" | grepq -E '^packed/plain speed [0-9]+\.[0-9]+x$' \
  && ok "bench gemm --stack: $(tail -1 "$W/stack")" || bad "bench gemm --stack: $(tail -3 "$W/stack")"
# the serving kernels beside their peers (a benchmark: only its form is checked): 8 attention lines, 2 serving
# steps' batches of them, 12 products; from memory against a plain read of the same bytes, a decoding row's
# weights in each precision and a serving step's attention with each cache type
"$LOOM" bench decode --threads 1 --quick > "$W/decode" \
  && [ "$(grep -cE '^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+  (f32|bf16) +[0-9.]+ +[0-9.]+' "$W/decode")" = 8 ] \
  && [ "$(grep -cE '^ +(64|512) +[0-9]+ +[0-9]+ +(fp32|bf16) +[0-9.]+ +[0-9.]+ +[0-9.]+x$' "$W/decode")" = 12 ] \
  && [ "$(grep -cE '^ +(fp32|f32|bf16) +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+x$' "$W/decode")" = 4 ] \
  && grep -qE '^a serving step.s attention from memory: 64 sequences of 1 row over 80 positions' "$W/decode" \
  && [ "$(grep -cE '^a serving step.s attention, 16 sequences .*: one by one [0-9.]+ ms, one batch [0-9.]+ ms \([0-9.]+x\)$' "$W/decode")" = 2 ] \
  && ok "bench decode: $(grep -E '^ +512 +512 +12 +12  f32' "$W/decode" | tr -s ' ')" || bad "bench decode: $(tail -5 "$W/decode")"
# MFU in each precision against that precision's cached peak: a cache with peaks far from 2:1 (as on AMX),
# so that a bf16 MFU against twice the fp32 peak would show
# (the bf16 GEMM's name as bench peak cached it: a cache naming another bf16 GEMM is measured again, below)
pf=100.0 pb=700.0
bk=$(grep '^bf16_kernel=' "$LOOM_CACHE_DIR/peak-1threads.txt") fk=$(grep '^kernel=' "$LOOM_CACHE_DIR/peak-1threads.txt")
cl=$(grep '^cpu=' "$LOOM_CACHE_DIR/peak-1threads.txt") # the CPU model the peaks belong to
[ -n "$cl" ] && ok "bench peak records the CPU model: $cl" || bad "bench peak: no cpu= line in its cache"
# a peak is the best rate measured on this CPU: a lower measurement keeps the cached one; --reset replaces it
printf 'peak_gflops=99999\n%s\npeak_bf16_gflops=99999\n%s\nthreads=1\n%s\n' "$fk" "$bk" "$cl" > "$LOOM_CACHE_DIR/peak-1threads.txt"
"$LOOM" bench peak --threads 1 --quick > "$W/peak-keep" && grepq -F "fp32: kept the cached 99999.0" "$W/peak-keep" \
  && grepq -F "bf16: kept the cached 99999.0" "$W/peak-keep" && [ "$(tail -1 "$W/peak-keep")" = "peak_gflops=99999.0" ] \
  && ok "bench peak keeps a higher cached peak of this CPU" || bad "bench peak lowered the cached peak: $(tail -4 "$W/peak-keep")"
"$LOOM" bench peak --threads 1 --quick --reset > "$W/peak-reset" && ! grepq -F "kept the cached" "$W/peak-reset" \
  && [ "$(tail -1 "$W/peak-reset")" != "peak_gflops=99999.0" ] && ok "bench peak --reset replaces it: $(tail -1 "$W/peak-reset")" \
  || bad "bench peak --reset kept the cached peak"
# a cache from another CPU model (a home directory shared by several kinds of machine) is measured again
printf 'peak_gflops=99999\n%s\npeak_bf16_gflops=99999\n%s\nthreads=1\ncpu=Another CPU\n' "$fk" "$bk" > "$LOOM_CACHE_DIR/peak-1threads.txt"
"$LOOM" train --preset demo --data synthetic --steps 1 --batch 2 --seq-len 16 --threads 1 \
  --set train.save_checkpoints=false --set train.sample_tokens=0 --out "$W/mfu-cpu" > "$W/mfu-cpu.log" 2>&1 || bad "train cpu"
grepq -F "measured on another CPU (Another CPU" "$W/mfu-cpu.log" && ! grepq -F "peak of 99999" "$W/mfu-cpu.log" \
  && grepq -F "$cl" "$LOOM_CACHE_DIR/peak-1threads.txt" && ok "peaks cached on another CPU model are measured again" \
  || bad "another CPU's peaks used: $(grep -o 'MFU against.*' "$W/mfu-cpu.log")"
printf 'peak_gflops=%s\nkernel=test fp32\npeak_bf16_gflops=%s\n%s\nthreads=1\n%s\n' "$pf" "$pb" "$bk" "$cl" \
  > "$LOOM_CACHE_DIR/peak-1threads.txt"
for p in fp32 bf16; do
  "$LOOM" train --preset demo --data synthetic --steps 3 --batch 2 --seq-len 16 --threads 1 --precision $p \
    --set train.save_checkpoints=false --set train.sample_tokens=0 --out "$W/mfu-$p" > "$W/mfu-$p.log" 2>&1 || bad "train $p"
done
grepq -F "peak of $pf GFLOP/s per rank (fp32 " "$W/mfu-fp32.log" && ok "fp32 run: MFU against the fp32 peak $pf" \
  || bad "fp32 run does not say it uses the fp32 peak $pf: $(grep -o 'MFU against.*' "$W/mfu-fp32.log")"
grepq -F "peak of $pb GFLOP/s per rank (bf16 " "$W/mfu-bf16.log" && ok "bf16 run: MFU against the bf16 peak $pb" \
  || bad "bf16 run does not say it uses the bf16 peak $pb: $(grep -o 'MFU against.*' "$W/mfu-bf16.log")"
# mfu / tokens_per_sec = FLOPs per token / peak: the same model, so (mfu / tokens_per_sec) x peak agrees
ratio() { grep '"mfu"' "$W/mfu-$1/metrics.jsonl" | tail -1 | tr ',' '\n' | awk -F: -v p="$2" '/"mfu"/{m=$2} /"tokens_per_sec"/{t=$2} END{printf "%.6g", m / t * p}'; }
rf=$(ratio fp32 "$pf") rb=$(ratio bf16 "$pb")
awk -v a="$rf" -v b="$rb" 'BEGIN{d = a / b - 1; exit !(a > 0 && d < 0.05 && d > -0.05)}' \
  && ok "mfu x peak / tokens_per_sec agrees across precisions ($rf, $rb GFLOP/token)" \
  || bad "mfu not against each precision's peak: ($rf, $rb)"
# a peak below the run's own rate (measured in a slow minute) gives an MFU above 100%: the run says so, once
printf 'peak_gflops=0.01\n%s\npeak_bf16_gflops=0.01\n%s\nthreads=1\n%s\n' "$fk" "$bk" "$cl" > "$LOOM_CACHE_DIR/peak-1threads.txt"
"$LOOM" train --preset demo --data synthetic --steps 2 --batch 2 --seq-len 16 --threads 1 \
  --set train.save_checkpoints=false --set train.sample_tokens=0 --out "$W/mfu-over" > "$W/mfu-over.log" 2>&1 || bad "train over"
[ "$(grep -c 'below this run.s own rate' "$W/mfu-over.log")" = 1 ] && grepq -F "loom bench peak --reset" "$W/mfu-over.log" \
  && ok "an MFU above 100% is called out once" || bad "MFU above 100% not called out: $(grep -i mfu "$W/mfu-over.log" | head -3)"
# a cached bf16 peak measured with another bf16 GEMM (libdnnl installed or removed since) is not this run's
printf 'peak_gflops=%s\nkernel=test fp32\npeak_bf16_gflops=%s\nbf16_kernel=test bf16\nthreads=1\n%s\n' "$pf" "$pb" "$cl" \
  > "$LOOM_CACHE_DIR/peak-1threads.txt"
"$LOOM" train --preset demo --data synthetic --steps 1 --batch 2 --seq-len 16 --threads 1 --precision bf16 \
  --set train.save_checkpoints=false --set train.sample_tokens=0 --out "$W/mfu-stale" > "$W/mfu-stale.log" 2>&1 || bad "train stale"
grepq -F "measured with another bf16 GEMM (test bf16)" "$W/mfu-stale.log" && ! grepq -F "peak of $pb GFLOP/s" "$W/mfu-stale.log" \
  && grepq -F "$bk" "$LOOM_CACHE_DIR/peak-1threads.txt" && ok "a cached bf16 peak of another bf16 GEMM is measured again" \
  || bad "stale bf16 peak kept: $(grep -o 'MFU against.*' "$W/mfu-stale.log")"
# memory outside the categories is reported: the bf16 reference GEMM's operands, where the CPU runs that path
if grepq -F "bf16 reference (" "$W/mfu-bf16.log"; then
  grepq -E "besides these, the backend's own buffers: [0-9.]+ MiB" "$W/mfu-bf16.log" \
    && ok "bf16 on the reference GEMM reports its own buffers" || bad "bf16 reference buffers not reported"
else
  ! grepq -F "the backend's own buffers" "$W/mfu-bf16.log" && ok "bf16 on oneDNN: no backend buffers to report" \
    || bad "backend buffers reported without the reference GEMM"
fi
! grepq -F "the backend's own buffers" "$W/mfu-fp32.log" && ok "fp32: no backend buffers to report" \
  || bad "fp32 run reports backend buffers"
echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
