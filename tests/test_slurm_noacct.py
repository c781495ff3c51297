"""SLURM without accounting, as many small sites run it: no slurmdbd, ``sacct`` says "Slurm accounting storage is
disabled". ``status``, ``logs``, ``cancel`` and the requeue count come from slurmctld (``squeue --states=all``)
while it holds a job, and from the job's own files once it has forgotten it (MinJobAge); what nothing says is
reported as unknown, never guessed.

The first tests run sacct/squeue shims (tests/test_slurm_status.py) and real bash for the batch file's exit
record; the tests marked ``slurm`` submit to the second test cluster, ``up.sh --no-accounting`` (nodes n3/n4,
MinJobAge 10 s), through the installed CLI with ``SLURM_CONF`` pointing at it. They share one STJOBS_HOME, so the
last one can ask about every job after slurmctld has forgotten them.
"""

from __future__ import annotations

import json
import os
import signal as signal_module
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import stjobs
from stjobs.backends.slurm import control, jobfiles
from stjobs.jobs import JobRecord, State, jobs_root
from stjobs.train.events import parse_events
from tests.conftest import EXAMPLES, build_tiny_model, cli, job_of
from tests.slurm_cluster import NOACCT_NODES, ensure_noacct_cluster, noacct_env
from tests.test_slurm import job_args
from tests.test_slurm_status import SHIM, Slurm, slurm_record

DISABLED = "sacct: error: Slurm accounting storage is disabled"

# Stand-ins for what the batch file calls: srun runs the body of this run (SRUN_BODY) where launch.sh would run,
# scontrol answers hostnames and requeue. Everything else is the rendered batch file itself, run by real bash.
SRUN_SHIM = "#!/bin/bash\nexec bash -c \"$SRUN_BODY\"\n"
SCONTROL_SHIM = """#!/bin/bash
case "$1 $2" in
  "show hostnames") echo n1; echo n2 ;;
  "requeue "*) echo "requeue $2" >>"$STJOBS_JOB_DIR/scontrol.log" ;;
  *) echo "scontrol shim: $*" >&2; exit 1 ;;
esac
"""
@pytest.fixture
def shims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Slurm:
    """sacct says accounting is disabled; squeue answers from the table (tests/test_slurm_status.py's shims)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        (bin_dir / name).write_text(SHIM.format(python=sys.executable, name=name, upper=name.upper()))
        (bin_dir / name).chmod(0o755)
    slurm = Slurm(tmp_path)
    slurm.write()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SHIM_TABLE", str(slurm.table_path))
    monkeypatch.setenv("SHIM_LOG", str(slurm.log_path))
    monkeypatch.setenv("SHIM_FAIL_SACCT", DISABLED)
    return slurm


def test_without_accounting_sacct_is_asked_once_and_squeue_answers(shims: Slurm, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    monkeypatch.setattr(control, "CHUNK", 2)
    for number in range(4100, 4105):
        slurm_record(number)
    shims.squeue.update({
        "4100": ["COMPLETED|None|0|0|"],
        "4101": ["FAILED|NonZeroExitCode|768|0|"],  # a wait status: exit 3
        "4102": ["PENDING|BeginTime|0|2|"],  # requeued twice, held until its begin time
        "4103": ["RUNNING|None|0|1|"],
    })  # 4104: slurmctld has forgotten it, and nothing in its directory says how it ended
    shims.write()
    rows = stjobs.status()
    assert [(row.state, row.exit_code, row.requeues) for row in rows] == [
        (State.COMPLETED, 0, 0), (State.FAILED, 3, 0), (State.PENDING, None, 2), (State.RUNNING, None, 1),
        (State.LOST, None, 0)]
    assert rows[2].reason == "SLURM's pending reason: BeginTime"
    assert "cannot be known" in rows[4].reason and "no exit record" in rows[4].reason, rows[4].reason
    # sacct said it once: the other two chunks went to squeue alone, every chunk asking for finished jobs too
    # (the plain squeue started beside that first sacct is stopped, and may not have run at all).
    memory = [call for call in shims.calls() if call[0] == "squeue" and "--states=all" in call]
    assert (shims.count("sacct"), len(memory)) == (1, 3), shims.calls()
    assert shims.count("squeue") - len(memory) <= 1
    # A failing sacct for any other reason still fails the listing (the api shows it UNKNOWN), never LOST.
    monkeypatch.setenv("SHIM_FAIL_SACCT", "sacct: error: Problem talking to the database: Connection refused")
    assert {row.state for row in stjobs.status()} == {State.UNKNOWN}


def test_what_slurmctld_said_is_kept_for_when_it_has_forgotten(shims: Slurm, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    record = slurm_record(4200)
    shims.squeue["4200"] = ["CANCELLED|None|0|1|"]
    shims.write()
    assert (stjobs.status()[0].state, stjobs.status()[0].requeues) == (State.CANCELLED, 1)
    shims.squeue.clear()  # MinJobAge later
    shims.write()
    (row,) = stjobs.status()
    assert (row.state, row.requeues) == (State.CANCELLED, 1)
    assert "slurmctld has forgotten job 4200" in row.reason and "as slurmctld reported it at" in row.reason
    assert json.loads((Path(record.job_dir) / jobfiles.SEEN_FILE).read_text())["state"] == "CANCELLED"


def batch_file(spec: str, job_dir: Path) -> Path:
    """The packaged batch file and node script as stjobs renders them for the example, in the job's directory."""
    rendered = stjobs.render(stjobs.load_spec(EXAMPLES / spec), "slurm")
    for name in ("job.sbatch", "launch.sh"):
        (job_dir / name).write_text(rendered.file(name).content)
    return job_dir / "job.sbatch"


# Each run: (SLURM_RESTART_COUNT, what srun does, the signal SLURM sends the batch script while srun runs).
Run = tuple[int, str, str | None]


@pytest.mark.parametrize("spec,runs,state,exit_code,requeues,said", [
    ("tiny-ddp.yaml", [(0, "exit 0", None)], State.COMPLETED, 0, 0, "exit record"),
    ("tiny-ddp.yaml", [(0, "exit 3", None)], State.FAILED, 3, 0, "exit record"),
    ("my-script.yaml", [(0, "exit 3", None)], State.FAILED, 3, 0, "exit record"),  # not resumable: no USR2 trap
    ("my-script.yaml", [(0, "exit 0", None)], State.COMPLETED, 0, 0, "exit record"),
    # scancel, the time limit: SIGTERM to the script (and everything in the job) ends it 143
    ("tiny-ddp.yaml", [(0, "sleep 30", "TERM")], State.LOST, None, 0, "ended by signal 15"),
    ("my-script.yaml", [(0, "sleep 30", "TERM")], State.LOST, None, 0, "ended by signal 15"),
    ("tiny-ddp.yaml", [(0, "kill -KILL $PPID", None)], State.LOST, None, 0, "recorded no exit"),  # after KillWait
    # preempted: USR2 reaches the ranks through srun, the script requeues itself ...
    ("tiny-ddp.yaml", [(0, "sleep 30", "USR2")], State.LOST, None, 0, "next run never started"),
    # ... and the next run finishes
    ("tiny-ddp.yaml", [(0, "sleep 30", "USR2"), (1, "exit 0", None)], State.COMPLETED, 0, 1, "exit record"),
    # preempted with no requeue left, or requeued from outside once too often
    ("tiny-ddp.yaml", [(3, "sleep 30", "USR2")], State.FAILED, 75, 3, "the most slurm.max_requeues=3 allows"),
    ("tiny-ddp.yaml", [(4, "exit 0", None)], State.FAILED, 75, 4, "the most slurm.max_requeues=3 allows"),
])
def test_a_forgotten_batch_job_ends_as_its_exit_record_says(spec: str, runs: list[Run], state: State,
                                                            exit_code: int | None, requeues: int, said: str,
                                                            shims: Slurm, tmp_path: Path) -> None:
    """The rendered batch file runs as SLURM would start it, once per run, and ends as the case says; then
    slurmctld knows nothing any more and only the exit record the batch file wrote can tell."""
    record = slurm_record(4300)
    script = batch_file(spec, Path(record.job_dir))
    for name, text in (("srun", SRUN_SHIM), ("scontrol", SCONTROL_SHIM)):
        (tmp_path / "bin" / name).write_text(text)
        (tmp_path / "bin" / name).chmod(0o755)
    for restart, body, signal in runs:
        env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "SLURM_JOB_ID": "4300", "SLURM_JOB_NODELIST": "n[1-2]",
               "STJOBS_JOB_DIR": record.job_dir, "SLURM_RESTART_COUNT": str(restart), "SRUN_BODY": body}
        run = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
        if signal == "USR2":  # --signal=B:USR2: to the batch shell alone
            time.sleep(1.0)  # past the traps, into srun
            run.send_signal(signal_module.SIGUSR2)
        elif signal == "TERM":  # scancel and the time limit signal every process of the job
            time.sleep(1.0)
            os.killpg(run.pid, signal_module.SIGTERM)
        _, err = run.communicate(timeout=60)
    record_text = (Path(record.job_dir) / "slurm-4300.exit").read_text()
    (row,) = stjobs.status()
    assert (row.state, row.exit_code, row.requeues) == (state, exit_code, requeues), (row.reason, record_text, err)
    assert said in row.reason and "slurmctld has forgotten job 4300" in row.reason, row.reason
    requeues_asked = Path(record.job_dir) / "scontrol.log"
    requeued = requeues_asked.read_text() if requeues_asked.exists() else ""
    assert requeued.count("requeue 4300") == sum(1 for restart, _, sent in runs if sent == "USR2" and restart < 3)


def submitit_record(number: int, logs: list[str], results: list[tuple[str, Any] | None]) -> JobRecord:
    """A submitit job's folder as submitit leaves it: each task's log (its own INFO lines) and result file."""
    from submitit.core.utils import cloudpickle_dump

    job_dir = jobs_root() / f"job-{number}"
    folder = job_dir / "submitit"
    folder.mkdir(parents=True)
    for task, (log, result) in enumerate(zip(logs, results, strict=True)):
        (folder / f"{number}_{task}_log.out").write_text(log)
        if result is not None:
            cloudpickle_dump(result, folder / f"{number}_{task}_result.pkl")
    record = JobRecord(job_id=f"job-{number}", backend="slurm", name="job", job_dir=str(job_dir),
                       submitted_at=time.time() - 3600, nodes=len(logs), procs_per_node=1,
                       details={"slurm_job_id": str(number), "mode": "submitit", "max_requeues": 3,
                                "folder": str(folder), "output": str(folder / f"{number}_0_log.out")})
    record.save()
    return record


START = "submitit INFO (2026-01-01 10:00:00,000) - Starting with JobEnvironment(job_id=1, node=0(1))\n"
DONE = "submitit INFO (2026-01-01 10:01:00,000) - Job completed successfully\n" \
       "submitit INFO (2026-01-01 10:01:00,001) - Exiting after successful completion\n"
RAISED = "ValueError: no such column\nsubmitit ERROR (2026-01-01 10:01:00,000) - Submitted job triggered an " \
         "exception\n"


@pytest.mark.parametrize("logs,results,state,requeues,said", [
    ([START + DONE, START + DONE], [("success", 0), ("success", 0)], State.COMPLETED, 0, "all 2 task(s) succeeded"),
    ([START + RAISED], [("error", "Traceback ...\nValueError: no such column")], State.FAILED, 0, "no such column"),
    ([START + DONE + START + DONE], [("success", 0)], State.COMPLETED, 1, "succeeded"),  # requeued once, finished
    # Preempted, requeued, then killed: the first run's result file is still there and must not be believed.
    ([START + DONE + START + "training...\n"], [("success", 0)], State.LOST, 0, "no result for task 0 in its last"),
    ([START + DONE, START], [("success", 0), None], State.LOST, 0, "no result for task 1"),
])
def test_a_forgotten_submitit_job_ends_as_its_result_files_say(logs: list[str], results: list[Any], state: State,
                                                               requeues: int, said: str, shims: Slurm,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    submitit_record(4400, logs, results)
    (row,) = stjobs.status()
    assert (row.state, row.requeues) == (state, requeues), row.reason
    assert said in row.reason and "slurmctld has forgotten job 4400" in row.reason, row.reason


# ---- on the cluster without accounting ---------------------------------------------------------------------

cluster = pytest.mark.slurm
FINISHED: dict[str, str] = {}  # what the tests below saw end, by name: the last test asks again once forgotten


@pytest.fixture(scope="module")
def noacct() -> None:
    ensure_noacct_cluster()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("noacct-home")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def run(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The installed CLI on the cluster without accounting, with this module's STJOBS_HOME."""
    return cli(*args, check=check, env={**noacct_env(), "STJOBS_HOME": str(home)})


def state_of(home: Path, job_id: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(run(home, "status", job_id, "--json").stdout)
    return result


def slurm_job(home: Path, job_id: str) -> str:
    return str(json.loads((home / "jobs" / job_id / "job.json").read_text())["details"]["slurm_job_id"])


def submit(home: Path, mode: str, *flags: str) -> str:
    return job_of(run(home, "submit", "examples/tiny-ddp.yaml", "-b", "slurm",
                      *(["--sbatch"] if mode == "sbatch" else []), *flags).stdout)


@pytest.fixture(scope="module")
def unwatched(noacct: None, home: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, str]:
    """One short job per mode, submitted with the first test and never asked about until slurmctld has forgotten
    it: only the job's own files can say how it ended."""
    out = tmp_path_factory.mktemp("unwatched")
    return {mode: submit(home, mode, *job_args(tiny_model, out / mode, 5, 1, 1)) for mode in ("sbatch", "submitit")}


@cluster
@pytest.mark.parametrize("mode", ["sbatch", "submitit"])
def test_a_job_completes_and_shows_its_logs(mode: str, noacct: None, home: Path, tiny_model: Path,
                                            unwatched: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    flags = ["--sbatch"] if mode == "sbatch" else []
    done = run(home, "submit", "examples/two-nodes.yaml", "-b", "slurm", "--wait", *flags,
               *job_args(tiny_model, out, 10, 2, 1))
    job_id = job_of(done.stdout)
    assert done.stdout.strip().endswith(f"{job_id}: COMPLETED"), done.stdout
    assert state_of(home, job_id)["state"] == "COMPLETED"
    events = parse_events(run(home, "logs", job_id, "--raw").stdout)
    assert {e["node"] for e in events if e["event"] == "start"} == set(NOACCT_NODES)
    assert [e["path"] for e in events if e["event"] == "saved"] == [str(out / "final")]
    FINISHED[f"completed-{mode}"] = job_id


@cluster
def test_cancel_and_a_counted_requeue(noacct: None, home: Path, tiny_model: Path, tmp_path: Path) -> None:
    """A running job cancelled ends CANCELLED; one requeued from outside (`scontrol requeue`) counts the requeue
    while it waits out SLURM's hold, and keeps the count once cancelled."""
    cancelled = submit(home, "sbatch", *job_args(tiny_model, tmp_path / "c", 100000, 1, 1))
    requeued = submit(home, "submitit", *job_args(tiny_model, tmp_path / "r", 100000, 1, 1))
    deadline = time.monotonic() + 180
    while '"event":"loss"' not in run(home, "logs", cancelled, "--raw").stdout:  # logs of a running job
        assert time.monotonic() < deadline, run(home, "logs", cancelled, "--raw").stdout[-2000:]
        time.sleep(2)
    assert state_of(home, cancelled)["state"] == "RUNNING"
    assert run(home, "cancel", cancelled).stdout.strip() == f"{cancelled}: CANCELLED"
    while state_of(home, requeued)["state"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(1)
    subprocess.run(["scontrol", "requeue", slurm_job(home, requeued)], check=True, env={**noacct_env(), "PATH":
                   "/usr/bin:/bin"}, timeout=30)
    deadline = time.monotonic() + 60
    row = state_of(home, requeued)
    while row["requeues"] != 1 or row["state"] != "PENDING":
        assert time.monotonic() < deadline, row
        time.sleep(1)
        row = state_of(home, requeued)
    assert "SLURM's pending reason" in row["reason"]
    assert run(home, "cancel", requeued).stdout.strip() == f"{requeued}: CANCELLED"
    assert (state_of(home, requeued)["requeues"], state_of(home, cancelled)["state"]) == (1, "CANCELLED")
    FINISHED.update({"cancelled": cancelled, "requeued": requeued})


@cluster
def test_after_slurmctld_forgets_the_status_is_right_or_says_it_cannot_be_known(noacct: None, home: Path,
                                                                                unwatched: dict[str, str]) -> None:
    jobs = {**{f"unwatched-{mode}": job_id for mode, job_id in unwatched.items()}, **FINISHED}
    ids = ",".join(slurm_job(home, job_id) for job_id in jobs.values())
    deadline = time.monotonic() + 180  # MinJobAge 10 s; slurmctld purges about once a minute
    while subprocess.run(["squeue", "--states=all", "-h", "-j", ids, "-o", "%i"], capture_output=True, text=True,
                         env={**noacct_env(), "PATH": "/usr/bin:/bin"}, timeout=30).stdout.strip():
        assert time.monotonic() < deadline, "slurmctld still holds the jobs"
        time.sleep(3)
    rows = {row["job_id"]: row for row in map(json.loads, run(home, "status", "--json").stdout.splitlines())}
    got = {name: rows[job_id] for name, job_id in jobs.items()}
    for row in got.values():
        assert "slurmctld has forgotten job" in row["reason"], row
    # Never asked about while SLURM knew it: submitit's result files say how it ended.
    assert got["unwatched-submitit"]["state"] == "COMPLETED", got["unwatched-submitit"]
    assert "submitit's result files" in got["unwatched-submitit"]["reason"]
    events = parse_events(run(home, "logs", unwatched["submitit"], "--raw").stdout)
    assert any(e["event"] == "saved" for e in events), "logs of a forgotten job"
    # A batch job's only witness is the exit record its batch file wrote.
    assert got["unwatched-sbatch"]["state"] == "COMPLETED", got["unwatched-sbatch"]
    assert "the batch script's exit record" in got["unwatched-sbatch"]["reason"]
    # What stjobs saw slurmctld say before it forgot (the earlier tests, when they ran).
    expected = {"completed-sbatch": ("COMPLETED", 0), "completed-submitit": ("COMPLETED", 0),
                "cancelled": ("CANCELLED", 0), "requeued": ("CANCELLED", 1)}
    for name in FINISHED:
        assert (got[name]["state"], got[name]["requeues"]) == expected[name], got[name]
        assert "as slurmctld reported it at" in got[name]["reason"], got[name]
