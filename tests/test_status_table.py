"""`stjobs status` says how far a job is (issue 16): progress from the tail of the job's rank-0 output (step of
planned steps, samples/s, ETA, a finished run's score), the filters, --watch, a table cut to the terminal that
never cuts a job id, and still one statuses() call per backend per refresh."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from stjobs import api, progress, statustable
from stjobs.backends import local, slurm
from stjobs.cli import main
from stjobs.jobs import JobRecord, JobStatus, State, jobs_root
from stjobs.progress import Planned, Progress, eta_seconds, from_events, read_progress
from stjobs.train.events import format_event, parse_events


def line(event: str, rank: int = 0, **fields: Any) -> str:
    return f"[rank{rank}]: " + format_event(event, rank=rank, **fields) + "\n"


def start(**fields: Any) -> str:
    base: dict[str, Any] = {"global_batch_size": 32, "max_steps": 100, "epochs": None}
    return line("start", **{**base, **fields}) + line("start", rank=1, **{**base, **fields})


def loss(step: int, rate: float | None = 64.0, epoch: float | None = None) -> str:
    return line("loss", step=step, loss=0.5, learning_rate=1e-5, samples_per_second=rate,
                epoch=epoch if epoch is not None else step / 100)


def job(job_id: str, state: str = "COMPLETED", output: str = "", backend: str = "local", name: str = "bert",
        submitted_at: float | None = None, spec: str | None = None) -> JobRecord:
    """A job's record and files as its backend leaves them, without running anything."""
    job_dir = jobs_root() / job_id
    job_dir.mkdir(parents=True)
    log = job_dir / "output.log"
    details: dict[str, object] = {"slurm_job_id": "1", "output": str(log)} if backend == "slurm" else {}
    record = JobRecord(job_id=job_id, backend=backend, name=name, job_dir=str(job_dir),
                       submitted_at=time.time() if submitted_at is None else submitted_at, nodes=1,
                       procs_per_node=2, details=details)
    record.save()
    (job_dir / "status.json").write_text(json.dumps({"state": state, "exit_code": 0 if state == "COMPLETED"
                                                     else None}))
    (job_dir / "supervisor.pid").write_text(str(os.getpid()))  # alive: a RUNNING local job stays RUNNING
    if output:
        log.write_text(output)
    if spec is not None:
        (job_dir / "stjobs.yaml").write_text(spec)
    return record


def test_a_running_jobs_step_rate_and_eta() -> None:
    events = parse_events(start() + "".join(loss(step, rate) for step, rate in
                                            [(10, 10.0), (20, 60.0), (30, 64.0), (40, 64.0), (50, 68.0), (60, 64.0)]))
    found = from_events(events)
    assert found is not None
    assert (found.step, found.total, found.estimated, found.samples_per_second) == (60, 100, False, 64.0)
    # The ETA averages the last five rates (64 samples/s), 32 samples a step: 40 steps left take 20 s.
    assert found.eta_s == pytest.approx(40 * 32 / 64.0)
    assert found.text() == "60/100 60%" and found.percent == 60.0 and not found.finished


def test_eta_math() -> None:
    assert eta_seconds(40, 100, 64.0, 32) == pytest.approx(30.0)
    assert eta_seconds(100, 100, 64.0, 32) == 0.0
    assert eta_seconds(120, 100, 64.0, 32) == 0.0  # past the plan (a resumed run's count): nothing left
    assert eta_seconds(1, 100, 0.0, 32) is None and eta_seconds(1, 100, 64.0, 0) is None
    assert [statustable.duration(s) for s in (None, 5, 75, 3700, 90000)] == ["-", "5s", "1m15s", "1h01m", "1d01h"]


def test_a_finished_run_shows_its_last_step_and_score() -> None:
    text = (start() + loss(50) + loss(100) + line("eval", when="after", metric="spearman_cosine", score=0.81234,
                                                  step=100)
            + line("throughput", samples_per_second=70.5, steps=100, seconds=45.4, global_batch_size=32)
            + line("done"))
    found = from_events(parse_events(text), finished=True)
    assert found is not None and found.finished and found.eta_s is None
    assert (found.step, found.total, found.samples_per_second) == (100, 100, 70.5)
    assert found.text() == "100/100 100% spearman_cosine=0.8123"


def test_no_events_is_no_progress() -> None:
    assert from_events(parse_events("torchrun starting\nTraceback ...\n")) is None
    assert from_events(parse_events(start())) is None  # started, no step yet
    assert read_progress(None, Path("."), False) is None  # a backend without a local output file (k8s)


def test_a_resumed_job_counts_its_newest_run_only() -> None:
    """Requeued at step 80, resumed from the checkpoint of step 60: the steps repeat, the newest run counts."""
    first = start() + "".join(loss(step, 64.0) for step in (20, 40, 60, 80)) + line("preempted", step=80)
    second = start() + line("resumed", checkpoint="/ckpt/checkpoint-60") + loss(70, 32.0)
    found = from_events(parse_events(first + second))
    assert found is not None
    assert (found.step, found.total, found.samples_per_second) == (70, 100, 32.0)
    assert found.eta_s == pytest.approx(30 * 32 / 32.0)  # only the new run's rate


def test_a_planned_length_in_epochs_gives_an_estimated_total() -> None:
    events = parse_events(start(max_steps=None, epochs=2.0) + loss(50, epoch=0.5))
    found = from_events(events)
    assert found is not None and (found.total, found.estimated) == (200, True)
    assert found.text() == "50/~200 25%"
    done = from_events(events + parse_events(line("done")))
    assert done is not None and (done.total, done.estimated, done.text()) == (50, False, "50/50 100%")


def test_an_old_start_without_the_plan_takes_the_stored_specs_max_steps(tmp_path: Path) -> None:
    spec = "name: bert\nentrypoint:\n  module: stjobs.train\n  args: ['--max-steps', '40']\n"
    record = job("old", "RUNNING", start(max_steps=None) + loss(10), spec=spec)
    assert progress.planned_steps(Path(record.job_dir)) == Planned(max_steps=40)
    found = api.progress(JobStatus(record, State.RUNNING))
    assert found is not None and (found.step, found.total) == (10, 40)
    (tmp_path / "stjobs.yaml").write_text("name: x\nentrypoint:\n  script: train.py\n")
    assert progress.planned_steps(tmp_path) is None  # someone's own script: no plan known
    (tmp_path / "stjobs.yaml").write_text("entrypoint:\n  module: stjobs.train\n  args: ['--epochs', '3']\n")
    assert progress.planned_steps(tmp_path) == Planned(epochs=3.0)


def test_only_the_tail_is_read_and_the_start_comes_from_the_head(monkeypatch: pytest.MonkeyPatch) -> None:
    noise = "".join(f"[rank1]: some library warning number {index}\n" for index in range(40_000))  # ~1.5 MB
    record = job("long", "RUNNING", start() + noise + loss(42, 64.0))
    path = Path(record.job_dir) / "output.log"
    assert path.stat().st_size > 20 * progress.TAIL_BYTES
    reads: list[int] = []
    real_open = open

    def counting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if Path(file) == path:
            real_read = handle.read
            handle.read = lambda size=-1: reads.append(size) or real_read(size)  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr("builtins.open", counting_open)
    found = read_progress(path, Path(record.job_dir), finished=False)
    assert found is not None and (found.step, found.total) == (42, 100)
    assert found.eta_s == pytest.approx(58 * 32 / 64.0)  # the global batch of the start in the file's head
    assert reads and all(0 < size <= progress.TAIL_BYTES for size in reads), reads


def test_a_finished_jobs_progress_is_kept_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    record = job("kept", "COMPLETED", start() + loss(100) + line("done"))
    first = api.progress(JobStatus(record, State.COMPLETED))
    assert (Path(record.job_dir) / progress.CACHE_FILE).is_file()
    monkeypatch.setattr(progress, "parse_events", lambda text: pytest.fail("the log was read again"))
    assert api.progress(JobStatus(record, State.COMPLETED)) == first
    assert api.progress(JobStatus(record, State.PENDING)) is None  # a pending job's log is not read


def test_filters_choose_jobs_by_state_backend_and_name(monkeypatch: pytest.MonkeyPatch) -> None:
    job("bert-a", "RUNNING", name="bert-a", submitted_at=1)
    job("bert-b", "COMPLETED", name="bert-b", submitted_at=2)
    job("mpnet", "FAILED", name="mpnet", submitted_at=3)
    job("slurm-bert", backend="slurm", name="bert-s", submitted_at=4)
    monkeypatch.setattr(slurm, "statuses", lambda records: [JobStatus(r, State.PENDING, reason="SLURM's pending "
                                                                      "reason: Priority") for r in records])

    def ids(**filters: Any) -> list[str]:
        return [row.record.job_id for row in api.status(**filters)]

    assert ids() == ["bert-a", "bert-b", "mpnet", "slurm-bert"]
    assert ids(states={State.RUNNING, State.PENDING}) == ["bert-a", "slurm-bert"]
    assert ids(backends={"local"}, name="bert-*") == ["bert-a", "bert-b"]
    assert ids(name="*-s") == ["slurm-bert"]


def test_the_cli_filters_and_refuses_an_unknown_state(capsys: pytest.CaptureFixture[str]) -> None:
    job("bert-a", "RUNNING", name="bert-a", submitted_at=1)
    job("mpnet", "FAILED", name="mpnet", submitted_at=2)
    assert main(["status", "--state", "running,Failed", "--name", "bert*", "--json"]) == 0
    assert [json.loads(text)["job_id"] for text in capsys.readouterr().out.splitlines()] == ["bert-a"]
    assert main(["status", "--state", "RUNING"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "got 'RUNING'" in err, err
    assert "PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, LOST, UNKNOWN" in err
    assert main(["status", "--watch", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stjobs status: error: --watch: got --watch with --json"), err


def test_one_job_and_json_work_as_before_with_the_new_fields(capsys: pytest.CaptureFixture[str]) -> None:
    record = job("bert-1", "RUNNING", start() + loss(25))
    job("silent", "RUNNING")
    assert main(["status", "bert-1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert {"job_id": "bert-1", "backend": "local", "state": "RUNNING", "exit_code": None, "requeues": 0,
            "reason": "", "name": "bert", "submitted_at": record.submitted_at}.items() <= row.items()
    assert (row["progress"]["step"], row["progress"]["total"], row["progress"]["percent"]) == (25, 100, 25.0)
    assert main(["status", "bert-1"]) == 0
    header, body = capsys.readouterr().out.splitlines()
    assert header.split() == ["job", "name", "backend", "nodes", "state", "progress", "samples/s", "eta",
                              "submitted", "age"]
    assert body.startswith("bert-1  ") and "25/100 25%" in body and "RUNNING" in body
    assert main(["status"]) == 0
    silent = next(text for text in capsys.readouterr().out.splitlines() if text.startswith("silent"))
    assert silent.split()[5:8] == ["-", "-", "-"]  # no events: progress, samples/s and ETA say so


def status_row(job_id: str, reason: str = "", name: str = "bert") -> tuple[JobStatus, Progress | None]:
    record = JobRecord(job_id=job_id, backend="slurm", name=name, job_dir="/nowhere", submitted_at=0.0, nodes=2,
                       procs_per_node=4)
    return JobStatus(record, State.PENDING, reason=reason), Progress(step=5, total=10, samples_per_second=1.5)


def test_a_wide_table_is_cut_to_the_terminal_but_never_the_job_id() -> None:
    long_id = "a-very-long-job-name-for-a-sweep-20250101-120000-ab12"
    rows = [status_row(long_id, "SLURM's pending reason: " + "Resources " * 30, name="x" * 40),
            status_row("short-1", "Priority")]
    for width in (100, 130):
        lines = statustable.table(rows, now=100.0, width=width).splitlines()
        assert len(lines) == 3 and all(len(text) <= width for text in lines), lines
        assert lines[1].startswith(long_id + "  ") and lines[2].startswith("short-1 ")
        assert "5/10 50%" in lines[1] and "1m40s" in lines[1]
    assert "SLURM's pending rea…" in lines[1]  # at 130 the reason is cut to its floor, at 100 it went
    narrow = statustable.table(rows, now=100.0, width=20).splitlines()
    assert narrow[1].startswith(long_id) and narrow[2].startswith("short-1")  # narrower than an id: the id stays
    assert len(statustable.table(rows, now=100.0, width=None).splitlines()[1]) > 300  # piped: nothing is cut
    many = statustable.table([status_row(f"job-{index}", "why\nnot") for index in range(300)], now=1.0, width=80)
    assert len(many.splitlines()) == 301  # one line a job, a reason's newline included


class FakeBackend:
    """Counts the statuses() calls of a listing and answers RUNNING for every record."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, records: Sequence[JobRecord]) -> list[JobStatus]:
        self.calls.append([record.job_id for record in records])
        return [JobStatus(record, State.RUNNING) for record in records]


def test_watch_redraws_twice_with_one_statuses_call_per_backend_each(monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(3):
        job(f"local-{index}", "RUNNING", start() + loss(10 * (index + 1)), submitted_at=1000.0 + index)
    for index in range(2):
        job(f"slurm-{index}", backend="slurm", output=start() + loss(50), submitted_at=2000.0 + index)
    fakes = {"local": FakeBackend(), "slurm": FakeBackend()}
    monkeypatch.setattr(local, "statuses", fakes["local"])
    monkeypatch.setattr(slurm, "statuses", fakes["slurm"])
    clock = iter([2060.0, 2062.0])
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second wait

    out = io.StringIO()  # not a terminal: tables one after another
    assert statustable.watch(api.status_rows, 2.0, out, sleep=sleep, clock=lambda: next(clock)) == 0
    assert naps == [2.0, 2.0]
    assert fakes["local"].calls == [["local-0", "local-1", "local-2"]] * 2
    assert fakes["slurm"].calls == [["slurm-0", "slurm-1"]] * 2
    first, second = out.getvalue().split("\n\n")
    assert "\x1b" not in out.getvalue()
    for table, age in ((first, "1m00s"), (second, "1m02s")):
        lines = table.strip("\n").splitlines()
        assert len(lines) == 6 and lines[0].startswith("job ")
        slurm_line = next(text for text in lines if text.startswith("slurm-0"))
        assert "50/100 50%" in slurm_line and "64.0" in slurm_line and f" {age}" in slurm_line  # slurm's file read
        assert "20/100 20%" in next(text for text in lines if text.startswith("local-1"))
