"""Job records: what ``submit`` leaves behind so ``status``, ``logs`` and ``cancel`` can find a job later.

Each submitted job has a directory ``$STJOBS_HOME/jobs/<job id>`` (default ``~/.stjobs``) holding the rendered
files, ``job.json`` (this record) and whatever the backend writes there (logs, exit status).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
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


def new_job(name: str, into: tuple[str, Path] | None = None) -> tuple[str, Path]:
    """A submission's job id and directory: ``into`` where the caller has them (a sweep's point), else new ones."""
    if into is not None:
        return into
    job_id = new_job_id(name)
    return job_id, jobs_root() / job_id


def load_record(job_id: str) -> JobRecord:
    _check_home()
    path = jobs_root() / job_id / "job.json"
    point = re.fullmatch(r"(.+)-p(\d+)", job_id)
    if not path.is_file() and point:  # a sweep's point: in the sweep's directory (stjobs.sweep_jobs)
        inside = jobs_root() / point[1] / "points" / point[2] / "job.json"
        path = inside if inside.is_file() else path
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


def name_outputs(record: JobRecord, output_dir: str, workdir: str) -> JobRecord:
    """The record with the job's workdir and output directory as this machine sees them (saved), so ``clean
    --outputs`` removes exactly what the job wrote to, never a path guessed later. A record without ``cwd`` (k8s:
    the outputs are in the pod's volumes, not here) names none."""
    cwd = record.details.get("cwd")
    if not isinstance(cwd, str):
        return record
    where = os.path.normpath(os.path.join(cwd, workdir))
    named = replace(record, details={**record.details, "workdir": where,
                                     "output_dir": os.path.normpath(os.path.join(where, output_dir))})
    named.save()
    return named


@dataclass(frozen=True)
class Cleaned:
    """A finished job ``clean`` removed (with ``dry_run``: would remove), or kept with ``kept`` saying why."""

    status: JobStatus
    age_s: float
    paths: tuple[str, ...]  # the job directory, then the output directory when it goes too
    size_bytes: int
    removed: bool = False
    note: str = ""  # why the outputs stay although asked for, when that is no reason to keep the record
    kept: str = ""  # one line: why the record stays (its outputs refused, a removal failed)

    def line(self, dry_run: bool) -> str:
        job = f"{self.status.record.job_id}  {self.status.state.value}  {self.age_s / 86400:.1f} days"
        if self.kept:
            return f"kept {job}: {self.kept}"
        what = ", ".join(["record", *(f"outputs {path}" for path in self.paths[1:])])
        extra = f"; {self.note}" if self.note else ""
        return f"{'would remove' if dry_run else 'removed'} {job}  {what} ({self.size_bytes / 1e6:.1f} MB){extra}"


def clean_records(rows: list[JobStatus], older_than_s: float | None, outputs: bool, dry_run: bool,
                  now: float) -> list[Cleaned]:
    """Remove (unless ``dry_run``) the directories of the finished jobs among ``rows`` submitted more than
    ``older_than_s`` ago, with ``outputs`` their output directories too: see :func:`outputs_refusal`."""
    chosen = [row for row in rows if row.state.finished
              and (older_than_s is None or now - row.record.submitted_at > older_than_s)]
    picked = {id(row) for row in chosen}
    # An output directory another job still names (the default outputs/NAME is shared by every job of a name):
    # removing it would take the newer or running job's checkpoints.
    kept_outputs = {str(row.record.details["output_dir"]): row.record.job_id for row in rows
                    if id(row) not in picked and "output_dir" in row.record.details}
    done = []
    for row in chosen:
        job_dir = record_dir(row.record)
        if job_dir is None:
            continue  # not a directory under jobs_root(): nothing clean may touch
        paths, note, kept = [job_dir], "", ""
        if outputs:
            output, note, kept = outputs_refusal(row.record, kept_outputs)
            paths += [output] if output is not None else []
        item = Cleaned(row, now - row.record.submitted_at, tuple(map(str, paths)),
                       sum(tree_size(path) for path in paths), kept=kept, note=note)
        done.append(item)
    return done if dry_run else remove_cleaned(done)


def remove_cleaned(items: list[Cleaned]) -> list[Cleaned]:
    """Remove what a dry run of :func:`clean_records` listed (the records it keeps stay)."""
    return [item if item.kept or item.removed else _remove(item) for item in items]


def clean_summary(items: list[Cleaned], dry_run: bool) -> str:
    going = [item for item in items if not item.kept]
    size = sum(item.size_bytes for item in going)
    return f"{'would remove' if dry_run else 'removed'} {len(going)} job record(s) ({size / 1e6:.1f} MB)"


def _remove(item: Cleaned) -> Cleaned:
    import shutil

    for path in map(Path, reversed(item.paths)):  # the outputs first: no record goes while its outputs stay
        try:
            shutil.rmtree(path)
        except OSError as error:
            return replace(item, kept=f"{path}: {error.strerror or error} (removing it failed)")
    return replace(item, removed=True)


def record_dir(record: JobRecord) -> Path | None:
    """The record's own directory, only where it is one directly under jobs_root() (not a link)."""
    root = jobs_root().resolve()
    for path in (jobs_root() / record.job_id, Path(record.job_dir)):
        if path.is_dir() and not path.is_symlink() and path.resolve().parent == root \
                and (path / "job.json").is_file():
            return path
    return None


def outputs_refusal(record: JobRecord, kept_outputs: dict[str, str]) -> tuple[Path | None, str, str]:
    """The output directory to remove with the record, or None and a note (nothing to remove: the record may go)
    or a refusal (a path that is not the job's alone: the record stays, so its outputs are not forgotten)."""
    named = record.details.get("output_dir")
    if not isinstance(named, str) or not os.path.isabs(named):
        return None, "no output directory in the record", ""
    path = Path(named)
    if not path.exists() and not path.is_symlink():
        return None, f"outputs {path} do not exist", ""
    real = path.resolve()
    guarded = {"/": Path("/"), "the home directory": Path.home(), "STJOBS_HOME": stjobs_home(),
               "this directory": Path.cwd()}
    for key in ("workdir", "cwd"):
        if isinstance(record.details.get(key), str):
            guarded[f"the job's {key}"] = Path(str(record.details[key]))
    why = ("is a symbolic link" if path.is_symlink() else "is not a directory" if not path.is_dir() else
           next((f"holds {name} ({place})" if place.resolve() != real else f"is {name}"
                 for name, place in guarded.items() if place.resolve().is_relative_to(real)), ""))
    if not why and named in kept_outputs:
        why = f"is also the output directory of job {kept_outputs[named]}, which stays"
    if why:
        return None, "", f"outputs {named} refused: it {why}; the record stays (clean without --outputs removes it)"
    return path, "", ""


def tree_size(path: Path) -> int:
    """Bytes under ``path``, links not followed."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
