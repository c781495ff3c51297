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

from stjobs.backends.slurm.renderer import NAME, render, sbatch_parameters, uses_image

if TYPE_CHECKING:
    from pathlib import Path

    from stjobs.jobs import JobRecord, JobStatus
    from stjobs.plan import Plan

__all__ = ["NAME", "cancel", "check", "logs", "output_file", "render", "sbatch_parameters", "status", "statuses",
           "submit", "uses_image"]


def check(plan: Plan, **options: Any) -> None:
    if plan.spec.slurm.remote:
        from stjobs.backends.slurm import remote_jobs

        return remote_jobs.check(plan, **options)
    from stjobs.backends.slurm import submission

    submission.check(plan, **options)


def submit(plan: Plan, **options: Any) -> JobRecord:
    if plan.spec.slurm.remote:  # plain sbatch on the login node: submitit runs sbatch where it runs itself
        from stjobs.backends.slurm import remote_jobs

        return remote_jobs.submit(plan, **options)
    from stjobs.backends.slurm import submission

    return submission.submit(plan, **options)


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


def cancel(record: JobRecord) -> JobStatus:
    from stjobs.backends.slurm import control

    return control.cancel(record)
