"""How far a job is, read from the events its training printed (:mod:`stjobs.train.events`): the step and the
planned steps, samples/s, an ETA, and for a finished run its last evaluation score.

Cheap by design, as ``stjobs status`` asks this of every job it lists: only the last :data:`TAIL_BYTES` of the
job's rank-0 output are read (plus, when that tail holds no ``start`` event, the first :data:`TAIL_BYTES`, where
the run's planned steps and global batch are), and only for a job that runs or has finished; a finished job's
answer is kept in its directory (:data:`CACHE_FILE`) and read from there while its output file is unchanged.
An output that is no file here (a pod's log) is read by its backend, one bounded call (:func:`remote_progress`).
Standard library only (the YAML of the stored spec is read only for an old run whose ``start`` lacks
``max_steps``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from stjobs.launch import option_value
from stjobs.train.events import parse_events

TAIL_BYTES = 64 * 1024
CACHE_FILE = "progress.json"
# The stamps of an answer kept for an output with no size and mtime here (a pod's log): a finished job's, final;
# a running job's latest, which stands only once its output is gone.
FINISHED, RUNNING = "finished", "running"
RATE_WINDOW = 5  # loss events whose samples/s the ETA averages (the latest ones of the current run)


@dataclass(frozen=True)
class Progress:
    """``step`` of ``total`` planned steps (``estimated``: the total follows from --epochs and the epoch the run
    is at); ``samples_per_second`` of the latest loss event (a finished run's: its throughput); ``eta_s`` the
    remaining steps over the recent steps per second (None once finished, or when unknown); ``metric``/``score``
    the run's last evaluation."""

    step: int | None = None
    total: int | None = None
    estimated: bool = False
    samples_per_second: float | None = None
    eta_s: float | None = None
    metric: str | None = None
    score: float | None = None
    finished: bool = False

    @property
    def percent(self) -> float | None:
        if self.step is None or not self.total:
            return None
        return min(100.0, 100.0 * self.step / self.total)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "percent": self.percent}

    def text(self) -> str:
        """``120/500 24%``, ``step 120`` without a total, ``500/500 spearman_cosine=0.8123`` once evaluated."""
        if self.step is None:
            said = "-"
        elif self.total:
            said = f"{self.step}/{'~' if self.estimated else ''}{self.total} {self.percent:.0f}%"
        else:
            said = f"step {self.step}"
        if self.score is not None:
            said += f" {self.metric or 'score'}={self.score:.4f}"
        return said


@dataclass(frozen=True)
class Planned:
    """What the run was asked for: --max-steps, else --epochs (the training's default is one epoch)."""

    max_steps: int | None = None
    epochs: float | None = None


def eta_seconds(step: int, total: int, samples_per_second: float, global_batch_size: int) -> float | None:
    """Seconds left: the remaining steps at ``samples_per_second / global_batch_size`` steps per second."""
    if samples_per_second <= 0 or global_batch_size <= 0 or not math.isfinite(samples_per_second):
        return None
    return max(total - step, 0) * global_batch_size / samples_per_second


def from_events(events: list[dict[str, Any]], planned: Planned | None = None, finished: bool = False,
                start: dict[str, Any] | None = None) -> Progress | None:
    """The progress the rank-0 events of a log (or its tail) say, None when they say nothing of steps.

    The current run is what follows the last ``start``: a requeued or resumed job starts again from its checkpoint,
    so its steps repeat and only the newest run counts. ``start``: the run's start event when ``events`` (a tail)
    lack one; ``finished``: the job has ended (no ETA, whatever its events)."""
    ours = [event for event in events if event.get("rank", 0) == 0]
    starts = [index for index, event in enumerate(ours) if event.get("event") in ("start", "already_complete")]
    if starts:
        start = ours[starts[-1]]
        ours = ours[starts[-1]:]
    begin = start or {}
    if begin.get("event") == "already_complete":  # `final` held the model already: nothing was trained
        step = _int(begin.get("step"))
        return Progress(step=step, total=_int(begin.get("max_steps")) or step, finished=True)
    losses = [event for event in ours if event.get("event") == "loss" and _int(event.get("step")) is not None]
    evals = [event for event in ours if event.get("event") == "eval" and isinstance(event.get("score"), (int, float))]
    known = [step for step in (_int(event.get("step")) for event in (*losses, *evals)) if step is not None]
    if not known:
        return None
    step = max(known)
    ended = any(event.get("event") == "done" for event in ours)
    done = finished or ended
    planned = planned or Planned()
    total = _int(begin.get("max_steps")) or planned.max_steps
    estimated = False
    epochs = _float(begin.get("epochs")) or planned.epochs
    last_epoch = _float(losses[-1].get("epoch")) if losses else None
    if total is None and epochs and last_epoch:
        total, estimated = max(round(step * epochs / last_epoch), step), True
    if ended and (total is None or estimated):
        total, estimated = step, False  # the run ended where its plan did: its last step was the last planned
    rates = [rate for rate in (_float(event.get("samples_per_second")) for event in losses) if rate]
    throughput = next((event for event in reversed(ours) if event.get("event") == "throughput"), None)
    rate = rates[-1] if rates else None
    if done and throughput is not None and _float(throughput.get("samples_per_second")):
        rate = _float(throughput.get("samples_per_second"))
    batch = _int(begin.get("global_batch_size"))
    eta = None
    if not done and total is not None and rates and batch:
        recent = rates[-RATE_WINDOW:]
        eta = eta_seconds(step, total, sum(recent) / len(recent), batch)
    last_eval = evals[-1] if evals else None
    return Progress(step=step, total=total, estimated=estimated, samples_per_second=rate, eta_s=eta,
                    metric=str(last_eval["metric"]) if last_eval and last_eval.get("metric") else None,
                    score=float(last_eval["score"]) if last_eval else None, finished=done)


def read_progress(path: Path | None, job_dir: Path, finished: bool) -> Progress | None:
    """The progress in a job's rank-0 output file ``path`` (None: the backend keeps none on this machine), read
    from its tail; a finished job's is kept in ``job_dir`` and reused while the file is unchanged."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    stamp = [stat.st_size, stat.st_mtime_ns]
    if finished:
        kept = _cached(job_dir, stamp)
        if kept is not None:
            return kept
    text, whole = read_tail(path, stat.st_size)
    found = tail_progress(text, planned_steps(job_dir), finished,
                          (lambda: None) if whole else (lambda: run_start(read_head(path))))
    if finished:
        _keep(job_dir, stamp, found)
    return found


def tail_progress(text: str, planned: Planned | None, finished: bool,
                  earlier_start: Callable[[], dict[str, Any] | None] = lambda: None) -> Progress | None:
    """The progress the tail ``text`` of rank 0's output says, wherever the output lives (a file, a pod's log).
    ``earlier_start``: the run's ``start`` event from elsewhere (the output's head, one kept from an earlier
    tail), asked only when the tail lacks one."""
    events = parse_events(text)
    start = None if _start_in(events) is not None else earlier_start()
    return from_events(events, planned, finished, start)


def run_start(text: str) -> dict[str, Any] | None:
    """The last rank-0 ``start`` event in ``text``, None without one."""
    return _start_in(parse_events(text))


def _start_in(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((event for event in reversed(events) if event.get("event") == "start"
                 and event.get("rank", 0) == 0), None)


def remote_progress(tail: Callable[[], str | None], job_dir: Path, finished: bool) -> Progress | None:
    """The progress in rank 0's output where it is no file on this machine (a pod's log, read by the backend
    with one call: ``tail()``, its latest :data:`TAIL_BYTES` or so, "" when there is no output, None when it
    cannot be read now).

    Such an output has no size and mtime to tell a kept answer stale, but a finished job's output no longer
    changes: its answer is kept once (stamp :data:`FINISHED`) and ``tail`` is not called again. A running job's
    latest answer and the run's ``start`` event are kept too (stamp :data:`RUNNING`): the start carries the
    global batch the ETA needs once the tail no longer holds it, and the answer stands for the job when its
    output is gone by the time it is seen finished (pods deleted with their job)."""
    kept = _read_kept(job_dir)
    if finished and kept.get("stamp") == FINISHED:
        return _progress_of(kept.get("progress"))
    text = tail()
    if text is None:  # unreadable now (the API server refused or is away): unknown, asked again next time
        return None
    # No head read, unlike a file's: it would be a second call per job and refresh. The stored spec gives the
    # planned steps; only the ETA's global batch is missing, and it is in the start kept from an earlier tail
    # (the first `status` of a run sees the start: its log is short then).
    start = kept.get("start")
    kept_start: dict[str, Any] | None = start if isinstance(start, dict) else None
    found = tail_progress(text, planned_steps(job_dir), finished, lambda: kept_start)
    if found is None and finished and kept.get("stamp") == RUNNING:
        last = _progress_of(kept.get("progress"))  # its output is gone: what it said while running
        found = replace(last, eta_s=None, finished=True) if last is not None else None
    said: dict[str, object] = {"stamp": FINISHED if finished else RUNNING,
                               "progress": asdict(found) if found else None, "start": run_start(text) or kept_start}
    if (finished or found is not None) and said != kept:  # unchanged: no write on each --watch refresh
        _write_kept(job_dir, said)
    return found


def file_tail(path: Path | None, limit: int = TAIL_BYTES) -> str | None:
    """The last ``limit`` bytes of the file ``path`` as text, from its first whole line (a backend's
    ``output_tail`` where rank 0's output is a file here); None without a file."""
    if path is None:
        return None
    try:
        size = path.stat().st_size
    except OSError:
        return None
    return read_tail(path, size, limit)[0]


def read_tail(path: Path, size: int, limit: int = TAIL_BYTES) -> tuple[str, bool]:
    """The last ``limit`` bytes of ``path`` as text, from its first whole line; and whether that is the whole file."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(size - limit, 0))
            data = handle.read(limit)
    except OSError:
        return "", True
    if size > limit:
        data = data.partition(b"\n")[2]  # the first line is cut
    return data.decode(errors="replace"), size <= limit


def read_head(path: Path, limit: int = TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit)
    except OSError:
        return ""
    return data.rpartition(b"\n")[0].decode(errors="replace")


def planned_steps(job_dir: Path) -> Planned | None:
    """--max-steps or --epochs of the built-in training, from the spec stored with the job (``stjobs.yaml``);
    None for another entrypoint or a spec that cannot be read."""
    path = job_dir / "stjobs.yaml"  # stjobs.backends.common.SPEC_FILE: every backend writes it into the job dir
    from stjobs import yamlio

    try:
        data = yamlio.read(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, *yamlio.INVALID):  # a spec damaged by hand: no plan known
        return None
    entrypoint = data.get("entrypoint") if isinstance(data, dict) else None
    if not isinstance(entrypoint, dict) or entrypoint.get("module") != "stjobs.train":
        return None
    args = tuple(str(arg) for arg in entrypoint.get("args") or [])
    max_steps, epochs = option_value(args, "--max-steps"), option_value(args, "--epochs")
    if max_steps is not None:  # the Trainer's max_steps wins over its epochs
        return Planned(max_steps=_int(max_steps))
    return Planned(epochs=_float(epochs) if epochs is not None else 1.0)  # the training's default: one epoch


def _cached(job_dir: Path, stamp: list[int]) -> Progress | None:
    kept = _read_kept(job_dir)
    return _progress_of(kept.get("progress")) if kept.get("stamp") == stamp else None


def _keep(job_dir: Path, stamp: list[int], found: Progress | None) -> None:
    if found is not None:
        _write_kept(job_dir, {"stamp": stamp, "progress": asdict(found)})


def _read_kept(job_dir: Path) -> dict[str, object]:
    from stjobs.jobs import read_json

    return read_json(job_dir / CACHE_FILE) or {}


def _progress_of(said: object) -> Progress | None:
    if not isinstance(said, dict):
        return None
    fields = {key: value for key, value in said.items() if key in Progress.__dataclass_fields__}
    try:
        return Progress(**fields)
    except TypeError:
        return None


def _write_kept(job_dir: Path, kept: dict[str, object]) -> None:
    from stjobs.jobs import write_json

    with contextlib.suppress(OSError):  # someone else's job directory: the answer stands, only not kept
        if os.access(job_dir, os.W_OK):
            write_json(job_dir / CACHE_FILE, kept)


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
