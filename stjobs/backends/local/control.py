"""Status, logs and cancel of a local job, read from what its supervisor writes and from its process."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

from stjobs.backends.local.jobdir import OUTPUT_LOG, STATUS_FILE, supervisor_pid
from stjobs.jobs import JobRecord, JobStatus, State, follow_files, read_json, wait_until_finished


def status(record: JobRecord) -> JobStatus:
    job_dir = Path(record.job_dir)
    data = read_json(job_dir / STATUS_FILE)
    pid = supervisor_pid(job_dir)
    if data is None:
        alive = pid is not None and _alive(pid)
        return JobStatus(record, State.PENDING if alive else State.LOST,
                         reason="" if alive else "the supervisor never started; see supervisor.log")
    state = State(str(data.get("state", "LOST")))
    exit_code = data.get("exit_code")
    if not state.finished and (pid is None or not _alive(pid)):
        return JobStatus(record, State.LOST, reason="the supervisor died; see supervisor.log")
    return JobStatus(record, state, exit_code if isinstance(exit_code, int) else None, str(data.get("reason", "")))


def statuses(records: Sequence[JobRecord]) -> list[JobStatus]:
    """Each from its own files: there is no scheduler to ask, so nothing to batch."""
    return [status(record) for record in records]


def cancel(record: JobRecord, wait_s: float = 60.0) -> JobStatus:
    current = status(record)
    if current.state.finished:
        return current
    pid = supervisor_pid(Path(record.job_dir))
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # the supervisor forwards it to every node and records CANCELLED
    return wait_until_finished(lambda: status(record), wait_s)


def logs(record: JobRecord, follow: bool = False, rank: int | None = None,
         poll_s: float = 0.5) -> Iterator[str]:
    """The job's combined console, or one rank's lines of it; with ``follow`` until the job ends."""
    path = Path(record.job_dir) / OUTPUT_LOG
    return follow_files(lambda: [path], lambda: status(record).state.finished, follow, rank, poll_s)


def output_file(record: JobRecord) -> Path:
    """The combined console of every rank: rank 0's events are in it."""
    return Path(record.job_dir) / OUTPUT_LOG


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours (tests submit from the same process) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
