#!/usr/bin/env bash
# The fuzz test of `loom serve` on a build with AddressSanitizer and UBSan (LOOM_SANITIZE): configures and
# builds BUILD/asan (the CLI only; incremental after the first time), then runs tests/fuzz_serve.py on it.
#   tests/fuzz_serve.sh SOURCE_DIR BUILD_DIR [N_REQUESTS]
set -euo pipefail
src=$1 build=$2 n=${3:-10000}
asan=$build/asan
cmake -S "$src" -B "$asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOOM_SANITIZE=ON -DLOOM_CUDA=OFF > "$asan.configure.log" 2>&1 ||
  { cat "$asan.configure.log"; exit 1; }
cmake --build "$asan" --target loom_cli -j "$(nproc)" > "$asan.build.log" 2>&1 || { tail -50 "$asan.build.log"; exit 1; }
# abort on the first report; leaks are checked at exit; the OpenMP runtime's own allocations are not ours
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:halt_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
exec /usr/bin/python3 -u "$src/tests/fuzz_serve.py" "$asan/loom" "$n"
