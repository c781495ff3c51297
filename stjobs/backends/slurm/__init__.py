"""SLURM backend: a batch script for plain ``sbatch`` and the same job through submitit.

One srun task per node runs the shared node launch script (torchrun with ``--nproc-per-node`` = processes per
node): never one task per GPU plus torchrun, which makes every GPU visible to several agents. This is the face of
the backend; the work is in renderer (pure), submission (the only code that submits), control (sacct, squeue,
scancel), jobfiles (what a job's own files say, once a cluster without accounting has forgotten it) and task
(what submitit runs on each node); a job for a login node over ssh (``slurm.remote``) goes through remote_jobs
(submit, follow) on the ssh transport of remote. Submission and control are imported on first use, so a render
never imports submitit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from stjobs.backends.slurm.renderer import NAME, render, render_sweep, sbatch_parameters, uses_image

if TYPE_CHECKING:
    from pathlib import Path

    from stjobs.jobs import JobRecord, JobStatus
    from stjobs.plan import Plan
    from stjobs.sweep_jobs import Sweeping

__all__ = ["NAME", "cancel", "check", "logs", "output_file", "output_tail", "render", "render_sweep",
           "sbatch_parameters", "status", "statuses", "submit", "submit_sweep", "uses_image"]


def check(plan: Plan, **options: Any) -> None:
    _refuse_remote("sweep", plan, bool(plan.points))
    if plan.spec.slurm.remote:
        from stjobs.backends.slurm import remote_jobs

        return remote_jobs.check(plan, **options)
    from stjobs.backends.slurm import submission

    submission.check(plan, **options)


def submit(plan: Plan, **options: Any) -> JobRecord:
    if plan.spec.slurm.remote:  # plain sbatch on the login node: submitit runs sbatch where it runs itself
        from stjobs.backends.slurm import remote_jobs

        _refuse_remote("--after", plan, bool(options.pop("after", ())))
        options.pop("if_dependency_fails", None)
        return remote_jobs.submit(plan, **options)
    from stjobs.backends.slurm import submission

    return submission.submit(plan, **options)


def submit_sweep(plan: Plan, sweeping: Sweeping, **options: Any) -> list[JobRecord]:
    from stjobs.backends.slurm import submission

    _refuse_remote("sweep", plan, True)
    return submission.submit_sweep(plan, sweeping, **options)


def status(record: JobRecord) -> JobStatus:
    from stjobs.backends.slurm import control

    return control.status(record)


def statuses(records: Sequence[JobRecord]) -> list[JobStatus]:
    from stjobs.backends.slurm import control

    return control.statuses(records)


def logs(record: JobRecord, follow: bool = False, rank: int | None = None) -> Iterator[str]:
    from stjobs.backends.slurm import control

    return control.logs(record, follow=follow, rank=rank)


def output_file(record: JobRecord) -> Path | None:
    from stjobs.backends.slurm.jobfiles import rank0_output

    return rank0_output(record)


def output_tail(record: JobRecord, limit_bytes: int) -> str | None:
    from stjobs.progress import file_tail

    return file_tail(output_file(record), limit_bytes)


def cancel(record: JobRecord) -> JobStatus:
    from stjobs.backends.slurm import control

    return control.cancel(record)


def _refuse_remote(what: str, plan: Plan, asked: bool) -> None:
    """A sweep and --after are submitted on this machine only, for now: said in one line rather than dropped."""
    if asked and plan.spec.slurm.remote:
        from stjobs.errors import UsageError

        raise UsageError(f"{what}: got it with slurm.remote {plan.spec.slurm.remote}; expected a submit on the login "
                         "node itself (run stjobs there: sweeps and --after over ssh are not supported yet)")
