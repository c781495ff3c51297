"""Pipelines: a job that starts only once others have ended (``stjobs submit b.yaml --after JOB``).

A dependency is a submit-time fact, never part of the rendered files: the job it waits for has an id only once it
was submitted, and a render stays the same for the same spec. SLURM waits itself (``sbatch --dependency``, with the
SLURM id behind our job id, and ``--kill-on-invalid-dep`` for what happens when it can never be met); a local job's
supervisor waits before it starts a node; Kubernetes has no dependency between jobs, so it is refused there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from stjobs.errors import InputError, UsageError

if TYPE_CHECKING:
    from stjobs.jobs import JobStatus

KINDS = {"ok": "afterok", "any": "afterany"}  # ours -> SLURM's word
IF_FAILS = ("cancel", "keep")  # a dependency that can never be met: cancel the waiting job, or keep it pending
DEFAULT_IF_FAILS = "cancel"
K8S_REFUSAL = ("expected --backend slurm or local: Kubernetes has no dependency between jobs (a workflow engine "
               "you already run, such as Argo Workflows or Kubeflow Pipelines, can chain them; or submit the "
               "second job when the first has ended)")


@dataclass(frozen=True)
class After:
    """Wait for job ``job_id`` (of this backend) to end well (``ok``) or at all (``any``). ``slurm_id``: the SLURM
    job id behind it; ``job_dir``: its directory, where a local job's supervisor reads its state."""

    kind: str
    job_id: str
    job_dir: str
    slurm_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> After | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(kind=str(data["kind"]), job_id=str(data["job_id"]), job_dir=str(data["job_dir"]),
                       slurm_id=None if data.get("slurm_id") is None else str(data["slurm_id"]))
        except KeyError:
            return None


def recorded(details: dict[str, Any]) -> list[After]:
    """The dependencies a job record holds (``details["after"]``, written at submit)."""
    listed = details.get("after")
    if not isinstance(listed, list):
        return []
    return [item for item in map(After.from_json, listed) if item is not None]


def met(kind: str, state: str) -> bool | None:
    """Whether a dependency of ``kind`` on a job in ``state`` (a :class:`stjobs.jobs.State` value) is met: True,
    False (never will be: the job ended another way), or None (not yet: it has not ended)."""
    finished = state in ("COMPLETED", "FAILED", "CANCELLED", "LOST")
    if not finished:
        return None
    return state == "COMPLETED" or kind == "any"


def slurm_dependency(after: Sequence[After]) -> str:
    """``afterok:12:13,afterany:14``: sbatch's --dependency value, every condition required (``,``)."""
    ids: dict[str, list[str]] = {}
    for item in after:
        if item.slurm_id is None:
            raise ValueError(f"{item.job_id} has no SLURM id")
        ids.setdefault(KINDS[item.kind], []).append(item.slurm_id)
    return ",".join(":".join([word, *numbers]) for word, numbers in ids.items())


def flag(kind: str) -> str:
    return "--after-any" if kind == "any" else "--after"


def dependencies(after: Sequence[tuple[str, str]], backend: str, if_fails: str,
                 status_of: Callable[[str], JobStatus]) -> tuple[After, ...]:
    """The jobs a new job must wait for, each checked now (``status_of``: a job id's status): of the same backend
    and able to be met. One that has met it already (it completed) needs no waiting and is left out; one that never
    can is refused, before anything is written."""
    if if_fails not in IF_FAILS:
        raise InputError("--if-dependency-fails", if_fails, " or ".join(IF_FAILS))
    if after and backend == "k8s":
        raise UsageError(f"{flag(after[0][0])}: got {after[0][1]!r} with --backend k8s; {K8S_REFUSAL}")
    waits: list[After] = []
    for kind, job_id in after:
        if kind not in KINDS:
            raise InputError("after", kind, " or ".join(KINDS))
        job = status_of(job_id)
        record = job.record
        if record.backend != backend:
            raise UsageError(f"{flag(kind)}: got {record.job_id} ({record.backend}); expected a job of backend "
                             f"{backend}: a {backend} job can wait only for {backend} jobs")
        done = met(kind, job.state.value)
        if done is False:
            raise UsageError(f"{flag(kind)}: got {record.job_id}, which ended {job.state.value}; expected a job "
                             f"that can still complete (--after-any waits for any end)")
        if done is None:
            slurm_id = record.details.get("slurm_job_id")
            waits.append(After(kind, record.job_id, record.job_dir, str(slurm_id) if slurm_id else None))
    return tuple(waits)
