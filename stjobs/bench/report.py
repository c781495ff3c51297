"""The bench's result: the docs' table beside the one measured here, the checks, bench.json. Standard library only."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from stjobs.bench.options import (
    DDP_EFFICIENCY_GOAL,
    DEFAULTS_SPEEDUP_GOAL,
    DOCS,
    DOCS_GPUS,
    DOCS_LAUNCH,
    DOCS_ROWS,
    EQUAL_LOSS_TOLERANCE,
    FINAL_LOSS_WINDOW,
    NO_SYNC_FRACTION_GOAL,
    BenchOptions,
    BenchRow,
    BenchShape,
)

DATA = "NLI-like pairs (SoftmaxLoss) + STS-like pairs (CosineSimilarityLoss), generated, trained together"


@dataclass(frozen=True)
class BenchReport:
    options: BenchOptions
    shape: BenchShape
    machine: dict[str, Any]
    rows: tuple[BenchRow, ...]
    checks: tuple[str, ...] = field(default=())
    seconds: float | None = None  # the whole bench, wall clock
    shared_args: str = ""  # the training arguments every row has, as the commands spell them

    def row(self, key: str) -> BenchRow | None:
        return next((row for row in self.rows if row.key == key), None)

    def machine_here(self) -> str:
        gpus = self.machine.get("gpus") or []
        return f"{len(gpus)} x {gpus[0]}" if gpus else f"CPU, {self.machine.get('cpus', '?')} cores"

    @staticmethod
    def machine_docs() -> str:
        return f"{DOCS.gpus}, {DOCS.model}, {DOCS.max_seq_length} tokens, {DOCS.precision}"

    def header(self) -> list[str]:
        shape, facts = self.shape, self.machine
        gpus = facts.get("gpus") or []
        here = f"{len(gpus)} x {gpus[0]}" if gpus else "no GPU"
        return [f"model: {shape.describe_model()}; {shape.per_device_batch_size} per device, max length "
                f"{shape.max_seq_length}, {shape.steps} steps ({shape.skip_steps} warm-up left out), "
                f"{shape.precision}",
                f"data: {DATA}",
                f"here: {facts.get('cpu_model', '?')}, {facts.get('cpus', '?')} cores, {here}, "
                f"torch {facts.get('torch', '?')}",
                f"docs: {DOCS.model}, {DOCS.per_device_batch_size} per device, max length {DOCS.max_seq_length}, "
                f"{DOCS.precision}, {DOCS.gpus}"]

    def table(self) -> str:
        """Per row the docs' samples/s and speed-up, then ours, the final loss and the launch; then the checks and
        every command that ran (the training arguments all rows share said once)."""
        width = max([len("row"), *(len(row.label) for row in self.rows)])
        lines = [*self.header(), "",
                 f"{'':{width}}  {'--- docs ---':^19}  {'--- here ---':^19}",
                 f"{'row':{width}}  {'samples/s':>9} {'speed-up':>9}  {'samples/s':>9} {'speed-up':>9} "
                 f"{'loss':>7}  launch"]
        for row in self.rows:
            docs = f"{row.docs[0]:9,.0f} {row.docs[1]:8.2f}x" if row.docs else f"{'-':>9} {'-':>9}"
            if row.samples_per_second is None:
                lines.append(f"{row.label:{width}}  {docs}  {'-':>9} {'-':>9} {'-':>7}  "
                             f"not available: {row.note}")
                continue
            loss = f"{row.final_loss:7.3f}" if row.final_loss is not None else f"{'-':>7}"
            speedup = f"{row.speedup:8.2f}x" if row.speedup is not None else f"{'-':>9}"
            lines.append(f"{row.label:{width}}  {docs}  {row.samples_per_second:9,.1f} {speedup} {loss}  "
                         f"{row.launch}")
        if self.seconds is not None:
            lines += ["", f"bench took {self.seconds:.0f} s"]
        return "\n".join([*lines, "", *self.checks, "", *self.commands()])

    def commands(self) -> list[str]:
        ran = [row for row in self.rows if row.command]
        if not ran:
            return []
        shared = self.shared_args
        lines = [f"commands (TRAIN: {shared})" if shared else "commands"]
        for row in ran:
            lines.append(f"  {row.key}: {row.command.replace(shared, 'TRAIN') if shared else row.command}")
        return lines

    def to_data(self) -> dict[str, Any]:
        return {"options": {**asdict(self.options), "out_dir": str(self.options.out_dir)},
                "shape": asdict(self.shape), "machine": self.machine, "data": DATA,
                "docs": {**asdict(DOCS), "rows": {key: {"samples_per_second": value[0], "speedup": value[1],
                                                        "launch": DOCS_LAUNCH[key]}
                                                  for key, value in DOCS_ROWS.items()}},
                "rows": [row.to_data() for row in self.rows], "checks": list(self.checks),
                "seconds": self.seconds, "shared_args": self.shared_args}

    def to_json(self) -> str:
        return json.dumps(self.to_data(), indent=2, sort_keys=True) + "\n"


def final_losses(events: list[dict[str, Any]]) -> tuple[float | None, dict[str, float]]:
    """The mean of the last FINAL_LOSS_WINDOW logged losses, overall and per dataset (``losses`` of the loss
    events, where the training logs them); a window without a finite value gives no figure."""
    logged = [e for e in events if e.get("event") == "loss"]
    overall = [float(e["loss"]) for e in logged if isinstance(e.get("loss"), (int, float))][-FINAL_LOSS_WINDOW:]
    per: dict[str, list[float]] = {}
    for event in logged:
        for name, value in (event.get("losses") or {}).items():
            if isinstance(value, (int, float)):
                per.setdefault(str(name), []).append(float(value))
    means = {name: sum(values[-FINAL_LOSS_WINDOW:]) / len(values[-FINAL_LOSS_WINDOW:])
             for name, values in sorted(per.items())}
    return (sum(overall) / len(overall) if overall else None), means


def _ok(good: bool) -> str:
    return "OK" if good else "MISSED"


def _equal_loss(tuned: BenchRow, docs_style: BenchRow) -> str | None:
    """Whether two rows ended at the same loss: per dataset where both logged them, else overall."""
    common = sorted(set(tuned.final_losses) & set(docs_style.final_losses))
    pairs = [(name, tuned.final_losses[name], docs_style.final_losses[name]) for name in common]
    if not pairs and tuned.final_loss is not None and docs_style.final_loss is not None:
        pairs = [("", tuned.final_loss, docs_style.final_loss)]
    if not pairs:
        return None
    equal = all(abs(mine - theirs) <= EQUAL_LOSS_TOLERANCE * abs(theirs) for _name, mine, theirs in pairs)
    said = ", ".join(f"{name + ' ' if name else ''}{mine:.3f} vs {theirs:.3f}" for name, mine, theirs in pairs)
    return f"final loss {said}: {'equal' if equal else 'NOT equal'} (within {EQUAL_LOSS_TOLERANCE:.0%})"


BUSY_WARNING = 0.25  # cores others used before the bench from which its figures are called low


def checks(rows: list[BenchRow], shape: BenchShape, facts: dict[str, Any] | None = None) -> list[str]:
    by = {row.key: row for row in rows if row.samples_per_second}
    ddp, bound, single, tuned = by.get("ddp"), by.get("ddp-no-sync"), by.get("single-1"), by.get("stjobs")
    lines: list[str] = []
    if ddp and bound and ddp.samples_per_second and bound.samples_per_second:
        fraction = ddp.samples_per_second / bound.samples_per_second
        lines.append(f"DDP / DDP without gradient sync: {fraction:.0%} (goal >= {NO_SYNC_FRACTION_GOAL:.0%}; "
                     f"the rest is the gradient all-reduce) {_ok(fraction >= NO_SYNC_FRACTION_GOAL)}")
    if ddp and single and ddp.samples_per_second and single.samples_per_second:
        ratio, n = ddp.samples_per_second / single.samples_per_second, shape.processes
        docs_ratio = DOCS_ROWS["ddp"][1]
        unit = "GPU" if shape.gpus else "process"
        lines.append(f"DDP vs no parallelism: {ratio:.2f}x over {n} {unit}{'es' if unit == 'process' else 's'} = "
                     f"{ratio / n:.0%} of linear (goal >= {DDP_EFFICIENCY_GOAL:.0%}, {DDP_EFFICIENCY_GOAL * n:.2f}x; "
                     f"docs: {docs_ratio:.2f}x over {DOCS_GPUS} GPUs = {docs_ratio / DOCS_GPUS:.0%}) "
                     f"{_ok(ratio >= DDP_EFFICIENCY_GOAL * n)}")
    if ddp and tuned and ddp.samples_per_second and tuned.samples_per_second:
        ratio = tuned.samples_per_second / ddp.samples_per_second
        line = (f"stjobs defaults vs docs-style DDP: {ratio:.2f}x (goal >= {DEFAULTS_SPEEDUP_GOAL}) "
                f"{_ok(ratio >= DEFAULTS_SPEEDUP_GOAL)}")
        loss = _equal_loss(tuned, ddp)
        checks_loss = f"; {loss}" if loss else "; no final loss to compare"
        lines.append(line + checks_loss)
    for row in rows:
        if row.ran is not None and row.ran != row.strategy:
            lines.append(f"warning: {row.label} ran as {row.ran}")
        if row.precision is not None and row.precision != shape.precision:
            lines.append(f"warning: {row.label} trained in {row.precision}, not {shape.precision}")
    busy: list[tuple[str, Any]] = [(row.key, row.busy_cores_before) for row in rows]
    busy.append(("the start", (facts or {}).get("busy_cores_before")))
    shared = [f"{value:.1f} before {key}" for key, value in busy
              if isinstance(value, (int, float)) and value >= BUSY_WARNING]
    if shared:
        lines.append(f"warning: other processes kept cores busy ({', '.join(shared)}; of {shape.cpus}): those "
                     "figures are low and noisy; run the bench on an idle machine")
    return lines


def build_report(options: BenchOptions, shape: BenchShape, facts: dict[str, Any], rows: list[BenchRow],
                 seconds: float | None = None, shared_args: str = "") -> BenchReport:
    """Speed-ups over "no parallelism" (one GPU, or one CPU thread) and the checks."""
    base = next((r.samples_per_second for r in rows if r.key == "single-1"), None)
    rows = [replace(r, speedup=round(r.samples_per_second / base, 3)) if base and r.samples_per_second else r
            for r in rows]
    return BenchReport(options, shape, facts, tuple(rows), tuple(checks(rows, shape, facts)), seconds, shared_args)
