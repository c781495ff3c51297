"""SLURM jobs on a login node reached over ssh (``slurm.remote`` / ``--remote``): submit and follow.

Submitting is plain ``sbatch`` of the rendered batch file on the login node: submitit pickles a function and runs
sbatch on the machine it runs on, so it stays local, and nothing here needs torch or submitit on this machine.
The rendered job directory and the code snapshot are written here first (the record lives here, as for every
job), then copied to ``${STJOBS_HOME:-~/.stjobs}/jobs/JOB`` on the login node, whose shared file system the nodes
read; the job starts in that copy. Status and cancel are :mod:`control`'s queries over the same connection.

A connection lost after ``sbatch`` ran must not queue the job twice: each job carries its id as a token in its
SLURM comment, and the submit command first looks for a job with that token (squeue while slurmctld holds it,
else sacct by its submit directory, unique to the job) before it submits; a retry runs the same command.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from stjobs.backends import common
from stjobs.backends.slurm import renderer as slurm
from stjobs.backends.slurm.jobfiles import OUTPUT_TAIL, OUTPUT_TAIL_STAGE, output_files
from stjobs.backends.slurm.remote import ConnectionLost, Remote, join, last_line, quote, until_stdin_closes
from stjobs.backends.slurm.submission import slurm_reason
from stjobs.errors import SpecError, SubmitError
from stjobs.jobs import JobRecord, JobStatus, jobs_root, new_job_id
from stjobs.plan import Plan, write_plan
from stjobs.progress import TAIL_BYTES as PROGRESS_TAIL_BYTES
from stjobs.snapshot import CODE_DIR, copy_snapshot, plan_snapshot, snapshot_details

TOKEN_PREFIX = "stjobs:"  # the job's SLURM comment: stjobs:<job id>
SUBMIT_ATTEMPTS = 3  # a submit that loses its connection is run again this often, finding the job if it queued
FOLLOW_RECONNECTS = 5  # logs -f reconnects this often in a row (no output in between) before it gives up
POLL_S = 2.0  # how often logs -f asks whether the job has ended
PYTHON_REFUSED = 64  # the submit command's exit status when the nodes' interpreter will not do


def check(plan: Plan, sbatch: bool = False, cwd: str | Path | None = None, executor: Any = None) -> None:
    """What this machine must hold before anything is copied: the secrets (they travel over ssh's input), the
    workdir and its code copy (the job runs that copy on the login node, so it cannot be switched off)."""
    spec = plan.spec
    common.check_secrets(spec)
    if not spec.snapshot.enabled:
        raise SpecError("snapshot.enabled", False, f"true with slurm.remote ({spec.slurm.remote}): the job runs "
                        "from the copy of its code sent to the login node; there is no live workdir there")
    workdir = common.check_workdir(spec, cwd, "on this machine (its code is copied to the login node)")
    plan_snapshot(spec, workdir)


def submit(plan: Plan, sbatch: bool = False, cwd: str | Path | None = None, executor: Any = None) -> JobRecord:
    """Copy the job to the login node and sbatch it there, once; on a refusal nothing is left on either side."""
    spec = plan.spec
    remote = Remote(str(spec.slurm.remote))
    job_id = new_job_id(plan.job_name)
    job_dir = jobs_root() / job_id
    workdir = common.check_workdir(spec, cwd, "on this machine (its code is copied to the login node)")
    snapshot = plan_snapshot(spec, workdir)
    remote_dir, rsync = _prepare(remote, job_id)
    try:
        # The node script starts where the copy is on the login node, not in this machine's workdir.
        launch = common.node_script(spec, plan.launch, f"{remote_dir}/{CODE_DIR}") if plan.launch else None
        plan = replace(plan, files=tuple(launch if launch and item.path == launch.path else item
                                         for item in plan.files))
        write_plan(plan, job_dir)
        if snapshot is not None:
            copy_snapshot(snapshot, job_dir)
        remote.copy_dir(job_dir, remote_dir, rsync)
        slurm_id = _submit_once(remote, plan, job_id, remote_dir)
    except BaseException as error:
        shutil.rmtree(job_dir, ignore_errors=True)
        if not isinstance(error, ConnectionLost):  # a job that may have queued keeps its files there
            with contextlib.suppress(SubmitError):
                remote.run(f"rm -rf -- {quote(remote_dir)}", "removing the job's copy", timeout_s=30)
        raise
    record = JobRecord(job_id=job_id, backend=slurm.NAME, name=plan.job_name, job_dir=str(job_dir),
                       submitted_at=time.time(), nodes=spec.nodes, procs_per_node=spec.procs_per_node,
                       details={"slurm_job_id": slurm_id, "mode": "sbatch", "remote": remote.target,
                                "remote_job_dir": remote_dir, "output": f"{remote_dir}/slurm-{slurm_id}.out",
                                "max_requeues": spec.slurm.max_requeues, "snapshot": snapshot_details(snapshot)})
    record.save()
    return record


def _prepare(remote: Remote, job_id: str) -> tuple[str, bool]:
    """The job's directory on the login node, made there (private), as an absolute physical path (what SLURM
    records as the job's submit directory), and whether the login node has rsync."""
    folder = f'"${{STJOBS_HOME:-$HOME/.stjobs}}/jobs/"{quote(job_id)}'
    done = remote.run(f"umask 077 && mkdir -p -- {folder} && cd -- {folder} && pwd -P && "
                      "{ command -v rsync >/dev/null 2>&1 && echo rsync || echo tar; }",
                      "making the job directory", ok=(0, 1, 2))
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2:
        said = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise SubmitError(f"slurm: ssh {remote.target}: the job directory ${{STJOBS_HOME:-~/.stjobs}}/jobs/{job_id} "
                          f"cannot be made on the login node (not writable?): {said}")
    return lines[0], lines[1] == "rsync"


def submit_command(plan: Plan, job_id: str, remote_dir: str) -> str:
    """The shell command that finds this job on the login node by its token, or else submits it: run again after
    a lost connection, it answers with the job sbatch made the first time."""
    spec = plan.spec
    token = TOKEN_PREFIX + job_id
    python = spec.python or "python3"
    modules = plan.launch.python_modules if plan.launch else ()
    sbatch = ["sbatch", "--parsable", f"--comment={token}", f"--output={remote_dir}/slurm-%j.out",
              f"--export=ALL,STJOBS_JOB_DIR={remote_dir}", slurm.SBATCH_FILE]
    lines = [
        "umask 077",
        f"cd -- {quote(remote_dir)} || exit 70",
        # The secrets' values come on ssh's input, never on a command line (which others on the node can read).
        *([". /dev/stdin"] if spec.secrets else []),
        'stjobs_me=$(id -un)',
        f"stjobs_found=$(squeue -h -u \"$stjobs_me\" -n {quote(spec.name)} -o '%i|%k' 2>/dev/null | "
        f"stjobs_t={quote(token)} awk -F'|' '$2 == ENVIRON[\"stjobs_t\"] {{ print $1; exit }}')",
        f'[ -n "$stjobs_found" ] || stjobs_found=$(sacct -n -P -X -u "$stjobs_me" --name {quote(spec.name)} '
        f"-S now-7days -o JobIDRaw,WorkDir 2>/dev/null | stjobs_d={quote(remote_dir)} awk -F'|' "
        "'$2 == ENVIRON[\"stjobs_d\"] { print $1; exit }')",
        'if [ -n "$stjobs_found" ]; then echo "found $stjobs_found"; exit 0; fi',
        # The interpreter the nodes run, checked here (the nodes share this file system), from the job's copy
        # where a relative path starts.
        f"stjobs_py={quote(python)}",
        f"cd -- {quote(CODE_DIR)} || exit 70",
        f'command -v "$stjobs_py" >/dev/null 2>&1 || {{ echo "not found"; exit {PYTHON_REFUSED}; }}',
        f'stjobs_missing=$("$stjobs_py" -c {quote(common.FIND_MODULES)} {join(modules)} 2>&1) || '
        f'{{ echo "cannot import $stjobs_missing"; exit {PYTHON_REFUSED}; }}',
        "cd .. || exit 70",
        f"export STJOBS_PYTHON={quote(spec.python)}" if spec.python else "unset STJOBS_PYTHON",
        join(sbatch),
    ]
    return "\n".join(lines)


def _submit_once(remote: Remote, plan: Plan, job_id: str, remote_dir: str) -> str:
    """sbatch on the login node, retried after a lost connection: the command finds the job it already queued."""
    spec = plan.spec
    secrets = "".join(f"export {name}={quote(os.environ[name])}\n" for name in spec.secrets)
    command = submit_command(plan, job_id, remote_dir)
    lost: ConnectionLost | None = None
    for attempt in range(SUBMIT_ATTEMPTS):
        try:
            done = remote.run(command, "sbatch", stdin=secrets, ok=range(0, 255))
        except ConnectionLost as error:
            lost = error
            time.sleep(1.0 + attempt)
            continue
        if done.returncode == PYTHON_REFUSED:
            raise SpecError("python", spec.python or "python3", "an interpreter on the login node that can import "
                            f"{', '.join(plan.launch.python_modules if plan.launch else ())} (it "
                            f"{done.stdout.strip() or 'failed'}; name the venv's interpreter in the spec's python:)")
        if done.returncode != 0:
            raise SubmitError(f"slurm: {slurm_reason(done.stderr or done.stdout)}")
        words = done.stdout.strip().split()
        slurm_id = words[-1].split(";")[0] if words else ""
        if not slurm_id.isdigit():
            raise SubmitError(f"slurm: sbatch on {remote.target} printed no job id ({done.stdout.strip()!r})")
        return slurm_id
    raise ConnectionLost(f"{lost}; tried {SUBMIT_ATTEMPTS} times: the job may be queued (comment "
                         f"{TOKEN_PREFIX}{job_id}; its files are in {remote_dir} on the login node)")


def follow_remote(remote: Remote, path: Path, finished: Callable[[], bool], follow: bool = False,
                  rank: int | None = None, job_id: str = "JOB") -> Iterator[str]:
    """The job's output file on the login node, or one rank's lines of it; with ``follow``, streamed by
    ``tail -F`` there until ``finished()`` says the job has ended. A lost connection is picked up again from the
    byte it broke at, :data:`FOLLOW_RECONNECTS` times in a row at most, then it ends in one line."""
    prefix = f"[rank{rank}]:" if rank is not None else None
    lines = _Lines(prefix)
    if not follow:
        yield from lines.feed(_read_from(remote, path, 0))
        yield from lines.rest()
        return
    failures = 0
    said: list[str] = []  # what ssh said when a connection ended
    while True:
        ended = got = False
        stream = _tail_until(remote, path, lines.offset, finished, said)
        try:
            for chunk in stream:
                if chunk is None:
                    ended = True
                    continue
                got = True
                yield from lines.feed(chunk)
        finally:
            stream.close()  # also when our reader stops early: the remote tail ends with it
        if ended:
            yield from lines.feed(_read_from(remote, path, lines.offset))  # what came after the last look
            yield from lines.rest()
            return
        failures = 0 if got else failures + 1
        if failures > FOLLOW_RECONNECTS:
            why = f" ({said[-1]})" if said and said[-1] else ""
            raise ConnectionLost(f"slurm: ssh {remote.target}: connection lost while following the job's output"
                                 f"{why}; gave up after {FOLLOW_RECONNECTS} reconnects (`stjobs logs {job_id} -f` "
                                 "picks it up again)")
        time.sleep(min(2.0 ** failures, 10.0))


class OutputTails:
    """The tail of each remote job's output file, brought back with the status queries (inside their one ssh
    command: :meth:`along`) into the job's directory here (``jobfiles.OUTPUT_TAIL``), where ``stjobs status`` reads
    its progress from. A finished job's tail is fetched once more after its end was seen (the last lines may land
    as SLURM reports it ended), then never again."""

    def __init__(self, records: Sequence[JobRecord]) -> None:
        self.wanted = [record for record in records if _stage(record) != "final"]
        self.asked = False

    def along(self, query: Callable[[list[list[str]]], list[Any]]) -> Callable[[list[list[str]]], list[Any]]:
        def ask(commands: list[list[str]]) -> list[Any]:
            if self.asked or not self.wanted:
                return query(commands)
            self.asked = True
            tails = [["tail", "-c", str(PROGRESS_TAIL_BYTES), str(output_files(record)[0])] for record in self.wanted]
            answers = query(commands + tails)
            for record, answer in zip(self.wanted, answers[len(commands):], strict=True):
                if answer.code == 0:
                    _write(Path(record.job_dir) / OUTPUT_TAIL, answer.stdout)
            return answers[:len(commands)]
        return ask

    def settle(self, statuses: Sequence[JobStatus]) -> None:
        """After the statuses are known: a finished job's tail needs one more fetch ("ended"), then none."""
        for status in statuses:
            if self.asked and status.record in self.wanted and status.state.finished:
                _write(Path(status.record.job_dir) / OUTPUT_TAIL_STAGE,
                       "final" if _stage(status.record) == "ended" else "ended")


def _stage(record: JobRecord) -> str:
    try:
        return (Path(record.job_dir) / OUTPUT_TAIL_STAGE).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _write(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):  # not ours to write: the status is right, only its progress is not kept
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(text, encoding="utf-8", newline="\n")
        partial.replace(path)


class _Lines:
    """Bytes into whole lines (a line cut by a lost connection is finished by the next read), counted."""

    def __init__(self, prefix: str | None) -> None:
        self.prefix = prefix
        self.offset = 0  # bytes of the file read so far
        self.pending = b""

    def feed(self, data: bytes) -> Iterator[str]:
        self.offset += len(data)
        *whole, self.pending = (self.pending + data).split(b"\n")
        for raw in whole:
            line = raw.decode(errors="replace")
            if self.prefix is None or line.startswith(self.prefix):
                yield line + "\n"

    def rest(self) -> Iterator[str]:
        line = self.pending.decode(errors="replace")
        if line and (self.prefix is None or line.startswith(self.prefix)):
            yield line


def _read_from(remote: Remote, path: Path, offset: int) -> bytes:
    (answer,) = remote.run_all([["tail", "-c", f"+{offset + 1}", str(path)]], "reading the job's output")
    return answer.stdout  # a file not there yet (a pending job) is no output


def _tail_until(remote: Remote, path: Path, offset: int, finished: Callable[[], bool],
                said: list[str]) -> Generator[bytes | None, None, None]:
    """The file's bytes from ``offset`` as they come, then None once the job has ended; it stops without None
    when the connection broke (what ssh said then goes into ``said``). The remote ``tail -F`` ends when this side
    closes ssh's input."""
    process = remote.popen(until_stdin_closes(f"tail -c +{offset + 1} -F -- {quote(str(path))} 2>/dev/null"))
    assert process.stdout is not None and process.stdin is not None
    next_look = time.monotonic()
    try:
        while True:
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + POLL_S
                if _ended(finished):
                    yield None
                    return
            ready, _, _ = select.select([process.stdout], [], [], POLL_S)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:  # the connection (or the master it went through) is gone
                    said.append(last_line(_stop(process)))
                    return
                yield chunk
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> str:
    """End the local ssh of a tail (closing its input ends the remote tail); what it said on stderr."""
    if process.returncode is not None:
        return ""  # stopped already
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    said = process.stderr.read().decode(errors="replace") if process.stderr is not None else ""
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return said


def _ended(finished: Callable[[], bool]) -> bool:
    try:
        return finished()
    except SubmitError:
        return False  # SLURM or the connection could not be asked just now: the tail says whether it is gone
