"""A preemption notice (USR2) sent to each node's launcher, as SLURM's srun does: the launcher forwards it to every
rank, which saves a checkpoint, and nothing is left running: for torchrun and for accelerate, whose in-process
torchrun agent only handles USR2 when told through its environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import stjobs
from stjobs.train import events
from tests.conftest import EXAMPLES, REPO, VENV_BIN, offline_env


def job_processes(out: Path) -> list[int]:
    """Processes of this test's job, found by the output directory in their environment (any session)."""
    marker = b"STJOBS_OUTPUT_DIR=" + os.fsencode(out) + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes() + b"\0":
                    found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_usr2_to_the_launcher_reaches_every_rank_and_leaves_nothing_running(launcher: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--model", "tiny-bert", "--train-data", "examples/data/train.jsonl", "--max-steps", "100000",
            "--logging-steps", "2", "--per-device-batch-size", "8"]
    spec = stjobs.load_spec(EXAMPLES / "accelerate.yaml", overrides=[
        ("launcher", launcher), ("output_dir", str(out)), ("entrypoint.args", args)])
    stjobs.render_to(spec, tmp_path / "job")
    console = tmp_path / "console.log"
    with console.open("w") as sink:  # a file, not a pipe: ranks that outlive the launcher would hold a pipe open
        launch = subprocess.Popen(["bash", str(tmp_path / "job" / "launch.sh")], cwd=REPO, start_new_session=True,
                                  env=offline_env(STJOBS_PYTHON=str(VENV_BIN / "python")), stdout=sink,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while '"event":"loss"' not in console.read_text(errors="replace"):
            assert time.monotonic() < deadline and launch.poll() is None, console.read_text()[-3000:]
            time.sleep(0.5)
        launch.send_signal(signal.SIGUSR2)  # the launcher alone: `exec` made it the node script's process
        launch.wait(timeout=120)
        time.sleep(1)
        assert job_processes(out) == [], "ranks outlived their launcher"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launch.pid, signal.SIGKILL)
        for pid in job_processes(out):  # torchrun's workers run in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    lines = console.read_text(errors="replace").splitlines(keepends=True)
    preempted = [e for e in events.parse_events("".join(lines)) if e["event"] == "preempted"]
    assert sorted(e["rank"] for e in preempted) == [0, 1], "".join(lines[-60:])
    assert all(Path(e["checkpoint"]).is_dir() for e in preempted)
