"""Submit, status and cancel of Kubeflow jobs, through the official kubernetes client.

The only k8s code with side effects (logs are read by logstream). Every function takes an ``api_client``; see
:mod:`stjobs.backends.k8s.client` for how one is found without it.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stjobs import jobs, yamlio
from stjobs.backends.k8s.client import (
    RESOURCES,
    Resource,
    Target,
    api_errors,
    kube,
    list_pods,
    new_client,
    one_line,
    pods,
    status_body,
    target,
)
from stjobs.backends.k8s.manifest import MANAGER, MANAGER_LABEL
from stjobs.backends.k8s.renderer import MANIFEST_FILES
from stjobs.errors import SubmitError
from stjobs.jobs import JobRecord, JobStatus, State
from stjobs.plan import Plan, write_plan

if TYPE_CHECKING:
    from stjobs.sweep_jobs import Sweeping

CANCELLED_MARKER = "k8s-cancelled"  # in the job dir: we deleted the object, so its absence is no loss
FINAL_STATE = "k8s-final.json"  # the last finished state seen: the object may go later (TTL, cancel)
TOLD = ("Failed", "Suspended", "Restarting")  # conditions whose message is worth a status line


def submit(plan: Plan, api_client: Any = None, into: tuple[str, Path] | None = None) -> JobRecord:
    """Create the rendered object with strict field validation; on any failure no job directory is left.
    ``into``: the job id and directory to use (a sweep's point) instead of new ones."""
    content = next(item.content for item in plan.files if item.path in MANIFEST_FILES.values())
    body = yamlio.read(content)
    meta = body["metadata"]
    job = Target(api_client if api_client is not None else new_client(), RESOURCES[body["kind"]],
                 meta.get("namespace", "default"), meta["name"])
    job_id, job_dir = jobs.new_job(plan.job_name, into)
    write_plan(plan, job_dir)
    created = False
    try:
        with api_errors(job.host, f"{job.resource.kind} {job.name}"):
            _create(job, body)
        created = True
        r = job.resource
        record = JobRecord(job_id=job_id, backend="k8s", name=plan.job_name, job_dir=str(job_dir),
                           submitted_at=time.time(), nodes=plan.spec.nodes, procs_per_node=plan.spec.procs_per_node,
                           details={"namespace": job.namespace, "name": job.name, "kind": r.kind, "group": r.group,
                                    "version": r.version, "plural": r.plural, "server": job.host})
        record.save()
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        if created:  # the record could not be saved: take the object back rather than leave it untracked
            with contextlib.suppress(Exception):
                job.custom("delete_namespaced_custom_object", job.name, propagation_policy="Foreground")
        raise
    return record


def submit_sweep(plan: Plan, sweeping: Sweeping, api_client: Any = None) -> list[JobRecord]:
    """A sweep's points, one object each (they share the sweep's label); an object that cannot be created stops
    the rest, and the ones created before it are taken back, so a sweep is submitted whole or not at all."""
    client = api_client if api_client is not None else new_client()
    records: list[JobRecord] = []
    try:
        for index in sweeping.indices:
            records.append(submit(plan.points[index], client, (sweeping.point_id(index), sweeping.point_dir(index))))
    except BaseException:
        for record in records:
            with contextlib.suppress(Exception):
                cancel(record, client, wait_s=0)
        raise
    return records


def _create(job: Target, body: dict[str, Any]) -> None:
    r, name, namespace = job.resource, job.name, job.namespace
    try:
        job.custom("create_namespaced_custom_object", body, field_validation="Strict")
    except kube().client.exceptions.ApiException as error:
        if error.status == 409:
            earlier = [old.job_id for old in jobs.list_records() if old.backend == "k8s"
                       and (old.details.get("name"), old.details.get("namespace")) == (name, namespace)]
            how = f"stjobs cancel {earlier[-1]}" if earlier else "stjobs cancel"
            raise SubmitError(f"k8s: {r.kind} {name} already exists in namespace {namespace} (delete it with {how} "
                              f"or kubectl delete {r.plural}.{r.group} {name} -n {namespace})") from None
        if error.status == 404:
            details = status_body(error).get("details")
            if isinstance(details, dict) and details.get("kind") == "namespaces":
                raise SubmitError(f"k8s: namespace {namespace} does not exist (kubectl create namespace "
                                  f"{namespace}, or set k8s.namespace)") from None
            raise SubmitError(f"k8s: the {r.kind} CRD is not installed ({r.provider}): the API server has no "
                              f"{r.plural}.{r.group}/{r.version}") from None
        raise


def status(record: JobRecord, api_client: Any = None) -> JobStatus:
    job = target(record, api_client)
    with api_errors(job.host, f"reading {job.resource.kind} {job.name}"):
        try:
            obj = job.custom("get_namespaced_custom_object", job.name)
        except kube().client.exceptions.ApiException as error:
            if error.status == 404:
                return _gone(record)
            raise
        return _judge(record, job.resource, obj,
                      lambda: any(pod.get("status", {}).get("phase") == "Running" for pod in pods(job)))


def statuses(records: Sequence[JobRecord], api_client: Any = None) -> list[JobStatus]:
    """Many jobs from one list call per kind and namespace, selected by the label stjobs puts on every object
    (``MANAGER_LABEL``), and for TrainJobs waiting to run one pod list of their namespace; not one call per job.
    A job the list lacks is known finished (its kept outcome) or asked for by name (an object whose label was
    removed); a kubeconfig now pointing elsewhere, or a list the server refuses, gives those jobs UNKNOWN."""
    client = api_client if api_client is not None else new_client()
    found: dict[int, JobStatus] = {}
    groups: dict[tuple[str, str], list[tuple[int, Target]]] = {}
    for index, record in enumerate(records):
        try:
            job = target(record, client)
        except SubmitError as error:
            found[index] = JobStatus(record, State.UNKNOWN, reason=str(error))
            continue
        groups.setdefault((job.resource.kind, job.namespace), []).append((index, job))
    for members in groups.values():
        for index, current in _list_group([(records[index], job) for index, job in members]):
            found[members[index][0]] = current
    return [found[index] for index in range(len(records))]


def _list_group(members: list[tuple[JobRecord, Target]]) -> Iterator[tuple[int, JobStatus]]:
    """The statuses of jobs of one kind in one namespace, by their index in ``members``."""
    first = members[0][1]
    resource, namespace = first.resource, first.namespace
    try:
        with api_errors(first.host, f"listing {resource.plural} in namespace {namespace}"):
            answer = first.custom("list_namespaced_custom_object", label_selector=f"{MANAGER_LABEL}={MANAGER}")
    except SubmitError as error:
        yield from ((index, JobStatus(record, State.UNKNOWN, reason=str(error)))
                    for index, (record, _) in enumerate(members))
        return
    listed = {str(obj.get("metadata", {}).get("name")): obj for obj in answer.get("items") or []}
    running = _RunningPods(first, [job.name for _, job in members
                                   if job.name in listed and _waiting_to_run(listed[job.name], resource)])
    for index, (record, job) in enumerate(members):
        obj = listed.get(job.name)
        try:
            if obj is not None:
                with api_errors(job.host, f"listing the pods of {resource.kind} {job.name}"):
                    yield index, _judge(record, resource, obj, functools.partial(running.has, job.name))
            elif _kept_outcome(record):
                yield index, _gone(record)
            else:
                yield index, status(record, job.client)
        except SubmitError as error:
            yield index, JobStatus(record, State.UNKNOWN, reason=str(error))


class _RunningPods:
    """Which of some jobs have a running pod: one pod list for all of them (``CHUNK`` names a call), made when
    first asked."""

    CHUNK = 100

    def __init__(self, job: Target, names: list[str]) -> None:
        self.job, self.names = job, names
        self.running: set[str] | None = None

    def has(self, name: str) -> bool:
        if self.running is None:
            label, running = self.job.resource.job_label, set[str]()
            for start in range(0, len(self.names), self.CHUNK):
                chosen = ",".join(self.names[start:start + self.CHUNK])
                running.update(str(pod.get("metadata", {}).get("labels", {}).get(label))
                               for pod in list_pods(self.job.client, self.job.namespace, f"{label} in ({chosen})")
                               if pod.get("status", {}).get("phase") == "Running")
            self.running = running  # only once every list answered: a failed one is asked again
        return name in self.running


def _waiting_to_run(obj: dict[str, Any], resource: Resource) -> bool:
    """A TrainJob has no Running condition: before it has another, a running pod is the sign it runs."""
    condition = _newest_condition(obj, resource)
    return resource.kind == "TrainJob" and (condition is None or condition["type"] == "Created")


def _judge(record: JobRecord, resource: Resource, obj: dict[str, Any], has_running_pod: Callable[[], bool]
           ) -> JobStatus:
    """One job's status from its object (and, for a TrainJob that has no Running condition, its pods)."""
    condition = _newest_condition(obj, resource)
    kind = str(condition["type"]) if condition else None
    state = resource.states[kind] if kind else State.PENDING
    if _waiting_to_run(obj, resource) and has_running_pod():
        state = State.RUNNING
    reason = ""
    if condition is not None and kind in TOLD:
        reason = one_line(condition.get("message") or condition.get("reason") or kind)
    if obj.get("metadata", {}).get("deletionTimestamp") and not state.finished:
        reason = "being deleted (its pods stop first)"
    final = Path(record.job_dir) / FINAL_STATE
    if state.finished and not final.exists():
        with contextlib.suppress(OSError):  # a job dir removed by hand: the status still stands
            jobs.write_json(final, {"state": state.value, "reason": reason})
    return JobStatus(record, state, reason=reason)


def _newest_condition(obj: dict[str, Any], resource: Resource) -> dict[str, Any] | None:
    """The newest True condition (None before the operator has seen the job); a tie (same second) goes to the
    later state in a job's life."""
    order = list(resource.states)
    conditions = [c for c in obj.get("status", {}).get("conditions") or []
                  if c.get("status") == "True" and c.get("type") in resource.states]
    return max(conditions, key=lambda c: (str(c.get("lastTransitionTime") or ""), order.index(c["type"])),
               default=None)


def _kept_outcome(record: JobRecord) -> bool:
    """Whether a job gone from the cluster is known to have ended: finished and seen so, or cancelled by us."""
    job_dir = Path(record.job_dir)
    return (job_dir / FINAL_STATE).exists() or (job_dir / CANCELLED_MARKER).exists()


def _gone(record: JobRecord) -> JobStatus:
    job_dir = Path(record.job_dir)
    final = jobs.read_json(job_dir / FINAL_STATE)
    if final is not None:  # finished, then deleted (TTL or cancel): it stays finished
        return JobStatus(record, State(str(final["state"])), reason=str(final.get("reason") or ""))
    if (job_dir / CANCELLED_MARKER).exists():
        return JobStatus(record, State.CANCELLED)
    return JobStatus(record, State.LOST, reason="the object is gone from the cluster")


def cancel(record: JobRecord, api_client: Any = None, wait_s: float = 60.0) -> JobStatus:
    """Delete the object, even a finished one (its name blocks a resubmission), with foreground propagation so
    the pods go first; then wait until it is gone."""
    job = target(record, api_client)
    status(record, job.client)  # a finished outcome is kept (FINAL_STATE) before the object goes
    marker = Path(record.job_dir) / CANCELLED_MARKER
    # the marker first: the delete may land and we die
    marker.write_text("deleted by stjobs cancel\n", encoding="utf-8", newline="\n")
    try:
        with api_errors(job.host, f"deleting {job.resource.kind} {job.name}"):
            try:
                job.custom("delete_namespaced_custom_object", job.name, propagation_policy="Foreground")
            except kube().client.exceptions.ApiException as error:
                if error.status != 404:
                    raise
                marker.unlink()  # gone before we came: not ours to call cancelled
    except BaseException:
        marker.unlink(missing_ok=True)
        raise
    return jobs.wait_until_finished(lambda: status(record, job.client), wait_s)
