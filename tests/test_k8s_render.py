"""Kubernetes rendering: what the manifests say, strict CRD checks, kustomize, refusals and escaping."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import stjobs
from stjobs.backends.k8s.checks import check_manifest
from stjobs.backends.k8s.podcheck import pod_templates
from stjobs.errors import RenderError, SpecError
from tests.conftest import EXAMPLES, REPO, offline_env, stjobs_bin
from tests.k8s_emulate import expand

SCHEMAS = REPO.parent / "shared" / "k8s-schemas"
K8S = REPO / "k8s"
IMAGE = ("image", "ghcr.io/example/stjobs:1.0")
K8S_EXAMPLES = sorted(path.stem for path in EXAMPLES.glob("k8s-*.yaml"))


def manifest(name: str, *overrides: tuple[str, Any], sets: tuple[str, ...] = ()) -> dict[str, Any]:
    plan = stjobs.render(stjobs.load_spec(EXAMPLES / f"{name}.yaml", list(overrides), list(sets)), "k8s")
    text = next(item.content for item in plan.files if item.path in ("pytorchjob.yaml", "trainjob.yaml"))
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def pod(job: dict[str, Any], replica: str) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_schemas_are_at_hand() -> None:
    # CI has ../shared; without it every strict check below would be a silent no-op.
    assert (SCHEMAS / "kubeflow.org_pytorchjobs.yaml").is_file(), f"missing {SCHEMAS}"


@pytest.mark.parametrize("name", K8S_EXAMPLES)
def test_every_golden_passes_the_strict_crd_check(name: str) -> None:
    plan = stjobs.render(stjobs.load_spec(EXAMPLES / f"{name}.yaml"), "k8s", k8s_schemas=SCHEMAS)
    assert any(note.startswith("schema check: ") and "passed" in note and "(strict)" in note for note in plan.notes)
    without = stjobs.render(stjobs.load_spec(EXAMPLES / f"{name}.yaml"), "k8s")
    assert any(note.startswith("schema check skipped") for note in without.notes)
    assert [f.content for f in plan.files] == [f.content for f in without.files]


def test_pytorchjob_shape() -> None:
    job = manifest("k8s-pytorchjob")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    spec = job["spec"]
    assert spec["nprocPerNode"] == "2"
    replicas = spec["pytorchReplicaSpecs"]
    assert {k: v["replicas"] for k, v in replicas.items()} == {"Master": 1, "Worker": 1}
    assert {v["restartPolicy"] for v in replicas.values()} == {"OnFailure"}
    assert spec["runPolicy"] == {"backoffLimit": 3, "cleanPodPolicy": "Running", "activeDeadlineSeconds": 1800}
    for replica in replicas:
        (main,) = pod(job, replica)["containers"]
        assert main["name"] == "pytorch"
        assert main["ports"] == [{"name": "pytorchjob-port", "containerPort": 29500, "protocol": "TCP"}]
        command = main["command"]
        assert command[:3] == ["python", "-m", "torch.distributed.run"]
        # The operator's PET_* variables carry the shape; stating it again could only disagree with them.
        assert not {"--nnodes", "--nproc-per-node", "--node-rank", "--rdzv-endpoint", "--standalone"} & set(command)
        assert main["resources"] == {"requests": {"cpu": 2, "memory": "4Gi", "ephemeral-storage": "20Gi"},
                                     "limits": {"memory": "4Gi"}}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in main["volumeMounts"]
        assert main["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        assert main["workingDir"] == "/workspace"
        assert pod(job, replica)["securityContext"]["runAsNonRoot"] is True
        assert pod(job, replica)["serviceAccountName"] == "trainer"
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1024Mi"}} in pod(job, replica)["volumes"]
    assert "initContainers" not in pod(job, "Master")
    (wait,) = pod(job, "Worker")["initContainers"]
    assert wait["command"][-3:] == ["k8s-pytorchjob-master-0", "29500", "900"]


def test_mounted_code_comes_from_the_pvc() -> None:
    job = manifest("k8s-pytorchjob", ("workdir", "/mnt/stjobs/project"), sets=("build.code=mount", "k8s.pvc=code"))
    main = pod(job, "Master")["containers"][0]
    assert main["workingDir"] == "/mnt/stjobs/project"
    assert {"name": "outputs", "mountPath": "/mnt/stjobs"} in main["volumeMounts"]


def test_single_node_is_a_master_alone() -> None:
    job = manifest("k8s-pytorchjob", ("nodes", 1))
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def test_gpu_elastic_job_carries_every_scheduling_option() -> None:
    job = manifest("k8s-gpu-elastic")
    spec = job["spec"]
    assert spec["elasticPolicy"] == {"minReplicas": 2, "maxReplicas": 4, "rdzvBackend": "c10d", "maxRestarts": 10,
                                     "rdzvConf": [{"key": "join_timeout", "value": "900"}]}
    assert list(spec["pytorchReplicaSpecs"]) == ["Worker"]
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    assert spec["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2, "queue": "gpu-queue",
                                                     "priorityClass": "high-priority"}
    assert spec["runPolicy"]["ttlSecondsAfterFinished"] == 86400
    worker = pod(job, "Worker")
    assert "initContainers" not in worker, "worker-0 hosts the elastic rendezvous: it cannot wait for itself"
    assert worker["schedulerName"] == "volcano"
    assert worker["priorityClassName"] == "high-priority"
    assert worker["imagePullSecrets"] == [{"name": "ghcr-pull"}]
    assert worker["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert worker["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "podAntiAffinity" in worker["affinity"]
    (main,) = worker["containers"]
    assert main["resources"]["limits"] == {"memory": "480Gi", "nvidia.com/gpu": 8}
    assert "--max-restarts" not in main["command"], "elastic restarts come from elasticPolicy.maxRestarts"
    env = env_of(main)
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "minilm-elastic-secrets", "key": "HF_TOKEN"}}
    assert env["STJOBS_OUTPUT_DIR"] == "/mnt/stjobs/outputs/minilm-elastic"
    assert env["NCCL_IB_DISABLE"] == "0"
    assert {"name": "outputs", "persistentVolumeClaim": {"claimName": "training-outputs"}} in worker["volumes"]


def test_trainjob_shape() -> None:
    job = manifest("k8s-trainjob")
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    spec = job["spec"]
    assert spec["runtimeRef"]["name"] == "torch-distributed"
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    assert not [e["name"] for e in trainer["env"] if e["name"].startswith("PET_")]
    assert "podTemplateOverrides" not in spec
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "stjobs"
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod_spec = rjob["template"]["spec"]["template"]["spec"]
    assert rjob["name"] == "node" and pod_spec["containers"][0]["name"] == "node"
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"name": "outputs", "persistentVolumeClaim": {"claimName": "training-outputs"}} in pod_spec["volumes"]


@pytest.mark.parametrize("name,overrides,sets,field", [
    ("k8s-trainjob", [("nodes", "2:4")], [], "nodes"),
    ("k8s-trainjob", [], ["k8s.scheduler=volcano"], "k8s.scheduler"),
    ("k8s-trainjob", [], ["k8s.priority_class=high"], "k8s.priority_class"),
    ("k8s-trainjob", [], ["k8s.restart_policy=Never"], "k8s.restart_policy"),
    ("k8s-pytorchjob", [("image", None)], [], "image"),
    ("k8s-pytorchjob", [("launcher", "accelerate")], [], "launcher"),
    ("k8s-pytorchjob", [], ["k8s.scheduler=kueue"], "k8s.queue"),
    ("k8s-pytorchjob", [], ["k8s.queue=q"], "k8s.queue"),
    ("k8s-pytorchjob", [], ["k8s.node_selector={bad key: x}"], "k8s.node_selector.bad key"),
    ("k8s-pytorchjob", [], ["k8s.node_selector={zone: 'two words'}"], "k8s.node_selector.zone"),
    ("k8s-pytorchjob", [], ["k8s.tolerations=[{key: a, operator: Maybe}]"], "k8s.tolerations[0].operator"),
    ("k8s-pytorchjob", [], ["k8s.tolerations=[{key: a, effct: NoSchedule}]"], "k8s.tolerations[0].effct"),
    ("k8s-pytorchjob", [], ["k8s.affinity={nodeAfinity: {}}"], "k8s.affinity.nodeAfinity"),
    ("k8s-pytorchjob", [], ["build.uid=0"], "build.uid"),
    ("k8s-pytorchjob", [], ["k8s.namespace=ML"], "k8s.namespace"),
    ("k8s-pytorchjob", [], ["k8s.pvc_mount_path=relative/dir"], "k8s.pvc_mount_path"),
    ("k8s-pytorchjob", [("nodes", "4:2")], [], "nodes"),
    ("k8s-pytorchjob", [], ["build.code=mount"], "build.code"),
])
def test_refusals_name_the_field(name: str, overrides: list[tuple[str, Any]], sets: list[str], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        stjobs.render(stjobs.load_spec(EXAMPLES / f"{name}.yaml", overrides, sets), "k8s")
    assert caught.value.field == field, str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("backend", ["local", "slurm"])
def test_elastic_sizes_are_refused_where_no_scheduler_resizes(backend: str) -> None:
    with pytest.raises(SpecError, match="a fixed node count on the"):
        stjobs.render(stjobs.load_spec(EXAMPLES / "two-nodes.yaml", [("nodes", "1:2")]), backend)


def test_cli_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([stjobs_bin(), "render", str(EXAMPLES / "k8s-trainjob.yaml"), "-b", "k8s", "--nodes",
                           "2:4", "-o", str(out)], capture_output=True, text=True, env=offline_env())
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "nodes" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_strict_check_refuses_what_the_api_server_would(tmp_path: Path) -> None:
    job = manifest("k8s-pytorchjob")
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(RenderError, match="imagePullPolcy"):
        check_manifest(job, SCHEMAS)
    job = manifest("k8s-pytorchjob")
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    with pytest.raises(RenderError, match="Master"):
        check_manifest(job, None)  # stjobs' own rules run even without the schemas


def test_user_strings_survive_kubelet_expansion() -> None:
    tricky = ["$(HOME)", "$$(HOME)", "cost: $5", "${PATH}", "a'b\"c", "$", "line\nbreak", "`id`", "ünï"]
    job = manifest("k8s-pytorchjob", ("env", {"NOTE": "$(HOME) and $$"}),
                   sets=("entrypoint.args=" + yaml.safe_dump(tricky, default_flow_style=True).strip(),))
    main = pod(job, "Master")["containers"][0]
    env = {"HOME": "/home/expanded"}
    assert [expand(arg, env) for arg in main["command"][-len(tricky):]] == tricky
    assert expand(env_of(main)["NOTE"], env) == "$(HOME) and $$"


def test_secret_values_never_reach_k8s_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    subprocess.run([stjobs_bin(), "render", str(EXAMPLES / "k8s-gpu-elastic.yaml"), "-b", "k8s", "-o", str(out)],
                   check=True, capture_output=True, env=offline_env(HF_TOKEN="hf_canary_value_123"))
    files = [path for path in out.rglob("*") if path.is_file()]
    assert (out / "images" / "Dockerfile.gpu") in files
    for path in files:
        assert "hf_canary_value_123" not in path.read_text()
    assert "secretKeyRef" in (out / "pytorchjob.yaml").read_text()


def test_kustomize_builds_every_golden_offline() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (scripts/test.sh installs Debian's kubernetes-client when it is missing)"
    built = list(yaml.safe_load_all(subprocess.run([kubectl, "kustomize", str(K8S)], check=True,
                                                   capture_output=True, text=True, timeout=60).stdout))
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    manifests = sorted(str(p.relative_to(K8S)) for p in (K8S / "examples").glob("*/*.yaml")
                       if p.name in ("pytorchjob.yaml", "trainjob.yaml"))
    assert sorted(listed) == manifests, "k8s/kustomization.yaml must list every golden example"
    goldens = [yaml.safe_load((K8S / path).read_text()) for path in manifests]
    for example in (K8S / "examples").iterdir():  # each example also builds on its own
        one = yaml.safe_load(subprocess.run([kubectl, "kustomize", str(example)], check=True, capture_output=True,
                                            text=True, timeout=60).stdout)
        assert one in goldens
    key = lambda obj: (obj["kind"], obj["metadata"]["name"])  # noqa: E731
    assert sorted(built, key=key) == sorted(goldens, key=key)


@pytest.mark.parametrize("name", K8S_EXAMPLES)
def test_pod_templates_pass_the_core_kubernetes_schema(name: str) -> None:
    """The CRDs embed PodTemplateSpec, but a second opinion from the core schemas (kubernetes-validate, strict:
    unknown fields refused) catches what a CRD generated from an older core/v1 would let through."""
    import kubernetes_validate

    job = yaml.safe_load((K8S / "examples" / name / f"{manifest(name)['kind'].lower()}.yaml").read_text())
    for replica, template in pod_templates(job):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{name}-{replica.lower()}"},
                   "template": template}
        kubernetes_validate.validate(wrapped, "1.33", strict=True)
    broken = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
              "template": {**template, "spec": {**template["spec"], "restartPolice": "Never"}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33", strict=True)
    plan = stjobs.render(stjobs.load_spec(EXAMPLES / f"{name}.yaml"), "k8s", k8s_schemas=SCHEMAS)
    assert any(note.startswith("core pod check: every pod template passed") for note in plan.notes)


def test_core_pod_check_refuses_a_bad_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    from stjobs.backends.k8s import manifest as k8s_manifest
    from stjobs.backends.k8s import podcheck as k8s_podcheck

    real = k8s_manifest.pod_spec
    monkeypatch.setattr(k8s_manifest, "pod_spec", lambda *a: {**real(*a), "hostNetwork": "yes please"})
    job = manifest("k8s-pytorchjob")
    with pytest.raises(RenderError, match="hostNetwork"):
        k8s_podcheck.check_pod_templates(job)
