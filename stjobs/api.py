"""The public Python API. The CLI is a thin layer over these functions."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stjobs import images
from stjobs.backends import backend_module
from stjobs.defaults import note as defaults_note
from stjobs.errors import InputError, StjobsError, UsageError
from stjobs.launch import fsdp_note
from stjobs.notes import batch_note, gpu_note
from stjobs.plan import no_world_write, write_plan

if TYPE_CHECKING:
    from stjobs.jobs import Cleaned, JobRecord, JobStatus, State
    from stjobs.plan import Plan
    from stjobs.progress import Progress
    from stjobs.spec import JobSpec
    from stjobs.sweep_jobs import Result


def render(spec: JobSpec, backend: str = "local", k8s_schemas: str | Path | None = None) -> Plan:
    """The plan for ``spec`` on ``backend``: pure, the same spec always gives byte-identical files.

    ``k8s_schemas``: a directory with the Kubeflow CRD files; the k8s backend then checks its manifest strictly
    against them (without it the plan notes that the check was skipped); the others refuse it."""
    schemas = Path(k8s_schemas) if k8s_schemas is not None else None
    if spec.sweep.enabled:
        from stjobs.sweep import expand

        # The points differ in their values only: what the spec decides is said once, for the first.
        points = expand(spec)
        plan = backend_module(backend).render_sweep(spec, points, schemas)
        said = points[0].spec
    else:
        plan, said = backend_module(backend).render(spec, schemas), spec
    notes = [note for note in (batch_note(said), gpu_note(said), fsdp_note(said), defaults_note(said)) if note]
    return replace(plan, notes=(*plan.notes, *notes)) if notes else plan


def render_job(spec: JobSpec, backend: str = "local", k8s_schemas: str | Path | None = None) -> Plan:
    """What ``stjobs render`` writes: the backend's plan and, for a job that runs in a container image, the image's
    build files under images/ (see :func:`render_image`)."""
    plan = render(spec, backend, k8s_schemas)
    return images.with_image_files(plan) if backend_module(backend).uses_image(spec) else plan


def render_image(spec: JobSpec) -> Plan:
    """The image's build files: GPU and CPU Dockerfiles, an Apptainer definition, pinned requirements."""
    return images.render(spec)


def build_image(spec: JobSpec, context: str | Path = ".", builder: str | None = None,
                extra_args: tuple[str, ...] = ()) -> list[str]:
    """Build the spec's image from ``context`` (the project root, holding images/ as rendered) with docker,
    podman or buildah (``builder``, else the first on PATH); returns the command that ran."""
    return images.build_image(spec, context, builder, extra_args)


def render_to(spec: JobSpec, out_dir: str | Path, backend: str = "local", force: bool = False,
              k8s_schemas: str | Path | None = None) -> Plan:
    plan = render_job(spec, backend, k8s_schemas)
    write_plan(plan, out_dir, overwrite=force)
    return plan


def submit(spec: JobSpec, backend: str = "local", k8s_schemas: str | Path | None = None,
           after: Sequence[tuple[str, str]] = (), if_dependency_fails: str = "cancel",
           **options: Any) -> JobRecord:
    """Render, check what needs this machine, then hand the plan to the backend. Every refusal comes before the
    job directory exists; the backend (and the job it starts) writes under a umask without world write.

    ``after``: ``(kind, job_id)`` pairs, kind ``ok`` (start once that job completed) or ``any`` (once it ended);
    ``if_dependency_fails``: ``cancel`` or ``keep`` (pending) the job when one can never be met."""
    from stjobs.jobs import name_outputs, prepare_jobs_root

    module = backend_module(backend)
    plan = render(spec, backend, k8s_schemas)
    from stjobs.after import dependencies

    waits = dependencies(after, backend, if_dependency_fails, job_status)
    module.check(plan, **options)  # what this machine must have (secrets in the environment, paths, ...)
    if waits:
        options.update(after=waits, if_dependency_fails=if_dependency_fails)
    with no_world_write():
        prepare_jobs_root()
        if plan.points:
            from stjobs import sweep_jobs

            return sweep_jobs.submit(plan, module.submit_sweep, status, **options)
        return name_outputs(module.submit(plan, **options), plan.spec.output_dir, plan.spec.workdir_path)


def status(job_id: str | None = None, states: Collection[State] = (), backends: Collection[str] = (),
           name: str | None = None) -> list[JobStatus]:
    """One job's status, or every job's, in the order of the records: each backend's jobs asked for together
    (200 SLURM jobs are one sacct and one squeue, not 200 of each). ``backends`` and ``name`` (an fnmatch
    pattern of the job's name) choose the records before any scheduler is asked, ``states`` the answers."""
    from fnmatch import fnmatch

    from stjobs.jobs import list_records, load_record  # job control only: keeps `render` light

    wanted = set(backends)
    records = [record for record in ([load_record(job_id)] if job_id else list_records())
               if (not wanted or {record.backend} & wanted) and (name is None or fnmatch(record.name, name))]
    from stjobs.sweep_jobs import with_sweeps

    # A sweep is one line (its points asked for with every other job); asked for by its id, its points follow.
    rows = with_sweeps(records, _query, expand_points=job_id is not None)
    return [row for row in rows if not states or row.state in states]


def _query(records: list[JobRecord]) -> list[JobStatus]:
    """Every record's status, each backend's jobs asked for together."""
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record.backend, []).append(index)
    found: dict[int, JobStatus] = {}
    for backend, indices in groups.items():
        found.update(zip(indices, _statuses_of(backend, [records[index] for index in indices]), strict=True))
    return [found[index] for index in range(len(records))]


def status_rows(job_id: str | None = None, states: Collection[State] = (), backends: Collection[str] = (),
                name: str | None = None) -> list[tuple[JobStatus, Progress | None]]:
    """:func:`status` with each job's progress (:func:`progress`): what ``stjobs status`` shows."""
    return [(row, progress(row)) for row in status(job_id, states, backends, name)]


def progress(job: JobStatus) -> Progress | None:
    """How far the job is, from the events in the tail of its rank-0 output (:mod:`stjobs.progress`); read only
    for a job that runs or has finished (a finished one's answer is kept in its directory), None without events.
    A file here is read directly (its size and mtime tell a kept answer stale); an output elsewhere (a pod's log)
    through the backend's ``output_tail``, one call, and an error there leaves the progress unknown."""
    from stjobs.jobs import State
    from stjobs.progress import TAIL_BYTES, read_progress, remote_progress
    from stjobs.sweep_jobs import is_sweep

    if job.state in (State.PENDING, State.UNKNOWN) or is_sweep(job.record):  # a sweep: its points' lines say
        return None
    record = job.record
    module = backend_module(record.backend)
    path = module.output_file(record)
    if path is not None:
        return read_progress(path, Path(record.job_dir), job.state.finished)

    def tail() -> str | None:
        try:
            return module.output_tail(record, TAIL_BYTES)
        except StjobsError:  # the API server refused or is away: one row's progress unknown, not the table lost
            return None

    return remote_progress(tail, Path(record.job_dir), job.state.finished)


def _statuses_of(name: str, records: list[JobRecord]) -> list[JobStatus]:
    from stjobs.jobs import JobStatus, State

    try:
        return backend_module(name).statuses(records)
    except StjobsError as error:
        # One unreachable scheduler (slurmctld down, no cluster credentials) must not hide the other jobs.
        return [JobStatus(record, State.UNKNOWN, reason=str(error)) for record in records]


def job_status(job_id: str) -> JobStatus:
    return status(job_id)[0]


def logs(job_id: str, follow: bool = False, rank: int | None = None) -> Iterator[str]:
    """The job's output, or with ``rank`` that global rank's lines; a rank the job does not have is refused
    (every backend would print nothing for it, and nothing reads as "this rank said nothing")."""
    record = _record_with_rank(job_id, rank)
    return backend_module(record.backend).logs(record, follow=follow, rank=rank)


def _record_with_rank(job_id: str, rank: int | None) -> JobRecord:
    from stjobs.jobs import load_record
    from stjobs.sweep_jobs import is_sweep, point_id

    record = load_record(job_id)
    if is_sweep(record):
        raise UsageError(f"job: {record.job_id} is a sweep, whose points have the output; expected one of its "
                         f"points, e.g. {point_id(record.job_id, 0)} (stjobs status {record.job_id} lists them)")
    if rank is None:
        return record
    ranks = record.nodes * record.procs_per_node  # an elastic job's most; DataParallel is one process a node
    if not 0 <= rank < ranks:
        raise InputError("--rank", rank, f"a rank of job {record.job_id}, which has "
                         + (f"ranks 0-{ranks - 1}" if ranks > 1 else "rank 0 only")
                         + f" ({record.nodes} node(s) x {record.procs_per_node} process(es))")
    return record


def shows_progress(job_id: str) -> bool:
    """Whether the job runs the built-in training, whose output the CLI shows as progress (its events); a script's
    own output is shown as it is."""
    from stjobs.jobs import load_record
    from stjobs.progress import planned_steps

    return planned_steps(Path(load_record(job_id).job_dir)) is not None


def events(job_id: str, rank: int | None = None) -> list[dict[str, Any]]:
    """The job's training events (every rank's, or ``rank``'s), in the order they were written: from its events
    files (``events/rank-N.jsonl`` in the job's directory) where that directory is on this machine, else parsed
    out of its output (a Kubernetes pod's log; a job from before the files)."""
    from stjobs.train.events import parse_events, read_events_dir

    record = _record_with_rank(job_id, rank)
    found = read_events_dir(record.job_dir)
    if found is None:
        found = parse_events("".join(logs(job_id, rank=rank)))
    return [event for event in found if rank is None or event.get("rank") == rank]


def newest_job() -> str:
    """The id of the job submitted last (from this machine's records)."""
    from stjobs.jobs import jobs_root, list_records

    records = list_records()
    if not records:
        raise UsageError(f"job: no job has been submitted yet (records: {jobs_root()}); expected a job id")
    return records[-1].job_id


def plot(job_id: str | None = None, path: str | Path | None = None) -> Path:
    """A PNG of the job's (default: the newest job's) loss, learning rate, samples/s and evaluation scores over
    steps, drawn from its events (:func:`events`, any backend); written to ``path``, by default ``plot.png`` in the
    job's directory. Returns the path written."""
    from stjobs.jobs import load_record
    from stjobs.plot import write_png
    from stjobs.sweep_jobs import is_sweep

    record = load_record(job_id if job_id is not None else newest_job())
    job_id = record.job_id
    target = Path(path) if path is not None else Path(record.job_dir) / "plot.png"
    if is_sweep(record):
        from functools import cache

        from stjobs.plot import write_sweep_png

        read = cache(events)  # the results and the curves come from one read of each point's events
        return write_sweep_png({row.job_id: (row.label, read(row.job_id)) for row in sweep_results(job_id, read)},
                               target, job_id)
    return write_png(events(job_id), target, record.job_id)


def sweep_results(job_id: str,
                  events_of: Callable[[str], list[dict[str, Any]]] | None = None) -> list[Result]:
    """A sweep's points with their final evaluation score and loss (from their events, read by ``events_of``,
    default :func:`events`), best first."""
    from stjobs import sweep_jobs

    rows = status(job_id)
    if not sweep_jobs.is_sweep(rows[0].record):
        raise UsageError(f"job: {rows[0].record.job_id} is not a sweep; expected a sweep's id")
    return sweep_jobs.results(rows[0].record, rows[1:], events_of or events)


def strategy_warning(job_id: str) -> str | None:
    """A warning when the built-in training ran another strategy than the spec asked for, else None.

    accelerate and the Trainer fall back without a word: FSDP on CPUs runs as DDP, DataParallel on fewer than two
    GPUs as one plain process. The training reports what it wrapped (its ``wrapped`` event); this reads it back.
    """
    from stjobs.train.events import first

    try:
        wrapped = first(events(job_id), "wrapped", rank=0)
    except StjobsError:
        return None  # no logs (yet): nothing to compare
    if wrapped is None or wrapped.get("as_requested", True):
        return None
    return (f"{job_id}: strategy {wrapped.get('requested')} was requested but the training ran as "
            f"{wrapped.get('ran')} ({wrapped.get('distributed_type')} with {wrapped.get('model_wrapper')})")


def cancel(job_id: str) -> JobStatus:
    """Cancel the job (a sweep: each of its points that has not ended) and wait until it stopped."""
    from stjobs.jobs import load_record
    from stjobs.sweep_jobs import is_sweep, summary

    record = load_record(job_id)
    module = backend_module(record.backend)
    if not is_sweep(record):
        return module.cancel(record)
    # Each status row carries its point's record: one read of the points, and no pairing to get wrong.
    points = [now if now.state.finished else module.cancel(now.record) for now in status(job_id)[1:]]
    return summary(record, points)


def clean(older_than_days: float | None = None, outputs: bool = False, dry_run: bool = False) -> list[Cleaned]:
    """Remove the records (job directories) of finished jobs (COMPLETED, FAILED, CANCELLED, LOST), with
    ``older_than_days`` only those submitted longer ago, with ``outputs`` each job's output directory too; with
    ``dry_run`` nothing, just say what would go. Every job's state is asked at once, as :func:`status` does.

    An output directory is removed only where the record names it and it is the job's alone: never ``/``, the
    home directory, STJOBS_HOME, the job's workdir or a directory above one of them, a link, nor one another
    job that stays names too; such a record stays, its ``kept`` saying why in one line."""
    import time

    from stjobs.jobs import clean_records

    if older_than_days is not None and not (older_than_days >= 0 and math.isfinite(older_than_days)):
        raise InputError("--older-than", older_than_days, "a number of days, 0 or more")
    return clean_records(status(), None if older_than_days is None else older_than_days * 86400, outputs,
                         dry_run, time.time())


def wait(job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> JobStatus:
    """Block until the job has finished (or ``timeout_s`` passed) and return its last status."""
    from stjobs.jobs import load_record, wait_until_finished
    from stjobs.sweep_jobs import is_sweep

    record = load_record(job_id)
    module = backend_module(record.backend)
    # A sweep has no job of its own to ask for: its line sums its points'.
    poll = (lambda: status(record.job_id)[0]) if is_sweep(record) else (lambda: module.status(record))
    final = wait_until_finished(poll, math.inf if timeout_s is None else timeout_s, poll_s)
    if not final.state.finished:
        raise StjobsError(f"wait: job {record.job_id} still {final.state.value} after {timeout_s} s")
    return final
