#!/usr/bin/env bash
# The whole test suite: installs what it needs, type-checks, lints, then runs pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh train,test,slurm
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The real 2-node SLURM cluster the SLURM tests submit to (Debian's slurm-wlm + munge + slurmdbd/MariaDB).
# Installing and starting daemons needs root (CI runs as root); elsewhere the SLURM tests say why they fail.
if [[ $EUID -eq 0 ]]; then
  # kubectl for `kubectl kustomize k8s/` (offline); Debian's kubernetes-client when the machine has none.
  if ! command -v kubectl >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; }
  fi
  # The site user's venv (slurm/cluster/up.sh) shares this project's installed packages.
  STJOBS_PROJECT_SITE_PACKAGES=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    slurm/cluster/up.sh
  trap 'slurm/cluster/sshd-down.sh >/dev/null 2>&1 || true; slurm/cluster/down.sh >/dev/null 2>&1 || true' EXIT
  slurm/cluster/up.sh --no-accounting   # beside it, a cluster without accounting (tests/test_slurm_noacct.py)
  # Its login node: a separate sshd on loopback (installs Debian's openssh-server), for --remote over ssh
  # (tests/test_slurm_remote.py).
  slurm/cluster/sshd-up.sh
fi
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
