#!/usr/bin/env bash
# Issue 4, "across hosts": two ranks in two network namespaces joined only by a veth pair (so MPI's TCP
# transport crosses a real network link, as between two machines) train 20 steps of the demo model with
# ZeRO-2; the losses must be identical to the same 2-rank run on one host (loopback/shared memory).
# Skips (77) with a clear message where namespaces cannot be made (not root, no CAP_SYS_ADMIN, no ip).
set -uo pipefail
LOOM=$(realpath "${1:?usage: test_netns.sh LOOM_BINARY}")
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/netns_mpirun.sh" --check || exit $?
command -v mpirun > /dev/null || { echo "SKIP: mpirun not found"; exit 77; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ARGS=(train --preset demo --steps 20 --batch 8 --seq-len 32 --threads 1 --zero 2 --set train.progress=0)
mpirun --oversubscribe --bind-to none -np 2 "$LOOM" "${ARGS[@]}" --out "$W/loopback" > "$W/loopback.log" 2>&1 \
    || { cat "$W/loopback.log"; echo "FAIL loopback run"; exit 1; }
"$HERE/netns_mpirun.sh" -- "$LOOM" "${ARGS[@]}" --out "$W/netns" > "$W/netns.log" 2> "$W/netns.err" \
    || { cat "$W/netns.log" "$W/netns.err"; echo "FAIL namespace run"; exit 1; }
losses() { grep -o '"loss":[^,]*' "$1/metrics.jsonl"; }
moved=$(sed -n 's/^veth bytes moved: //p' "$W/netns.err")
echo "veth bytes moved: ${moved:-?}"
fail=0
if [ "$(losses "$W/loopback")" = "$(losses "$W/netns")" ] && [ "$(losses "$W/netns" | wc -l)" -eq 20 ]; then
    echo "ok   20 losses identical across namespaces and on one host ($(losses "$W/netns" | tail -1))"
else
    echo "FAIL losses differ:"; paste <(losses "$W/loopback") <(losses "$W/netns")
    fail=1
fi
# ZeRO-2 moves every gradient once (reduce-scatter) and every parameter once (all-gather) per step
if [ "${moved:-0}" -gt 1000000 ]; then echo "ok   the traffic crossed the veth link"; else echo "FAIL no traffic on the veth"; fail=1; fi
grep -q '"world":2' "$W/netns/metrics.jsonl" && echo "ok   2 ranks" || { echo "FAIL not 2 ranks"; fail=1; }
exit $fail
