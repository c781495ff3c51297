"""A sweep on Kubernetes (issue 17): one PyTorchJob per point, all with the sweep's label, created through the real
kubernetes client against tests/k8s_fake.py; the sweep's line counts its points' states; a point the server
refuses takes the sweep back whole."""

from __future__ import annotations

import pytest

import stjobs
from stjobs.errors import SubmitError
from stjobs.jobs import State, jobs_root
from tests.conftest import REPO
from tests.k8s_fake import FakeKube

pytest.importorskip("kubernetes")
SPEC = REPO / "tests" / "data" / "k8s-tiny.yaml"
GRID = "sweep={grid: {--learning-rate: ['1e-5', '3e-5', '1e-4']}}"


def test_each_point_is_a_labelled_pytorchjob_and_the_sweep_is_one_line(fake: FakeKube) -> None:
    record = stjobs.submit(stjobs.load_spec(SPEC, sets=[GRID]), "k8s")
    created = [request for request in fake.requests if request.method == "POST"]
    assert [request.body["metadata"]["name"] for request in created] == ["tiny-p0", "tiny-p1", "tiny-p2"]
    assert {request.body["metadata"]["labels"]["stjobs.dev/sweep"] for request in created} == {"tiny"}
    container = created[2].body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "--learning-rate 1e-4" in " ".join(map(str, [*container.get("command", []), *container.get("args", [])]))
    fake.set_condition("pytorchjobs", "tiny-p0", "Succeeded")
    fake.set_condition("pytorchjobs", "tiny-p1", "Failed", message="OOMKilled")
    rows = stjobs.status(record.job_id)
    assert [row.record.job_id for row in rows] == [record.job_id, *(f"{record.job_id}-p{i}" for i in range(3))]
    assert [row.state for row in rows[1:3]] == [State.COMPLETED, State.FAILED]
    assert rows[0].state is not State.COMPLETED and rows[0].reason.startswith("sweep of 3 point(s): ")
    assert [row.record.job_id for row in stjobs.status()] == [record.job_id]  # one line in the listing


def test_a_point_the_server_refuses_takes_the_sweep_back(fake: FakeKube) -> None:
    stjobs.submit(stjobs.load_spec(SPEC, sets=["name=other-p1"]), "k8s")  # takes point 1's name first
    with pytest.raises(SubmitError, match="other-p1 already exists"):
        stjobs.submit(stjobs.load_spec(SPEC, sets=[GRID, "name=other"]), "k8s")
    assert fake.get("pytorchjobs", "other-p0") is None  # created, then taken back
    assert [path.name for path in jobs_root().iterdir()] == [next(jobs_root().iterdir()).name]
