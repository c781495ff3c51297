"""Local backend: the job runs on this machine, in the background, watched by a small supervisor process.

Several "nodes" are several torchrun agents on this machine meeting at a c10d rendezvous on 127.0.0.1, which is
the same code path a real multi-node job takes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from stjobs.backends.common import NODE_SCRIPT, launch_files, node_script, refuse_elastic, spec_file
from stjobs.errors import SubmitError
from stjobs.jobs import (
    JobRecord,
    JobStatus,
    State,
    follow_files,
    jobs_root,
    new_job_id,
    read_json,
    wait_until_finished,
)
from stjobs.launch import build_launch
from stjobs.plan import Plan, write_plan
from stjobs.spec import JobSpec

NAME = "local"
STATUS_FILE = "status.json"
OUTPUT_LOG = "output.log"
SUPERVISOR_LOG = "supervisor.log"


def render(spec: JobSpec) -> Plan:
    refuse_elastic(spec, NAME)
    launch = build_launch(spec)
    files = (node_script(spec, launch), spec_file(spec), *launch_files(launch))
    notes: list[str] = []
    if spec.nodes > 1:
        notes.append(f"{spec.nodes} torchrun agents on this machine meet at 127.0.0.1; `stjobs submit` sets "
                     "STJOBS_RDZV_HOST, STJOBS_RDZV_PORT, STJOBS_RDZV_ID (and STJOBS_NODE_RANK) for each")
    return Plan(backend=NAME, job_name=spec.name, files=files, command=("bash", NODE_SCRIPT), launch=launch,
                spec=spec, notes=tuple(notes))


def submit(plan: Plan, cwd: str | Path | None = None) -> JobRecord:
    """Write the plan into a new job directory and start its supervisor in a session of its own."""
    spec = plan.spec
    job_id = new_job_id(plan.job_name)
    job_dir = jobs_root() / job_id
    write_plan(plan, job_dir, dir_mode=0o700)  # the job's scripts and logs are the owner's alone
    workdir = Path(cwd or os.getcwd()).resolve()
    details: dict[str, object] = {
        "cwd": str(workdir),
        "python": spec.local.python or sys.executable,
    }
    if spec.nodes > 1:
        details["rdzv_port"] = spec.rendezvous.port or free_port(spec.rendezvous.port_range, job_id)
    record = JobRecord(job_id=job_id, backend=NAME, name=spec.name, job_dir=str(job_dir),
                       submitted_at=time.time(), nodes=spec.nodes, procs_per_node=spec.procs_per_node,
                       details=details)
    record.save()
    with os.fdopen(private_file(job_dir / SUPERVISOR_LOG), "ab") as log:
        # A new session: the job outlives this command and a Ctrl-C in the user's terminal.
        process = subprocess.Popen(
            [sys.executable, "-m", "stjobs.backends.local_run", str(job_dir)],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    with os.fdopen(private_file(job_dir / "supervisor.pid"), "w", encoding="utf-8") as pid_file:
        pid_file.write(f"{process.pid}\n")
    return record


def private_file(path: Path) -> int:
    """A descriptor for appending to ``path``, created 0o644 at most whatever the umask: nobody else may
    rewrite a job's logs or the pid that `cancel` signals."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def free_port(port_range: tuple[int, int], job_id: str) -> int:
    """A port in the spec's range that is free now, starting from a point derived from the job id."""
    low, high = port_range
    span = high - low + 1
    start = zlib.crc32(job_id.encode()) % span
    for step in range(span):
        port = low + (start + step) % span
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SubmitError(f"rendezvous.port_range: no free port in {low}-{high} on this machine")


def status(record: JobRecord) -> JobStatus:
    job_dir = Path(record.job_dir)
    data = read_json(job_dir / STATUS_FILE)
    pid = _supervisor_pid(job_dir)
    if data is None:
        alive = pid is not None and _alive(pid)
        return JobStatus(record, State.PENDING if alive else State.LOST,
                         reason="" if alive else "the supervisor never started; see supervisor.log")
    state = State(str(data.get("state", "LOST")))
    exit_code = data.get("exit_code")
    if not state.finished and (pid is None or not _alive(pid)):
        return JobStatus(record, State.LOST, reason="the supervisor died; see supervisor.log")
    return JobStatus(record, state, exit_code if isinstance(exit_code, int) else None, str(data.get("reason", "")))


def cancel(record: JobRecord, wait_s: float = 60.0) -> JobStatus:
    current = status(record)
    if current.state.finished:
        return current
    pid = _supervisor_pid(Path(record.job_dir))
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # the supervisor forwards it to every node and records CANCELLED
    return wait_until_finished(lambda: status(record), wait_s)


def logs(record: JobRecord, follow: bool = False, rank: int | None = None,
         poll_s: float = 0.5) -> Iterator[str]:
    """The job's combined console, or one rank's lines of it; with ``follow`` until the job ends."""
    path = Path(record.job_dir) / OUTPUT_LOG
    return follow_files(lambda: [path], lambda: status(record).state.finished, follow, rank, poll_s)


def _supervisor_pid(job_dir: Path) -> int | None:
    try:
        return int((job_dir / "supervisor.pid").read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


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
