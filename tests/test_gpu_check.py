"""The GPU check script in its dry mode: the same two jobs (single and FSDP with its FULL_STATE_DICT save) through
the local backend on CPU with a small MPNet, so the script a GPU machine runs is known to work before device time
is spent on it. Its figures mean nothing here; what it writes and what it proves are checked."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_the_gpu_check_runs_dry_on_cpu(tmp_path: Path) -> None:
    done = subprocess.run([str(REPO / "scripts" / "gpu-check.sh"), "--dry", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "STJOBS_HOME": str(tmp_path / "home"),
                               "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "compute capability None (None): precision fp32" in done.stdout
    result = json.loads((tmp_path / "gpu-check-dry.json").read_text())
    assert result["dry"] is True and result["machine"]["gpus"] == []
    assert result["shape"]["max_seq_length"] == 64
    single, fsdp = result["rows"]["single"], result["rows"]["fsdp"]
    assert (single["state"], single["ran"], single["precision"]) == ("COMPLETED", "single", "fp32")
    assert single["steady_samples_per_second"] > 0
    # FSDP's save path ran and what it saved loads back and encodes (64: the dry MPNet's width).
    assert fsdp["state"] == "COMPLETED" and fsdp["saved"].endswith("/fsdp/final")
    assert fsdp["reloaded_dimension"] == 64
