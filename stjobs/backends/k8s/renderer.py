"""Rendering a Kubeflow PyTorchJob (default) or TrainJob for ``kubectl apply -k``.

The manifest is built as data (manifest.py) and written by PyYAML (stjobs.yamlio); it is checked at render time
by stjobs' own rules (checks.py) and, when the CRD schemas are at hand (``k8s_schemas``: the CLI's
``--k8s-schemas`` or ``STJOBS_K8S_SCHEMAS``), strictly against the official CRD: unknown fields fail here
instead of being pruned by the API server.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from stjobs import yamlio
from stjobs.backends.common import spec_file, sweep_plan
from stjobs.backends.k8s import manifest as k8s_manifest
from stjobs.backends.k8s.checks import check_manifest
from stjobs.backends.k8s.manifest import CachePlace
from stjobs.errors import SpecError
from stjobs.launch import build_launch
from stjobs.plan import Plan, RenderedFile
from stjobs.spec import JobSpec
from stjobs.spec_image import IMAGE_WORKDIR, CodeMode
from stjobs.spec_k8s import K8sOptions, Kind, Scheduler

if TYPE_CHECKING:
    from stjobs.sweep import Point

NAME = "k8s"
KUSTOMIZATION = "kustomization.yaml"
MANIFEST_FILES = {Kind.pytorchjob: "pytorchjob.yaml", Kind.trainjob: "trainjob.yaml"}

def render(spec: JobSpec, k8s_schemas: Path | None = None, labels: dict[str, str] | None = None) -> Plan:
    """The manifest and its kustomization; with ``k8s_schemas`` (a directory of the Kubeflow CRD files) checked
    strictly against the official CRD and the core pod schema, else the plan notes that the check was skipped.
    ``labels``: more labels on the object (a sweep's)."""
    if spec.image is None:
        raise SpecError("image", None, "a container image for the k8s backend: pass --image REF or set image: "
                        "in the spec (e.g. ghcr.io/org/train:1.0)")
    if spec.k8s.kind is Kind.trainjob:
        _refuse_for_trainjob(spec)
    elif spec.workdir not in (".", "./") and not spec.workdir.startswith("/"):
        # A pod starts in its image's WORKDIR and the launch runs without a shell: nothing could `cd` there.
        raise SpecError("workdir", spec.workdir, "an absolute path in the image for the k8s backend (a pod starts "
                        "in the image's WORKDIR), or . for that directory")
    mount = spec.k8s.pvc_mount_path.rstrip("/") + "/"
    if spec.build.code is CodeMode.mount and not (spec.k8s.pvc and spec.workdir.startswith(mount)):
        # A pod has no submit directory to bind: mounted code can only come from the PVC.
        raise SpecError("build.code", "mount", f"copy for the k8s backend, or k8s.pvc with workdir under "
                        f"{spec.k8s.pvc_mount_path} (where the code is mounted)")
    launch = build_launch(spec, rendezvous_from_env=True)
    manifest = k8s_manifest.build(spec, launch)
    if labels:
        manifest["metadata"].setdefault("labels", {}).update(labels)
    check_note = check_manifest(manifest, k8s_schemas)
    manifest_file = MANIFEST_FILES[spec.k8s.kind]
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [manifest_file]}
    header = f"# stjobs: {manifest['kind']} {spec.name}; apply with: kubectl apply -k .\n"
    files = (RenderedFile(manifest_file, header + yamlio.dump(manifest)),
             RenderedFile(KUSTOMIZATION, yamlio.dump(kustomization)), spec_file(spec))
    notes = [check_note]
    if k8s_schemas is not None:  # the full check was asked for: also the pods against the core schemas
        from stjobs.backends.k8s.podcheck import check_pod_templates

        notes.append(check_pod_templates(manifest))
    if spec.secrets:
        keys = " ".join(f"--from-literal={key}=..." for key in spec.secrets)
        notes.append(f"secrets come from Secret {k8s_manifest.secret_name(spec)}: kubectl -n {spec.k8s.namespace} "
                     f"create secret generic {k8s_manifest.secret_name(spec)} {keys}")
    if not spec.k8s.pvc and not spec.output_dir.startswith("/"):
        notes.append(f"output_dir {spec.output_dir} is inside the container and lost with the pod; set k8s.pvc to "
                     "keep checkpoints")
    notes += storage_notes(spec) + gang_notes(spec)
    return Plan(backend=NAME, job_name=spec.name, files=files, command=("kubectl", "apply", "-k", "."),
                launch=launch, spec=spec, notes=tuple(notes))


def storage_notes(spec: JobSpec) -> list[str]:
    """Where the Hugging Face cache lives, and the access mode a PVC several pods mount needs."""
    k8s, place = spec.k8s, k8s_manifest.cache_place(spec)
    notes = []
    if place is CachePlace.ephemeral:
        request = f" ({k8s.cache_gb:g} GB of ephemeral storage requested)" if k8s.cache_gb is not None else ""
        notes.append(f"HF cache: an emptyDir at {k8s_manifest.CACHE_MOUNT}{request}; kept across container "
                     "restarts, downloaded again by every new pod: set k8s.pvc or k8s.cache_pvc to keep it")
    elif place is not CachePlace.user:
        notes.append(f"HF cache: HF_HOME={k8s_manifest.cache_home(spec)} on PVC "
                     f"{k8s.cache_pvc if place is CachePlace.cache_pvc else k8s.pvc}")
    if spec.nodes > 1:
        for claim in dict.fromkeys(name for name in (k8s.pvc, k8s.cache_pvc) if name):
            notes.append(f"PVC {claim} is mounted by {spec.nodes} pods at once: it needs accessModes "
                         "[ReadWriteMany] (ReadWriteOnce binds it to one node, and the other pods never start)")
    return notes


def gang_notes(spec: JobSpec) -> list[str]:
    """A multi-node GPU job needs all its pods placed or none: a half-placed 2 x 4-GPU job holds 4 GPUs while it
    waits for the rest, and two such jobs can hold each other's GPUs for ever."""
    k8s = spec.k8s
    if spec.nodes < 2 or not spec.gpus_per_node:
        return []
    held = (spec.min_nodes or spec.nodes) - 1
    risk = (f"a half-placed {spec.nodes} x {spec.gpus_per_node}-GPU job holds up to {held * spec.gpus_per_node} "
            "GPUs while it waits for the rest")
    if k8s.scheduler is Scheduler.kueue:
        return [f"gang scheduling: Kueue admits all {spec.nodes} pods or none by quota; placement is "
                "all-or-nothing only with Kueue's waitForPodsReady"]
    if k8s.kind is Kind.trainjob:
        return [f"warning: no gang scheduling from stjobs: a TrainJob gets it from its runtime's podGroupPolicy "
                f"(check `kubectl get clustertrainingruntime {k8s.runtime} -o jsonpath='{{.spec.podGroupPolicy}}'`; "
                f"the stock torch-distributed runtime has none); without it {risk}"]
    if k8s.scheduler in k8s_manifest.SCHEDULER_NAMES:
        return [f"gang scheduling: {k8s.scheduler.value} places {spec.min_nodes or spec.nodes} pods or none "
                f"(schedulingPolicy.minAvailable; the training operator must run with "
                f"--gang-scheduler-name={k8s.scheduler.value})"]
    return [f"warning: no gang scheduling (k8s.scheduler: default): {risk}; set k8s.scheduler to volcano or "
            "scheduler-plugins (or kueue with waitForPodsReady)"]


def _refuse_for_trainjob(spec: JobSpec) -> None:
    """TrainJob's runtimePatches cannot carry these; refusing beats dropping them without a word."""
    k8s = spec.k8s
    if k8s.scheduler in (Scheduler.volcano, Scheduler.scheduler_plugins):
        raise SpecError("k8s.scheduler", k8s.scheduler.value, "default or kueue with k8s.kind: trainjob (gang "
                        "scheduling there comes from the runtime's podGroupPolicy)")
    if spec.workdir.rstrip("/") not in (".", IMAGE_WORKDIR):
        raise SpecError("workdir", spec.workdir, f". or {IMAGE_WORKDIR} (stjobs images' WORKDIR) with k8s.kind: "
                        "trainjob (a TrainJob's trainer has no working-directory field; set WORKDIR in the image)")
    # Each of these differs from its default only when the user set it.
    for field in ("priority_class", "ttl_after_finished_s", "restart_policy", "clean_pod_policy", "backoff_limit"):
        value = getattr(k8s, field)
        if value != K8sOptions.__dataclass_fields__[field].default:
            shown = value.value if isinstance(value, Enum) else value
            raise SpecError(f"k8s.{field}", shown, "unset with k8s.kind: trainjob (a TrainJob has no such field; "
                            "set it in the ClusterTrainingRuntime)")


def uses_image(spec: JobSpec) -> bool:
    """Every Kubernetes job runs in the spec's image: its build files always come with the render."""
    return True


SWEEP_LABEL = "stjobs.dev/sweep"  # on every point's object: kubectl get pytorchjobs -l stjobs.dev/sweep=NAME


def render_sweep(spec: JobSpec, points: Sequence[Point], k8s_schemas: Path | None = None) -> Plan:
    """A sweep on Kubernetes: one object per point (named NAME-p<index>), all with the sweep's label; the
    top-level kustomization applies them together."""
    if spec.sweep.max_running:
        raise SpecError("sweep.max_running", spec.sweep.max_running, "no limit on the k8s backend (every point's "
                        "object is created at once; a queue such as Kueue decides how many run)")
    labelled = [render(point.spec, k8s_schemas, {SWEEP_LABEL: spec.name}) for point in points]
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [point.directory for point in points]}
    return sweep_plan(spec, points, labelled, ("kubectl", "apply", "-k", "."),
                      files=[RenderedFile(KUSTOMIZATION, yamlio.dump(kustomization))],
                      notes=[f"one {labelled[0].spec.k8s.kind.value} per point, labelled {SWEEP_LABEL}={spec.name}"])
