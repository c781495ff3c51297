"""Checks of a local job against this machine, made by ``submit`` before anything is written or started.

Rendering stays pure and machine-independent (a SLURM or Kubernetes job's script lives on the cluster or in the
image, and the golden examples name paths that exist nowhere here), so it never looks at the file system. A
local job, though, runs right here from the submit directory: a missing script or interpreter there would only
show up as a failed job with a Python traceback in its log, so ``submit`` refuses it up front instead.
"""

from __future__ import annotations

from pathlib import Path

from stjobs.backends.common import check_python, check_workdir
from stjobs.spec import JobSpec


def check_local(spec: JobSpec, modules: tuple[str, ...], cwd: str | Path | None = None) -> str:
    """The workdir, the entrypoint script and the interpreter a local job will use exist on this machine; the
    interpreter to run."""
    return check_python(spec, modules, check_workdir(spec, cwd, "for a local job"))
