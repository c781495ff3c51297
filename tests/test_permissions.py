"""Rendered files and job directories are never world-writable, even when the process umask is 000.

A world-writable launch script or job directory lets any local user run code as the job's owner (or rewrite
its status), so stjobs sets file modes itself and adds o-w to the umask of everything it starts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stjobs.cli import main

PROBE = "print('permissions probe ran', flush=True)\n"


@pytest.fixture()
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def world_writable(root: Path) -> list[str]:
    paths = [root, *root.rglob("*")]
    return [f"{path} {stat.filemode(path.lstat().st_mode)}" for path in paths
            if not path.is_symlink() and path.lstat().st_mode & stat.S_IWOTH]


def write_spec(work: Path) -> Path:
    (work / "probe.py").write_text(PROBE)
    spec = {"name": "perms", "image": "ghcr.io/org/train:1.0", "workdir": str(work),
            "entrypoint": {"script": "probe.py"}}
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.usefixtures("umask_000")
@pytest.mark.parametrize("backend", ["local", "slurm", "k8s"])
def test_rendered_files_are_not_world_writable(backend: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    out = tmp_path / "made" / "by" / "render" / "out"  # parents that do not exist yet are created too
    assert main(["render", str(spec), "-b", backend, "-o", str(out)]) == 0
    assert os.umask(0) == 0, "the umask is the caller's again afterwards"
    assert world_writable(tmp_path / "made") == []
    for path in out.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o755, path
        else:
            assert mode in (0o644, 0o755), (path, oct(mode))
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    if backend != "k8s":
        assert stat.S_IMODE((out / "launch.sh").stat().st_mode) == 0o755


@pytest.mark.usefixtures("umask_000")
def test_job_directory_of_a_local_job_is_not_world_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "fresh" / "stjobs-home"  # created by the submit itself, under umask 000
    monkeypatch.setenv("STJOBS_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path)
    assert main(["submit", str(spec), "--wait"]) == 0, capsys.readouterr()
    printed = capsys.readouterr().out
    job_id = printed.split()[1]
    job_dir = home / "jobs" / job_id
    assert "permissions probe ran" in (job_dir / "output.log").read_text()
    # What the job wrote while running (logs, status, torchrun's per-rank files) is covered as well.
    made = {path.name for path in job_dir.iterdir()}
    assert {"job.json", "launch.sh", "output.log", "status.json", "supervisor.log"} <= made
    assert any((job_dir / "logs").rglob("*")), "torchrun's per-rank logs"
    assert world_writable(tmp_path / "fresh") == []
    assert stat.S_IMODE((home / "jobs").stat().st_mode) == 0o700, "job records are the owner's alone"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert os.umask(0) == 0
