"""A 2 x 2 sweep on the real test cluster (issue 17): one job array whose every task is a 2-node torchrun
training; one point fails on purpose, the others finish, the failed one is named with its reason, and the
resubmitted sweep runs only that point again."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN, cli, job_of, offline_env
from tests.slurm_cluster import PARTITION, ensure_cluster, wait_for_sacct_state

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ensure_cluster()
    out = tmp_path_factory.mktemp("tiny") / "model"
    subprocess.run([str(VENV_BIN / "python"), "-m", "stjobs.train.models", "--tiny-from",
                    str(REPO / "examples" / "data" / "train.jsonl"), "--out", str(out)], check=True, cwd=REPO,
                   env=offline_env(), capture_output=True)
    return out


def status_json(job_id: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in cli("status", job_id, "--json").stdout.splitlines()]


def test_a_two_by_two_sweep_of_two_node_jobs(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "p3").write_text("a file where point 3's output directory goes: its training cannot save\n")
    args = ["--model", str(tiny_model), "--train-data", "examples/data/train.jsonl", "--eval-data",
            "examples/data/eval.jsonl", "--max-steps", "6", "--per-device-batch-size", "8", "--logging-steps", "2"]
    submit = ["submit", "examples/sweep.yaml", "-b", "slurm", "--cpus-per-task", "1", "--set", "mem_gb=null",
              "--set", f"slurm.partition={PARTITION}", "--set", "time_min=10", "--set", f"output_dir={out}",
              "--set", "entrypoint.args=" + json.dumps(args),
              "--set", 'sweep.grid={--learning-rate: ["5e-5", "2e-4"], --per-device-batch-size: [8, 4]}']
    done = cli(*submit, "--wait", check=False, timeout=900)
    sweep = job_of(done.stdout)
    assert done.returncode != 0, done.stdout + done.stderr
    rows = status_json(sweep)
    assert [row["job_id"] for row in rows] == [sweep, *(f"{sweep}-p{index}" for index in range(4))]
    assert [row["state"] for row in rows] == ["FAILED", "COMPLETED", "COMPLETED", "COMPLETED", "FAILED"], rows
    assert str(rows[0]["reason"]).startswith(f"sweep of 4 point(s): 3 COMPLETED, 1 FAILED; {sweep}-p3: "), rows[0]
    assert "SLURM state FAILED" in str(rows[4]["reason"])
    home = Path(os.environ["STJOBS_HOME"], "jobs", sweep)
    array = json.loads((home / "job.json").read_text())
    tasks = [json.loads((home / "points" / str(index) / "job.json").read_text())["details"]["slurm_job_id"]
             for index in range(4)]
    array_id = tasks[0].split("_")[0]
    assert tasks == [f"{array_id}_{index}" for index in range(4)]
    assert array["details"]["sweep"]["rerun"] == [0, 1, 2, 3]
    for index in range(3):  # every point is a whole 2-node job with its own rendezvous (its own SLURM job id)
        starts = [json.loads(line) for line in (home / "points" / str(index) / "events" / "rank-0.jsonl")
                  .read_text().splitlines() if '"start"' in line]
        assert starts[-1]["world_size"] == 2 and (out / f"p{index}" / "final").is_dir()
    nodes = {json.loads(line)["node"] for index in range(3) for rank in (0, 1)
             for line in (home / "points" / str(index) / "events" / f"rank-{rank}.jsonl").read_text().splitlines()
             if '"start"' in line}
    assert nodes == {"n1", "n2"}
    results = [re.split(r"\s{2,}", line) for line in
               cli("status", sweep).stdout.split("\npoint  ")[1].splitlines()[1:]]
    scores = [float(row[3].split("=")[1]) for row in results[:3]]
    assert scores == sorted(scores, reverse=True), results  # best first
    assert results[3][0] == "p3" and results[3][2:4] == ["FAILED", "-"], results  # the failed point: no score

    (out / "p3").unlink()
    again = cli(*submit, "--wait", timeout=900)
    rerun = job_of(again.stdout)
    assert f"1 submitted, 3 completed before ({sweep}) and kept" in again.stdout
    rows = status_json(rerun)
    assert [row["job_id"] for row in rows[1:]] == [*(f"{sweep}-p{index}" for index in range(3)), f"{rerun}-p3"]
    assert {row["state"] for row in rows} == {"COMPLETED"}
    task = json.loads(Path(os.environ["STJOBS_HOME"], "jobs", rerun, "points", "3", "job.json").read_text())
    assert task["details"]["slurm_job_id"].endswith("_3")
    assert wait_for_sacct_state(task["details"]["slurm_job_id"], timeout=30) == "COMPLETED"
    assert (out / "p3" / "final").is_dir()
    plotted = cli("status", rerun, "--plot", str(tmp_path / "sweep.png")).stdout
    assert plotted.strip().endswith(f"wrote {tmp_path / 'sweep.png'}")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
