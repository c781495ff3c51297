"""Submitting to Kubernetes and controlling the job: the real kubernetes client against tests/k8s_fake.py, a
stateful API server that validates every create against the upstream CRD schema. The tests play the operator
(conditions) and the kubelet (pods and their logs)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import stjobs
from stjobs.backends.k8s import control as k8s_control
from stjobs.backends.k8s import logstream
from stjobs.cli import main
from stjobs.errors import SubmitError
from stjobs.jobs import JobRecord, State, jobs_root, list_records, load_record
from stjobs.plan import Plan, RenderedFile
from tests.conftest import EXAMPLES, REPO, offline_env, stjobs_bin
from tests.k8s_fake import SCHEMAS_DIR, FakeKube, write_kubeconfig

pytest.importorskip("kubernetes")
pytestmark = pytest.mark.skipif(not SCHEMAS_DIR.is_dir(), reason=f"no Kubeflow CRD schemas at {SCHEMAS_DIR}")

SPEC = REPO / "tests" / "data" / "k8s-tiny.yaml"
IMAGE = "ghcr.io/example/stjobs:1.0"
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([stjobs_bin(), *args], capture_output=True, text=True, env=offline_env(), cwd=REPO,
                          timeout=60)


def submit(*sets: str) -> JobRecord:
    return stjobs.submit(stjobs.load_spec(SPEC, sets=sets), "k8s")


def manifest(plan: Plan) -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load(plan.file("pytorchjob.yaml").content)
    return data


def with_manifest(plan: Plan, edit: dict[str, object]) -> Plan:
    """The plan with its PyTorchJob edited after rendering: what the render-time checks would refuse."""
    files = tuple(RenderedFile(item.path, yaml.safe_dump(edit)) if item.path == "pytorchjob.yaml" else item
                  for item in plan.files)
    return dataclasses.replace(plan, files=files)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def job_dirs() -> list[Path]:
    return sorted(jobs_root().iterdir()) if jobs_root().is_dir() else []


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stjobs: error: k8s: "), done.stderr
    return lines[0]


def test_submit_creates_the_rendered_manifest(fake: FakeKube) -> None:
    plan = stjobs.render(stjobs.load_spec(SPEC), "k8s")
    record = stjobs.submit(stjobs.load_spec(SPEC), "k8s")
    rendered = manifest(plan)
    create = next(r for r in fake.requests if r.method == "POST")
    assert create.path == "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs"
    assert create.query == {"fieldValidation": "Strict"}
    assert create.body == rendered
    stored = fake.get("pytorchjobs", "tiny")
    assert stored is not None
    assert all(stored["metadata"].pop(key) for key in SERVER_FIELDS)
    assert stored == rendered
    assert record.details == {"namespace": "default", "name": "tiny", "kind": "PyTorchJob", "group": "kubeflow.org",
                              "version": "v1", "plural": "pytorchjobs", "server": fake.url}
    job_dir = Path(record.job_dir)
    assert (job_dir / "pytorchjob.yaml").read_text() == plan.file("pytorchjob.yaml").content
    assert load_record(record.job_id) == record


def test_cli_submit_status_logs_cancel(fake: FakeKube) -> None:
    done = cli("submit", str(SPEC), "--backend", "k8s")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[1]

    def state() -> tuple[str, str]:
        status = cli("status", job_id, "--json")
        assert status.returncode == 0, status.stderr
        row = json.loads(status.stdout)
        return row["state"], row["reason"]

    assert state() == ("PENDING", "")
    fake.set_condition("pytorchjobs", "tiny", "Created", message="PyTorchJob tiny is created.")
    assert state() == ("PENDING", "")
    fake.set_condition("pytorchjobs", "tiny", "Running", message="PyTorchJob tiny is running.")
    assert state() == ("RUNNING", "")

    fake.add_pytorchjob_pods("tiny", ["[rank0]: step 1\n[rank1]: step 1\n", "[rank2]: step 1\n[rank3]: step 1\n"])
    logs = cli("logs", job_id, "--raw")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == ("==> tiny-master-0 <==\n[rank0]: step 1\n[rank1]: step 1\n"
                           "==> tiny-worker-0 <==\n[rank2]: step 1\n[rank3]: step 1\n")
    assert cli("logs", job_id, "--rank", "3").stdout == "==> tiny-worker-0 <==\n[rank3]: step 1\n"

    cancel = cli("cancel", job_id)
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.strip() == f"{job_id}: CANCELLED"
    assert fake.get("pytorchjobs", "tiny") is None
    assert not fake.pods, "the pods go with the job"
    delete = next(r for r in fake.requests if r.method == "DELETE")
    assert delete.query["propagationPolicy"] == "Foreground"
    assert state() == ("CANCELLED", "")


@pytest.mark.parametrize("conditions,expected", [
    ([], (State.PENDING, "")),
    ([("Created", "")], (State.PENDING, "")),
    ([("Created", ""), ("Running", "")], (State.RUNNING, "")),
    ([("Created", ""), ("Running", ""), ("Restarting", "worker 0 exited 1; restarting")],
     (State.RUNNING, "worker 0 exited 1; restarting")),
    ([("Created", ""), ("Running", ""), ("Succeeded", "PyTorchJob tiny is successfully completed.")],
     (State.COMPLETED, "")),
    ([("Created", ""), ("Running", ""), ("Failed", "PyTorchJob tiny is failed because 1 Master replica(s) failed.")],
     (State.FAILED, "PyTorchJob tiny is failed because 1 Master replica(s) failed.")),
    ([("Created", ""), ("Suspended", "PyTorchJob tiny is suspended.")],
     (State.PENDING, "PyTorchJob tiny is suspended.")),
], ids=lambda value: "-".join(c[0] for c in value) or "none" if isinstance(value, list) else None)
def test_status_follows_the_newest_condition(fake: FakeKube, conditions: list[tuple[str, str]],
                                             expected: tuple[State, str]) -> None:
    record = submit()
    for kind, message in conditions:
        fake.set_condition("pytorchjobs", "tiny", kind, message=message)
    current = stjobs.job_status(record.job_id)
    assert (current.state, current.reason) == expected


def test_a_condition_set_false_no_longer_counts(fake: FakeKube) -> None:
    record = submit()
    fake.set_condition("pytorchjobs", "tiny", "Running")
    fake.set_condition("pytorchjobs", "tiny", "Suspended", message="suspended by kueue")
    assert stjobs.job_status(record.job_id).state is State.PENDING
    fake.set_condition("pytorchjobs", "tiny", "Suspended", status="False")
    fake.set_condition("pytorchjobs", "tiny", "Running")
    assert stjobs.job_status(record.job_id).state is State.RUNNING


def test_a_finished_job_stays_finished_when_its_object_goes(fake: FakeKube) -> None:
    """ttlSecondsAfterFinished deletes the object: the state seen last is kept, and cancel cleans up."""
    record = submit()
    fake.set_condition("pytorchjobs", "tiny", "Succeeded")
    assert stjobs.job_status(record.job_id).state is State.COMPLETED
    fake.delete(fake.crds["kubeflow.org", "v1", "pytorchjobs"], "default", "tiny", "Background")
    assert stjobs.job_status(record.job_id).state is State.COMPLETED


def test_an_object_deleted_behind_our_back_is_lost(fake: FakeKube) -> None:
    record = submit()
    fake.set_condition("pytorchjobs", "tiny", "Running")
    fake.delete(fake.crds["kubeflow.org", "v1", "pytorchjobs"], "default", "tiny", "Background")
    current = stjobs.job_status(record.job_id)
    assert (current.state, current.reason) == (State.LOST, "the object is gone from the cluster")


def test_cancel_waits_for_the_foreground_deletion(fake: FakeKube) -> None:
    fake.foreground_delay_s = 1.0
    record = submit()
    fake.set_condition("pytorchjobs", "tiny", "Running")
    seen: list[str] = []

    def look() -> None:  # while the object waits for its pods, with a deletionTimestamp
        wait_for(lambda: "deletionTimestamp" in (fake.get("pytorchjobs", "tiny") or {}).get("metadata", {}))
        seen.append(stjobs.job_status(record.job_id).reason)

    watcher = threading.Thread(target=look)
    watcher.start()
    final = stjobs.cancel(record.job_id)
    watcher.join()
    assert final.state is State.CANCELLED
    assert seen == ["being deleted (its pods stop first)"]


def test_cancel_of_a_finished_job_deletes_it_and_keeps_its_outcome(fake: FakeKube) -> None:
    record = submit()
    fake.set_condition("pytorchjobs", "tiny", "Failed", message="Master exited 1")
    final = stjobs.cancel(record.job_id)
    assert (final.state, final.reason) == (State.FAILED, "Master exited 1")
    assert fake.get("pytorchjobs", "tiny") is None
    assert stjobs.job_status(record.job_id).state is State.FAILED
    submit()  # the name is free again


def test_a_listing_is_one_list_call_per_kind_not_one_call_per_job(fake: FakeKube) -> None:
    """`stjobs status` of many jobs: one list of each kind's objects by the label stjobs puts on them, one pod
    list for the TrainJobs waiting to run, and a GET by name only for a job the list lacks whose end is unknown."""
    for n in range(6):
        submit(f"name=p{n}")
    for n in range(4):
        submit(f"name=t{n}", "k8s.kind=trainjob")
    fake.set_condition("pytorchjobs", "p0", "Running")
    fake.set_condition("pytorchjobs", "p1", "Succeeded")
    fake.set_condition("pytorchjobs", "p2", "Failed", message="1 Master replica(s) failed")
    fake.set_condition("pytorchjobs", "p3", "Running")
    fake.add_trainjob_pods("t1", ["[rank0]: a\n"])
    fake.add_trainjob_pods("t3", ["[rank0]: b\n"], phase="Pending")
    fake.set_condition("trainjobs", "t2", "Complete")
    assert len(stjobs.status()) == 10  # sees p1 finished: kept when its object goes
    pytorchjobs = fake.crds["kubeflow.org", "v1", "pytorchjobs"]
    fake.delete(pytorchjobs, "default", "p1", "Background")  # its TTL
    fake.delete(pytorchjobs, "default", "p3", "Background")  # behind our back, while running
    fake.requests.clear()
    rows = {row.record.name: (row.state, row.reason) for row in stjobs.status()}
    assert rows == {
        "p0": (State.RUNNING, ""), "p1": (State.COMPLETED, ""), "p2": (State.FAILED, "1 Master replica(s) failed"),
        "p3": (State.LOST, "the object is gone from the cluster"), "p4": (State.PENDING, ""),
        "p5": (State.PENDING, ""), "t0": (State.PENDING, ""), "t1": (State.RUNNING, ""),
        "t2": (State.COMPLETED, ""), "t3": (State.PENDING, "")}
    selector = "app.kubernetes.io/managed-by=stjobs"
    assert [(r.method, r.path, r.query.get("labelSelector")) for r in fake.requests] == [
        ("GET", "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs", selector),
        ("GET", "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs/p3", None),  # not listed, end unknown
        ("GET", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/default/trainjobs", selector),
        ("GET", "/api/v1/namespaces/default/pods", "jobset.sigs.k8s.io/jobset-name in (t0,t1,t3)")]
    # The count can fail: one job at a time, as the listing did before, is one call per job.
    fake.requests.clear()
    for name in ("p0", "p2", "p4"):
        stjobs.job_status(next(r.job_id for r in list_records() if r.name == name))
    assert len(fake.requests) == 3


def test_a_listing_the_server_refuses_shows_unknown_rows(fake: FakeKube, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    submit("name=a")
    submit("name=b")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "stale", fake.url, token="expired")))
    rows = stjobs.status()
    assert [row.state for row in rows] == [State.UNKNOWN, State.UNKNOWN]
    assert {row.reason for row in rows} == {"k8s: the API server refused listing pytorchjobs in namespace default: "
                                            "401 Unauthorized"}
    with FakeKube() as other:  # the kubeconfig now points at another cluster: each row says so
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "other", other.url)))
        rows = stjobs.status()
    assert [row.state for row in rows] == [State.UNKNOWN, State.UNKNOWN]
    assert all(f"went to {fake.url} but the kubeconfig now points at {other.url}" in row.reason for row in rows)


def test_rank_order_puts_master_first_whatever_the_listing_order(fake: FakeKube) -> None:
    record = submit("nodes=3")
    fake.add_pytorchjob_pods("tiny", ["[rank0]: m\n", "[rank2]: w0\n", "[rank4]: w1\n"])
    text = "".join(stjobs.logs(record.job_id))
    assert [line for line in text.splitlines() if line.startswith("==>")] == [
        "==> tiny-master-0 <==", "==> tiny-worker-0 <==", "==> tiny-worker-1 <=="]


def test_logs_follow_streams_until_the_job_ends(fake: FakeKube) -> None:
    record = submit()
    fake.set_condition("pytorchjobs", "tiny", "Running")
    master, worker = fake.add_pytorchjob_pods("tiny", ["[rank0]: start\n", ""])
    fake.set_pod_phase(worker, "Pending")  # still pulling its image: 400 until it starts
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(logstream.logs(load_record(record.job_id), follow=True,
                                                                           poll_s=0.05)))
    reader.start()
    wait_for(lambda: "[rank0]: start\n" in got)
    fake.set_pod_phase(worker, "Running")
    fake.write_log(worker, "[rank2]: start\n")
    fake.write_log(master, "[rank0]: step 1\n[rank0]: done")
    wait_for(lambda: "[rank2]: start\n" in got and "[rank0]: step 1\n" in got)
    assert reader.is_alive(), "the job still runs: logs -f keeps following"
    fake.set_condition("pytorchjobs", "tiny", "Succeeded")
    fake.set_pod_phase(master, "Succeeded")
    fake.set_pod_phase(worker, "Succeeded")
    reader.join(timeout=10)
    assert not reader.is_alive()
    text = "".join(got)
    master_lines = [line for line in text.splitlines() if line.startswith("[rank0]")]
    assert master_lines == ["[rank0]: start", "[rank0]: step 1", "[rank0]: done"]
    assert "[rank2]: start" in text.splitlines()
    assert text.startswith("==> tiny-master-0 <==\n")


def test_trainjob_status_and_logs(fake: FakeKube) -> None:
    record = submit("k8s.kind=trainjob")
    stored = fake.get("trainjobs", "tiny")
    assert stored is not None and stored["kind"] == "TrainJob"
    assert stjobs.job_status(record.job_id).state is State.PENDING
    # JobSet's pod names end in a random suffix: the completion index, not the name, gives the rank.
    pods = fake.add_trainjob_pods("tiny", ["[rank0]: a\n", "[rank2]: b\n"], phase="Pending")
    assert stjobs.job_status(record.job_id).state is State.PENDING
    for pod in pods:
        fake.set_pod_phase(pod, "Running")
    assert stjobs.job_status(record.job_id).state is State.RUNNING
    text = "".join(stjobs.logs(record.job_id))
    assert text == f"==> {pods[0]} <==\n[rank0]: a\n==> {pods[1]} <==\n[rank2]: b\n"
    fake.set_condition("trainjobs", "tiny", "Complete", message="TrainJob is completed")
    assert stjobs.job_status(record.job_id).state is State.COMPLETED


def test_trainjob_failed_and_suspended(fake: FakeKube) -> None:
    record = submit("k8s.kind=trainjob")
    fake.set_condition("trainjobs", "tiny", "Suspended", message="TrainJob is suspended")
    assert (stjobs.job_status(record.job_id).state, stjobs.job_status(record.job_id).reason) == (
        State.PENDING, "TrainJob is suspended")
    fake.set_condition("trainjobs", "tiny", "Failed", reason="DeadlineExceeded", message="")
    assert (stjobs.job_status(record.job_id).state, stjobs.job_status(record.job_id).reason) == (
        State.FAILED, "DeadlineExceeded")


def test_schema_refusal_is_one_line_and_leaves_nothing(fake: FakeKube) -> None:
    """A manifest that passes stjobs' own rules but not the CRD: the server's 422, as one line."""
    done = cli("submit", str(SPEC), "-b", "k8s", "--set",
               "k8s.affinity={nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: x}}}")
    error = one_line_error(done)
    assert error.startswith('stjobs: error: k8s: the API server refused PyTorchJob tiny: 422 PyTorchJob.kubeflow.org '
                            '"tiny" is invalid: [spec.pytorchReplicaSpecs.Master.template.spec.affinity.nodeAffinity.')
    assert "nodeSelectorTerms: expected array" in error
    assert job_dirs() == []
    assert fake.get("pytorchjobs", "tiny") is None


def test_unknown_field_is_refused_by_strict_validation(fake: FakeKube) -> None:
    plan = stjobs.render(stjobs.load_spec(SPEC), "k8s")
    edited = manifest(plan)
    edited["spec"]["foo"] = 1  # type: ignore[index]
    with pytest.raises(SubmitError) as caught:
        k8s_control.submit(with_manifest(plan, edited))
    assert str(caught.value) == ('k8s: the API server refused PyTorchJob tiny: 400 PyTorchJob in version "v1" cannot '
                                 'be handled as a PyTorchJob: strict decoding error: unknown field "spec.foo"')
    assert job_dirs() == []


def test_invalid_value_from_a_crafted_plan(fake: FakeKube) -> None:
    plan = stjobs.render(stjobs.load_spec(SPEC), "k8s")
    edited = manifest(plan)
    edited["spec"]["runPolicy"]["backoffLimit"] = "three"  # type: ignore[index]
    with pytest.raises(SubmitError, match=r'^k8s: the API server refused PyTorchJob tiny: 422 PyTorchJob'
                                          r'\.kubeflow\.org "tiny" is invalid: spec\.runPolicy\.backoffLimit: '
                                          r'expected integer, got string "three"$'):
        k8s_control.submit(with_manifest(plan, edited))
    assert job_dirs() == []


def test_without_strict_validation_the_fake_prunes_like_a_server(fake: FakeKube) -> None:
    """The fake itself: fieldValidation=Warn (the server's default) drops unknown fields and says so."""
    kubernetes: Any = pytest.importorskip("kubernetes")

    body = manifest(stjobs.render(stjobs.load_spec(SPEC), "k8s"))
    body["spec"]["foo"] = 1  # type: ignore[index]
    client = kubernetes.config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    _, code, headers = kubernetes.client.CustomObjectsApi(client).create_namespaced_custom_object_with_http_info(
        "kubeflow.org", "v1", "default", "pytorchjobs", body, field_validation="Warn")
    assert (code, headers["Warning"]) == (201, '299 - "unknown field \\"spec.foo\\""')
    stored = fake.get("pytorchjobs", "tiny")
    assert stored is not None and "foo" not in stored["spec"]


def test_second_submit_of_the_same_name_is_409(fake: FakeKube) -> None:
    first = cli("submit", str(SPEC), "-b", "k8s")
    assert first.returncode == 0, first.stderr
    job_id = first.stdout.split()[1]
    error = one_line_error(cli("submit", str(SPEC), "-b", "k8s"))
    assert error == (f"stjobs: error: k8s: PyTorchJob tiny already exists in namespace default (delete it with "
                     f"stjobs cancel {job_id} or kubectl delete pytorchjobs.kubeflow.org tiny -n default)")
    assert [path.name for path in job_dirs()] == [job_id]


def test_unreachable_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")))
    error = one_line_error(cli("submit", str(SPEC), "-b", "k8s"))
    assert error == (f"stjobs: error: k8s: cannot reach the API server at http://127.0.0.1:{port} "
                     "([Errno 111] Connection refused)")
    assert job_dirs() == []


def test_missing_crd_and_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeKube(installed=("TrainJob",)) as server:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", server.url)))
        with pytest.raises(SubmitError, match=r"^k8s: the PyTorchJob CRD is not installed \(training-operator 1\.9\)"):
            submit()
        with pytest.raises(SubmitError, match=r"^k8s: namespace team-a does not exist \(kubectl create namespace "):
            submit("k8s.kind=trainjob", "k8s.namespace=team-a")
    assert job_dirs() == []


def test_wrong_token_is_the_servers_401(fake: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "other", fake.url, token="expired")))
    with pytest.raises(SubmitError, match=r"^k8s: the API server refused PyTorchJob tiny: 401 Unauthorized$"):
        submit()


def test_no_kubeconfig_and_no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(SubmitError, match=r"^k8s: no kubeconfig"):
        submit()
    assert job_dirs() == []


def test_without_kubeconfig_inside_a_pod_the_service_account_is_used(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
        pytest.skip("running inside a real pod: its service account would be used")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    # No service account token here (/var/run/secrets/kubernetes.io/serviceaccount): the loader's own words.
    with pytest.raises(SubmitError, match=r"^k8s: in-cluster config: Service token file does not exist"):
        submit()


def test_status_refuses_a_kubeconfig_now_pointing_elsewhere(fake: FakeKube, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    record = submit()
    with FakeKube() as other:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "other", other.url)))
        with pytest.raises(SubmitError, match=rf"went to {fake.url} but the kubeconfig now points at {other.url}"):
            stjobs.cancel(record.job_id)
    assert fake.get("pytorchjobs", "tiny") is not None


def test_missing_client_package_says_what_to_install(fake: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "kubernetes" or m.startswith("kubernetes.")]:
        monkeypatch.setitem(sys.modules, name, None)  # what Python does for a package it cannot import
    with pytest.raises(SubmitError, match=r"^k8s: the kubernetes client is not installed; pip install "
                                          r"'stjobs\[k8s\]'$"):
        submit()
    assert job_dirs() == []


def test_in_process_cli_prints_the_refusal_without_traceback(fake: FakeKube,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    submit()
    assert main(["submit", str(SPEC), "-b", "k8s"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "Traceback" not in err


def test_render_for_k8s_imports_no_kubernetes(tmp_path: Path) -> None:
    probe = (
        "import json, sys\n"
        "from stjobs.cli import main\n"
        f"code = main(['render', {str(EXAMPLES / 'two-nodes.yaml')!r}, '-b', 'k8s', '--image', {IMAGE!r},"
        f" '--set', 'workdir=/workspace', '-o', {str(tmp_path / 'o')!r}])\n"
        "assert code == 0, code\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO,
                          env=offline_env())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "o" / "pytorchjob.yaml").is_file()
