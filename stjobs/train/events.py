"""Structured, machine-readable progress lines of the training entrypoint.

Every event is one stdout line ``STJOBS_EVENT {json}`` (compact JSON, sorted keys) that carries at least ``event``
and ``rank``. Launch tests and the CLI read a job's log back with :func:`parse_events`, so the format is a contract:

====================  ==========  ======================================================================================
event                 who emits   fields besides ``event`` and ``rank``
====================  ==========  ======================================================================================
``already_complete``  rank 0      ``step``, ``path`` (``final``), ``max_steps``, ``epochs``: ``final`` already holds the
                                  model trained as far as asked (its stjobs_run.json); no rank trains, all exit 0
``start``             every rank  ``world_size``, ``local_rank``, ``strategy``, ``backend`` (null when not distributed),
                                  ``model``, ``train_rows``, ``kind``, ``loss``, ``learning_rate``,
                                  ``per_device_batch_size``, ``global_batch_size``, ``gather_across_devices``,
                                  ``max_steps`` and ``epochs`` (the planned length: one is null),
                                  ``datasets`` (``[{name, kind, loss, rows}]``, one per --train-data; with several,
                                  ``kind`` and ``loss`` join theirs with ``+``, ``train_rows`` is the sum)
``no_evaluator``      rank 0      ``data``, ``kind``: an --eval-data of a kind without an evaluator (labelled), unused
``resumed``           every rank  ``checkpoint`` (absolute path)
``unused``            rank 0      ``parameters``: names no sentence embedding depends on (e.g. a pooler);
                                  ``ignored_by_ddp``: left out of DDP (else DDP searches for unused ones after each
                                  backward)
``wrapped``           every rank  ``distributed_type`` (accelerate's name: ``NO``, ``MULTI_CPU``, ``MULTI_GPU``,
                                  ``FSDP``), ``model_wrapper`` (class of the model actually trained, e.g.
                                  ``DistributedDataParallel``), ``requested`` (STJOBS_STRATEGY), ``ran`` (``single``,
                                  ``dp``, ``ddp`` or ``fsdp``), ``as_requested`` (false: the libraries fell back, e.g.
                                  FSDP on CPUs runs as DDP), ``precision``; ``gradient_sync: false`` only under
                                  --no-gradient-sync (a bench bound)
``loss``              rank 0      ``step``, ``loss`` (mean over ranks and logging window; null if not finite); with
                                  several datasets also ``losses``: ``{name: mean loss of its batches in the window}``;
                                  ``learning_rate`` (the scheduler's, as the Trainer logs it), ``epoch`` (fractional),
                                  ``samples_per_second`` (global batch x steps over the window's wall seconds, an
                                  --eval-steps evaluation left out; null when not measurable)
``eval``              rank 0      ``when`` (``before`` / ``during`` with --eval-steps / ``after``), ``metric``,
                                  ``score``, ``step``; with several evaluators, the first one's metric
``preempted``         every rank  ``step``, ``checkpoint``, ``signal`` (name, or null on ranks that got no signal)
``throughput``        rank 0      ``samples_per_second``, ``steps``, ``seconds``, ``global_batch_size``,
                                  ``steady_samples_per_second`` and ``steady_steps`` (without the warm-up steps)
``loss_weights``      rank 0      ``parameters`` (tensors of the losses' own weights, e.g. SoftmaxLoss's classifier),
                                  ``same_on_every_rank``: checked after training under DDP (they are averaged by hand)
``saved``             rank 0      ``path``
``done``              rank 0      (none)
====================  ==========  ======================================================================================

Every event also goes, as one JSON object a line with the wall-clock ``time`` it was written (Unix seconds), into
the job's own events file ``$STJOBS_JOB_DIR/events/rank-N.jsonl`` (:func:`events_file`; one file a global rank, so
no two processes, on one node or on several sharing the job's directory, ever append to the same file). Those files
are what ``stjobs logs --events``, ``status`` and ``plot`` read where the job's directory is on this machine; the
stdout copy stays because a pod's log is the only channel a Kubernetes job has, and the console view
(:mod:`stjobs.console`) leaves it out of what a person sees.

Standard library only: the launcher side parses these without torch installed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

PREFIX = "STJOBS_EVENT "
EVENTS_DIR = "events"  # in the job's directory: rank-N.jsonl


def global_rank() -> int:
    """The global rank torchrun (or SLURM via torchrun) gave this process; 0 when not distributed."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _clean(value: Any) -> Any:
    # NaN/inf are not JSON; a diverged loss must still produce a line every consumer (jq, JS, Python) can read.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _payload(event: str, fields: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {"rank": global_rank()}
    payload.update(fields)
    payload["event"] = event
    cleaned: dict[str, Any] = _clean(payload)
    return cleaned


def _body(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def format_event(event: str, **fields: Any) -> str:
    """The exact line (without newline) :func:`emit` writes; ``rank`` defaults to the env's global rank."""
    return PREFIX + _body(_payload(event, fields))


def events_file(job_dir: str | Path, rank: int) -> Path:
    """Where global rank ``rank`` of the job in ``job_dir`` writes its events."""
    return Path(job_dir) / EVENTS_DIR / f"rank-{rank}.jsonl"


_files: dict[Path, TextIO | None] = {}  # opened once a process; None: not writable here (e.g. a read-only mount)


def _file_for(rank: int) -> TextIO | None:
    job_dir = os.environ.get("STJOBS_JOB_DIR")
    if not job_dir:  # run by hand, outside a job stjobs rendered: stdout only
        return None
    path = events_file(job_dir, rank)
    if path not in _files:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Line-buffered append: a requeued or resumed job adds its run after the one before (a new `start`),
            # and every line reaches the file whole as it is written.
            _files[path] = open(path, "a", encoding="utf-8", newline="\n", buffering=1)  # noqa: SIM115
        except OSError:
            _files[path] = None  # a pod's job directory is a read-only ConfigMap: its events live in the log
    return _files[path]


def emit(event: str, stream: TextIO | None = None, **fields: Any) -> None:
    """Write one event line and flush at once, so a killed or preempted job still shows what happened; and the
    same event, with the time, into this rank's events file when the job has a directory it may write."""
    out = stream if stream is not None else sys.stdout
    payload = _payload(event, fields)
    # Flush whatever the process printed before, then write the event as a single small write: under torchrun
    # several ranks share one pipe, and a single write below PIPE_BUF is never interleaved with another rank's.
    out.flush()
    out.write(PREFIX + _body(payload) + "\n")
    out.flush()
    rank = payload.get("rank")
    target = _file_for(rank if isinstance(rank, int) else global_rank())
    if target is not None:
        # A full disk must not kill the training over a progress record: stdout has it.
        with contextlib.suppress(OSError):
            target.write(_body({**payload, "time": round(time.time(), 3)}) + "\n")


def read_events_dir(job_dir: str | Path) -> list[dict[str, Any]] | None:
    """Every rank's events from the job's events files, in the order they were written (rank 0 first on a tie);
    None when the job has no events directory here (another machine's job, a pod, an older job)."""
    folder = Path(job_dir) / EVENTS_DIR
    try:
        paths = sorted(folder.glob("rank-*.jsonl"), key=lambda path: _rank_of(path.name))
    except OSError:
        return None
    if not folder.is_dir():
        return None
    found: list[tuple[float, int, int, dict[str, Any]]] = []
    for path in paths:
        rank = _rank_of(path.name)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for index, value in enumerate(parse_event_lines(text)):
            stamp = value.get("time")
            found.append((float(stamp) if isinstance(stamp, (int, float)) else 0.0, rank, index, value))
    found.sort(key=lambda item: item[:3])
    return [item[3] for item in found]


def parse_event_lines(text: str) -> list[dict[str, Any]]:
    """The events of an events file (one JSON object a line); a line cut by a killed job is skipped."""
    events: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "event" in value:
            events.append(value)
    return events


def _rank_of(name: str) -> int:
    digits = name.removeprefix("rank-").removesuffix(".jsonl")
    return int(digits) if digits.isdigit() else 1 << 30


def parse_events(text: str) -> list[dict[str, Any]]:
    """Every event found in a log, in order.

    Tolerates anything before the marker on a line (torchrun's ``[rank0]:`` / ``[default0]:`` prefixes, SLURM's
    ``0:`` labels, timestamps) and ignores lines whose JSON is cut or malformed, so a truncated log still parses.
    """
    decoder = json.JSONDecoder()
    events: list[dict[str, Any]] = []
    for line in text.splitlines():
        start = line.find(PREFIX)
        while start != -1:
            body = line[start + len(PREFIX):].lstrip()
            try:
                value, _end = decoder.raw_decode(body)
            except ValueError:
                value = None
            if isinstance(value, dict) and "event" in value:
                events.append(value)
            start = line.find(PREFIX, start + len(PREFIX))
    return events


def first(events: list[dict[str, Any]], name: str, rank: int | None = None) -> dict[str, Any] | None:
    """The first event called ``name`` (optionally from one rank), or None."""
    for item in events:
        if item.get("event") == name and (rank is None or item.get("rank") == rank):
            return item
    return None


def summary(steps: int, seconds: float, samples_per_second: float, global_batch: int, metric: str | None,
            scores: dict[str, float], final: str) -> str:
    """The few human-readable lines the main process prints at the end of a run."""
    lines = [f"stjobs.train: trained {steps} steps in {seconds:.1f} s: {samples_per_second:.1f} samples/s "
             f"(global batch {global_batch})"]
    if metric and "before" in scores and "after" in scores:
        lines.append(f"stjobs.train: eval {metric}: {scores['before']:.4f} -> {scores['after']:.4f}")
    lines.append(f"stjobs.train: model saved to {final}")
    return "\n".join(lines)
