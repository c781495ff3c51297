"""The GPUs a local job sees: the submit-time decision (table), the supervisor's node environment, and the
variable reaching the ranks of a real local job (no GPUs here: a fake nvidia-smi says how many there are)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import stjobs
from stjobs.backends.local.gpus import assign_gpus, job_gpus
from stjobs.backends.local.supervisor import node_env
from stjobs.errors import SpecError, StjobsError, SubmitError
from tests.conftest import EXAMPLES, VENV_BIN, cli, job_of

# gpus_per_node, nodes, strategy, the submitter's CUDA_VISIBLE_DEVICES (None: unset), GPUs present (None: cannot
# tell) -> CUDA_VISIBLE_DEVICES per node, or the start of the one-line error.
TABLE: list[tuple[int, int, str, str | None, int | None, list[str] | str]] = [
    # The bug: one GPU asked for on a 4-GPU machine saw all 4 and became DataParallel.
    (1, 1, "single", None, 4, ["0"]),
    (1, 1, "ddp", None, 4, ["0"]),
    # DataParallel: one process that sees every GPU it asked for, and no more.
    (4, 1, "dp", None, 4, ["0,1,2,3"]),
    (2, 1, "dp", None, 4, ["0,1"]),
    (4, 1, "ddp", None, 8, ["0,1,2,3"]),
    (4, 1, "fsdp", None, 4, ["0,1,2,3"]),
    # Local "nodes" never share a GPU: each takes its own slice.
    (2, 2, "ddp", None, 4, ["0,1", "2,3"]),
    (1, 2, "ddp", None, 2, ["0", "1"]),
    # The submitter's choice of devices is the pool: the first N of it, in its order.
    (1, 1, "single", "2,3", 4, ["2"]),
    (2, 1, "dp", "3, 1,2", 4, ["3,1"]),
    (1, 2, "ddp", "3,1", 4, ["3", "1"]),
    (1, 1, "ddp", "GPU-5f2e-uuid,GPU-77aa-uuid", 2, ["GPU-5f2e-uuid"]),
    (2, 1, "ddp", "1,0", None, ["1,0"]),  # no nvidia-smi: the submitter's list is trusted
    # No GPUs asked for: none seen, whatever the machine has.
    (0, 1, "ddp", None, 4, [""]),
    (0, 2, "ddp", "0,1", None, ["", ""]),
    # Refusals.
    (2, 1, "ddp", None, 1, "gpus_per_node: got 2; expected a job that fits this machine's 1 GPU: it needs 2 GPUs"),
    (2, 2, "ddp", None, 3, "gpus_per_node: got 2; expected a job that fits this machine's 3 GPUs: it needs 4 GPUs "
                           "(2 per node x 2 nodes)"),
    (1, 1, "single", None, 0, "gpus_per_node: got 1; expected 0 here: this machine shows no GPU"),
    (1, 1, "single", None, None, "gpus_per_node: got 1; expected 0 here: this machine shows no GPU"),
    (2, 1, "dp", "3", 4, "gpus_per_node: got 2; expected at most what CUDA_VISIBLE_DEVICES='3' of this shell allows"),
    (1, 1, "ddp", "", 4, "gpus_per_node: got 1; expected at most what CUDA_VISIBLE_DEVICES='' of this shell allows"),
    (1, 1, "ddp", "0,4", 4, "CUDA_VISIBLE_DEVICES: got '0,4'; expected device ids below 4"),
    (2, 1, "single", None, 4, "gpus_per_node: got 2; expected 0 or 1 with strategy single"),
]


@pytest.mark.parametrize("gpus,nodes,strategy,submitter,present,expected", TABLE)
def test_the_gpus_each_node_gets(gpus: int, nodes: int, strategy: str, submitter: str | None, present: int | None,
                                 expected: list[str] | str) -> None:
    if isinstance(expected, list):
        assert assign_gpus(gpus, nodes, strategy, submitter, present) == expected
        return
    with pytest.raises(StjobsError) as raised:
        assign_gpus(gpus, nodes, strategy, submitter, present)
    assert isinstance(raised.value, (SpecError, SubmitError))
    message = str(raised.value)
    assert message.startswith(expected) and "\n" not in message, message


def test_the_machine_is_asked_only_for_a_gpu_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    asked: list[int] = []

    def detect() -> int:
        asked.append(1)
        return 4

    cpu = stjobs.load_spec(EXAMPLES / "tiny-ddp.yaml")
    assert job_gpus(cpu, detect) == [""] and asked == []
    gpu = stjobs.load_spec(EXAMPLES / "tiny-ddp.yaml", overrides=[("gpus_per_node", 2)])
    assert job_gpus(gpu, detect) == ["0,1"] and asked == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,2,1")
    assert job_gpus(gpu, detect) == ["3,2"]


def test_rendering_does_not_ask_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-node x 2-GPU plan renders on a machine without GPUs; only submit would refuse it."""
    monkeypatch.setattr("stjobs.backends.local.gpus.present_gpus", lambda: pytest.fail("rendering asked"))
    plan = stjobs.render(stjobs.load_spec(EXAMPLES / "two-nodes.yaml", overrides=[("gpus_per_node", 2)]), "local")
    assert any(note.startswith("each node sees exactly 2 GPU(s)") for note in plan.notes)


def test_each_node_environment_names_its_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # the submitter's, inherited by the supervisor
    details: dict[str, object] = {"python": "python3", "rdzv_port": 29500, "cuda_visible_devices": ["3", "1"]}
    assert [node_env(tmp_path, "job", node, 2, details)["CUDA_VISIBLE_DEVICES"] for node in (0, 1)] == ["3", "1"]
    del details["cuda_visible_devices"]  # a job submitted before the decision existed: left as it was
    assert node_env(tmp_path, "job", 0, 2, details)["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def fake_nvidia_smi(folder: Path, gpus: int) -> str:
    """A PATH on which ``nvidia-smi -L`` lists ``gpus`` GPUs (and a MIG line, which is not a GPU of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    lines = "".join(f"echo 'GPU {i}: Tesla V100-SXM2-16GB (UUID: GPU-{i:04d})'\n" for i in range(gpus))
    tool.write_text(f"#!/bin/sh\n{lines}echo '  MIG 1g.5gb Device 0: (UUID: MIG-0000)'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return f"{folder}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.slow
def test_ranks_of_a_local_job_see_only_their_gpus(tmp_path: Path) -> None:
    """Two local nodes x 1 GPU, submitted from a shell that picked GPUs 3 and 1 of a 4-GPU machine: node 0's rank
    sees 3 and node 1's sees 1, never all four."""
    script = tmp_path / "show.py"
    script.write_text("import json, os\nprint('SEEN ' + json.dumps({'rank': os.environ['RANK'], "
                      "'gpus': os.environ.get('CUDA_VISIBLE_DEVICES')}), flush=True)\n")
    path = fake_nvidia_smi(tmp_path / "bin", 4)
    done = cli("submit", "examples/two-nodes.yaml", "--wait", "--procs-per-node", "1", "--cpus-per-task", "1",
               "--set", "gpus_per_node=1", "--set", f"entrypoint={{script: {script}}}", "--set", "max_restarts=0",
               env={"PATH": path, "CUDA_VISIBLE_DEVICES": "3,1"}, timeout=300)
    job_id = job_of(done.stdout)
    log = cli("logs", job_id, "--raw").stdout
    seen = sorted((json.loads(line.split("SEEN ", 1)[1]) for line in log.splitlines() if "SEEN " in line),
                  key=lambda row: row["rank"])
    assert seen == [{"rank": "0", "gpus": "3"}, {"rank": "1", "gpus": "1"}], log


def test_submit_refuses_more_gpus_than_the_machine_has(tmp_path: Path, _isolated_home: Path) -> None:
    done = cli("submit", "examples/tiny-ddp.yaml", "--set", "gpus_per_node=4", "--procs-per-node", "4",
               "--cpus-per-task", "4", check=False, env={"PATH": fake_nvidia_smi(tmp_path / "bin", 2)})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].endswith(
        "gpus_per_node: got 4; expected a job that fits this machine's 2 GPUs: it needs 4 GPUs"), done.stderr
    jobs = _isolated_home / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir()), "a refused job leaves nothing behind"
