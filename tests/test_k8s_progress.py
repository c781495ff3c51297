"""`stjobs status` shows how far a Kubernetes job is (issue 16): its progress is read from the tail of the
master's (node 0's) pod log, one bounded log call per running or newly finished job, and a finished job's is kept
in its directory, so it costs no call later and outlives its pods. The real kubernetes client against
tests/k8s_fake.py, whose log reads apply tailLines and limitBytes as the kubelet does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import stjobs
from stjobs import api, progress
from stjobs.backends import local
from stjobs.cli import main
from stjobs.jobs import JobRecord, JobStatus, State
from stjobs.train.events import format_event
from tests.conftest import REPO
from tests.k8s_fake import SCHEMAS_DIR, FakeKube

pytest.importorskip("kubernetes")
pytestmark = pytest.mark.skipif(not SCHEMAS_DIR.is_dir(), reason=f"no Kubeflow CRD schemas at {SCHEMAS_DIR}")

SPEC = REPO / "tests" / "data" / "k8s-tiny.yaml"  # --max-steps 4, two nodes of two processes
NOISE = "[rank1]: a library warning that fills the log without saying anything about steps\n"


def submit(name: str = "tiny") -> JobRecord:
    return stjobs.submit(stjobs.load_spec(SPEC, sets=[f"name={name}"]), "k8s")


def line(event: str, rank: int = 0, **fields: Any) -> str:
    return f"[rank{rank}]: " + format_event(event, rank=rank, **fields) + "\n"


def start(max_steps: int = 4) -> str:
    return line("start", max_steps=max_steps, global_batch_size=32, epochs=None) + line(
        "start", rank=1, max_steps=max_steps, global_batch_size=32, epochs=None)


def loss(step: int, rate: float = 64.0) -> str:
    return line("loss", step=step, loss=0.5, learning_rate=1e-5, samples_per_second=rate, epoch=step / 4)


def log_reads(fake: FakeKube) -> list[str]:
    return [request.path for request in fake.requests if request.path.endswith("/log")]


def table(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`stjobs status` (in process) as {job name: its line}."""
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    return {text.split()[1]: text for text in lines}


def running(name: str, fake: FakeKube, master_log: str, worker_log: str = "") -> list[str]:
    fake.set_condition("pytorchjobs", name, "Running")
    return fake.add_pytorchjob_pods(name, [master_log, worker_log])


def test_a_running_jobs_progress_comes_from_its_master_pods_log(fake: FakeKube,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    record = submit()
    # The worker's log says more, and as rank 0: only the master's is read, so only its step shows.
    running("tiny", fake, start() + loss(1) + loss(2, rate=80.0), start() + loss(3, rate=5.0))
    fake.requests.clear()
    row = table(capsys)["tiny"]
    assert "RUNNING" in row and "2/4 50%" in row and " 80.0 " in row, row
    assert log_reads(fake) == ["/api/v1/namespaces/default/pods/tiny-master-0/log"]
    read = next(request for request in fake.requests if request.path.endswith("/log"))
    assert int(read.query["limitBytes"]) == progress.TAIL_BYTES
    assert int(read.query["tailLines"]) >= 100  # lines enough for the recent rates, an eval and the start
    assert read.query["container"] == "pytorch"
    assert main(["status", record.job_id, "--json"]) == 0
    said = json.loads(capsys.readouterr().out)["progress"]
    assert (said["step"], said["total"], said["percent"], said["samples_per_second"]) == (2, 4, 50.0, 80.0)
    assert said["eta_s"] == pytest.approx(2 * 32 / 72.0) and said["finished"] is False  # the mean recent rate


def test_a_trainjobs_progress_comes_from_node_0(fake: FakeKube) -> None:
    record = stjobs.submit(stjobs.load_spec(SPEC, sets=["k8s.kind=trainjob"]), "k8s")
    pods = fake.add_trainjob_pods("tiny", [start() + loss(3), start() + loss(1)])
    found = api.progress(JobStatus(record, State.RUNNING))
    assert found is not None and (found.step, found.total) == (3, 4)
    assert log_reads(fake) == [f"/api/v1/namespaces/default/pods/{pods[0]}/log"]


def test_a_long_log_is_read_bounded_and_its_start_is_kept_for_the_eta(fake: FakeKube) -> None:
    record = submit()
    master, _ = running("tiny", fake, start(max_steps=1000) + loss(1))
    first = api.progress(JobStatus(record, State.RUNNING))
    assert first is not None and (first.step, first.total) == (1, 1000)
    fake.write_log(master, NOISE * 5000 + loss(500) + NOISE * 10 + loss(600))  # ~450 kB: the start is far back
    fake.requests.clear()
    found = api.progress(JobStatus(record, State.RUNNING))
    assert found is not None and found.step == 600
    assert found.total == 1000  # the start's max_steps (the spec says 4): the kept start, not the spec
    assert found.eta_s == pytest.approx(400 * 32 / 64.0)  # its global batch
    assert len(log_reads(fake)) == 1  # no second call for the head
    # Without a kept start (a job first seen this late) the plan comes from the stored spec, and no ETA.
    (Path(record.job_dir) / progress.CACHE_FILE).unlink()
    late = api.progress(JobStatus(record, State.RUNNING))
    assert late is not None and (late.step, late.total, late.eta_s) == (600, 4, None)


def test_the_tail_is_the_newest_lines_within_the_byte_limit(fake: FakeKube) -> None:
    from stjobs.backends.k8s import logstream

    record = submit()
    master, _ = running("tiny", fake, "".join(f"line {n}\n" for n in range(10_000)) + "still being writ")
    text = logstream.tail(record, 1024)
    assert len(text.encode()) <= 1024 and text.endswith("still being writ")  # under the limit: kept whole
    assert text.startswith("line ") and text.split("\n")[-2] == "line 9999"
    fake.write_log(master, "ten\n" * 10 + "x" * 4000 + "\n" + loss(7))
    long = logstream.tail(record, 1024)  # a line longer than the limit: cut, and the part after it unread
    assert long.endswith("ten\n") and "xxx" not in long


def test_the_fake_serves_tail_lines_and_limit_bytes_as_the_kubelet_does(fake: FakeKube) -> None:
    import kubernetes

    from stjobs.backends.k8s.client import new_client

    fake.add_pod("p", {"app": "x"}, "main", "a\nbb\ncccé\nunfinished")
    core = kubernetes.client.CoreV1Api(new_client())

    def read(**options: Any) -> bytes:
        response = core.read_namespaced_pod_log("p", "default", _preload_content=False, **options)
        data: bytes = response.data
        return data

    assert read(tail_lines=2) == "cccé\nunfinished".encode()
    assert read(tail_lines=0) == b""
    assert read(limit_bytes=4) == b"a\nbb"  # from the start: limitBytes alone is a head
    assert read(tail_lines=2, limit_bytes=4) == b"ccc\xc3"  # the first bytes of the last lines, mid-character
    with pytest.raises(kubernetes.client.exceptions.ApiException) as refused:
        read(tail_lines=-1)
    assert refused.value.status == 422


def test_a_finished_job_keeps_its_progress_after_its_pods_are_gone(fake: FakeKube,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    submit("seen")
    submit("late")
    running("seen", fake, start() + loss(4, rate=70.0) + line("eval", step=4, metric="spearman", score=0.81)
            + line("done"))
    running("late", fake, start() + loss(3))
    table(capsys)  # both seen running
    fake.set_condition("pytorchjobs", "seen", "Succeeded")
    assert "4/4 100% spearman=0.8100" in table(capsys)["seen"]  # seen finished: its answer is kept
    fake.delete(fake.crds["kubeflow.org", "v1", "pytorchjobs"], "default", "seen", "Background")  # its TTL
    fake.set_condition("pytorchjobs", "late", "Failed", message="1 Master replica(s) failed")
    with fake.changed:  # cleanPodPolicy: the operator deletes a finished job's pods, the object stays
        for key in [key for key, pod in fake.pods.items() if pod.owner == ("pytorchjobs", "late")]:
            del fake.pods[key]
    assert not fake.pods
    fake.requests.clear()
    rows = table(capsys)
    assert "COMPLETED" in rows["seen"] and "4/4 100% spearman=0.8100" in rows["seen"] and " 70.0 " in rows["seen"]
    # "late" ended after the last look and its pods went first: what it said while running stands, without ETA.
    assert "FAILED" in rows["late"] and "3/4 75%" in rows["late"], rows["late"]
    assert log_reads(fake) == []  # "seen" kept; "late" has no pod left to read
    late = next(r for r in stjobs.status() if r.record.name == "late")
    kept = api.progress(late)
    assert kept is not None and kept.finished and kept.eta_s is None
    fake.requests.clear()
    assert api.progress(late) == kept and fake.requests == []  # now kept as final: not even a pod list


def test_a_pending_job_makes_no_log_call(fake: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    submit()
    fake.add_pytorchjob_pods("tiny", [start() + loss(1), ""], phase="Pending")
    fake.requests.clear()
    row = table(capsys)["tiny"]
    assert "PENDING" in row and row.split()[5] == "-"
    assert [request.path for request in fake.requests if "/pods" in request.path] == []


def test_log_calls_are_one_per_running_job_and_none_for_a_kept_finished_one(fake: FakeKube,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    names = [f"j{n}" for n in range(9)]
    for name in names:
        submit(name)
    for name in names[:6]:
        running(name, fake, start() + loss(2), start() + loss(2))
    for name in names[3:6]:
        fake.set_condition("pytorchjobs", name, "Succeeded")
    fake.requests.clear()
    rows = table(capsys)
    assert all("2/4 50%" in rows[name] for name in names[:6]) and all("PENDING" in rows[n] for n in names[6:])
    assert sorted(log_reads(fake)) == sorted(f"/api/v1/namespaces/default/pods/{n}-master-0/log" for n in names[:6])
    for _ in range(3):  # refreshes, as --watch does: the finished ones are kept
        fake.requests.clear()
        table(capsys)
        assert sorted(log_reads(fake)) == [f"/api/v1/namespaces/default/pods/{n}-master-0/log" for n in names[:3]]


def test_an_api_error_reading_the_log_leaves_that_progress_unknown(fake: FakeKube,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    submit("broken")
    record = submit("fine")
    running("broken", fake, start() + loss(1))
    running("fine", fake, start() + loss(4) + line("done"))
    fake.set_condition("pytorchjobs", "fine", "Succeeded")
    fake.log_error = 500
    rows = table(capsys)
    assert "RUNNING" in rows["broken"] and rows["broken"].split()[5:8] == ["-", "-", "-"]
    assert "COMPLETED" in rows["fine"] and rows["fine"].split()[5] == "-"
    assert not (Path(record.job_dir) / progress.CACHE_FILE).exists()  # an unread log: nothing kept as final
    fake.log_error = None
    rows = table(capsys)
    assert "4/4 100%" in rows["fine"] and "1/4 25%" in rows["broken"]  # asked again once the server answers


def test_every_backend_offers_the_tail_of_rank_0s_output(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    record = JobRecord(job_id="j", backend="local", name="j", job_dir=str(job_dir), submitted_at=0.0, nodes=1,
                       procs_per_node=1)
    assert local.output_tail(record, 100) is None  # no output yet
    local.output_file(record).write_text("first line, cut by the limit\n" + "x\n" * 30)
    assert local.output_tail(record, 40) == "x\n" * 19  # the first line of a tail is dropped: it may be cut
