"""The rendered manifests' pods, run as local processes with the operator's env (see tests/k8s_emulate.py): a
PyTorchJob, an elastic PyTorchJob and a TrainJob of 2 pods x 2 processes each must really train together."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import stjobs
from stjobs.train.events import parse_events
from tests.conftest import EXAMPLES, REPO, offline_env, stjobs_bin
from tests.k8s_emulate import Pod, hostnames, pytorchjob_pods, resolvable, run_pods, trainjob_pods

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    subprocess.run([sys.executable, "-m", "stjobs.train.models", "--tiny-from",
                    str(EXAMPLES / "data" / "train.jsonl"), "--out", str(out)], check=True, cwd=REPO,
                   env=offline_env(), capture_output=True)
    return out


def render_job(spec_name: str, model: Path, out: Path, *sets: str, **fields: Any) -> dict[str, Any]:
    args = ["--model", str(model), "--train-data", "examples/data/train.jsonl", "--max-steps", "30",
            "--per-device-batch-size", "16", "--logging-steps", "5", "--save-steps", "1000"]
    overrides = [("output_dir", str(out)), ("gpus_per_node", 0), ("procs_per_node", 2), ("cpus_per_task", 2),
                 ("mem_gb", None), *fields.items()]
    spec = stjobs.load_spec(EXAMPLES / f"{spec_name}.yaml", overrides,
                            ["entrypoint.args=" + json.dumps(args), "k8s.pvc=null", "secrets=[]", *sets])
    plan = stjobs.render(spec, "k8s")
    text = next(f.content for f in plan.files if f.path in ("pytorchjob.yaml", "trainjob.yaml"))
    job: dict[str, Any] = yaml.safe_load(text)
    return job


def train(pods: list[Pod], tmp_path: Path) -> list[dict[str, Any]]:
    # The "image": this checkout's venv first on PATH, so the manifest's `python` is ours.
    with resolvable(hostnames(pods)):
        results = run_pods(pods, offline_env(), timeout_s=300, logs=tmp_path / "pods")
    log = "\n".join(result.output for result in results)
    for result in results:
        assert result.code == 0, f"{result.name} exited {result.code}:\n{result.output[-3000:]}"
    return parse_events(log)


def check_world(events: list[dict[str, Any]], world: int, out: Path) -> None:
    starts = [e for e in events if e["event"] == "start"]
    assert sorted(e["rank"] for e in starts) == list(range(world))
    assert {e["world_size"] for e in starts} == {world}
    losses = [e["loss"] for e in events if e["event"] == "loss"]
    assert len(losses) >= 3 and losses[-1] < losses[0], losses
    assert [e["path"] for e in events if e["event"] == "saved"] == [str(out / "final")]
    assert (out / "final" / "modules.json").is_file()


def test_pytorchjob_pods_train_together(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = render_job("k8s-pytorchjob", tiny_model, out, "rendezvous.port=29611")
    pods = pytorchjob_pods(job, workdir_map={"/workspace": str(REPO)})
    assert [p.name for p in pods] == ["k8s-pytorchjob-master-0", "k8s-pytorchjob-worker-0"]
    assert [len(p.init) for p in pods] == [0, 1]
    with resolvable(hostnames(pods)):
        results = run_pods(pods, offline_env(), timeout_s=300, logs=tmp_path / "pods")
    master, worker = results
    assert worker.init_codes == [0], "the wait-for-master init container found the master's port"
    assert "k8s-pytorchjob-master-0:29611 answers" in worker.output
    assert (master.code, worker.code) == (0, 0), master.output[-3000:] + worker.output[-3000:]
    check_world(parse_events(master.output + "\n" + worker.output), 4, out)


def test_wait_for_master_gives_up_with_a_clear_message(tmp_path: Path) -> None:
    job = render_job("k8s-pytorchjob", Path("unused"), tmp_path / "out", "rendezvous.port=29612",
                     "rendezvous.timeout_s=10")
    worker = pytorchjob_pods(job)[1]
    with resolvable([worker.hostname, "k8s-pytorchjob-master-0"]):
        (result,) = run_pods([Pod(worker.name, worker.hostname, init=worker.init, main=None)], offline_env(),
                             timeout_s=60, logs=tmp_path / "pods")
    assert result.init_codes == [1] and result.code is None
    assert "k8s-pytorchjob-master-0:29612 did not answer within 10 s" in result.output


def test_elastic_pytorchjob_pods_meet_at_worker_0(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = render_job("k8s-pytorchjob", tiny_model, out, "rendezvous.port=29613", "rendezvous.timeout_s=120",
                     nodes="1:2")
    assert job["spec"]["elasticPolicy"]["minReplicas"] == 1
    pods = pytorchjob_pods(job, workdir_map={"/workspace": str(REPO)})
    assert [p.name for p in pods] == ["k8s-pytorchjob-worker-0", "k8s-pytorchjob-worker-1"]
    assert pods[0].main is not None and pods[0].main.env["PET_NNODES"] == "1:2"
    check_world(train(pods, tmp_path), 4, out)


def test_trainjob_pods_train_together(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = render_job("k8s-trainjob", tiny_model, out, "k8s.queue=null", "k8s.scheduler=default",
                     "k8s.node_selector={}", "k8s.tolerations=[]")
    pods = trainjob_pods(job, workdir_map={"/workspace": str(REPO)})
    assert [p.hostname for p in pods] == ["minilm-trainjob-node-0-0.minilm-trainjob",
                                          "minilm-trainjob-node-0-1.minilm-trainjob"]
    check_world(train(pods, tmp_path), 4, out)


def test_emulation_uses_the_manifest_command_verbatim(tmp_path: Path) -> None:
    """Guard against the harness papering over a manifest bug: the argv run is the manifest's, expanded."""
    job = render_job("k8s-pytorchjob", Path("/m"), tmp_path / "out")
    (main,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    pod = pytorchjob_pods(job)[0]
    assert pod.main is not None and pod.main.argv == main["command"]
    assert pod.main.env["PET_NODE_RANK"] == "0" and pod.main.env["PET_NPROC_PER_NODE"] == "2"
    assert stjobs_bin()
