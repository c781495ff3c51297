"""stjobs bench without training: which rows run where and how they launch, the docs' table beside ours, the checks,
a failed row, the generated data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stjobs.backends.local.gpus import assign_gpus
from stjobs.bench import BenchOptions, BenchRow, build_report, plan_rows, row_spec
from stjobs.bench.options import BenchShape
from stjobs.bench.report import final_losses
from stjobs.bench.rows import DOCS_STYLE, NO_SYNC, RowPlan, train_args
from stjobs.errors import StjobsError, UsageError
from stjobs.jobs import State
from stjobs.launch import build_launch, shell_line

DATA = {"nli-train": Path("/d/nli.jsonl"), "sts-train": Path("/d/sts.jsonl")}


def shape(gpus: int, cpus: int, **options: Any) -> BenchShape:
    return BenchOptions(**options).shape(gpus, cpus)


def keys_that_run(gpus: int, cpus: int) -> list[str]:
    return [plan.key for plan in plan_rows(shape(gpus, cpus)) if not plan.missing]


def plans(gpus: int, cpus: int) -> dict[str, RowPlan]:
    return {plan.key: plan for plan in plan_rows(shape(gpus, cpus))}


def command(plan: RowPlan, tmp_path: Path) -> str:
    spec = row_spec(plan, train_args(shape(0, 2), "/m", DATA, None, 42), tmp_path)
    return shell_line(build_launch(spec).argv)


def test_rows_are_the_docs_rows_and_which_run_depends_on_the_hardware() -> None:
    every = ["single-1", "single-all", "dp", "ddp", "ddp-accelerate", "fsdp", "ddp-no-sync", "stjobs"]
    assert [plan.key for plan in plan_rows(shape(0, 2))] == every
    assert keys_that_run(0, 2) == ["single-1", "single-all", "ddp", "ddp-accelerate", "ddp-no-sync", "stjobs"]
    assert keys_that_run(0, 1) == ["single-1"]
    assert keys_that_run(1, 16) == ["single-1"]
    assert keys_that_run(4, 16) == ["single-1", "dp", "ddp", "ddp-accelerate", "fsdp", "ddp-no-sync", "stjobs"]
    cpu, one_gpu = plans(0, 2), plans(1, 16)
    assert cpu["dp"].missing == "DataParallel needs at least 2 GPUs; this machine has 0"
    assert cpu["fsdp"].missing.startswith("FSDP needs 2 GPUs (on CPUs accelerate runs it as DDP")
    assert one_gpu["ddp"].missing == "DDP needs 2 processes; this machine has 1 GPU"
    assert "single-all" not in one_gpu  # one GPU process: the docs' row, no CPU thread variants


def test_cpu_rows_give_each_rank_one_thread() -> None:
    rows = plans(0, 2)
    assert (rows["single-1"].procs, rows["single-1"].cpus) == (1, 1)
    assert (rows["single-all"].procs, rows["single-all"].cpus) == (1, 2)
    for key in ("ddp", "ddp-accelerate", "ddp-no-sync", "stjobs"):
        assert (rows[key].procs, rows[key].cpus, rows[key].gpus) == (2, 2, 0), key


def test_each_row_launches_the_way_the_docs_launch_it(tmp_path: Path) -> None:
    rows = plans(4, 16)
    assert "torch.distributed.run" in command(rows["ddp"], tmp_path)
    assert "accelerate.commands.launch" in command(rows["ddp-accelerate"], tmp_path)
    dp = command(rows["dp"], tmp_path)
    assert "torch.distributed.run" not in dp and "accelerate" not in dp and " -m stjobs.train " in dp
    assert rows["fsdp"].strategy == "fsdp" and "--fsdp-layer-class MPNetLayer" in command(rows["fsdp"], tmp_path)
    # The docs' configuration on the docs-style rows; stjobs' defaults on its own; the bound's flag only there.
    for key in ("single-1", "dp", "ddp", "ddp-accelerate", "fsdp", "ddp-no-sync"):
        assert rows[key].extra[:len(DOCS_STYLE)] == DOCS_STYLE, key
    assert rows["stjobs"].extra == ()
    assert [key for key, plan in rows.items() if NO_SYNC in plan.extra] == ["ddp-no-sync"]


def test_every_row_trains_the_docs_recipe() -> None:
    args = train_args(shape(4, 16, precision="fp16"), "/m", DATA, None, 42)
    assert args[args.index("--model") + 1] == "/m"
    assert [args[i + 1] for i, arg in enumerate(args) if arg == "--train-data"] == [
        "nli=/d/nli.jsonl:softmax", "sts=/d/sts.jsonl:cosine"]
    assert args[args.index("--per-device-batch-size") + 1] == "32"
    assert args[args.index("--max-seq-length") + 1] == "384"
    assert "--eval-data" not in args  # the docs' FSDP row has no evaluator; every row is timed the same way


def test_gpu_rows_see_the_gpus_of_the_docs_table(tmp_path: Path) -> None:
    """On a 4-GPU machine: "no parallelism" is one GPU (the docs' CUDA_VISIBLE_DEVICES=0 python train_script.py),
    DataParallel's one process and DDP's four see all four."""
    seen = {}
    args = train_args(shape(4, 16), "/m", DATA, None, 42)
    for plan in plan_rows(shape(4, 16)):
        spec = row_spec(plan, args, tmp_path)
        seen[plan.key] = assign_gpus(spec.gpus_per_node, spec.nodes, spec.strategy.value, None, 4)
    assert seen == {"single-1": ["0"], "dp": ["0,1,2,3"], "ddp": ["0,1,2,3"], "ddp-accelerate": ["0,1,2,3"],
                    "fsdp": ["0,1,2,3"], "ddp-no-sync": ["0,1,2,3"], "stjobs": ["0,1,2,3"]}


def test_defaults_follow_the_machine() -> None:
    gpu, cpu = shape(4, 16), shape(0, 2)
    assert (gpu.model_size, gpu.max_seq_length, gpu.per_device_batch_size, gpu.steps) == ("base", 384, 32, 60)
    assert (cpu.model_size, cpu.max_seq_length, cpu.processes) == ("small", 128, 2)
    assert gpu.data_rows == 60 * 32 * 4  # no row reads a training row twice
    assert shape(0, 2, model="/local/model").model_size is None
    with pytest.raises(UsageError, match="--processes: got 8 on a machine with 4 GPUs"):
        shape(4, 16, processes=8)
    with pytest.raises(UsageError, match="--steps: got 5; expected more than --skip-steps"):
        shape(0, 2, steps=5, skip_steps=10)
    with pytest.raises(UsageError, match="--model-size: got small with --model"):
        shape(0, 2, model="/m", model_size="small")


def test_precision_auto_is_what_stjobs_decides_for_the_gpu() -> None:
    from stjobs.bench.run import resolve_precision

    assert resolve_precision("auto", [7, 0]) == "fp16"  # V100, as the docs measured
    assert resolve_precision("auto", [9, 0]) == "bf16"
    assert resolve_precision("auto", None) == "fp32"
    with pytest.raises(UsageError, match="--precision: got fp16 without a GPU"):
        resolve_precision("fp16", None)


def measured() -> list[BenchRow]:
    return [BenchRow("single-1", "one", "single", command="cmd", samples_per_second=100.0, final_loss=2.0,
                     ran="single"),
            BenchRow("dp", "dp", "dp", note="DataParallel needs at least 2 GPUs; this machine has 0"),
            BenchRow("ddp", "ddp", "ddp", command="cmd", samples_per_second=190.0, final_loss=1.0,
                     final_losses={"nli": 1.0, "sts": 0.2}, ran="ddp"),
            BenchRow("ddp-no-sync", "bound", "ddp", command="cmd", samples_per_second=200.0, ran="ddp"),
            BenchRow("stjobs", "tuned", "ddp", command="cmd", samples_per_second=260.0, final_loss=1.05,
                     final_losses={"nli": 1.05, "sts": 0.21}, ran="ddp")]


def test_the_docs_table_beside_ours_and_the_checks() -> None:
    report = build_report(BenchOptions(), shape(0, 2), {"cpus": 2, "gpus": [], "cpu_model": "Xeon"}, measured())
    assert [row.speedup for row in report.rows] == [1.0, None, 1.9, 2.0, 2.6]
    assert report.checks == (
        "DDP / DDP without gradient sync: 95% (goal >= 90%; the rest is the gradient all-reduce) OK",
        "DDP vs no parallelism: 1.90x over 2 processes = 95% of linear (goal >= 95%, 1.90x; docs: 2.56x over 4 "
        "GPUs = 64%) OK",
        "stjobs defaults vs docs-style DDP: 1.37x (goal >= 1.3) OK; final loss nli 1.050 vs 1.000, sts 0.210 vs "
        "0.200: equal (within 10%)")
    lines = {line.split()[0]: line for line in report.table().splitlines() if line.split()}
    # docs' samples/s and speed-up, then ours
    assert lines["one"].split()[1:5] == ["2,724", "1.00x", "100.0", "1.00x"]
    assert lines["ddp"].split()[1:5] == ["6,980", "2.56x", "190.0", "1.90x"]
    assert lines["dp"].split()[1:5] == ["3,675", "1.35x", "-", "-"] and "not available: DataParallel" in lines["dp"]
    assert lines["bound"].split()[1:5] == ["-", "-", "200.0", "2.00x"]  # not a row of the docs
    data = json.loads(report.to_json())
    assert data["rows"][2]["docs_samples_per_second"] == 6980.0 and data["rows"][2]["speedup"] == 1.9
    assert data["rows"][4]["docs_speedup"] is None
    fsdp = data["docs"]["rows"]["fsdp"]
    assert (fsdp["samples_per_second"], fsdp["speedup"]) == (5782.0, 2.122) and "full_shard" in fsdp["launch"]
    assert data["rows"][0]["docs_launch"] == "CUDA_VISIBLE_DEVICES=0 python train_script.py"
    assert data["docs"]["gpus"] == "4 x V100" and data["machine"]["cpu_model"] == "Xeon"


def test_checks_that_miss_and_warnings() -> None:
    rows = measured()
    rows[2] = BenchRow("ddp", "ddp", "ddp", command="cmd", samples_per_second=150.0, final_losses={"nli": 1.0},
                       ran="ddp", precision="fp32", busy_cores_before=0.5)
    rows[4] = BenchRow("stjobs", "tuned", "ddp", command="cmd", samples_per_second=160.0,
                       final_losses={"nli": 1.5}, ran="fsdp", precision="bf16")
    checks = build_report(BenchOptions(), shape(0, 2), {"busy_cores_before": 1.5}, rows).checks
    assert checks[0].startswith("DDP / DDP without gradient sync: 75% ") and checks[0].endswith("MISSED")
    assert "1.50x over 2 processes = 75% of linear" in checks[1] and checks[1].endswith("MISSED")
    assert "1.07x (goal >= 1.3) MISSED; final loss nli 1.500 vs 1.000: NOT equal" in checks[2]
    assert checks[3:] == ("warning: tuned ran as fsdp", "warning: tuned trained in bf16, not fp32",
                          "warning: other processes kept cores busy (0.5 before ddp, 1.5 before the start; of 2): "
                          "those figures are low and noisy; run the bench on an idle machine")


def test_final_loss_is_the_mean_of_the_last_logged_losses() -> None:
    events = [{"event": "loss", "step": step, "loss": float(step), "losses": {"nli": step * 2.0, "sts": None}}
              for step in range(1, 6)] + [{"event": "throughput"}]
    assert final_losses(events) == (4.0, {"nli": 8.0})
    assert final_losses([]) == (None, {})


class FakeApi:
    """stjobs.api as run_row uses it, with a job that fails."""

    def __init__(self, submit_error: str | None = None,
                 log: str = "[rank0]: stjobs.train: error: --train-data: got 'nli=/x:softmax'; expected a file\n"
                 ) -> None:
        self.submit_error, self.log = submit_error, log

    def submit(self, spec: Any, backend: str) -> Any:
        from stjobs.jobs import JobRecord

        if self.submit_error:
            raise StjobsError(self.submit_error)
        return JobRecord("bench-ddp-1", backend, spec.name, "/tmp/x", 0.0, 1, spec.procs_per_node)

    def wait(self, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> Any:
        from stjobs.jobs import JobRecord, JobStatus, State

        return JobStatus(JobRecord(job_id, "local", "bench-ddp", "/tmp/x", 0.0, 1, 2), State.FAILED, 1, "exit 1")

    def logs(self, job_id: str) -> list[str]:
        return [self.log]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        from stjobs.train.events import parse_events

        return parse_events(self.log)


def test_a_failed_row_says_why_and_is_no_exception(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from stjobs import api
    from stjobs.bench.run import run_row

    plan = plans(0, 2)["ddp"]
    args = train_args(shape(0, 2), "/m", DATA, None, 42)
    for name in ("submit", "wait", "logs", "events"):
        monkeypatch.setattr(api, name, getattr(FakeApi(), name))
    row = run_row(plan, args, tmp_path)
    assert row.samples_per_second is None and row.job_id == "bench-ddp-1"
    assert row.note == ("job bench-ddp-1 ended FAILED: stjobs.train: error: --train-data: got 'nli=/x:softmax'; "
                        "expected a file; see `stjobs logs bench-ddp-1`")
    assert "torch.distributed.run" in row.command
    monkeypatch.setattr(api, "logs", FakeApi(log="Traceback ...\nSIGABRT\n").logs)
    assert run_row(plan, args, tmp_path).note == "job bench-ddp-1 ended FAILED: exit 1; see `stjobs logs bench-ddp-1`"
    # A job that ended well but measured nothing is no row with 0 samples/s: its note says what it measured.
    stalled = FakeApi(log='STJOBS_EVENT {"event":"throughput","rank":0,"steady_samples_per_second":0.0,'
                          '"steady_steps":0}\n')
    monkeypatch.setattr(api, "events", stalled.events)
    monkeypatch.setattr(api, "wait", lambda job_id, **_: replace(FakeApi().wait(job_id), state=State.COMPLETED))
    assert run_row(plan, args, tmp_path).note == ("job bench-ddp-1 ended COMPLETED: its throughput event says 0.0 "
                                                  "samples/s (0 steady steps); see `stjobs logs bench-ddp-1`")
    monkeypatch.setattr(api, "events", FakeApi().events)
    monkeypatch.setattr(api, "submit", FakeApi("local: too few GPUs").submit)
    assert run_row(plan, args, tmp_path).note == "not submitted: local: too few GPUs"
    report = build_report(BenchOptions(), shape(0, 2), {}, [measured()[0], row])
    assert "not available: job bench-ddp-1 ended FAILED" in report.table()


def test_generated_data_is_seeded(tmp_path: Path) -> None:
    from stjobs.bench.data import recipe

    first = recipe(tmp_path / "a", 300, seed=1)
    again = recipe(tmp_path / "b", 300, seed=1)
    other = recipe(tmp_path / "c", 300, seed=2)
    for key in ("nli-train", "sts-train"):
        assert first[key].read_bytes() == again[key].read_bytes() != other[key].read_bytes(), key
    nli = [json.loads(line) for line in first["nli-train"].read_text().splitlines()]
    sts = [json.loads(line) for line in first["sts-train"].read_text().splitlines()]
    assert len(nli) == len(sts) == 300
    assert {row["label"] for row in nli} == {0, 1, 2} and {"premise", "hypothesis"} <= set(nli[0])
    assert all(0.0 <= row["score"] <= 1.0 for row in sts) and {"sentence1", "sentence2"} <= set(sts[0])
