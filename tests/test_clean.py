"""`stjobs clean` and api.clean (issue 16, "Old jobs"): finished jobs' records go, running ones stay; --older-than,
--outputs (only the directory the record names, never an unsafe one), --dry-run, the confirmation, exit codes."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from stjobs import api
from stjobs.backends import local
from stjobs.cli import main
from stjobs.jobs import JobRecord, jobs_root, load_record_at, name_outputs

DAY = 86400.0


def record(job_id: str, state: str | None = "COMPLETED", age_days: float = 10.0, output: Path | None = None,
           workdir: Path | None = None) -> Path:
    """A local job's record as the supervisor leaves it (no job run): ``state`` None is one whose supervisor
    is alive and has not written a status yet (PENDING)."""
    job_dir = jobs_root() / job_id
    job_dir.mkdir(parents=True)
    details: dict[str, object] = {}
    if output is not None:
        where = workdir or output.parent
        details = {"cwd": str(where), "workdir": str(where), "output_dir": str(output)}
    JobRecord(job_id=job_id, backend="local", name="job", job_dir=str(job_dir),
              submitted_at=time.time() - age_days * DAY, nodes=1, procs_per_node=1, details=details).save()
    if state is not None:
        (job_dir / "status.json").write_text(json.dumps({"state": state, "exit_code": 0}))
    if state in (None, "RUNNING", "PENDING", "UNKNOWN"):
        (job_dir / "supervisor.pid").write_text(f"{os.getpid()}\n")  # alive: this test's own process
    (job_dir / "output.log").write_text("x" * 1000)
    return job_dir


def outputs(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"0" * 2_000_000)
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["clean", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def left() -> list[str]:
    return sorted(path.name for path in jobs_root().iterdir())


@pytest.fixture
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


def test_finished_records_go_running_and_pending_stay(capsys: pytest.CaptureFixture[str]) -> None:
    for state in ("COMPLETED", "FAILED", "CANCELLED", "LOST", "RUNNING"):
        record(state.lower(), state)
    record("pending", None)
    record("unknown", "UNKNOWN")  # not final: the scheduler could not be asked, the job may still run
    code, out, err = run(["--yes"], capsys)
    assert (code, err) == (0, "")
    assert left() == ["pending", "running", "unknown"]
    lines = out.splitlines()
    assert sorted(line.split()[1] for line in lines[:-1]) == ["cancelled", "completed", "failed", "lost"]
    assert all(line.startswith("removed ") and "10.0 days  record (0.0 MB)" in line for line in lines[:-1])
    assert lines[-1] == "removed 4 job record(s) (0.0 MB)"


def test_status_is_asked_once_for_all_records(monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(3):
        record(f"job{index}")
    calls: list[int] = []
    real = local.statuses
    monkeypatch.setattr(local, "statuses", lambda records: calls.append(len(records)) or real(records))
    monkeypatch.setattr(local, "status", lambda _: pytest.fail("status asked once per job"))
    assert len(api.clean()) == 3
    assert calls == [3]


def test_older_than_keeps_the_recent(capsys: pytest.CaptureFixture[str]) -> None:
    record("old", age_days=8)
    record("new", age_days=2)
    code, out, _ = run(["--older-than", "7", "--yes"], capsys)
    assert code == 0 and left() == ["new"]
    assert out.splitlines()[-1] == "removed 1 job record(s) (0.0 MB)"
    assert [item.status.record.job_id for item in api.clean(older_than_days=1.5)] == ["new"]


def test_outputs_removes_only_the_named_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    named = outputs(work / "outputs" / "job")
    sibling = outputs(work / "outputs" / "other")
    record("done", output=named, workdir=work)
    code, out, err = run(["--outputs", "--yes"], capsys)
    assert (code, err) == (0, "")
    assert left() == [] and not named.exists()
    assert sibling.is_dir() and (work / "outputs").is_dir()
    assert f"record, outputs {named} (2.0 MB)" in out.splitlines()[0]
    assert out.splitlines()[-1] == "removed 1 job record(s) (2.0 MB)"


def test_without_outputs_the_outputs_stay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    named = outputs(tmp_path / "work" / "outputs" / "job")
    record("done", output=named, workdir=tmp_path / "work")
    assert run(["--yes"], capsys)[0] == 0
    assert left() == [] and (named / "model.bin").is_file()


def test_missing_or_unnamed_outputs_are_said_and_the_record_goes(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    record("gone", output=tmp_path / "work" / "outputs" / "gone", workdir=tmp_path / "work")
    record("old-record")  # from before records named their outputs (or a k8s job: outputs in the pod)
    code, out, _ = run(["--outputs", "--yes"], capsys)
    assert code == 0 and left() == []
    assert "do not exist" in out and "no output directory in the record" in out


@pytest.mark.parametrize("where", ["workdir", "above-workdir", "home", "root", "link", "file"])
def test_an_unsafe_output_directory_is_refused_in_one_line(where: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "top" / "work"
    work.mkdir(parents=True)
    (work / "train.py").write_text("print()\n")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    target = {"workdir": work, "above-workdir": tmp_path / "top", "home": home, "root": Path("/"),
              "link": work / "link", "file": work / "train.py"}[where]
    if where == "link":
        target.symlink_to(outputs(tmp_path / "elsewhere"))
    record("unsafe", output=target, workdir=work)
    record("fine")
    code, out, err = run(["--outputs", "--yes"], capsys)
    assert code == 1
    line, = err.splitlines()
    assert line.startswith("stjobs clean: kept unsafe  COMPLETED  10.0 days: outputs ") and "refused: it " in line
    assert line.endswith("; the record stays (clean without --outputs removes it)")
    assert left() == ["unsafe"] and (work / "train.py").is_file() and target.exists()
    assert out.splitlines()[-1] == "removed 1 job record(s) (0.0 MB)"
    assert run(["--yes"], capsys)[0] == 0 and left() == [] and (work / "train.py").is_file()


def test_outputs_another_kept_job_names_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared = outputs(tmp_path / "work" / "outputs" / "job")  # outputs/NAME: every job of a name writes there
    record("old", output=shared, workdir=tmp_path / "work")
    record("now", "RUNNING", output=shared, workdir=tmp_path / "work")
    code, _, err = run(["--outputs", "--yes"], capsys)
    assert code == 1 and "is also the output directory of job now, which stays" in err
    assert left() == ["now", "old"] and shared.is_dir()


def test_dry_run_removes_nothing(tmp_path: Path, no_terminal: None, capsys: pytest.CaptureFixture[str]) -> None:
    named = outputs(tmp_path / "work" / "outputs" / "job")
    record("done", output=named, workdir=tmp_path / "work")
    record("running", "RUNNING")
    code, out, err = run(["--outputs", "--dry-run"], capsys)
    assert (code, err) == (0, "")
    first, last = out.splitlines()
    assert first.startswith("would remove done  COMPLETED  10.0 days  record, outputs ")
    assert last == "would remove 1 job record(s) (2.0 MB)"
    assert left() == ["done", "running"] and (named / "model.bin").is_file()
    assert [item.removed for item in api.clean(outputs=True, dry_run=True)] == [False]
    assert left() == ["done", "running"]


def test_without_yes_and_no_terminal_nothing_is_asked_or_removed(no_terminal: None,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    record("done")
    code, out, err = run([], capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == ["stjobs clean: error: --yes: got neither --yes nor --dry-run and stdin is not a "
                                "terminal to ask on; expected --yes to remove without asking, or --dry-run to only "
                                "list what would go"]
    assert left() == ["done"]


@pytest.mark.parametrize("answer,code,kept", [("y\n", 0, []), ("n\n", 1, ["done"]), ("\n", 1, ["done"])])
def test_on_a_terminal_it_asks(answer: str, code: int, kept: list[str], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    record("done")
    stdin = io.StringIO(answer)
    monkeypatch.setattr(stdin, "isatty", lambda: True)
    monkeypatch.setattr("sys.stdin", stdin)
    got, out, _ = run([], capsys)
    assert got == code and left() == kept
    lines = out.splitlines()
    assert lines[0].startswith("would remove done  COMPLETED")
    assert lines[1].startswith("remove 1 job record(s) (0.0 MB)? [y/N] ")
    assert lines[1].endswith("removed 1 job record(s) (0.0 MB)" if code == 0 else "nothing removed")


@pytest.mark.parametrize("days", ["-1", "inf", "nan"])
def test_a_bad_older_than_is_refused(days: str, capsys: pytest.CaptureFixture[str]) -> None:
    record("done")
    code, out, err = run(["--older-than", days, "--yes"], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("stjobs: error: --older-than: got ") and len(err.splitlines()) == 1
    assert left() == ["done"]


def test_nothing_to_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--yes"], capsys) == (0, "removed 0 job record(s) (0.0 MB)\n", "")


def test_a_record_names_its_outputs_where_this_machine_sees_them(tmp_path: Path) -> None:
    job_dir = jobs_root() / "named"
    job_dir.mkdir(parents=True)
    base = JobRecord(job_id="named", backend="local", name="job", job_dir=str(job_dir), submitted_at=0.0, nodes=1,
                     procs_per_node=1, details={"cwd": str(tmp_path)})
    named = name_outputs(base, "outputs/job", "sub")
    assert named.details["workdir"] == str(tmp_path / "sub")
    assert named.details["output_dir"] == str(tmp_path / "sub" / "outputs" / "job")
    assert load_record_at(job_dir) == named
    assert name_outputs(base, "/scratch/out", ".").details["output_dir"] == "/scratch/out"
    k8s = JobRecord(job_id="k", backend="k8s", name="job", job_dir=str(job_dir), submitted_at=0.0, nodes=1,
                    procs_per_node=1, details={"namespace": "default"})
    assert name_outputs(k8s, "outputs/job", ".") is k8s
