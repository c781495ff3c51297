"""What ``stjobs status`` prints: one line per job (also with hundreds), cut to the terminal's width without ever
cutting the job id; one JSON object per job with ``--json``; and ``--watch``, which redraws the table until Ctrl-C.

Pure text over :func:`stjobs.api.status_rows`' answer: nothing here asks a scheduler or reads a log.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from stjobs.jobs import JobStatus
    from stjobs.progress import Progress

Row = tuple["JobStatus", "Progress | None"]
HEADERS = ("job", "name", "backend", "nodes", "state", "exit", "requeues", "progress", "samples/s", "eta",
           "submitted", "age", "reason")
# Shown only when some job has a value there: most listings have no requeued job.
OPTIONAL = ("exit", "requeues", "reason")
# When a line is too wide, in this order: a column is cut down to its floor, or (None) goes (the age stays, and the
# job id starts with the name); the job id is never cut.
NARROWING: tuple[tuple[str, int | None], ...] = (
    ("reason", 20), ("submitted", None), ("nodes", None), ("name", None), ("progress", 24), ("backend", None),
    ("exit", None), ("progress", 12), ("reason", 0))
GAP = "  "
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen (as `watch` redraws)


def duration(seconds: float | None) -> str:
    """``45s``, ``12m30s``, ``3h05m``, ``2d04h``; ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def cells(row: Row, now: float) -> dict[str, str]:
    status, progress = row
    record = status.record
    rate = progress.samples_per_second if progress is not None else None
    return {
        "job": record.job_id, "name": record.name, "backend": record.backend,
        "nodes": f"{record.nodes}x{record.procs_per_node}", "state": status.state.value,
        # A job that has not ended has no exit code, whatever sacct prints for it (0:0 while pending).
        "exit": "" if status.exit_code is None or not status.state.finished else str(status.exit_code),
        "requeues": str(status.requeues) if status.requeues else "",
        "progress": progress.text() if progress is not None else "-",
        "samples/s": f"{rate:.1f}" if rate is not None else "-",
        "eta": duration(progress.eta_s) if progress is not None and not progress.finished else "-",
        "submitted": time.strftime("%Y-%m-%d %H:%M", time.localtime(record.submitted_at)),
        "age": duration(now - record.submitted_at),
        "reason": " ".join(status.reason.split()),  # one line per job, whatever the backend said
    }


def table(rows: Sequence[Row], now: float | None = None, width: int | None = None) -> str:
    """The table as text, a header line first; ``width``: the most characters a line may take (None: no limit),
    the job id column is never cut (a line holds at least the whole id)."""
    now = time.time() if now is None else now
    body = [cells(row, now) for row in rows]
    headers = [name for name in HEADERS if name not in OPTIONAL or any(line[name] for line in body)]
    widths = {name: max([len(name), *(len(line[name]) for line in body)]) for name in headers}
    if width is not None:
        _fit_columns(headers, widths, width)
    lines = [_line(dict(zip(headers, headers, strict=True)), headers, widths, width)]
    lines += [_line(line, headers, widths, width) for line in body]
    return "\n".join(lines) + "\n"


def _fit_columns(headers: list[str], widths: dict[str, int], width: int) -> None:
    """Narrow ``widths`` (and drop ``headers``) until a line fits ``width``, or nothing more may go."""
    def over() -> int:
        return sum(widths[name] for name in headers) + len(GAP) * (len(headers) - 1) - width

    for name, floor in NARROWING:
        if over() <= 0:
            return
        if name not in headers:
            continue
        if floor is None:
            headers.remove(name)
        elif floor == 0 and widths[name] - over() <= len(name):
            headers.remove(name)  # a column narrower than its own name says nothing
        else:
            widths[name] = max(widths[name] - over(), floor)


def _line(values: dict[str, str], headers: list[str], widths: dict[str, int], width: int | None) -> str:
    text = GAP.join(_fit(values[name], widths[name]).ljust(widths[name]) for name in headers).rstrip()
    if width is not None and len(text) > width:
        text = text[:max(width - 1, widths["job"])] + ("…" if width - 1 >= widths["job"] else "")
    return text


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def as_json(row: Row) -> dict[str, Any]:
    """One job as ``--json`` prints it: the keys it always had, then the record's name and submit time and the
    progress (null without events)."""
    status, progress = row
    record = status.record
    return {"job_id": record.job_id, "backend": record.backend, "state": status.state.value,
            "exit_code": status.exit_code, "requeues": status.requeues, "reason": status.reason,
            "name": record.name, "submitted_at": record.submitted_at,
            "progress": progress.to_json() if progress is not None else None}


def terminal_width(stream: TextIO) -> int | None:
    """The terminal's width when ``stream`` is one; None (no cut) when piped, so nothing a script greps is lost."""
    return shutil.get_terminal_size().columns if stream.isatty() else None


def watch(query: Callable[[], Sequence[Row]], interval_s: float, out: TextIO | None = None,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time) -> int:
    """Ask ``query`` and print its table every ``interval_s`` until Ctrl-C (exit 0: that is how a watch ends). On a
    terminal the screen is cleared and redrawn under a ``watch``-like heading; piped, each table follows the last
    after a blank line."""
    stream = out if out is not None else sys.stdout
    live = stream.isatty()
    first = True
    try:
        while True:
            rows = query()
            now = clock()
            if live:
                width = terminal_width(stream)
                heading = f"Every {interval_s:g}s: stjobs status"
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
                pad = max((width or 0) - len(heading) - len(stamp), 2)
                stream.write(f"{CLEAR}{heading}{' ' * pad}{stamp}\n\n{table(rows, now, width)}")
            else:
                stream.write(("" if first else "\n") + table(rows, now, None))
            stream.flush()
            first = False
            sleep(interval_s)
    except KeyboardInterrupt:
        return 0
