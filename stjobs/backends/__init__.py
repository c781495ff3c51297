"""The closed table of backends. Each module offers the same functions:

``render(spec) -> Plan`` (pure), ``submit(plan, ...) -> JobRecord`` (side effects), and for job control
``status(record)``, ``logs(record, follow, rank)``, ``cancel(record)``. Modules are imported on first use, so
rendering for one backend never imports another backend's client library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, cast

from stjobs.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stjobs.jobs import JobRecord, JobStatus
    from stjobs.plan import Plan
    from stjobs.spec import JobSpec


class Backend(Protocol):
    NAME: str

    def render(self, spec: JobSpec) -> Plan: ...

    def submit(self, plan: Plan, **options: Any) -> JobRecord: ...

    def status(self, record: JobRecord) -> JobStatus: ...

    def logs(self, record: JobRecord, follow: bool = False, rank: int | None = None) -> Iterator[str]: ...

    def cancel(self, record: JobRecord) -> JobStatus: ...

BACKENDS: dict[str, str] = {
    "local": "stjobs.backends.local",
    "slurm": "stjobs.backends.slurm",
    "k8s": "stjobs.backends.k8s",
}


def backend_module(name: str) -> Backend:
    if name not in BACKENDS:
        raise UsageError(f"backend: got {name!r}; expected one of {', '.join(sorted(BACKENDS))}")
    return cast(Backend, importlib.import_module(BACKENDS[name]))
