"""What a local job's directory holds besides the rendered files: written by the supervisor, read by control."""

from __future__ import annotations

import os
from pathlib import Path

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
