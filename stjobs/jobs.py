"""Job records: what ``submit`` leaves behind so ``status``, ``logs`` and ``cancel`` can find a job later.

Each submitted job has a directory ``$STJOBS_HOME/jobs/<job id>`` (default ``~/.stjobs``) holding the rendered
files, ``job.json`` (this record) and whatever the backend writes there (logs, exit status).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from stjobs.errors import EnvError, UsageError


class State(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"  # the process that watched the job vanished without writing an outcome
    UNKNOWN = "UNKNOWN"  # the scheduler could not be asked just now (e.g. slurmctld down); ask again later

    @property
    def finished(self) -> bool:
        return self not in (State.PENDING, State.RUNNING, State.UNKNOWN)


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    backend: str
    name: str
    job_dir: str
    submitted_at: float
    nodes: int
    procs_per_node: int
    # Backend-specific facts (a SLURM job id, a Kubernetes namespace, ...), JSON-serialisable.
    details: dict[str, object] = field(default_factory=dict)

    def save(self) -> None:
        path = Path(self.job_dir) / "job.json"
        write_json(path, asdict(self))


@dataclass(frozen=True)
class JobStatus:
    record: JobRecord
    state: State
    exit_code: int | None = None
    reason: str = ""
    requeues: int = 0  # how often the scheduler requeued the job (preemption, time limit, a failed node)


def stjobs_home() -> Path:
    return Path(os.environ.get("STJOBS_HOME") or Path.home() / ".stjobs")


def jobs_root() -> Path:
    return stjobs_home() / "jobs"


def _check_home() -> None:
    home = stjobs_home()
    if home.exists() and not home.is_dir():
        raise EnvError("STJOBS_HOME", str(home), "a directory for stjobs' job records (it exists and is not one)")


def prepare_jobs_root() -> Path:
    """The jobs directory, made private (0o700) when stjobs creates it: job directories hold the rendered
    scripts a job runs and its logs, which are the owner's alone. Called before anything is submitted, so a
    bad STJOBS_HOME fails with one line and leaves nothing behind."""
    _check_home()
    home, root = stjobs_home(), jobs_root()
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise EnvError("STJOBS_HOME", str(home), f"a directory stjobs can keep job records in ({error.strerror}: "
                       f"{error.filename})") from None
    return root


def new_job_id(name: str) -> str:
    # Ids are made at submission, never in a renderer: the rendered files stay byte-identical.
    import secrets
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def load_record(job_id: str) -> JobRecord:
    _check_home()
    path = jobs_root() / job_id / "job.json"
    if not path.is_file():
        matches = sorted(p.name for p in jobs_root().glob(f"{job_id}*") if (p / "job.json").is_file())
        if len(matches) == 1:
            path = jobs_root() / matches[0] / "job.json"
        elif matches:
            raise UsageError(f"job: {job_id!r} matches several jobs ({', '.join(matches[:5])}); give more of the id")
        else:
            raise UsageError(f"job: got {job_id!r}; expected the id of a job under {jobs_root()} (`stjobs status` "
                             "lists them)")
    return load_record_at(path.parent)


def load_record_at(job_dir: Path) -> JobRecord:
    data = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    return JobRecord(**data)


def list_records() -> list[JobRecord]:
    _check_home()
    root = jobs_root()
    if not root.is_dir():
        return []
    records = []
    for path in root.glob("*/job.json"):
        try:
            records.append(JobRecord(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue  # a job directory being written right now, or damaged by hand: not ours to fail on
    return sorted(records, key=lambda record: (record.submitted_at, record.job_id))


def write_json(path: Path, data: object) -> None:
    # Written whole and renamed, so a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # At most 0o644 (a stricter umask still applies): a record or status that others could rewrite would make
    # `stjobs status` lie. A tmp left by a crash is removed first, as O_CREAT would keep its old mode.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
        stream.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def follow_files(paths: Callable[[], list[Path]], finished: Callable[[], bool], follow: bool = False,
                 rank: int | None = None, poll_s: float = 0.5) -> Iterator[str]:
    """Lines of a job's log files (found anew on each poll), or one rank's lines (torchrun prefixes each with
    ``[rankN]:``); with ``follow``, until ``finished()`` says the job has ended."""
    prefix = f"[rank{rank}]:" if rank is not None else None
    offsets: dict[Path, int] = {}
    pending: dict[Path, str] = {}
    while True:
        done = finished()  # read before the files: no line written after this check is missed
        for path in paths():
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    handle.seek(offsets.get(path, 0))
                    chunk = handle.read()
                    offsets[path] = handle.tell()
            except OSError:
                continue
            *lines, pending[path] = (pending.get(path, "") + chunk).split("\n")
            for line in lines:
                if prefix is None or line.startswith(prefix):
                    yield line + "\n"
        if not follow or done:
            for rest in pending.values():
                if rest and (prefix is None or rest.startswith(prefix)):
                    yield rest
            return
        time.sleep(poll_s)


def wait_until_finished(poll: Callable[[], JobStatus], wait_s: float, poll_s: float = 0.3) -> JobStatus:
    """Poll a job's status until it has finished or ``wait_s`` passed; returns the last status seen."""
    deadline = time.monotonic() + wait_s
    current = poll()
    while not current.state.finished and time.monotonic() < deadline:
        time.sleep(poll_s)
        current = poll()
    return current
