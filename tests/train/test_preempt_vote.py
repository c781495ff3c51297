"""The ranks' vote on a preemption request: started at one step end, read at the next, same stop step on every rank.

Two real processes with gloo on CPUs, no training: each calls ``agreed`` once per "step" as the callback does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stjobs.train.distributed import Preemption, agreed

# Each rank: flag itself at the step its row says (None: never signalled), report the step at which agreed() says
# stop. Rank 1 "sleeps" between steps so the ranks are out of step, as real ranks are.
RANK = """
import json, os, sys, time, signal
import torch.distributed as dist
from stjobs.train.distributed import Preemption, agreed
flag_at = json.loads(sys.argv[1])[int(os.environ["RANK"])]
dist.init_process_group("gloo")
preemption = Preemption()
stopped = None
for step in range(1, 30):
    if int(os.environ["RANK"]) == 1:
        time.sleep(0.01)
    if flag_at is not None and step == flag_at:
        preemption.signum = signal.SIGUSR2
    if agreed(preemption, "cpu"):
        stopped = step
        break
print("STOPPED", json.dumps(stopped), flush=True)
dist.destroy_process_group()
"""


def stop_steps(flag_at: list[int | None], tmp_path: Path, run_env: dict[str, str]) -> list[int | None]:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), json.dumps(flag_at)], capture_output=True, text=True, env=run_env, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    found = [line.split("STOPPED ", 1)[1] for line in done.stdout.splitlines() if "STOPPED " in line]
    assert len(found) == 2, done.stdout
    return sorted((json.loads(value) for value in found), key=lambda step: (step is None, step))


@pytest.mark.parametrize("flag_at,expected", [
    ([None, 3], [4, 4]),  # one rank signalled: both stop, one step after the vote started
    ([5, 2], [3, 3]),  # signalled at different steps: the first signal decides, for both
    ([None, None], [None, None]),  # never signalled: the votes run to the end without stopping anyone
])
def test_every_rank_stops_at_the_same_step(flag_at: list[int | None], expected: list[int | None], tmp_path: Path,
                                           run_env: dict[str, str]) -> None:
    assert stop_steps(flag_at, tmp_path, run_env) == expected


def test_a_world_of_one_stops_at_once() -> None:
    preemption = Preemption()
    assert not agreed(preemption, "cpu")
    preemption.signum = 12
    assert agreed(preemption, "cpu") and preemption.vote is None
