"""Local backend: the job runs on this machine, in the background, watched by a small supervisor process.

Several "nodes" are several torchrun agents on this machine meeting at a c10d rendezvous on 127.0.0.1, which is
the same code path a real multi-node job takes. This is the face of the backend (the functions every backend
offers); the work is in renderer (pure), checks (before anything is written), submission, supervisor (the
process that runs a job) and control (status, logs, cancel), over jobdir (what a job directory holds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stjobs.backends.local.control import cancel, logs, output_file, status, statuses
from stjobs.backends.local.renderer import NAME, render, render_sweep, uses_image
from stjobs.backends.local.submission import check, submit, submit_sweep

if TYPE_CHECKING:
    from stjobs.jobs import JobRecord

__all__ = ["NAME", "cancel", "check", "logs", "output_file", "output_tail", "render", "render_sweep", "status",
           "statuses", "submit", "submit_sweep", "uses_image"]


def output_tail(record: JobRecord, limit_bytes: int) -> str | None:
    from stjobs.progress import file_tail

    return file_tail(output_file(record), limit_bytes)
