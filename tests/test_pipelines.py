"""Pipelines (issue 17): ``stjobs submit b.yaml --after JOB`` starts a job once another has ended as asked.

The dependency rules without a cluster, then real local jobs (the supervisor holds the second job), then the real
SLURM test cluster (``sbatch --dependency`` with the SLURM id behind our job id, ``--kill-on-invalid-dep``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stjobs.after import After, dependencies, met, slurm_dependency
from stjobs.errors import InputError, UsageError
from stjobs.jobs import JobRecord, JobStatus, State
from tests.conftest import cli, job_of, wait_until
from tests.slurm_cluster import PARTITION, ensure_cluster


def test_the_slurm_dependency_joins_each_kind_once_and_keeps_the_order() -> None:
    after = [After("ok", "a", "/a", "12"), After("any", "b", "/b", "14"), After("ok", "c", "/c", "13")]
    assert slurm_dependency(after) == "afterok:12:13,afterany:14"


@pytest.mark.parametrize("kind, state, expected", [
    ("ok", "PENDING", None), ("ok", "RUNNING", None), ("ok", "UNKNOWN", None), ("ok", "COMPLETED", True),
    ("ok", "FAILED", False), ("ok", "CANCELLED", False), ("ok", "LOST", False),
    ("any", "RUNNING", None), ("any", "COMPLETED", True), ("any", "FAILED", True), ("any", "CANCELLED", True),
])
def test_when_a_dependency_is_met(kind: str, state: str, expected: bool | None) -> None:
    assert met(kind, state) is expected


def statuses(**states: tuple[str, State]) -> Callable[[str], JobStatus]:
    """A status lookup over made-up records: job id -> (backend, state)."""
    def status_of(job_id: str) -> JobStatus:
        backend, state = states[job_id]
        record = JobRecord(job_id=job_id, backend=backend, name=job_id, job_dir=f"/jobs/{job_id}", submitted_at=0.0,
                           nodes=1, procs_per_node=1,
                           details={"slurm_job_id": "41"} if backend == "slurm" else {})
        return JobStatus(record, state)
    return status_of


def test_dependencies_keep_the_open_ones_and_drop_the_met_ones() -> None:
    lookup = statuses(a=("slurm", State.RUNNING), b=("slurm", State.COMPLETED), c=("slurm", State.FAILED))
    # b completed and c ended (--after-any): nothing to wait for; a still runs.
    waits = dependencies([("ok", "a"), ("ok", "b"), ("any", "c")], "slurm", "keep", lookup)
    assert waits == (After("ok", "a", "/jobs/a", "41"),)
    assert dependencies([("ok", "b")], "slurm", "cancel", lookup) == ()


@pytest.mark.parametrize("after, backend, if_fails, error", [
    ([("ok", "a")], "k8s", "cancel", "--after: got 'a' with --backend k8s; expected --backend slurm or local: "
                                     "Kubernetes has no dependency between jobs"),
    ([("ok", "l")], "slurm", "cancel", "--after: got l (local); expected a job of backend slurm"),
    ([("ok", "f")], "slurm", "cancel", "--after: got f, which ended FAILED; expected a job that can still "
                                       "complete (--after-any waits for any end)"),
    ([("any", "a")], "slurm", "sometimes", "--if-dependency-fails: got 'sometimes'; expected cancel or keep"),
])
def test_dependencies_that_cannot_be_kept_are_refused_in_one_line(after: list[tuple[str, str]], backend: str,
                                                                  if_fails: str, error: str) -> None:
    lookup = statuses(a=("slurm", State.RUNNING), l=("local", State.RUNNING), f=("slurm", State.FAILED))
    with pytest.raises((UsageError, InputError)) as caught:
        dependencies(after, backend, if_fails, lookup)
    assert str(caught.value).startswith(error) and "\n" not in str(caught.value)


def test_an_unknown_job_to_wait_for_is_refused_before_anything_is_written() -> None:
    done = cli("submit", "examples/tiny-ddp.yaml", "--after", "no-such-job", check=False)
    assert done.returncode == 2 and done.stderr.startswith("stjobs: error: job: got 'no-such-job'"), done.stderr
    assert not (Path(os.environ["STJOBS_HOME"]) / "jobs").exists() or not any(
        (Path(os.environ["STJOBS_HOME"]) / "jobs").iterdir())


# ---- real local jobs ----------------------------------------------------------------------------------------

def script_spec(folder: Path, name: str, body: str) -> Path:
    """A one-process job running a small script of its own (no snapshot: nothing of the repo is needed)."""
    (folder / f"{name}.py").write_text(body)
    spec = folder / f"{name}.yaml"
    spec.write_text(f"name: {name}\nprocs_per_node: 1\nsnapshot: {{enabled: false}}\n"
                    f"entrypoint: {{script: {folder / (name + '.py')}}}\n")
    return spec


def state_of(job_id: str) -> dict[str, Any]:
    (line,) = cli("status", job_id, "--json").stdout.splitlines()
    found: dict[str, Any] = json.loads(line)
    return found


@pytest.mark.slow
def test_a_local_job_waits_for_the_one_before_and_reads_its_output(tmp_path: Path) -> None:
    out = tmp_path / "a.txt"
    first = script_spec(tmp_path, "first", f"import time\ntime.sleep(6)\nopen({str(out)!r}, 'w').write('hello')\n")
    second = script_spec(tmp_path, "second", f"print('read:', open({str(out)!r}).read())\n")
    a = job_of(cli("submit", str(first)).stdout)
    b = job_of(cli("submit", str(second), "--after", a).stdout)
    waiting = state_of(b)
    assert waiting["state"] == "PENDING" and waiting["reason"] == f"waiting for {a} (--after)", waiting
    assert cli("submit", str(second), "--wait", "--after-ok", b).returncode == 0  # a chain of three
    assert state_of(a)["state"] == state_of(b)["state"] == "COMPLETED"
    assert "read: hello" in cli("logs", b).stdout
    homes = Path(os.environ["STJOBS_HOME"], "jobs")
    ended_a = json.loads((homes / a / "status.json").read_text())["ended_at"]
    assert json.loads((homes / b / "status.json").read_text())["started_at"] >= ended_a


@pytest.mark.slow
def test_a_local_dependency_that_fails_cancels_or_keeps_as_asked(tmp_path: Path) -> None:
    failing = script_spec(tmp_path, "failing", "import sys, time\ntime.sleep(5)\nsys.exit(3)\n")
    after = script_spec(tmp_path, "after", "print('ran')\n")
    a = job_of(cli("submit", str(failing)).stdout)
    cancelled = job_of(cli("submit", str(after), "--after", a).stdout)
    kept = job_of(cli("submit", str(after), "--after", a, "--if-dependency-fails", "keep").stdout)
    anyway = job_of(cli("submit", str(after), "--after-any", a).stdout)
    never = f"DependencyNeverSatisfied: {a} ended FAILED (--after)"
    assert wait_until("the cancel", lambda: state_of(cancelled)["state"] == "CANCELLED")
    assert state_of(cancelled)["reason"] == f"{never}; cancelled (--if-dependency-fails cancel)"
    assert wait_until("the kept job's reason", lambda: state_of(kept)["reason"] == never)
    assert state_of(kept)["state"] == "PENDING"
    assert wait_until("the --after-any job", lambda: state_of(anyway)["state"] == "COMPLETED")
    assert "ran" in cli("logs", anyway).stdout and "ran" not in cli("logs", cancelled, check=False).stdout
    assert cli("cancel", kept).stdout.strip() == f"{kept}: CANCELLED"
    # Now that it has failed, waiting for it can never be met: refused at once.
    refused = cli("submit", str(after), "--after", a, check=False)
    assert refused.returncode == 2 and f"--after: got {a}, which ended FAILED" in refused.stderr


# ---- the real SLURM cluster -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    ensure_cluster()


def slurm_script_job(script: Path, *extra: str) -> list[str]:
    return ["submit", "examples/two-nodes.yaml", "-b", "slurm", "--nodes", "1", "--procs-per-node", "1",
            "--cpus-per-task", "1", "--set", "mem_gb=null", "--set", f"slurm.partition={PARTITION}",
            "--set", "time_min=5", "--set", "max_restarts=0", "--set", f"entrypoint={{script: {script}}}", *extra]


def slurm_id(job_id: str) -> str:
    return str(json.loads(Path(os.environ["STJOBS_HOME"], "jobs", job_id, "job.json").read_text())
               ["details"]["slurm_job_id"])


@pytest.mark.slurm
def test_slurm_holds_a_job_for_another_and_keeps_or_cancels_on_failure(slurm_cluster: None, tmp_path: Path) -> None:
    import subprocess

    tmp_path.chmod(0o755)
    out = tmp_path / "a.txt"
    (tmp_path / "write.py").write_text(f"import time\ntime.sleep(3)\nopen({str(out)!r}, 'w').write('hello')\n")
    (tmp_path / "read.py").write_text(f"print('read:', open({str(out)!r}).read())\n")
    (tmp_path / "fail.py").write_text("import sys, time\ntime.sleep(3)\nsys.exit(3)\n")
    writer = job_of(cli(*slurm_script_job(tmp_path / "write.py")).stdout)
    reader = job_of(cli(*slurm_script_job(tmp_path / "read.py", "--sbatch", "--after", writer)).stdout)
    failing = job_of(cli(*slurm_script_job(tmp_path / "fail.py")).stdout)
    cancelled = job_of(cli(*slurm_script_job(tmp_path / "read.py", "--sbatch", "--after", failing)).stdout)
    kept = job_of(cli(*slurm_script_job(tmp_path / "read.py", "--after", failing,
                                        "--if-dependency-fails", "keep")).stdout)  # through submitit
    try:
        queued = subprocess.run(["squeue", "-h", "-o", "%i %E", "-j", ",".join(slurm_id(job) for job in (
            reader, cancelled, kept))], capture_output=True, text=True, check=True).stdout
        dependency = dict(line.split(" ", 1) for line in queued.splitlines())
        assert dependency.get(slurm_id(reader), "").startswith(f"afterok:{slurm_id(writer)}"), queued
        assert dependency.get(slurm_id(kept), "").startswith(f"afterok:{slurm_id(failing)}"), queued

        assert wait_until("the reader", lambda: state_of(reader)["state"] == "COMPLETED", 180)
        assert "read: hello" in cli("logs", reader, "--raw").stdout
        assert wait_until("the cancel", lambda: state_of(cancelled)["state"] == "CANCELLED", 180)
        assert f"it waited for {failing}" in state_of(cancelled)["reason"]
        assert wait_until("DependencyNeverSatisfied",
                          lambda: "DependencyNeverSatisfied" in state_of(kept)["reason"], 180)
        shown = cli("status", kept).stdout
        assert "PENDING" in shown and "DependencyNeverSatisfied" in shown
    finally:
        cli("cancel", kept, check=False)
