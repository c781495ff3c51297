"""`stjobs status` on SLURM: a listing asks SLURM once (one sacct for every job, one squeue for those still
waiting), a pending job shows SLURM's pending reason, a failed one the first error of the training (from the rank
that failed first) before SLURM's own lines.

The first tests put shims named ``sacct`` and ``squeue`` first on PATH: each logs its call and answers from a
table, so they run without a cluster. The tests marked ``slurm`` submit to the real 2-node cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stjobs
from stjobs.backends.joblog import first_error
from stjobs.backends.slurm import control
from stjobs.jobs import JobRecord, State, jobs_root
from tests.conftest import cli, job_of, job_state
from tests.slurm_cluster import PARTITION, ensure_cluster, wait_for_sacct_state

SHIM = """#!{python}
# A stand-in for {name}: logs its argv, answers for the ids of -j from a JSON table.
import json, os, sys
args = sys.argv[1:]
with open(os.environ["SHIM_LOG"], "a") as log:
    log.write(json.dumps(["{name}", *args]) + "\\n")
if os.environ.get("SHIM_FAIL_{upper}"):
    print(os.environ["SHIM_FAIL_{upper}"], file=sys.stderr)
    sys.exit(1)
table = json.load(open(os.environ["SHIM_TABLE"]))
for job in args[args.index("-j") + 1].split(","):
    for line in table.get("{name}", {{}}).get(job, []):
        print(job + "|" + line)
"""


class Slurm:
    """The shims' table (what sacct and squeue answer, per job id) and their call log."""

    def __init__(self, root: Path) -> None:
        self.table_path, self.log_path = root / "table.json", root / "calls.log"
        self.sacct: dict[str, list[str]] = {}
        self.squeue: dict[str, list[str]] = {}

    def write(self) -> None:
        self.table_path.write_text(json.dumps({"sacct": self.sacct, "squeue": self.squeue}))

    def calls(self) -> list[list[str]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls() if call[0] == name)


@pytest.fixture
def shims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Slurm:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        path = bin_dir / name
        path.write_text(SHIM.format(python=sys.executable, name=name, upper=name.upper()))
        path.chmod(0o755)
    slurm = Slurm(tmp_path)
    slurm.write()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SHIM_TABLE", str(slurm.table_path))
    monkeypatch.setenv("SHIM_LOG", str(slurm.log_path))
    return slurm


def slurm_record(number: int, submitted_ago_s: float = 3600.0, output: str = "") -> JobRecord:
    job_dir = jobs_root() / f"job-{number}"
    job_dir.mkdir(parents=True)
    record = JobRecord(job_id=f"job-{number}", backend="slurm", name="job", job_dir=str(job_dir),
                       submitted_at=time.time() - submitted_ago_s, nodes=2, procs_per_node=1,
                       details={"slurm_job_id": str(number), "mode": "sbatch", "max_requeues": 3,
                                "output": output or str(job_dir / f"slurm-{number}.out")})
    record.save()
    return record


def test_a_listing_of_200_jobs_is_one_sacct_and_one_squeue(shims: Slurm) -> None:
    records = [slurm_record(1000 + n) for n in range(200)]
    for n in range(150):
        shims.sacct[str(1000 + n)] = ["COMPLETED|0:0"]
    for n in range(150, 180):
        shims.sacct[str(1000 + n)] = ["PENDING|0:0"]
        shims.squeue[str(1000 + n)] = ["PENDING|Priority"]
    for n in range(180, 200):  # accounting lags: only slurmctld knows them yet
        shims.squeue[str(1000 + n)] = ["RUNNING|None"]
    shims.write()
    rows = stjobs.status()
    assert [row.record.job_id for row in rows] == [record.job_id for record in records]
    assert [row.state for row in rows] == [State.COMPLETED] * 150 + [State.PENDING] * 30 + [State.RUNNING] * 20
    assert rows[150].reason == "SLURM's pending reason: Priority"
    assert (shims.count("sacct"), shims.count("squeue")) == (1, 1), shims.calls()
    for call in shims.calls():  # each asked about every job at once
        assert call[call.index("-j") + 1].split(",") == [str(1000 + n) for n in range(200)]
    # The count can fail: asked one job at a time, as the listing did before, SLURM hears from us 200 times.
    before = shims.count("sacct")
    for record in records[:20]:
        control.status(record)
    assert shims.count("sacct") - before == 20


def test_long_id_lists_go_in_chunks(shims: Slurm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "CHUNK", 40)
    for n in range(100):
        slurm_record(2000 + n)
        shims.sacct[str(2000 + n)] = ["COMPLETED|0:0"]
    shims.write()
    assert {row.state for row in stjobs.status()} == {State.COMPLETED}
    for name in ("sacct", "squeue"):
        calls = [call for call in shims.calls() if call[0] == name]
        assert [len(call[call.index("-j") + 1].split(",")) for call in calls] == [40, 40, 20]


@pytest.mark.parametrize("why,shown", [
    ("Resources", "SLURM's pending reason: Resources"),
    ("BeginTime", "SLURM's pending reason: BeginTime"),
    ("PartitionNodeLimit", "SLURM's pending reason: PartitionNodeLimit (more nodes than the partition allows; it "
                           "will not start until that changes: cancel it and resubmit)"),
    ("ReqNodeNotAvail, UnavailableNodes:n2", "SLURM's pending reason: ReqNodeNotAvail, UnavailableNodes:n2 (nodes "
                                             "that are down, drained or reserved; it will not start until that "
                                             "changes: cancel it and resubmit)"),
])
def test_a_pending_job_shows_slurms_reason(why: str, shown: str, shims: Slurm) -> None:
    slurm_record(3000)
    shims.sacct["3000"] = ["PENDING|0:0"]
    shims.squeue["3000"] = [f"PENDING|{why}"]
    shims.write()
    (row,) = stjobs.status()
    assert (row.state, row.reason) == (State.PENDING, shown)


def test_a_requeued_job_counts_its_runs_and_waits_with_a_reason(shims: Slurm) -> None:
    slurm_record(3100)
    shims.sacct["3100"] = ["NODE_FAIL|0:0", "PREEMPTED|0:0", "PENDING|0:0"]
    shims.squeue["3100"] = ["PENDING|BeginTime"]
    shims.write()
    (row,) = stjobs.status()
    assert (row.state, row.requeues, row.reason) == (State.PENDING, 2, "SLURM's pending reason: BeginTime")


def test_squeue_down_costs_only_what_accounting_cannot_tell(shims: Slurm, monkeypatch: pytest.MonkeyPatch) -> None:
    slurm_record(4000)
    slurm_record(4001)
    slurm_record(4002)
    shims.sacct.update({"4000": ["COMPLETED|0:0"], "4001": ["PENDING|0:0"]})
    shims.write()
    monkeypatch.setenv("SHIM_FAIL_SQUEUE", "squeue: error: Unable to contact slurm controller (connect failure)")
    done, waiting, unknown = stjobs.status()
    assert done.state is State.COMPLETED and done.reason == ""
    assert waiting.state is State.PENDING and "Unable to contact slurm controller" in waiting.reason
    assert unknown.state is State.UNKNOWN and "Unable to contact slurm controller" in unknown.reason


def test_sacct_down_leaves_the_other_backends_listed(shims: Slurm, monkeypatch: pytest.MonkeyPatch) -> None:
    slurm_record(5000)
    local_dir = jobs_root() / "local-job"
    local_dir.mkdir(parents=True)
    JobRecord(job_id="local-job", backend="local", name="l", job_dir=str(local_dir), submitted_at=time.time(),
              nodes=1, procs_per_node=1).save()
    monkeypatch.setenv("SHIM_FAIL_SACCT", "sacct: error: Problem talking to the database: Connection refused")
    rows = {row.record.job_id: row for row in stjobs.status()}
    assert rows["job-5000"].state is State.UNKNOWN
    assert rows["job-5000"].reason == "slurm: sacct failed: sacct: error: Problem talking to the database: " \
                                      "Connection refused"
    assert rows["local-job"].state is State.LOST  # its own answer, from its files
    assert shims.count("sacct") == 1


# ---- the first error of a failed training ------------------------------------------------------------------

# One file for both nodes (plain sbatch), as the cluster wrote it for a --train-data that does not exist: rank 0
# fails first; rank 1 fails of it at the next barrier; SLURM then names the task that exited (task 1).
SBATCH_LOG = """\
[rank0]:stjobs.train: error: --train-data: got '/data/missing.jsonl'; expected an existing file or directory
[rank1]:[rank1]: Traceback (most recent call last):
[rank1]:[rank1]:   File "/work/main/stjobs/train/run.py", line 60, in train
[rank1]:[rank1]:     with state.main_process_first():
[rank1]:[rank1]:          ^^^^^^^^^^^^^^^^^^^^^^^^^^
[rank1]:[rank1]: RuntimeError: [../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:64661.
E1201 18:58:26.494000 18443 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 2)
Traceback (most recent call last):
  File "torch/distributed/run.py", line 1032, in <module>
    main()
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
stjobs.train FAILED
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_18:58:26
  host      : n1
  rank      : 0 (local_rank: 0)
  exitcode  : 2 (pid: 18459)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
srun: error: n2: task 1: Exited with exit code 1
srun: launch/slurm: _step_signal: Terminating StepId=38.0
slurmstepd-n1: error: *** STEP 38.0 ON n1 CANCELLED AT 2026-12-01T18:58:27 ***
srun: error: n1: task 0: Terminated
"""


def root_cause(rank: int, second: int, traceback: str = "To enable traceback see: https://pytorch.org") -> str:
    return (f"Root Cause (first observed failure):\n[0]:\n  time      : 2026-12-01_18:58:{second:02d}\n"
            f"  host      : n1\n  rank      : {rank} (local_rank: 0)\n  exitcode  : 1 (pid: 7)\n"
            f"  error_file: <N/A>\n  traceback : {traceback}\n" + "=" * 60 + "\n")


def traceback(rank: int, last: str) -> str:
    return (f"[rank{rank}]:Traceback (most recent call last):\n[rank{rank}]:  File \"train.py\", line 3, in <module>\n"
            f"[rank{rank}]:    main()\n[rank{rank}]:{last}\n")


def test_the_training_error_comes_before_slurms_lines(shims: Slurm, tmp_path: Path) -> None:
    log = tmp_path / "slurm-6000.out"
    log.write_text(SBATCH_LOG)
    slurm_record(6000, output=str(log))
    shims.sacct["6000"] = ["FAILED|15:0"]
    shims.write()
    (row,) = stjobs.status()
    assert row.state is State.FAILED and row.exit_code == 15
    assert row.reason == ("rank 0: stjobs.train: error: --train-data: got '/data/missing.jsonl'; expected an "
                          "existing file or directory; SLURM state FAILED exit 15: n2: task 1: Exited with exit "
                          "code 1; n1: task 0: Terminated")


def test_per_node_files_take_the_rank_that_failed_first() -> None:
    """Under submitit each node writes its own file, and the first file need not hold the first failure:
    torchrun's root-cause time decides (file order alone would name rank 0's consequence)."""
    node0 = traceback(0, "RuntimeError: Connection closed by peer") + root_cause(0, 30)
    node1 = traceback(1, "ValueError: no rows left after filtering") + root_cause(1, 28)
    assert first_error([node0, node1]) == "rank 1: ValueError: no rows left after filtering"
    assert first_error([node0]) == "rank 0: RuntimeError: Connection closed by peer"


@pytest.mark.parametrize("text,expected", [
    ("/usr/bin/python3: Error while finding module specification for 'torch.distributed.run' "
     "(ModuleNotFoundError: No module named 'torch')\n", "ModuleNotFoundError: No module named 'torch'"),
    (traceback(3, "ModuleNotFoundError: No module named 'sentence_transformers'"),
     "rank 3: ModuleNotFoundError: No module named 'sentence_transformers'"),
    ("[rank0]:stjobs: error: python /opt/py on n1 cannot import torch; name the venv's interpreter\n",
     "rank 0: stjobs: error: python /opt/py on n1 cannot import torch; name the venv's interpreter"),
    (traceback(0, "KeyError: 'label'") + traceback(0, "ValueError: later, of the first"),
     "rank 0: KeyError: 'label'"),
    (root_cause(2, 10, "Signal 9 (SIGKILL) received by PID 77"), "rank 2: killed by signal 9 (SIGKILL)"),
    ("Traceback (most recent call last):\n  File \"x\", line 1\n"
     "torch.distributed.elastic.multiprocessing.api.SignalException: Process 9 got signal: 15\n", ""),
    ("[rank0]:loss 0.3\nsrun: error: n1: task 0: Exited with exit code 1\n", ""),
])
def test_first_error_shapes(text: str, expected: str) -> None:
    assert first_error([text]) == expected


# ---- on the cluster ---------------------------------------------------------------------------------------

cluster = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    ensure_cluster()


def script_job(script: Path, *extra: str, nodes: int = 1) -> list[str]:
    return ["submit", "examples/two-nodes.yaml", "-b", "slurm", "--nodes", str(nodes), "--procs-per-node", "1",
            "--cpus-per-task", "1", "--set", "mem_gb=null", "--set", f"slurm.partition={PARTITION}",
            "--set", "time_min=5", "--set", "max_restarts=0", "--set", f"entrypoint={{script: {script}}}", *extra]


@cluster
def test_a_job_that_cannot_start_shows_why(slurm_cluster: None, tmp_path: Path) -> None:
    script = tmp_path / "never.py"
    script.write_text("print('never runs')\n")
    failed = subprocess.run(["sbatch", "--parsable", f"--partition={PARTITION}", "--time=1", "--wrap", "false",
                             f"--output={tmp_path / 'false.out'}"], capture_output=True, text=True, check=True)
    failed_id = failed.stdout.strip().split(";")[0]
    later = job_of(cli(*script_job(script, "--sbatch", "--set", 'slurm.extra_sbatch=["--begin=now+1hour"]')).stdout)
    after = job_of(cli(*script_job(script, "--set", f'slurm.extra_sbatch=["--dependency=afterok:{failed_id}"]'))
                   .stdout)
    try:
        assert wait_for_sacct_state(failed_id, timeout=60) == "FAILED"
        deadline = time.monotonic() + 120
        while True:  # slurmctld sets a reason at its next scheduling pass
            rows = {row["job_id"]: row for row in map(json.loads, cli("status", "--json").stdout.splitlines())}
            if "DependencyNeverSatisfied" in rows[after]["reason"] or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert (rows[later]["state"], rows[later]["reason"]) == ("PENDING", "SLURM's pending reason: BeginTime")
        assert rows[after]["state"] == "PENDING"
        assert rows[after]["reason"].startswith("SLURM's pending reason: DependencyNeverSatisfied (a job it "
                                                "depends on ended the wrong way; it will not start"), rows[after]
        table = cli("status").stdout
        assert "BeginTime" in table and "DependencyNeverSatisfied" in table
    finally:
        for job_id in (later, after):
            cli("cancel", job_id, check=False)
    assert job_state(later)["state"] == "CANCELLED"


@cluster
@pytest.mark.parametrize("mode", ["sbatch", "submitit"])
def test_a_failed_trainings_status_names_the_python_error(mode: str, slurm_cluster: None, tmp_path: Path) -> None:
    """Rank 1 raises at once; rank 0 fails later of a lost peer. The status names rank 1's error first."""
    script = tmp_path / "train.py"
    script.write_text("import os, time\n"
                      "if os.environ['RANK'] == '1':\n"
                      "    raise ValueError('no rows left after filtering')\n"
                      "time.sleep(3)\n"
                      "raise RuntimeError('rank 0 lost its peer')\n")
    flags = ["--sbatch"] if mode == "sbatch" else []
    done = cli(*script_job(script, "--wait", *flags, nodes=2), check=False)
    job_id = job_of(done.stdout)
    final = job_state(job_id)
    assert final["state"] == "FAILED", final
    assert final["reason"].startswith("rank 1: ValueError: no rows left after filtering; SLURM state FAILED"), final
    assert ": task " in final["reason"], final  # SLURM's own line follows
