#!/usr/bin/env bash
# Runs a command under the "tuned" PyTorch environment of shared PERFORMANCE.md (the peers' best configuration on
# this machine), changing nothing outside that command:
#   OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (OpenBLAS then picks its AVX-512 kernels), tcmalloc preloaded with
#   TCMALLOC_RELEASE_RATE=0, OMP_WAIT_POLICY=PASSIVE, OMP/OpenBLAS/MKL thread counts set explicitly.
# Usage: bench/peer_env.sh COMMAND [ARGS...]
# Threads: $PEER_THREADS if set, else the value of a --threads N / --threads=N argument, else 2.
set -euo pipefail
if [ $# -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi
threads="${PEER_THREADS:-}"
if [ -z "$threads" ]; then
    prev=""
    for a in "$@"; do
        case "$a" in
            --threads=*) threads="${a#--threads=}" ;;
        esac
        if [ "$prev" = "--threads" ]; then threads="$a"; fi
        prev="$a"
    done
fi
threads="${threads:-2}"
tcm=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
preload="${LD_PRELOAD:-}"
if [ -e "$tcm" ]; then
    preload="$tcm${preload:+:$preload}"
else
    echo "peer_env.sh: warning: $tcm not found (apt-get install libtcmalloc-minimal4); running without it" >&2
fi
exec env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    LD_PRELOAD="$preload" TCMALLOC_RELEASE_RATE=0 OMP_WAIT_POLICY=PASSIVE \
    OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" \
    "$@"
