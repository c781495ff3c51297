"""The Trainer side of a run: training arguments, the Trainer and its event callback, resume, final save.

:mod:`stjobs.train.run` prepares everything a rank needs (process group, data, model, loss, evaluator) and hands it
to :func:`fit`, which owns all contact with the Hugging Face Trainer: how our options map onto its arguments, the
two fixes its ``_save`` needs, the hooks that turn its progress into STJOBS events and act on a preemption request,
resuming from the newest complete checkpoint, and the throughput, last evaluation and ``final`` save after it.
torch, transformers and sentence-transformers are imported inside the functions, so importing this module stays
cheap (the options are checked before the ML stack loads).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stjobs.gpus import resolve_precision
from stjobs.train import events
from stjobs.train.args import DEFAULT_PER_DEVICE_BATCH_SIZE, TrainConfig, TrainConfigError
from stjobs.train.checkpoints import clear_run_marker, newest_checkpoint, write_run_marker
from stjobs.train.distributed import Preemption, agreed, expected_strategy, same_on_every_rank, strategy_that_ran

if TYPE_CHECKING:
    from stjobs.train.data import LoadedData

# Both the evaluator's own encode batches (built in run.train) and the Trainer's per-device eval batch.
EVAL_BATCH_SIZE = 32


def training_args(config: TrainConfig, source: str, model: Any, world: int, in_batch_negatives: bool,
                  evaluate: bool, datasets: dict[int, bool] | None = None) -> Any:
    """The Trainer's arguments for this run: strategy, precision, batch sampler, schedule, saving and logging.
    ``datasets``: a multi-dataset run's {id(dataset): its loss has in-batch negatives} (see sampler.py)."""
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    from stjobs.launch import LAYER_CLASS_ENV, fsdp_settings
    from stjobs.train.models import fsdp_layer_class
    from stjobs.train.sampler import (
        MULTI_DATASET_SAMPLER_CLASSES,
        DatasetBatchSamplers,
        LengthGroupedBatchSampler,
        UniqueTextBatchSampler,
    )

    on_gpu = torch.cuda.is_available()
    parallel: dict[str, Any] = {}
    if config.strategy == "fsdp":
        # Full sharding, one FSDP unit per transformer layer, FSDP2, full state dict: the values the accelerate
        # config holds too (stjobs.launch.fsdp_settings). Under `accelerate launch` this plugin is the one used (the
        # Trainer passes it explicitly); the layer class the config named arrives as FSDP_TRANSFORMER_CLS_TO_WRAP and
        # is checked against the model, so the two launchers cannot wrap different classes.
        if config.fsdp_layer_class:
            layer = fsdp_layer_class(source, model, config.fsdp_layer_class)
        else:
            layer = fsdp_layer_class(source, model, os.environ.get(LAYER_CLASS_ENV) or None, LAYER_CLASS_ENV)
        fsdp_config = {**fsdp_settings(layer), "transformer_layer_cls_to_wrap": [layer]}
        parallel = {"fsdp": True, "fsdp_config": fsdp_config}
    elif world > 1:
        # DDP looks for parameters without a gradient after every backward unless told there are none: an extra
        # pass over the graph per step. On only when the model has parameters that get no gradient and torch
        # cannot leave them out of DDP (see run.train), or when asked for with --find-unused-parameters.
        parallel = {"ddp_find_unused_parameters": config.find_unused_parameters}
    # Not torch.cuda.is_bf16_supported(): it answers True on V100 and T4, where bf16 is emulated (stjobs.gpus).
    capability = tuple(torch.cuda.get_device_capability()) if on_gpu else None
    try:
        precision = resolve_precision(config.precision, capability)  # type: ignore[arg-type]
    except ValueError as error:
        raise TrainConfigError(f"--precision: {error}") from None
    workers = config.dataloader_workers if config.dataloader_workers is not None else (2 if on_gpu else 0)
    if config.group_by_length:
        sampler: Any = UniqueTextBatchSampler if in_batch_negatives else LengthGroupedBatchSampler
    else:
        # In-batch negatives: a duplicate text in a batch would be scored as a negative of itself.
        sampler = BatchSamplers.NO_DUPLICATES if in_batch_negatives else BatchSamplers.BATCH_SAMPLER
    multi: dict[str, Any] = {}
    if datasets is not None:
        # Each dataset its own sampler, and one dataset per step for all ranks (see sampler.py).
        sampler = DatasetBatchSamplers(datasets, config.group_by_length)
        multi = {"multi_dataset_batch_sampler": MULTI_DATASET_SAMPLER_CLASSES[config.multi_dataset_sampler]}
    return SentenceTransformerTrainingArguments(
        output_dir=str(config.checkpoint_dir),
        per_device_train_batch_size=config.per_device_batch_size or DEFAULT_PER_DEVICE_BATCH_SIZE,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        num_train_epochs=config.epochs if config.epochs is not None else 1.0,
        learning_rate=config.learning_rate if config.learning_rate is not None else 5e-5,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        eval_strategy="steps" if config.eval_steps and evaluate else "no",
        eval_steps=config.eval_steps,
        # The "before" evaluation runs inside train(), after the model is wrapped: a trainer.evaluate() before
        # train() marks the bare model as prepared, and accelerate then skips the DDP wrapper for training
        # (observed: each rank silently trained its own copy).
        eval_on_start=evaluate,
        dataloader_drop_last=world > 1,  # an uneven last batch would leave one rank waiting in all-reduce
        seed=config.seed,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=on_gpu,  # pinning only helps copies to a GPU
        batch_sampler=sampler,
        report_to="none",
        disable_tqdm=True,
        log_level="warning",
        log_level_replica="error",
        use_cpu=not torch.cuda.is_available(),  # see PartialState(cpu=...) in distributed.join
        # The spec's nccl.timeout_s: a hung collective fails the job instead of holding the allocation.
        ddp_timeout=int(os.environ.get("STJOBS_PG_TIMEOUT_S", "1800")),
        **parallel,
        **multi,
    )


def fit(config: TrainConfig, source: str, model: Any, train_sets: list[LoadedData], losses: list[Any],
        evaluator: Any, preemption: Preemption, rank: int, world: int) -> int:
    """Train (resuming when a complete checkpoint exists), evaluate and save ``final``; the exit status (0 also
    when preempted: the checkpoint is saved and the next run resumes from it). Several ``train_sets`` train as
    sentence-transformers' multi-dataset training: a DatasetDict and a dict of losses, keyed by the sources' names."""
    import torch
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from stjobs.train.losses import IN_BATCH_NEGATIVE_LOSSES
    from stjobs.train.models import load_model
    from stjobs.train.objectives import primary_metric

    in_batch = {id(item.table): item.loss in IN_BATCH_NEGATIVE_LOSSES for item in train_sets}
    names = [item.source.name or "" for item in train_sets]
    several = len(train_sets) > 1
    if several:
        import datasets

        train_dataset: Any = datasets.DatasetDict({name: item.table for name, item in zip(names, train_sets,
                                                                                           strict=True)})
        loss: Any = dict(zip(names, losses, strict=True))
    else:
        train_dataset, loss = train_sets[0].table, losses[0]
    args = training_args(config, source, model, world, any(in_batch.values()), evaluator is not None,
                         in_batch if several else None)
    # Weights of the losses themselves (SoftmaxLoss's classifier): sentence-transformers puts them into the
    # optimizer, but DDP wraps only the model, so their gradients are not all-reduced (see Trainer.training_step).
    in_model = {id(param) for param in model.parameters()}
    loss_weights = [param for module in losses for param in module.parameters()
                    if param.requires_grad and id(param) not in in_model]

    class Trainer(SentenceTransformerTrainer):
        def __init__(self, *pos: Any, **named: Any) -> None:
            super().__init__(*pos, **named)
            # A multi-dataset run's loss per dataset since the last log: sums (on the device) and batch counts.
            self.dataset_sums: dict[str, Any] = {}
            self.dataset_counts: dict[str, int] = {}
            self.logged_losses: dict[str, float] = {}

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            # sentence-transformers' multi-dataset collator puts the batch's dataset name into the inputs (and
            # its compute_loss pops it to pick the loss), so read it first.
            name = inputs.get("dataset_name") if several else None
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if name is not None and not return_outputs and model.training:
                value = (result[0] if isinstance(result, tuple) else result).detach().float()
                self.dataset_sums[name] = self.dataset_sums.get(name, 0) + value
                self.dataset_counts[name] = self.dataset_counts.get(name, 0) + 1
            return result

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            # Every rank logs at the same step (the Trainer gathers the loss there), so the per-dataset means can
            # be summed over the ranks here, for the loss event on_log writes.
            if several and "loss" in logs:
                totals = torch.tensor([[float(self.dataset_sums.get(name, 0.0)), self.dataset_counts.get(name, 0)]
                                       for name in names], dtype=torch.float64, device=self.args.device)
                if world > 1 and torch.distributed.is_initialized():
                    torch.distributed.all_reduce(totals)
                self.logged_losses = {name: float(total / count) for name, (total, count)
                                      in zip(names, totals.tolist(), strict=True) if count}
                self.dataset_sums, self.dataset_counts = {}, {}
            super().log(logs, start_time)

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            wrapped = self.model_wrapped
            if not config.gradient_sync and isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
                # --no-gradient-sync: a benchmark bound, each rank trains its own copy.
                with wrapped.no_sync():
                    return super().training_step(model, inputs, num_items_in_batch)
            step_loss = super().training_step(model, inputs, num_items_in_batch)
            if world > 1 and torch.distributed.is_initialized():
                # Without this each rank would train its own classifier on its own batches. Every rank of a step
                # trains the same dataset (sampler.py), so all hold gradients for the same weights here.
                for param in loss_weights:
                    if param.grad is not None:
                        torch.distributed.all_reduce(param.grad)
                        param.grad /= world
            return step_loss

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            # sentence-transformers' _save assumes it only runs on the main process, but transformers 5 calls it
            # on every rank (for sharded saves); without this guard all ranks write the same files at once.
            if not self.args.should_save:
                return
            if state_dict is not None and self.is_fsdp_enabled:
                # Under FSDP the live modules hold shards, and sentence-transformers' _save ignores the gathered
                # full state dict; put it into a fresh copy of the starting model and save that instead.
                fresh = load_model(source, config.max_seq_length)
                fresh.load_state_dict(state_dict)
                fresh.save(str(output_dir or self.args.output_dir))
                return
            super()._save(output_dir, state_dict)

    class Events(TrainerCallback):
        """Turns Trainer hooks into STJOBS events and acts on a preemption request."""

        def __init__(self) -> None:
            self.when = "before"
            self.scores: dict[str, float] = {}
            self.metric: str | None = None
            self.preempted_at: int | None = None
            self.trainer: Any = None
            # Wall time of the optimisation steps alone: excludes start-up and the "before" evaluation.
            self.first_step_at: float | None = None
            self.first_step = 0
            self.ended_at: float | None = None
            self.step_ends: list[float] = []  # when each step of this run ended, for the steady-state rate
            # The loss event's samples/s window: (monotonic time, global step) where it began; None before the
            # first step of this run.
            self.window: tuple[float, int] | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            accelerator = self.trainer.accelerator
            distributed_type = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type))
            wrapper = type(self.trainer.model_wrapped).__name__
            ran = strategy_that_ran(str(distributed_type), wrapper)
            as_requested = ran == expected_strategy(config.strategy, world)
            precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
            sync: dict[str, Any] = {} if config.gradient_sync else {"gradient_sync": False}
            events.emit("wrapped", rank=rank, distributed_type=str(distributed_type), model_wrapper=wrapper,
                        requested=config.strategy, ran=ran, as_requested=as_requested, precision=precision, **sync)
            if not as_requested and rank == 0:
                # accelerate turns an FSDP request into plain DDP on CPU-only machines without saying so, and
                # DataParallel with fewer than two GPUs is one plain process.
                print(f"stjobs.train: warning: STJOBS_STRATEGY={config.strategy} but training runs as {ran} "
                      f"({distributed_type} with {wrapper})", file=sys.stderr, flush=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            if state.is_world_process_zero and logs and "loss" in logs:
                per_dataset = {"losses": self.trainer.logged_losses} if several else {}
                now, rate = time.monotonic(), None
                global_batch = (config.global_batch_size or 0) * args.gradient_accumulation_steps
                if self.window is not None and global_batch and now > self.window[0]:
                    rate = round((state.global_step - self.window[1]) * global_batch / (now - self.window[0]), 3)
                self.window = (now, state.global_step)
                learning_rate = logs.get("learning_rate")
                events.emit("loss", rank=rank, step=state.global_step, loss=float(logs["loss"]), **per_dataset,
                            learning_rate=None if learning_rate is None else float(learning_rate),
                            samples_per_second=rate, epoch=logs.get("epoch", state.epoch))

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kwargs: Any) -> None:
            if self.window is not None:
                # An --eval-steps evaluation is not training: the next loss event's samples/s starts after it.
                self.window = (time.monotonic(), state.global_step)
            name = primary_metric(evaluator)
            if rank != 0 or not metrics or not name:
                return  # rank 0 alone runs the evaluator, so only it knows the metric's name
            score = metrics.get(f"eval_{name}", metrics.get(name))
            if score is not None:
                self.metric, self.scores[self.when] = name, float(score)
                events.emit("eval", rank=rank, when=self.when, metric=name, score=float(score),
                            step=state.global_step)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.when = "during"  # the eval_on_start evaluation ("before") has run by now
            if self.first_step_at is None:
                self.first_step_at, self.first_step = time.monotonic(), state.global_step
            if self.window is None:
                self.window = (time.monotonic(), state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ended_at = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_ends.append(time.monotonic())
            if agreed(preemption, args.device):
                control.should_save = True
                control.should_training_stop = True
                self.preempted_at = state.global_step

    callback = Events()
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, loss=loss, evaluator=evaluator,
                      callbacks=[callback])
    callback.trainer = trainer
    trainer.remove_callback(PrinterCallback)  # it would print every log dict again next to the loss events

    torn: list[tuple[Path, str]] = []
    checkpoint = newest_checkpoint(config.checkpoint_dir, torn) if config.resume else None
    if rank == 0:
        for path, why in torn:
            events.emit("checkpoint_skipped", rank=rank, checkpoint=str(path.resolve()), reason=why)
    if checkpoint is not None:
        events.emit("resumed", rank=rank, checkpoint=str(checkpoint.resolve()),
                    step=int(checkpoint.name.removeprefix("checkpoint-")))
    if rank == 0:
        clear_run_marker(config.final_dir)  # `final` is this run's from now on (see checkpoints.RUN_MARKER)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    if callback.preempted_at is not None:
        saved = config.checkpoint_dir / f"checkpoint-{callback.preempted_at}"
        events.emit("preempted", rank=rank, step=callback.preempted_at, checkpoint=str(saved.resolve()),
                    signal=signal.Signals(preemption.signum).name if preemption.signum else None)
        return 0

    if loss_weights and world > 1 and config.gradient_sync:
        # Every rank must end with the same loss weights (they are averaged by hand in training_step): say so.
        same = same_on_every_rank(loss_weights, args.device)
        if rank == 0:
            events.emit("loss_weights", rank=rank, parameters=len(loss_weights), same_on_every_rank=same)
            if not same:
                print("stjobs.train: warning: the loss's own weights (e.g. SoftmaxLoss's classifier) differ between "
                      "ranks", file=sys.stderr, flush=True)
    global_batch = (config.global_batch_size or 0) * args.gradient_accumulation_steps
    steps = trainer.state.global_step - callback.first_step if callback.first_step_at is not None else 0
    runtime = (callback.ended_at or time.monotonic()) - (callback.first_step_at or time.monotonic())
    throughput = steps * global_batch / runtime if steps and runtime > 0 else 0.0
    # Steady state: the first steps pay for lazy initialisation, allocator growth and the first all-reduce buckets.
    ends = callback.step_ends
    skip = min(config.throughput_skip_steps, max(len(ends) - 2, 0))
    steady = (len(ends) - 1 - skip) * global_batch / (ends[-1] - ends[skip]) \
        if len(ends) - 1 - skip > 0 and ends[-1] > ends[skip] else throughput
    if rank == 0:
        events.emit("throughput", rank=rank, samples_per_second=round(throughput, 3), steps=steps,
                    seconds=round(runtime, 3), global_batch_size=global_batch,
                    steady_samples_per_second=round(steady, 3), steady_steps=max(len(ends) - 1 - skip, 0))

    if evaluator is not None:
        callback.when = "after"
        trainer.evaluate()
    if trainer.is_fsdp_enabled:
        # Gather the full weights on rank 0 so `final` is an ordinary model directory, not per-rank shards.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(config.final_dir))
    trainer.accelerator.wait_for_everyone()
    if rank == 0:
        final = str(config.final_dir.resolve())
        write_run_marker(config.final_dir, trainer.state.global_step, config.max_steps, config.epochs,
                         [source.text for source in config.train_data])
        events.emit("saved", rank=rank, path=final)
        print(events.summary(steps, runtime, throughput, global_batch, callback.metric, callback.scores, final),
              flush=True)
        events.emit("done", rank=rank, global_step=trainer.state.global_step)
    return 0
