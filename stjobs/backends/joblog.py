"""What a job's console output says went wrong: the first error of the training, from the rank that failed first.

A failed job's scheduler only knows that a step or a node exited badly (SLURM's ``n2: task 1: Exited with exit
code 1``, a supervisor's ``node 0 exited with 1``); the cause is in the output: our own ``stjobs.train: error:``
or ``stjobs: error:`` lines, or the last line of a Python traceback, each line prefixed by torchrun with the
rank that wrote it (``[rank1]:``, twice when PyTorch adds its own). The other ranks fail after it, of that
failure (``Connection closed by peer``), so the rank comes from torchrun's "Root Cause (first observed failure)"
summary (its time, then its order in the output) where there is one, else the first error in the output.
Shared by the backends that read a job's output files (local, SLURM); nothing here imports more than ``re``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

TAIL_BYTES = 256 * 1024  # logs can be large; a failure and its tracebacks are at the end
MAX_ERROR_CHARS = 300

RANK_PREFIX = re.compile(r"^((?:\[rank(\d+)\]: ?)+)")
OUR_ERROR = re.compile(r"^(stjobs(?:\.train)?: error: .+)$")
TRACEBACK = "Traceback (most recent call last):"
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?::.*)?$")  # a traceback's last line: "module.Name: message" or "Name"
# python -m torch.distributed.run on a node whose python lacks torch fails before any rank exists.
NO_MODULE = re.compile(r"Error while finding module specification for '[^']+' \((\w+Error: .+)\)$"
                       r"|^\S*: (No module named .+)$")
# torchrun's agent re-raises its child's failure, or the signal that stops it: a summary, never the cause.
AGENT_EXCEPTIONS = ("ChildFailedError", "SignalException")
ROOT_CAUSE = "Root Cause (first observed failure):"
ROOT_FIELD = re.compile(r"^\s*(time|rank|traceback)\s*: (.*?)\s*$")
SIGNAL = re.compile(r"Signal (\d+) \((\w+)\) received")


def read_tail(path: Path, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of ``path`` as text ("" when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(path.stat().st_size - limit, 0))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def first_error(texts: Iterable[str]) -> str:
    """``rank N: <line>`` for the first error of the rank that failed first, or "" when the output names none.

    ``texts``: the job's output, one text per file (one per node under submitit, one for all nodes otherwise)."""
    errors: list[tuple[int | None, str]] = []  # (rank, line) in the order written
    roots: list[tuple[str, int, int, str]] = []  # (time, order, rank, traceback field) of torchrun's summaries
    for text in texts:
        _scan(text, errors, roots)
    if roots:
        _, _, rank, traceback = min(roots)
        line = next((text for who, text in errors if who == rank), None)
        if line is not None:
            return _shorten(f"rank {rank}: {line}")
        killed = SIGNAL.search(traceback)
        if killed:
            return f"rank {rank}: killed by signal {killed.group(1)} ({killed.group(2)})"
    if not errors:
        return ""
    writer, line = errors[0]
    return _shorten(line if writer is None else f"rank {writer}: {line}")


def _scan(text: str, errors: list[tuple[int | None, str]], roots: list[tuple[str, int, int, str]]) -> None:
    in_traceback: dict[int | None, bool] = {}  # per writer: inside a traceback, waiting for its last line
    root: dict[str, str] | None = None
    for raw in text.splitlines():
        prefix = RANK_PREFIX.match(raw)
        rank = int(prefix.group(2)) if prefix else None
        line = raw[prefix.end():] if prefix else raw
        if root is not None:
            field = ROOT_FIELD.match(line)
            if field:
                root[field.group(1)] = field.group(2)
            elif line.startswith("===="):  # the summary's closing rule
                _add_root(root, roots)
                root = None
            continue
        if line.strip() == ROOT_CAUSE:
            root = {}
            continue
        if line.startswith(TRACEBACK):
            in_traceback[rank] = True
            continue
        if in_traceback.get(rank):
            if not line.strip() or line[0].isspace():
                continue  # a frame, its source line or its ^^^ markers
            in_traceback[rank] = False
            found = EXCEPTION.match(line.strip())
            if found and not any(name in line for name in AGENT_EXCEPTIONS):
                errors.append((rank, line.strip()))
            continue
        ours = OUR_ERROR.match(line.strip())
        if ours:
            errors.append((rank, ours.group(1)))
            continue
        missing = NO_MODULE.search(line.strip())
        if missing:
            errors.append((rank, missing.group(1) or f"ModuleNotFoundError: {missing.group(2)}"))
    if root is not None:
        _add_root(root, roots)


def _add_root(fields: dict[str, str], roots: list[tuple[str, int, int, str]]) -> None:
    rank = fields.get("rank", "").split()[0] if fields.get("rank") else ""
    if rank.isdigit():
        roots.append((fields.get("time", ""), len(roots), int(rank), fields.get("traceback", "")))


def _shorten(line: str) -> str:
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."
