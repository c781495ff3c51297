"""Sweeps (issue 17): a ``sweep:`` block becomes one job per point; on SLURM one job array.

The points and their specs, the renders of each backend, a sweep's status line and results without a scheduler;
then real local jobs (points one after another, a failing point, a resubmit that reruns only it) and Kubernetes
against the fake API server. The 2 x 2 sweep of 2-node trainings on the test cluster is in test_sweeps_slurm.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import stjobs
from stjobs.config import load_spec, validate_spec
from stjobs.errors import SpecError
from stjobs.jobs import JobRecord, JobStatus, State
from stjobs.sweep import expand, set_option
from stjobs.sweep_jobs import Result, results, results_table, summary
from tests.conftest import cli, job_of, wait_until

BASE = {"name": "sw", "nodes": 2, "procs_per_node": 1,
        "entrypoint": {"args": ["--model", "m", "--train-data", "d.jsonl", "--learning-rate", "1e-5"]}}


def sweep_spec(sweep: dict[str, Any], **extra: Any) -> stjobs.JobSpec:
    return validate_spec({**BASE, **extra, "sweep": sweep})


def test_the_grid_varies_its_first_key_slowest_and_the_points_follow() -> None:
    points = expand(sweep_spec({"grid": {"--learning-rate": ["1e-5", "3e-5"], "--loss": ["A", "B"]},
                                "points": [{"--learning-rate": "5e-5", "env.SEED": 3, "nodes": 1}]}))
    assert [point.label for point in points] == [
        "--learning-rate=1e-5 --loss=A", "--learning-rate=1e-5 --loss=B", "--learning-rate=3e-5 --loss=A",
        "--learning-rate=3e-5 --loss=B", "--learning-rate=5e-5 env.SEED=3 nodes=1"]
    assert [point.spec.name for point in points] == [f"sw-p{index}" for index in range(5)]
    assert [point.spec.output_dir for point in points] == [f"outputs/sw/p{index}" for index in range(5)]
    assert points[1].spec.entrypoint.args == ("--model", "m", "--train-data", "d.jsonl", "--learning-rate", "1e-5",
                                              "--loss", "B")
    assert (points[4].spec.env, points[4].spec.nodes) == ({"SEED": "3"}, 1)
    assert all(not point.spec.sweep.enabled for point in points)


@pytest.mark.parametrize("args, option, value, expected", [
    (["--a", "1", "--lr", "2", "--b"], "--lr", 3, ["--a", "1", "--lr", "3", "--b"]),
    (["--lr=2", "--b"], "--lr", "3e-5", ["--lr", "3e-5", "--b"]),
    (["--a", "1"], "--lr", 3, ["--a", "1", "--lr", "3"]),
    (["--lr", "1", "--x", "--lr", "2"], "--lr", 5, ["--lr", "5", "--x"]),  # a repeated option: once, first place
    (["--a", "--flag", "--b"], "--flag", False, ["--a", "--b"]),
    (["--a"], "--flag", True, ["--a", "--flag"]),
])
def test_a_training_argument_is_set_in_place(args: list[str], option: str, value: Any, expected: list[str]) -> None:
    assert set_option(args, option, value) == expected


@pytest.mark.parametrize("sweep, field, expected", [
    ({"grid": {"learning rate": [1]}}, "sweep.grid.learning rate", "a training argument such as --learning-rate"),
    ({"grid": {"--lr": []}}, "sweep.grid.--lr", "a non-empty list of values"),
    ({"grid": {"--lr": [1, 1]}}, "sweep.grid.--lr", "each value once"),
    ({"grid": {"--lr": [[1]]}}, "sweep.grid.--lr[0]", "a string, a number or a boolean"),
    ({"grid": {"name": ["a"]}}, "sweep.grid.name", "other than name, sweep and the output directory"),
    ({"points": [{}]}, "sweep.points[0]", "a non-empty mapping"),
    ({"grid": {"--lr": list(range(101)), "--b": list(range(100))}}, "sweep", "at most 10000 points"),
])
def test_a_bad_sweep_block_is_refused_naming_the_field(sweep: dict[str, Any], field: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        sweep_spec(sweep)
    assert caught.value.field == field and expected in caught.value.expected, str(caught.value)


def test_a_point_that_makes_no_valid_spec_is_named() -> None:
    with pytest.raises(SpecError, match=r"^sweep point 1 \(nodes=0\): nodes: got 0; expected"):
        expand(sweep_spec({"points": [{"nodes": 1}, {"nodes": 0}]}))
    with pytest.raises(SpecError, match=r"^name: got '.{40}'; expected at most 38 characters for a sweep of 11"):
        expand(validate_spec({**BASE, "name": "a" * 40, "sweep": {"grid": {"--lr": list(range(11))}}}))


def test_slurm_renders_one_array_over_the_points(tmp_path: Path) -> None:
    spec = sweep_spec({"grid": {"--learning-rate": ["1e-5", "3e-5"]}, "points": [{"env.SEED": 1}],
                       "max_running": 2}, slurm={"partition": "gpu"})
    plan = stjobs.render_to(spec, tmp_path / "out", "slurm")
    batch = (tmp_path / "out" / "job.sbatch").read_text()
    assert "#SBATCH --array=0-2%2\n" in batch and "#SBATCH --output=%x-%A_%a.out\n" in batch
    assert "#SBATCH --job-name=sw\n" in batch
    assert 'STJOBS_JOB_DIR="${STJOBS_JOB_DIR:-}/points/${SLURM_ARRAY_TASK_ID:?' in batch
    for index in range(3):
        launch = (tmp_path / "out" / "points" / str(index) / "launch.sh").read_text()
        assert f"export STJOBS_OUTPUT_DIR=outputs/sw/p{index}\n" in launch
        assert not (tmp_path / "out" / "points" / str(index) / "job.sbatch").exists()
    assert "--learning-rate 3e-5" in (tmp_path / "out" / "points" / "1" / "launch.sh").read_text()
    listed = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [point["values"] for point in listed["points"]] == [
        {"--learning-rate": "1e-5"}, {"--learning-rate": "3e-5"}, {"env.SEED": 1}]
    assert len(plan.points) == 3 and plan.command == ("sbatch", "job.sbatch")
    described = plan.describe()
    assert "points/0 .. points/2/  3 point(s), each: launch.sh, stjobs.yaml" in described
    assert "one job array of 3 task(s), at most 2 running at once" in described
    subprocess.run(["bash", "-n", str(tmp_path / "out" / "job.sbatch")], check=True)


def test_slurm_refuses_points_that_ask_for_different_allocations() -> None:
    spec = sweep_spec({"grid": {"nodes": [1, 2]}}, slurm={"partition": "gpu"})
    with pytest.raises(SpecError, match=r"^sweep point 1 \(nodes=2\): got 'nodes'; expected the same SLURM "
                                        r"request in every point"):
        stjobs.render(spec, "slurm")
    assert len(stjobs.render(spec, "local").points) == 2  # locally each point is a job of its own size


def test_k8s_renders_one_labelled_object_per_point() -> None:
    spec = sweep_spec({"grid": {"--learning-rate": ["1e-5", "3e-5"]}}, image="ghcr.io/org/train:1")
    plan = stjobs.render(spec, "k8s")
    import yaml

    manifests = [yaml.safe_load(plan.file(f"points/{index}/pytorchjob.yaml").content) for index in range(2)]
    assert [item["metadata"]["name"] for item in manifests] == ["sw-p0", "sw-p1"]
    assert {item["metadata"]["labels"]["stjobs.dev/sweep"] for item in manifests} == {"sw"}
    assert yaml.safe_load(plan.file("kustomization.yaml").content)["resources"] == ["points/0", "points/1"]
    with pytest.raises(SpecError, match=r"^sweep.max_running: got 2; expected no limit on the k8s backend"):
        stjobs.render(sweep_spec({"grid": {"--lr": [1, 2]}, "max_running": 2}, image="ghcr.io/org/train:1"), "k8s")


def test_a_local_sweep_of_gpu_jobs_runs_one_point_at_a_time() -> None:
    spec = sweep_spec({"grid": {"--lr": [1, 2]}, "max_running": 2}, nodes=1, gpus_per_node=1)
    with pytest.raises(SpecError, match=r"^sweep.max_running: got 2; expected 1 for a local sweep of GPU jobs"):
        stjobs.render(spec, "local")


# ---- a sweep's line and results -----------------------------------------------------------------------------

def record(job_id: str, **details: Any) -> JobRecord:
    return JobRecord(job_id=job_id, backend="slurm", name=job_id, job_dir=f"/x/{job_id}", submitted_at=0.0,
                     nodes=1, procs_per_node=1, details=details)


SWEEP = record("s", sweep={"points": [{"index": i, "label": f"--lr={i}", "job_id": f"s-p{i}", "job_dir": f"/p{i}"}
                                      for i in range(3)]})


@pytest.mark.parametrize("states, state, counts", [
    ([State.RUNNING, State.PENDING, State.COMPLETED], State.RUNNING, "1 PENDING, 1 RUNNING, 1 COMPLETED"),
    ([State.PENDING, State.COMPLETED, State.COMPLETED], State.PENDING, "1 PENDING, 2 COMPLETED"),
    ([State.COMPLETED] * 3, State.COMPLETED, "3 COMPLETED"),
    ([State.COMPLETED, State.FAILED, State.CANCELLED], State.FAILED, "1 COMPLETED, 1 FAILED, 1 CANCELLED"),
    ([State.COMPLETED, State.CANCELLED, State.CANCELLED], State.CANCELLED, "1 COMPLETED, 2 CANCELLED"),
])
def test_a_sweep_is_one_line_counting_its_points(states: list[State], state: State, counts: str) -> None:
    points = [JobStatus(record(f"s-p{i}"), item, reason="boom" if item is State.FAILED else "")
              for i, item in enumerate(states)]
    line = summary(SWEEP, points)
    assert line.state is state
    assert line.reason.startswith(f"sweep of 3 point(s): {counts}")
    assert ("s-p1: boom" in line.reason) is (State.FAILED in states)


def test_results_put_the_best_score_first_then_the_lowest_loss() -> None:
    said: dict[str, list[dict[str, Any]]] = {
        "s-p0": [{"event": "loss", "rank": 0, "step": 10, "loss": 0.5},
                 {"event": "eval", "rank": 0, "metric": "ndcg", "score": 0.7, "when": "after"}],
        "s-p1": [{"event": "loss", "rank": 0, "step": 10, "loss": 0.2}],
        "s-p2": [{"event": "eval", "rank": 0, "metric": "ndcg", "score": 0.6},
                 {"event": "eval", "rank": 0, "metric": "ndcg", "score": 0.9},
                 {"event": "eval", "rank": 1, "metric": "ndcg", "score": 0.1}],  # only rank 0 counts
    }
    points = [JobStatus(record(f"s-p{i}"), State.COMPLETED) for i in range(3)]
    found = results(SWEEP, points, lambda job_id: said[job_id])
    assert [(row.job_id, row.score, row.loss) for row in found] == [
        ("s-p2", 0.9, None), ("s-p0", 0.7, 0.5), ("s-p1", None, 0.2)]
    table = results_table(found).splitlines()
    assert table[0].split() == ["point", "values", "state", "score", "loss", "steps"]
    assert table[1].split() == ["p2", "--lr=2", "COMPLETED", "ndcg=0.9000", "-", "-"]


def test_a_point_whose_events_cannot_be_read_has_no_result() -> None:
    def broken(job_id: str) -> list[dict[str, Any]]:
        raise stjobs.StjobsError("gone")

    (row,) = results(SWEEP, [JobStatus(record("s-p0"), State.FAILED)], broken)
    assert row == Result("s-p0", "--lr=0", State.FAILED, None, None, None, None)


# ---- real local jobs ----------------------------------------------------------------------------------------

def local_sweep(folder: Path, sweep: str) -> Path:
    (folder / "point.py").write_text("import os, sys, time\nprint('ran', sys.argv[1:], flush=True)\n"
                                     "time.sleep(2)\nmark = os.path.join(os.environ['STJOBS_OUTPUT_DIR'], 'fail')\n"
                                     "sys.exit(3 if os.path.exists(mark) else 0)\n")
    spec = folder / "sweep.yaml"
    spec.write_text(f"name: local-sweep\nprocs_per_node: 1\nsnapshot: {{enabled: false}}\n"
                    f"output_dir: {folder / 'out'}\nentrypoint: {{script: {folder / 'point.py'}, args: [--lr, '1']}}\n"
                    f"sweep: {sweep}\n")
    return spec


def status_json(job_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cli("status", job_id, "--json").stdout.splitlines()]


@pytest.mark.slow
def test_a_local_sweep_runs_its_points_in_turn_and_a_resubmit_reruns_only_the_failed(tmp_path: Path) -> None:
    spec = local_sweep(tmp_path, "{grid: {--lr: ['1', '2', '3']}}")
    (tmp_path / "out" / "p1").mkdir(parents=True)
    (tmp_path / "out" / "p1" / "fail").write_text("")  # point 1 fails on purpose, as long as this is there
    done = cli("submit", str(spec), "--wait", check=False)
    sweep = job_of(done.stdout)
    assert done.returncode != 0
    assert f"sweep of 3 point(s): 3 submitted; stjobs status {sweep}" in done.stdout
    lines = status_json(sweep)
    assert [row["state"] for row in lines] == ["FAILED", "COMPLETED", "FAILED", "COMPLETED"]
    assert lines[0]["reason"].startswith(f"sweep of 3 point(s): 2 COMPLETED, 1 FAILED; {sweep}-p1: ")
    homes = Path(os.environ["STJOBS_HOME"], "jobs", sweep, "points")
    started = [json.loads((homes / str(i) / "status.json").read_text()) for i in range(3)]
    assert started[0]["ended_at"] <= started[1]["started_at"] and started[1]["ended_at"] <= started[2]["started_at"]
    assert "ran ['--lr', '2']" in cli("logs", f"{sweep}-p1").stdout
    table = cli("status", sweep).stdout
    assert f"{sweep}-p1" in table and "--lr=2" in table.split("point  values")[1]

    busy = cli("submit", str(spec), check=False)  # nothing runs now: a resubmit is allowed
    again = job_of(busy.stdout)
    assert f"1 submitted, 2 completed before ({sweep}) and kept" in busy.stdout
    refused = cli("submit", str(spec), check=False)  # while the rerun runs: refused
    assert refused.returncode == 2 and f"sweep: {again} (the same sweep) still has 1 point(s)" in refused.stderr
    (tmp_path / "out" / "p1" / "fail").unlink()
    rows = wait_until("the rerun", lambda: (lines := status_json(again))[0]["state"] == "COMPLETED" and lines)
    assert [row["job_id"] for row in rows[1:]] == [f"{sweep}-p0", f"{again}-p1", f"{sweep}-p2"]
    finished = cli("submit", str(spec), check=False)
    assert finished.returncode == 2 and "every point of local-sweep completed already" in finished.stderr


@pytest.mark.slow
def test_cancelling_a_local_sweep_cancels_the_points_that_have_not_ended(tmp_path: Path) -> None:
    spec = local_sweep(tmp_path, "{grid: {--lr: ['1', '2']}}")
    sweep = job_of(cli("submit", str(spec)).stdout)
    assert cli("cancel", sweep).stdout.strip().startswith(f"{sweep}: CANCELLED")
    assert {row["state"] for row in status_json(sweep)[1:]} == {"CANCELLED"}
    refused = cli("logs", sweep, check=False)
    assert refused.returncode == 2 and f"expected one of its points, e.g. {sweep}-p0" in refused.stderr


def test_the_example_sweep_loads_and_has_four_points() -> None:
    spec = load_spec(Path(__file__).resolve().parent.parent / "examples" / "sweep.yaml")
    assert [point.label for point in expand(spec)][-1] == (
        "--learning-rate=2e-4 --loss=CachedMultipleNegativesRankingLoss")
