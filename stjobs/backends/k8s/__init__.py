"""Kubernetes backend: a Kubeflow PyTorchJob (default) or TrainJob, rendered for ``kubectl apply -k`` and
submitted with the kubernetes client.

This is the face of the backend; the work is in renderer (pure: manifest builds the object as data, checks and
schema hold it to our rules and the official CRDs, podcheck to the core pod schema), control (submit, status,
cancel), logstream (logs) and client (reaching the API server). Control and logs are imported on first use, so a
render never imports the kubernetes client.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from stjobs.backends.k8s.renderer import NAME, render, render_sweep, uses_image

if TYPE_CHECKING:
    from pathlib import Path

    from stjobs.jobs import JobRecord, JobStatus
    from stjobs.plan import Plan
    from stjobs.sweep_jobs import Sweeping

__all__ = ["NAME", "cancel", "check", "logs", "output_file", "output_tail", "render", "render_sweep", "status",
           "statuses", "submit", "submit_sweep", "uses_image"]


def check(plan: Plan, **options: Any) -> None:
    """Nothing of this machine's: the job's secrets come from a Secret in the cluster, named in the plan."""


def submit(plan: Plan, **options: Any) -> JobRecord:
    from stjobs.backends.k8s import control

    return control.submit(plan, **options)


def submit_sweep(plan: Plan, sweeping: Sweeping, **options: Any) -> list[JobRecord]:
    from stjobs.backends.k8s import control

    return control.submit_sweep(plan, sweeping, **options)


def status(record: JobRecord) -> JobStatus:
    from stjobs.backends.k8s import control

    return control.status(record)


def statuses(records: Sequence[JobRecord]) -> list[JobStatus]:
    from stjobs.backends.k8s import control

    return control.statuses(records)


def logs(record: JobRecord, follow: bool = False, rank: int | None = None) -> Iterator[str]:
    from stjobs.backends.k8s import logstream

    return logstream.logs(record, follow=follow, rank=rank)


def output_file(record: JobRecord) -> Path | None:
    """None: the pods' logs live in the cluster (reading them is a call per job), not in a file here."""
    return None


def output_tail(record: JobRecord, limit_bytes: int) -> str | None:
    """About the last ``limit_bytes`` of the master's (node 0's) pod log: a pod list and one log call."""
    from stjobs.backends.k8s import logstream

    return logstream.tail(record, limit_bytes)


def cancel(record: JobRecord) -> JobStatus:
    from stjobs.backends.k8s import control

    return control.cancel(record)
