"""The person's view of a job's output stream (``stjobs logs``, ``submit --follow``): progress, not JSON.

A job's output interleaves the training's machine events (``STJOBS_EVENT {json}``, :mod:`stjobs.train.events`),
the libraries' warnings and tqdm bars of every rank (each line prefixed by torchrun as ``[rankN]:``), the training's
own lines for people (``stjobs.train: ...``) and the node script's. :class:`ConsoleView` turns it into what a person
wants to read: one line saying what trains, one progress display (a line redrawn in place on a terminal, one plain
line per loss event when piped), evaluation scores and the few events worth a word, the lines meant for people,
and errors (tracebacks whole, with their rank). Everything else is hidden and counted; :meth:`ConsoleView.close`
names how to see it all. Standard library only.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from stjobs.statustable import duration  # one way to write a span, in the console and the status table
from stjobs.train.events import PREFIX, parse_events

RANK_PREFIX = re.compile(r"\[(?:rank|default)(\d+)\]:")  # torchrun's (our template) and its default one
PEOPLE = ("stjobs.train:", "stjobs:")
TRACEBACK = "Traceback (most recent call last):"
CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
RATE_WINDOW = 5  # loss events whose arrival times measure the steps per second
MIN_SPAN_S = 1.0  # below this the arrival times measure the reading, not the training (a finished log's replay)
MAX_LINE = 1 << 16  # a partial line (a tqdm bar redrawn with \r for minutes) is kept up to this many characters
CLEAR = "\x1b[K"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class ConsoleView:
    """Feed it the stream's chunks in order (they may split lines anywhere); write what each call returns.

    ``tty``: redraw one live progress line in place (``\\r`` + text + clear to end of line, cut to ``width``);
    else one plain line per loss event. ``raw_hint``: how to see everything, named when lines were hidden.
    ``clock``: when events arrive, for the ETA of a run whose loss events carry no samples/s."""

    def __init__(self, tty: bool, width: int = 100, raw_hint: str = "stjobs logs JOB --raw",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tty, self.width, self.raw_hint, self.clock = tty, max(width, 1), raw_hint, clock
        self.hidden = 0
        self._pending = ""
        self._live = False  # a progress line is on screen without its newline (tty only)
        self._start: dict[str, Any] = {}
        self._arrivals: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW)
        self._in_traceback: set[int | None] = set()  # ranks (None: no rank prefix) inside a traceback
        self._bare_training = False  # unprefixed lines carry events: a training without torchrun writes them

    def feed(self, text: str) -> str:
        """What to write to the terminal for this chunk (complete lines only; a partial one waits for its end)."""
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        self._pending = self._pending[:MAX_LINE]
        return "".join(self._line(line.rstrip("\r")) for line in lines)

    def close(self) -> str:
        """The rest: a last partial line, the live line's newline, and the hint when lines were hidden."""
        out = self._line(self._pending.rstrip("\r")) if self._pending else ""
        self._pending = ""
        out += self._end_live()
        if self.hidden:
            lines = "line" if self.hidden == 1 else "lines"
            out += f"({self.hidden} {lines} of library output not shown: {self.raw_hint})\n"
        return out

    # -- one line ---------------------------------------------------------------------------------------------
    def _line(self, line: str) -> str:
        match = RANK_PREFIX.match(line)
        rank = int(match.group(1)) if match else None
        body = line[match.end():] if match else line
        if PREFIX in body:
            if rank is None:
                self._bare_training = True
            events = parse_events(body)
            if not events:
                return self._hide()
            return "".join(self._event(event, rank) for event in events)
        if self._traceback(rank, body):
            return self._say(f"rank {rank}: {body}" if rank is not None else body)
        if rank is None and not self._bare_training:
            return self._say(body)  # the node script's own lines (and torchrun's)
        if body.startswith(PEOPLE):
            return self._say(body if not rank else f"rank {rank}: {body}")
        if "error" in body.lower() or body.startswith(CHAINED):
            return self._say(f"rank {rank}: {body}" if rank is not None else body)
        return "" if not body.strip() else self._hide()

    def _traceback(self, rank: int | None, body: str) -> bool:
        """Whether ``body`` belongs to a traceback of ``rank``: from its header to its first unindented line."""
        if body.lstrip().startswith(TRACEBACK) or body.lstrip().startswith("+ Exception Group " + TRACEBACK):
            self._in_traceback.add(rank)
            return True
        if rank in self._in_traceback:
            if body and not body[0].isspace():
                self._in_traceback.discard(rank)  # `SomeError: message`, the traceback's last line
            return True
        return False

    def _hide(self) -> str:
        self.hidden += 1
        return ""

    # -- events -----------------------------------------------------------------------------------------------
    def _event(self, event: dict[str, Any], line_rank: int | None) -> str:
        rank = event.get("rank", line_rank or 0)
        if rank != 0:
            return self._hide()
        kind = event.get("event")
        if kind == "start":
            self._start = event
            self._arrivals.clear()  # a resumed or requeued run starts over: its steps repeat
            return self._say(self._start_line(event))
        if kind == "loss":
            return self._progress(event)
        said = self._event_line(kind, event)
        return self._say(said) if said else ""

    @staticmethod
    def _start_line(event: dict[str, Any]) -> str:
        world = event.get("world_size") or 1
        said = (f"training {event.get('model')}: {event.get('kind')} with {event.get('loss')}, {world} "
                f"{'process' if world == 1 else 'processes'} ({event.get('strategy')}), "
                f"{event.get('global_batch_size')} per step")
        if event.get("max_steps"):
            said += f", {event['max_steps']} steps"
        elif _num(event.get("epochs")):
            said += f", {float(event['epochs']):g} epoch(s)"
        return said

    @staticmethod
    def _event_line(kind: Any, event: dict[str, Any]) -> str | None:
        if kind == "eval":
            score = _num(event.get("score"))
            when = event.get("when")
            at = f"{when}, step {event.get('step')}" if when == "during" else str(when)
            return f"eval {event.get('metric')} {'n/a' if score is None else f'{score:.4f}'} ({at})"
        if kind == "wrapped" and event.get("as_requested") is False:
            return (f"warning: asked for {event.get('requested')}, the libraries ran {event.get('ran')} "
                    f"({event.get('distributed_type')}, {event.get('model_wrapper')})")
        if kind == "resumed":
            return f"resumed from {event.get('checkpoint')}"
        if kind == "preempted":
            by = f" by {event['signal']}" if event.get("signal") else ""
            return f"preempted{by} at step {event.get('step')}: saved {event.get('checkpoint')} to resume from"
        if kind == "already_complete":
            return f"already complete: {event.get('path')} holds the model trained to step {event.get('step')}"
        if kind == "checkpoint_skipped":
            return f"skipped checkpoint {event.get('checkpoint')}: {event.get('reason')}"
        if kind == "no_evaluator":
            return f"not evaluated: no evaluator for {event.get('kind')} data {event.get('data')}"
        if kind == "loss_weights" and event.get("same_on_every_rank") is False:
            return "warning: the loss's own weights differ between ranks"
        return None  # throughput, saved, done, unused, loss_weights (same): the training's summary lines follow

    def _progress(self, event: dict[str, Any]) -> str:
        step = event.get("step")
        if not isinstance(step, int):
            return ""
        now = self.clock()
        self._arrivals.append((now, step))
        total = self._start.get("max_steps")
        total = total if isinstance(total, int) and total > 0 else None
        parts = [f"step {step}/{total}" if total else f"step {step}"]
        loss = _num(event.get("loss"))
        said = f"loss {'n/a' if loss is None else f'{loss:.3f}'}"
        losses = event.get("losses")
        if isinstance(losses, dict) and len(losses) > 1:
            said += " (" + ", ".join(f"{name} {value:.3f}" if _num(value) is not None else f"{name} n/a"
                                     for name, value in losses.items()) + ")"
        parts.append(said)
        steps_per_s = self._steps_per_second(event)
        batch = self._start.get("global_batch_size")
        if steps_per_s and isinstance(batch, int) and batch > 0:
            parts.append(f"{steps_per_s * batch:.0f} samples/s")
        if steps_per_s and total:
            parts.append(f"ETA {duration(max(total - step, 0) / steps_per_s)}")
        text = "  ".join(parts)
        if not self.tty:
            return text + "\n"
        self._live = True
        return "\r" + text[:self.width] + CLEAR

    def _steps_per_second(self, event: dict[str, Any]) -> float | None:
        rate, batch = _num(event.get("samples_per_second")), self._start.get("global_batch_size")
        if rate and rate > 0 and isinstance(batch, int) and batch > 0:
            return rate / batch
        (first_at, first_step), (last_at, last_step) = self._arrivals[0], self._arrivals[-1]
        if last_at - first_at < MIN_SPAN_S or last_step <= first_step:
            return None
        return (last_step - first_step) / (last_at - first_at)

    # -- output -----------------------------------------------------------------------------------------------
    def _end_live(self) -> str:
        if not self._live:
            return ""
        self._live = False
        return "\n"

    def _say(self, text: str) -> str:
        """A permanent line; on a tty the live progress line ends first (it stays, as the step it was at)."""
        return self._end_live() + text + "\n"


def events_only(text: str) -> str:
    """The machine events of ``text`` alone, one JSON object a line as in the events files, without the marker or
    rank prefixes (``stjobs logs JOB --events -f``: for jq and scripts)."""
    return event_lines(parse_events(text))


def event_lines(events: Iterable[dict[str, Any]]) -> str:
    """Events as ``stjobs logs JOB --events`` prints them: one compact JSON object a line, keys sorted."""
    return "".join(json.dumps(event, sort_keys=True, separators=(",", ":")) + "\n" for event in events)


def view(chunks: Iterable[str], tty: bool, width: int = 100, raw_hint: str = "stjobs logs JOB --raw",
         clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """What to write for a stream of chunks (``stjobs.api.logs(job, follow=...)``), chunk by chunk, then the close;
    empty strings are left out."""
    console = ConsoleView(tty, width=width, raw_hint=raw_hint, clock=clock)
    for chunk in chunks:
        out = console.feed(chunk)
        if out:
            yield out
    out = console.close()
    if out:
        yield out


def whole_lines(chunks: Iterable[str]) -> Iterator[str]:
    """The text of ``chunks`` cut at line ends: a line split between two chunks comes out whole (events_only needs
    whole lines); a last line without its end comes out at the end."""
    rest = ""
    for chunk in chunks:
        text = rest + chunk
        cut = text.rfind("\n") + 1
        rest = text[cut:]
        if cut:
            yield text[:cut]
    if rest:
        yield rest


def show(job_id: str, chunks: Iterable[str], how: str) -> None:
    """Write a job's output to stdout ``how`` the user asked: ``raw`` as written, ``events`` only the STJOBS_EVENT
    lines, ``progress`` as a person reads it (one live line on a terminal, plain lines when piped, the libraries'
    per-rank noise left in the logs)."""
    import shutil
    import sys

    if how == "events":
        for text in whole_lines(chunks):
            sys.stdout.write(events_only(text))
            sys.stdout.flush()
        return
    if how != "progress":
        for chunk in chunks:
            sys.stdout.write(chunk)
            sys.stdout.flush()
        return
    out = ConsoleView(tty=sys.stdout.isatty(), width=shutil.get_terminal_size().columns,
                      raw_hint=f"stjobs logs {job_id} --raw")
    try:
        for chunk in chunks:
            sys.stdout.write(out.feed(chunk))
            sys.stdout.flush()
    finally:  # Ctrl-C too: never leave the terminal on a live line
        sys.stdout.write(out.close())
        sys.stdout.flush()
