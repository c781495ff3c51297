#!/usr/bin/env bash
# Rendered by stjobs for job lr-loss-sweep-p1: starts the launcher on one node.
# Every backend runs this same script; re-render instead of editing it.
set -euo pipefail

# The rendered files sit beside this script.
export STJOBS_JOB_DIR="${STJOBS_JOB_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
# One log directory per node: under SLURM several nodes share the job's directory.
export STJOBS_LOG_DIR="${STJOBS_LOG_DIR:-${STJOBS_JOB_DIR}/logs}${SLURMD_NODENAME:+/${SLURMD_NODENAME}}"
if [[ -z "${STJOBS_RDZV_HOST:-}" ]]; then
  echo "stjobs: STJOBS_RDZV_HOST is not set: the host every node meets at (multi-node only)" >&2
  exit 64
fi
if [[ -z "${STJOBS_RDZV_ID:-}" ]]; then
  echo "stjobs: STJOBS_RDZV_ID is not set: an id shared by the nodes of one job run (multi-node only)" >&2
  exit 64
fi
if [[ -z "${STJOBS_RDZV_PORT:-}" ]]; then
  echo "stjobs: STJOBS_RDZV_PORT is not set: the TCP port of the rendezvous (multi-node only)" >&2
  exit 64
fi

export HF_HUB_OFFLINE=1
export MKL_NUM_THREADS=2
export OMP_NUM_THREADS=2
export PYTHONUNBUFFERED=1
export STJOBS_CPUS_PER_TASK=2
export STJOBS_JOB_NAME=lr-loss-sweep-p1
export STJOBS_OUTPUT_DIR=outputs/lr-loss-sweep/p1
export STJOBS_PG_TIMEOUT_S=1800
export STJOBS_STRATEGY=ddp
export TOKENIZERS_PARALLELISM=false
export TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE='[rank${rank}]:'

cd /home/user/project
# Set by `stjobs submit` to the interpreter it runs in; a file submitted by hand gets python3 from PATH.
export STJOBS_PYTHON="${STJOBS_PYTHON:-python3}"
# Relative paths are the workdir's, also when the job starts in its code snapshot below.
if [[ "${STJOBS_PYTHON}" == */* && "${STJOBS_PYTHON}" != /* ]]; then
  STJOBS_PYTHON="${PWD}/${STJOBS_PYTHON}"
fi
if [[ "${STJOBS_OUTPUT_DIR:-/}" != /* ]]; then
  export STJOBS_OUTPUT_DIR="${PWD}/${STJOBS_OUTPUT_DIR}"
fi
if [[ -d "${STJOBS_JOB_DIR}/code" ]]; then
  # The workdir's code as `stjobs submit` copied it: an edit made while the job waits does not reach it.
  cd "${STJOBS_JOB_DIR}/code"
fi
# The interpreter must be here and have what the launch imports: otherwise one clear line, before any rank starts
# (a venv that is not activated on the nodes would make every rank die of "No module named torch").
if ! command -v "${STJOBS_PYTHON}" >/dev/null 2>&1; then
  echo "stjobs: error: python ${STJOBS_PYTHON} not found on ${SLURMD_NODENAME:-${HOSTNAME:-this node}} (in $PWD); name an interpreter every node has in the spec's python:" >&2
  exit 64
fi
if ! stjobs_missing="$("${STJOBS_PYTHON}" -c 'import importlib.util as u, sys; m = [n for n in sys.argv[1:] if u.find_spec(n) is None]; print(*m); sys.exit(1 if m else 0)' torch stjobs 2>&1)"; then
  echo "stjobs: error: python ${STJOBS_PYTHON} on ${SLURMD_NODENAME:-${HOSTNAME:-this node}} cannot import ${stjobs_missing}; name the venv's interpreter in the spec's python: (or submit with stjobs run from it)" >&2
  exit 64
fi
mkdir -p "${STJOBS_LOG_DIR}"
# exec: the launcher replaces this shell, so a signal sent to the node step reaches it directly.
exec "${STJOBS_PYTHON:-python3}" -m torch.distributed.run --nnodes 2 --rdzv-backend c10d --rdzv-endpoint "${STJOBS_RDZV_HOST}:${STJOBS_RDZV_PORT}" --rdzv-id "${STJOBS_RDZV_ID}" --rdzv-conf join_timeout=900 --nproc-per-node 1 --max-restarts 0 --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2 --log-dir "${STJOBS_LOG_DIR}" --redirects 3 --tee 3 --module stjobs.train --model tiny-bert --train-data examples/data/train.jsonl --eval-data examples/data/eval.jsonl --max-steps 40 --learning-rate 5e-5 --loss CachedMultipleNegativesRankingLoss
