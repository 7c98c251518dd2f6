#!/usr/bin/env bash
# The CUDA backend's kernels without a GPU: builds the module from src/backend/cuda/ against a CPU emulation of
# the CUDA execution model (emu.h, emu_runtime.cpp: fibers for threads, barriers, warp shuffles, shared memory;
# host memory standing in for device memory, every kernel's pointers checked to be device memory; a reference
# cuBLAS) and runs a loom program on it through LOOM_CUDA_LIBRARY. Slow (a training step of the demo model
# takes ~30 s) but it runs the real kernel code, so indexing, masking, reductions and the host code around them
# can be checked here; it says nothing about speed, real asynchrony or hardware limits (see emu.h).
#
#   tests/cuda_emu/run.sh [BUILD]                      test_backend_ops cuda (default BUILD: build)
#   tests/cuda_emu/run.sh BUILD CMD ARGS...            CMD with the emulated module, e.g.
#   tests/cuda_emu/run.sh build build/loom train --device cuda --preset demo --steps 2 --batch 2 --seq-len 32
# Needs g++ (C++17), python3 and the CUDA toolkit's headers (CUDA_INC, default /usr/local/cuda/include).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=$(cd "${1:-$REPO/build}" && pwd)
shift || true
CUDA_INC=${CUDA_INC:-/usr/local/cuda/include}
WORK="$BUILD/cuda-emu"
mkdir -p "$WORK/obj"
INC=(-I"$REPO/include" -I"$REPO/src" -I"$CUDA_INC" -DLOOM_HAVE_CUDA=1)
# the .cu files as C++ (launches rewritten), with cuda_impl.h's relative include made absolute
python3 "$HERE/transform.py" "$REPO/src/backend/cuda/cuda_kernels.cuh" "$WORK/obj/cuda_kernels.cuh"
sed 's#"../backend_impl.h"#"backend/backend_impl.h"#' "$REPO/src/backend/cuda/cuda_impl.h" >"$WORK/obj/cuda_impl.h"
pids=()
for f in "$REPO"/src/backend/cuda/*.cu; do
    b=$(basename "$f" .cu)
    python3 "$HERE/transform.py" "$f" "$WORK/obj/$b.cpp"
    g++ -std=c++17 -O1 -g -fPIC -w "${INC[@]}" -I"$WORK/obj" -include "$HERE/emu.h" -c "$WORK/obj/$b.cpp" \
        -o "$WORK/obj/$b.o" &
    pids+=($!)
done
for f in "$REPO"/src/backend/cuda/*.c; do
    gcc -std=gnu11 -O1 -g -fPIC -Wall -Wextra "${INC[@]}" -c "$f" -o "$WORK/obj/$(basename "$f" .c).o" &
    pids+=($!)
done
g++ -std=c++17 -O1 -g -fPIC -Wall -I"$CUDA_INC" -c "$HERE/emu_runtime.cpp" -o "$WORK/obj/emu_runtime.o" &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
g++ -shared -o "$WORK/libloom_cuda_emu.so" "$WORK"/obj/*.o
echo "emu: built $WORK/libloom_cuda_emu.so" >&2
export LOOM_CUDA_LIBRARY="$WORK/libloom_cuda_emu.so"
if [ $# -gt 0 ]; then exec "$@"; fi
exec "$BUILD/tests/test_backend_ops" cuda
