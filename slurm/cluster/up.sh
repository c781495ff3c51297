#!/usr/bin/env bash
# Bring up a throw-away SLURM test cluster on THIS machine (run as root):
#   munged + MariaDB + slurmdbd + slurmctld + two slurmd (nodes n1, n2) on loopback.
# Shaped like a site, not like a rig: CPU binding (task/affinity), two (fake) v100 GPUs per node allocated by
# SLURM as GRES, a partition that is not the default and must be named, accounts and QoS that SLURM enforces,
# and an unprivileged user ($SITE_USER) with its own home and venv who submits the jobs.
# Idempotent: daemons that are already running are left alone; a second run is a health check.
# No systemd needed: every daemon is started by hand; pids/logs/state live under $STJOBS_SLURM_STATE.
# Undo with slurm/cluster/down.sh (add --wipe to also delete the state: job ids restart at 1).
#
# --no-accounting: a second cluster beside the first, as many small sites run SLURM: no slurmdbd, sacct disabled
#   (AccountingStorageType=accounting_storage/none), slurmctld forgets a finished job after MinJobAge. Its own
#   config (/etc/slurm-noacct: clients select it with SLURM_CONF=/etc/slurm-noacct/slurm.conf), ports
#   (slurmctld 16818, nodes n3/n4 on 17003/17004), state dir and ClusterName (stjobs-noacct); munge, the fake GPUs
#   and the site user are shared with the first cluster. Otherwise shaped alike (task/affinity, partition gpu).
#
# Env knobs:
#   STJOBS_SLURM_STATE     state dir (default /var/tmp/stjobs-slurm)
#   STJOBS_SLURM_NOACCT_STATE  state dir of the --no-accounting cluster (default /var/tmp/stjobs-slurm-noacct)
#   STJOBS_SLURM_TIMEOUT   seconds to wait for each daemon / for the nodes (default 60)
#   STJOBS_SLURM_NO_INSTALL=1  never call apt-get (fail if binaries are missing)
set -euo pipefail

ACCOUNTING=1
for a in "$@"; do
    case $a in
        --no-accounting) ACCOUNTING=0 ;;
        *) echo "usage: $0 [--no-accounting]" >&2; exit 2 ;;
    esac
done

STATE=${STJOBS_SLURM_STATE:-/var/tmp/stjobs-slurm}
TIMEOUT=${STJOBS_SLURM_TIMEOUT:-60}
CLUSTER=stjobs
PARTITION=gpu          # a site's name; deliberately not Default=YES: a job must say where it runs
SPARE_PARTITION=short  # the default partition, with a 5-minute limit
NODES=(n1 n2)
NODE_PORTS=(17001 17002)
NODE_CPUS=2
CTLD_PORT=16817
DBD_PORT=16819
DB_NAME=stjobs_slurm_acct
DB_USER=slurm
DB_PASS=stjobs-slurm-test          # test-only cluster, DB reachable only through a local unix socket
MYSQL_SOCK=/run/mysqld/mysqld.sock  # default socket: slurmdbd (StorageHost=localhost) finds it without extra config
ETC=/etc/slurm                     # default config dir of Debian's binaries: sinfo/sbatch need no SLURM_CONF
GPU_TYPE=v100
GPUS_PER_NODE=2
GPU_FILES=/dev/stjobs-fakegpu      # device nodes /dev/stjobs-fakegpu0..N-1: slurmd only needs them to exist
ACCOUNT=ml-team                    # every job's association; 'other-team' exists but nobody here is in it
MIN_JOB_AGE=300                    # seconds slurmctld keeps a finished job (what squeue/scontrol can still tell)
if ((!ACCOUNTING)); then
    STATE=${STJOBS_SLURM_NOACCT_STATE:-/var/tmp/stjobs-slurm-noacct}
    CLUSTER=stjobs-noacct
    NODES=(n3 n4)
    NODE_PORTS=(17003 17004)
    CTLD_PORT=16818
    ETC=/etc/slurm-noacct
    # Short, so the tests see a job forgotten (SLURM recommends at least 2; the purge runs about once a minute)
    MIN_JOB_AGE=10
fi
# Every client and daemon below reads this cluster's config (the daemons are also given -f)
export SLURM_CONF=$ETC/slurm.conf
SITE_USER=${STJOBS_SITE_USER:-stjobs-user}
SITE_HOME=/home/$SITE_USER
# The Python the site user's venv is made from: the distribution's, as on a login node (not root's pyenv).
SITE_PYTHON=${STJOBS_SITE_PYTHON:-/usr/bin/python3}
# The project's installed packages, shared into the site user's venv through a .pth file (installing torch a
# second time would cost minutes and GBs); the venv is still the user's own interpreter and prefix.
PROJECT_SITE_PACKAGES=${STJOBS_PROJECT_SITE_PACKAGES:-}

log() { echo "[slurm-up] $*" >&2; }
die() { echo "[slurm-up] ERROR: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (CI runs it as root; locally: sudo $0)"

# ---------------------------------------------------------------- packages
need_bins=(munged mungekey mariadbd mariadb-install-db mariadb slurmctld slurmd slurmdbd sinfo sbatch srun sacct sacctmgr scontrol)
missing=()
for b in "${need_bins[@]}"; do
    PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done
if ((${#missing[@]})); then
    [[ ${STJOBS_SLURM_NO_INSTALL:-0} == 1 ]] && die "missing binaries: ${missing[*]}"
    log "installing packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' init scripts from starting system munge/mariadb/slurm daemons (they would
    # take /run/mysqld/mysqld.sock, and slurm's fail without a config): deny via policy-rc.d while installing.
    policy_rc=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $policy_rc ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy_rc" && chmod 755 "$policy_rc" && own_policy=1
        trap '((own_policy)) && rm -f "$policy_rc"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        munge slurm-wlm slurmctld slurmd slurm-client slurmdbd mariadb-server >"${TMPDIR:-/tmp}/stjobs-slurm-apt.log" 2>&1 \
        || { tail -n 40 "${TMPDIR:-/tmp}/stjobs-slurm-apt.log" >&2; die "apt-get install failed"; }
    ((own_policy)) && rm -f "$policy_rc" && own_policy=0
fi
export PATH=$PATH:/usr/sbin:/sbin

mkdir -p "$STATE"/{log,run,ctld,slurmd} "$ETC"
chmod 755 "$STATE"     # mysql user must traverse it to reach its datadir

running() {  # running <pid>: exists and is not a zombie (daemons are reparented to pid 1, which may reap late)
    [[ $1 =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}
alive() { [[ -s $1 ]] && running "$(cat "$1")"; }

wait_for() {   # wait_for <what> <command...>: bounded poll, 1 s period
    local what=$1; shift
    local t=0
    until "$@" >/dev/null 2>&1; do
        ((t++ < TIMEOUT)) || return 1
        sleep 1
    done
    log "$what ready (${t}s)"
}

fail_with_logs() {
    echo "[slurm-up] ERROR: $1" >&2
    shift
    for f in "$@"; do
        [[ -f $f ]] || continue
        echo "----- tail -n 30 $f" >&2
        tail -n 30 "$f" >&2
    done
    exit 1
}

# ---------------------------------------------------------------- node names -> loopback
# torchrun's rendezvous resolves the first node name (scontrol show hostnames): n1/n2 must resolve,
# and only to this machine. Appended (never rewritten: /etc/hosts is often a bind mount in containers).
for n in "${NODES[@]}"; do
    if ! grep -Eq "^127\.0\.0\.1([[:space:]].*)?[[:space:]]$n([[:space:]]|\$)" /etc/hosts; then
        echo "127.0.0.1 $n    # stjobs test slurm cluster" >>/etc/hosts
        log "added $n -> 127.0.0.1 to /etc/hosts"
    fi
    addr=$(getent ahostsv4 "$n" | awk 'NR==1{print $1}')
    [[ $addr == 127.* ]] || die "node name $n resolves to '$addr', expected loopback (check /etc/hosts / nsswitch)"
done

# ---------------------------------------------------------------- munge
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
if [[ ! -s $MUNGE_KEY ]]; then
    log "creating munge key"
    mkdir -p /etc/munge
    mungekey --create --keyfile="$MUNGE_KEY" --force
fi
chown munge:munge "$MUNGE_KEY"; chmod 600 "$MUNGE_KEY"
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if ! alive "$MUNGE_PID"; then
    log "starting munged"
    runuser -u munge -- munged --pid-file="$MUNGE_PID" --force
fi
wait_for munged bash -c 'munge -n | unmunge' || fail_with_logs "munged not working" /var/log/munge/munged.log

# ---------------------------------------------------------------- MariaDB (own datadir under $STATE)
if ((ACCOUNTING)); then   # the --no-accounting cluster has no database and no slurmdbd
    DATADIR=$STATE/mysql
    MYSQL_PID=$DATADIR/mariadbd.pid
    MYSQL_LOG=$DATADIR/mariadbd.err
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld   # socket dir (tmpfs, lost on reboot)
    if [[ ! -d $DATADIR/mysql ]]; then
        log "initialising MariaDB datadir $DATADIR"
        mkdir -p "$DATADIR" && chown mysql:mysql "$DATADIR"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DATADIR" --skip-test-db \
            --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1 \
            || fail_with_logs "mariadb-install-db failed" "$STATE/log/mariadb-install.log"
    fi
    if ! alive "$MYSQL_PID"; then
        [[ -S $MYSQL_SOCK ]] && mariadb-admin --socket="$MYSQL_SOCK" ping >/dev/null 2>&1 \
            && die "another MariaDB/MySQL already serves $MYSQL_SOCK (not started by this script); stop it first"
        log "starting mariadbd"
        # --no-defaults: ignore /etc/mysql; skip-networking: unix socket only, no TCP port at all
        setsid mariadbd --no-defaults --user=mysql --datadir="$DATADIR" --socket="$MYSQL_SOCK" \
            --pid-file="$MYSQL_PID" --log-error="$MYSQL_LOG" --skip-networking \
            --innodb-buffer-pool-size=64M --innodb-log-file-size=48M --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
    fi
    wait_for mariadbd mariadb-admin --socket="$MYSQL_SOCK" ping || fail_with_logs "MariaDB did not come up" "$MYSQL_LOG"
    mariadb --socket="$MYSQL_SOCK" -u root <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
SQL
fi

# ---------------------------------------------------------------- fake GPUs
# Character devices with NVIDIA's major number: SLURM allocates them as GRES and sets CUDA_VISIBLE_DEVICES and
# SLURM_JOB_GPUS for each job; nothing opens them (no CUDA runs here).
for ((g = 0; g < GPUS_PER_NODE; g++)); do
    [[ -e $GPU_FILES$g ]] || mknod -m 666 "$GPU_FILES$g" c 195 "$g" 2>/dev/null \
        || { : >"$GPU_FILES$g" && chmod 666 "$GPU_FILES$g"; }   # no CAP_MKNOD: a plain file serves slurmd too
done

# ---------------------------------------------------------------- the site's user
if ! id -u "$SITE_USER" >/dev/null 2>&1; then
    log "creating user $SITE_USER"
    useradd --create-home --home-dir "$SITE_HOME" --shell /bin/bash "$SITE_USER"
fi
if [[ -n $PROJECT_SITE_PACKAGES ]]; then
    if [[ ! -x $SITE_HOME/venv/bin/python ]]; then
        log "creating $SITE_HOME/venv from $SITE_PYTHON"
        runuser -u "$SITE_USER" -- "$SITE_PYTHON" -m venv --without-pip "$SITE_HOME/venv"
    fi
    pth=$(echo "$SITE_HOME"/venv/lib/python3*/site-packages)/stjobs-project.pth
    # addsitedir, not a bare path line: the project's own .pth files (its editable install) are read too
    echo "import site; site.addsitedir('$PROJECT_SITE_PACKAGES')" | runuser -u "$SITE_USER" -- tee "$pth" >/dev/null
fi

# ---------------------------------------------------------------- config files
write_if_changed() {  # write_if_changed <file> <mode>  (content on stdin); returns 0 if changed
    local f=$1 mode=$2 tmp
    tmp=$(mktemp "$f.XXXX")
    cat >"$tmp"; chmod "$mode" "$tmp"; chown root:root "$tmp"
    if [[ -f $f ]] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; return 1; fi
    mv -f "$tmp" "$f"; return 0
}

CTLD_HOST=$(hostname -s)   # must equal the short hostname or slurmctld quits with "not a valid controller"
mem_mb=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mem_mb=${mem_mb:-2048}
NODE_MEM=$((mem_mb / 2 > 1024 ? mem_mb / 2 : 1024))   # config_overrides makes slurmd accept it anyway

dbd_changed=0
((ACCOUNTING)) && write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF && dbd_changed=1 || true
# generated by stjobs slurm/cluster/up.sh -- test cluster
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF

if ((ACCOUNTING)); then
    accounting_lines="JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
# a job needs an association (its user in an account) and a QoS it may use: SLURM refuses anything else
AccountingStorageEnforce=associations,limits,qos
AccountingStorageTRES=gres/gpu
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT"
else
    # as many small sites run: sacct says "Slurm accounting storage is disabled"; nothing enforces accounts
    accounting_lines="JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none"
fi
node_lines=""
for i in "${!NODES[@]}"; do
    n=${NODES[$i]}
    node_lines+="NodeName=$n NodeHostname=$n NodeAddr=127.0.0.1 Port=${NODE_PORTS[$i]} CPUs=$NODE_CPUS RealMemory=$NODE_MEM Gres=gpu:$GPU_TYPE:$GPUS_PER_NODE Feature=$GPU_TYPE State=UNKNOWN"$'\n'
done
node_list=$(IFS=,; echo "${NODES[*]}")

conf_changed=0
write_if_changed "$ETC/gres.conf" 644 <<EOF && conf_changed=1 || true
# generated by stjobs slurm/cluster/up.sh -- each node's "GPUs" (every slurmd reads the same files)
Name=gpu Type=$GPU_TYPE File=$GPU_FILES[0-$((GPUS_PER_NODE - 1))]
EOF

write_if_changed "$ETC/slurm.conf" 644 <<EOF && conf_changed=1 || true
# generated by stjobs slurm/cluster/up.sh$( ((ACCOUNTING)) || echo " --no-accounting") -- 2-node test cluster on one host (loopback only)
ClusterName=$CLUSTER
SlurmctldHost=$CTLD_HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# bind to the configured (loopback) addresses instead of 0.0.0.0
CommunicationParameters=NoInAddrAny
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# several slurmd on one host: no cgroups (each slurmd would claim the same hierarchy), so processes are
# tracked by parentage; CPUs are still bound to each task's allocation through sched_setaffinity
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
GresTypes=gpu
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# start a batch job at submit: SLURM's default batch_sched_delay=3 holds each one for 0-3 s, a delay sites see
# for every way of submitting alike, which here would be noise in every test and in the submit benchmark
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# reject (instead of queueing forever) jobs that can never fit the partition/nodes
EnforcePartLimits=ALL
# trust the CPUs/RealMemory below even if the machine is smaller (CI runners)
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=$MIN_JOB_AGE
$accounting_lines
JobCompType=jobcomp/none
$node_lines
PartitionName=$SPARE_PARTITION Nodes=$node_list Default=YES MaxTime=5 State=UP
PartitionName=$PARTITION Nodes=$node_list Default=NO MaxTime=60 State=UP
EOF

# ---------------------------------------------------------------- slurmdbd
stop_pid() {  # stop_pid <pidfile>
    alive "$1" || return 0
    local p; p=$(cat "$1"); kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 40); do running "$p" || return 0; sleep 0.25; done
    kill -KILL "$p" 2>/dev/null || true
}
if ((ACCOUNTING)); then
    if ((dbd_changed)) && alive "$STATE/run/slurmdbd.pid"; then
        log "slurmdbd.conf changed: restarting slurmdbd"; stop_pid "$STATE/run/slurmdbd.pid"
    fi
    if ! alive "$STATE/run/slurmdbd.pid"; then
        log "starting slurmdbd"
        slurmdbd
    fi
    wait_for slurmdbd sacctmgr -n show cluster || fail_with_logs "slurmdbd not answering" "$STATE/log/slurmdbd.log" "$MYSQL_LOG"
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
        log "registered cluster $CLUSTER in accounting"
    fi
    # Accounts and QoS as a site has them: root and the site user in $ACCOUNT (their default) with QoS normal;
    # 'other-team' and QoS 'long' exist, and nobody here may use them.
    sacctmgr -n -P show qos format=name | grep -qx long || sacctmgr -i add qos long >/dev/null
    for a in "$ACCOUNT" other-team; do
        sacctmgr -n -P show account "$a" format=account | grep -qx "$a" \
            || sacctmgr -i add account "$a" cluster="$CLUSTER" >/dev/null
    done
    for u in root "$SITE_USER"; do
        if ! sacctmgr -n -P show assoc where user="$u" account="$ACCOUNT" format=user | grep -qx "$u"; then
            sacctmgr -i add user "$u" account="$ACCOUNT" defaultaccount="$ACCOUNT" cluster="$CLUSTER" qos=normal \
                >/dev/null
            log "added $u to account $ACCOUNT"
        fi
    done
fi

# ---------------------------------------------------------------- slurmctld + slurmd x2
if ((conf_changed)); then
    for n in "${NODES[@]}"; do
        alive "$STATE/run/slurmd-$n.pid" && { log "slurm.conf changed: restarting slurmd $n"; stop_pid "$STATE/run/slurmd-$n.pid"; }
    done
    alive "$STATE/run/slurmctld.pid" && { log "slurm.conf changed: restarting slurmctld"; stop_pid "$STATE/run/slurmctld.pid"; }
fi
CTLD_LOG=$STATE/log/slurmctld.log
if ! alive "$STATE/run/slurmctld.pid"; then
    log "starting slurmctld"
    ctld_log_start=$(stat -c %s "$CTLD_LOG" 2>/dev/null || echo 0)
    slurmctld -f "$SLURM_CONF"
    # a wrong SlurmctldHost makes slurmctld exit 0 here and quit a moment later
    sleep 1
    if tail -c +"$((ctld_log_start + 1))" "$CTLD_LOG" 2>/dev/null | grep -q "not a valid controller"; then
        fail_with_logs "slurmctld: this host ($CTLD_HOST) is 'not a valid controller'" "$CTLD_LOG"
    fi
fi
wait_for slurmctld bash -c 'scontrol ping | grep -q "is UP"' \
    || fail_with_logs "slurmctld not answering" "$CTLD_LOG"
alive "$STATE/run/slurmctld.pid" || fail_with_logs "slurmctld died" "$CTLD_LOG"

started=()
slurmd_t0=$(date +%s)
for n in "${NODES[@]}"; do
    if ! alive "$STATE/run/slurmd-$n.pid"; then
        log "starting slurmd -N $n"
        mkdir -p "$STATE/slurmd/$n"
        slurmd -f "$SLURM_CONF" -N "$n"
        started+=("$n")
    fi
done

nodes_ok() {   # every node responding (no '*') and usable: idle (or busy with jobs)
    local out n st t
    out=$(sinfo -h -N -p "$PARTITION" -o '%N %t') || return 1
    for n in "${NODES[@]}"; do
        st=$(awk -v n="$n" '$1==n{print $2}' <<<"$out")
        [[ $st =~ ^(idle|mix|alloc|comp)$ ]] || return 1
    done
    # slurmctld may still show a node idle from its saved state: require that each slurmd we just
    # started has registered (SlurmdStartTime is set when slurmd registers with the controller)
    for n in "${started[@]}"; do
        t=$(scontrol -o show node "$n" | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2)
        [[ -n $t && $t != None ]] || return 1
        (($(date -d "$t" +%s 2>/dev/null || echo 0) >= slurmd_t0 - 1)) || return 1
    done
}
t=0
until nodes_ok; do
    if ((t == 15)); then   # nodes left down/drained by an earlier run: give them back
        scontrol update nodename="$node_list" state=resume >/dev/null 2>&1 || true
    fi
    if ((t++ >= TIMEOUT)); then
        sinfo -N -p "$PARTITION" -o '%N %t %E' >&2 || true
        logs=("$CTLD_LOG"); for n in "${NODES[@]}"; do logs+=("$STATE/log/slurmd-$n.log"); done
        fail_with_logs "nodes ${NODES[*]} not idle after ${TIMEOUT}s" "${logs[@]}"
    fi
    sleep 1
done
accounting=$( ((ACCOUNTING)) && echo "account $ACCOUNT" || echo "no accounting, SLURM_CONF=$SLURM_CONF")
log "cluster $CLUSTER up: $(sinfo -h -N -p "$PARTITION" -o '%N=%t' | tr '\n' ' ')(partition $PARTITION, $accounting, user $SITE_USER, gres gpu:$GPU_TYPE:$GPUS_PER_NODE; state: $STATE)"
