#!/usr/bin/env bash
# The main job: installs what it needs, then fine-tunes all-MiniLM-L6-v2 with DDP on 2 local processes
# (local backend, torchrun), showing its progress, the evaluation score before and after and where the model
# went; then draws the run (loss, learning rate, samples/s, evaluation) into a PNG and says where.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh train,bench
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/stjobs submit examples/demo.yaml --backend local --follow "$@"
.venv/bin/stjobs plot   # the job submitted last: this one
