"""Fault injection: break a running job for real and check that it survives, or fails cleanly, and loses nothing.

Each test injects one fault into a real job (real torchrun, real training, the real SLURM test cluster):

- a rank is SIGKILLed after a checkpoint: torchrun restarts the workers (``max_restarts``), they resume from the
  newest complete checkpoint, and the Trainer's own step history runs 1..N exactly once;
- a running SLURM job is requeued from outside (``scontrol requeue``): the ranks checkpoint on SIGTERM, SLURM
  requeues, the next run resumes; ``stjobs status`` counts the requeue; preempted again past
  ``slurm.max_requeues`` the job ends FAILED and says why;
- one node's torchrun agent is SIGKILLed: the step ends at once (``srun --kill-on-bad-exit``), not at a rendezvous
  or collective timeout, and the status names the node;
- slurmctld is down: submitting fails with one clear line and leaves no job directory, and ``stjobs status`` still
  lists every job.

Torn checkpoints (a process killed while writing one) are covered in tests/train/test_train_units.py: a run next to a
cut-off ``trainer_state.json`` skips it and resumes from the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stjobs.train.events import parse_events
from tests.conftest import build_tiny_model, cli, job_of, job_state
from tests.slurm_cluster import PARTITION, STATE_DIR, UP_SCRIPT, ensure_cluster, up_env

STEPS = 60
SAVE_EVERY = 10


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def wait_finished(job_id: str, timeout_s: float) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        now = job_state(job_id)
        return now if now["state"] in ("COMPLETED", "FAILED", "CANCELLED", "LOST") else None

    final: dict[str, Any] = wait_for(f"job {job_id} to end", ended, timeout_s, poll_s=1)
    return final


def processes(marker: tuple[str, str], command_part: str) -> list[tuple[int, dict[str, str]]]:
    """(pid, environment) of this machine's processes whose command line holds ``command_part`` and whose
    environment has ``marker`` (name, value): how a test finds one job's ranks or agents among the others."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if command_part not in cmdline:
                continue
            pairs = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        env = dict(p.decode(errors="replace").partition("=")[::2] for p in pairs if b"=" in p)
        if env.get(marker[0]) == marker[1]:
            found.append((int(entry.name), env))
    return found


def complete_checkpoint(out: Path, step: int) -> bool:
    state_file = out / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    try:
        return bool(json.loads(state_file.read_text())["global_step"] == step)
    except (OSError, ValueError, KeyError):
        return False


def kill_rank_after_checkpoint(out: Path, marker: tuple[str, str], rank: str) -> None:
    """SIGKILL one training process as soon as the first checkpoint is complete."""
    wait_for("the first checkpoint", lambda: complete_checkpoint(out, SAVE_EVERY), 300)
    victims = [pid for pid, env in processes(marker, "stjobs.train") if env.get("RANK") == rank]
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)


def check_resumed_with_no_step_lost_or_repeated(log: str, out: Path, world: int) -> None:
    events = parse_events(log)
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 * world, "every rank started twice: once, then after torchrun's restart"
    resumed = [e for e in events if e["event"] == "resumed"]
    assert len(resumed) == world and len({e["checkpoint"] for e in resumed}) == 1
    assert resumed[0]["step"] >= SAVE_EVERY and resumed[0]["step"] % SAVE_EVERY == 0
    done = [e for e in events if e["event"] == "done"]
    assert [e["global_step"] for e in done] == [STEPS], "the planned number of steps, no more"
    # The Trainer's history as the last checkpoint holds it: every step once, in order (resuming dropped the
    # steps the killed attempt logged after its checkpoint, and the new attempt did them again exactly once).
    history = json.loads((out / "checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert history["global_step"] == STEPS
    logged = [row["step"] for row in history["log_history"] if "loss" in row]
    assert logged == list(range(1, STEPS + 1)), logged
    # What the first attempt logged went past the checkpoint the second one resumed from.
    boundary = events.index(resumed[0])
    first_attempt = [e["step"] for e in events[:boundary] if e["event"] == "loss"]
    second_attempt = [e["step"] for e in events[boundary:] if e["event"] == "loss"]
    assert first_attempt == list(range(1, len(first_attempt) + 1)) and len(first_attempt) >= resumed[0]["step"]
    assert second_attempt == list(range(resumed[0]["step"] + 1, STEPS + 1))
    assert (out / "final" / "modules.json").is_file()


def training(model: Path, out: Path, steps: int = STEPS, *extra: str) -> list[str]:
    args = ["--model", str(model), "--train-data", "examples/data/train.jsonl", "--max-steps", str(steps),
            "--per-device-batch-size", "16", "--logging-steps", "1", "--save-steps", str(SAVE_EVERY), *extra]
    return ["--set", "entrypoint.args=" + json.dumps(args), "--set", f"output_dir={out}"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# ---- local backend ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_local_rank_killed_restarts_and_resumes(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    job_id = job_of(cli("submit", "examples/tiny-ddp.yaml", "-b", "local", "--set", "max_restarts=1",
                        *training(tiny_model, out)).stdout)
    kill_rank_after_checkpoint(out, ("STJOBS_JOB_ID", job_id), rank="1")
    final = wait_finished(job_id, 300)
    log = cli("logs", job_id, "--raw").stdout
    assert final["state"] == "COMPLETED", log[-3000:]
    check_resumed_with_no_step_lost_or_repeated(log, out, world=2)


# ---- the SLURM test cluster --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    ensure_cluster()


def slurm_job(*extra: str) -> list[str]:
    return ["submit", "examples/two-nodes.yaml", "-b", "slurm", "--nodes", "2", "--procs-per-node", "1",
            "--cpus-per-task", "1", "--set", "mem_gb=null", "--set", f"slurm.partition={PARTITION}",
            "--time-min", "10", *extra]


def slurm_id(job_id: str) -> str:
    record = json.loads(Path(os.environ["STJOBS_HOME"], "jobs", job_id, "job.json").read_text())
    return str(record["details"]["slurm_job_id"])


@pytest.mark.slurm
def test_slurm_rank_killed_restarts_and_resumes(slurm_cluster: None, tiny_model: Path, tmp_path: Path) -> None:
    """A worker on the second node dies: both nodes' torchrun agents meet again in a new rendezvous round."""
    out = tmp_path / "run"
    job_id = job_of(cli(*slurm_job("--sbatch", "--set", "max_restarts=1"), *training(tiny_model, out)).stdout)
    kill_rank_after_checkpoint(out, ("SLURM_JOB_ID", slurm_id(job_id)), rank="1")
    final = wait_finished(job_id, 300)
    log = cli("logs", job_id, "--raw").stdout
    assert final["state"] == "COMPLETED", log[-3000:]
    check_resumed_with_no_step_lost_or_repeated(log, out, world=2)


@pytest.mark.slurm
def test_slurm_requeue_resumes_then_a_preemption_past_the_cap_fails(slurm_cluster: None, tiny_model: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    job_id = job_of(cli(*slurm_job("--sbatch", "--set", "slurm.max_requeues=1"),
                        *training(tiny_model, out, 100000)).stdout)
    number = slurm_id(job_id)

    def losses() -> list[dict[str, Any]]:
        return [e for e in parse_events(cli("logs", job_id, "--raw").stdout) if e["event"] == "loss"]

    wait_for("the first loss", losses, 300, poll_s=1)
    # From outside, the way an admin or a preempting job does it: SLURM sends SIGTERM (KillWait 5 s here).
    subprocess.run(["scontrol", "requeue", number], check=True)
    wait_for("the requeued run to resume", lambda: any(
        e["event"] == "resumed" for e in parse_events(cli("logs", job_id, "--raw").stdout)), 420, poll_s=2)
    running = job_state(job_id)
    assert running["requeues"] == 1 and running["state"] in ("RUNNING", "PENDING"), running
    assert "requeues" in cli("status").stdout.splitlines()[0]
    events = parse_events(cli("logs", job_id, "--raw").stdout)
    preempted = [e for e in events if e["event"] == "preempted"]
    assert preempted and all(e["signal"] == "SIGTERM" for e in preempted)
    assert [e for e in events if e["event"] == "resumed"][0]["checkpoint"] == preempted[0]["checkpoint"]

    # Preempted again with the one allowed requeue spent: the ranks checkpoint, and the job ends FAILED.
    wait_for("a loss after the resume", lambda: len(losses()) > len([e for e in events if e["event"] == "loss"]),
             300, poll_s=1)
    subprocess.run(["scancel", "--batch", "--signal=USR2", number], check=True)
    final = wait_finished(job_id, 300)
    assert final["state"] == "FAILED" and final["exit_code"] == 75, final
    assert final["requeues"] == 1
    assert "slurm.max_requeues=1" in final["reason"] and "last checkpoint is kept" in final["reason"], final
    last = [e for e in parse_events(cli("logs", job_id, "--raw").stdout) if e["event"] == "preempted"][-1]
    assert complete_checkpoint(out, int(last["step"]))
    assert not (out / "final").exists()


@pytest.mark.slurm
def test_slurm_lost_node_ends_the_step_at_once(slurm_cluster: None, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    job_id = job_of(cli(*slurm_job("--sbatch"), *training(tiny_model, out, 100000)).stdout)
    number = slurm_id(job_id)
    wait_for("the first loss", lambda: any(
        e["event"] == "loss" for e in parse_events(cli("logs", job_id, "--raw").stdout)), 300, poll_s=1)
    agents = [pid for pid, env in processes(("SLURM_JOB_ID", number), "torch.distributed.run")
              if env.get("SLURMD_NODENAME") == "n2"]
    assert len(agents) == 1, agents
    os.kill(agents[0], signal.SIGKILL)  # the node's agent and the node's rank with it, as when a node dies
    killed_at = time.monotonic()
    final = wait_finished(job_id, 120)
    # Far below the rendezvous (900 s) and process-group (1800 s) timeouts a hang would wait for.
    assert time.monotonic() - killed_at < 60
    assert final["state"] == "FAILED", final
    assert "n2: task 1" in final["reason"], final


@pytest.mark.slurm
def test_slurmctld_down_refuses_cleanly_and_status_still_works(slurm_cluster: None, tiny_model: Path,
                                                               tmp_path: Path) -> None:
    before = cli("submit", "examples/tiny-ddp.yaml", "-b", "local", *training(tiny_model, tmp_path / "l", 2))
    local_id = job_of(before.stdout)
    jobs = Path(os.environ["STJOBS_HOME"], "jobs")
    existing = sorted(p.name for p in jobs.iterdir())
    pid = int((STATE_DIR / "run" / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for("slurmctld to stop", lambda: not Path(f"/proc/{pid}").exists(), 60)
        for mode in ([], ["--sbatch"]):
            done = cli(*slurm_job(*mode), *training(tiny_model, tmp_path / "s", 2), check=False)
            assert done.returncode == 1 and done.stdout == "", done
            lines = done.stderr.strip().splitlines()
            assert lines == [lines[0]] and lines[0].startswith("stjobs: error: slurm: "), done.stderr
            assert "Unable to contact slurm controller" in lines[0]
            assert sorted(p.name for p in jobs.iterdir()) == existing, "no half-written job directory"
        listing = cli("status", "--json").stdout
        rows = {row["job_id"]: row for row in map(json.loads, listing.splitlines())}
        assert set(rows) == set(existing) and local_id in rows
        assert rows[local_id]["state"] in ("PENDING", "RUNNING", "COMPLETED")
    finally:
        subprocess.run(["bash", str(UP_SCRIPT)], check=True, capture_output=True, timeout=300, env=up_env())
    assert wait_finished(local_id, 300)["state"] == "COMPLETED"
