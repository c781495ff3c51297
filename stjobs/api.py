"""The public Python API. The CLI is a thin layer over these functions."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stjobs import gpus, images
from stjobs.backends import backend_module
from stjobs.defaults import note as defaults_note
from stjobs.errors import InputError, SpecError, StjobsError, UsageError
from stjobs.launch import fsdp_note, option_value
from stjobs.plan import no_world_write, write_plan
from stjobs.spec import Strategy
from stjobs.train.args import DEFAULT_PER_DEVICE_BATCH_SIZE, TrainConfigError, batch_options, data_sources
from stjobs.train.losses import IN_BATCH_NEGATIVE_LOSSES, canonical_loss

if TYPE_CHECKING:
    from stjobs.jobs import Cleaned, JobRecord, JobStatus, State
    from stjobs.plan import Plan
    from stjobs.progress import Progress
    from stjobs.spec import JobSpec


def render(spec: JobSpec, backend: str = "local", k8s_schemas: str | Path | None = None) -> Plan:
    """The plan for ``spec`` on ``backend``: pure, the same spec always gives byte-identical files.

    ``k8s_schemas``: a directory with the Kubeflow CRD files; the k8s backend then checks its manifest strictly
    against them (without it the plan notes that the check was skipped); the others refuse it."""
    plan = backend_module(backend).render(spec, Path(k8s_schemas) if k8s_schemas is not None else None)
    notes = [note for note in (batch_note(spec), gpu_note(spec), fsdp_note(spec), defaults_note(spec)) if note]
    return replace(plan, notes=(*plan.notes, *notes)) if notes else plan


def gpu_note(spec: JobSpec) -> str | None:
    """What the spec's GPU type decides (stjobs.gpus), said before the job queues: the built-in training's
    precision and the CUDA build of torch its image gets. An explicit --precision the GPU cannot do is refused."""
    if not spec.gpus_per_node:
        return None
    capability = gpus.capability_of(spec.gpu_type)
    build = gpus.build_for(capability)
    if capability is None:
        known = f"gpu_type {spec.gpu_type} is not in stjobs' table" if spec.gpu_type else "no gpu_type"
        return (f"gpu: {known}: precision follows the device at run time (bf16 from compute capability 8.0, fp16 "
                f"below); the default image is torch's CUDA {build.cuda} build (Turing to Blackwell; a V100 needs "
                "gpu_type: v100)")
    said = f"gpu: {spec.gpu_type} is {gpus.describe(capability)}"
    if spec.entrypoint.module == "stjobs.train":
        requested = option_value(spec.entrypoint.args, "--precision") or "auto"
        try:
            precision = gpus.resolve_precision(requested, capability)
        except ValueError:
            raise SpecError("entrypoint.args", f"--precision {requested}", f"fp16, fp32 or auto for gpu_type "
                            f"{spec.gpu_type} ({gpus.describe(capability)}): bf16 is native from compute "
                            "capability 8.0, emulated and slow below it") from None
        said += f": training in {precision}" + (" (bf16 needs compute capability 8.0)" if precision == "fp16"
                                                 and requested == "auto" else "")
    return f"{said}; image torch build CUDA {build.cuda}"


def batch_note(spec: JobSpec) -> str | None:
    """For the built-in training: the batch per device and per step, stated once where the user reads the plan; a
    --global-batch-size that the devices cannot share evenly is refused here, before anything is written."""
    args = spec.entrypoint.args
    options = batch_options(args) if spec.entrypoint.module == "stjobs.train" else None
    if options is None:
        return None
    # DataParallel: one process, and the Trainer puts a per-device batch on each of the node's GPUs.
    devices = max(spec.gpus_per_node, 1) if spec.strategy is Strategy.dp else spec.world_size
    unit = "GPU(s), one process" if spec.strategy is Strategy.dp else "process(es)"
    if options.global_batch_size is not None:
        total = options.global_batch_size
        if total % devices:
            below, above = total // devices * devices, (total // devices + 1) * devices
            nearest = f"{below} or {above}" if below else str(above)
            raise SpecError("entrypoint.args", f"--global-batch-size {total}",
                            f"a multiple of the {devices} {unit.split(',')[0]} that share it (each takes an equal "
                            f"share), e.g. {nearest}")
        per = total // devices
    else:
        per = options.per_device_batch_size or DEFAULT_PER_DEVICE_BATCH_SIZE
        total = per * devices
    gather = in_batch_note(tuple(args), total) if spec.world_size > 1 and options.gather_across_devices else ""
    return f"batch: {per} per device x {devices} {unit} = {total} per step{gather}"


def in_batch_note(args: tuple[str, ...], total: int) -> str:
    """What the step's rows are to the loss, true for the losses the command names: only losses with in-batch
    negatives gather every process's rows (gather_across_devices). Without a loss in the command the data's kind
    decides it at run time, which a pure render does not read, so the note says which kinds that is."""
    try:
        sources = data_sources(args, "--train-data")
    except TrainConfigError:
        return ""  # the training reports the bad value itself, in one line
    default = canonical_loss(option_value(args, "--loss") or "")
    losses = [(source.name, source.loss or default) for source in sources] or [(None, default)]
    if any(loss is None for _, loss in losses):
        return (f"; losses with in-batch negatives (the default for pairs and triplets data) see all {total} "
                "rows; the others score each row alone")
    gathering = [(name, loss) for name, loss in losses if loss in IN_BATCH_NEGATIVE_LOSSES]
    if len(losses) == 1:
        return f"; {gathering[0][1]} sees all {total} rows as in-batch negatives" if gathering else ""
    # Several datasets: each step's batch comes from one of them, so a gathering loss sees that step's rows.
    return "".join(f"; {name}'s {loss} sees all {total} rows of its steps as in-batch negatives"
                   for name, loss in gathering)


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
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record.backend, []).append(index)
    found: dict[int, JobStatus] = {}
    for backend, indices in groups.items():
        found.update(zip(indices, _statuses_of(backend, [records[index] for index in indices]), strict=True))
    return [found[index] for index in range(len(records)) if not states or found[index].state in states]


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

    if job.state in (State.PENDING, State.UNKNOWN):
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

    record = load_record(job_id)
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

    record = load_record(job_id if job_id is not None else newest_job())
    job_id = record.job_id
    target = Path(path) if path is not None else Path(record.job_dir) / "plot.png"
    return write_png(events(job_id), target, record.job_id)


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
    from stjobs.jobs import load_record

    record = load_record(job_id)
    return backend_module(record.backend).cancel(record)


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

    record = load_record(job_id)
    module = backend_module(record.backend)
    final = wait_until_finished(lambda: module.status(record), math.inf if timeout_s is None else timeout_s, poll_s)
    if not final.state.finished:
        raise StjobsError(f"wait: job {record.job_id} still {final.state.value} after {timeout_s} s")
    return final
