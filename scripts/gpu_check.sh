#!/usr/bin/env bash
# The CUDA backend on one NVIDIA GPU (H100/H200), in under 10 minutes, from a fresh copy of the repository:
#   1. builds loom with CUDA (cmake finds nvcc: PATH, $CUDACXX or /usr/local/cuda/bin);
#   2. tests/test_backend_ops cuda: every kernel against the CPU backend, within each kernel's tolerance;
#   3. GPT-2 124M (preset gpt2-124m, batch 16 x 1024, bf16) for 50 steps with loom --device cuda, and the same
#      model in PyTorch (bench/gpu_gpt2.py: torch.autocast bf16, eager) from loom's initial weights on loom's
#      batches of a fixed seeded token stream; prints per-step loss agreement, tokens/s, MFU against the GPU's
#      dense bf16 peak and peak GPU memory of both, side by side.
# Needs: the CUDA toolkit (nvcc, cuBLAS; NCCL optional), cmake >= 3.18, a C compiler, python3 with a CUDA build
# of PyTorch. Installs nothing; needs no network.
#
#   scripts/gpu_check.sh                   logs and the summary in $OUT (default /tmp/loom_gpu_check)
# Environment: OUT, WORK (scratch, /tmp/loom_gpu_check_work), BUILD (build-gpu), CUDA_ARCH (90), PYTHON (python3),
#   PEAK_TFLOPS (default: from the GPU's name), STEPS (50), TOL (5e-2, the largest per-step |loss difference|);
#   for a smaller GPU or a dry run: PRESET (gpt2-124m, a gpt2-family preset), BATCH (16), SEQ_LEN (1024),
#   VOCAB (50257: the token stream's vocabulary, at most the preset's).
# Exit status: 0 when every part passed, 1 when a check failed, 2 when a part could not run.
#
# UNVERIFIED: written on a machine without a GPU (the CUDA backend's kernels were checked there only in a CPU
# emulation of the CUDA execution model, not on hardware).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/loom_gpu_check}
BUILD=${BUILD:-$REPO/build-gpu}
CUDA_ARCH=${CUDA_ARCH:-90}
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-50}
TOL=${TOL:-5e-2}
PRESET=${PRESET:-gpt2-124m}
B=${BATCH:-16}
T=${SEQ_LEN:-1024}
VOCAB=${VOCAB:-50257}
SEED=1337
mkdir -p "$OUT"
WORK=${WORK:-/tmp/loom_gpu_check_work} # the token stream and a 1.5 GB checkpoint: kept out of $OUT
rm -rf "$WORK"
mkdir -p "$WORK"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
START=$(date +%s)

say() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$SUMMARY"; }
die() { say "ERROR: $*"; exit 2; }
# run NAME TIMEOUT CMD...: the command's output in $OUT/NAME.log; its status returned (124: timed out)
run() {
    local name=$1 limit=$2
    shift 2
    say "$name: $*  (log: $OUT/$name.log)"
    set +e
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    set -e
    [ $rc -eq 124 ] && say "$name: timed out after ${limit}s"
    return $rc
}
FAILED=()

# ---- 0. the machine ----
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$OUT/env.log" 2>&1 || true
say "GPU: $GPU ($(nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader | head -1))"
if [ -z "${PEAK_TFLOPS:-}" ]; then
    case "$GPU" in # dense bf16 tensor-core peaks (NVIDIA's data sheets, without sparsity)
    *H200*) PEAK_TFLOPS=989 ;;
    *H100*PCIe*) PEAK_TFLOPS=756 ;;
    *H100*NVL*) PEAK_TFLOPS=835 ;;
    *H100*) PEAK_TFLOPS=989 ;; # SXM
    *A100*) PEAK_TFLOPS=312 ;;
    *) PEAK_TFLOPS=0 ;;
    esac
fi
say "bf16 dense peak for MFU: ${PEAK_TFLOPS} TFLOP/s$([ "$PEAK_TFLOPS" = 0 ] && echo ' (unknown GPU: set PEAK_TFLOPS)')"
NVCC=$(command -v nvcc || true)
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
[ -n "$NVCC" ] || die "nvcc not found (PATH or /usr/local/cuda/bin): the CUDA toolkit is needed to build the backend"
say "nvcc: $NVCC ($("$NVCC" --version | tail -1))"
"$PYTHON" - >"$OUT/torch_env.log" 2>&1 <<'EOF' || die "$PYTHON has no CUDA-enabled PyTorch (see $OUT/torch_env.log)"
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
EOF
say "$(cat "$OUT/torch_env.log")"
[ -d "$REPO/.git" ] && say "loom commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"

# ---- 1. build ----
run configure 180 cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLOOM_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DCMAKE_CUDA_COMPILER="$NVCC" || die "configure failed: $OUT/configure.log"
grep -E "^-- loom" "$OUT/configure.log" | tee -a "$SUMMARY" || true
run build 420 cmake --build "$BUILD" -j "$(nproc)" --target loom_cli test_backend_ops loom_cuda ||
    die "build failed: $OUT/build.log"
grep -iE "warning" "$OUT/build.log" | head -20 | tee -a "$SUMMARY" || true
LOOM="$BUILD/loom"
if [ ! -x "$LOOM" ] || [ ! -f "$BUILD/libloom_cuda.so" ]; then die "the build made no $LOOM or $BUILD/libloom_cuda.so"; fi

# ---- 2. every kernel against the CPU ----
if run backend_ops 240 "$BUILD/tests/test_backend_ops" cuda; then
    say "backend_ops: $(tail -1 "$OUT/backend_ops.log")"
else
    FAILED+=(backend_ops)
    say "backend_ops FAILED: $(tail -1 "$OUT/backend_ops.log")"
    grep -E "^FAIL" "$OUT/backend_ops.log" | tee -a "$SUMMARY" || true
fi

# ---- 3. GPT-2 124M ($PRESET): loom and PyTorch from the same weights on the same batches ----
DATA="$WORK/tokens.bin"
run make_data 120 "$PYTHON" "$REPO/bench/gpu_gpt2.py" make-data "$DATA" --tokens 4000000 --vocab "$VOCAB" ||
    die "making the token stream failed: $OUT/make_data.log"
OPT=(--seed "$SEED" --lr 6e-4 --set optim.min_lr=6e-5 --set optim.warmup_steps=0 --set optim.beta1=0.9
    --set optim.beta2=0.95 --set optim.eps=1e-8 --set optim.weight_decay=0.1 --set optim.grad_clip=1
    --set train.val_fraction=0.1)
# loom's initial weights: a step at learning rate 0 changes nothing, so its checkpoint holds them (on the CPU:
# the weights are drawn on the host, the same whichever device trains)
run loom_init 300 "$LOOM" train --preset "$PRESET" --device cpu --data "$DATA" --steps 1 --lr 0 --set optim.min_lr=0 \
    --batch 1 --seq-len 64 --set train.eval_batches=1 --set train.progress=0 --seed "$SEED" --out "$WORK/init" ||
    die "loom's initial-weights run failed: $OUT/loom_init.log"

nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/loom_gpu_mem.csv" 2>/dev/null &
POLL=$!
LOOM_OK=1
run loom_train 360 "$LOOM" train --preset "$PRESET" --device cuda --precision bf16 --data "$DATA" --steps "$STEPS" \
    --batch "$B" --seq-len "$T" "${OPT[@]}" --set train.save_checkpoints=false --set train.eval_batches=1 \
    --set train.progress=0 --set train.log_interval=5 --peak-gflops $((PEAK_TFLOPS * 500)) --out "$WORK/loom" ||
    LOOM_OK=0 # (loom's own MFU takes bf16's peak as 2x --peak-gflops)
kill "$POLL" 2>/dev/null || true
wait "$POLL" 2>/dev/null || true
LOOM_PEAK_MIB=$(sort -n "$OUT/loom_gpu_mem.csv" 2>/dev/null | tail -1 || true)
grep -E "CUDA:|GEMM|precision|model " "$OUT/loom_train.log" | head -6 | tee -a "$SUMMARY" || true
if [ "$LOOM_OK" = 0 ]; then
    FAILED+=(loom_train)
    say "loom_train FAILED:"
    tail -15 "$OUT/loom_train.log" | tee -a "$SUMMARY"
else
    tail -2 "$OUT/loom_train.log" | tee -a "$SUMMARY"
fi

if [ "$LOOM_OK" = 1 ]; then
    set +e
    timeout 360 "$PYTHON" "$REPO/bench/gpu_gpt2.py" train --init "$WORK/init/checkpoint.bin" --data "$DATA" \
        --steps "$STEPS" --batch "$B" --seq-len "$T" --seed "$SEED" --lr 6e-4 --min-lr 6e-5 --warmup 0 \
        --beta1 0.9 --beta2 0.95 --eps 1e-8 --weight-decay 0.1 --grad-clip 1 --val-fraction 0.1 --device cuda \
        --precision bf16 --loom-metrics "$WORK/loom/metrics.jsonl" --loom-gpu-peak-mib "${LOOM_PEAK_MIB:-0}" \
        --peak-tflops "$PEAK_TFLOPS" --tol "$TOL" --summary "$OUT/torch_summary.json" >"$OUT/torch_train.log" 2>&1
    RC=$?
    set -e
    say "PyTorch run and comparison (log: $OUT/torch_train.log):"
    sed -n '/^step   loom loss/,$p' "$OUT/torch_train.log" | tee -a "$SUMMARY"
    if [ $RC -ne 0 ]; then
        FAILED+=(loss_agreement)
        [ $RC -ne 1 ] && tail -15 "$OUT/torch_train.log" | tee -a "$SUMMARY"
    fi
fi

say "total $(($(date +%s) - START)) s; logs in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
    say "FAILED: ${FAILED[*]}"
    exit 1
fi
say "PASS: every kernel within tolerance; loom --device cuda and PyTorch agree within $TOL at every step"
