"""The training run behind ``python -m stjobs.train`` (one process per device, started by torchrun).

Order of work, and why:

1. Parse and validate options (exit 2 on a bad one) before importing torch, so mistakes show in a second. If
   ``final`` already holds the model trained as far as asked (its marker, see :mod:`stjobs.train.checkpoints`), stop
   here with exit 0: every rank reads the same file, so all agree without a process group.
2. Join the process group (accelerate's ``PartialState``), so the ranks can coordinate data loading and the
   tiny model before the Trainer exists.
3. Load the data of every --train-data / --eval-data (rank 0 first, to fill the datasets cache once), pick and check
   each dataset's loss, load the model, build the losses and the evaluators.
4. Train (resuming from the newest complete checkpoint) with an evaluation at the start and one at the end, then
   save ``final``. Both evaluations run on every rank through the Trainer: sentence-transformers runs the evaluator
   on rank 0 while the other ranks serve its encode requests, so no rank waits in a collective the others skip.

This module is the top of the package and only orchestrates; the steps live below it: :mod:`stjobs.train.distributed`
(process group, preemption signals, which strategy ran), :mod:`stjobs.train.data`, :mod:`stjobs.train.objectives`
and :mod:`stjobs.train.models` (step 3), :mod:`stjobs.train.trainer` (step 4) with :mod:`stjobs.train.checkpoints`
(which checkpoint to resume from, whether the run is finished), and :mod:`stjobs.train.events` (the STJOBS_EVENT
lines all of them write). Preemption (SIGUSR2/SIGTERM: save a checkpoint at the next step end, exit 0, resume next
run) is described in :mod:`stjobs.train.distributed`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stjobs.train import checkpoints, data, distributed, events, objectives, trainer
from stjobs.train.args import TrainConfig, TrainConfigError, parse_config


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stjobs.train``: the process's exit status (2 for a bad option, found before torch loads)."""
    config = parse_config(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers + forked dataloader workers deadlock
    os.environ.setdefault("TQDM_DISABLE", "1")  # batch job: the events report progress, bars only garble logs
    try:
        check_cpus()
        if already_complete(config):
            return 0
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


def already_complete(config: TrainConfig) -> bool:
    """True when ``final`` already holds this run's model (its marker says it reached the planned length): then no
    rank trains. Every rank reads the same file before any joins the process group, so all agree without talking."""
    if not config.resume:
        return False
    record = checkpoints.finished_run(config.final_dir, config.max_steps, config.epochs)
    if record is None:
        return False
    if events.global_rank() == 0:
        final, step = str(config.final_dir.resolve()), record["global_step"]
        events.emit("already_complete", rank=0, step=step, path=final, max_steps=record.get("max_steps"),
                    epochs=record.get("epochs"))
        planned = f"--max-steps {config.max_steps}" if config.max_steps is not None else f"--epochs {config.epochs:g}"
        print(f"stjobs.train: {final} already holds the model trained to step {step} ({planned}); nothing to train. "
              "To train again from scratch: --no-resume, or a new --output-dir", flush=True)
    return True


def train(config: TrainConfig) -> int:
    """One rank's whole run, steps 2 to 4 above; raises TrainConfigError for a problem found on the way."""
    import torch

    from stjobs.train import models

    preemption, state = distributed.join(config)
    rank, world, local_rank = state.process_index, state.num_processes, state.local_process_index
    # DataParallel is one process whose Trainer puts a per-device batch on each visible GPU.
    devices = world * max(torch.cuda.device_count(), 1) if config.strategy == "dp" else world
    per_device, global_batch = config.batch_sizes(devices)
    config = dataclasses.replace(config, per_device_batch_size=per_device, global_batch_size=global_batch)

    source = models.resolve_model_path(config.model)  # cheap, so a wrong --model fails before the data loads
    with state.main_process_first():
        train_sets = data.load_train_data(config)
        eval_sets = data.load_eval_data(config) if config.use_evaluator else []
    loss_names = [item.loss or "" for item in train_sets]

    with tempfile.TemporaryDirectory(prefix="stjobs-model-") as scratch:
        if source is None:
            # Only rank 0 builds the tiny model (or reuses the one a previous run of this output dir built, so a
            # resumed checkpoint meets the same vocabulary); the others receive its files, see share_directory.
            init_dir: Path | None = None
            if rank == 0:
                init_dir = config.output_dir / models.TINY_INIT_DIR
                if not (config.resume and (init_dir / "modules.json").is_file()):
                    texts = [text for item in train_sets for text in models.training_texts(item.table, item.kind)]
                    models.build_tiny_model(texts, init_dir, config.seed)
            source = str(models.share_directory(init_dir, Path(scratch)))
        model = models.load_model(source, config.max_seq_length)
        # Decided while the files are still there: on ranks > 0 the tiny model lives in the scratch dir.
        if config.learning_rate is None:
            config = dataclasses.replace(config, learning_rate=models.default_learning_rate(source))
    objectives.check_matryoshka_dims(config.matryoshka_dims, model, config.model)

    import torch.distributed as dist

    in_batch = [name in data.IN_BATCH_NEGATIVE_LOSSES for name in loss_names]
    events.emit("start", rank=rank, world_size=world, local_rank=local_rank, strategy=config.strategy,
                backend=dist.get_backend() if dist.is_initialized() else None, model=config.model,
                train_rows=sum(len(item.table) for item in train_sets),
                kind="+".join(item.kind for item in train_sets), loss="+".join(loss_names),
                datasets=[item.describe() for item in train_sets], learning_rate=config.learning_rate,
                per_device_batch_size=per_device, global_batch_size=global_batch,
                # The planned length (one of them is set), so `stjobs status` can say step N of M.
                max_steps=config.max_steps, epochs=config.epochs,
                gather_across_devices=config.gather_across_devices and world > 1 and any(in_batch),
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
    # Losses with weights of their own (SoftmaxLoss's classifier) draw them here: the same seed on every rank gives
    # every rank the same start (DDP only keeps the model's parameters in step; see trainer.fit).
    torch.manual_seed(config.seed)
    losses = [data.build_loss(item.loss or "", model, world, config.gather_across_devices, per_device, guide,
                              item.num_labels, config.matryoshka_dims) for item in train_sets]
    evaluator = build_evaluator(eval_sets, rank)
    try:
        return trainer.fit(config, source, model, train_sets, losses, evaluator, preemption, rank, world)
    finally:
        # Leave the process group before exit: a rank that exits holding it can abort in the C++ destructors
        # ("terminate called without an active exception"), and the other node waits at torchrun's barrier.
        if dist.is_initialized():
            dist.destroy_process_group()


def build_evaluator(eval_sets: list[data.LoadedData], rank: int) -> Any:
    """The evaluator of each held-out source of a kind that has one (named after its source when there are
    several), in order; None, saying so once, when none has."""
    built = []
    several = sum(item.kind not in objectives.NO_EVALUATOR_KINDS for item in eval_sets) > 1
    for item in eval_sets:
        # One evaluator keeps its metric names unprefixed (spearman_cosine, cosine_ndcg@10), as before.
        name = (item.source.name or "") if several else ""
        evaluator = objectives.build_evaluator(item.table, item.kind, trainer.EVAL_BATCH_SIZE, name)
        if evaluator is None and rank == 0:
            events.emit("no_evaluator", rank=rank, data=item.source.text, kind=item.kind)
            print(f"stjobs.train: {item.option} {item.source.path}: {item.kind} data has no evaluator here; it is not "
                  "evaluated", file=sys.stderr, flush=True)
        if evaluator is not None:
            built.append(evaluator)
    return objectives.combine_evaluators(built)
