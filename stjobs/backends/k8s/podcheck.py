"""A second opinion on the pods: each pod template checked against the core Kubernetes schemas.

The CRDs embed core/v1 PodTemplateSpec as it was when they were generated; the PyPI package kubernetes-validate
carries the core schemas of every Kubernetes release from 1.25 (offline, strict mode refuses unknown fields). It
cannot check a custom resource as a whole, so each pod template is wrapped as a core ``PodTemplate``. It runs
with the CRD check (a schemas directory was given) and is skipped, saying so, when the package is missing.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
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


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    """kubernetes-validate's strict PodTemplate schema, compiled once: its own ``validate`` re-reads the 1 MB of
    definitions on every call (about 45 ms; this is under 1 ms once built)."""
    import jsonschema  # type: ignore[import-untyped]  # both come with kubernetes-validate
    import kubernetes_validate  # type: ignore[import-untyped]
    from referencing import Registry, Resource

    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / \
        f"v{KUBERNETES_VERSION}.0-local-strict"
    schema = json.loads((folder / "podtemplate-v1.json").read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry: Any = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def check_pod_templates(manifest: dict[str, Any]) -> str:
    """RenderError on the first invalid template; else a note for the plan (also when the check was skipped)."""
    try:
        validator = _validator()
    except ImportError:
        return "core pod check skipped: pip install kubernetes-validate (or stjobs[test]) to run it"
    name = manifest.get("metadata", {}).get("name", "job")
    for replica, template in pod_templates(manifest):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": f"{name}-{replica.lower()}"}, "template": template}
        error = next(iter(validator.iter_errors(wrapped)), None)
        if error is not None:
            where = ".".join(str(part) for part in error.path)
            raise RenderError(f"k8s: the {replica} pod template fails the core Kubernetes {KUBERNETES_VERSION} "
                              f"schema at {where}: {error.message}")
    return f"core pod check: every pod template passed Kubernetes {KUBERNETES_VERSION}'s schema (strict)"
