#!/usr/bin/env bash
# The main job: installs what it needs, then fine-tunes all-MiniLM-L6-v2 with DDP on 2 local processes
# (local backend, torchrun), printing samples/s, the evaluation score before and after, and where the model went.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh train
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/stjobs submit examples/demo.yaml --backend local --follow "$@"
