"""Strategies under real torchrun on this machine: DDP's batch semantics match one process, and `stjobs bench`.

Parity: with in-batch negatives gathered across processes (the default), 2 processes x B/2 rows compute, step for
step, the loss of 1 process x B rows: the same rows per step (the samplers guarantee it), the same negatives (the
gathered embeddings), the same gradients (DDP averages them). Without gathering each process only sees its own B/2
rows as negatives, and the loss differs from the first step on, which this test also shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stjobs.train.events import parse_events
from tests.conftest import REPO, build_tiny_model, offline_env, stjobs_bin

pytestmark = pytest.mark.slow

STEPS = 6
# The first step's loss is computed before any update: only summation order differs (float32). Later steps add
# the rounding of the updates in between.
FIRST_STEP_TOLERANCE = 1e-4
LATER_STEP_TOLERANCE = 2e-3


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([stjobs_bin(), *args], capture_output=True, text=True, cwd=REPO, env=offline_env(),
                          timeout=600)
    assert done.returncode == 0, f"stjobs {' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def model_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with dropout off: otherwise each process draws other dropout masks than the single run."""
    out = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    for config in out.rglob("config.json"):
        data = json.loads(config.read_text())
        if "hidden_dropout_prob" in data:
            data.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            config.write_text(json.dumps(data))
    return out


def losses(model: Path, out: Path, procs: int, per_device: int, *extra: str) -> list[float]:
    args = ["--model", str(model), "--train-data", "examples/data/train.jsonl", "--max-steps", str(STEPS),
            "--per-device-batch-size", str(per_device), "--logging-steps", "1", "--no-resume", *extra]
    strategy = "ddp" if procs > 1 else "single"
    done = run("submit", "examples/tiny-ddp.yaml", "--wait", "--set", f"procs_per_node={procs}",
               "--set", f"strategy={strategy}", "--set", "entrypoint.args=" + json.dumps(args),
               "--set", f"output_dir={out}")
    job_id = done.stdout.split()[1]
    events = parse_events(run("logs", job_id, "--raw").stdout)
    starts = [e for e in events if e["event"] == "start"]
    assert {e["world_size"] for e in starts} == {procs} and len(starts) == procs
    found = [e["loss"] for e in events if e["event"] == "loss"]
    assert len(found) == STEPS, found
    return found


def test_ddp_two_by_half_batch_matches_one_by_full_batch(model_without_dropout: Path, tmp_path: Path) -> None:
    single = losses(model_without_dropout, tmp_path / "single", 1, 16)
    ddp = losses(model_without_dropout, tmp_path / "ddp", 2, 8)
    assert abs(ddp[0] - single[0]) <= FIRST_STEP_TOLERANCE * single[0], (ddp, single)
    for step, (a, b) in enumerate(zip(ddp, single, strict=True)):
        assert abs(a - b) <= LATER_STEP_TOLERANCE * b, f"step {step + 1}: ddp {ddp} vs single {single}"

    # The same run without gathering: each process scores its 8 anchors against 8 candidates instead of 16.
    alone = losses(model_without_dropout, tmp_path / "alone", 2, 8, "--no-gather-across-devices")
    assert alone[0] < single[0] * 0.95, (alone, single)


def row_failure(row: dict[str, object]) -> str:
    """Why a bench row that should have run did not, in full: its note, its job's state and its output's tail
    (a row fails rarely, on a busy machine; the message is all a CI log keeps of it)."""
    said = f"{row['key']}: note {row['note']!r}, samples/s {row['samples_per_second']!r}"
    if not row.get("job_id"):
        return said
    job = str(row["job_id"])
    state = subprocess.run([stjobs_bin(), "status", job], capture_output=True, text=True, env=offline_env())
    output = subprocess.run([stjobs_bin(), "logs", "--raw", job], capture_output=True, text=True, env=offline_env())
    tail = "".join((output.stdout + output.stderr).splitlines(keepends=True)[-40:])
    return f"{said}\n{state.stdout}{state.stderr}--- the last 40 lines of its output ---\n{tail}"


def test_bench_runs_every_row_it_can_and_writes_its_files(tmp_path: Path) -> None:
    """The real bench on this CPU machine, very small: every row the docs have, the ones that cannot run here saying
    why, the docs' figures beside ours, bench.json and bench.png."""
    out = tmp_path / "bench"
    done = run("bench", "--model-size", "tiny", "--steps", "12", "--skip-steps", "3", "--max-seq-length", "32",
               "--data-rows", "500", "--out", str(out))
    report = json.loads((out / "bench.json").read_text())
    rows = {row["key"]: row for row in report["rows"]}
    assert list(rows) == ["single-1", "single-all", "dp", "ddp", "ddp-accelerate", "fsdp", "ddp-no-sync", "stjobs"]
    ran = [key for key, row in rows.items() if row["samples_per_second"]]
    expected = ["single-1", "single-all", "ddp", "ddp-accelerate", "ddp-no-sync", "stjobs"]  # this machine: no GPU
    assert ran == expected, "\n".join(row_failure(row) for key, row in rows.items() if key in expected
                                      and key not in ran)
    assert rows["single-1"]["speedup"] == 1.0
    assert {rows[key]["ran"] for key in ("ddp", "ddp-accelerate", "ddp-no-sync", "stjobs")} == {"ddp"}
    # One process under torchrun trains the bare model: no process group, no DDP wrapper of a world of one.
    assert {rows[key]["ran"] for key in ("single-1", "single-all")} == {"single"}
    assert {row["precision"] for row in rows.values() if row["samples_per_second"]} == {"fp32"}
    # (a busy machine is warned about too: other tests may share the cores)
    assert not [line for line in report["checks"] if line.startswith("warning") and "cores busy" not in line]
    # Both datasets trained, each with its loss: a final loss per dataset on every row that ran.
    assert all(set(rows[key]["final_losses"]) == {"nli", "sts"} for key in ran), {k: rows[k]["final_losses"]
                                                                                   for k in ran}
    cores = os.cpu_count() or 1
    assert "torch.distributed.run" in rows["ddp"]["command"] and f"--nproc-per-node {cores}" in rows["ddp"]["command"]
    assert "accelerate.commands.launch" in rows["ddp-accelerate"]["command"]
    assert "--no-gradient-sync" in rows["ddp-no-sync"]["command"]
    assert "--no-group-by-length" in rows["ddp"]["command"] and "--no-group-by-length" not in rows["stjobs"]["command"]
    assert "DataParallel needs at least 2 GPUs" in rows["dp"]["note"]
    assert "FSDP needs 2 GPUs" in rows["fsdp"]["note"]
    assert (rows["ddp"]["docs_samples_per_second"], rows["fsdp"]["docs_speedup"]) == (6980.0, 2.122)
    assert report["machine"]["cpu_model"] and report["machine"]["cpus"] == cores
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = done.stdout
    single = next(line for line in table.splitlines() if line.startswith("no parallelism (CPU, 1 thread)"))
    assert single.split()[5:7] == ["2,724", "1.00x"]  # the docs' figures, then ours
    assert "not available: DataParallel needs" in table
    for check in ("DDP / DDP without gradient sync", "DDP vs no parallelism", "stjobs defaults vs docs-style DDP"):
        assert check in table, check
    shutil.rmtree(out / "runs")
