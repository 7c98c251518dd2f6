#!/bin/bash
# Run PROGRAM as a 2-rank Open MPI job with rank 0 in network namespace A and
# rank 1 in namespace B, joined only by a veth pair (10.77.0.1 <-> 10.77.0.2),
# so MPI traffic really crosses a network link (TCP BTL) instead of shm/loopback.
#
#   usage: tests/netns_mpirun.sh [--check|--shell] -- PROGRAM ARGS...
#   --check : only test whether namespaces can be created (exit 0, or 77 = skip)
#   --shell : run PROGRAM itself inside namespace A (not under mpirun), with the
#             same settings in its environment as OMPI_MCA_* variables, and
#             NSA, NSB (the namespaces = host names) and SUBNET: for a test
#             that launches jobs itself (a supervisor) and cuts the link
#   env MPIRUN_EXTRA_ARGS : extra mpirun arguments (word-split)
#
# Why not "mpirun -np 1 ip netns exec A prog : -np 1 ip netns exec B prog"?
# The ranks reach their local PMIx server (inside mpirun/orted) over TCP on
# 127.0.0.1 (PMIX_SERVER_URI=tcp4://127.0.0.1:port), and loopback is per-netns,
# so MPI_Init dies with "OPAL ERROR: Unreachable in file ext3x_client.c".
# Instead we pretend the namespaces are two hosts: mpirun runs inside A with
# --host A,B and uses this script as its "ssh" (plm_rsh_agent), which starts
# each host's orted inside that namespace. Each rank then talks PMIx to an orted
# in its own namespace, and orted B reaches mpirun over the veth (OOB TCP).
# (mpirun itself must be in A: from the root netns the orteds are unreachable.)
# Exit code: the MPI job's, 77 if namespaces cannot be made.
set -uo pipefail

SUBNET=10.77.0.0/24

# --- rsh-agent mode: called by mpirun as "<self> --rsh-agent [opts] HOST CMD..."
if [[ ${1:-} == --rsh-agent ]]; then
    shift
    while [[ ${1:-} == -* ]]; do shift; done      # ssh-style options, if any
    host=$1; shift                                # host name == namespace name
    # own UTS namespace too, so each rank sees a distinct hostname (like 2 nodes), and its own /dev/shm
    # (ip netns exec gives it a mount namespace): shared memory is per host
    exec ip netns exec "$host" unshare --uts /bin/sh -c "mount -t tmpfs -o size=2g tmpfs /dev/shm && hostname '$host' && $*"
fi

skip() { echo "SKIP: cannot create network namespaces ($*)"; exit 77; }

check=0 shell=0
[[ ${1:-} == --check ]] && { check=1; shift; }
[[ ${1:-} == --shell ]] && { shell=1; shift; }
[[ ${1:-} == -- ]] && shift
[[ $check == 0 && $# == 0 ]] && { echo "usage: $0 [--check] -- PROGRAM ARGS..." >&2; exit 2; }

command -v ip >/dev/null || skip "no 'ip' command"
command -v unshare >/dev/null || skip "no 'unshare' command"
[[ $(id -u) == 0 ]] || skip "not root"

NSA=loomnsA-$$ NSB=loomnsB-$$   # valid hostnames: ORTE rejects "_"
cleanup() { ip netns del "$NSA" 2>/dev/null; ip netns del "$NSB" 2>/dev/null; }
trap cleanup EXIT

err=$(ip netns add "$NSA" 2>&1 && ip netns add "$NSB" 2>&1) || skip "ip netns add: ${err//$'\n'/ }"
# create the veth ends directly inside the namespaces: no name clash between parallel runs
err=$(ip link add veth0 netns "$NSA" type veth peer name veth0 netns "$NSB" 2>&1) ||
    skip "veth: ${err//$'\n'/ }"
ip -n "$NSA" addr add 10.77.0.1/24 dev veth0 && ip -n "$NSB" addr add 10.77.0.2/24 dev veth0 &&
for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up && ip -n "$ns" link set veth0 up; done ||
    skip "configuring veth failed"
[[ $check == 1 ]] && { echo "network namespaces OK"; exit 0; }

command -v mpirun >/dev/null || { echo "SKIP: no mpirun"; exit 77; }

# bytes through A's veth end in both directions (rx of A == tx of B)
veth_bytes() {
    ip netns exec "$NSA" sh -c 'echo $(( $(cat /sys/class/net/veth0/statistics/rx_bytes) + $(cat /sys/class/net/veth0/statistics/tx_bytes) ))'
}

# Root: orted checks this too; the env reaches it through the agent.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
self=$(readlink -f "$0")
if [[ $shell == 1 ]]; then
    export NSA NSB SUBNET OMPI_MCA_plm=rsh OMPI_MCA_plm_rsh_agent="bash $self --rsh-agent" \
        OMPI_MCA_ras=^slurm,gridengine OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self \
        OMPI_MCA_btl_tcp_if_include=$SUBNET OMPI_MCA_oob_tcp_if_include=$SUBNET
    ip netns exec "$NSA" "$@"
    exit $?
fi
before=$(veth_bytes)
echo "veth bytes before: $before" >&2
# plm rsh + our agent: launch one orted per "host" (= namespace), 1 slot each
# ras ^slurm,gridengine: ignore a batch allocation we might be running under
# pml ob1 + btl tcp,self: force the TCP BTL (not UCX/ofi/vader)
# *_if_include SUBNET: use only the veth (IPv4), for MPI data and daemon OOB
# shellcheck disable=SC2086
ip netns exec "$NSA" mpirun \
    --mca plm rsh --mca plm_rsh_agent "bash $self --rsh-agent" --mca ras ^slurm,gridengine \
    --host "$NSA,$NSB" -np 2 \
    --mca pml ob1 --mca btl tcp,self \
    --mca btl_tcp_if_include $SUBNET --mca oob_tcp_if_include $SUBNET \
    ${MPIRUN_EXTRA_ARGS:-} "$@" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null' INT TERM   # let mpirun tear its job down
wait $pid; rc=$?
[[ $rc -gt 128 ]] && kill -0 $pid 2>/dev/null && { wait $pid; rc=$?; }  # interrupted wait
after=$(veth_bytes)
echo "veth bytes after: $after" >&2
echo "veth bytes moved: $((after - before))" >&2
exit $rc
