#!/usr/bin/env bash
# The whole test suite: installs what it needs, type-checks, lints, then runs pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh train,test,slurm
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m mypy --strict stjobs
.venv/bin/python -m ruff check stjobs tests benchmarks
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit $status
