"""A submitted sweep: its record, its points' records, their states as one line, and their results.

A sweep is one record (``details["sweep"]``: the points, each with its job id and directory) over one job record
per point, in ``points/<index>/`` of the sweep's directory; the backends submit the points (a SLURM job array, one
Kubeflow object per point, local jobs one after another). A point's job id is ``<sweep id>-p<index>``, and ``logs``,
``cancel`` and ``plot`` take it like any job's. Submitting an unchanged sweep again (the same points, the same
backend: :func:`stjobs.sweep.fingerprint`) reruns only the points that did not complete; the completed ones are
listed in the new sweep from where they ran.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stjobs.errors import UsageError
from stjobs.jobs import JobRecord, JobStatus, State, jobs_root, list_records, load_record_at, new_job_id
from stjobs.plan import Plan, write_plan
from stjobs.sweep import POINTS_DIR, expand, fingerprint

KEY = "sweep"


@dataclass(frozen=True)
class Sweeping:
    """What a backend's ``submit_sweep`` is told: the sweep's id and directory, and the points to run now."""

    sweep_id: str
    sweep_dir: Path
    indices: tuple[int, ...]

    def point_id(self, index: int) -> str:
        return point_id(self.sweep_id, index)

    def point_dir(self, index: int) -> Path:
        return self.sweep_dir / POINTS_DIR / str(index)


def point_id(sweep_id: str, index: int) -> str:
    return f"{sweep_id}-p{index}"


def is_sweep(record: JobRecord) -> bool:
    return isinstance(record.details.get(KEY), dict)


def _sweep(record: JobRecord) -> dict[str, Any]:
    sweep = record.details.get(KEY)
    return sweep if isinstance(sweep, dict) else {}


def _listed(record: JobRecord) -> list[dict[str, Any]]:
    points = _sweep(record).get("points")
    return [item for item in points if isinstance(item, dict)] if isinstance(points, list) else []


def point_records(record: JobRecord) -> list[JobRecord]:
    """The points' records, in point order; a point whose directory is gone (cleaned) is left out."""
    found = []
    for item in _listed(record):
        try:
            found.append(load_record_at(Path(str(item.get("job_dir")))))
        except (OSError, ValueError, TypeError):
            continue
    return found


def labels(record: JobRecord) -> dict[str, str]:
    """Point job id -> what sets the point apart (``--learning-rate=2e-05 --loss=...``)."""
    return {str(item.get("job_id")): str(item.get("label", "")) for item in _listed(record)}


def submit(plan: Plan, submit_points: Callable[..., list[JobRecord]],
           status_of: Callable[[str], list[JobStatus]], **options: Any) -> JobRecord:
    """Submit a sweep's plan: the points an earlier submission of the same sweep completed are kept, the others
    run (``submit_points``: the backend's ``submit_sweep``; ``status_of``: a sweep id's status lines, the sweep's
    and then its points'). Refused while that earlier one still has points pending or running, and when it has
    nothing left to run."""
    points = expand(plan.spec)
    mark = fingerprint(points, plan.backend)
    kept = _completed_before(mark, plan.spec.name, status_of)
    indices = tuple(point.index for point in points if point.index not in kept)
    if not indices:
        earlier = next(iter(kept.values())).details.get("sweep_of")
        raise UsageError(f"sweep: every point of {plan.spec.name} completed already ({earlier}); nothing to rerun "
                         "(stjobs status shows their results; change the sweep, or stjobs clean, to run it again)")
    sweep_id = new_job_id(plan.job_name)
    sweeping = Sweeping(sweep_id, jobs_root() / sweep_id, indices)
    # The sweep's own files (its spec, its points table, a job array's batch file); each point's go with its job.
    write_plan(replace(plan, files=tuple(item for item in plan.files if not item.path.startswith(POINTS_DIR + "/")),
                       points=()), sweeping.sweep_dir)
    try:
        submitted = submit_points(plan, sweeping, **options)
    except BaseException:
        import shutil

        shutil.rmtree(sweeping.sweep_dir, ignore_errors=True)
        raise
    by_index = {**kept, **{index: record for index, record in zip(indices, submitted, strict=True)}}
    spec = plan.spec
    record = JobRecord(
        job_id=sweeping.sweep_id, backend=plan.backend, name=spec.name, job_dir=str(sweeping.sweep_dir),
        submitted_at=time.time(), nodes=plan.points[0].spec.nodes, procs_per_node=plan.points[0].spec.procs_per_node,
        details={KEY: {"fingerprint": mark, "max_running": spec.sweep.max_running, "rerun": list(indices),
                       "points": [{"index": point.index, "label": point.label, "job_id": by_index[point.index].job_id,
                                   "job_dir": by_index[point.index].job_dir} for point in points]}})
    record.save()
    return record


def submitted_line(record: JobRecord) -> str | None:
    """What a person is told of a sweep just submitted (None for a job): its points, and which were kept."""
    if not is_sweep(record):
        return None
    listed = _listed(record)
    rerun = set(_sweep(record).get("rerun") or [])
    kept = [item for item in listed if item.get("index") not in rerun]
    said = f"sweep of {len(listed)} point(s): {len(listed) - len(kept)} submitted"
    if kept:
        earlier = sorted({str(item.get("job_id", "")).rsplit("-p", 1)[0] for item in kept})
        said += f", {len(kept)} completed before ({', '.join(earlier)}) and kept"
    return said + f"; stjobs status {record.job_id} shows each point and its result"


def _completed_before(mark: str, name: str, status_of: Callable[[str], list[JobStatus]]) -> dict[int, JobRecord]:
    """The newest earlier submission of the same sweep: its completed points by index (none if there is none).
    Its points that still wait or run refuse the new submission (they would run twice)."""
    earlier = [record for record in list_records() if is_sweep(record) and record.name == name
               and _sweep(record).get("fingerprint") == mark]
    if not earlier:
        return {}
    last = earlier[-1]
    rows = status_of(last.job_id)[1:]
    busy = [row.record.job_id for row in rows if not row.state.finished]
    if busy:
        raise UsageError(f"sweep: {last.job_id} (the same sweep) still has {len(busy)} point(s) pending or running "
                         f"({', '.join(busy[:3])}); wait for them, or stjobs cancel {last.job_id}, then submit again")
    index_of = {str(item.get("job_id")): int(item.get("index", -1)) for item in _listed(last)}
    return {index_of[row.record.job_id]: row.record for row in rows if row.state is State.COMPLETED}


def with_sweeps(records: Sequence[JobRecord], query: Callable[[list[JobRecord]], list[JobStatus]],
                expand_points: bool) -> list[JobStatus]:
    """Statuses of ``records`` in one ``query`` (batched per backend), a sweep's as one line summing its
    points' (its points right after it with ``expand_points``)."""
    flat: list[JobRecord] = []
    spans: list[tuple[JobRecord, int, int]] = []
    for record in records:
        start = len(flat)
        flat += point_records(record) if is_sweep(record) else [record]
        spans.append((record, start, len(flat)))
    answers = query(flat)
    out: list[JobStatus] = []
    for record, start, end in spans:
        if not is_sweep(record):
            out.append(answers[start])
            continue
        points = answers[start:end]
        out.append(summary(record, points))
        if expand_points:
            out += points
    return out


def summary(record: JobRecord, points: Sequence[JobStatus]) -> JobStatus:
    """One line for a sweep: a state for the whole (running while any point runs, completed once all have,
    failed when one failed and none waits), and the count of each state as its reason."""
    states = [point.state for point in points]
    if not states:
        return JobStatus(record, State.LOST, reason="its points' records are gone")
    if State.RUNNING in states:
        state = State.RUNNING
    elif any(not item.finished for item in states):
        state = State.UNKNOWN if State.UNKNOWN in states and State.PENDING not in states else State.PENDING
    elif all(item is State.COMPLETED for item in states):
        state = State.COMPLETED
    elif State.FAILED in states or State.LOST in states:
        state = State.FAILED
    else:
        state = State.CANCELLED
    counts = ", ".join(f"{states.count(item)} {item.value}" for item in State if item in states)
    failed = next((point for point in points if point.state is State.FAILED), None)
    why = f"; {failed.record.job_id}: {failed.reason}" if failed is not None and failed.reason else ""
    return JobStatus(record, state, reason=f"sweep of {len(states)} point(s): {counts}{why}")


@dataclass(frozen=True)
class Result:
    """A point's outcome: its last evaluation (metric, score) and its last logged training loss."""

    job_id: str
    label: str
    state: State
    metric: str | None
    score: float | None
    loss: float | None
    steps: int | None


def results(record: JobRecord, points: Sequence[JobStatus],
            events_of: Callable[[str], list[dict[str, Any]]]) -> list[Result]:
    """Each point's result from its events (``events_of``: a job id's events), best first: the highest final
    evaluation score, then (points without one) the lowest final loss, then the rest."""
    said = labels(record)
    found = []
    for point in points:
        try:
            events = [event for event in events_of(point.record.job_id) if event.get("rank", 0) == 0]
        except Exception:
            events = []
        evals = [event for event in events if isinstance(event.get("score"), (int, float))
                 and event.get("event") == "eval"]
        losses = [event for event in events if event.get("event") == "loss"
                  and isinstance(event.get("loss"), (int, float))]
        last_eval, last_loss = (evals[-1] if evals else None), (losses[-1] if losses else None)
        found.append(Result(point.record.job_id, said.get(point.record.job_id, ""), point.state,
                            str(last_eval.get("metric")) if last_eval else None,
                            float(last_eval["score"]) if last_eval else None,
                            float(last_loss["loss"]) if last_loss else None,
                            int(last_loss["step"]) if last_loss and isinstance(last_loss.get("step"), int) else None))

    def rank(item: Result) -> tuple[int, float]:
        if item.score is not None and math.isfinite(item.score):
            return (0, -item.score)
        if item.loss is not None and math.isfinite(item.loss):
            return (1, item.loss)
        return (2, 0.0)

    return sorted(found, key=rank)


def results_table(rows: Sequence[Result]) -> str:
    """The results as a person reads them: best first, one line a point."""
    headers = ("point", "values", "state", "score", "loss", "steps")
    cells = [(row.job_id.rsplit("-", 1)[-1], row.label, row.state.value,
              f"{row.metric}={row.score:.4f}" if row.score is not None else "-",
              f"{row.loss:.4f}" if row.loss is not None else "-", str(row.steps) if row.steps is not None else "-")
             for row in rows]
    widths = [max(len(header), *(len(cell[index]) for cell in cells)) for index, header in enumerate(headers)]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
             for line in (headers, *cells)]
    return "\n".join(lines) + "\n"
