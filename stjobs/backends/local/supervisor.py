"""The supervisor of one local job: ``python -m stjobs.backends.local.supervisor JOB_DIR``.

It starts one node launch script per node, ends the others when one fails (as ``srun --kill-on-bad-exit``
does: a lone survivor would wait at the next collective until its timeout), forwards a cancel, and records
the outcome in ``status.json``. It imports nothing heavy: the training runs in the children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from stjobs.after import After, flag
from stjobs.backends.common import NODE_SCRIPT
from stjobs.backends.joblog import first_error, read_tail
from stjobs.backends.local.gpus import VARIABLE as VISIBLE_GPUS
from stjobs.backends.local.jobdir import OUTPUT_LOG, STATUS_FILE, free_port, port_free, private_file
from stjobs.jobs import JobRecord, State, load_record_at, write_json

GRACE_S = 30.0


def node_env(job_dir: Path, job_id: str, node: int, nodes: int, details: dict[str, object]) -> dict[str, str]:
    env = dict(os.environ)  # secrets the spec names come through here, never through a file
    env.update({
        "STJOBS_PYTHON": str(details["python"]),
        "STJOBS_JOB_DIR": str(job_dir),
        "STJOBS_JOB_ID": job_id,
        "STJOBS_LOG_DIR": str(job_dir / "logs" / f"node{node}"),
    })
    if nodes > 1:
        env.update({
            "STJOBS_RDZV_HOST": "127.0.0.1",
            "STJOBS_RDZV_PORT": str(details["rdzv_port"]),
            "STJOBS_RDZV_ID": job_id,
            "STJOBS_NODE_RANK": str(node),
        })
    gpus = details.get("cuda_visible_devices")
    if isinstance(gpus, list) and node < len(gpus):
        # The node's own GPUs, chosen at submit (stjobs.backends.local.gpus): without it every rank saw every
        # GPU of the machine. Records from before this have no entry and keep the submitter's environment.
        env[VISIBLE_GPUS] = str(gpus[node])
    return env


def supervise(job_dir: Path) -> int:
    # Whoever started this supervisor, nothing the job writes (torchrun's logs, checkpoints) is world-writable;
    # group write stays as the caller's umask has it.
    os.umask(os.umask(0o022) | 0o002)
    record = load_record_at(job_dir)
    started = time.time()
    status_path = job_dir / STATUS_FILE
    write_json(status_path, {"state": State.RUNNING.value, "pid": os.getpid(), "started_at": started})

    cancelled = False

    def on_cancel(signum: int, frame: FrameType | None) -> None:
        nonlocal cancelled
        cancelled = True

    signal.signal(signal.SIGTERM, on_cancel)
    signal.signal(signal.SIGINT, on_cancel)
    never = wait_for_dependencies(record, status_path, started, lambda: cancelled)
    if cancelled or never:
        reason = "cancelled by the user" if cancelled else f"{never}; cancelled (--if-dependency-fails cancel)"
        write_json(status_path, {"state": State.CANCELLED.value, "pid": os.getpid(), "started_at": started,
                                 "ended_at": time.time(), "reason": reason})
        return 0
    started = time.time()
    port_range = record.details.get("rdzv_port_range")
    if isinstance(port_range, list) and not port_free(int(str(record.details["rdzv_port"]))):
        record.details["rdzv_port"] = free_port((int(port_range[0]), int(port_range[1])), record.job_id)
    write_json(status_path, {"state": State.RUNNING.value, "pid": os.getpid(), "started_at": started})

    # Held by the children until the end; 0o644 at most, like everything the job writes (see the umask).
    output = os.fdopen(private_file(job_dir / OUTPUT_LOG), "ab", buffering=0)
    nodes: list[subprocess.Popen[bytes]] = []
    for node in range(record.nodes):
        nodes.append(subprocess.Popen(
            ["bash", str(job_dir / NODE_SCRIPT)], cwd=str(record.details["cwd"]),
            env=node_env(job_dir, record.job_id, node, record.nodes, record.details),
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            # Each node in a process group of its own, so its workers can be reaped with it.
            start_new_session=True,
        ))

    stop_sent_at: float | None = None
    failed_node: int | None = None
    while True:
        codes_now = [process.poll() for process in nodes]  # poll every node: each poll reaps its own exit
        if all(code is not None for code in codes_now):
            break
        if failed_node is None:
            failed_node = next((i for i, code in enumerate(codes_now) if code not in (None, 0)), None)
        if (cancelled or failed_node is not None) and stop_sent_at is None:
            stop_sent_at = time.monotonic()
            _signal_all(nodes, signal.SIGTERM)
        if stop_sent_at is not None and time.monotonic() - stop_sent_at > GRACE_S:
            _signal_groups(nodes, signal.SIGKILL)
        time.sleep(0.2)
    # Workers whose agent died abruptly would linger as orphans; their process group still names them.
    _signal_groups(nodes, signal.SIGKILL)

    codes = [process.returncode for process in nodes]
    failures = [code for code in codes if code != 0]
    if cancelled:
        state, reason = State.CANCELLED, "cancelled by the user"
    elif not failures:
        state, reason = State.COMPLETED, ""
    else:
        first = failed_node if failed_node is not None else codes.index(failures[0])
        cause = first_error([read_tail(job_dir / OUTPUT_LOG)])  # what the training said, before our summary
        state, reason = State.FAILED, (f"{cause}; " if cause else "") + \
            f"node {first} exited with {codes[first]}; see {OUTPUT_LOG}"
    exit_code = 0 if not failures else (codes[failed_node] if failed_node is not None else failures[0])
    write_json(status_path, {"state": state.value, "pid": os.getpid(), "started_at": started,
                             "ended_at": time.time(), "exit_code": exit_code, "node_exit_codes": codes,
                             "reason": reason})
    output.close()
    return 0


def wait_for_dependencies(record: JobRecord, status_path: Path, started: float,
                          cancelled: Callable[[], bool], poll_s: float = 1.0) -> str:
    """Hold the job (PENDING, its reason naming what it waits for) until every job of its ``after`` has ended as
    asked; "" then, or when cancelled. A dependency that can never be met: its description when the job is to be
    cancelled; else the job stays PENDING saying so until it is cancelled (``--if-dependency-fails keep``)."""
    from stjobs.after import met, recorded

    waits = recorded(record.details)
    keep = record.details.get("if_dependency_fails") == "keep"
    said = ""
    while waits and not cancelled():
        states = [(item, _state_of(item)) for item in waits]
        never = next((f"DependencyNeverSatisfied: {item.job_id} ended {state} ({flag(item.kind)})"
                      for item, state in states if met(item.kind, state) is False), "")
        if never and not keep:
            return never
        waits = [item for item, state in states if met(item.kind, state) is not True]
        if not waits:
            break
        reason = never or "waiting for " + ", ".join(f"{item.job_id} ({flag(item.kind)})" for item in waits)
        if reason != said:
            write_json(status_path, {"state": State.PENDING.value, "pid": os.getpid(), "started_at": started,
                                     "reason": reason})
            said = reason
        time.sleep(poll_s)
    return ""


def _state_of(item: After) -> str:
    from stjobs.backends.local.control import status as local_status

    try:
        return local_status(load_record_at(Path(item.job_dir))).state.value
    except (OSError, ValueError, TypeError):
        return State.LOST.value  # its directory is gone (stjobs clean): it can complete no more


def _signal_all(nodes: list[subprocess.Popen[bytes]], signum: int) -> None:
    for process in nodes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)


def _signal_groups(nodes: list[subprocess.Popen[bytes]], signum: int) -> None:
    for process in nodes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
