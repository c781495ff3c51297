"""The SLURM backend on a real 2-node SLURM cluster (slurm/cluster/up.sh: slurmctld, two slurmd, slurmdbd).

Jobs go through the installed ``stjobs`` command, through submitit and through plain sbatch, and their state
comes from SLURM's accounting. Nothing is faked.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import stjobs
from stjobs.backends.slurm import renderer as slurm
from stjobs.backends.slurm.submission import submitit_parameters
from stjobs.train.events import parse_events
from tests.conftest import EXAMPLES, REPO, VENV_BIN, cli, job_of, job_state, offline_env, stjobs_bin
from tests.slurm_cluster import NODES, PARTITION, ensure_cluster


def test_one_mapping_feeds_the_rendered_file_and_submitit(tmp_path: Path) -> None:
    """Every #SBATCH line of the rendered file appears, identical, in the batch script submitit writes."""
    from submitit.slurm.slurm import _make_sbatch_string

    def options(text: str) -> set[tuple[str, str]]:
        # "#SBATCH --key=value" -> (key, value); submitit shell-quotes values, sbatch reads both forms alike.
        out = set()
        for line in text.splitlines():
            if line.startswith("#SBATCH --"):
                key, _, value = line[len("#SBATCH --"):].partition("=")
                out.add((key, shlex.split(value)[0] if value else ""))
        return out

    spec = stjobs.load_spec(EXAMPLES / "gpu-2x8.yaml")
    rendered = slurm.render(spec).file(slurm.SBATCH_FILE).content
    ours = {option for option in options(rendered) if option[0] != "output"}
    params = submitit_parameters(spec, {"STJOBS_JOB_DIR": str(tmp_path), "SLURM_SUBMIT_DIR": str(tmp_path)})
    theirs = options(_make_sbatch_string(command="true", folder=str(tmp_path), **params))
    # The one deliberate difference: submitit's own batch shell traps nothing, so USR2 goes to the tasks.
    ours = {(key, value.replace("B:USR2", "USR2")) for key, value in ours}
    missing = ours - theirs
    assert not missing, f"submitit would not send: {sorted(missing)}"
    assert len(ours) >= 15


def test_pyxis_and_apptainer_flags() -> None:
    pyxis = slurm.render(stjobs.load_spec(EXAMPLES / "pyxis.yaml")).file(slurm.SBATCH_FILE).content
    (srun_line,) = [line for line in pyxis.splitlines() if line.startswith("srun ")]
    assert "'--container-image=ghcr.io#example/stjobs-train:0.1.0'" in srun_line
    assert "--no-container-mount-home" in srun_line and "--mpi" not in srun_line
    assert "#SBATCH --container" not in pyxis, "the container belongs on srun, not on sbatch"
    assert pyxis.index("STJOBS_RDZV_HOST=") < pyxis.index("\nsrun "), "host resolved outside the container"
    apptainer = slurm.render(stjobs.load_spec(EXAMPLES / "apptainer.yaml")).file(slurm.SBATCH_FILE).content
    assert "apptainer exec --nv --bind" in apptainer and "/shared/images/stjobs-train-0.1.0.sif bash" in apptainer
    assert slurm.pyxis_image("nvcr.io/nvidia/pytorch:24.01-py3") == "nvcr.io#nvidia/pytorch:24.01-py3"
    assert slurm.pyxis_image("pytorch/pytorch:2.4") == "pytorch/pytorch:2.4"


def test_single_node_needs_no_rendezvous_host() -> None:
    text = slurm.render(stjobs.load_spec(EXAMPLES / "tiny-ddp.yaml")).file(slurm.SBATCH_FILE).content
    assert "STJOBS_RDZV_HOST" not in text
    assert "--standalone" in slurm.render(stjobs.load_spec(EXAMPLES / "tiny-ddp.yaml")).file("launch.sh").content


@pytest.mark.parametrize("restarts,cap,child,outcome", [
    ("2", 1, "true", 75),  # requeued from outside more often than allowed: never starts the launch again
    ("1", 1, "kill -USR2 $PPID; sleep 0.5", 75),  # preempted with no requeue left: FAILED, not COMPLETED
    ("0", 1, "kill -USR2 $PPID; sleep 0.5", 0),  # preempted within the cap: exits 0 (task 1 requeues nothing)
    ("0", 1, "exit 3", "exited with 3"),
])
def test_submitit_node_task_holds_the_requeue_cap(restarts: str, cap: int, child: str, outcome: int | str,
                                                  monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
                                                  ) -> None:
    import signal

    from stjobs.backends.slurm.task import OUT_OF_REQUEUES_EXIT, NodeTask

    monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
    monkeypatch.setenv("SLURM_PROCID", "1")  # not the task that would run scontrol requeue
    monkeypatch.setenv("SLURM_JOB_ID", "0")
    saved = signal.getsignal(signal.SIGUSR2)
    task = NodeTask(command=["bash", "-c", child], cwd=".", max_requeues=cap)
    try:
        if isinstance(outcome, str):
            with pytest.raises(RuntimeError, match=outcome):
                task()
        elif outcome == OUT_OF_REQUEUES_EXIT:
            with pytest.raises(SystemExit) as ended:
                task()
            assert ended.value.code == OUT_OF_REQUEUES_EXIT
            assert f"slurm.max_requeues={cap}" in capfd.readouterr().err
        else:
            assert task() == outcome
    finally:
        signal.signal(signal.SIGUSR2, saved)


# ---- on the cluster ---------------------------------------------------------------------------------------

cluster = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    ensure_cluster()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    subprocess.run([str(VENV_BIN / "python"), "-m", "stjobs.train.models", "--tiny-from",
                    str(EXAMPLES / "data" / "train.jsonl"), "--out", str(out)], check=True, cwd=REPO,
                   env=offline_env(), capture_output=True)
    return out


def job_args(model: Path, out: Path, steps: int, nodes: int = 2, procs: int = 2, *extra: str) -> list[str]:
    args = ["--model", str(model), "--train-data", "examples/data/train.jsonl", "--max-steps", str(steps),
            "--per-device-batch-size", "16", "--logging-steps", "5", *extra]
    return ["--nodes", str(nodes), "--procs-per-node", str(procs), "--cpus-per-task", str(procs),
            "--set", "mem_gb=null", "--set", f"slurm.partition={PARTITION}", "--set", "time_min=10",
            "--set", "entrypoint.args=" + json.dumps(args), "--set", f"output_dir={out}"]


def check_trained(job_id: str, out: Path, world: int, nodes: set[str]) -> list[dict[str, Any]]:
    assert job_state(job_id)["state"] == "COMPLETED"
    events = parse_events(cli("logs", job_id, "--raw").stdout)
    starts = [e for e in events if e["event"] == "start"]
    assert sorted(e["rank"] for e in starts) == list(range(world))
    assert {e["world_size"] for e in starts} == {world}
    assert {e["node"] for e in starts} == nodes
    losses = [e["loss"] for e in events if e["event"] == "loss"]
    assert losses[-1] < losses[0], losses
    assert [e["path"] for e in events if e["event"] == "saved"] == [str(out / "final")]
    assert (out / "final" / "model.safetensors").is_file() or any((out / "final").glob("**/*.safetensors"))
    return events


@cluster
@pytest.mark.parametrize("mode", ["submitit", "sbatch"])
def test_two_nodes_ddp_training(mode: str, slurm_cluster: None, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    flags = ["--sbatch"] if mode == "sbatch" else []
    done = cli("submit", "examples/two-nodes.yaml", "-b", "slurm", "--wait", *flags,
               *job_args(tiny_model, out, 30))
    job_id = job_of(done.stdout)
    assert done.stdout.strip().endswith(f"{job_id}: COMPLETED"), done.stdout
    check_trained(job_id, out, world=4, nodes=set(NODES))
    record = json.loads(Path(os.environ["STJOBS_HOME"], "jobs", job_id, "job.json").read_text())
    assert record["details"]["mode"] == mode
    table = cli("status").stdout
    assert job_id in table and "COMPLETED" in table


@cluster
def test_single_node_job(slurm_cluster: None, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = cli("submit", "examples/tiny-ddp.yaml", "-b", "slurm", "--wait",
               *job_args(tiny_model, out, 10, nodes=1, procs=2))
    job_id = job_of(done.stdout)
    (node,) = {e["node"] for e in parse_events(cli("logs", job_id, "--raw").stdout) if e["event"] == "start"}
    assert node in NODES
    check_trained(job_id, out, world=2, nodes={node})


@cluster
def test_follow_then_cancel(slurm_cluster: None, tiny_model: Path, tmp_path: Path) -> None:
    done = cli("submit", "examples/two-nodes.yaml", "-b", "slurm", *job_args(tiny_model, tmp_path / "r", 100000))
    job_id = job_of(done.stdout)
    follower = subprocess.Popen([stjobs_bin(), "logs", job_id, "-f", "--raw"], cwd=REPO, env=offline_env(),
                                stdout=subprocess.PIPE, text=True)
    assert follower.stdout is not None
    deadline = time.monotonic() + 240
    seen = ""
    while '"event":"loss"' not in seen:  # logs -f streams a running job as it writes
        assert time.monotonic() < deadline, seen[-2000:]
        seen += follower.stdout.readline()
    assert job_state(job_id)["state"] == "RUNNING"
    assert cli("cancel", job_id).stdout.strip() == f"{job_id}: CANCELLED"
    follower.wait(timeout=120)  # and ends by itself once the job has
    assert follower.returncode == 0
    assert job_state(job_id)["state"] == "CANCELLED"


@cluster
@pytest.mark.parametrize("mode", ["submitit", "sbatch"])
@pytest.mark.parametrize("flags,reason", [
    (["--set", "slurm.partition=nope"], "Invalid partition name specified"),
    (["--cpus-per-task", "64", "--procs-per-node", "2"], "More processors requested than permitted"),
    (["--time-min", "600"], "Requested time limit is invalid"),  # over the partition's MaxTime
])
def test_slurm_refusals_are_one_clean_line(mode: str, flags: list[str], reason: str, slurm_cluster: None,
                                           tmp_path: Path) -> None:
    extra = ["--sbatch"] if mode == "sbatch" else []
    done = cli("submit", "examples/tiny-ddp.yaml", "-b", "slurm", "--set", "mem_gb=null", "--time-min", "5",
               *flags, *extra, check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stjobs: error: slurm: "), done.stderr
    assert reason in lines[0]
    assert done.stdout == ""
    jobs = Path(os.environ["STJOBS_HOME"], "jobs")
    assert not jobs.exists() or list(jobs.iterdir()) == [], "nothing half-submitted"


@cluster
@pytest.mark.parametrize("mode", ["submitit"])
def test_preemption_checkpoints_requeues_and_resumes(mode: str, slurm_cluster: None, tiny_model: Path,
                                                     tmp_path: Path) -> None:
    """USR2 as SLURM sends it ahead of the time limit (to the tasks under submitit): every rank saves, the job
    requeues itself, the next run resumes there and finishes. The rendered batch file's side (USR2 to the batch
    shell, an outside requeue, and the cap) is in tests/test_faults.py; each requeue costs ~2 min of SLURM's hold."""
    out = tmp_path / "run"
    flags = ["--sbatch"] if mode == "sbatch" else []
    done = cli("submit", "examples/two-nodes.yaml", "-b", "slurm", *flags, "--set", "slurm.max_requeues=1",
               *job_args(tiny_model, out, 400, 2, 1, "--save-steps", "1000"))
    job_id = job_of(done.stdout)
    slurm_id = json.loads(Path(os.environ["STJOBS_HOME"], "jobs", job_id, "job.json").read_text())["details"][
        "slurm_job_id"]
    deadline = time.monotonic() + 240
    while not any(e["event"] == "loss" for e in parse_events(cli("logs", job_id, "--raw").stdout)):
        assert time.monotonic() < deadline
        time.sleep(1)
    target = ["--batch"] if mode == "sbatch" else []
    subprocess.run(["scancel", *target, "--signal=USR2", slurm_id], check=True)
    final = json.loads(cli("status", job_id, "--json").stdout)
    deadline = time.monotonic() + 400
    while final["state"] not in ("COMPLETED", "FAILED", "CANCELLED", "LOST"):
        assert time.monotonic() < deadline, cli("logs", job_id, "--raw").stdout[-3000:]
        time.sleep(2)
        final = job_state(job_id)
    log = cli("logs", job_id, "--raw").stdout
    assert final["state"] == "COMPLETED", log[-3000:]
    events = parse_events(log)
    preempted = [e for e in events if e["event"] == "preempted"]
    assert preempted and all(e["checkpoint"] for e in preempted)
    resumed = [e for e in events if e["event"] == "resumed"]
    assert resumed and resumed[0]["checkpoint"] == preempted[0]["checkpoint"]
    if mode == "sbatch":
        assert "requeueing job" in log
    assert (out / "final").is_dir()
