"""A second opinion on the pods: each pod template checked against the core Kubernetes schemas.

The CRDs embed core/v1 PodTemplateSpec as it was when they were generated; the PyPI package kubernetes-validate
carries the core schemas of every Kubernetes release from 1.25 (offline, strict mode refuses unknown fields). It
cannot check a custom resource as a whole, so each pod template is wrapped as a core ``PodTemplate``. It runs
with the CRD check (a schemas directory was given) and is skipped, saying so, when the package is missing.
"""

from __future__ import annotations

from typing import Any

from stjobs.errors import RenderError

KUBERNETES_VERSION = "1.33"


def pod_templates(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(replica, pod template) of a PyTorchJob; for a TrainJob the runtimePatches pod with the trainer's container
    (image, command, env, resources) merged in, as the Trainer merges them."""
    spec = manifest.get("spec", {})
    if manifest.get("kind") == "PyTorchJob":
        return [(name, replica["template"]) for name, replica in spec.get("pytorchReplicaSpecs", {}).items()]
    trainer = spec.get("trainer", {})
    out = []
    for patch in spec.get("runtimePatches", []):
        for rjob in patch["trainingRuntimeSpec"]["template"]["spec"].get("replicatedJobs", []):
            template = rjob["template"]["spec"]["template"]
            pod = dict(template.get("spec", {}))
            pod["containers"] = [
                {**container, "image": trainer.get("image"), "command": trainer.get("command", []),
                 "env": trainer.get("env", []), "resources": trainer.get("resourcesPerNode", {})}
                if container.get("name") == "node" else container
                for container in pod.get("containers", [])]
            out.append((str(rjob["name"]), {**template, "spec": pod}))
    return out


def check_pod_templates(manifest: dict[str, Any]) -> str:
    """RenderError on the first invalid template; else a note for the plan (also when the check was skipped)."""
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        return "core pod check skipped: pip install kubernetes-validate (or stjobs[test]) to run it"
    name = manifest.get("metadata", {}).get("name", "job")
    for replica, template in pod_templates(manifest):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": f"{name}-{replica.lower()}"}, "template": template}
        try:
            kubernetes_validate.validate(wrapped, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            raise RenderError(f"k8s: the {replica} pod template fails the core Kubernetes {KUBERNETES_VERSION} "
                              f"schema at {where}: {error.message}") from None
    return f"core pod check: every pod template passed Kubernetes {KUBERNETES_VERSION}'s schema (strict)"
