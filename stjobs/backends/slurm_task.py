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

        def forward(signum: int, frame: FrameType | None) -> None:
            # submitit's own USR2 handler would requeue without telling torchrun: the ranks would die without a
            # checkpoint. Forward instead; torchrun passes USR2 to every rank, which saves and stops.
            preempted.append(signum)
            child.send_signal(signum)

        signal.signal(signal.SIGUSR2, forward)
        code = child.wait()
        if preempted:
            if os.environ.get("SLURM_PROCID", "0") == "0" and \
                    int(os.environ.get("SLURM_RESTART_COUNT", "0")) < self.max_requeues:
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
            return 0
        if code != 0:
            raise RuntimeError(f"node launch script exited with {code} on {os.environ.get('SLURMD_NODENAME')}")
        return code
