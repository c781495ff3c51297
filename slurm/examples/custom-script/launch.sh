#!/usr/bin/env bash
# Rendered by stjobs for job custom-script: starts the launcher on one node.
# Every backend runs this same script; re-render instead of editing it.
set -euo pipefail

# The rendered files sit beside this script.
export STJOBS_JOB_DIR="${STJOBS_JOB_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
# One log directory per node: under SLURM several nodes share the job's directory.
export STJOBS_LOG_DIR="${STJOBS_LOG_DIR:-${STJOBS_JOB_DIR}/logs}${SLURMD_NODENAME:+/${SLURMD_NODENAME}}"
if [[ -z "${HF_TOKEN+x}" ]]; then
  echo "stjobs: secret HF_TOKEN is not in the environment; export it where the job is submitted" >&2
  exit 64
fi

export MKL_NUM_THREADS=1
export OMP_NUM_THREADS=1
export PYTHONUNBUFFERED=1
export RUN_NOTE='it'"'"'s "quoted"; $(not run) `nor this`'
export STJOBS_JOB_NAME=custom-script
export STJOBS_OUTPUT_DIR='/srv/my project/runs/$USER'"'"'s run'
export STJOBS_PG_TIMEOUT_S=1800
export STJOBS_STRATEGY=ddp
export TOKENIZERS_PARALLELISM=false
export TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE='[rank${rank}]:'

cd '/srv/my project'
mkdir -p "${STJOBS_LOG_DIR}"
# exec: the launcher replaces this shell, so a signal sent to the node step reaches it directly.
exec "${STJOBS_PYTHON:-python3}" -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 2 --max-restarts 0 --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2 --log-dir "${STJOBS_LOG_DIR}" --redirects 3 --tee 3 'my train.py' --title 'a b; rm -rf /' --lr 2e-5
