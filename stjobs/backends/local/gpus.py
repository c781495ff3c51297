"""Which GPUs a local job's nodes see: decided at submit, set as each node's CUDA_VISIBLE_DEVICES by the supervisor.

Without it every rank sees every GPU of the machine, and the Hugging Face Trainer wraps DataParallel whenever it
sees more than one: ``gpus_per_node: 1`` on a 4-GPU machine silently became DataParallel over 4. So a local job
gets exactly ``gpus_per_node`` GPUs per node, as SLURM's GRES and Kubernetes' device plugin give them:

* the pool is the submitter's own CUDA_VISIBLE_DEVICES when it is set (``CUDA_VISIBLE_DEVICES=2,3 stjobs submit``
  picks devices), else the GPUs ``nvidia-smi -L`` lists; node k of the job takes the k-th slice of
  ``gpus_per_node`` entries of it, so local "nodes" never share a GPU;
* ``gpus_per_node: 0`` hides every GPU (an empty CUDA_VISIBLE_DEVICES): the job asked for none;
* fewer GPUs than ``nodes x gpus_per_node`` is refused at submit, in one line, instead of a job that trains on
  fewer (or on the CPU);
* ``strategy: single`` with more than one GPU is refused: one process would see several GPUs, and the Trainer
  would turn it into DataParallel.

Rendering never looks at the machine (it stays pure); only ``submit`` asks ``nvidia-smi``, and only when the job
asks for GPUs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING

from stjobs.errors import SpecError, SubmitError

if TYPE_CHECKING:  # the supervisor imports this module and stays light
    from stjobs.spec import JobSpec

VARIABLE = "CUDA_VISIBLE_DEVICES"


def present_gpus() -> int | None:
    """How many GPUs this machine has: ``nvidia-smi -L`` (physical GPUs, whatever CUDA_VISIBLE_DEVICES says),
    else the /dev/nvidiaN device files (a container without the tool); None when neither can tell."""
    tool = shutil.which("nvidia-smi")
    if tool is not None:
        try:
            listing = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            listing = None
        if listing is not None and listing.returncode == 0:
            # MIG instances are indented lines under their GPU; a job is given whole GPUs here.
            return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
    try:
        names = os.listdir("/dev")
    except OSError:
        return None
    found = sum(1 for name in names if re.fullmatch(r"nvidia\d+", name))
    return found or None


def assign_gpus(gpus_per_node: int, nodes: int, strategy: str, submitter: str | None,
                present: int | None) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each node of the job. ``submitter``: the submitting shell's CUDA_VISIBLE_DEVICES
    (None when unset); ``present``: the GPUs this machine has (None when it cannot tell)."""
    if gpus_per_node == 0:
        return [""] * nodes
    if strategy == "single" and gpus_per_node > 1:
        raise SpecError("gpus_per_node", gpus_per_node, "0 or 1 with strategy single (one process that sees "
                        "several GPUs becomes DataParallel; use strategy dp or ddp for more)")
    need = gpus_per_node * nodes
    per_node = f"{gpus_per_node} per node x {nodes} node{'s' if nodes > 1 else ''}" if nodes > 1 else ""
    wanted = f"{need} GPU{'s' if need > 1 else ''}" + (f" ({per_node})" if per_node else "")
    if submitter is not None:
        pool = [entry.strip() for entry in submitter.split(",") if entry.strip()]
        beyond = [entry for entry in pool if entry.isdigit() and present is not None and int(entry) >= present]
        if beyond:
            raise SubmitError(f"{VARIABLE}: got {submitter!r}; expected device ids below {present} (this machine "
                              f"has {present} GPU{'s' if present != 1 else ''}, nvidia-smi -L)")
        if len(pool) < need:
            raise SubmitError(f"gpus_per_node: got {gpus_per_node}; expected at most what {VARIABLE}={submitter!r} "
                              f"of this shell allows: the job needs {wanted}, it lists {len(pool)}")
    else:
        if not present:
            raise SubmitError(f"gpus_per_node: got {gpus_per_node}; expected 0 here: this machine shows no GPU "
                              "(nvidia-smi -L lists none, or is missing)")
        if present < need:
            raise SubmitError(f"gpus_per_node: got {gpus_per_node}; expected a job that fits this machine's "
                              f"{present} GPU{'s' if present != 1 else ''}: it needs {wanted}")
        pool = [str(index) for index in range(present)]
    return [",".join(pool[node * gpus_per_node:(node + 1) * gpus_per_node]) for node in range(nodes)]


def job_gpus(spec: JobSpec, detect: Callable[[], int | None] = present_gpus) -> list[str]:
    """CUDA_VISIBLE_DEVICES for each node of ``spec`` on this machine, from this process's environment. The
    machine is asked only when the job wants GPUs."""
    present = detect() if spec.gpus_per_node else None
    return assign_gpus(spec.gpus_per_node, spec.nodes, spec.strategy.value, os.environ.get(VARIABLE), present)
