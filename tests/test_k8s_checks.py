"""Render-time checks of Kubeflow manifests: the real CRDs in strict mode plus the webhook rules (table-driven)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stjobs.backends.k8s.checks import CRD_FILES, check_manifest, load_schema, rule_errors, schema_errors
from stjobs.errors import RenderError

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "k8s-schemas"
PYTORCH = ("kubeflow.org/v1", "PyTorchJob")
TRAIN = ("trainer.kubeflow.org/v1alpha1", "TrainJob")
IMAGE = "ghcr.io/acme/st-train:1.0"
DSHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}
DSHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}
ENV: list[dict[str, Any]] = [
    # A plain value whose name merely contains TOKEN: launch.py sets it, the credential rule must let it through.
    {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
]


@pytest.fixture(scope="module")
def schemas() -> Path:
    # CI always carries the CRDs: a missing directory must fail loudly, never turn the schema tests into skips.
    if not (SCHEMAS / CRD_FILES[PYTORCH]).is_file() or not (SCHEMAS / CRD_FILES[TRAIN]).is_file():
        pytest.fail(f"the Kubeflow CRDs are missing from {SCHEMAS}; the schema tests need them (CI provides them)")
    return SCHEMAS


def pytorchjob() -> dict[str, Any]:
    container = {
        "name": "pytorch",
        "image": IMAGE,
        "command": ["bash", "/opt/stjobs/launch.sh"],
        "ports": [{"name": "pytorchjob-port", "containerPort": 29500, "protocol": "TCP"}],
        "env": copy.deepcopy(ENV),
        "resources": {"limits": {"nvidia.com/gpu": 2, "memory": "8Gi"}, "requests": {"cpu": "4", "memory": "8Gi"}},
        "volumeMounts": [DSHM_MOUNT],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    template = {
        "metadata": {"labels": {"app.kubernetes.io/name": "st-train"}},
        "spec": {
            "containers": [container],
            "volumes": [DSHM_VOLUME],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
        },
    }
    replica = {"replicas": 1, "restartPolicy": "OnFailure", "template": template}
    # Separate copies: a mutation of the Master must not show up in the Worker too.
    return copy.deepcopy({
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "st-train", "namespace": "ml", "labels": {"stjobs.io/job": "st-train"}},
        "spec": {
            "nprocPerNode": "2",
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
            "pytorchReplicaSpecs": {"Master": copy.deepcopy(replica), "Worker": copy.deepcopy(replica)},
        },
    })


def trainjob() -> dict[str, Any]:
    pod_spec = {
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "volumes": [DSHM_VOLUME],
        "containers": [{"name": "node", "volumeMounts": [DSHM_MOUNT]}],
    }
    replicated = {"name": "node", "template": {"spec": {"template": {"spec": pod_spec}}}}
    return copy.deepcopy({
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "st-train", "namespace": "ml"},
        "spec": {
            "runtimeRef": {"name": "torch-distributed"},
            "trainer": {
                "image": IMAGE,
                "command": ["bash", "/opt/stjobs/launch.sh"],
                "numNodes": 2,
                "numProcPerNode": 2,
                "resourcesPerNode": {"limits": {"nvidia.com/gpu": 2, "memory": "8Gi"}},
                "env": copy.deepcopy(ENV),
            },
            "runtimePatches": [
                {"manager": "stjobs.io/render", "trainingRuntimeSpec": {"template": {"spec": {
                    "replicatedJobs": [replicated]}}}},
            ],
        },
    })


def master(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]  # type: ignore[no-any-return]


def box(job: dict[str, Any]) -> dict[str, Any]:
    return master(job)["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def patched_pod(job: dict[str, Any]) -> dict[str, Any]:
    jobs = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return jobs[0]["template"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def errors_of(job: dict[str, Any], schemas_dir: Path) -> list[str]:
    schema = load_schema(schemas_dir, job["apiVersion"], job["kind"])
    assert schema is not None
    return schema_errors(job, schema) + rule_errors(job)


@pytest.mark.parametrize("build", [pytorchjob, trainjob])
def test_valid_manifests_pass_the_real_crds(build: Callable[[], dict[str, Any]], schemas: Path) -> None:
    job = build()
    assert errors_of(job, schemas) == []
    note = check_manifest(job, schemas)
    assert note == f"schema check: {job['kind']} passed {CRD_FILES[job['apiVersion'], job['kind']]} (strict)"


def test_elastic_job_may_go_without_master(schemas: Path) -> None:
    job = pytorchjob()
    del job["spec"]["pytorchReplicaSpecs"]["Master"]
    job["spec"]["elasticPolicy"] = {"minReplicas": 1, "maxReplicas": 4, "rdzvBackend": "c10d"}
    assert errors_of(job, schemas) == []
    del job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert any("no Worker" in error for error in errors_of(job, schemas))


MASTER = "spec.pytorchReplicaSpecs.Master"
BOX = f"{MASTER}.template.spec.containers[0]"
PATCH_POD = "spec.runtimePatches[0].trainingRuntimeSpec.template.spec.replicatedJobs[0].template.spec.template.spec"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation: set a dotted path (list indexes as numbers) to value, or delete it when value is ...."""

    def mutate(job: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = job
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is ...:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


BOXP = "spec.pytorchReplicaSpecs.Master.template.spec.containers.0"
SECRET_AND_VALUE = {"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
# (id, which manifest, mutation, the path the error starts with, words it must contain)
BROKEN: list[tuple[str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], object], str, str]] = [
    ("unknown-spec-field", pytorchjob, _set("spec.foo", 1), "spec", 'unknown field "foo"'),
    ("container-typo", pytorchjob, _set(f"{BOXP}.imagePullPolcy", "Always"), BOX,
     'unknown field "imagePullPolcy" (did you mean "imagePullPolicy"?)'),
    ("port-as-string", pytorchjob, _set(f"{BOXP}.ports.0.containerPort", "29500"), f"{BOX}.ports[0].containerPort",
     'expected integer, got string "29500"'),
    ("port-out-of-int32", pytorchjob, _set(f"{BOXP}.ports.0.containerPort", 2**31), f"{BOX}.ports[0].containerPort",
     "out of range for int32"),
    ("replicas-as-string", pytorchjob, _set("spec.pytorchReplicaSpecs.Worker.replicas", "1"),
     "spec.pytorchReplicaSpecs.Worker.replicas", "expected integer, got string"),
    ("bool-where-int", pytorchjob, _set("spec.runPolicy.backoffLimit", True), "spec.runPolicy.backoffLimit",
     "expected integer, got boolean"),
    ("explicit-null", pytorchjob, _set(f"{BOXP}.image", None), f"{BOX}.image", "null is not allowed"),
    ("bad-quantity", pytorchjob, _set(f"{BOXP}.resources.limits.memory", "8 GB"), f"{BOX}.resources.limits.memory",
     "not a Kubernetes quantity"),
    ("quantity-as-float", pytorchjob, (lambda job: box(job)["resources"]["limits"].update({"nvidia.com/gpu": 1.5})),
     f"{BOX}.resources.limits[nvidia.com/gpu]", "expected an integer or a string, got number"),
    ("restart-sometimes", pytorchjob, _set(f"{MASTER}.restartPolicy", "Sometimes"), f"{MASTER}.restartPolicy",
     '"Sometimes" is not one of Always, OnFailure, Never, ExitCode'),
    ("two-masters", pytorchjob, (lambda job: job["spec"]["pytorchReplicaSpecs"].update(master=master(job))),
     "spec.pytorchReplicaSpecs", "2 Master replica specs"),
    ("no-master", pytorchjob, _set(MASTER, ...), "spec.pytorchReplicaSpecs", "no Master"),
    ("master-replicas-2", pytorchjob, _set(f"{MASTER}.replicas", 2), f"{MASTER}.replicas", "exactly one Master"),
    ("container-main", pytorchjob, _set(f"{BOXP}.name", "main"), f"{MASTER}.template.spec.containers",
     'no container named "pytorch"'),
    ("missing-port", pytorchjob, _set(f"{BOXP}.ports.0.name", "rdzv"), f"{BOX}.ports", '"pytorchjob-port"'),
    ("duplicate-port", pytorchjob, (lambda job: box(job)["ports"].append({"containerPort": 29500})),
     f"{BOX}.ports[1]", 'duplicate entry containerPort=29500, protocol="TCP"'),
    ("duplicate-in-set", pytorchjob, _set(f"{BOXP}.restartPolicyRules", [
        {"action": "Restart", "exitCodes": {"operator": "In", "values": [42, 42]}}]),
     f"{BOX}.restartPolicyRules[0].exitCodes.values[1]", "duplicate entry 42"),
    ("name-uppercase", pytorchjob, _set("metadata.name", "St-Train"), "metadata.name", "DNS-1035"),
    ("name-64-chars", pytorchjob, _set("metadata.name", "a" * 64), "metadata.name", "at most 63"),
    ("namespace-underscore", pytorchjob, _set("metadata.namespace", "ml_team"), "metadata.namespace", "DNS-1123"),
    ("metadata-typo", pytorchjob, _set("metadata.labelz", {}), "metadata", 'did you mean "labels"'),
    ("bad-label-value", pytorchjob, _set("metadata.labels.team", "-ml-"), "metadata.labels.team", "label value"),
    ("bad-pod-label-key", pytorchjob, _set(f"{MASTER}.template.metadata.labels.a/b/c", "x"),
     f"{MASTER}.template.metadata.labels[a/b/c]", "label key"),
    ("duplicate-env", pytorchjob, (lambda job: box(job)["env"].append(dict(ENV[0]))),
     f"{BOX}.env[2]", 'duplicate entry name="TOKENIZERS_PARALLELISM"'),
    ("env-value-and-from", pytorchjob, _set(f"{BOXP}.env.0", SECRET_AND_VALUE), f"{BOX}.env[0]",
     "exactly one of value and valueFrom"),
    ("env-bad-name", pytorchjob, _set(f"{BOXP}.env.0.name", "1=BAD"), f"{BOX}.env[0].name", "not a valid variable"),
    ("credential-plain", pytorchjob, _set(f"{BOXP}.env.1", {"name": "WANDB_API_KEY", "value": "abc"}),
     f"{BOX}.env[1]", "secrets only as secretKeyRef"),
    ("nproc-many", pytorchjob, _set("spec.nprocPerNode", "many"), "spec.nprocPerNode", "auto, cpu, gpu"),
    ("elastic-min-above-max", pytorchjob, _set("spec.elasticPolicy", {"minReplicas": 4, "maxReplicas": 2}),
     "spec.elasticPolicy.minReplicas", "above maxReplicas"),
    ("clean-pod-policy", pytorchjob, _set("spec.runPolicy.cleanPodPolicy", "Some"), "spec.runPolicy.cleanPodPolicy",
     "None, Running, All"),
    ("trainjob-pet-env", trainjob, _set("spec.trainer.env.0", {"name": "PET_NNODES", "value": "2"}),
     "spec.trainer.env[0].name", "reserved"),
    ("trainjob-unknown-trainer-field", trainjob, _set("spec.trainer.numNode", 2), "spec.trainer",
     'unknown field "numNode" (did you mean "numNodes"?)'),
    ("trainjob-pod-template-overrides", trainjob, _set("spec.podTemplateOverrides", []), "spec",
     'unknown field "podTemplateOverrides"'),
    ("trainjob-duplicate-manager", trainjob,
     (lambda job: job["spec"]["runtimePatches"].append({"manager": "stjobs.io/render"})),
     "spec.runtimePatches[1]", 'duplicate entry manager="stjobs.io/render"'),
    ("trainjob-empty-runtime", trainjob, _set("spec.runtimeRef.name", ""), "spec.runtimeRef.name",
     "has 0 characters; needs at least 1"),
    ("trainjob-zero-nodes", trainjob, _set("spec.trainer.numNodes", 0), "spec.trainer.numNodes", "at least 1"),
    ("trainjob-patch-image", trainjob,
     (lambda job: patched_pod(job)["containers"][0].update(image=IMAGE)),
     f"{PATCH_POD}.containers[0]", 'unknown field "image"'),
]


@pytest.mark.parametrize(("build", "mutate", "path", "words"), [case[1:] for case in BROKEN],
                         ids=[case[0] for case in BROKEN])
def test_broken_manifest_is_refused(build: Callable[[], dict[str, Any]], mutate: Callable[[dict[str, Any]], object],
                                    path: str, words: str, schemas: Path) -> None:
    job = build()
    mutate(job)
    errors = errors_of(job, schemas)
    assert any(error.startswith(f"{path}: ") and words in error for error in errors), errors
    with pytest.raises(RenderError, match=f"^k8s: {job['kind']} "):
        check_manifest(job, schemas)


def test_a_problem_both_checks_see_is_reported_once(schemas: Path) -> None:
    job = pytorchjob()
    box(job)["env"].append(dict(ENV[0]))  # the CRD's list-map key and the env rule both catch it
    with pytest.raises(RenderError, match=r"fails 1 check\(s\): .*env\[2\]: duplicate entry name="):
        check_manifest(job, schemas)


def test_rules_run_without_schemas() -> None:
    job = pytorchjob()
    assert check_manifest(job, None) == (
        "schema check skipped: no schemas directory given (--k8s-schemas or STJOBS_K8S_SCHEMAS)")
    box(job)["name"] = "main"
    with pytest.raises(RenderError, match='no container named "pytorch"'):
        check_manifest(job, None)


def test_missing_file_is_skipped(tmp_path: Path) -> None:
    assert load_schema(tmp_path / "absent", *PYTORCH) is None
    assert load_schema(tmp_path, *TRAIN) is None
    assert check_manifest(trainjob(), tmp_path) == f"schema check skipped: no {CRD_FILES[TRAIN]} in {tmp_path}"


CRD_HEAD = "kind: CustomResourceDefinition\nspec:\n  group: kubeflow.org\n  names: {kind: "


@pytest.mark.parametrize(("text", "words"), [
    ("kind: ConfigMap\ndata: {}\n", "not the CustomResourceDefinition of PyTorchJob"),
    ("- just\n- a list\n", "not the CustomResourceDefinition"),
    ("spec: [unclosed\n", "unreadable"),
    (CRD_HEAD + "PyTorchJob}\n  versions: [{name: v2, served: true, schema: {openAPIV3Schema: {type: object}}}]\n",
     "no served version v1 with an openAPIV3Schema"),
    (CRD_HEAD + "PyTorchJob}\n  versions: [{name: v1, served: false, schema: {openAPIV3Schema: {}}}]\n",
     "no served version v1"),
    (CRD_HEAD + "TFJob}\n", "not the CustomResourceDefinition of PyTorchJob"),
])
def test_bad_crd_file_is_a_render_error(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / CRD_FILES[PYTORCH]).write_text(text)
    with pytest.raises(RenderError, match=words):
        load_schema(tmp_path, *PYTORCH)


def test_unknown_kind_is_a_render_error(schemas: Path) -> None:
    with pytest.raises(RenderError, match="no CRD known for TFJob"):
        load_schema(schemas, "kubeflow.org/v1", "TFJob")


def test_schema_is_parsed_once(schemas: Path) -> None:
    assert load_schema(schemas, *PYTORCH) is load_schema(schemas, *PYTORCH)


def test_failure_lists_at_most_five_errors(schemas: Path) -> None:
    job = pytorchjob()
    job["spec"].update({f"extra{index}": index for index in range(7)})
    with pytest.raises(RenderError) as caught:
        check_manifest(job, schemas)
    message = str(caught.value)
    assert message.startswith("k8s: PyTorchJob st-train fails 7 check(s): spec: unknown field")
    assert message.count("unknown field") == 5 and message.endswith("; and 2 more")
    assert "\n" not in message


QUANTITY = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": r"^[0-9]+(Gi|m)?$"}
# (id, schema, value, the error it must give or None when it must pass)
SEMANTICS: list[tuple[str, dict[str, Any], Any, str | None]] = [
    ("nullable-null", {"type": "string", "nullable": True}, None, None),
    ("null", {"type": "string"}, None, ": null is not allowed"),
    ("bool-not-integer", {"type": "integer"}, False, "expected integer, got boolean"),
    ("float-not-integer", {"type": "integer"}, 2.0, "expected integer, got number"),
    ("int-is-number", {"type": "number", "minimum": 1}, 3, None),
    ("int-or-string-int", QUANTITY, 8, None),
    ("int-or-string-pattern", QUANTITY, "8GB", "does not match"),
    ("re2-dollar-is-end", QUANTITY, "8Gi\n", "does not match"),
    ("preserve-unknown", {"type": "object", "x-kubernetes-preserve-unknown-fields": True}, {"a": {"b": 1}}, None),
    ("additional-false", {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
     {"b": "x"}, 'unknown field "b"'),
    ("object-without-properties", {"type": "object"}, {"b": "x"}, 'unknown field "b"'),
    ("embedded-resource", {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {}},
     {"apiVersion": "v1", "kind": "Pod", "metadata": {}}, None),
    ("enum", {"type": "string", "enum": ["a", "b"]}, "c", '"c" is not one of a, b'),
    ("exclusive-minimum", {"type": "integer", "minimum": 1, "exclusiveMinimum": True}, 1, "must be > 1"),
    ("maximum", {"type": "integer", "maximum": 10}, 11, "must be <= 10"),
    ("max-length", {"type": "string", "maxLength": 2}, "abc", "has 3 characters; allows at most 2"),
    ("min-items", {"type": "array", "items": {"type": "string"}, "minItems": 1}, [], "has 0 items; needs at least 1"),
    ("required", {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, {},
     'missing required field "a"'),
    ("any-of", {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, "x", "none of the anyOf forms"),
    ("one-of", {"oneOf": [{"type": "integer"}, {"type": "number"}]}, 3, "exactly one of the oneOf forms"),
]


@pytest.mark.parametrize(("schema", "value", "expected"), [case[1:] for case in SEMANTICS],
                         ids=[case[0] for case in SEMANTICS])
def test_structural_schema_semantics(schema: dict[str, Any], value: Any, expected: str | None) -> None:
    errors = schema_errors({"field": value}, {"type": "object", "properties": {"field": schema}})
    if expected is None:
        assert errors == []
    else:
        assert len(errors) == 1 and errors[0].startswith("field") and expected in errors[0], errors
