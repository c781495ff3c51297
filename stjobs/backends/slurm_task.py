"""What submitit runs on each node: the node launch script, with preemption handled like the batch script does.

Pickled by submitit on the login node and called on every node by ``python -m submitit.core._submit``. It imports
nothing heavy: the training runs in the child process torchrun starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from types import FrameType


@dataclass(frozen=True)
class NodeTask:
    command: list[str]
    cwd: str
    max_requeues: int

    def __call__(self) -> int:
        child = subprocess.Popen(self.command, cwd=self.cwd)
        preempted = []

        def note(signum: int, frame: FrameType | None) -> None:
            # SLURM's --signal (no B:) reaches every process of the step: torchrun and its ranks get USR2 from
            # slurmstepd directly (seen on the test cluster), so we only take note. Forwarding it again made
            # torchrun take a second signal during its shutdown and die before the ranks had saved. This
            # handler also replaces submitit's own, which would requeue without waiting for the checkpoint.
            preempted.append(signum)

        signal.signal(signal.SIGUSR2, note)
        code = child.wait()
        if preempted:
            if os.environ.get("SLURM_PROCID", "0") == "0" and \
                    int(os.environ.get("SLURM_RESTART_COUNT", "0")) < self.max_requeues:
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
            return 0
        if code != 0:
            raise RuntimeError(f"node launch script exited with {code} on {os.environ.get('SLURMD_NODENAME')}")
        return code
