#!/usr/bin/env bash
# Smoke test of the cluster from up.sh: 2-node srun, sbatch -> sacct COMPLETED, rejected submissions,
# scancel -> CANCELLED, --signal accepted, and (if a python with torch is given) a 2-node torchrun
# c10d rendezvous.  Usage: slurm/cluster/smoke.sh [PYTHON_WITH_TORCH]   (default: <repo>/.venv/bin/python)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${1:-$REPO/.venv/bin/python}
WORK=$(mktemp -d /tmp/stjobs-slurm-smoke.XXXX)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

ok() { echo "ok   $*"; }
bad() { echo "FAIL $*" >&2; exit 1; }

wait_state() {  # wait_state JOBID TIMEOUT -> prints final sacct state
    local j=$1 t=0 s=""
    while ((t++ < $2)); do
        s=$(sacct -j "$j" -X -n -P -o State | tail -n1)
        case ${s%% *} in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL) break ;; esac
        sleep 1
    done
    echo "$s"
}

# (a) one step on each node
out=$(srun -N2 -n2 -t 2 bash -c 'echo $SLURMD_NODENAME' | sort | tr '\n' ' ')
[[ $out == "n1 n2 " ]] && ok "srun -N2 -n2 ran on: $out" || bad "srun -N2 -n2 gave '$out'"

# (b) 2-node batch job with an srun step -> COMPLETED in accounting
j=$(sbatch --parsable -N2 --ntasks-per-node=1 -t 2 -o "$WORK/b-%j.out" --wrap 'srun bash -c "echo step on \$SLURMD_NODENAME"')
s=$(wait_state "$j" 60)
[[ $s == COMPLETED ]] && ok "sbatch 2-node job $j: $s ($(sort "$WORK/b-$j.out" | tr '\n' ' '))" || bad "job $j: '$s'"

# (c) refused submissions
for args in "-p nope" "--cpus-per-task=99" "-N3" "-t 999"; do
    # shellcheck disable=SC2086
    if msg=$(sbatch $args --wrap true 2>&1); then bad "sbatch $args was accepted: $msg"; fi
    ok "sbatch $args refused: $(tr '\n' ' ' <<<"$msg")"
done

# (d) scancel a running job -> CANCELLED
j=$(sbatch --parsable -N2 --ntasks-per-node=1 -t 5 -o /dev/null --wrap 'srun sleep 300')
for _ in $(seq 30); do [[ $(squeue -h -j "$j" -o %T) == RUNNING ]] && break; sleep 1; done
scancel "$j"
s=$(wait_state "$j" 60)
[[ $s == CANCELLED* ]] && ok "scancel $j: $s" || bad "cancelled job $j: '$s'"

# --signal accepted
j=$(sbatch --parsable --signal=B:USR2@60 -t 2 -o /dev/null --wrap true) && ok "sbatch --signal=B:USR2@60 accepted (job $j)"

# (e) torchrun c10d rendezvous across the two nodes
if [[ -x $PY ]] && "$PY" -c 'import torch' 2>/dev/null; then
    cat >"$WORK/rdzv_probe.py" <<'EOF'
import os
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([1.0])
dist.all_reduce(t)
print(f"RANK={os.environ['RANK']} WORLD_SIZE={dist.get_world_size()} node={os.environ['SLURMD_NODENAME']} sum={t.item()}")
dist.destroy_process_group()
EOF
    cat >"$WORK/tr.sh" <<EOF
#!/bin/bash
#SBATCH --nodes=2 --ntasks-per-node=1 --time=5 -o $WORK/tr-%j.out
HEAD=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n1)
export PYTHONPATH=$WORK OMP_NUM_THREADS=1
srun $PY -m torch.distributed.run --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d \\
    --rdzv-endpoint \$HEAD:29577 --rdzv-id \$SLURM_JOB_ID -m rdzv_probe
EOF
    j=$(sbatch --parsable "$WORK/tr.sh")
    s=$(wait_state "$j" 180)
    out=$(grep -h RANK= "$WORK/tr-$j.out" | sort || true)
    if [[ $s == COMPLETED ]] && grep -q 'WORLD_SIZE=2 node=n1 sum=2.0' <<<"$out" \
            && grep -q 'WORLD_SIZE=2 node=n2 sum=2.0' <<<"$out"; then
        ok "torchrun c10d job $j: $(tr '\n' ' ' <<<"$out")"
    else
        cat "$WORK/tr-$j.out" >&2 || true
        bad "torchrun job $j: '$s'"
    fi
else
    echo "skip torchrun check (no torch in $PY)"
fi
echo "smoke OK"
