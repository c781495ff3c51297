"""What a SLURM job's own files say of it: its output, and how it ended once slurmctld has forgotten it.

On a cluster without accounting (``sacct``: "Slurm accounting storage is disabled") slurmctld is the only one who
knows a job's state, and it forgets a finished job after MinJobAge (300 s by default). What is left then is in the
job directory: what ``stjobs status`` saw slurmctld say before it forgot (written here when it saw the job end),
submitit's result files for a job submitted through submitit, and for a plain ``sbatch`` job the exit record its
batch file writes (:data:`EXIT_RECORD`). Nothing here guesses: where no file says how a job ended, the answer is
the reason why it cannot be known.
"""

from __future__ import annotations

import contextlib
import glob
import io
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

from stjobs.jobs import JobRecord, read_json, write_json

SEEN_FILE = "slurm-state.json"  # slurmctld's last word on a finished job, as `stjobs status` saw it
# A job on a login node (--remote): the tail of its output there, as `stjobs status` last brought it back (its
# progress is read from it), and how far that copy is (remote_jobs.OutputTails).
OUTPUT_TAIL = "remote-output.tail"
OUTPUT_TAIL_STAGE = "remote-output.stage"
# Lines the batch file appends, one per event of a run (R: SLURM_RESTART_COUNT): "started R" as it starts,
# "requeued R" when it requeues itself, "exited N R" from its EXIT trap (N: its exit status).
EXIT_RECORD = "slurm-{job}.exit"
# submitit's own log lines (task 0's log holds one "Starting" per run) and the result file each task writes.
SUBMITIT_START = b"- Starting with JobEnvironment("
SUBMITIT_ENDS = (b"- Exiting after successful completion", b"- Submitted job triggered an exception")


@dataclass(frozen=True)
class Seen:
    """A job as SLURM has it: slurmctld's answer (squeue), or what a file recorded of it."""

    state: str  # SLURM's word: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...
    exit_code: int | None
    restarts: int  # how often SLURM requeued it
    reason: str = ""  # squeue's reason: why a pending job waits
    source: str = ""  # where it was read, when not from slurmctld itself


def slurm_id(record: JobRecord) -> str:
    return str(record.details["slurm_job_id"])


def remote_target(record: JobRecord) -> str:
    """The login node a job was submitted to over ssh (``--remote``), or "" for one submitted here."""
    return str(record.details.get("remote") or "")


def output_files(record: JobRecord) -> list[Path]:
    output = str(record.details["output"])
    if record.details.get("mode") == "submitit":
        # One file per srun task (node): {id}_{task}_log.out.
        return sorted(Path(p) for p in glob.glob(output.replace("_0_log.out", "_*_log.out")))
    return [Path(output)]


def rank0_output(record: JobRecord) -> Path | None:
    """The file rank 0 writes to: the batch file's output, or submitit's log of the first node's task; for a job
    on a login node, the tail of that file as `stjobs status` brought it here."""
    if remote_target(record):
        return Path(record.job_dir) / OUTPUT_TAIL
    output = record.details.get("output")
    return Path(str(output)) if output else None


def remember(record: JobRecord, seen: Seen) -> None:
    """Keep slurmctld's word on a finished job in its directory, for when slurmctld has forgotten it."""
    path = Path(record.job_dir) / SEEN_FILE
    kept = read_json(path) or {}
    fields = {"slurm_job_id": slurm_id(record), "state": seen.state, "exit_code": seen.exit_code,
              "restarts": seen.restarts}
    if all(kept.get(key) == value for key, value in fields.items()):
        return
    with contextlib.suppress(OSError):  # someone else's job directory: the status is still right, only not kept
        write_json(path, {**fields, "seen_at": time.time()})


def recall(record: JobRecord) -> Seen | None:
    """What :func:`remember` kept of this job, if anything."""
    kept = read_json(Path(record.job_dir) / SEEN_FILE)
    if not kept or kept.get("slurm_job_id") != slurm_id(record) or not isinstance(kept.get("state"), str):
        return None
    exit_code, restarts, seen_at = kept.get("exit_code"), kept.get("restarts"), kept.get("seen_at")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seen_at)) if isinstance(seen_at, float) else "?"
    return Seen(str(kept["state"]), exit_code if isinstance(exit_code, int) else None,
                restarts if isinstance(restarts, int) else 0, source=f"as slurmctld reported it at {when}")


def ending(record: JobRecord) -> Seen | str:
    """How the job ended by its own files, or why they cannot tell."""
    if record.details.get("mode") == "submitit":
        return _submitit_ending(record)
    return _batch_ending(record)


def _batch_ending(record: JobRecord) -> Seen | str:
    path = Path(record.job_dir) / EXIT_RECORD.format(job=slurm_id(record))
    try:
        events = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return f"no exit record ({path.name}) in {record.job_dir}: nothing says how the batch script ended"
    source = f"from the batch script's exit record ({path.name})"
    last = events[-1] if events else []
    if len(last) != 3 or last[0] != "exited" or not (last[1].isdigit() and last[2].isdigit()):
        restart = last[1] if len(last) == 2 and last[0] == "started" else "?"
        return (f"its last run (restart {restart}) recorded no exit in {path.name}: the batch script was killed "
                "(scancel, the time limit, a preemption or a lost node; only SLURM knew which)")
    code, restarts = int(last[1]), int(last[2])
    if ["requeued", last[2]] in events:
        return (f"it requeued itself after restart {restarts} ({path.name}) and its next run never started "
                "(it was cancelled or lost while it waited)")
    if code > 128:
        return (f"the batch script was ended by signal {code - 128} ({path.name}): scancel, the time limit or a "
                "preemption; only SLURM knew which")
    return Seen("COMPLETED" if code == 0 else "FAILED", code, restarts, source=source)


def _submitit_ending(record: JobRecord) -> Seen | str:
    """Every task's result file, where its log shows it was written by the job's last run (an earlier run's file
    outlives a requeue)."""
    folder, job = Path(str(record.details["folder"])), slurm_id(record)
    runs = 0
    raised: list[str] = []
    for task in range(record.nodes):
        starts, last_start, last_end = _submitit_events(folder / f"{job}_{task}_log.out")
        runs = max(runs, starts)
        outcome = _result(folder / f"{job}_{task}_result.pkl")
        if outcome is None or last_end < last_start:
            return (f"submitit wrote no result for task {task} in its last run ({folder}): the task was killed "
                    "or gave up (scancel, the time limit, a preemption, a lost node or out of requeues)")
        if outcome[0] != "success":
            raised.append(f"task {task} raised {outcome[1]}")
    restarts = max(runs - 1, 0)
    if raised:
        return Seen("FAILED", None, restarts, source=f"submitit's result files say: {'; '.join(raised)}")
    return Seen("COMPLETED", 0, restarts, source=f"submitit's result files say all {record.nodes} task(s) succeeded")


def _submitit_events(log: Path) -> tuple[int, int, int]:
    """How many runs a task's submitit log shows, and the line numbers of the last start and of the last end."""
    starts, last_start, last_end = 0, -1, -1
    try:
        with log.open("rb") as stream:
            for number, line in enumerate(stream):
                if not line.startswith(b"submitit "):
                    continue
                if SUBMITIT_START in line:
                    starts, last_start = starts + 1, number
                elif any(end in line for end in SUBMITIT_ENDS):
                    last_end = number
    except OSError:
        pass
    return starts, last_start, last_end


class _PlainUnpickler(pickle.Unpickler):
    """submitit's result is ("success", value) or ("error", traceback text): only the tag is read, and no class
    is ever loaded (a result pickle could name any)."""

    def find_class(self, module: str, name: str) -> type:
        raise pickle.UnpicklingError(f"{module}.{name}")


def _result(path: Path) -> tuple[str, str] | None:
    """A task's result file: its tag ("success" or "error") and an error's last line, or None when it has none
    that can be read (NodeTask returns its exit status, so a result never needs a class)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        loaded = _PlainUnpickler(io.BytesIO(data)).load()
    except Exception:  # half written, or a result that is not NodeTask's exit status
        return None
    if not isinstance(loaded, tuple) or len(loaded) != 2:
        return None
    lines = [line.strip() for line in str(loaded[1]).splitlines() if line.strip()] if loaded[0] == "error" else []
    return str(loaded[0]), lines[-1] if lines else ""
