"""Running the bench: the machine, the data and model every row shares, then one local job per row, one after the
other (each row alone on the machine), and the files. A row that fails becomes a row that says why."""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from stjobs.bench.chart import chart
from stjobs.bench.data import recipe, texts_of
from stjobs.bench.options import BenchOptions, BenchRow, BenchShape
from stjobs.bench.report import BenchReport, build_report, final_losses
from stjobs.bench.rows import RowPlan, launch_words, plan_rows, row_spec, train_args
from stjobs.errors import StjobsError, UsageError

ROW_TIMEOUT_S = 3600.0  # a hung collective ends the row, not the bench
OWN_ERROR = re.compile(r"stjobs\.train: error: .*")  # the training's one-line errors say the cause best


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def busy_cores(seconds: float = 1.0) -> float | None:
    """How many cores other processes kept busy over ``seconds`` (from /proc/stat; None where there is none): the
    bench's figures assume it has the machine to itself."""
    def sample() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return round((1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1), 2)


def machine() -> dict[str, Any]:
    """What the figures were measured on; ``capability`` is the first GPU's (None without one)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = [torch.cuda.get_device_name(i) for i in range(count)]
    capability = list(torch.cuda.get_device_capability(0)) if count else None
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count() or 1, "gpus": gpus, "capability": capability,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "platform": platform.platform(), "busy_cores_before": busy_cores()}


def resolve_precision(requested: str, capability: list[int] | None) -> str:
    """``auto``: what stjobs.gpus decides for this GPU (fp16 on V100 as the docs measured, bf16 from Ampere on,
    fp32 on CPUs); an explicit choice the device cannot do natively is refused in one line."""
    from stjobs import gpus

    try:
        return gpus.resolve_precision(requested, (capability[0], capability[1]) if capability else None)
    except ValueError as exc:
        raise UsageError(f"--precision: {exc}") from None


def shared_model(options: BenchOptions, shape: BenchShape, data: dict[str, Path], out: Path) -> str:
    """The model every row trains: a local one (``--model``), else the generated MPNet of the chosen size."""
    if shape.model is not None:
        path = Path(shape.model).expanduser()
        if not path.is_dir():
            raise UsageError(f"--model: got {shape.model!r}; expected a local SentenceTransformer directory")
        return str(path.resolve())
    from stjobs.train.mpnet import build_mpnet

    texts = texts_of([data["nli-train"], data["sts-train"]])
    return str(build_mpnet(texts, out / f"mpnet-{shape.model_size}", shape.model_size or "base", seed=options.seed))


def _why(reason: str, log: str) -> str:
    """Why a job failed: the training's own error line where it wrote one, else the backend's reason."""
    own = OWN_ERROR.search(log)
    return own.group(0)[:300] if own else (reason or "no throughput event")


def run_row(plan: RowPlan, args: list[str], out: Path) -> BenchRow:
    """One row's job through the local backend; a failure is the row's note, never an exception."""
    from stjobs import api
    from stjobs.launch import build_launch, shell_line
    from stjobs.train.events import first

    row = BenchRow(plan.key, plan.label, plan.strategy, launcher=plan.launcher, launch=launch_words(plan),
                   busy_cores_before=busy_cores(0.5))
    try:
        spec = row_spec(plan, args, out)
        row = replace(row, command=shell_line(build_launch(spec).argv))
        record = api.submit(spec, "local")
    except StjobsError as exc:
        return replace(row, note=f"not submitted: {exc}")
    row = replace(row, job_id=record.job_id)
    visible = record.details.get("cuda_visible_devices")
    if spec.gpus_per_node and isinstance(visible, list) and visible:
        # The GPUs the row really had, as the docs write it: CUDA_VISIBLE_DEVICES=0 python train_script.py
        row = replace(row, command=f"CUDA_VISIBLE_DEVICES={visible[0]} {row.command}",
                      launch=f"CUDA_VISIBLE_DEVICES={visible[0]} {row.launch}")
    try:
        final = api.wait(record.job_id, timeout_s=ROW_TIMEOUT_S, poll_s=0.5)
    except StjobsError as exc:
        api.cancel(record.job_id)
        return replace(row, note=f"{exc}; cancelled")
    events = api.events(record.job_id)  # the ranks' events files: never interleaved with another rank's output
    throughput = first(events, "throughput", rank=0) or {}
    steady = throughput.get("steady_samples_per_second")
    if final.state.value != "COMPLETED" or not isinstance(steady, (int, float)) or steady <= 0:
        log = "".join(api.logs(record.job_id))
        why = _why(final.reason, log) if final.state.value != "COMPLETED" or not throughput else \
            f"its throughput event says {steady!r} samples/s ({throughput.get('steady_steps')} steady steps)"
        return replace(row, note=f"job {record.job_id} ended {final.state.value}: {why}; "
                                 f"see `stjobs logs {record.job_id}`")
    wrapped = first(events, "wrapped", rank=0) or {}
    loss, losses = final_losses(events)
    return replace(row, samples_per_second=float(steady), final_loss=loss, final_losses=losses,
                   ran=wrapped.get("ran"), precision=wrapped.get("precision"))


def run_bench(options: BenchOptions) -> BenchReport:
    """Run every row that can run here, one after the other, and write bench.json and bench.png."""
    from stjobs.launch import shell_word

    started = time.perf_counter()
    facts = machine()
    shape = options.shape(len(facts["gpus"]), int(facts["cpus"]))
    shape = replace(shape, precision=resolve_precision(options.precision, facts["capability"]))
    out = options.out_dir.resolve()
    data = recipe(out / "data", shape.data_rows, options.seed)
    model = shared_model(options, shape, data, out)
    args = train_args(shape, model, data, options.learning_rate, options.seed)
    rows = [BenchRow(plan.key, plan.label, plan.strategy, launcher=plan.launcher, note=plan.missing)
            if plan.missing else run_row(plan, args, out) for plan in plan_rows(shape)]
    report = build_report(options, shape, facts, rows, seconds=round(time.perf_counter() - started, 1),
                          shared_args=" ".join(shell_word(arg) for arg in args))
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(report.to_json(), encoding="utf-8", newline="\n")
    chart(report, out / "bench.png")
    return report
