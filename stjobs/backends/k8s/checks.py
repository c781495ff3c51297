"""Render-time checks of Kubeflow manifests: stjobs' rules, and the CRD schema when it is at hand.

``rule_errors`` holds what the operators' webhooks and Kubernetes itself enforce but the CRD does not encode
(DNS-1035 names, one Master, the ``pytorch`` container and its port, label syntax, reserved ``PET_*`` env,
credentials only by reference). ``check_manifest`` runs them always and the strict schema walk of schema.py when
a schemas directory was given, and returns the line the plan prints.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from stjobs.backends.k8s.schema import CRD_FILES, _dict, _json, _key, _show, load_schema, schema_errors
from stjobs.errors import RenderError
from stjobs.spec_k8s import DNS_1035_LABEL, DNS_LABEL, DNS_SUBDOMAIN, LABEL_NAME

__all__ = ["CRD_FILES", "MAX_REPORTED", "check_manifest", "load_schema", "rule_errors", "schema_errors"]

MAX_REPORTED = 5

_DNS1035_LABEL = re.compile(DNS_1035_LABEL)
_DNS1123_LABEL = re.compile(DNS_LABEL)
_DNS1123_SUBDOMAIN = re.compile(DNS_SUBDOMAIN)
_LABEL_NAME = re.compile(LABEL_NAME)
_LABEL_FORM = "at most 63 of A-Z, a-z, 0-9, '-', '_', '.' (alphanumeric at both ends)"
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
# Whole name segments only: TOKENIZERS_PARALLELISM (set by launch.py) is no token, HF_TOKEN is.
_CREDENTIAL = re.compile(r"(^|[-_.])(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY)($|[-_.])", re.I)
_RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
_CLEAN_POD_POLICIES = ("None", "Running", "All")
_PET_ENV = "PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT"


def rule_errors(manifest: dict[str, Any]) -> list[str]:
    """What the training-operator / trainer webhooks and Kubernetes enforce beyond the CRD schema."""
    errors: list[str] = []
    meta = _dict(manifest.get("metadata"))
    name, namespace = meta.get("name"), meta.get("namespace", "default")
    if not isinstance(name, str) or not _DNS1035_LABEL.fullmatch(name):
        errors.append(f"metadata.name: {_show(name)} must be a DNS-1035 label: at most 63 of a-z, 0-9 and '-', "
                      "starting with a letter and not ending with '-'")
    if not isinstance(namespace, str) or not _DNS1123_LABEL.fullmatch(namespace):
        errors.append(f"metadata.namespace: {_show(namespace)} must be a DNS-1123 label (at most 63 of a-z, 0-9, '-')")
    _walk_rules(manifest, "", errors)
    spec = _dict(manifest.get("spec"))
    if manifest.get("kind") == "PyTorchJob":
        _pytorchjob_errors(spec, errors)
    elif manifest.get("kind") == "TrainJob":
        _trainjob_errors(spec, errors)
    return errors


def _walk_rules(node: Any, path: str, errors: list[str]) -> None:
    """Labels of every ObjectMeta and the env of every container (or container-like block), wherever they sit.

    Only dicts are visited and a path string is built only for a child that is itself a dict or a list: this walk
    runs on every render, inside the render benchmark's budget."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, (dict, list)):
                _walk_rules(item, f"{path}[{index}]", errors)
        return
    if not isinstance(node, dict):
        return
    meta = node.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("labels"), dict):
        _label_errors(_key(_key(path, "metadata"), "labels"), meta["labels"], errors)
    env = node.get("env")
    if isinstance(env, list):
        _env_errors(_key(path, "env"), env, errors)
    for key, item in node.items():
        # env entries were checked just above; command/args hold only strings
        if isinstance(item, (dict, list)) and item and key not in _NO_RULES_BELOW:
            _walk_rules(item, _key(path, str(key)), errors)


# Keys whose values hold no ObjectMeta and no env list (and are large): the walk does not descend into them.
_NO_RULES_BELOW = frozenset({"env", "command", "args", "resources", "securityContext", "ports", "volumeMounts",
                             "volumes", "tolerations", "nodeSelector", "imagePullSecrets", "rdzvConf"})


@functools.lru_cache(maxsize=4096)  # the same few names in every container of every render
def _env_name(name: str) -> tuple[bool, bool]:
    """(a valid variable name, a name that looks like a credential)."""
    return bool(_ENV_NAME.fullmatch(name)), bool(_CREDENTIAL.search(name))


def _label_errors(at_labels: str, labels: dict[Any, Any], errors: list[str]) -> None:
    for key, value in labels.items():
        at, (prefix, slash, label) = _key(at_labels, str(key)), str(key).rpartition("/")
        if not _LABEL_NAME.fullmatch(label) or (slash and not (_DNS1123_SUBDOMAIN.fullmatch(prefix)
                                                                and len(prefix) <= 253)):
            errors.append(f"{at}: label key {_show(key)} must be an optional DNS subdomain and '/' and {_LABEL_FORM}")
        if isinstance(value, str) and value and not _LABEL_NAME.fullmatch(value):
            errors.append(f"{at}: label value {_show(value)} must be empty or {_LABEL_FORM}")


def _env_errors(path: str, env: list[Any], errors: list[str]) -> None:
    seen: set[str] = set()
    for index, entry in enumerate(env):
        name, at = _dict(entry).get("name"), f"{path}[{index}]"
        if not isinstance(name, str):
            continue  # the schema reports a missing or mistyped name
        valid, credential = _env_name(name)
        if not valid:
            errors.append(f"{at}.name: {_show(name)} is not a valid variable name ([-._a-zA-Z][-._a-zA-Z0-9]*)")
        if name in seen:
            errors.append(f"{at}: duplicate entry name={_json(name)}")  # the same line as the CRD's list-map check
        seen.add(name)
        if ("value" in entry) == ("valueFrom" in entry):
            errors.append(f"{at}: {name} needs exactly one of value and valueFrom")
        if credential and "secretKeyRef" not in _dict(entry.get("valueFrom")):
            errors.append(f"{at}: {name} looks like a credential: secrets only as secretKeyRef (valueFrom)")


def _pytorchjob_errors(spec: dict[str, Any], errors: list[str]) -> None:
    base, replicas = "spec.pytorchReplicaSpecs", spec.get("pytorchReplicaSpecs")
    if not isinstance(replicas, dict):
        errors.append(f"{base}: required, a map of replica type (Master, Worker) to replica spec")
        return
    for kind, replica in replicas.items():
        path, replica = _key(base, str(kind)), _dict(replica)
        if kind not in ("Master", "Worker"):
            errors.append(f"{path}: replica type {_show(kind)} is not supported; expected Master or Worker")
        restart = replica.get("restartPolicy", "OnFailure")
        if restart not in _RESTART_POLICIES:
            errors.append(f"{path}.restartPolicy: {_show(restart)} is not one of {', '.join(_RESTART_POLICIES)}")
        containers = _dict(_dict(replica.get("template")).get("spec")).get("containers") or []
        named = [i for i, box in enumerate(containers) if _dict(box).get("name") == "pytorch"]
        if not named:
            errors.append(f'{path}.template.spec.containers: no container named "pytorch" (the operator injects '
                          "the rendezvous env and port into that one)")
        elif kind == "Master" and not any(_dict(port).get("name") == "pytorchjob-port"
                                          for port in _dict(containers[named[0]]).get("ports") or ()):
            errors.append(f'{path}.template.spec.containers[{named[0]}].ports: no port named "pytorchjob-port" '
                          "(the operator reads MASTER_PORT from it)")
    masters = [str(kind) for kind in replicas if str(kind).lower() == "master"]
    elastic = spec.get("elasticPolicy") is not None
    if len(masters) > 1:
        errors.append(f"{base}: {len(masters)} Master replica specs ({', '.join(masters)}); exactly one is allowed")
    count = _dict(replicas.get("Master")).get("replicas", 1)
    if isinstance(count, int) and count != 1:
        errors.append(f"{base}.Master.replicas: got {count}; a PyTorchJob has exactly one Master replica")
    if not masters and not elastic:
        errors.append(f"{base}: no Master (only an elastic job, with spec.elasticPolicy, may go without one)")
    if elastic and "Worker" not in replicas:
        errors.append(f"{base}: no Worker (an elastic job needs one)")
    nproc = spec.get("nprocPerNode", "auto")
    if nproc not in ("auto", "cpu", "gpu") and not (isinstance(nproc, str) and nproc.isdigit() and int(nproc) > 0):
        errors.append(f"spec.nprocPerNode: {_show(nproc)} must be auto, cpu, gpu or a positive whole number")
    policy = _dict(spec.get("elasticPolicy"))
    low, high = policy.get("minReplicas"), policy.get("maxReplicas")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        errors.append(f"spec.elasticPolicy.minReplicas: {low} is above maxReplicas {high}")
    clean = _dict(spec.get("runPolicy")).get("cleanPodPolicy", "None")
    if clean not in _CLEAN_POD_POLICIES:
        errors.append(f"spec.runPolicy.cleanPodPolicy: {_show(clean)} is not one of {', '.join(_CLEAN_POD_POLICIES)}")


def _trainjob_errors(spec: dict[str, Any], errors: list[str]) -> None:
    runtime = _dict(spec.get("runtimeRef")).get("name")
    if not isinstance(runtime, str) or not runtime:
        errors.append("spec.runtimeRef.name: must name a training runtime (such as torch-distributed)")
    trainer = _dict(spec.get("trainer"))
    nodes = trainer.get("numNodes", 1)
    if isinstance(nodes, int) and nodes < 1:
        errors.append(f"spec.trainer.numNodes: got {nodes}; at least 1")
    for index, entry in enumerate(trainer.get("env") or ()):
        name = _dict(entry).get("name")
        if isinstance(name, str) and name.upper().startswith("PET_"):
            errors.append(f"spec.trainer.env[{index}].name: {name} is reserved: the trainer sets PET_* ({_PET_ENV})")
    managers: set[str] = set()
    for index, patch in enumerate(spec.get("runtimePatches") or ()):
        manager = _dict(patch).get("manager")
        if not isinstance(manager, str) or not manager:
            errors.append(f"spec.runtimePatches[{index}].manager: must name who owns the patch (non-empty)")
        elif manager in managers:
            errors.append(f"spec.runtimePatches[{index}]: duplicate entry manager={_json(manager)}")
        managers.add(str(manager))


def check_manifest(manifest: dict[str, Any], schemas_dir: Path | None) -> str:
    """Rules always, the CRD schema when found; RenderError on failure, else a one-line note for the plan."""
    kind, api_version = str(manifest.get("kind")), str(manifest.get("apiVersion"))
    errors: list[str] = []
    if schemas_dir is None:
        note = "schema check skipped: no schemas directory given (--k8s-schemas or STJOBS_K8S_SCHEMAS)"
    elif (schema := load_schema(schemas_dir, api_version, kind)) is None:
        note = f"schema check skipped: no {CRD_FILES[api_version, kind]} in {schemas_dir}"
    else:
        note = f"schema check: {kind} passed {CRD_FILES[api_version, kind]} (strict)"
        errors = schema_errors(manifest, schema)
    errors = list(dict.fromkeys(errors + rule_errors(manifest)))  # a duplicate entry is seen by both sides
    if errors:
        name = _dict(manifest.get("metadata")).get("name")
        more = f"; and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise RenderError(f"k8s: {kind} {name} fails {len(errors)} check(s): {'; '.join(errors[:MAX_REPORTED])}{more}")
    return note

