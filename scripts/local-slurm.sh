#!/usr/bin/env bash
# A one-node Slurm cluster on 127.0.0.1 for tests and the embedded default (no systemd, no
# cgroups, no accounting). Everything it writes lives under $LOCAL_SLURM_DIR.
#
#   scripts/local-slurm.sh install  install the Debian packages if missing (root)
#   scripts/local-slurm.sh start    install the Debian packages if missing, start munged,
#                                   slurmctld and slurmd; wait until the node is idle
#   scripts/local-slurm.sh stop     stop the three daemons
#   scripts/local-slurm.sh status   say whether it runs; print the SLURM_CONF to export
#
# Slurm's client commands (sbatch, squeue, and so Parsl's SlurmProvider) find this cluster
# through SLURM_CONF=$LOCAL_SLURM_DIR/slurm.conf.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${LOCAL_SLURM_DIR:-$ROOT/.state/slurm}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
CONF=$DIR/slurm.conf
CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-6818}
NODE=$(hostname -s)
export SLURM_CONF=$CONF

log() { echo "local-slurm: $*" >&2; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null && return
    if [ "$(id -u)" != 0 ]; then
        log "slurmctld, slurmd, slurm-client and munge are missing; install them as root:"
        log "  apt-get install -y slurmctld slurmd slurm-client munge"
        exit 1
    fi
    log "installing slurmctld slurmd slurm-client munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    # Another apt user (scripts/service-packages.sh) may hold the lock: wait for it.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq slurmctld slurmd slurm-client munge \
        >/dev/null
}

write_config() {
    local socket=$DIR/munge/munge.socket.2
    if [ ${#socket} -gt 100 ]; then  # a Unix socket path has at most 107 bytes
        log "the munge socket path $socket is too long; set LOCAL_SLURM_DIR to a shorter folder"
        exit 1
    fi
    mkdir -p "$DIR/munge" "$DIR/ctld" "$DIR/spool"
    chmod 755 "$DIR/munge"  # munged wants its socket directory readable, not writable, by all
    [ -s "$DIR/munge/munge.key" ] || dd if=/dev/urandom bs=1024 count=1 \
        of="$DIR/munge/munge.key" status=none
    chmod 400 "$DIR/munge/munge.key"
    cat >"$CONF" <<CONF
# Written by scripts/local-slurm.sh; rewritten on every start.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=30
# A job waiting behind another gets its planned start from the backfill pass (default: every
# 30 s); one job-sized node needs no slower pace, and the tests wait for that start.
SchedulerParameters=bf_interval=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null || true; }

start() {
    install_packages
    if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid"; then
        log "already running"
        status
        return
    fi
    stop_daemons
    write_config
    munged --force --socket="$DIR/munge/munge.socket.2" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed"
    slurmctld -f "$CONF"
    slurmd -f "$CONF"
    # Ready means a job runs: slurmctld takes a few seconds after start before it schedules.
    for _ in $(seq 1 150); do
        case "$(node_state)" in
            idle*|mix*|alloc*)
                timeout 30 srun -J local-slurm-probe -t 1 true && { status; return; }
                break ;;
            down*|drain*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    log "no job ran within 60 s; the logs:"
    tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" "$DIR/munge/munged.log" >&2 || true
    exit 1
}

cancel_jobs() {
    pid_alive "$DIR/slurmctld.pid" || return 0
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 1 50); do
        [ -z "$(squeue -h -o %i 2>/dev/null | head -1)" ] && return
        sleep 0.1
    done
    log "jobs still listed after scancel: $(squeue -h -o "%i %T" | tr '\n' ' ')"
}

stop_daemons() {
    local pidfile pids=()
    for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
        pid_alive "$pidfile" && pids+=("$(cat "$pidfile")") && kill "${pids[-1]}"
        rm -f "$pidfile"
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    done
    return 0
}

status() {
    if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid"; then
        log "running: node $NODE is $(node_state)"
        echo "export SLURM_CONF=$CONF"
    else
        log "not running"
        return 3
    fi
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) cancel_jobs; stop_daemons ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
