"""Status, logs and cancel for SLURM jobs, read from SLURM itself (sacct, with squeue while accounting lags)."""

from __future__ import annotations

import glob
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from stjobs.errors import SubmitError
from stjobs.jobs import JobRecord, JobStatus, State, follow_files, wait_until_finished

# SLURM's job states (first word of sacct's State) onto ours; anything else counts as a failure.
STATES = {
    "PENDING": State.PENDING, "REQUEUED": State.PENDING, "REQUEUE_HOLD": State.PENDING,
    "REQUEUE_FED": State.PENDING, "CONFIGURING": State.PENDING, "SUSPENDED": State.PENDING,
    "RESIZING": State.PENDING, "RUNNING": State.RUNNING, "COMPLETING": State.RUNNING,
    "STAGE_OUT": State.RUNNING, "SIGNALING": State.RUNNING, "COMPLETED": State.COMPLETED,
    "CANCELLED": State.CANCELLED,
}
# sacct can lag a freshly submitted job by a few seconds; after this long "unknown" means lost.
ACCOUNTING_GRACE_S = 60.0


def slurm_id(record: JobRecord) -> str:
    return str(record.details["slurm_job_id"])


def status(record: JobRecord) -> JobStatus:
    state, exit_code = _sacct(slurm_id(record)) or _squeue(slurm_id(record)) or ("", None)
    if not state:
        young = time.time() - record.submitted_at < ACCOUNTING_GRACE_S
        return JobStatus(record, State.PENDING if young else State.LOST,
                         reason="" if young else "SLURM knows no such job (sacct and squeue are empty)")
    ours = STATES.get(state, State.FAILED)
    reason = "" if ours in (State.COMPLETED, State.RUNNING, State.PENDING) else f"SLURM state {state}"
    return JobStatus(record, ours, exit_code, reason)


def logs(record: JobRecord, follow: bool = False, rank: int | None = None) -> Iterator[str]:
    output = str(record.details["output"])
    if record.details.get("mode") == "submitit":
        # One file per srun task (node): {id}_{task}_log.out.
        pattern = output.replace("_0_log.out", "_*_log.out")
        return follow_files(lambda: sorted(Path(p) for p in glob.glob(pattern)),
                            lambda: status(record).state.finished, follow, rank)
    return follow_files(lambda: [Path(output)], lambda: status(record).state.finished, follow, rank)


def cancel(record: JobRecord, wait_s: float = 60.0) -> JobStatus:
    current = status(record)
    if current.state.finished:
        return current
    done = subprocess.run(["scancel", slurm_id(record)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SubmitError(f"slurm: scancel failed: {done.stderr.strip() or done.stdout.strip()}")
    return wait_until_finished(lambda: status(record), wait_s)


def _sacct(job_id: str) -> tuple[str, int | None] | None:
    text = _query(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode"])
    for line in text.splitlines():
        state, _, exit_code = line.partition("|")
        if state.strip():
            code = exit_code.split(":")[0]
            return state.split()[0].rstrip("+"), int(code) if code.isdigit() else None
    return None


def _squeue(job_id: str) -> tuple[str, int | None] | None:
    text = _query(["squeue", "-h", "-j", job_id, "-o", "%T"])
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    return (first, None) if first else None


def _query(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        raise SubmitError(f"slurm: {argv[0]} failed ({error}); is this a SLURM login node?") from None
    return done.stdout if done.returncode == 0 else ""
