"""SLURM jobs as a real site runs them: GPU requests in the site's form, limits that cannot work refused, and (on
the site-shaped test cluster) jobs submitted by an unprivileged user from a venv that is not activated, bound to
their CPUs, given their GPUs by SLURM, and started in the same place however they were submitted."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import stjobs
from stjobs.backends.slurm import renderer as slurm
from stjobs.errors import SpecError
from stjobs.train.events import parse_events
from tests.conftest import EXAMPLES
from tests.slurm_cluster import (
    ACCOUNT,
    GPU_TYPE,
    GPUS_PER_NODE,
    NODES,
    PARTITION,
    SITE_HOME,
    SITE_PYTHON,
    SITE_USER,
    ensure_cluster,
    wait_for_sacct_state,
)


def spec(**changes: Any) -> stjobs.JobSpec:
    return stjobs.load_spec(EXAMPLES / "two-nodes.yaml", overrides=list(changes.items()))


@pytest.mark.parametrize("changes,expected", [
    ({}, {}),  # a CPU job asks for no GPUs
    ({"gpus_per_node": 2, "procs_per_node": 2}, {"gpus_per_node": 2}),
    ({"gpus_per_node": 4, "procs_per_node": 4, "gpu_type": "v100"}, {"gpus_per_node": "v100:4"}),
    ({"gpus_per_node": 4, "procs_per_node": 4, "gpu_type": "v100", "slurm.gpu_request": "gres"},
     {"gres": "gpu:v100:4"}),
    ({"gpus_per_node": 4, "procs_per_node": 4, "slurm.gpu_request": "gres"}, {"gres": "gpu:4"}),
    ({"gpus_per_node": 4, "procs_per_node": 4, "gpu_type": "a100", "slurm.gpu_request": "constraint"},
     {"gpus_per_node": 4, "constraint": "a100"}),
    ({"gpus_per_node": 4, "procs_per_node": 4, "gpu_type": "a100", "slurm.gpu_request": "constraint",
      "slurm.constraint": "ib|roce"}, {"gpus_per_node": 4, "constraint": "(ib|roce)&a100"}),
])
def test_gpu_requests_take_the_sites_form(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    params = slurm.sbatch_parameters(spec(**changes))
    got = {key: params[key] for key in ("gpus_per_node", "gres", "constraint") if key in params}
    assert got == expected


def test_the_batch_file_restates_cpus_per_task_on_srun() -> None:
    text = slurm.render(spec(cpus_per_task=6)).file(slurm.SBATCH_FILE).content
    (srun_line,) = [line for line in text.splitlines() if line.startswith("srun ")]
    assert "#SBATCH --cpus-per-task=6\n" in text and " --cpus-per-task=6 " in srun_line


@pytest.mark.parametrize("changes,field,says", [
    ({"time_min": 2}, "time_min", "more than slurm.signal_lead_s (120 s = 2 min)"),
    ({"time_min": 5, "slurm.signal_lead_s": 300}, "time_min", "more than slurm.signal_lead_s (300 s = 5 min)"),
    ({"gpu_type": "v100"}, "gpu_type", "gpus_per_node of 1 or more"),
    ({"gpu_type": "V100 "}, "gpu_type", "a GPU type as the site names it"),
    ({"slurm.partition": "gpu,,cpu"}, "slurm.partition", "a comma list"),
])
def test_what_cannot_work_on_a_site_is_refused(changes: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(SpecError) as refused:
        slurm.render(spec(**changes))
    assert refused.value.field == field and says in str(refused.value)


def test_only_what_can_resume_is_warned_and_requeued() -> None:
    """A script without stjobs' callback would be killed at T-120 s and start again from step 0: no signal, no
    requeue, and the plan says why. Marked resumable (or the built-in training), it is warned and requeued."""
    script = stjobs.load_spec(EXAMPLES / "my-script.yaml", overrides=[("entrypoint.resumable", False)])
    plan = slurm.render(script)
    text = plan.file(slurm.SBATCH_FILE).content
    # No USR2 trap and no self-requeue; the EXIT/TERM traps of the exit record are there for every job.
    assert "#SBATCH --no-requeue\n" in text and "--signal" not in text and "USR2" not in text
    assert "scontrol requeue" not in text and "trap 'exit 143' TERM" in text
    assert any(note.startswith("preemption: not requeued") for note in plan.notes)
    for resumable in (stjobs.load_spec(EXAMPLES / "my-script.yaml"), spec()):
        text = slurm.render(resumable).file(slurm.SBATCH_FILE).content
        assert "#SBATCH --signal=B:USR2@120\n#SBATCH --requeue\n" in text and "trap stjobs_on_usr2 USR2" in text
    assert stjobs.load_spec(EXAMPLES / "my-script.yaml", overrides=[("entrypoint.resumable", None)]).entrypoint \
        .resumable is False


def test_what_sites_write_is_accepted() -> None:
    assert slurm.sbatch_parameters(spec(**{"slurm.partition": "gpu,gpu-long"}))["partition"] == "gpu,gpu-long"
    slurm.render(spec(time_min=3))  # 180 s > the 120 s lead
    slurm.render(spec(time_min=1, **{"slurm.signal_lead_s": 0}))  # no warning, no loop


# ---- on the site-shaped cluster, as its unprivileged user ---------------------------------------------------

cluster = pytest.mark.slurm


@pytest.fixture(scope="module")
def site() -> Path:
    """The user's project in their home: the example spec and data, and a tiny model they built."""
    ensure_cluster()
    if not SITE_PYTHON.exists():
        pytest.fail(f"{SITE_PYTHON} missing: slurm/cluster/up.sh makes it (STJOBS_PROJECT_SITE_PACKAGES)")
    project = SITE_HOME / "project"
    shutil.rmtree(project, ignore_errors=True)
    (project / "examples").mkdir(parents=True)
    shutil.copytree(EXAMPLES / "data", project / "examples" / "data")
    for name in ("two-nodes.yaml", "my-script.yaml"):
        shutil.copy(EXAMPLES / name, project / "examples" / name)
    shutil.copytree(EXAMPLES / "scripts", project / "examples" / "scripts")
    subprocess.run(["chown", "-R", f"{SITE_USER}:{SITE_USER}", str(project)], check=True)
    as_user(["-m", "stjobs.train.models", "--tiny-from", "examples/data/train.jsonl", "--out", "tiny"], project)
    return project


def as_user(args: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """The site user's venv python, run as that user, with a login-like environment: the venv is NOT activated
    (PATH has only the system's python3, which has no torch)."""
    base = {"HOME": str(SITE_HOME), "USER": SITE_USER, "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = ["runuser", "-u", SITE_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in {**base, **env}.items()),
            str(SITE_PYTHON), *args]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=900)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def stjobs_as_user(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return as_user(["-m", "stjobs", *args], cwd, check)


def site_flags(steps: int, *extra: str, nodes: int = 2, procs: int = 2) -> list[str]:
    args = ["--model", "tiny", "--train-data", "examples/data/train.jsonl", "--max-steps", str(steps),
            "--per-device-batch-size", "8", "--logging-steps", "5", *extra]
    return ["--nodes", str(nodes), "--procs-per-node", str(procs), "--cpus-per-task", str(procs),
            "--set", "mem_gb=null", "--set", f"slurm.partition={PARTITION}", "--set", f"slurm.account={ACCOUNT}",
            "--set", "time_min=10", "--set", "entrypoint.args=" + json.dumps(args)]


def user_job(job_id: str, project: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(stjobs_as_user("status", job_id, "--json", cwd=project).stdout)
    return status


@cluster
def test_a_site_user_trains_two_nodes_with_their_gpus_and_cpus(site: Path) -> None:
    """Submitted from a venv that is not activated: the nodes run that venv's interpreter (their python3 has no
    torch). SLURM binds each node's task to the CPUs asked for and hands each node its GPUs as GRES; every rank
    drives a distinct one of its node's GPUs (entry LOCAL_RANK of CUDA_VISIBLE_DEVICES)."""
    done = stjobs_as_user("submit", "examples/two-nodes.yaml", "-b", "slurm", "--sbatch", "--wait",
                          *site_flags(12), "--gpus-per-node", str(GPUS_PER_NODE), "--set", f"gpu_type={GPU_TYPE}",
                          cwd=site, check=False)
    job_id = done.stdout.split()[1] if done.stdout.startswith("submitted ") else ""
    log = stjobs_as_user("logs", job_id, "--raw", cwd=site, check=False).stdout if job_id else ""
    assert done.returncode == 0 and done.stdout.strip().endswith("COMPLETED"), done.stdout + done.stderr + log
    starts = [e for e in parse_events(log) if e["event"] == "start"]
    assert sorted(e["rank"] for e in starts) == [0, 1, 2, 3] and {e["node"] for e in starts} == set(NODES)
    for start in starts:
        assert len(start["cpus"]) == 2, start  # bound to the task's 2 CPUs (task/affinity)
        assert start["visible_gpus"] == [str(g) for g in range(GPUS_PER_NODE)], start
        assert start["slurm_job_gpus"], start  # SLURM allocated the GRES
    for node in NODES:
        gpus = sorted(e["gpu"] for e in starts if e["node"] == node)
        assert gpus == [str(g) for g in range(GPUS_PER_NODE)], (node, starts)  # one distinct GPU per rank
    record = json.loads(Path(SITE_HOME, ".stjobs", "jobs", job_id, "job.json").read_text())
    assert Path(record["job_dir"]).stat().st_uid == Path(SITE_HOME).stat().st_uid  # the user's, not root's
    assert (site / "outputs" / "two-nodes" / "final").is_dir()  # output_dir taken from the workdir (..)


@cluster
def test_an_interpreter_without_torch_is_refused_before_it_queues(site: Path) -> None:
    done = stjobs_as_user("submit", "examples/two-nodes.yaml", "-b", "slurm", *site_flags(5),
                          "--set", "python=/usr/bin/python3", cwd=site, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.strip() == ("stjobs: error: python: got '/usr/bin/python3'; expected an interpreter that "
                                   "can import torch, stjobs (it cannot import torch stjobs: install stjobs[train] "
                                   "into it, or name another in the spec's python:)")


@cluster
def test_a_rendered_file_submitted_by_hand_starts_where_the_spec_says(site: Path) -> None:
    """The README's `stjobs render ... -o out && cd out && sbatch job.sbatch`, by the user with their venv
    activated (as anyone submitting by hand does): relative paths are taken from the spec file, not from out/."""
    out = site / "out"
    shutil.rmtree(out, ignore_errors=True)
    stjobs_as_user("render", "examples/two-nodes.yaml", "-b", "slurm", "-o", "out",
                   *site_flags(6, nodes=1), "--set", "output_dir=outputs/by-hand", cwd=site)
    activated = f"{SITE_PYTHON.parent}:/usr/local/bin:/usr/bin:/bin"
    done = subprocess.run(["runuser", "-u", SITE_USER, "--", "env", "-i", f"HOME={SITE_HOME}",
                           f"PATH={activated}", "HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1",
                           "sbatch", "--parsable", "job.sbatch"], capture_output=True, text=True, cwd=out, check=True)
    slurm_id = done.stdout.strip().split(";")[0]
    state = wait_for_sacct_state(slurm_id, timeout=300)
    log = "".join(p.read_text(errors="replace") for p in out.glob("*.out"))
    assert state == "COMPLETED", log[-3000:]
    assert (site / "outputs" / "by-hand" / "final").is_dir(), log[-2000:]
    assert not (out / "outputs").exists()


@cluster
@pytest.mark.parametrize("flag,reason", [
    ("slurm.account=other-team", "Invalid account or account/partition combination specified"),
    ("slurm.qos=long", "Invalid qos specification"),
])
def test_the_sites_accounts_and_qos_are_enforced_in_one_line(flag: str, reason: str, site: Path) -> None:
    done = stjobs_as_user("submit", "examples/two-nodes.yaml", "-b", "slurm", "--sbatch", *site_flags(5),
                          "--set", flag, cwd=site, check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"stjobs: error: slurm: submission refused: {reason}"]


@cluster
def test_a_job_must_name_a_partition_it_can_run_in(site: Path) -> None:
    """The site's default partition allows 5 minutes: SLURM's own refusal, in one line."""
    done = stjobs_as_user("submit", "examples/two-nodes.yaml", "-b", "slurm", "--sbatch", *site_flags(5),
                          "--set", "slurm.partition=null", cwd=site, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "stjobs: error: slurm: submission refused: Requested time limit is invalid (missing or exceeds some limit)"]


@cluster
def test_a_users_script_with_the_callback_is_preempted_requeued_and_resumes(site: Path) -> None:
    """examples/scripts/train_pairs.py, a plain sentence-transformers script plus PreemptionCallback, warned by
    SLURM as before its time limit (USR2 to the batch shell): it saves, the job requeues itself, the next run
    resumes from that checkpoint and trains to the planned last step."""
    out = site / "outputs" / "preempted-script"
    shutil.rmtree(out, ignore_errors=True)
    args = ["--model", "tiny", "--train-data", "examples/data/train.jsonl", "--output-dir", str(out),
            "--max-steps", "300", "--save-steps", "1000", "--per-device-batch-size", "8"]
    done = stjobs_as_user("submit", "examples/my-script.yaml", "-b", "slurm", "--sbatch", "--nodes", "2",
                          "--procs-per-node", "1", "--cpus-per-task", "1", "--set", "mem_gb=null",
                          "--set", f"slurm.partition={PARTITION}", "--set", f"slurm.account={ACCOUNT}",
                          "--set", "time_min=10", "--set", "slurm.max_requeues=1",
                          "--set", "entrypoint.args=" + json.dumps(args), cwd=site)
    job_id = done.stdout.split()[1]
    slurm_id = json.loads(Path(SITE_HOME, ".stjobs", "jobs", job_id, "job.json").read_text())["details"][
        "slurm_job_id"]
    deadline = time.monotonic() + 300
    while "'loss'" not in (log := stjobs_as_user("logs", job_id, "--raw", cwd=site).stdout):
        assert time.monotonic() < deadline and user_job(job_id, site)["state"] in ("PENDING", "RUNNING"), log
        time.sleep(1)
    subprocess.run(["scancel", "--batch", "--signal=USR2", slurm_id], check=True)
    deadline = time.monotonic() + 420
    while (state := user_job(job_id, site)["state"]) not in ("COMPLETED", "FAILED", "CANCELLED", "LOST"):
        assert time.monotonic() < deadline, stjobs_as_user("logs", job_id, "--raw", cwd=site).stdout[-3000:]
        time.sleep(2)
    log = stjobs_as_user("logs", job_id, "--raw", cwd=site).stdout
    assert state == "COMPLETED", log[-3000:]
    preempted = [e for e in parse_events(log) if e["event"] == "preempted"]
    assert preempted and {e["signal"] for e in preempted} == {"SIGUSR2"}, log[-3000:]
    checkpoint = preempted[0]["checkpoint"]
    assert "requeueing job" in log and f"resuming from {checkpoint}" in log, log[-3000:]
    assert "trained to step 300" in log and (out / "final").is_dir()
    assert user_job(job_id, site)["requeues"] == 1
