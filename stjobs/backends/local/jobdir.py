"""What a local job's directory holds besides the rendered files (written by the supervisor, read by control), and
the rendezvous port of a several-node job, which submission picks and the supervisor picks again after a wait."""

from __future__ import annotations

import os
import socket
import zlib
from pathlib import Path

from stjobs.errors import SubmitError

STATUS_FILE = "status.json"
OUTPUT_LOG = "output.log"
SUPERVISOR_LOG = "supervisor.log"
PID_FILE = "supervisor.pid"


def private_file(path: Path) -> int:
    """A descriptor for appending to ``path``, created 0o644 at most whatever the umask: nobody else may
    rewrite a job's logs or the pid that `cancel` signals."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def supervisor_pid(job_dir: Path) -> int | None:
    try:
        return int((job_dir / PID_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(port_range: tuple[int, int], job_id: str) -> int:
    """A port in the spec's range that is free now, starting from a point derived from the job id."""
    low, high = port_range
    span = high - low + 1
    start = zlib.crc32(job_id.encode()) % span
    for step in range(span):
        port = low + (start + step) % span
        if port_free(port):
            return port
    raise SubmitError(f"rendezvous.port_range: no free port in {low}-{high} on this machine")
