"""stjobs bench without training: which rows run where, the ratios it prints, the data it generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stjobs.backends.local.gpus import assign_gpus
from stjobs.bench import BenchOptions, BenchRow, _rows, _with_speedups, row_spec, variable_length_pairs


def keys_that_run(gpus: int, cpus: int) -> list[str]:
    return [key for key, _label, _strategy, _shape, missing in _rows(BenchOptions(), gpus, cpus) if not missing]


def test_rows_that_can_run_depend_on_the_hardware() -> None:
    assert keys_that_run(0, 2) == ["single-1", "single-all", "ddp", "stjobs"]
    assert keys_that_run(0, 1) == ["single-1", "single-all"]
    assert keys_that_run(1, 16) == ["single-1"]
    assert keys_that_run(4, 16) == ["single-1", "dp", "ddp", "fsdp", "stjobs"]


def test_cpu_rows_give_each_rank_one_thread() -> None:
    shapes = {key: shape for key, _l, _s, shape, _m in _rows(BenchOptions(), 0, 2)}
    assert (shapes["single-1"]["procs_per_node"], shapes["single-1"]["cpus_per_task"]) == (1, 1)
    assert (shapes["single-all"]["procs_per_node"], shapes["single-all"]["cpus_per_task"]) == (1, 2)
    assert (shapes["ddp"]["procs_per_node"], shapes["ddp"]["cpus_per_task"]) == (2, 2)
    assert "--no-group-by-length" in shapes["ddp"]["extra"] and shapes["stjobs"]["extra"] == []


def test_gpu_rows_see_the_gpus_of_the_docs_table(tmp_path: Path) -> None:
    """On a 4-GPU machine: "no parallelism" is one GPU (the docs' CUDA_VISIBLE_DEVICES=0 python train_script.py),
    DataParallel's one process and DDP's four see all four."""
    seen = {}
    for key, _label, strategy, shape, _missing in _rows(BenchOptions(), 4, 16):
        spec = row_spec(BenchOptions(), key, strategy, shape, "train.jsonl", tmp_path)
        seen[key] = assign_gpus(spec.gpus_per_node, spec.nodes, spec.strategy.value, None, 4)
    assert seen == {"single-1": ["0"], "dp": ["0,1,2,3"], "ddp": ["0,1,2,3"], "fsdp": ["0,1,2,3"],
                    "stjobs": ["0,1,2,3"]}


def test_speedups_and_checks() -> None:
    rows = [BenchRow("single-1", "one", "single", "cmd", 100.0, final_loss=2.0, ran="single"),
            BenchRow("dp", "dp", "dp", note="DataParallel needs at least 2 GPUs"),
            BenchRow("ddp", "ddp", "ddp", "cmd", 195.0, final_loss=1.0, ran="ddp"),
            BenchRow("stjobs", "tuned", "ddp", "cmd", 260.0, final_loss=1.05, ran="ddp")]
    report = _with_speedups(BenchOptions(), {"cpus": 2, "gpus": []}, rows)
    assert [row.speedup for row in report.rows] == [1.0, None, 1.95, 2.6]
    assert report.checks[0] == "DDP vs no parallelism (1 thread / 1 GPU): 1.95x (target >= 1.9 on 2 cores) OK"
    assert report.checks[1] == ("stjobs defaults vs seed-style DDP: 1.33x (target >= 1.3) OK; final loss 1.050 vs "
                                "1.000: equal (within 10%)")
    table = report.table()
    assert "not available: DataParallel needs at least 2 GPUs" in table and "1.95x" in table
    assert json.loads(report.to_json())["rows"][2]["speedup"] == 1.95

    slower = [*rows[:3], BenchRow("stjobs", "tuned", "ddp", "cmd", 200.0, final_loss=1.5, ran="fsdp")]
    checks = _with_speedups(BenchOptions(), {}, slower).checks
    assert "1.03x (target >= 1.3) MISSED" in checks[1] and "NOT equal" in checks[1]
    assert checks[2] == "warning: tuned ran as fsdp"


def test_generated_data_is_seeded_and_spread_in_length(tmp_path: Path) -> None:
    first = variable_length_pairs(tmp_path / "a.jsonl", 500, seed=1).read_bytes()
    assert first == variable_length_pairs(tmp_path / "b.jsonl", 500, seed=1).read_bytes()
    assert first != variable_length_pairs(tmp_path / "c.jsonl", 500, seed=2).read_bytes()
    lengths = sorted(len(json.loads(line)["positive"].split()) for line in first.decode().splitlines())
    assert lengths[25] <= 12 and lengths[-25] >= 80  # the 5% shortest and longest: an order of magnitude apart


def test_bench_refuses_too_few_steps() -> None:
    from stjobs.bench import run_bench
    from stjobs.errors import UsageError

    with pytest.raises(UsageError, match="steps: got 5; expected more than skip_steps"):
        run_bench(BenchOptions(steps=5, skip_steps=10))
