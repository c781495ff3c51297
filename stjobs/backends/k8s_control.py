"""Submit, status, logs and cancel for Kubeflow jobs, through the official kubernetes client.

The only k8s code with side effects. ``kubernetes`` is imported inside the functions (rendering never needs it)
and typed Any (its generated signatures change between releases); every function takes an ``api_client``, and
without one builds it from the user's kubeconfig, located at call time (the library reads $KUBECONFIG once, at
import). Pod lists and logs are read raw (``_preload_content=False``): the client's models differ between releases
and its ``str`` decoding mangles log text.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stjobs import jobs
from stjobs.backends import k8s_manifest
from stjobs.errors import SubmitError
from stjobs.jobs import JobRecord, JobStatus, State
from stjobs.plan import Plan, write_plan

try:  # the C loader is several times faster on these manifests
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

REQUEST_TIMEOUT_S = 30.0  # a hung API server fails the command instead of hanging it
CANCELLED_MARKER = "k8s-cancelled"  # in the job dir: we deleted the object, so its absence is no loss
FINAL_STATE = "k8s-final.json"  # the last finished state seen: the object may go later (TTL, cancel)
TOLD = ("Failed", "Suspended", "Restarting")  # conditions whose message is worth a status line


@dataclass(frozen=True)
class Resource:
    kind: str
    api_version: str
    plural: str
    job_label: str  # the pod label whose value is the job's name
    container: str  # the training container in each pod
    provider: str  # what installs the CRD, for the "not installed" message
    states: dict[str, State]  # condition type (status True) -> our state, in the order of a job's life

    @property
    def group(self) -> str:
        return self.api_version.partition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.partition("/")[2]


RESOURCES = {
    "PyTorchJob": Resource(
        "PyTorchJob", k8s_manifest.PYTORCHJOB_API, "pytorchjobs", "training.kubeflow.org/job-name",
        k8s_manifest.CONTAINER, "training-operator 1.9",
        {"Created": State.PENDING, "Suspended": State.PENDING, "Running": State.RUNNING,
         "Restarting": State.RUNNING, "Succeeded": State.COMPLETED, "Failed": State.FAILED}),
    "TrainJob": Resource(
        "TrainJob", k8s_manifest.TRAINJOB_API, "trainjobs", "jobset.sigs.k8s.io/jobset-name",
        k8s_manifest.TRAINJOB_CONTAINER, "Kubeflow Trainer 2.3",
        {"Created": State.PENDING, "Suspended": State.PENDING, "Complete": State.COMPLETED, "Failed": State.FAILED}),
}
# Pod labels that order a job's pods by node rank: training-operator's replica type and index; JobSet's job
# index and the Job's completion index.
REPLICA_TYPE = "training.kubeflow.org/replica-type"
RANK_LABELS = ("training.kubeflow.org/replica-index", "jobset.sigs.k8s.io/job-index",
               "batch.kubernetes.io/job-completion-index")


def kube() -> Any:
    try:
        import kubernetes.client
        import kubernetes.config
    except ImportError:
        raise SubmitError("k8s: the kubernetes client is not installed; pip install 'stjobs[k8s]'") from None
    return kubernetes


@dataclass(frozen=True)
class Target:
    """One object on one cluster, and the client that reaches it."""

    client: Any
    resource: Resource
    namespace: str
    name: str

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    def custom(self, method: str, *args: Any, **options: Any) -> Any:
        call = getattr(kube().client.CustomObjectsApi(self.client), method)
        r = self.resource
        return call(r.group, r.version, self.namespace, r.plural, *args, _request_timeout=REQUEST_TIMEOUT_S,
                    **options)


def target(record: JobRecord, api_client: Any = None) -> Target:
    """The job's object; refuses a kubeconfig that now points at another cluster, where an object of the same
    name would be someone else's."""
    client = api_client if api_client is not None else new_client()
    submitted_to, now = record.details.get("server"), str(client.configuration.host)
    if submitted_to and submitted_to != now:
        raise SubmitError(f"k8s: job {record.job_id} went to {submitted_to} but the kubeconfig now points at "
                          f"{now}; switch back with kubectl config use-context")
    return Target(client, RESOURCES[str(record.details["kind"])], str(record.details["namespace"]),
                  str(record.details["name"]))


def submit(plan: Plan, api_client: Any = None) -> JobRecord:
    """Create the rendered object with strict field validation; on any failure no job directory is left."""
    from stjobs.backends.k8s import MANIFEST_FILES

    content = next(item.content for item in plan.files if item.path in MANIFEST_FILES.values())
    body = yaml.load(content, Loader=_Loader)
    meta = body["metadata"]
    job = Target(api_client if api_client is not None else new_client(), RESOURCES[body["kind"]],
                 meta.get("namespace", "default"), meta["name"])
    job_id = jobs.new_job_id(plan.job_name)
    job_dir = jobs.jobs_root() / job_id
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
            details = _status_body(error).get("details")
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
        condition = _newest_condition(obj, job.resource)
        kind = str(condition["type"]) if condition else None
        state = job.resource.states[kind] if kind else State.PENDING
        # A TrainJob has no Running condition: a running pod is the sign.
        if job.resource.kind == "TrainJob" and kind in (None, "Created") and any(
                pod.get("status", {}).get("phase") == "Running" for pod in _pods(job)):
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
    marker.write_text("deleted by stjobs cancel\n", encoding="utf-8")  # first: the delete may land and we die
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


def logs(record: JobRecord, follow: bool = False, rank: int | None = None, api_client: Any = None,
         poll_s: float = 1.0) -> Iterator[str]:
    """Each pod's log after a ``==> pod <==`` line, master (rank 0) first; ``rank`` keeps that rank's lines."""
    from stjobs.backends import k8s_logs

    return k8s_logs.logs(record, follow, rank, api_client, poll_s)


def _pods(job: Target) -> list[dict[str, Any]]:
    response = kube().client.CoreV1Api(job.client).list_namespaced_pod(
        job.namespace, label_selector=f"{job.resource.job_label}={job.name}", _preload_content=False,
        _request_timeout=REQUEST_TIMEOUT_S)
    try:
        items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
    finally:
        response.release_conn()
    return sorted(items, key=_rank_order)


def _rank_order(pod: dict[str, Any]) -> tuple[int, int, int, int, str]:
    labels = pod.get("metadata", {}).get("labels") or {}
    master = 0 if str(labels.get(REPLICA_TYPE, "")).lower() == "master" else 1
    replica, job, completion = (int(labels[key]) if str(labels.get(key, "")).isdigit() else 0 for key in RANK_LABELS)
    return master, replica, job, completion, str(pod.get("metadata", {}).get("name", ""))


def new_client() -> Any:
    """An ApiClient from $KUBECONFIG or ~/.kube/config, else from the pod's service account."""
    k8s = kube()
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p] or ["~/.kube/config"]
    if any(Path(p).expanduser().is_file() for p in paths):
        try:
            return k8s.config.new_client_from_config(config_file=os.pathsep.join(paths))
        except Exception as error:  # the loader raises yaml, key, value and its own errors alike
            raise SubmitError(f"k8s: cannot use kubeconfig {os.pathsep.join(paths)}: {one_line(error)}") from None
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.client.Configuration()
        try:
            k8s.config.load_incluster_config(client_configuration=configuration)
        except k8s.config.ConfigException as error:
            raise SubmitError(f"k8s: in-cluster config: {one_line(error)}") from None
        return k8s.client.ApiClient(configuration)
    raise SubmitError("k8s: no kubeconfig ($KUBECONFIG unset, no ~/.kube/config) and not inside a cluster; "
                      "point KUBECONFIG at your cluster's config")


@contextlib.contextmanager
def api_errors(host: str, action: str) -> Iterator[None]:
    """The client's exceptions as one-line SubmitErrors: the HTTP status and the server's own message."""
    api_exception = kube().client.exceptions.ApiException
    import urllib3  # the client's transport, installed with it

    try:
        yield
    except api_exception as error:
        if not error.status:  # the client's own transport errors (TLS) come as status 0
            raise SubmitError(f"k8s: cannot reach the API server at {host} ({one_line(error.reason)})") from None
        raise SubmitError(f"k8s: the API server refused {action}: {error.status} {server_message(error)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise SubmitError(f"k8s: cannot reach the API server at {host} ({_transport_reason(error)})") from None


def _status_body(error: Any) -> dict[str, Any]:
    try:
        data = json.loads(error.body or "")
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def server_message(error: Any) -> str:
    """The ``message`` of the API server's Status body; its raw text or the HTTP reason when it sent none."""
    message = _status_body(error).get("message")
    return one_line(message or (error.body or "").strip() or error.reason or "no message")


def _transport_reason(error: BaseException) -> str:
    found = re.search(r"\[Errno -?\d+\] [^'\")]+", str(error))  # e.g. [Errno 111] Connection refused
    return found.group(0).strip() if found else one_line(getattr(error, "reason", None) or error)


def one_line(text: object, limit: int = 2000) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
