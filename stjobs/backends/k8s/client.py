"""The kubernetes client as stjobs uses it: which object a job is, how to reach it, and its errors in one line.

``kubernetes`` is imported inside the functions (rendering never needs it) and typed Any (its generated
signatures change between releases); every caller may pass an ``api_client``, and without one it is built from
the user's kubeconfig, located at call time (the library reads $KUBECONFIG once, at import). Pod lists are read
raw (``_preload_content=False``): the client's models differ between releases.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stjobs.backends.k8s import manifest as k8s_manifest
from stjobs.errors import SubmitError
from stjobs.jobs import JobRecord, State

REQUEST_TIMEOUT_S = 30.0  # a hung API server fails the command instead of hanging it


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


def pods(job: Target) -> list[dict[str, Any]]:
    return sorted(list_pods(job.client, job.namespace, f"{job.resource.job_label}={job.name}"), key=_rank_order)


def rank0_pod(job: Target) -> str | None:
    """The name of the pod of node rank 0 (the master; node 0 of a TrainJob), None before it exists or once it
    is gone. Of several (a TrainJob's Job replaced a failed pod under a new name), the running one, else the
    newest."""
    found = pods(job)
    if not found:
        return None
    first = _rank_order(found[0])[:4]
    chosen = max((pod for pod in found if _rank_order(pod)[:4] == first),
                 key=lambda pod: (pod.get("status", {}).get("phase") == "Running",
                                  str(pod.get("metadata", {}).get("creationTimestamp") or "")))
    return str(chosen["metadata"]["name"])


def list_pods(client: Any, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """The pods of ``namespace`` that ``label_selector`` selects, as the server's JSON."""
    response = kube().client.CoreV1Api(client).list_namespaced_pod(
        namespace, label_selector=label_selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S)
    try:
        items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
    finally:
        response.release_conn()
    return items


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


def status_body(error: Any) -> dict[str, Any]:
    try:
        data = json.loads(error.body or "")
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def server_message(error: Any) -> str:
    """The ``message`` of the API server's Status body; its raw text or the HTTP reason when it sent none."""
    message = status_body(error).get("message")
    return one_line(message or (error.body or "").strip() or error.reason or "no message")


def _transport_reason(error: BaseException) -> str:
    found = re.search(r"\[Errno -?\d+\] [^'\")]+", str(error))  # e.g. [Errno 111] Connection refused
    return found.group(0).strip() if found else one_line(getattr(error, "reason", None) or error)


def one_line(text: object, limit: int = 2000) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
