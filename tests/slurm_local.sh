#!/usr/bin/env bash
# A private one-node Slurm cluster for tests: its own munge daemon and key, slurmctld and slurmd on free
# ports, every file under DIR, nothing in /etc touched, so it runs beside a real Slurm and leaves nothing.
#   tests/slurm_local.sh start DIR     starts the daemons, waits until the node is idle; prints the
#                                      environment to use it (SLURM_CONF=DIR/slurm.conf)
#   tests/slurm_local.sh stop DIR      stops them (and any job left), keeps DIR for the logs
# Needs root and Debian's slurmctld, slurmd, slurm-client and munge. Exit 77 when they are not installed.
set -euo pipefail
cmd=${1:?usage: slurm_local.sh start|stop DIR}
dir=${2:?usage: slurm_local.sh start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop() {
  for d in slurmd slurmctld munged; do
    [[ -f "$dir/$d.pid" ]] && kill "$(cat "$dir/$d.pid")" 2> /dev/null || true
  done
  for _ in $(seq 50); do # up to 5 s for a clean exit, then SIGKILL
    alive=0
    for d in slurmd slurmctld munged; do
      [[ -f "$dir/$d.pid" ]] && kill -0 "$(cat "$dir/$d.pid")" 2> /dev/null && alive=1
    done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for d in slurmd slurmctld munged; do
    [[ -f "$dir/$d.pid" ]] && kill -9 "$(cat "$dir/$d.pid")" 2> /dev/null || true
    rm -f "$dir/$d.pid"
  done
  # job steps outlive slurmd (slurmstepd): end those of this cluster
  pkill -9 -f "slurmstepd.*$dir" 2> /dev/null || true
}

if [[ $cmd == stop ]]; then
  stop
  exit 0
fi
[[ $cmd == start ]] || { echo "slurm_local.sh: start or stop" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "SKIP: slurm_local.sh needs root"; exit 77; }
for b in munged mungekey slurmctld slurmd srun sinfo; do
  command -v "$b" > /dev/null || { echo "SKIP: $b not installed (apt-get install slurmctld slurmd slurm-client munge)"; exit 77; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
node=$(hostname -s)
cpus=$(nproc)
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir" "$dir/munge"
rm -f "$dir/munge/munge.key"
mungekey --create --keyfile="$dir/munge/munge.key" > /dev/null
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"
cat > "$dir/slurm.conf" << EOF
ClusterName=loomtest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=pmix
ReturnToService=2
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 CPUs=$((cpus < 4 ? 4 : cpus)) RealMemory=1000 State=UNKNOWN
PartitionName=loom Nodes=$node Default=YES MaxTime=INFINITE OverSubscribe=YES State=UP
EOF
export SLURM_CONF=$dir/slurm.conf
slurmctld -i
slurmd
for _ in $(seq 100); do # the node up and idle: up to 20 s
  state=$(sinfo -h -n "$node" -o %t 2> /dev/null || true)
  [[ $state == idle ]] && { echo "SLURM_CONF=$dir/slurm.conf"; exit 0; }
  sleep 0.2
done
echo "slurm_local.sh: the node did not become idle (state '${state:-}'); logs in $dir" >&2
tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
stop
exit 1
