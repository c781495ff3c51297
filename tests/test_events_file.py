"""The training's events files (issue 16, "keep the machine events in a file of their own"): every rank writes its
events, with the time, into ``events/rank-N.jsonl`` of the job's directory; ``stjobs logs --events`` and the API
read them back in the order written, and a directory the training may not write costs nothing but the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from stjobs.train import events


@pytest.fixture(autouse=True)
def _fresh_handles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "_files", {})  # each test opens its own files


def emit_as(rank: int, name: str, monkeypatch: pytest.MonkeyPatch, **fields: object) -> str:
    monkeypatch.setenv("RANK", str(rank))
    out = io.StringIO()
    events.emit(name, stream=out, **fields)
    return out.getvalue()


def test_each_rank_writes_its_own_file_with_the_time_and_stdout_keeps_the_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STJOBS_JOB_DIR", str(tmp_path))
    printed = emit_as(0, "loss", monkeypatch, step=5, loss=float("nan"))
    emit_as(1, "start", monkeypatch, world_size=2)
    assert printed == 'STJOBS_EVENT {"event":"loss","loss":null,"rank":0,"step":5}\n'  # the contract, unchanged
    rank0 = (tmp_path / "events" / "rank-0.jsonl").read_text().splitlines()
    (line,) = rank0
    written = json.loads(line)
    assert isinstance(written.pop("time"), float)
    assert written == {"event": "loss", "loss": None, "rank": 0, "step": 5}
    assert json.loads((tmp_path / "events" / "rank-1.jsonl").read_text())["event"] == "start"


def test_a_rerun_appends_after_the_run_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STJOBS_JOB_DIR", str(tmp_path))
    emit_as(0, "start", monkeypatch)
    monkeypatch.setattr(events, "_files", {})  # the requeued job is a new process
    emit_as(0, "start", monkeypatch)
    assert [e["event"] for e in events.parse_event_lines(events.events_file(tmp_path, 0).read_text())] == [
        "start", "start"]


def test_no_job_directory_means_stdout_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STJOBS_JOB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert emit_as(0, "done", monkeypatch).startswith(events.PREFIX)
    assert list(tmp_path.iterdir()) == []


def test_an_unopenable_events_path_costs_the_file_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "events").write_text("a file where the directory would be\n")  # as a read-only mount, for root too
    monkeypatch.setenv("STJOBS_JOB_DIR", str(tmp_path))
    assert emit_as(0, "done", monkeypatch).startswith(events.PREFIX)
    assert list(events._files.values()) == [None]


def test_reading_merges_the_ranks_by_time_and_skips_a_cut_line(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "rank-0.jsonl").write_text('{"event":"start","rank":0,"time":10.0}\n'
                                         '{"event":"loss","rank":0,"step":5,"time":12.0}\n'
                                         '{"event":"loss","rank":0,"st')  # killed mid-write
    (folder / "rank-1.jsonl").write_text('{"event":"start","rank":1,"time":10.0}\n'
                                         '{"event":"preempted","rank":1,"time":11.0}\n')
    (folder / "rank-10.jsonl").write_text('{"event":"start","rank":10,"time":9.0}\n')
    read = events.read_events_dir(tmp_path)
    assert read is not None
    assert [(e["rank"], e["event"]) for e in read] == [(10, "start"), (0, "start"), (1, "start"), (1, "preempted"),
                                                       (0, "loss")]
    assert events.read_events_dir(tmp_path / "elsewhere") is None  # no files here: the caller reads the output


def test_logs_events_prints_the_files_and_one_rank_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from stjobs.cli import main
    from stjobs.jobs import JobRecord, jobs_root

    job_dir = jobs_root() / "filed"  # where the supervisor keeps a local job
    (job_dir / "events").mkdir(parents=True)
    (job_dir / "events" / "rank-0.jsonl").write_text('{"event":"loss","rank":0,"step":5,"time":2.0}\n')
    (job_dir / "events" / "rank-1.jsonl").write_text('{"event":"start","rank":1,"time":1.0}\n')
    (job_dir / "output.log").write_text("nothing here: the files are read\n")
    JobRecord(job_id="filed", backend="local", name="filed", job_dir=str(job_dir), submitted_at=time.time(),
              nodes=1, procs_per_node=2).save()
    assert main(["logs", "filed", "--events"]) == 0
    assert capsys.readouterr().out == ('{"event":"start","rank":1,"time":1.0}\n'
                                       '{"event":"loss","rank":0,"step":5,"time":2.0}\n')
    assert main(["logs", "filed", "--events", "--rank", "0"]) == 0
    assert capsys.readouterr().out == '{"event":"loss","rank":0,"step":5,"time":2.0}\n'
    assert main(["logs", "filed", "--events", "--rank", "2"]) == 2
    assert "ranks 0-1" in capsys.readouterr().err
