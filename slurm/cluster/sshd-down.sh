#!/usr/bin/env bash
# Stop the test login node's sshd started by slurm/cluster/sshd-up.sh (only the pid its pid file names).
# Idempotent; never fails if already down. --wipe also deletes its state dir (keys, config, log).
set -uo pipefail

STATE=${STJOBS_SSHD_STATE:-/var/lib/stjobs-sshd}
WIPE=0
for a in "$@"; do
    case $a in
        --wipe) WIPE=1 ;;
        *) echo "usage: $0 [--wipe]" >&2; exit 2 ;;
    esac
done

if [[ -s $STATE/sshd.pid ]]; then
    p=$(cat "$STATE/sshd.pid")
    if [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null; then
        echo "[sshd-down] stopping sshd (pid $p)" >&2
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$STATE/sshd.pid"
fi
if ((WIPE)); then
    case $STATE in
        /|/var|/var/tmp|/tmp|"") echo "[sshd-down] refusing to wipe '$STATE'" >&2 ;;
        *) rm -rf -- "$STATE" ;;
    esac
fi
exit 0
