"""Make your own training script resumable under stjobs in three lines (a SentenceTransformerTrainer or any
Hugging Face Trainer)::

    from stjobs.train.callbacks import PreemptionCallback, resume_checkpoint

    trainer = SentenceTransformerTrainer(..., callbacks=[PreemptionCallback()])
    trainer.train(resume_from_checkpoint=resume_checkpoint(args.output_dir))

and ``entrypoint.resumable: true`` in the spec. When the scheduler warns of the time limit or a preemption
(SIGUSR2; SIGTERM too), every rank finishes its step, the Trainer saves a checkpoint, and the process exits 0 at
once: the batch file (or submitit's task) then requeues the job, and the next run resumes from that checkpoint.
A script without the callback is not requeued by default: it would die mid-step and start again from step 0.

The ranks agree on the signal (it may reach them at different steps), so none stops alone and leaves the others
waiting in an all-reduce: the vote started at one step end is read at the next, so it never holds up a step, and
every rank stops at that same later step. transformers and torch are imported when the callback is made.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from stjobs.train import events
from stjobs.train.checkpoints import newest_checkpoint
from stjobs.train.distributed import Preemption, agreed


def resume_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` under ``output_dir`` (one cut off by a kill is skipped), for
    ``trainer.train(resume_from_checkpoint=...)``; None on a first run."""
    found = newest_checkpoint(Path(output_dir))
    return str(found) if found is not None else None


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class PreemptionCallback(_callback_base()):  # type: ignore[misc]  # transformers' class, made at import time
    """Save at the next step end after SIGUSR2/SIGTERM and exit 0 (``exit_process=False``: stop training and
    return from ``trainer.train()`` instead; check :attr:`preempted_at` before saving a final model)."""

    def __init__(self, exit_process: bool = True) -> None:
        super().__init__()
        self.exit_process = exit_process
        self.preempted_at: int | None = None
        self.preemption = Preemption()
        self.preemption.install()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.preempted_at is None and agreed(self.preemption, args.device):
            control.should_save = True
            control.should_training_stop = True
            self.preempted_at = state.global_step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.preempted_at is None:
            return
        import torch.distributed as dist

        checkpoint = Path(args.output_dir) / f"checkpoint-{self.preempted_at}"
        name = signal.Signals(self.preemption.signum).name if self.preemption.signum else None
        events.emit("preempted", rank=args.process_index, step=self.preempted_at, checkpoint=str(checkpoint.resolve()),
                    signal=name)
        if self.exit_process:
            # Leave the process group first: a rank exiting inside it can abort in its destructors.
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            sys.exit(0)
