"""Status, logs and cancel for SLURM jobs, read from SLURM itself (sacct, with squeue while accounting lags)."""

from __future__ import annotations

import glob
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from stjobs.backends.slurm.task import OUT_OF_REQUEUES_EXIT
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
    runs = _sacct(slurm_id(record))
    state, exit_code = runs[-1] if runs else (_squeue(slurm_id(record)) or ("", None))
    requeues = max(len(runs) - 1, 0)  # sacct --duplicates: one line per run of a requeued job, oldest first
    if not state:
        young = time.time() - record.submitted_at < ACCOUNTING_GRACE_S
        return JobStatus(record, State.PENDING if young else State.LOST,
                         reason="" if young else "SLURM knows no such job (sacct and squeue are empty)")
    ours = STATES.get(state, State.FAILED)
    reason = ""
    if exit_code == OUT_OF_REQUEUES_EXIT and ours in (State.COMPLETED, State.FAILED):
        ours = State.FAILED
        reason = (f"preempted or requeued after {requeues} requeue(s), the most slurm.max_requeues="
                  f"{record.details.get('max_requeues', '?')} allows; the last checkpoint is kept")
    elif ours not in (State.COMPLETED, State.RUNNING, State.PENDING):
        why = _failure_lines(record)
        reason = f"SLURM state {state}" + (f" exit {exit_code}" if exit_code else "") + (f": {why}" if why else "")
    return JobStatus(record, ours, exit_code, reason, requeues)


# What a job's log says when a node's task ends badly: srun's own lines ("n2: task 1: Killed") and ours.
FAILURE_LINE = re.compile(r"srun: error: (\S+: task \d+: .+)$|^(?:\[rank\d+\]: )?(stjobs: .+)$")
LOG_TAIL_BYTES = 64 * 1024


def _failure_lines(record: JobRecord) -> str:
    """The last few failure lines of the job's output (its tail only: logs can be large), joined into one."""
    found: list[str] = []
    for path in _output_files(record):
        try:
            with open(path, "rb") as handle:
                handle.seek(max(path.stat().st_size - LOG_TAIL_BYTES, 0))
                tail = handle.read().decode(errors="replace")
        except OSError:
            continue
        for line in tail.splitlines():
            match = FAILURE_LINE.search(line.strip())
            if match and "USR2 received" not in line:
                found.append(match.group(1) or match.group(2))
    unique = list(dict.fromkeys(found))
    return "; ".join(unique[-3:])


def _output_files(record: JobRecord) -> list[Path]:
    output = str(record.details["output"])
    if record.details.get("mode") == "submitit":
        # One file per srun task (node): {id}_{task}_log.out.
        return sorted(Path(p) for p in glob.glob(output.replace("_0_log.out", "_*_log.out")))
    return [Path(output)]


def logs(record: JobRecord, follow: bool = False, rank: int | None = None) -> Iterator[str]:
    return follow_files(lambda: _output_files(record), lambda: status(record).state.finished, follow, rank)


def cancel(record: JobRecord, wait_s: float = 60.0) -> JobStatus:
    current = status(record)
    if current.state.finished:
        return current
    done = subprocess.run(["scancel", slurm_id(record)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SubmitError(f"slurm: scancel failed: {done.stderr.strip() or done.stdout.strip()}")
    return wait_until_finished(lambda: status(record), wait_s)


def _sacct(job_id: str) -> list[tuple[str, int | None]]:
    """(state, exit code) of each run of the job, oldest first (a requeued job has one line per run)."""
    text = _query(["sacct", "-j", job_id, "-X", "--duplicates", "-n", "-P", "-o", "State,ExitCode"])
    runs = []
    for line in text.splitlines():
        state, _, exit_code = line.partition("|")
        if state.strip():
            code = exit_code.split(":")[0]
            runs.append((state.split()[0].rstrip("+"), int(code) if code.isdigit() else None))
    return runs


def _squeue(job_id: str) -> tuple[str, int | None] | None:
    text = _query(["squeue", "-h", "-j", job_id, "-o", "%T"], unknown_job_ok=True)
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    return (first, None) if first else None


def _query(argv: list[str], unknown_job_ok: bool = False) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        raise SubmitError(f"slurm: {argv[0]} failed ({error}); is this a SLURM login node?") from None
    if done.returncode == 0:
        return done.stdout
    message = (done.stderr or done.stdout).strip().splitlines()
    if unknown_job_ok and any("Invalid job id" in line for line in message):
        return ""  # squeue forgets finished jobs; sacct has spoken for them
    # The controller or the accounting daemon is down: say so, never call the job lost.
    raise SubmitError(f"slurm: {argv[0]} failed: {message[-1] if message else f'exit {done.returncode}'}")
