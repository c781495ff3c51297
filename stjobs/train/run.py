"""The training run behind ``python -m stjobs.train`` (one process per device, started by torchrun).

Order of work, and why:

1. Parse and validate options (exit 2 on a bad one) before importing torch, so mistakes show in a second.
2. Join the process group (accelerate's ``PartialState``), so the ranks can coordinate data loading and the
   tiny model before the Trainer exists.
3. Load the data (rank 0 first, to fill the datasets cache once), pick and check the loss, load the model.
4. Train (resuming from the newest complete checkpoint) with an evaluation at the start and one at the end, then
   save ``final``. Both evaluations run on every rank through the Trainer: sentence-transformers runs the evaluator
   on rank 0 while the other ranks serve its encode requests, so no rank waits in a collective the others skip.

This module is the top of the package and only orchestrates; the steps live below it: :mod:`stjobs.train.distributed`
(process group, preemption signals, which strategy ran), :mod:`stjobs.train.data` and :mod:`stjobs.train.models`
(step 3), :mod:`stjobs.train.trainer` (step 4) with :mod:`stjobs.train.checkpoints` (which checkpoint to resume
from), and :mod:`stjobs.train.events` (the STJOBS_EVENT lines all of them write). Preemption (SIGUSR2/SIGTERM: save
a checkpoint at the next step end, exit 0, resume next run) is described in :mod:`stjobs.train.distributed`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from stjobs.train import distributed, events, trainer
from stjobs.train.args import TrainConfig, TrainConfigError, parse_config


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stjobs.train``: the process's exit status (2 for a bad option, found before torch loads)."""
    config = parse_config(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers + forked dataloader workers deadlock
    os.environ.setdefault("TQDM_DISABLE", "1")  # batch job: the events report progress, bars only garble logs
    try:
        check_cpus()
        return train(config)
    except TrainConfigError as exc:
        print(f"stjobs.train: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


def check_cpus() -> None:
    """Under SLURM, the CPUs this rank may run on hold the ones the spec asked for (STJOBS_CPUS_PER_TASK): a site
    whose srun dropped --cpus-per-task binds the node's task to one CPU, and every rank of the node would share it."""
    asked = int(os.environ.get("STJOBS_CPUS_PER_TASK") or 0)
    cpus = sorted(os.sched_getaffinity(0))
    if asked and len(cpus) < asked and os.environ.get("SLURM_JOB_ID"):
        raise TrainConfigError(f"this rank may run on {len(cpus)} CPU(s) {cpus}, but the job asked SLURM for "
                               f"{asked} per node (cpus_per_task): the step was bound to fewer; give srun "
                               "--cpus-per-task (stjobs' batch file does) or export SRUN_CPUS_PER_TASK")


def train(config: TrainConfig) -> int:
    """One rank's whole run, steps 2 to 4 above; raises TrainConfigError for a problem found on the way."""
    import torch

    from stjobs.train import data, models

    preemption, state = distributed.join(config)
    rank, world, local_rank = state.process_index, state.num_processes, state.local_process_index
    # DataParallel is one process whose Trainer puts a per-device batch on each visible GPU.
    devices = world * max(torch.cuda.device_count(), 1) if config.strategy == "dp" else world
    per_device, global_batch = config.batch_sizes(devices)
    config = dataclasses.replace(config, per_device_batch_size=per_device, global_batch_size=global_batch)

    source = models.resolve_model_path(config.model)  # cheap, so a wrong --model fails before the data loads
    with state.main_process_first():
        train_table, kind = data.prepare(data.load_table(config.train_data[0].path, "--train-data"), "--train-data")
        eval_table, eval_kind = None, None
        if config.use_evaluator:
            eval_source = data.load_table(config.eval_data[0].path, "--eval-data", "eval")
            eval_table, eval_kind = data.prepare(eval_source, "--eval-data")
    loss_name = data.resolve_loss(kind, config.source_loss(config.train_data[0]))

    with tempfile.TemporaryDirectory(prefix="stjobs-model-") as scratch:
        if source is None:
            # Only rank 0 builds the tiny model (or reuses the one a previous run of this output dir built, so a
            # resumed checkpoint meets the same vocabulary); the others receive its files, see share_directory.
            init_dir: Path | None = None
            if rank == 0:
                init_dir = config.output_dir / models.TINY_INIT_DIR
                if not (config.resume and (init_dir / "modules.json").is_file()):
                    models.build_tiny_model(models.training_texts(train_table, kind), init_dir, config.seed)
            source = str(models.share_directory(init_dir, Path(scratch)))
        model = models.load_model(source, config.max_seq_length)
        # Decided while the files are still there: on ranks > 0 the tiny model lives in the scratch dir.
        if config.learning_rate is None:
            config = dataclasses.replace(config, learning_rate=models.default_learning_rate(source))

    import torch.distributed as dist

    events.emit("start", rank=rank, world_size=world, local_rank=local_rank, strategy=config.strategy,
                backend=dist.get_backend() if dist.is_initialized() else None, model=config.model,
                train_rows=len(train_table), kind=kind, loss=loss_name, learning_rate=config.learning_rate,
                per_device_batch_size=per_device, global_batch_size=global_batch,
                gather_across_devices=config.gather_across_devices and world > 1
                and loss_name in data.IN_BATCH_NEGATIVE_LOSSES,
                # Which node this rank ran on: SLURM's node name (several nodes may share one host in tests).
                node=os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
                # What the scheduler gave this rank: its CPUs, and the GPUs it sees with the one it drives.
                cpus=sorted(os.sched_getaffinity(0)), **distributed.gpu_assignment(local_rank))

    if config.strategy == "ddp" and world > 1 and not config.find_unused_parameters:
        # DDP skips its per-step search for unused parameters (see trainer.training_args): parameters the model
        # never uses are left out of DDP instead, or, where torch cannot do that, the search stays on.
        unused = models.unused_parameters(model)
        ignored = bool(unused) and models.ignore_in_ddp(model, unused)
        if unused and not ignored:
            config = dataclasses.replace(config, find_unused_parameters=True)
        if unused and rank == 0:
            events.emit("unused", rank=rank, parameters=unused, ignored_by_ddp=ignored)
    guide = models.load_model(config.guide_model, config.max_seq_length) if config.guide_model else None
    loss = data.build_loss(loss_name, model, world, config.gather_across_devices, per_device, guide)
    evaluator = (data.build_evaluator(eval_table, eval_kind, trainer.EVAL_BATCH_SIZE)
                 if eval_table is not None and eval_kind is not None else None)
    try:
        return trainer.fit(config, source, model, train_table, loss, loss_name, evaluator, preemption, rank, world)
    finally:
        # Leave the process group before exit: a rank that exits holding it can abort in the C++ destructors
        # ("terminate called without an active exception"), and the other node waits at torchrun's barrier.
        if dist.is_initialized():
            dist.destroy_process_group()
