#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): what stjobs decides for this machine's GPU, proven on it in under 8 minutes
# on one GPU; the result lands in benchmarks/results/gpu-check-<gpu>.json. `--dry` runs it on CPU (the test suite
# does, tests/test_gpu_check.py). Needs a Python with torch and the project's packages: the venv when there is one,
# else python3, plus any wheels placed in .whl/ (installed into /tmp/stjobs-site first, for a bare GPU machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
site="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/stjobs-site .whl/*.whl
  site="/tmp/stjobs-site:$site"
fi
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONUNBUFFERED=1
exec timeout 480 "$python" benchmarks/gpu_check.py "$@"
