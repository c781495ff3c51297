"""The closed table of backends. Each is a package whose ``__init__`` offers the same functions:

``render(spec, k8s_schemas) -> Plan`` (pure), ``render_sweep(spec, points, k8s_schemas) -> Plan`` (a sweep's points,
each rendered as ``render`` would, as one plan: a SLURM job array, one Kubeflow object per point, local jobs),
``uses_image(spec)`` (whether the job runs in the spec's image, so its build files come with the render), ``check(plan,
...)`` (what must hold on this machine before anything is written), ``submit(plan, ...) -> JobRecord`` (side effects),
``submit_sweep(plan, sweeping, ...)`` (a sweep's points), and for job control ``status(record)``, ``statuses(records)``
(a listing: many jobs in one query of the scheduler, never one per job), ``logs(record, follow, rank)``,
``cancel(record)``, ``output_file(record)`` (the file on this machine that holds rank 0's output, whose tail ``stjobs
status`` reads the job's progress from; None where there is none) and ``output_tail(record, limit_bytes)`` (about the
last ``limit_bytes`` of rank 0's output as text, from a line's start, wherever it lives: a file's tail, or a pod log's
read with one call; "" without output, None when unknown).
Packages are imported on first use, so rendering for one backend never imports another backend's client library;
what several backends share is in ``common``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, cast

from stjobs.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from stjobs.jobs import JobRecord, JobStatus
    from stjobs.plan import Plan
    from stjobs.spec import JobSpec
    from stjobs.sweep import Point
    from stjobs.sweep_jobs import Sweeping


class Backend(Protocol):
    NAME: str

    def render(self, spec: JobSpec, k8s_schemas: Path | None = None) -> Plan: ...

    def render_sweep(self, spec: JobSpec, points: Sequence[Point], k8s_schemas: Path | None = None) -> Plan: ...

    def uses_image(self, spec: JobSpec) -> bool: ...

    def check(self, plan: Plan, **options: Any) -> None: ...

    def submit(self, plan: Plan, **options: Any) -> JobRecord: ...

    def submit_sweep(self, plan: Plan, sweeping: Sweeping, **options: Any) -> list[JobRecord]: ...

    def status(self, record: JobRecord) -> JobStatus: ...

    def statuses(self, records: Sequence[JobRecord]) -> list[JobStatus]: ...

    def logs(self, record: JobRecord, follow: bool = False, rank: int | None = None) -> Iterator[str]: ...

    def cancel(self, record: JobRecord) -> JobStatus: ...

    def output_file(self, record: JobRecord) -> Path | None: ...

    def output_tail(self, record: JobRecord, limit_bytes: int) -> str | None: ...


BACKENDS: dict[str, str] = {
    "local": "stjobs.backends.local",
    "slurm": "stjobs.backends.slurm",
    "k8s": "stjobs.backends.k8s",
}


def backend_module(name: str) -> Backend:
    if name not in BACKENDS:
        raise UsageError(f"backend: got {name!r}; expected one of {', '.join(sorted(BACKENDS))}")
    return cast(Backend, importlib.import_module(BACKENDS[name]))
