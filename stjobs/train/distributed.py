"""This process's place in the distributed run: joining the process group, preemption, and which strategy ran.

Kept apart from the training itself because it is what every rank does before (and independently of) the model:
read torchrun's environment, join the group, catch the scheduler's stop request, and afterwards say whether the
libraries really trained the way STJOBS_STRATEGY asked. Importing it needs only the standard library (torch and
accelerate are imported inside :func:`join`), so the options can still fail fast before the ML stack loads.

Preemption: SIGUSR2 or SIGTERM only sets a flag. At each step end all ranks start a vote on the flag (a signal may
reach only some of them) and read the previous step's vote, so none waits for a collective (see :func:`agreed`);
when the vote says stop, all save a checkpoint under ``checkpoints/`` and stop at the same step; each process then
emits ``preempted`` and exits 0 without writing ``final``, and the next run with the same output dir resumes from
that checkpoint. Repeats of the request are ignored: under SLURM one USR2 reaches a rank twice (from slurmstepd,
which signals every process of the step, and again from torchrun forwarding it), and dying on the second copy lost
the checkpoint. A sender that wants the process gone sooner escalates with SIGKILL (torchrun's shutdown grace,
SLURM's KillWait). Delivery: the launch plan passes SIGUSR2 in torchrun's ``--signals-to-handle``, so torchrun
forwards it to its workers instead of dying and orphaning them. The step-end check lives in the training callback
(:mod:`stjobs.train.trainer`).
"""

from __future__ import annotations

import logging
import os
import signal
import warnings
from types import FrameType
from typing import Any

from stjobs.train.args import TrainConfig

# What torchrun tells each worker about its place in the world.
DISTRIBUTED_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                    "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Preemption:
    """Remembers that the scheduler asked us to stop; the training callback acts on it at a step boundary. It also
    holds the ranks' vote on it that is still in flight (see :func:`agreed`)."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.vote: _Vote | None = None  # the ranks' vote on the flag still in flight (see agreed)

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum


def agreed(preemption: Preemption, device: Any) -> bool:
    """Whether the ranks agreed to stop, called at every step end by every rank.

    A signal may reach only some ranks (or at different steps), and one that stopped alone would leave the others
    waiting in an all-reduce, so the ranks vote: a MAX all-reduce of the flag. Waiting for that vote at each step
    end would be a blocking collective and a host sync every step (the docs' script has neither), so the vote
    started at step end N is only read at step end N+1: every rank reads it at the same step, so all stop at
    step N+1 (one step later than a blocking vote). A world of one needs no vote and stops at once."""
    import torch.distributed as dist

    flagged = preemption.signum is not None
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flagged
    if preemption.vote is None:
        preemption.vote = _Vote(device)
    return preemption.vote.step(flagged)


class _Vote:
    """One all-reduce of the stop flag in flight at a time, read one step after it started.

    On CPUs (gloo) the all-reduce runs in gloo's thread during the next step, so waiting for it then costs
    nothing. On GPUs (NCCL) its result is copied to pinned host memory behind an event; waiting for the event at
    step N+1 waits for the GPU to finish step N, which it has (or nearly) while the host queued step N+1.
    The buffers are made once: a new device tensor from a Python int is itself a copy that waits for the stream.
    """

    def __init__(self, device: Any) -> None:
        import torch

        self.flag = torch.zeros(1, dtype=torch.int32, device=device)
        self.on_gpu = self.flag.device.type == "cuda"
        # Where the result is read: the flag itself on CPUs, a pinned copy on GPUs (read without a stream sync).
        self.host = torch.zeros(1, dtype=torch.int32, pin_memory=True) if self.on_gpu else self.flag
        self.copied: Any = torch.cuda.Event() if self.on_gpu else None  # type: ignore[no-untyped-call]
        self.work: Any = None

    def step(self, flagged: bool) -> bool:
        import torch.distributed as dist

        if self.work is not None:
            if self.on_gpu:
                self.copied.synchronize()  # the copy was queued after the all-reduce
            else:
                self.work.wait()  # gloo ran it during the step: long done
            self.work = None
            if int(self.host.item()):
                return True
        self.flag.fill_(1 if flagged else 0)
        self.work = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, async_op=True)
        if self.on_gpu:
            self.work.wait()  # NCCL: orders this stream after the all-reduce; the host does not wait
            self.host.copy_(self.flag, non_blocking=True)
            self.copied.record()
        return False


def strategy_that_ran(distributed_type: str, wrapper: str) -> str:
    """The strategy a run really used, from accelerate's distributed type and the class wrapping the model."""
    if "FSDP" in distributed_type or "FullyShardedDataParallel" in wrapper or wrapper == "FSDPModule":
        return "fsdp"
    if wrapper == "DistributedDataParallel":
        return "ddp"
    if wrapper == "DataParallel":
        return "dp"
    return "single"


def expected_strategy(requested: str, world: int) -> str:
    # One process of a DDP job trains the bare model: accelerate skips the wrapper for a world of one.
    return "single" if requested == "ddp" and world == 1 else requested


def quiet_libraries(is_main: bool) -> None:
    # Deprecation notices from inside the libraries (not actionable here) would repeat on every rank.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(accelerate|sentence_transformers)(\.|$)")
    import datasets

    # The events are the progress report; per-rank progress bars (TQDM_DISABLE covers transformers') and info logs
    # would bury them. Replicas only report errors: the main process already says everything else once.
    datasets.disable_progress_bars()
    for name in ("transformers", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.WARNING if is_main else logging.ERROR)


def join(config: TrainConfig) -> tuple[Preemption, Any]:
    """Catch preemption, join the process group torchrun described, quiet the libraries; the preemption flag and
    accelerate's ``PartialState`` (rank, world size, ``main_process_first``) for the rest of the run."""
    import torch
    from accelerate import PartialState

    preemption = Preemption()
    preemption.install()
    if config.strategy in ("single", "ddp") and os.environ.get("WORLD_SIZE") == "1":
        # A world of one under torchrun (kept for its restarts and signal handling): without this, accelerate and
        # the Trainer build a process group and wrap the model in DDP for nothing, and the run reports "ddp".
        for name in DISTRIBUTED_VARS:
            os.environ.pop(name, None)
    # Joins the process group torchrun described in the environment: nccl on GPUs, gloo on CPUs. Without cpu=True on
    # a machine without GPUs, accelerate silently treats every rank as its own single-process run.
    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    quiet_libraries(state.process_index == 0)
    return preemption, state


def gpu_assignment(local_rank: int) -> dict[str, Any]:
    """The GPUs this rank's node was given (CUDA_VISIBLE_DEVICES, as SLURM's GRES or the local backend set it)
    and the one this rank drives: entry LOCAL_RANK of that list, as torch's cuda:LOCAL_RANK is. Read from the
    environment, so it is reported the same with or without CUDA."""
    visible = [gpu for gpu in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu.strip()]
    return {"visible_gpus": visible,
            "gpu": visible[local_rank] if 0 <= local_rank < len(visible) else None,
            "slurm_job_gpus": os.environ.get("SLURM_JOB_GPUS") or None}


def same_on_every_rank(params: list[Any], device: Any) -> bool:
    """Whether these weights are equal on every rank: the check behind the gradient average of weights DDP does not
    own (SoftmaxLoss's classifier, see trainer.fit), cheap enough to run once after training. Compares each rank's
    sum and sum of squares per tensor with the smallest and largest over the ranks (exact: the ranks ran the same
    updates on the same values)."""
    import torch
    import torch.distributed as dist

    if not params or not dist.is_initialized() or dist.get_world_size() < 2:
        return True
    with torch.no_grad():
        local = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
                             for p in params]).to(device)
    low, high = local.clone(), local.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))
