"""Checks of a local job against this machine, made by ``submit`` before anything is written or started.

Rendering stays pure and machine-independent (a SLURM or Kubernetes job's script lives on the cluster or in the
image, and the golden examples name paths that exist nowhere here), so it never looks at the file system. A
local job, though, runs right here from the submit directory: a missing script or interpreter there would only
show up as a failed job with a Python traceback in its log, so ``submit`` refuses it up front instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from stjobs.backends.common import check_python
from stjobs.errors import SpecError
from stjobs.spec import JobSpec


def check_local(spec: JobSpec, modules: tuple[str, ...], cwd: str | Path | None = None) -> str:
    """The workdir, the entrypoint script and the interpreter a local job will use exist on this machine; the
    interpreter to run."""
    base = Path(cwd or os.getcwd())
    workdir = base / spec.workdir_path  # an absolute workdir (one from a spec file) replaces the base
    if not workdir.is_dir():
        raise SpecError("workdir", spec.workdir, f"an existing directory for a local job ({workdir} is not one)")
    script = spec.entrypoint.script
    if script is not None and not (workdir / script).is_file():
        raise SpecError("entrypoint.script", script, f"a file that exists: a local job runs it from its workdir, "
                        f"and {workdir / script} is not a file")
    return check_python(spec, modules, workdir)
