"""Status, logs and cancel for SLURM jobs, read from SLURM itself: sacct, and squeue for what waits in the queue
(its pending reason) or what accounting does not show yet; many jobs at once take one call of each.

Where a cluster keeps no accounting (sacct says so), ``squeue --states=all`` answers instead while slurmctld
remembers a job (state, exit code, restart count), and the job's own files (:mod:`jobfiles`) once it has forgotten.
"""

from __future__ import annotations

import functools
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from stjobs.after import recorded
from stjobs.backends.joblog import TAIL_BYTES, first_error, read_tail
from stjobs.backends.slurm import jobfiles
from stjobs.backends.slurm.jobfiles import Seen, output_files, remote_target, slurm_id
from stjobs.backends.slurm.remote import Remote
from stjobs.backends.slurm.task import OUT_OF_REQUEUES_EXIT
from stjobs.errors import SubmitError
from stjobs.jobs import JobRecord, JobStatus, State, follow_files, wait_until_finished

# SLURM's job states (first word of sacct's State) onto ours; anything else counts as a failure.
STATES = {
    "PENDING": State.PENDING, "REQUEUED": State.PENDING, "REQUEUE_HOLD": State.PENDING,
    "REQUEUE_FED": State.PENDING, "CONFIGURING": State.PENDING, "SUSPENDED": State.PENDING,
    "RESIZING": State.PENDING, "RUNNING": State.RUNNING, "COMPLETING": State.RUNNING,
    "STAGE_OUT": State.RUNNING, "SIGNALING": State.RUNNING, "COMPLETED": State.COMPLETED,
    "CANCELLED": State.CANCELLED,
}
# sacct can lag a freshly submitted job by a few seconds; after this long "unknown" means lost.
ACCOUNTING_GRACE_S = 60.0
CHUNK = 500  # job ids per sacct / squeue call: a command line and an answer of a sensible size
QUERY_TIMEOUT_S = 60.0
# Pending reasons that do not clear by themselves (squeue %r), and what the request asks for that cannot be had.
NEVER_CLEARS = {
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "a longer time limit than the partition allows",
    "PartitionConfig": "more than the partition is configured for",
    "ReqNodeNotAvail": "nodes that are down, drained or reserved",
    "DependencyNeverSatisfied": "a job it depends on ended the wrong way",
    "BadConstraints": "node features no node has",
}
Run = tuple[str, int | None]  # one run of a job in accounting: its state and exit code
ACCOUNTING_DISABLED = "accounting storage is disabled"  # sacct's words on a cluster that keeps no accounting
# slurmctld's view of every job it still holds, finished ones too (exit_code: a wait status; RestartCnt: requeues)
MEMORY_FORMAT = "JobID:|,State:|,Reason:|,exit_code:|,RestartCnt:|"


Query = Callable[[list[list[str]]], list["Answer"]]  # SLURM commands run side by side, here or on a login node


class AccountingDisabled(SubmitError):
    """sacct: "Slurm accounting storage is disabled"."""


def status(record: JobRecord) -> JobStatus:
    return statuses([record])[0]


def statuses(records: Sequence[JobRecord]) -> list[JobStatus]:
    """Every record's status from one ``sacct`` and one ``squeue`` of all their ids, run side by side (ids go
    ``CHUNK`` to a call): a listing of 200 jobs is two queries, not 200. sacct has each run's state and exit code;
    squeue slurmctld's view of what is still queued or running, and a pending job's reason. A failing ``sacct``
    fails the lot (the api shows them UNKNOWN with its reason); a failing ``squeue`` only the jobs that accounting
    does not show finished. Once sacct says the cluster keeps no accounting, it is not asked again in this call:
    one ``squeue --states=all`` per chunk answers alone.

    Jobs submitted with ``--remote`` are asked on their login node: both queries go in one ssh command per host
    (:func:`stjobs.backends.slurm.remote.Remote.run_all`). One host that cannot be asked leaves the others'
    answers standing (its jobs UNKNOWN with the reason); a single host's failure is raised, as without ssh."""
    hosts: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        hosts.setdefault(remote_target(record), []).append(index)
    found: dict[int, JobStatus] = {}
    for indices in hosts.values():
        chosen = [records[index] for index in indices]
        try:
            answers = _statuses_on(remote_of(chosen[0]), chosen)
        except SubmitError as error:
            if len(hosts) == 1:
                raise
            answers = [JobStatus(record, State.UNKNOWN, reason=str(error)) for record in chosen]
        found.update(zip(indices, answers, strict=True))
    return [found[index] for index in range(len(records))]


def _statuses_on(remote: Remote | None, records: list[JobRecord]) -> list[JobStatus]:
    """:func:`statuses` of jobs of one cluster: this machine's (``remote`` None) or a login node's."""
    ids = [slurm_id(record) for record in records]
    query: Query = functools.partial(_query, remote)
    tails = None
    if remote is not None:  # the tails the progress is read from come back in the same ssh command
        from stjobs.backends.slurm.remote_jobs import OutputTails

        tails = OutputTails(records)
        query = tails.along(query)
    runs: dict[str, list[Run]] = {}
    queued: dict[str, tuple[str, str]] = {}
    queue_errors: dict[str, str] = {}  # job id -> why squeue could not be asked about it
    remembered: dict[str, Seen] | None = None  # slurmctld's answers, once sacct has said it is disabled
    for chunk in _chunks(list(dict.fromkeys(ids))):
        if remembered is None:
            try:
                accounting, queue, queue_error = _ask(chunk, query)
            except AccountingDisabled:
                remembered = {}
            else:
                runs.update(accounting)
                queued.update(queue)
                queue_errors.update(dict.fromkeys(chunk, queue_error) if queue_error else {})
                continue
        try:
            remembered.update(_ask_memory(chunk, query))
        except SubmitError as error:
            queue_errors.update(dict.fromkeys(chunk, str(error)))
    if remembered is not None:
        judged = [_judge_unaccounted(record, remembered.get(job), queue_errors.get(job, ""), remote)
                  for record, job in zip(records, ids, strict=True)]
    else:
        judged = [_judge(record, runs.get(job, []), queued.get(job), queue_errors.get(job, ""), remote)
                  for record, job in zip(records, ids, strict=True)]
    if tails is not None:
        tails.settle(judged)
    return judged


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


def _ask(ids: list[str], query: Query) -> tuple[dict[str, list[Run]], dict[str, tuple[str, str]], str]:
    """sacct's runs and squeue's lines for ``ids``, both commands running at once (the listing costs the slower
    of the two, not their sum), and squeue's failure as text."""
    joined = ",".join(ids)
    # Both are started before either is waited for; a sacct that fails still lets squeue finish (its answer is
    # dropped), which costs nothing when both fail fast, as they do with the controller down. JobID, not JobIDRaw:
    # a job array's task is "119_2" to both commands (its raw id is a number of its own), and squeue -r lists each
    # pending task on its own line instead of one "119_[1-2]".
    sacct, squeue = query([["sacct", "-j", joined, "-X", "--duplicates", "-n", "-P", "-o", "JobID,State,ExitCode"],
                           ["squeue", "-h", "-r", "-j", joined, "-o", "%i|%T|%r"]])
    runs = _parse_sacct(_text(sacct))
    try:
        return runs, _parse_squeue(_text(squeue, unknown_job_ok=True)), ""
    except SubmitError as error:
        return runs, {}, str(error)


def _judge(record: JobRecord, runs: list[Run], queued: tuple[str, str] | None, queue_error: str,
           remote: Remote | None) -> JobStatus:
    """One job's status from its sacct runs (oldest first) and its squeue line (state, pending reason)."""
    state, exit_code = runs[-1] if runs else ("", None)
    final = STATES.get(state, State.FAILED).finished if state else False
    waiting = ""  # what a pending job's reason says
    if queued is not None and not final:  # slurmctld's own view, newer than accounting's while the job lives
        state, why = queued
        exit_code = exit_code if runs and runs[-1][0] == state else None
        waiting = pending_reason(why) if why else ""
    elif not final:
        waiting = queue_error  # squeue failed: say so where accounting alone cannot tell
    requeues = max(len(runs) - 1, 0)  # sacct --duplicates: one line per run of a requeued job
    if not state:
        if queue_error:
            return JobStatus(record, State.UNKNOWN, reason=queue_error)
        young = time.time() - record.submitted_at < ACCOUNTING_GRACE_S
        return JobStatus(record, State.PENDING if young else State.LOST,
                         reason="" if young else "SLURM knows no such job (sacct and squeue are empty)")
    return _verdict(record, state, exit_code, requeues, waiting, remote)


def _verdict(record: JobRecord, state: str, exit_code: int | None, requeues: int, waiting: str,
             remote: Remote | None = None) -> JobStatus:
    """Our status from SLURM's state word, exit code and requeue count (and why a pending job waits); a job
    that ended badly says why from the tails of its output (read on its login node for ``remote``)."""
    ours = STATES.get(state, State.FAILED)
    reason = ""
    if exit_code == OUT_OF_REQUEUES_EXIT and ours in (State.COMPLETED, State.FAILED):
        ours = State.FAILED
        reason = (f"preempted or requeued after {requeues} requeue(s), the most slurm.max_requeues="
                  f"{record.details.get('max_requeues', '?')} allows; the last checkpoint is kept")
    elif ours is State.PENDING:
        reason = waiting
    elif ours not in (State.COMPLETED, State.RUNNING):
        texts = _tails(record, remote)
        cause = first_error(texts) if ours is State.FAILED else ""
        lines = "; ".join(line for line in _failure_lines(texts) if line not in cause)
        slurm = f"SLURM state {state}" + (f" exit {exit_code}" if exit_code else "") + (f": {lines}" if lines else "")
        reason = f"{cause}; {slurm}" if cause else slurm
        waited = [item.job_id for item in recorded(record.details)]
        if ours is State.CANCELLED and waited and record.details.get("if_dependency_fails") == "cancel":
            reason += (f" (it waited for {', '.join(waited)}; SLURM cancels it when that ends the wrong way, "
                       "--if-dependency-fails cancel)")
    return JobStatus(record, ours, exit_code, reason, requeues)


def pending_reason(why: str) -> str:
    """squeue's reason (%r) for a pending job, with what it means when it will not clear by itself."""
    hint = NEVER_CLEARS.get(why.split(",")[0].strip())
    if hint is None:
        return f"SLURM's pending reason: {why}"
    return f"SLURM's pending reason: {why} ({hint}; it will not start until that changes: cancel it and resubmit)"


# What a job's log says when a node's task ends badly: srun's own lines ("n2: task 1: Killed") and ours.
FAILURE_LINE = re.compile(r"srun: error: (\S+: task \d+: .+)$|^(?:\[rank\d+\]: )?(stjobs: .+)$")


def _failure_lines(texts: list[str]) -> list[str]:
    """The last few failure lines of the job's output (the tails of its files)."""
    found: list[str] = []
    for text in texts:
        for line in text.splitlines():
            match = FAILURE_LINE.search(line.strip())
            if match and "USR2 received" not in line:
                found.append(match.group(1) or match.group(2))
    return list(dict.fromkeys(found))[-3:]


def _judge_unaccounted(record: JobRecord, seen: Seen | None, queue_error: str, remote: Remote | None) -> JobStatus:
    """One job's status without accounting: slurmctld's answer while it holds the job (kept in the job directory
    once the job has ended), else what the job's own files say, else why it cannot be known."""
    if seen is not None:
        final = STATES.get(seen.state, State.FAILED).finished
        if final:
            jobfiles.remember(record, seen)
        waiting = pending_reason(seen.reason) if seen.reason and not final else ""
        return _verdict(record, seen.state, seen.exit_code if final else None, seen.restarts, waiting, remote)
    if queue_error:
        return JobStatus(record, State.UNKNOWN, reason=queue_error)
    forgot = (f"slurmctld has forgotten job {slurm_id(record)} (finished jobs go after MinJobAge) and this "
              "cluster keeps no accounting")
    found = jobfiles.recall(record) or jobfiles.ending(record)
    if isinstance(found, str):
        texts = [read_tail(path) for path in output_files(record)]
        said = first_error(texts) or "; ".join(_failure_lines(texts))
        return JobStatus(record, State.LOST, reason=f"{forgot}, so how it ended cannot be known: {found}"
                                                    + (f"; its output says: {said}" if said else ""))
    status = _verdict(record, found.state, found.exit_code, found.restarts, "", remote)
    note = f"{forgot}; {found.source}"
    return replace(status, reason=f"{status.reason}; {note}" if status.reason else note)


def remote_of(record: JobRecord) -> Remote | None:
    target = remote_target(record)
    return Remote(target) if target else None


def _tails(record: JobRecord, remote: Remote | None) -> list[str]:
    """The last bytes of each of the job's output files: here, or on its login node in one ssh command."""
    if remote is None:
        return [read_tail(path) for path in output_files(record)]
    answers = remote.run_all([["tail", "-c", str(TAIL_BYTES), str(path)] for path in output_files(record)],
                             "reading the job's output")
    return [answer.stdout.decode(errors="replace") for answer in answers]


def logs(record: JobRecord, follow: bool = False, rank: int | None = None) -> Iterator[str]:
    remote = remote_of(record)
    if remote is not None:
        from stjobs.backends.slurm.remote_jobs import follow_remote

        return follow_remote(remote, output_files(record)[0], lambda: status(record).state.finished, follow, rank,
                             record.job_id)
    return follow_files(lambda: output_files(record), lambda: status(record).state.finished, follow, rank)


def cancel(record: JobRecord, wait_s: float = 60.0) -> JobStatus:
    current = status(record)
    if current.state.finished:
        return current
    (done,) = _query(remote_of(record), [["scancel", slurm_id(record)]])
    if done.code != 0:
        raise SubmitError(f"slurm: scancel failed: {done.stderr.strip() or done.stdout.strip() or done.code}")
    return wait_until_finished(lambda: status(record), wait_s)


def _parse_sacct(text: str) -> dict[str, list[Run]]:
    """(state, exit code) of each run of each job, oldest first (a requeued job has one line per run)."""
    runs: dict[str, list[Run]] = {}
    for line in text.splitlines():
        job, _, rest = line.partition("|")
        state, _, exit_code = rest.partition("|")
        if state.strip():
            code = exit_code.split(":")[0]
            runs.setdefault(job.strip(), []).append(
                (state.split()[0].rstrip("+"), int(code) if code.isdigit() else None))
    return runs


def _ask_memory(ids: list[str], query: Query) -> dict[str, Seen]:
    """What slurmctld holds of ``ids``, finished jobs included (until MinJobAge): squeue --states=all."""
    (answer,) = query([["squeue", "--states=all", "-h", "-r", "-j", ",".join(ids), "-O", MEMORY_FORMAT]])
    text = _text(answer, unknown_job_ok=True)
    seen: dict[str, Seen] = {}
    for line in text.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) < 5 or not fields[1]:
            continue
        job, state, why, status, restarts = fields[:5]
        seen[job] = Seen(state, (int(status) >> 8) & 0xFF if status.isdigit() else None,  # a wait status
                         int(restarts) if restarts.isdigit() else 0, "" if why in ("None", "(null)") else why)
    return seen


def _parse_squeue(text: str) -> dict[str, tuple[str, str]]:
    """(state, reason) of each job slurmctld still holds; a pending job's reason is why it waits."""
    queued: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        job, _, rest = line.strip().partition("|")
        state, _, why = rest.partition("|")
        if state:
            queued[job] = (state, "" if why in ("None", "(null)") else why)
    return queued


@dataclass(frozen=True)
class Answer:
    """One SLURM command's outcome: exit status (None: it could not be run or did not answer; ``stderr`` then
    says why, as a whole message), output and errors."""

    argv: tuple[str, ...]
    code: int | None
    stdout: str
    stderr: str


def _query(remote: Remote | None, commands: list[list[str]]) -> list[Answer]:
    """Run ``commands`` side by side, here or (``remote``) on the login node in one ssh command."""
    if remote is not None:
        remotely = remote.run_all(commands, f"asking SLURM ({', '.join(argv[0] for argv in commands)})",
                                  timeout_s=QUERY_TIMEOUT_S + 30)
        return [Answer(tuple(argv), answer.code, answer.stdout.decode(errors="replace"),
                       answer.stderr.decode(errors="replace")) for argv, answer in zip(commands, remotely, strict=True)]
    started: list[subprocess.Popen[str] | str] = []
    for argv in commands:
        try:
            started.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        except OSError as error:
            started.append(f"slurm: {argv[0]} failed ({error}); is this a SLURM login node?")
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    answers: list[Answer] = []
    for argv, process in zip(commands, started, strict=True):
        if isinstance(process, str):
            answers.append(Answer(tuple(argv), None, "", process))
            continue
        try:
            stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            answers.append(Answer(tuple(argv), None, "", f"slurm: {argv[0]} did not answer in "
                                  f"{QUERY_TIMEOUT_S:.0f} s; is this a SLURM login node?"))
            continue
        answers.append(Answer(tuple(argv), process.returncode, stdout, stderr))
    return answers


def _text(answer: Answer, unknown_job_ok: bool = False) -> str:
    """The command's output, or its failure as a SubmitError of one line."""
    name = answer.argv[0]
    if answer.code is None:
        raise SubmitError(answer.stderr)
    if answer.code == 0:
        return answer.stdout
    message = (answer.stderr or answer.stdout).strip().splitlines()
    if answer.code == 127:  # the login node's shell found no such command
        raise SubmitError(f"slurm: {name} not found ({message[-1] if message else 'exit 127'}); is this a SLURM "
                          "login node?")
    if unknown_job_ok and any("Invalid job id" in line for line in message):
        return ""  # squeue forgets finished jobs; sacct (or the job's files) has spoken for them
    if name == "sacct" and any(ACCOUNTING_DISABLED in line for line in message):
        raise AccountingDisabled(f"slurm: sacct: {message[-1]}")
    # The controller or the accounting daemon is down: say so, never call the job lost.
    raise SubmitError(f"slurm: {name} failed: {message[-1] if message else f'exit {answer.code}'}")
