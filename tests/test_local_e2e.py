"""End to end on the local backend: real torchrun, real DDP (gloo), real sentence-transformers training.

Everything goes through the installed ``stjobs`` command, the way a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from stjobs.train.events import parse_events
from tests.conftest import REPO, build_tiny_model, cli, job_of, job_state, offline_env, stjobs_bin

pytestmark = pytest.mark.slow


def train_args(model: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """--set overrides: the built-in entrypoint's arguments, and the spec's output_dir (which reaches the
    training through STJOBS_OUTPUT_DIR, not through an argument)."""
    args = ["--model", str(model), "--train-data", "examples/data/train.jsonl", "--max-steps", str(steps),
            "--per-device-batch-size", "16", "--logging-steps", "5", *extra]
    return ["--set", "entrypoint.args=" + json.dumps(args), "--set", f"output_dir={out}"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_two_process_ddp_training(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = cli("submit", "examples/tiny-ddp.yaml", "--wait",
               *train_args(tiny_model, out, 60, "--eval-data", "examples/data/eval.jsonl"))
    job_id = job_of(done.stdout)
    assert done.stdout.strip().endswith(f"{job_id}: COMPLETED"), done.stdout
    assert job_state(job_id)["state"] == "COMPLETED"

    log = cli("logs", job_id, "--raw").stdout
    events = parse_events(log)
    starts = {e["rank"]: e for e in events if e["event"] == "start"}
    assert sorted(starts) == [0, 1], "both ranks joined"
    assert {e["world_size"] for e in starts.values()} == {2}
    assert {e["backend"] for e in starts.values()} == {"gloo"}
    wrapped = [e for e in events if e["event"] == "wrapped"]
    assert {e["model_wrapper"] for e in wrapped} == {"DistributedDataParallel"}
    assert {e["distributed_type"] for e in wrapped} == {"MULTI_CPU"}
    assert {(e["requested"], e["ran"], e["as_requested"]) for e in wrapped} == {("ddp", "ddp", True)}
    assert "warning" not in done.stderr
    # tiny-bert keeps BERT's pooler, which mean pooling never uses: DDP leaves it out (or would have to search for
    # unused parameters after every backward), and it never moves, so both ranks keep the same copy.
    assert [(e["parameters"], e["ignored_by_ddp"]) for e in events if e["event"] == "unused"] == [
        (["0.model.pooler.dense.weight", "0.model.pooler.dense.bias"], True)]
    assert {(e["per_device_batch_size"], e["global_batch_size"], e["gather_across_devices"])
            for e in starts.values()} == {(16, 32, True)}

    losses = [e["loss"] for e in events if e["event"] == "loss"]
    assert len(losses) >= 6
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"loss did not decrease: {losses}"
    scores = {e["when"]: e["score"] for e in events if e["event"] == "eval"}
    assert scores["after"] > scores["before"], scores
    throughput = [e for e in events if e["event"] == "throughput"]
    assert throughput and throughput[0]["samples_per_second"] > 0
    # What a person sees (piped: plain lines): the run, each logged step of the planned 60, the evaluations and
    # the training's summary, and no machine event or per-rank library line.
    shown = cli("logs", job_id).stdout.splitlines()
    assert shown[0].startswith("training ") and "2 processes (ddp), 32 per step, 60 steps" in shown[0], shown
    steps = [line for line in shown if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == [f"{step}/60" for step in range(5, 61, 5)], shown
    assert all("samples/s" in line for line in steps[1:]), steps
    assert [line.split()[-1] for line in shown if line.startswith("eval ")] == ["(before)", "(after)"], shown
    assert any(line.startswith("stjobs.train: trained 60 steps") for line in shown), shown
    assert not [line for line in shown if "STJOBS_EVENT" in line or line.startswith("[rank")], shown
    # The events files (one per rank, in the job's directory) hold the same events with the time they were written;
    # `logs --events` prints them, a JSON object a line.
    job_dir = Path(json.loads(Path(os.environ["STJOBS_HOME"], "jobs", job_id, "job.json").read_text())["job_dir"])
    assert sorted(path.name for path in (job_dir / "events").iterdir()) == ["rank-0.jsonl", "rank-1.jsonl"]
    filed = [json.loads(line) for line in cli("logs", job_id, "--events").stdout.splitlines()]
    assert all(isinstance(e.pop("time"), float) for e in filed)
    assert sorted(filed, key=json.dumps) == sorted(events, key=json.dumps)
    assert [e for e in filed if e["rank"] == 0] == [e for e in events if e["rank"] == 0]  # in the order written
    assert throughput[0]["steady_samples_per_second"] > 0 and throughput[0]["steady_steps"] == 54  # 60 - 5 - 1

    (saved,) = [e["path"] for e in events if e["event"] == "saved"]
    assert Path(saved) == out / "final"
    from safetensors.torch import load_file

    (before,), (after,) = (list(folder.glob("**/model.safetensors")) for folder in (tiny_model, out / "final"))
    first, last = load_file(str(before)), load_file(str(after))
    pooler = [name for name in first if "pooler" in name]
    assert len(pooler) == 2 and all(first[name].equal(last[name]) for name in pooler)
    assert not all(first[name].equal(last[name]) for name in first if "pooler" not in name), "the rest trained"
    probe = ("import sys; from sentence_transformers import SentenceTransformer; "
             "m = SentenceTransformer(sys.argv[1]); e = m.encode(['a question', 'an answer']); print(e.shape)")
    shape = subprocess.run([str(Path(stjobs_bin()).parent / "python"), "-c", probe, saved], check=True,
                           capture_output=True, text=True, env=offline_env()).stdout.strip()
    assert shape.startswith("(2, ")

    # Per-rank views: the combined log split by rank prefix, and torchrun's own per-rank files.
    rank1 = cli("logs", job_id, "--rank", "1").stdout.splitlines()
    assert rank1 and all(line.startswith("[rank1]:") for line in rank1)
    assert [e["rank"] for e in parse_events("\n".join(rank1)) if e["event"] == "start"] == [1]
    per_rank = sorted(p.parent.name for p in job_dir.glob("logs/node0/*/attempt_0/*/stdout.log"))
    assert per_rank == ["0", "1"]

    table = cli("status").stdout
    assert job_id in table and "COMPLETED" in table


def test_fsdp_that_falls_back_to_ddp_is_reported(tiny_model: Path, tmp_path: Path) -> None:
    """On CPUs accelerate runs an FSDP request as plain DDP without a word: stjobs says so."""
    done = cli("submit", "examples/tiny-ddp.yaml", "--wait", "--set", "strategy=fsdp",
               *train_args(tiny_model, tmp_path / "run", 6))
    job_id = job_of(done.stdout)
    assert done.stdout.strip().endswith(f"{job_id}: COMPLETED"), done.stdout
    expected = f"stjobs: warning: {job_id}: strategy fsdp was requested but the training ran as ddp"
    assert expected in done.stderr, done.stderr
    assert expected in cli("status", job_id).stderr
    wrapped = [e for e in parse_events(cli("logs", job_id, "--raw").stdout) if e["event"] == "wrapped"]
    assert {(e["ran"], e["as_requested"]) for e in wrapped} == {("ddp", False)}


def test_accelerate_launcher_runs_two_processes(tiny_model: Path, tmp_path: Path) -> None:
    """accelerate with the generated config: two real DDP ranks, not a silent single process."""
    done = cli("submit", "examples/accelerate.yaml", "--wait", *train_args(tiny_model, tmp_path / "run", 10))
    job_id = job_of(done.stdout)
    events = parse_events(cli("logs", job_id, "--raw").stdout)
    assert sorted(e["rank"] for e in events if e["event"] == "start") == [0, 1]
    assert {e["world_size"] for e in events if e["event"] == "start"} == {2}
    assert {e["model_wrapper"] for e in events if e["event"] == "wrapped"} == {"DistributedDataParallel"}


def test_two_local_nodes_meet_at_a_c10d_rendezvous(tiny_model: Path, tmp_path: Path) -> None:
    done = cli("submit", "examples/two-nodes.yaml", "--wait", "--procs-per-node", "1", "--cpus-per-task", "1",
               *train_args(tiny_model, tmp_path / "run", 10))
    job_id = job_of(done.stdout)
    assert job_state(job_id)["state"] == "COMPLETED", cli("logs", job_id, "--raw").stdout[-3000:]
    events = parse_events(cli("logs", job_id, "--raw").stdout)
    starts = [e for e in events if e["event"] == "start"]
    assert sorted(e["rank"] for e in starts) == [0, 1]
    assert {e["world_size"] for e in starts} == {2}
    assert {e["local_rank"] for e in starts} == {0}, "one process on each of two nodes"
    job_dir = Path(os.environ["STJOBS_HOME"], "jobs", job_id)
    assert sorted(p.name for p in (job_dir / "logs").iterdir()) == ["node0", "node1"]


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_cancel_stops_every_process(tiny_model: Path, tmp_path: Path) -> None:
    done = cli("submit", "examples/tiny-ddp.yaml", *train_args(tiny_model, tmp_path / "run", 100000))
    job_id = job_of(done.stdout)
    deadline = time.monotonic() + 180
    while not any(e["event"] == "loss" for e in parse_events(cli("logs", job_id, "--raw").stdout)):
        assert time.monotonic() < deadline, "training never started"
        assert job_state(job_id)["state"] == "RUNNING"
        time.sleep(1)
    assert len(_processes_with(f"STJOBS_JOB_ID={job_id}")) >= 3  # agent + two workers
    assert cli("cancel", job_id).stdout.strip() == f"{job_id}: CANCELLED"
    assert job_state(job_id)["state"] == "CANCELLED"
    time.sleep(0.5)
    assert _processes_with(f"STJOBS_JOB_ID={job_id}") == []


def test_follow_streams_until_the_end(tmp_path: Path) -> None:
    script = tmp_path / "count.py"
    script.write_text("import os, time\nfor i in range(5):\n    print('tick', i, os.environ['RANK'], flush=True)\n"
                      "    time.sleep(0.3)\n")
    follow = subprocess.Popen([stjobs_bin(), "submit", "examples/tiny-ddp.yaml", "--follow", "--set",
                               f"entrypoint={{script: {script}}}"], cwd=REPO, env=offline_env(),
                              stdout=subprocess.PIPE, text=True)
    assert follow.stdout is not None
    first = follow.stdout.readline()
    job_id = job_of(first)
    rest = follow.stdout.read()
    assert follow.wait(timeout=120) == 0
    for rank in (0, 1):
        assert f"[rank{rank}]:tick 4 {rank}" in rest
    assert rest.strip().endswith(f"{job_id}: COMPLETED")


def test_one_failing_node_ends_the_job(tmp_path: Path) -> None:
    """Like srun --kill-on-bad-exit: when one node's agent fails, the others are stopped, not left waiting."""
    script = tmp_path / "fail.py"
    script.write_text("import os, sys, time\nif os.environ['RANK'] == '1':\n    sys.exit(3)\ntime.sleep(600)\n")
    started = time.monotonic()
    done = cli("submit", "examples/two-nodes.yaml", "--wait", "--procs-per-node", "1", "--cpus-per-task", "1",
               "--set", f"entrypoint={{script: {script}}}", "--set", "max_restarts=0", check=False, timeout=300)
    job_id = job_of(done.stdout)
    assert done.returncode != 0
    status = job_state(job_id)
    assert status["state"] == "FAILED" and status["exit_code"] != 0
    assert "exited with" in status["reason"]
    assert time.monotonic() - started < 120
    assert _processes_with(f"STJOBS_JOB_ID={job_id}") == []


def test_a_failed_jobs_reason_starts_with_the_training_error(tmp_path: Path) -> None:
    """The first error of the rank that failed first (a Python exception's last line), then which node exited."""
    script = tmp_path / "fail.py"
    script.write_text("import os, time\nif os.environ['RANK'] == '1':\n    raise ValueError('no rows left')\n"
                      "time.sleep(600)\n")
    done = cli("submit", "examples/two-nodes.yaml", "--wait", "--procs-per-node", "1", "--cpus-per-task", "1",
               "--set", f"entrypoint={{script: {script}}}", "--set", "max_restarts=0", check=False, timeout=300)
    status = job_state(job_of(done.stdout))
    assert status["state"] == "FAILED"
    assert status["reason"].startswith("rank 1: ValueError: no rows left; node "), status
    assert status["reason"].endswith("see output.log"), status
