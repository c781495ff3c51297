"""Kubeflow manifests built as data: a PyTorchJob (kubeflow.org/v1) or a TrainJob (trainer.kubeflow.org/v1alpha1).

Both run the same torchrun argv, which reads the job's shape from the ``PET_*`` variables the operator injects
(PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR/PORT, PET_NPROC_PER_NODE; PET_RDZV_* for elastic jobs), so the manifest
never states it twice. Note that the training operator's own RANK and WORLD_SIZE count pods, not processes:
torchrun replaces them in each worker.

Kubernetes expands ``$(NAME)`` in command, args and env values; a user's ``$`` is doubled so it arrives as typed.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from stjobs.launch import Arg, LaunchPlan, Ref
from stjobs.spec import JobSpec
from stjobs.spec_k8s import Kind, Scheduler

PYTORCHJOB_API = "kubeflow.org/v1"
TRAINJOB_API = "trainer.kubeflow.org/v1alpha1"
CONTAINER = "pytorch"  # the training operator finds the container by this name
PORT_NAME = "pytorchjob-port"  # ... and MASTER_PORT by this port name
TRAINJOB_CONTAINER = "node"  # the container of the torch-distributed runtime's "node" replicated job
DEFAULT_PORT = 29500
LOG_DIR = "/tmp/stjobs/logs"
PATCH_MANAGER = "stjobs"
SCHEDULER_NAMES = {Scheduler.volcano: "volcano", Scheduler.scheduler_plugins: "scheduler-plugins-scheduler"}
# Values the node script provides elsewhere; in a pod they are fixed paths of the image.
RUNTIME_VALUES = {"STJOBS_PYTHON": "python", "STJOBS_LOG_DIR": LOG_DIR}

# Run by the workers' init container: DNS alone is not enough (pytorch-operator #125, #333), the master's
# rendezvous port must answer before torchrun starts, or the worker fails at once and burns a restart.
WAIT_FOR_MASTER = """\
import socket, sys, time
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + limit
while True:
    try:
        socket.create_connection((host, port), timeout=5).close()
        break
    except OSError as error:
        if time.monotonic() > deadline:
            sys.exit(f"stjobs: {host}:{port} did not answer within {limit:.0f} s ({error})")
        time.sleep(2)
print(f"stjobs: {host}:{port} answers", flush=True)
"""


def k8s_text(value: str) -> str:
    """Escape Kubernetes' ``$(VAR)`` expansion: ``$$`` is read as ``$``, so doubling every ``$`` is exact."""
    return value.replace("$", "$$")


def k8s_args(argv: tuple[Arg, ...]) -> list[str]:
    return [arg.resolve(RUNTIME_VALUES) if isinstance(arg, Ref) else k8s_text(arg) for arg in argv]


def port(spec: JobSpec) -> int:
    # Each pod has its own network namespace: a fixed port cannot collide with another job's.
    return spec.rendezvous.port or DEFAULT_PORT


def secret_name(spec: JobSpec) -> str:
    return spec.k8s.secret_name or f"{spec.name}-secrets"


def output_dir(spec: JobSpec) -> str:
    if spec.k8s.pvc and not spec.output_dir.startswith("/"):
        return f"{spec.k8s.pvc_mount_path.rstrip('/')}/{spec.output_dir}"
    return spec.output_dir


# On every object and pod stjobs creates: `stjobs status` lists its jobs by this label, one call per namespace.
MANAGER_LABEL, MANAGER = "app.kubernetes.io/managed-by", "stjobs"


def labels(spec: JobSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name, MANAGER_LABEL: MANAGER}


def env_list(spec: JobSpec, launch: LaunchPlan) -> list[dict[str, Any]]:
    values = dict(launch.env)
    values["STJOBS_OUTPUT_DIR"] = output_dir(spec)
    values["STJOBS_LOG_DIR"] = LOG_DIR
    hf_home = cache_home(spec)
    if hf_home is not None:
        values["HF_HOME"] = hf_home
    env: list[dict[str, Any]] = [{"name": key, "value": k8s_text(value)} for key, value in sorted(values.items())]
    # Secrets by reference only: the value lives in a Secret object, never in this file.
    env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name(spec), "key": key}}}
            for key in spec.secrets]
    return env


def resources(spec: JobSpec) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": spec.cpus_per_task}
    limits: dict[str, Any] = {}
    if spec.mem_gb is not None:
        requests["memory"] = limits["memory"] = _quantity(spec.mem_gb)
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = spec.gpus_per_node  # extended resources go in limits; requests follow
    if cache_place(spec) is CachePlace.ephemeral and spec.k8s.cache_gb is not None:
        # Reserved, not limited: the scheduler places the pod where the cache fits, and a larger download is not
        # an eviction (a limit or an emptyDir sizeLimit would evict the pod mid-run).
        requests["ephemeral-storage"] = _quantity(spec.k8s.cache_gb)
    # No CPU limit: CFS throttling slows data loading and collectives; the request reserves the cores.
    out: dict[str, Any] = {"requests": requests}
    if limits:
        out["limits"] = limits
    return out


def _quantity(gb: float) -> str:
    return f"{int(gb)}Gi" if gb == int(gb) else f"{math.ceil(gb * 1024)}Mi"


class CachePlace(str, Enum):
    """Where a pod's Hugging Face cache lives. The image's HF_HOME is a Dockerfile VOLUME, which Kubernetes does
    not keep: without one of these every pod and every restart downloads the model and data again."""

    user = "user"  # the spec's env sets HF_HOME: stjobs leaves it alone
    cache_pvc = "cache-pvc"  # a PVC of its own (k8s.cache_pvc), mounted at CACHE_MOUNT: kept across jobs
    pvc = "pvc"  # a directory on the job's PVC (k8s.pvc): kept across restarts and jobs on that PVC
    ephemeral = "ephemeral"  # an emptyDir: kept across container restarts in a pod, lost with the pod


CACHE_MOUNT = "/cache/huggingface"  # the stjobs image's HF_HOME (images/renderer.py), so its VOLUME is covered
CACHE_VOLUME, OUTPUTS_VOLUME = "hf-cache", "outputs"


def cache_place(spec: JobSpec) -> CachePlace:
    if "HF_HOME" in spec.env:
        return CachePlace.user
    if spec.k8s.cache_pvc:
        return CachePlace.cache_pvc
    return CachePlace.pvc if spec.k8s.pvc else CachePlace.ephemeral


def cache_home(spec: JobSpec) -> str | None:
    """The HF_HOME the pods get (stated, so an image not built by stjobs uses it too); None: the spec's own."""
    place = cache_place(spec)
    if place is CachePlace.user:
        return None
    if place is CachePlace.pvc:
        return f"{spec.k8s.pvc_mount_path.rstrip('/')}/cache/huggingface"
    return CACHE_MOUNT


def grace_s(spec: JobSpec) -> int | None:
    """terminationGracePeriodSeconds: the time between SIGTERM (preemption, deletion, the deadline) and SIGKILL.
    A resumable entrypoint saves on SIGTERM and gets the spec's signal lead for it, as SLURM gives it; None
    leaves Kubernetes' 30 s, too short to save a 133M model with its optimizer state."""
    if spec.k8s.grace_s is not None:
        return spec.k8s.grace_s
    return spec.slurm.signal_lead_s if spec.entrypoint.resumable and spec.slurm.signal_lead_s else None


def volumes(spec: JobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """/dev/shm as memory (the 64 MiB default breaks DataLoader workers and NCCL), the outputs PVC and the
    Hugging Face cache (cache_place)."""
    shm: dict[str, Any] = {"medium": "Memory"}
    if spec.k8s.shm_gb is not None:
        shm["sizeLimit"] = f"{math.ceil(spec.k8s.shm_gb * 1024)}Mi"
    vols: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": shm}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if spec.k8s.pvc:
        vols.append({"name": OUTPUTS_VOLUME, "persistentVolumeClaim": {"claimName": spec.k8s.pvc}})
        mounts.append({"name": OUTPUTS_VOLUME, "mountPath": spec.k8s.pvc_mount_path})
    place = cache_place(spec)
    if place is CachePlace.cache_pvc:
        vols.append({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": spec.k8s.cache_pvc}})
    elif place is CachePlace.ephemeral:
        vols.append({"name": CACHE_VOLUME, "emptyDir": {}})
    if place in (CachePlace.cache_pvc, CachePlace.ephemeral):
        mounts.append({"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT})
    return vols, mounts


def pod_security(spec: JobSpec) -> dict[str, Any]:
    uid = spec.build.uid  # the image's USER: one source
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def container(spec: JobSpec, launch: LaunchPlan, name: str, ports: bool = False) -> dict[str, Any]:
    _, mounts = volumes(spec)
    out: dict[str, Any] = {"name": name, "image": spec.image, "imagePullPolicy": "IfNotPresent",
                           "command": k8s_args(launch.argv)}
    if ports:
        out["ports"] = [{"name": PORT_NAME, "containerPort": port(spec), "protocol": "TCP"}]
    out.update({"env": env_list(spec, launch),
                "resources": resources(spec), "volumeMounts": mounts, "securityContext": CONTAINER_SECURITY})
    if spec.workdir.startswith("/"):
        out["workingDir"] = spec.workdir
    return out


def pod_spec(spec: JobSpec, launch: LaunchPlan, wait_for: str | None) -> dict[str, Any]:
    k8s = spec.k8s
    main = container(spec, launch, CONTAINER, ports=True)
    vols, _ = volumes(spec)
    out: dict[str, Any] = {}
    if k8s.service_account:
        out["serviceAccountName"] = k8s.service_account
    if k8s.priority_class:
        out["priorityClassName"] = k8s.priority_class
    if k8s.scheduler in SCHEDULER_NAMES:
        out["schedulerName"] = SCHEDULER_NAMES[k8s.scheduler]
    if k8s.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": name} for name in k8s.image_pull_secrets]
    if k8s.node_selector:
        out["nodeSelector"] = dict(k8s.node_selector)
    if k8s.tolerations:
        out["tolerations"] = [dict(item) for item in k8s.tolerations]
    if k8s.affinity:
        out["affinity"] = k8s.affinity
    out["securityContext"] = pod_security(spec)
    grace = grace_s(spec)
    if grace is not None:
        out["terminationGracePeriodSeconds"] = grace
    if wait_for is not None:
        out["initContainers"] = [{
            "name": "wait-for-master", "image": spec.image, "imagePullPolicy": "IfNotPresent",
            "command": ["python", "-c", k8s_text(WAIT_FOR_MASTER), wait_for, str(port(spec)),
                        str(spec.rendezvous.timeout_s)],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
            "securityContext": CONTAINER_SECURITY,
        }]
    out["containers"] = [main]
    out["volumes"] = vols
    return out


def pod_metadata(spec: JobSpec) -> dict[str, Any]:
    """The pod template's metadata: stjobs' labels plus the spec's own, and the spec's annotations."""
    out: dict[str, Any] = {"labels": {**labels(spec), **spec.k8s.pod_labels}}
    if spec.k8s.pod_annotations:
        out["annotations"] = dict(spec.k8s.pod_annotations)
    return out


def metadata(spec: JobSpec) -> dict[str, Any]:
    meta_labels = labels(spec)
    if spec.k8s.scheduler is Scheduler.kueue and spec.k8s.queue:
        meta_labels["kueue.x-k8s.io/queue-name"] = spec.k8s.queue
    return {"name": spec.name, "namespace": spec.k8s.namespace, "labels": meta_labels}


def pytorchjob(spec: JobSpec, launch: LaunchPlan) -> dict[str, Any]:
    k8s = spec.k8s
    template_meta = pod_metadata(spec)

    def replica(count: int, wait_for: str | None) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": k8s.restart_policy.value,
                "template": {"metadata": template_meta, "spec": pod_spec(spec, launch, wait_for)}}

    job_spec: dict[str, Any] = {"nprocPerNode": str(spec.procs_per_node)}
    if spec.elastic:
        # Elastic jobs are all Workers: the operator points PET_RDZV_ENDPOINT at <name>-worker-0 and torchrun's
        # c10d rendezvous admits between min and max nodes. No wait-for-master: worker-0 would wait for itself.
        job_spec["elasticPolicy"] = {
            "minReplicas": spec.min_nodes, "maxReplicas": spec.nodes, "rdzvBackend": "c10d",
            "maxRestarts": spec.max_restarts,
            "rdzvConf": [{"key": "join_timeout", "value": str(spec.rendezvous.timeout_s)}],
        }
        replicas = {"Worker": replica(spec.nodes, None)}
    else:
        replicas = {"Master": replica(1, None)}
        if spec.nodes > 1:
            master = f"{spec.name}-master-0" if k8s.wait_for_master else None
            replicas["Worker"] = replica(spec.nodes - 1, master)
    run_policy: dict[str, Any] = {"backoffLimit": k8s.backoff_limit, "cleanPodPolicy": k8s.clean_pod_policy.value,
                                  "activeDeadlineSeconds": spec.time_min * 60}
    if k8s.ttl_after_finished_s is not None:
        run_policy["ttlSecondsAfterFinished"] = k8s.ttl_after_finished_s
    if k8s.scheduler in SCHEDULER_NAMES:
        # Gang scheduling: all pods or none, so a half-placed job never holds GPUs waiting for the rest.
        policy: dict[str, Any] = {"minAvailable": spec.min_nodes or spec.nodes}
        if k8s.queue:
            policy["queue"] = k8s.queue
        if k8s.priority_class:
            policy["priorityClass"] = k8s.priority_class
        run_policy["schedulingPolicy"] = policy
    job_spec["runPolicy"] = run_policy
    job_spec["pytorchReplicaSpecs"] = replicas
    return {"apiVersion": PYTORCHJOB_API, "kind": "PyTorchJob", "metadata": metadata(spec), "spec": job_spec}


def trainjob(spec: JobSpec, launch: LaunchPlan) -> dict[str, Any]:
    """The trainer fields carry image, command, env and size; everything about the pod goes through one
    runtimePatches entry (Trainer 2.2+; podTemplateOverrides is gone), owned by the manager 'stjobs'."""
    k8s = spec.k8s
    main = container(spec, launch, TRAINJOB_CONTAINER)
    trainer: dict[str, Any] = {"image": spec.image, "command": main["command"], "env": main["env"],
                               "numNodes": spec.nodes, "numProcPerNode": spec.procs_per_node,
                               "resourcesPerNode": main["resources"]}
    pod = pod_spec(spec, launch, None)
    patch_pod: dict[str, Any] = {key: pod[key] for key in ("serviceAccountName", "imagePullSecrets", "nodeSelector",
                                                           "tolerations", "affinity", "securityContext",
                                                           "terminationGracePeriodSeconds", "volumes")
                                 if key in pod}
    patch_container = {"name": TRAINJOB_CONTAINER, "volumeMounts": main["volumeMounts"],
                       "securityContext": CONTAINER_SECURITY}
    patch_pod["containers"] = [patch_container]
    patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": TRAINJOB_CONTAINER, "template": {"spec": {"template": {
            "metadata": pod_metadata(spec), "spec": patch_pod}}}}]}}}}
    job_spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": k8s.runtime},
        "trainer": trainer, "runtimePatches": [patch], "activeDeadlineSeconds": spec.time_min * 60}
    return {"apiVersion": TRAINJOB_API, "kind": "TrainJob", "metadata": metadata(spec), "spec": job_spec}


def build(spec: JobSpec, launch: LaunchPlan) -> dict[str, Any]:
    return trainjob(spec, launch) if spec.k8s.kind is Kind.trainjob else pytorchjob(spec, launch)
