"""Kubernetes pod decisions, one table each: where the Hugging Face cache lives, the termination grace period, the
spec's pod labels and annotations, the ReadWriteMany and gang-scheduling notes."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

import stjobs
from stjobs.errors import SpecError
from tests.conftest import EXAMPLES


def render(name: str, overrides: list[tuple[str, Any]], sets: list[str]) -> stjobs.Plan:
    return stjobs.render(stjobs.load_spec(EXAMPLES / f"{name}.yaml", overrides, sets), "k8s")


def pods(plan: stjobs.Plan) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod template, main container) of every replica; for a TrainJob the runtime patch's pod, with the trainer's
    env and resources folded into its container."""
    text = next(item.content for item in plan.files if item.path in ("pytorchjob.yaml", "trainjob.yaml"))
    job = yaml.safe_load(text)
    if job["kind"] == "PyTorchJob":
        return [(replica["template"], replica["template"]["spec"]["containers"][0])
                for replica in job["spec"]["pytorchReplicaSpecs"].values()]
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    template = rjob["template"]["spec"]["template"]
    trainer = job["spec"]["trainer"]
    container = {**template["spec"]["containers"][0], "env": trainer["env"], "resources": trainer["resourcesPerNode"]}
    return [(template, container)]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value") for item in container["env"]}


# spec values -> HF_HOME in the pods, the cache volume (None: none of its own), its mount, the ephemeral request
@pytest.mark.parametrize("name,overrides,sets,hf_home,volume,mounted,ephemeral", [
    ("k8s-pytorchjob", [], [], "/cache/huggingface", {"emptyDir": {}}, True, "20Gi"),
    ("k8s-pytorchjob", [], ["k8s.cache_gb=50"], "/cache/huggingface", {"emptyDir": {}}, True, "50Gi"),
    ("k8s-pytorchjob", [], ["k8s.cache_gb=2.5"], "/cache/huggingface", {"emptyDir": {}}, True, "2560Mi"),
    ("k8s-pytorchjob", [], ["k8s.cache_gb=null"], "/cache/huggingface", {"emptyDir": {}}, True, None),
    ("k8s-pytorchjob", [], ["k8s.pvc=out"], "/mnt/stjobs/cache/huggingface", None, False, None),
    ("k8s-pytorchjob", [], ["k8s.pvc=out", "k8s.pvc_mount_path=/data/"], "/data/cache/huggingface", None, False,
     None),
    ("k8s-pytorchjob", [], ["k8s.cache_pvc=hf"], "/cache/huggingface",
     {"persistentVolumeClaim": {"claimName": "hf"}}, True, None),
    ("k8s-pytorchjob", [], ["k8s.pvc=out", "k8s.cache_pvc=hf"], "/cache/huggingface",
     {"persistentVolumeClaim": {"claimName": "hf"}}, True, None),
    ("k8s-pytorchjob", [("env", {"HF_HOME": "/models/hf"})], [], "/models/hf", None, False, None),
    ("k8s-trainjob", [], [], "/mnt/stjobs/cache/huggingface", None, False, None),
    ("k8s-trainjob", [], ["k8s.pvc=null"], "/cache/huggingface", {"emptyDir": {}}, True, "20Gi"),
    ("k8s-h100-trainjob", [], [], "/cache/huggingface", {"persistentVolumeClaim": {"claimName": "hf-cache"}}, True,
     None),
])
def test_the_hf_cache_outlives_the_container(name: str, overrides: list[tuple[str, Any]], sets: list[str],
                                             hf_home: str, volume: dict[str, Any] | None, mounted: bool,
                                             ephemeral: str | None) -> None:
    for template, container in pods(render(name, overrides, sets)):
        assert env_of(container)["HF_HOME"] == hf_home
        cache = [{k: v for k, v in vol.items() if k != "name"} for vol in template["spec"]["volumes"]
                 if vol["name"] == "hf-cache"]
        assert cache == ([volume] if volume else [])
        assert ({"name": "hf-cache", "mountPath": "/cache/huggingface"} in container["volumeMounts"]) == mounted
        assert container["resources"]["requests"].get("ephemeral-storage") == ephemeral


# spec values -> terminationGracePeriodSeconds (None: Kubernetes' 30 s default)
@pytest.mark.parametrize("name,sets,grace", [
    ("k8s-pytorchjob", [], 120),  # the built-in training is resumable: slurm.signal_lead_s's default
    ("k8s-pytorchjob", ["slurm.signal_lead_s=300"], 300),
    ("k8s-pytorchjob", ["slurm.signal_lead_s=0"], None),
    ("k8s-pytorchjob", ["k8s.grace_s=900"], 900),
    ("k8s-pytorchjob", ["entrypoint.resumable=false"], None),
    ("k8s-pytorchjob", ["entrypoint.resumable=false", "k8s.grace_s=60"], 60),
    ("k8s-trainjob", [], 120),
    ("k8s-trainjob", ["k8s.grace_s=45"], 45),
    ("k8s-v100-pytorchjob", [], 300),
])
def test_the_grace_period_is_the_signal_lead(name: str, sets: list[str], grace: int | None) -> None:
    for template, _ in pods(render(name, [], sets)):
        assert template["spec"].get("terminationGracePeriodSeconds") == grace


STJOBS_LABELS = {"app.kubernetes.io/name": "k8s-pytorchjob", "app.kubernetes.io/managed-by": "stjobs"}


# spec values -> the pod template's metadata
@pytest.mark.parametrize("sets,metadata", [
    ([], {"labels": STJOBS_LABELS}),
    (["k8s.pod_labels={team: search}"], {"labels": {**STJOBS_LABELS, "team": "search"}}),
    (['k8s.pod_annotations={sidecar.istio.io/inject: "false"}'],
     {"labels": STJOBS_LABELS, "annotations": {"sidecar.istio.io/inject": "false"}}),
    (["k8s.pod_labels={example.com/tier: gpu}", "k8s.pod_annotations={note: 'two words: fine'}"],
     {"labels": {**STJOBS_LABELS, "example.com/tier": "gpu"}, "annotations": {"note": "two words: fine"}}),
])
def test_pod_labels_and_annotations(sets: list[str], metadata: dict[str, Any]) -> None:
    for template, _ in pods(render("k8s-pytorchjob", [], sets)):
        assert template["metadata"] == metadata
    for template, _ in pods(render("k8s-trainjob", [], sets)):
        assert template["metadata"]["labels"] == {**metadata["labels"], "app.kubernetes.io/name": "minilm-trainjob"}
        assert template["metadata"].get("annotations") == metadata.get("annotations")


@pytest.mark.parametrize("sets,field", [
    (["k8s.pod_labels={app.kubernetes.io/managed-by: me}"], "k8s.pod_labels.app.kubernetes.io/managed-by"),
    (["k8s.pod_labels={team: 'two words'}"], "k8s.pod_labels.team"),
    (["k8s.pod_annotations={sidecar.istio.io/inject: false}"], "k8s.pod_annotations.sidecar.istio.io/inject"),
    (["k8s.pod_annotations={bad key: x}"], "k8s.pod_annotations.bad key"),
    (["k8s.pod_annotations=[a]"], "k8s.pod_annotations"),
    (["k8s.grace_s=0"], "k8s.grace_s"),
    (["k8s.cache_gb=0"], "k8s.cache_gb"),
    (["k8s.cache_pvc=Not_A_Name"], "k8s.cache_pvc"),
])
def test_pod_option_refusals_name_the_field(sets: list[str], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        render("k8s-pytorchjob", [], sets)
    assert caught.value.field == field, str(caught.value)
    assert "\n" not in str(caught.value)


# spec values -> the PVCs the plan says need ReadWriteMany
@pytest.mark.parametrize("name,overrides,sets,claims", [
    ("k8s-pytorchjob", [], [], []),
    ("k8s-pytorchjob", [], ["k8s.pvc=out"], ["out"]),
    ("k8s-pytorchjob", [("nodes", 1)], ["k8s.pvc=out", "k8s.cache_pvc=hf"], []),  # one pod: ReadWriteOnce will do
    ("k8s-pytorchjob", [], ["k8s.pvc=out", "k8s.cache_pvc=hf"], ["out", "hf"]),
    ("k8s-pytorchjob", [], ["k8s.pvc=same", "k8s.cache_pvc=same"], ["same"]),
    ("k8s-h100-trainjob", [], [], ["training-outputs", "hf-cache"]),
    ("k8s-v100-pytorchjob", [], [], []),
])
def test_a_pvc_shared_by_pods_needs_read_write_many(name: str, overrides: list[tuple[str, Any]], sets: list[str],
                                                    claims: list[str]) -> None:
    notes = [note for note in render(name, overrides, sets).notes if "ReadWriteMany" in note]
    assert [note.split()[1] for note in notes] == claims


GPU4 = [("gpus_per_node", 4), ("procs_per_node", 4), ("cpus_per_task", 8)]  # 2 pods of 4 GPUs


# spec values -> the plan's gang-scheduling note (None: none, a single node or no GPU needs no gang)
@pytest.mark.parametrize("name,overrides,sets,note", [
    ("k8s-pytorchjob", [], [], None),  # CPU pods hold no GPUs
    ("k8s-pytorchjob", GPU4, [], "warning: no gang scheduling (k8s.scheduler: default): a "
     "half-placed 2 x 4-GPU job holds up to 4 GPUs"),
    ("k8s-pytorchjob", [*GPU4, ("nodes", 1)], [], None),
    ("k8s-pytorchjob", GPU4, ["k8s.scheduler=volcano"], "gang scheduling: volcano places 2 pods"),
    ("k8s-pytorchjob", GPU4, ["k8s.scheduler=scheduler-plugins"],
     "gang scheduling: scheduler-plugins places 2 pods"),
    ("k8s-pytorchjob", GPU4, ["k8s.scheduler=kueue", "k8s.queue=q"],
     "gang scheduling: Kueue admits all 2 pods or none"),
    ("k8s-gpu-elastic", [], [], "gang scheduling: volcano places 2 pods"),
    ("k8s-gpu-elastic", [], ["k8s.scheduler=default", "k8s.queue=null"],
     "warning: no gang scheduling (k8s.scheduler: default): a half-placed 4 x 8-GPU job holds up to 8 GPUs"),
    ("k8s-trainjob", [], [], "gang scheduling: Kueue admits all 2 pods or none"),
    ("k8s-trainjob", [], ["k8s.scheduler=default", "k8s.queue=null"],
     "warning: no gang scheduling from stjobs: a TrainJob gets it from its runtime's podGroupPolicy"),
    ("k8s-v100-pytorchjob", [], [], None),
])
def test_multi_node_gpu_jobs_are_gang_scheduled_or_warned(name: str, overrides: list[tuple[str, Any]],
                                                          sets: list[str], note: str | None) -> None:
    notes = [item for item in render(name, overrides, sets).notes if "gang scheduling" in item]
    assert [item[:len(note)] for item in notes] == ([note] if note else [])


def test_gang_scheduled_pytorchjob_waits_for_every_pod() -> None:
    text = next(item.content for item in render("k8s-pytorchjob", GPU4, ["k8s.scheduler=volcano"])
                .files if item.path == "pytorchjob.yaml")
    job = yaml.safe_load(text)
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2}
    assert {r["template"]["spec"]["schedulerName"] for r in job["spec"]["pytorchReplicaSpecs"].values()} == {"volcano"}
