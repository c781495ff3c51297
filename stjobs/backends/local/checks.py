"""Checks of a local job against this machine, made by ``submit`` before anything is written or started.

Rendering stays pure and machine-independent (a SLURM or Kubernetes job's script lives on the cluster or in the
image, and the golden examples name paths that exist nowhere here), so it never looks at the file system. A
local job, though, runs right here from the submit directory: a missing script or interpreter there would only
show up as a failed job with a Python traceback in its log, so ``submit`` refuses it up front instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from stjobs.errors import SpecError
from stjobs.spec import JobSpec


def check_local(spec: JobSpec, cwd: str | Path | None = None) -> None:
    """The workdir, the entrypoint script and the interpreter a local job will use exist on this machine."""
    base = Path(cwd or os.getcwd())
    workdir = base / spec.workdir  # an absolute workdir replaces the base
    if not workdir.is_dir():
        raise SpecError("workdir", spec.workdir, f"an existing directory for a local job ({workdir} is not one)")
    script = spec.entrypoint.script
    if script is not None and not (workdir / script).is_file():
        raise SpecError("entrypoint.script", script, f"a file that exists: a local job runs it from its workdir, "
                        f"and {workdir / script} is not a file")
    python = spec.local.python
    if python is not None:
        # The node script runs the interpreter after `cd workdir`: a relative path is taken from there.
        found = str(workdir / python) if os.sep in python else shutil.which(python)
        if found is None or not (os.path.isfile(found) and os.access(found, os.X_OK)):
            raise SpecError("local.python", python, "an executable Python interpreter on this machine (a path, "
                            "or a name found on PATH)")
