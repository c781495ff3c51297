"""What submitit runs on each node: the node launch script, with preemption handled like the batch script does.

Pickled by submitit on the login node and called on every node by ``python -m submitit.core._submit``. It imports
nothing heavy: the training runs in the child process torchrun starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

# The exit status of a preempted or requeued job that may not requeue again (EX_TEMPFAIL), from the batch script
# and from NodeTask alike: SLURM records it, and `stjobs status` turns it back into words.
OUT_OF_REQUEUES_EXIT = 75


@dataclass(frozen=True)
class NodeTask:
    command: list[str]
    cwd: str
    max_requeues: int

    def __call__(self) -> int:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if restarts > self.max_requeues:
            # Requeued from outside (scontrol requeue, a failed node): the cap holds for those too.
            self._give_up(f"requeued {restarts} times, over slurm.max_requeues={self.max_requeues}; "
                          "not starting again (the last checkpoint is kept)")
        preempted = []

        def note(signum: int, frame: FrameType | None) -> None:
            # SLURM's --signal (no B:) reaches every process of the step: torchrun and its ranks get USR2 from
            # slurmstepd directly (seen on the test cluster), so we only take note. Forwarding it again made
            # torchrun take a second signal during its shutdown and die before the ranks had saved. This
            # handler also replaces submitit's own, which would requeue without waiting for the checkpoint.
            preempted.append(signum)

        # Before the child starts: a USR2 that lands between the two would otherwise end this task with the
        # default action (seen in CI, where the test's child signalled at once).
        signal.signal(signal.SIGUSR2, note)
        child = subprocess.Popen(self.command, cwd=self.cwd)
        code = child.wait()
        if preempted:
            if restarts >= self.max_requeues:
                self._give_up(f"preempted after {restarts} requeue(s), the most slurm.max_requeues="
                              f"{self.max_requeues} allows; the job ends FAILED and the last checkpoint is kept")
            if os.environ.get("SLURM_PROCID", "0") == "0":
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
            return 0
        if code != 0:
            raise RuntimeError(f"node launch script exited with {code} on {os.environ.get('SLURMD_NODENAME')}")
        return code

    @staticmethod
    def _give_up(why: str) -> NoReturn:
        # SystemExit passes submitit's exception handler untouched: the task, and so the job, ends with this code.
        print(f"stjobs: {why}", file=sys.stderr, flush=True)
        raise SystemExit(OUT_OF_REQUEUES_EXIT)
