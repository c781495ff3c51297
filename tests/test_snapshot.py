"""The code snapshot: what a local or SLURM job runs is the workdir's code as it was at submit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stjobs
from stjobs.errors import SpecError
from stjobs.snapshot import plan_snapshot
from tests.conftest import offline_env, stjobs_bin
from tests.slurm_cluster import PARTITION, ensure_cluster, wait_for_sacct_state

# The user's script: waits until the test says go, then imports its helper module, whose marker shows which
# version of the code ran.
SCRIPT = """\
import os, sys, time
sys.path.insert(0, os.getcwd())
deadline = time.time() + 120
while not os.path.exists(os.environ["GO_FILE"]):
    assert time.time() < deadline, "no go file"
    time.sleep(0.2)
import helper
print("marker:", helper.MARKER, "cwd:", os.getcwd(), flush=True)
"""


def project(tmp_path: Path, git: bool = True) -> Path:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "train.py").write_text(SCRIPT)
    (root / "helper.py").write_text('MARKER = "as submitted"\n')
    (root / "notes.txt").write_text("untracked, not ignored\n")
    (root / "data" / "big.jsonl").write_text('{"anchor": "a", "positive": "b"}\n')
    (root / "job.yaml").write_text("name: snap\nentrypoint: {script: train.py}\n")
    if git:
        (root / ".gitignore").write_text("data/\nouts/\n")
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        subprocess.run(["git", "-C", str(root), "add", "train.py", "helper.py", ".gitignore", "job.yaml"], check=True)
    return root


def test_a_git_snapshot_keeps_what_git_keeps(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "outs").mkdir()
    (root / "outs" / "ckpt.bin").write_bytes(b"x" * 10)
    spec = stjobs.load_spec(root / "job.yaml", overrides=[("output_dir", "outs")])
    snap = plan_snapshot(spec, root)
    assert snap is not None and snap.from_git
    assert snap.files == (".gitignore", "helper.py", "job.yaml", "notes.txt", "train.py")


def test_without_git_every_file_but_caches_venvs_and_outputs(tmp_path: Path) -> None:
    root = project(tmp_path, git=False)
    for junk in ("__pycache__/helper.cpython-311.pyc", ".venv/pyvenv.cfg", ".venv/lib/x.py", "outputs/snap/a.bin"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("x")
    snap = plan_snapshot(stjobs.load_spec(root / "job.yaml"), root)
    assert snap is not None and not snap.from_git
    assert snap.files == ("data/big.jsonl", "helper.py", "job.yaml", "notes.txt", "train.py")


def test_a_snapshot_over_the_limit_is_refused_naming_the_biggest_file(tmp_path: Path) -> None:
    root = project(tmp_path, git=False)
    (root / "data" / "big.jsonl").write_bytes(b"x" * (2 * 1024 * 1024))
    with pytest.raises(SpecError) as refused:
        plan_snapshot(stjobs.load_spec(root / "job.yaml", overrides=[("snapshot.max_mb", 1)]), root)
    assert refused.value.field == "snapshot.max_mb"
    assert "data/big.jsonl (2.0 MB)" in str(refused.value) and "snapshot.enabled: false" in str(refused.value)
    assert plan_snapshot(stjobs.load_spec(root / "job.yaml", overrides=[("snapshot.enabled", False)]), root) is None


def test_data_the_copy_would_lack_is_refused_at_submit(tmp_path: Path) -> None:
    root = project(tmp_path)
    spec = stjobs.load_spec(root / "job.yaml", overrides=[
        ("entrypoint", {"module": "stjobs.train", "args": ["--train-data", "data/big.jsonl"]})])
    with pytest.raises(SpecError) as refused:
        plan_snapshot(spec, root)
    assert refused.value.field == "entrypoint.args" and "git ignores" in str(refused.value)
    absolute = stjobs.load_spec(root / "job.yaml", overrides=[
        ("entrypoint", {"module": "stjobs.train", "args": [f"--train-data={root}/data/big.jsonl"]})])
    assert plan_snapshot(absolute, root) is not None
    # A named dataset with its own loss is the same file: NAME= and :LOSS are not part of the path.
    named = stjobs.load_spec(root / "job.yaml", overrides=[
        ("entrypoint", {"module": "stjobs.train", "args": ["--train-data", "qa=train.py:mnrl",
                                                           "--train-data", "nli=data/big.jsonl:softmax"]})])
    with pytest.raises(SpecError) as refused:
        plan_snapshot(named, root)
    assert "--train-data nli=data/big.jsonl:SoftmaxLoss" in str(refused.value)


def submit_and_edit(root: Path, *flags: str) -> str:
    """Submit, edit the helper module as a user would while the job waits, then let the job go on."""
    env = offline_env(GO_FILE=str(root / "go"), STJOBS_PYTHON=sys.executable)
    done = subprocess.run([stjobs_bin(), "submit", "job.yaml", *flags], capture_output=True, text=True, cwd=root,
                          env=env, check=True, timeout=300)
    job_id = done.stdout.split()[1]
    (root / "helper.py").write_text('MARKER = "edited after submit"\n')
    (root / "go").touch()
    deadline = time.monotonic() + 300
    while json.loads(subprocess.run([stjobs_bin(), "status", job_id, "--json"], capture_output=True, text=True,
                                    env=env, check=True).stdout)["state"] in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    return subprocess.run([stjobs_bin(), "logs", job_id], capture_output=True, text=True, env=env,
                          check=True).stdout


@pytest.mark.slow
def test_an_edit_after_submit_does_not_reach_a_local_job(tmp_path: Path) -> None:
    root = project(tmp_path)
    assert "marker: as submitted" in submit_and_edit(root)
    (root / "go").unlink()
    (root / "helper.py").write_text('MARKER = "as submitted"\n')
    live = submit_and_edit(root, "--set", "snapshot.enabled=false")
    assert "marker: edited after submit" in live  # the opt-out runs the live workdir


@pytest.mark.slurm
def test_an_edit_while_a_slurm_job_waits_does_not_reach_it(tmp_path: Path) -> None:
    ensure_cluster()
    root = project(tmp_path)
    env = offline_env(GO_FILE=str(root / "go"), STJOBS_PYTHON=sys.executable)
    flags = ["-b", "slurm", "--sbatch", "--set", f"slurm.partition={PARTITION}", "--set", "mem_gb=null",
             "--set", "time_min=5", "--set", 'slurm.extra_sbatch=["--hold"]']
    done = subprocess.run([stjobs_bin(), "submit", "job.yaml", *flags], capture_output=True, text=True, cwd=root,
                          env=env, check=True, timeout=300)
    job_id = done.stdout.split()[1]
    record = json.loads(Path(env["STJOBS_HOME"], "jobs", job_id, "job.json").read_text())
    slurm_id = record["details"]["slurm_job_id"]
    (root / "helper.py").write_text('MARKER = "edited while queued"\n')
    (root / "go").touch()
    subprocess.run(["scontrol", "release", slurm_id], check=True)
    assert wait_for_sacct_state(slurm_id, timeout=240) == "COMPLETED"
    time.sleep(1)
    log = subprocess.run([stjobs_bin(), "logs", job_id], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "marker: as submitted" in log and f"cwd: {record['job_dir']}/code" in log, log
    assert record["details"]["snapshot"]["files"] == 5
