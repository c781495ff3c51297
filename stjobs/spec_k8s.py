"""The ``k8s:`` block of the job spec: what a PyTorchJob or TrainJob needs beyond the job's shape.

Kubernetes names and label syntax are checked here, at load time, so a bad value fails with the field's name
before anything renders. Objects Kubernetes defines in full (tolerations, affinity) are checked for their shape
here and against the CRD schema at render time when the schemas are available.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from stjobs.errors import SpecError
from stjobs.fields import Boolean, Choice, Integer, Nullable, Number, Parser, Text, Words, spec_field, writable

# Kubernetes' name syntaxes, shared with the manifest checks (backends/k8s/checks.py).
DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_1035_LABEL = r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"  # at most 253: checked apart
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_VALUE = rf"({LABEL_NAME})?"
LABEL_KEY = rf"({DNS_SUBDOMAIN}/)?{LABEL_NAME}"
ABSOLUTE_PATH = r"/[A-Za-z0-9_./@+-]*"


class Kind(str, Enum):
    pytorchjob = "pytorchjob"  # kubeflow.org/v1, training-operator 1.9.x: elastic training lives only here
    trainjob = "trainjob"  # trainer.kubeflow.org/v1alpha1, Kubeflow Trainer 2.3


class Scheduler(str, Enum):
    default = "default"
    volcano = "volcano"
    scheduler_plugins = "scheduler-plugins"
    kueue = "kueue"


class RestartPolicy(str, Enum):
    OnFailure = "OnFailure"
    Always = "Always"
    Never = "Never"
    ExitCode = "ExitCode"


class CleanPodPolicy(str, Enum):
    Running = "Running"
    All = "All"
    None_ = "None"


def _check_key(field: str, key: Any, what: str) -> None:
    """Label and annotation keys share one syntax: [prefix/]name, the prefix a DNS subdomain of at most 253."""
    if not isinstance(key, str) or not re.fullmatch(LABEL_KEY, key) or len(key.rpartition("/")[0]) > 253:
        raise SpecError(f"{field}.{key}", key, f"{what}: [prefix/]name of letters, digits, '-_.'")


class Labels(Parser[dict[str, str]]):
    """A node selector: Kubernetes label keys to label values."""

    expected = "a mapping of Kubernetes label keys to label values, e.g. {nvidia.com/gpu.product: A100-SXM4-80GB}"

    def parse(self, value: Any, field: str) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise self.fail(field, value)
        out: dict[str, str] = {}
        for key, item in value.items():
            _check_key(field, key, "a label key")
            if isinstance(item, bool) or not isinstance(item, (str, int)) or not re.fullmatch(LABEL_VALUE, str(item)):
                raise SpecError(f"{field}.{key}", item, "a label value: at most 63 letters, digits, '-_.'")
            out[key] = str(item)
        return out

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}}


TOLERATION_KEYS = {"key": str, "operator": str, "value": str, "effect": str, "tolerationSeconds": int}
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class Tolerations(Parser[tuple[dict[str, Any], ...]]):
    expected = ("a list of tolerations {key, operator: Exists|Equal, value, effect: NoSchedule|PreferNoSchedule|"
                "NoExecute, tolerationSeconds}")

    def parse(self, value: Any, field: str) -> tuple[dict[str, Any], ...]:
        if not isinstance(value, (list, tuple)):
            raise self.fail(field, value)
        out = []
        for index, item in enumerate(value):
            where = f"{field}[{index}]"
            if not isinstance(item, Mapping) or not item:
                raise SpecError(where, item, self.expected)
            for key, entry in item.items():
                kind = TOLERATION_KEYS.get(str(key))
                if kind is None:
                    raise SpecError(f"{where}.{key}", entry, f"one of the keys {', '.join(TOLERATION_KEYS)}")
                if isinstance(entry, bool) or not isinstance(entry, kind):
                    raise SpecError(f"{where}.{key}", entry, f"a {kind.__name__}")
            if item.get("operator", "Equal") not in TOLERATION_OPERATORS:
                raise SpecError(f"{where}.operator", item["operator"], "Exists or Equal")
            if "effect" in item and item["effect"] not in TOLERATION_EFFECTS:
                raise SpecError(f"{where}.effect", item["effect"], ", ".join(TOLERATION_EFFECTS))
            if item.get("operator") == "Exists" and "value" in item:
                raise SpecError(f"{where}.value", item["value"], "no value with operator Exists")
            out.append(dict(item))
        return tuple(out)

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "object", "properties": {
            "key": {"type": "string"}, "operator": {"enum": list(TOLERATION_OPERATORS)}, "value": {"type": "string"},
            "effect": {"enum": list(TOLERATION_EFFECTS)}, "tolerationSeconds": {"type": "integer"}},
            "additionalProperties": False}}


AFFINITY_KEYS = ("nodeAffinity", "podAffinity", "podAntiAffinity")


class Affinity(Parser[dict[str, Any]]):
    """A core/v1 Affinity object, passed through; its inside is checked against the CRD schema at render time."""

    expected = f"a Kubernetes affinity mapping with {', '.join(AFFINITY_KEYS)}"

    def parse(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(field, value)
        for key, item in value.items():
            if key not in AFFINITY_KEYS:
                raise SpecError(f"{field}.{key}", item, f"one of {', '.join(AFFINITY_KEYS)}")
            if not isinstance(item, Mapping):
                raise SpecError(f"{field}.{key}", item, "a mapping (see kubectl explain pod.spec.affinity)")
        return dict(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "properties": {key: {"type": "object"} for key in AFFINITY_KEYS},
                "additionalProperties": False}


class Annotations(Parser[dict[str, str]]):
    """Pod annotations: Kubernetes annotation keys (label-key syntax) to any string."""

    expected = 'a mapping of annotation keys to strings, e.g. {sidecar.istio.io/inject: "false"}'

    def parse(self, value: Any, field: str) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise self.fail(field, value)
        out: dict[str, str] = {}
        for key, item in value.items():
            _check_key(field, key, "an annotation key")
            if not isinstance(item, str):  # YAML's false or 1 would arrive as a bool or int: quote it
                raise SpecError(f"{field}.{key}", item, 'a string (quote it: "false", "1")')
            out[key] = writable(item, f"{field}.{key}")
        return out

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {"type": "string"}}


# Labels stjobs sets on every pod (backends/k8s/manifest.py): `stjobs status` finds its pods by them.
RESERVED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/managed-by")


def _name(expected: str, pattern: str = DNS_SUBDOMAIN, max_length: int = 253) -> Text:
    return Text(expected, pattern, max_length)


@dataclass(frozen=True)
class K8sOptions:
    kind: Kind = spec_field(Choice(Kind), Kind.pytorchjob, doc="pytorchjob (kubeflow.org/v1) or trainjob "
                            "(trainer.kubeflow.org/v1alpha1)")
    namespace: str = spec_field(Text("a Kubernetes namespace (DNS-1123 label)", DNS_LABEL, 63), "default")
    service_account: str | None = spec_field(Nullable(_name("a Kubernetes service account name")), None)
    runtime: str = spec_field(_name("the name of the ClusterTrainingRuntime a TrainJob refers to"),
                              "torch-distributed")
    image_pull_secrets: tuple[str, ...] = spec_field(
        Words("a list of Secret names for pulling the image", _name("a Secret name (DNS-1123 subdomain)"),
              unique=True), ())
    secret_name: str | None = spec_field(Nullable(_name("the Secret holding the spec's secrets (default: "
                                                        "NAME-secrets)")), None)
    node_selector: dict[str, str] = spec_field(Labels(), {})
    tolerations: tuple[dict[str, Any], ...] = spec_field(Tolerations(), ())
    affinity: dict[str, Any] | None = spec_field(Nullable(Affinity()), None)
    priority_class: str | None = spec_field(Nullable(_name("a PriorityClass name")), None)
    scheduler: Scheduler = spec_field(Choice(Scheduler), Scheduler.default,
                                      doc="gang scheduling: default, volcano, scheduler-plugins, kueue")
    queue: str | None = spec_field(Nullable(_name("a Volcano queue or Kueue LocalQueue name", DNS_LABEL, 63)),
                                   None)
    restart_policy: RestartPolicy = spec_field(Choice(RestartPolicy), RestartPolicy.OnFailure)
    backoff_limit: int = spec_field(Integer(0, 1000, "how many pod restarts the job allows, from 0 to 1000"), 3)
    clean_pod_policy: CleanPodPolicy = spec_field(Choice(CleanPodPolicy), CleanPodPolicy.Running)
    ttl_after_finished_s: int | None = spec_field(
        Nullable(Integer(0, 2**31 - 1, "seconds a finished job is kept before deletion, or null to keep it")), None)
    wait_for_master: bool = spec_field(Boolean(), True, doc="workers wait until the master's rendezvous port "
                                       "answers (an init container), instead of racing its DNS record")
    shm_gb: float | None = spec_field(Nullable(Number(0, 65536, "the /dev/shm size limit in GB, or null for no "
                                                      "limit")), None)
    pvc: str | None = spec_field(Nullable(_name("a PersistentVolumeClaim name for outputs and checkpoints")),
                                 None)
    pvc_mount_path: str = spec_field(Text("an absolute path in the container", ABSOLUTE_PATH, 1000),
                                     "/mnt/stjobs")
    cache_pvc: str | None = spec_field(
        Nullable(_name("a PersistentVolumeClaim name for the Hugging Face cache (HF_HOME), kept across jobs")), None,
        doc="a cache volume of its own; default: the cache lives on k8s.pvc, else on the pod's ephemeral storage")
    cache_gb: float | None = spec_field(
        Nullable(Number(0, 65536, "the ephemeral storage in GB a pod requests for its Hugging Face cache when no "
                                  "PVC holds it, or null for no request")), 20,
        doc="without k8s.pvc or k8s.cache_pvc the cache is an emptyDir: it survives container restarts, not pods")
    grace_s: int | None = spec_field(
        Nullable(Integer(1, 86400, "seconds a pod has between SIGTERM and SIGKILL to save a checkpoint, from 1 to "
                                   "86400, or null")), None,
        doc="terminationGracePeriodSeconds; default: slurm.signal_lead_s for a resumable entrypoint (Kubernetes' "
            "30 s is too short to save a model with its optimizer state), else Kubernetes' 30 s")
    pod_labels: dict[str, str] = spec_field(Labels(), {}, doc="labels added to every pod")
    pod_annotations: dict[str, str] = spec_field(Annotations(), {}, doc='annotations added to every pod, e.g. '
                                                 '{sidecar.istio.io/inject: "false"}')

    @staticmethod
    def _resolve(values: dict[str, Any]) -> None:
        scheduler: Scheduler = values["scheduler"]
        if scheduler is Scheduler.kueue and values["queue"] is None:
            raise SpecError("k8s.queue", None, "a Kueue LocalQueue name with k8s.scheduler: kueue")
        if values["queue"] is not None and scheduler in (Scheduler.default, Scheduler.scheduler_plugins):
            raise SpecError("k8s.queue", values["queue"], "no queue unless k8s.scheduler is volcano or kueue")
        for key in RESERVED_LABELS:
            if key in values["pod_labels"]:
                raise SpecError(f"k8s.pod_labels.{key}", values["pod_labels"][key], "a label key stjobs does not "
                                f"set itself (it sets {', '.join(RESERVED_LABELS)} on every pod)")
