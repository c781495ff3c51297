"""Remote SLURM over SSH: ``stjobs submit --remote`` from a "laptop" to the test cluster's login node.

The login node is a real sshd on loopback (slurm/cluster/sshd-up.sh: its own config and host key, key
authentication only, logging in as the unprivileged site user); the laptop is this machine as root with its own
STJOBS_HOME and an ssh config of its own (STJOBS_SSH_CONFIG: the user's ~/.ssh/config stays untouched), whose
known_hosts the test writes from the server's host key: the client checks it. Jobs train on the real 2-node
cluster; connections are cut for real (the master killed during ``logs -f``, the sshd connection cut right after
sbatch ran, by the key sshd-up.sh makes for it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import TypeVar

import pytest

import stjobs
from stjobs.backends.slurm import renderer as slurm
from stjobs.errors import SpecError
from stjobs.train.events import parse_events
from tests.conftest import EXAMPLES, REPO, VENV_BIN, cli, job_of, offline_env, stjobs_bin
from tests.slurm_cluster import (
    NODES,
    PARTITION,
    SITE_HOME,
    SITE_PYTHON,
    SITE_USER,
    SSHD_PORT,
    SSHD_STATE,
    ensure_cluster,
    ensure_login_node,
)

T = TypeVar("T")


def test_remote_is_an_ssh_destination_never_an_option() -> None:
    base = stjobs.load_spec(EXAMPLES / "two-nodes.yaml", overrides=[("slurm.remote", "me@login.site.org")])
    plan = slurm.render(base)
    assert any(note.startswith("remote: stjobs submit copies") for note in plan.notes)
    for bad in ("-oProxyCommand=touch /tmp/x", "me@-login", "login; rm -rf ~", "a b", "me@"):
        with pytest.raises(SpecError, match="slurm.remote"):
            stjobs.load_spec(EXAMPLES / "two-nodes.yaml", overrides=[("slurm.remote", bad)])


def test_remote_needs_the_slurm_backend() -> None:
    done = cli("submit", "examples/tiny-ddp.yaml", "--remote", "login", check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == ("stjobs submit: error: --remote: got --remote with --backend local; expected "
                                   "--backend slurm (--remote submits to a SLURM login node)")


def test_one_master_connection_of_stjobs_own_unless_the_users_config_has_one(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from stjobs.backends.slurm.remote import Remote

    config = tmp_path / "config"
    config.write_text(f"Host theirs\n  ControlMaster auto\n  ControlPath {tmp_path}/cm-%C\nHost plain\n")
    monkeypatch.setenv("STJOBS_SSH_CONFIG", str(config))
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # a home short enough for a socket path under it
        monkeypatch.setenv("STJOBS_HOME", short)
        plain, theirs = Remote("plain").ssh(), Remote("theirs").ssh()
        assert f"ControlPath={short}/ssh/%C" in plain and "ControlPersist=300" in plain
        assert not any(word.startswith(("ControlPath", "ControlPersist")) for word in theirs)
        assert (Path(short) / "ssh").stat().st_mode & 0o777 == 0o700
    # A home too deep for "<dir>/<40 hex>.<16 random>" in a socket's 104 bytes: a private directory under /tmp.
    deep = tmp_path / ("d" * 60)
    monkeypatch.setenv("STJOBS_HOME", str(deep))
    (path,) = [word.split("=", 1)[1] for word in Remote("plain").ssh() if word.startswith("ControlPath=")]
    assert re.fullmatch(rf"/tmp/stjobs-ssh-{os.getuid()}/[0-9a-f]{{12}}/%C", path), path
    assert Path(path).parent.stat().st_mode & 0o777 == Path(path).parent.parent.stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("STJOBS_HOME", str(tmp_path / ("e" * 60)))  # another home: never its master connection
    assert f"ControlPath={path}" not in Remote("plain").ssh()
    assert ["-F", str(config)] == plain[1:3] and "BatchMode=yes" in plain  # no terminal here: never a prompt
    assert not any("StrictHostKeyChecking" in word for word in plain + theirs)


def test_the_submit_command_quotes_every_word_and_finds_a_queued_job(tmp_path: Path) -> None:
    """The command the login node's shell runs, run here by sh with SLURM's commands as shims: a hostile job
    directory and secret reach sbatch as they are, and a job already queued with the token is found instead of
    submitted again."""
    from stjobs.backends.slurm.remote_jobs import submit_command

    spec = stjobs.load_spec(EXAMPLES / "tiny-ddp.yaml", overrides=[("slurm.remote", "login"),
                                                                   ("python", sys.executable)],
                            sets=["secrets=[STJOBS_TEST_SECRET]"])
    plan = slurm.render(spec)
    remote_dir = tmp_path / "we'ird $(touch pwned) `id` dir"
    (remote_dir / "code").mkdir(parents=True)
    shims = tmp_path / "bin"
    shims.mkdir()
    said = tmp_path / "sbatch-argv"
    (shims / "sbatch").write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" \"$STJOBS_TEST_SECRET\" >{quote(str(said))}\n"
                                  "echo 42\n")
    queued = tmp_path / "queued"
    (shims / "squeue").write_text(f"#!/bin/sh\ncat {quote(str(queued))} 2>/dev/null\n")
    (shims / "sacct").write_text("#!/bin/sh\nexit 1\n")
    for shim in shims.iterdir():
        shim.chmod(0o755)
    secret = "it's $(touch pwned) \\ \"x\"\nline two"
    command = submit_command(plan, "tiny-ddp-1", str(remote_dir))

    def run() -> str:
        done = subprocess.run(["sh", "-c", command], input=f"export STJOBS_TEST_SECRET={quote(secret)}\n",
                              capture_output=True, text=True, cwd=tmp_path, timeout=60,
                              env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"})
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run() == "42"
    assert said.read_text().split("\0")[:-1] == [
        "--parsable", "--comment=stjobs:tiny-ddp-1", f"--output={remote_dir}/slurm-%j.out",
        f"--export=ALL,STJOBS_JOB_DIR={remote_dir}", "job.sbatch", secret]
    assert not list(tmp_path.rglob("pwned"))
    said.unlink()
    queued.write_text("41|stjobs:tiny-ddp-0\n43|stjobs:tiny-ddp-1\n")  # a retry: the job is there already
    assert run() == "found 43" and not said.exists()


def test_logs_follow_gives_up_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A login node that stays unreachable: logs -f tries again a bounded number of times, then says so once."""
    from stjobs.backends.slurm import remote_jobs
    from stjobs.backends.slurm.remote import ConnectionLost, Remote

    config = tmp_path / "config"
    config.write_text("Host gone\n  HostName 127.0.0.1\n  Port 1\n")
    monkeypatch.setenv("STJOBS_SSH_CONFIG", str(config))
    monkeypatch.setattr(remote_jobs, "FOLLOW_RECONNECTS", 2)
    waits: list[float] = []
    monkeypatch.setattr(remote_jobs.time, "sleep", waits.append)
    with pytest.raises(ConnectionLost) as lost:
        list(remote_jobs.follow_remote(Remote("gone"), Path("/x/slurm-1.out"), lambda: False, True, None, "job-1"))
    assert str(lost.value) == ("slurm: ssh gone: connection lost while following the job's output (ssh: connect to "
                               "host 127.0.0.1 port 1: Connection refused); gave up after 2 reconnects (`stjobs logs "
                               "job-1 -f` picks it up again)")
    assert [wait for wait in waits if wait >= 1] == [2.0, 4.0]  # (subprocess polls with short sleeps too)


# ---- through the login node's sshd -----------------------------------------------------------------------------

cluster = pytest.mark.slurm


@dataclass(frozen=True)
class Laptop:
    """The submitting side: an ssh config with the login node's aliases, and the environment to run stjobs in."""

    folder: Path
    config: Path

    def env(self) -> dict[str, str]:
        return {"STJOBS_SSH_CONFIG": str(self.config)}

    def ssh(self, *args: str) -> subprocess.CompletedProcess[str]:
        from stjobs.backends.slurm.remote import _control_dir  # where stjobs keeps its sockets for this home

        control = _control_dir(Path(os.environ["STJOBS_HOME"])) / "%C"
        return subprocess.run(["ssh", "-F", str(self.config), "-o", f"ControlPath={control}", *args],
                              capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Laptop:
    ensure_login_node()
    folder = tmp_path_factory.mktemp("laptop")
    for key in ("id_ed25519", "id_drop"):
        shutil.copy(SSHD_STATE / "client" / key, folder / key)
        (folder / key).chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "stranger")], check=True)
    host_key = " ".join((SSHD_STATE / "host_ed25519_key.pub").read_text().split()[:2])
    other_key = " ".join((folder / "stranger.pub").read_text().split()[:2])
    address = f"[127.0.0.1]:{SSHD_PORT}"
    (folder / "known_hosts").write_text(f"{address} {host_key}\n")
    (folder / "wrong_hosts").write_text(f"{address} {other_key}\n")  # what a man in the middle would look like
    (folder / "no_hosts").write_text("")
    hosts = {"login": ("id_ed25519", "known_hosts", SSHD_PORT), "login-drop": ("id_drop", "known_hosts", SSHD_PORT),
             "login-wrong-key": ("id_ed25519", "wrong_hosts", SSHD_PORT),
             "login-unknown-key": ("id_ed25519", "no_hosts", SSHD_PORT),
             "login-stranger": ("stranger", "known_hosts", SSHD_PORT), "login-down": ("id_ed25519", "known_hosts", 1),
             "login-read-only": ("id_ed25519", "known_hosts", SSHD_PORT)}
    config = "".join(f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User {SITE_USER}\n"
                     f"  IdentityFile {folder / key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {folder / known}\n"
                     "  GlobalKnownHostsFile /dev/null\n" for alias, (key, known, port) in hosts.items())
    # The login node's STJOBS_HOME (sshd-up.sh accepts it) where the site user may not write: root's directory.
    config = config.replace("Host login-read-only\n", f"Host login-read-only\n  SetEnv STJOBS_HOME={SSHD_STATE}/jobs\n")
    (folder / "config").write_text(config)
    return Laptop(folder, folder / "config")


@pytest.fixture(autouse=True)
def _clean_up() -> Iterator[None]:
    """The master connections a test opened end with it (their ControlPersist would keep them minutes), and the
    copies its jobs left in the site user's home go (only those its own records name: others use that home)."""
    yield
    home = Path(os.environ["STJOBS_HOME"])
    for socket in (home / "ssh").glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "unused"], capture_output=True,
                       timeout=30, check=False)
    for record in (home / "jobs").glob("*/job.json"):
        copy = Path(str(json.loads(record.read_text())["details"].get("remote_job_dir", "")))
        if copy.is_absolute() and copy.parent == SITE_HOME / ".stjobs" / "jobs":
            shutil.rmtree(copy, ignore_errors=True)


@cluster
def test_commands_reach_the_login_node_exactly_as_given(laptop: Laptop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The remote command line is a shell string: every word arrives as one argument, whatever it holds."""
    from stjobs.backends.slurm.remote import Remote

    monkeypatch.setenv("STJOBS_SSH_CONFIG", str(laptop.config))
    words = ["a b", "$(id)", "`id`", "'quoted'", '"double"', "x\ny", "*", "~", "; exit 3", "ünï"]
    (echoed, missing) = Remote("login").run_all([["printf", "%s\\0", *words], ["no-such-command-here"]], "a test")
    assert echoed.code == 0 and echoed.stdout.decode().split("\0")[:-1] == words
    assert missing.code == 127 and echoed.stderr == b""


@cluster
@pytest.mark.parametrize("rsync", [True, False])
def test_a_directory_arrives_whole(rsync: bool, laptop: Laptop, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's directory goes by rsync over ssh where both ends have it, else by tar through ssh: the same."""
    from stjobs.backends.slurm.remote import Remote

    monkeypatch.setenv("STJOBS_SSH_CONFIG", str(laptop.config))
    files = {"a b.txt": "one", "sub/ünï 'q'": "two", "sub/deeper/$(id).sh": "#!/bin/sh\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "sub/deeper/$(id).sh").chmod(0o755)
    remote = Remote("login")
    target = remote.run("mktemp -d", "a test").stdout.strip()
    try:
        remote.copy_dir(tmp_path, target, rsync)
        listing = remote.run(f"cd {target} && find . -type f -printf '%P %m\\n' | sort", "a test").stdout
    finally:
        remote.run(f"rm -rf {target}", "a test")
    assert listing.splitlines() == sorted(f"{name} {755 if name.endswith('.sh') else 644}" for name in files)


@cluster
@pytest.mark.parametrize("alias,says", [
    ("login-wrong-key", "the login node's host key is not the one in known_hosts (refused;"),
    ("login-unknown-key", "the login node's host key is not in known_hosts (refused; connect once with `ssh "
                          "login-unknown-key` to check and accept it)"),
    ("login-stranger", "authentication failed"),
    ("login-down", "host unreachable (connection refused)"),
    ("login-read-only", "the job directory ${STJOBS_HOME:-~/.stjobs}/jobs/tiny-ddp-"),
])
def test_what_ssh_refuses_is_one_line(alias: str, says: str, laptop: Laptop) -> None:
    started = time.monotonic()
    done = cli("submit", "examples/tiny-ddp.yaml", "-b", "slurm", "--remote", alias, "--set", "slurm.partition=gpu",
               check=False, env=laptop.env())
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"stjobs: error: slurm: ssh {alias}: "), \
        done.stderr
    assert says in done.stderr
    jobs = Path(os.environ["STJOBS_HOME"], "jobs")
    assert not jobs.exists() or list(jobs.iterdir()) == [], "nothing half-submitted"
    assert time.monotonic() - started < 30


@pytest.fixture(scope="module")
def site_model() -> Iterator[Path]:
    """A tiny model where the site user can read it (the tests' own temporary directories are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="stjobs-remote-model-", dir="/var/tmp"))
    folder.chmod(0o755)
    out = folder / "model"
    subprocess.run([str(VENV_BIN / "python"), "-m", "stjobs.train.models", "--tiny-from",
                    str(EXAMPLES / "data" / "train.jsonl"), "--out", str(out)], check=True, cwd=REPO,
                   env=offline_env(), capture_output=True)
    subprocess.run(["chmod", "-R", "a+rX", str(folder)], check=True)
    yield out
    shutil.rmtree(folder, ignore_errors=True)


def remote_job(model: Path, steps: int, nodes: int = 2) -> list[str]:
    args = ["--model", str(model), "--train-data", "examples/data/train.jsonl", "--max-steps", str(steps),
            "--per-device-batch-size", "8", "--logging-steps", "5"]
    return ["examples/two-nodes.yaml", "-b", "slurm", "--nodes", str(nodes), "--procs-per-node", "1",
            "--cpus-per-task", "1", "--set", "mem_gb=null", "--set", f"slurm.partition={PARTITION}",
            "--set", "time_min=10", "--set", f"python={SITE_PYTHON}", "--set", "output_dir=outputs/remote",
            "--set", "entrypoint.args=" + json.dumps(args)]


def record_of(job_id: str) -> dict[str, object]:
    details: dict[str, object] = json.loads(Path(os.environ["STJOBS_HOME"], "jobs", job_id, "job.json")
                                            .read_text())["details"]
    return details


def state_of(job_id: str, laptop: Laptop) -> str:
    return str(json.loads(cli("status", job_id, "--json", env=laptop.env()).stdout)["state"])


# What a laptop has: the submit runs where torch and submitit cannot be imported.
NO_TORCH = ("import sys; sys.modules.update(dict.fromkeys(('torch', 'submitit', 'transformers', "
            "'sentence_transformers'))); from stjobs.cli import main; sys.exit(main(sys.argv[1:]))")


@cluster
def test_two_nodes_train_submitted_over_ssh(laptop: Laptop, site_model: Path) -> None:
    ensure_cluster()
    started = time.monotonic()
    done = subprocess.run([str(VENV_BIN / "python"), "-c", NO_TORCH, "submit", *remote_job(site_model, 30),
                           "--remote", "login", "--wait"], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env=offline_env(**laptop.env()))
    assert done.returncode == 0, done.stderr
    job_id = job_of(done.stdout)
    assert done.stdout.strip().endswith(f"{job_id}: COMPLETED"), done.stdout
    details = record_of(job_id)
    remote_dir = str(details["remote_job_dir"])
    assert details["remote"] == "login" and details["mode"] == "sbatch"
    assert remote_dir == f"{SITE_HOME}/.stjobs/jobs/{job_id}"
    assert state_of(job_id, laptop) == "COMPLETED"
    table = cli("status", env=laptop.env()).stdout
    assert job_id in table and "COMPLETED" in table
    # Its progress, from the tail of its output that the status queries brought back (in their ssh command).
    progress = json.loads(cli("status", job_id, "--json", env=laptop.env()).stdout)["progress"]
    assert progress["step"] == 30 and progress["total"] == 30, progress
    job_dir = Path(os.environ["STJOBS_HOME"], "jobs", job_id)
    assert (job_dir / "remote-output.stage").read_text() == "final"  # a finished job's tail is not fetched again
    events = parse_events(cli("logs", job_id, "--raw", env=laptop.env()).stdout)  # read over ssh
    starts = [e for e in events if e["event"] == "start"]
    assert sorted(e["rank"] for e in starts) == [0, 1] and {e["node"] for e in starts} == set(NODES)
    assert [e["path"] for e in events if e["event"] == "saved"] == [f"{remote_dir}/code/outputs/remote/final"]
    # The job ran as the site user from the copy on the login node, not from this machine's files.
    assert Path(remote_dir, "code", "examples", "two-nodes.yaml").is_file()
    assert Path(remote_dir).stat().st_uid == Path(SITE_HOME).stat().st_uid
    print(f"remote submit + 2-node training + status + logs: {time.monotonic() - started:.1f} s")


def _sessions_logged() -> int:
    """Commands the login node's sshd has started so far (one per ssh command, multiplexed or not)."""
    return (SSHD_STATE / "sshd.log").read_text(errors="replace").count("Starting session: command")


@cluster
def test_cancel_over_ssh_with_the_remote_from_the_user_defaults(laptop: Laptop, site_model: Path,
                                                                tmp_path: Path) -> None:
    """slurm.remote in the user's defaults file sends every SLURM submit over ssh; status asks for many jobs in
    one ssh command; cancel runs scancel there."""
    ensure_cluster()
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("slurm: {remote: login}\n")
    env = {**laptop.env(), "STJOBS_DEFAULTS": str(defaults)}
    job_id = job_of(cli("submit", *remote_job(site_model, 100000, nodes=1), env=env).stdout)
    assert record_of(job_id)["remote"] == "login"
    deadline = time.monotonic() + 120
    while state_of(job_id, laptop) != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(1)
    jobs = Path(os.environ["STJOBS_HOME"], "jobs")
    for copy in range(3):  # more records of the same job: the listing still asks the login node once
        shutil.copytree(jobs / job_id, jobs / f"{job_id}-{copy}")
        record = json.loads((jobs / job_id / "job.json").read_text())
        (jobs / f"{job_id}-{copy}" / "job.json").write_text(json.dumps({**record, "job_id": f"{job_id}-{copy}"}))
    before = _sessions_logged()
    table = cli("status", env=laptop.env()).stdout
    assert table.count("RUNNING") == 4, table
    time.sleep(0.5)  # sshd writes its log line as the session starts; let it land
    assert _sessions_logged() - before == 1
    assert cli("cancel", job_id, env=laptop.env()).stdout.strip() == f"{job_id}: CANCELLED"
    assert state_of(job_id, laptop) == "CANCELLED"


@cluster
@pytest.mark.parametrize("flags,code,says", [
    (["--set", "slurm.partition=nope"], 1, "stjobs: error: slurm: submission refused: Invalid partition name "
                                           "specified"),
    (["--set", "python=/usr/bin/python3"], 2, "stjobs: error: python: got '/usr/bin/python3'; expected an "
                                              "interpreter on the login node that can import torch"),
])
def test_a_refusal_on_the_login_node_is_one_line_and_leaves_nothing(flags: list[str], code: int, says: str,
                                                                    laptop: Laptop, site_model: Path) -> None:
    ensure_cluster()
    before = set((SITE_HOME / ".stjobs" / "jobs").glob("two-nodes-*"))
    done = cli("submit", *remote_job(site_model, 10, nodes=1), *flags, "--remote", "login", check=False,
               env=laptop.env())
    assert done.returncode == code and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(says), done.stderr
    jobs = Path(os.environ["STJOBS_HOME"], "jobs")
    assert not jobs.exists() or list(jobs.iterdir()) == [], "nothing half-submitted here"
    assert set((SITE_HOME / ".stjobs" / "jobs").glob("two-nodes-*")) == before, "nor on the login node"


@cluster
def test_a_failed_remote_job_says_why_from_its_output_on_the_login_node(laptop: Laptop) -> None:
    ensure_cluster()
    done = cli("submit", *remote_job(Path("/var/tmp/no-such-model"), 10, nodes=1), "--remote", "login", "--wait",
               check=False, env=laptop.env())
    assert done.returncode == 1, done.stderr
    job_id = job_of(done.stdout)
    reason = json.loads(cli("status", job_id, "--json", env=laptop.env()).stdout)["reason"]
    assert reason.startswith("rank 0: stjobs.train: error: --model: got '/var/tmp/no-such-model'"), reason
    assert "n1: task 0: Exited with exit code 1" in reason or "n2: task 0: Exited with exit code 1" in reason


def _master_pid(laptop: Laptop) -> int | None:
    found = re.search(r"pid=(\d+)", laptop.ssh("-O", "check", "login").stderr)
    return int(found.group(1)) if found else None


def _soon(what: Callable[[], T | None], timeout_s: float = 60) -> T:
    deadline = time.monotonic() + timeout_s
    while not (found := what()):
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.2)
    return found


def _session_pids() -> list[int]:
    """The login node's per-connection sshd processes (the site user's side of each connection to it)."""
    server = int((SSHD_STATE / "sshd.pid").read_text())
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            uid = entry.stat().st_uid
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = stat.split("(", 1)[1].rsplit(")", 1)[0]
        parent = int(fields[1])
        if name == "sshd" and uid != 0 and _descends(parent, server):
            found.append(int(entry.name))
    return found


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


@cluster
def test_logs_follow_picks_up_after_the_connection_is_lost(laptop: Laptop, site_model: Path) -> None:
    """``logs -f`` over ssh: its master connection killed here, then its connection cut at the login node; each
    time it reconnects and goes on from the byte it had, so every logged step shows once."""
    ensure_cluster()
    job_id = job_of(cli("submit", *remote_job(site_model, 400), "--remote", "login", env=laptop.env()).stdout)
    follower = subprocess.Popen([stjobs_bin(), "logs", job_id, "-f", "--raw"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=offline_env(**laptop.env()))
    assert follower.stdout is not None and follower.stderr is not None
    seen = ""

    def read_until(count: int) -> None:
        nonlocal seen
        deadline = time.monotonic() + 240
        while seen.count('"event":"loss"') < count:
            assert time.monotonic() < deadline, seen[-2000:]
            line = follower.stdout.readline()  # type: ignore[union-attr]
            assert line, f"logs -f ended early: {follower.stderr.read()}"  # type: ignore[union-attr]
            seen += line

    try:
        read_until(2)
        lost = _soon(lambda: _master_pid(laptop))
        os.kill(lost, signal.SIGKILL)  # this side's one connection, as a laptop losing its Wi-Fi
        _soon(lambda: (_master_pid(laptop) or lost) != lost)  # connected again
        read_until(seen.count('"event":"loss"') + 2)
        for pid in _soon(_session_pids):  # now the login node's side of it
            os.kill(pid, signal.SIGKILL)
        rest, errors = follower.communicate(timeout=300)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, errors
    events = parse_events(seen + rest)
    steps = [(e["rank"], e["step"]) for e in events if e["event"] == "loss"]
    assert steps and len(steps) == len(set(steps)), "a step shown twice, or none"
    assert max(step for _, step in steps) == 400
    assert state_of(job_id, laptop) == "COMPLETED"


@cluster
def test_a_connection_lost_after_sbatch_does_not_submit_twice(laptop: Laptop, site_model: Path) -> None:
    """login-drop's connection is cut right after its sbatch command ran (the job is queued, its answer never
    comes back): stjobs runs the command again, which finds the job by its token instead of submitting again."""
    ensure_cluster()
    marks = SITE_HOME / ".stjobs-test-drops"
    before = set(marks.iterdir()) if marks.is_dir() else set()
    done = cli("submit", *remote_job(site_model, 10, nodes=1), "--remote", "login-drop", "--wait",
               env=laptop.env())
    job_id = job_of(done.stdout)
    assert done.stdout.strip().endswith(f"{job_id}: COMPLETED"), done.stdout
    assert len(set(marks.iterdir()) - before) == 1, "the connection was not cut: the test proved nothing"
    remote_dir = str(record_of(job_id)["remote_job_dir"])
    ran = subprocess.run(["sacct", "-n", "-P", "-X", "-u", SITE_USER, "-S", "now-1hours", "-o", "JobIDRaw,WorkDir"],
                         capture_output=True, text=True, check=True).stdout
    jobs = [line.split("|")[0] for line in ran.splitlines() if line.split("|")[-1] == remote_dir]
    assert jobs == [str(record_of(job_id)["slurm_job_id"])], ran


def test_the_laptop_side_imports_no_torch() -> None:
    """What remote submission loads on this machine: the ssh transport and the SLURM queries, no torch."""
    code = ("import sys; from stjobs.backends.slurm import remote_jobs, control; "
            "print(sorted(m for m in ('torch', 'submitit', 'kubernetes') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]"
