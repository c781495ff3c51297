#!/usr/bin/env bash
# Stop the SLURM test clusters started by slurm/cluster/up.sh (the main one and the --no-accounting one).
# Idempotent; never fails if already down.
# Only processes recorded in the pid files written by up.sh are signalled (no pkill by name).
#   --wipe   also delete the state dirs ($STJOBS_SLURM_STATE, default /var/tmp/stjobs-slurm, and
#            $STJOBS_SLURM_NOACCT_STATE, default /var/tmp/stjobs-slurm-noacct):
#            slurmctld state + accounting DB are gone, so job ids restart at 1 on the next up.sh.
set -uo pipefail

STATE=${STJOBS_SLURM_STATE:-/var/tmp/stjobs-slurm}
NOACCT_STATE=${STJOBS_SLURM_NOACCT_STATE:-/var/tmp/stjobs-slurm-noacct}
WIPE=0
for a in "$@"; do
    case $a in
        --wipe) WIPE=1 ;;
        *) echo "usage: $0 [--wipe]" >&2; exit 2 ;;
    esac
done
export PATH=$PATH:/usr/sbin:/sbin

log() { echo "[slurm-down] $*" >&2; }

running() {  # running <pid>: exists and is not a zombie (daemons are reparented to pid 1, which may reap late)
    kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

stop_pid() {  # stop_pid <name> <pidfile>: TERM, wait up to 10 s, then KILL
    local name=$1 f=$2 p
    [[ -s $f ]] || return 0
    p=$(cat "$f" 2>/dev/null) || return 0
    [[ $p =~ ^[0-9]+$ ]] || { rm -f "$f"; return 0; }
    if running "$p"; then
        log "stopping $name (pid $p)"
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 40); do running "$p" || break; sleep 0.25; done
        if running "$p"; then
            log "$name did not stop, sending KILL"
            kill -KILL "$p" 2>/dev/null || true
            sleep 0.5
        fi
    fi
    rm -f "$f"
}

stop_cluster() {  # stop_cluster <state dir> <slurm.conf> <node>...: its jobs, its slurmd, its slurmctld
    local state=$1 n jobs
    export SLURM_CONF=$2
    shift 2
    # cancel whatever still runs, so no slurmstepd / job processes outlive their slurmd
    if [[ -s $state/run/slurmctld.pid ]] && kill -0 "$(cat "$state/run/slurmctld.pid")" 2>/dev/null \
            && command -v squeue >/dev/null; then
        jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            for _ in $(seq 20); do
                [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    for n in "$@"; do stop_pid "slurmd $n" "$state/run/slurmd-$n.pid"; done
    stop_pid slurmctld "$state/run/slurmctld.pid"
}

stop_cluster "$NOACCT_STATE" /etc/slurm-noacct/slurm.conf n3 n4   # up.sh --no-accounting: no slurmdbd
stop_cluster "$STATE" /etc/slurm/slurm.conf n1 n2
stop_pid slurmdbd "$STATE/run/slurmdbd.pid"
stop_pid mariadbd "$STATE/mysql/mariadbd.pid"
stop_pid munged /run/munge/munged.pid

if ((WIPE)); then
    for dir in "$STATE" "$NOACCT_STATE"; do
        case $dir in
            /|/var|/var/tmp|/tmp|"") log "refusing to wipe '$dir'" ;;
            *) log "wiping $dir"; rm -rf -- "$dir" ;;
        esac
    done
fi
log "down"
exit 0
