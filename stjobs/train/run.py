"""The training run behind ``python -m stjobs.train`` (one process per device, started by torchrun).

Order of work, and why:

1. Parse and validate options (exit 2 on a bad one) before importing torch, so mistakes show in a second.
2. Join the process group (accelerate's ``PartialState``), so the ranks can coordinate data loading and the
   tiny model before the Trainer exists.
3. Load the data (rank 0 first, to fill the datasets cache once), pick and check the loss, load the model.
4. Train (resuming from the newest complete checkpoint) with an evaluation at the start and one at the end, then
   save ``final``. Both evaluations run on every rank through the Trainer: sentence-transformers runs the evaluator
   on rank 0 while the other ranks serve its encode requests, so no rank waits in a collective the others skip.

Preemption: SIGUSR2 or SIGTERM only sets a flag. At the next step end all ranks agree on the flag (a signal may reach
only some of them), save a checkpoint under ``checkpoints/`` and stop; each process then emits ``preempted`` and exits
0 without writing ``final``, and the next run with the same output dir resumes from that checkpoint. Repeats of the
request are ignored: under SLURM one USR2 reaches a rank twice (from slurmstepd, which signals every process of the
step, and again from torchrun forwarding it), and dying on the second copy lost the checkpoint. A sender that wants
the process gone sooner escalates with SIGKILL (torchrun's shutdown grace, SLURM's KillWait). Delivery: the launch
plan passes SIGUSR2 in torchrun's ``--signals-to-handle``, so torchrun forwards it to its workers instead of dying and
orphaning them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from stjobs.train import events
from stjobs.train.args import DEFAULT_PER_DEVICE_BATCH_SIZE, TrainConfig, TrainConfigError, parse_config

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Written by the Trainer last, after the weights, optimizer, scheduler and RNG states: a checkpoint is complete when
# this file parses and names the checkpoint's own step. A process killed while saving leaves it missing or cut off.
CHECKPOINT_COMPLETE_MARKER = "trainer_state.json"
EVAL_BATCH_SIZE = 32
# What torchrun tells each worker about its place in the world.
DISTRIBUTED_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                    "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Preemption:
    """Remembers that the scheduler asked us to stop; the training callback acts on it at a step boundary."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum


def newest_checkpoint(folder: Path, torn: list[tuple[Path, str]] | None = None) -> Path | None:
    """The highest-step ``checkpoint-N`` in ``folder`` that was written completely, or None. Incomplete ones
    (a process died while writing them) are skipped and, when ``torn`` is given, listed there with the reason."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    for step, child in sorted(found, reverse=True):
        why = checkpoint_problem(child, step)
        if why is None:
            return child
        if torn is not None:
            torn.append((child, why))
    return None


def checkpoint_problem(path: Path, step: int) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it is complete."""
    import json

    marker = path / CHECKPOINT_COMPLETE_MARKER
    try:
        state = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {CHECKPOINT_COMPLETE_MARKER} (the save did not finish)"
    except (OSError, ValueError) as error:
        return f"{CHECKPOINT_COMPLETE_MARKER} is unreadable ({type(error).__name__}; cut off while written?)"
    named = state.get("global_step") if isinstance(state, dict) else None
    if named != step:
        return f"{CHECKPOINT_COMPLETE_MARKER} names step {named}, not {step}"
    return None


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


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers + forked dataloader workers deadlock
    os.environ.setdefault("TQDM_DISABLE", "1")  # batch job: the events report progress, bars only garble logs
    try:
        return train(config)
    except TrainConfigError as exc:
        print(f"stjobs.train: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


def _quiet_libraries(is_main: bool) -> None:
    # Deprecation notices from inside the libraries (not actionable here) would repeat on every rank.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(accelerate|sentence_transformers)(\.|$)")
    import datasets

    # The events are the progress report; per-rank progress bars (TQDM_DISABLE covers transformers') and info logs
    # would bury them. Replicas only report errors: the main process already says everything else once.
    datasets.disable_progress_bars()
    for name in ("transformers", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.WARNING if is_main else logging.ERROR)


def train(config: TrainConfig) -> int:
    import torch
    from accelerate import PartialState

    from stjobs.train import data, models

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
    rank, world, local_rank = state.process_index, state.num_processes, state.local_process_index
    _quiet_libraries(rank == 0)
    # DataParallel is one process whose Trainer puts a per-device batch on each visible GPU.
    devices = world * max(torch.cuda.device_count(), 1) if config.strategy == "dp" else world
    per_device, global_batch = config.batch_sizes(devices)
    config = dataclasses.replace(config, per_device_batch_size=per_device, global_batch_size=global_batch)

    source = models.resolve_model_path(config.model)  # cheap, so a wrong --model fails before the data loads
    with state.main_process_first():
        train_table, kind = data.prepare(data.load_table(config.train_data, "--train-data"), "--train-data")
        eval_table, eval_kind = None, None
        if config.use_evaluator and config.eval_data is not None:
            eval_source = data.load_table(config.eval_data, "--eval-data", "eval")
            eval_table, eval_kind = data.prepare(eval_source, "--eval-data")
    loss_name = data.resolve_loss(kind, config.loss)

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
                node=os.environ.get("SLURMD_NODENAME") or socket.gethostname())

    if config.strategy == "ddp" and world > 1 and not config.find_unused_parameters:
        # DDP skips its per-step search for unused parameters (see _training_args): parameters the model never
        # uses are left out of DDP instead, or, where torch cannot do that, the search stays on.
        unused = models.unused_parameters(model)
        ignored = bool(unused) and models.ignore_in_ddp(model, unused)
        if unused and not ignored:
            config = dataclasses.replace(config, find_unused_parameters=True)
        if unused and rank == 0:
            events.emit("unused", rank=rank, parameters=unused, ignored_by_ddp=ignored)
    guide = models.load_model(config.guide_model, config.max_seq_length) if config.guide_model else None
    loss = data.build_loss(loss_name, model, world, config.gather_across_devices, per_device, guide)
    evaluator = (data.build_evaluator(eval_table, eval_kind, EVAL_BATCH_SIZE)
                 if eval_table is not None and eval_kind is not None else None)
    return _fit(config, source, model, train_table, loss, loss_name, evaluator, preemption, rank, world)


def _training_args(config: TrainConfig, source: str, model: Any, world: int, in_batch_negatives: bool,
                   evaluate: bool) -> Any:
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    from stjobs.train.models import fsdp_layer_class
    from stjobs.train.sampler import LengthGroupedBatchSampler, UniqueTextBatchSampler

    on_gpu = torch.cuda.is_available()
    parallel: dict[str, Any] = {}
    if config.strategy == "fsdp":
        # Full sharding, one FSDP unit per transformer layer: fsdp=["full_shard", "auto_wrap"] in the older
        # spelling, which transformers 5 still accepts but deprecates.
        layer = fsdp_layer_class(source, model, config.fsdp_layer_class)
        parallel = {"fsdp": True, "fsdp_config": {"reshard_after_forward": True,
                                                  "transformer_layer_cls_to_wrap": [layer]}}
    elif world > 1:
        # DDP looks for parameters without a gradient after every backward unless told there are none: an extra
        # pass over the graph per step. On only when the model has parameters that get no gradient and torch
        # cannot leave them out of DDP (see train()), or when asked for with --find-unused-parameters.
        parallel = {"ddp_find_unused_parameters": config.find_unused_parameters}
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    if precision != "fp32" and not on_gpu:
        raise TrainConfigError(f"--precision: got {precision} without a GPU; expected fp32 or auto on CPUs")
    workers = config.dataloader_workers if config.dataloader_workers is not None else (2 if on_gpu else 0)
    if config.group_by_length:
        sampler: Any = UniqueTextBatchSampler if in_batch_negatives else LengthGroupedBatchSampler
    else:
        # In-batch negatives: a duplicate text in a batch would be scored as a negative of itself.
        sampler = BatchSamplers.NO_DUPLICATES if in_batch_negatives else BatchSamplers.BATCH_SAMPLER
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
        eval_strategy="steps" if config.eval_steps else "no",
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
        use_cpu=not torch.cuda.is_available(),  # see PartialState(cpu=...) in train()
        # The spec's nccl.timeout_s: a hung collective fails the job instead of holding the allocation.
        ddp_timeout=int(os.environ.get("STJOBS_PG_TIMEOUT_S", "1800")),
        **parallel,
    )


def _fit(config: TrainConfig, source: str, model: Any, train_table: Any, loss: Any, loss_name: str,
         evaluator: Any, preemption: Preemption, rank: int, world: int) -> int:
    import torch
    import torch.distributed as dist
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from stjobs.train.data import IN_BATCH_NEGATIVE_LOSSES
    from stjobs.train.models import load_model

    args = _training_args(config, source, model, world, loss_name in IN_BATCH_NEGATIVE_LOSSES, evaluator is not None)

    class Trainer(SentenceTransformerTrainer):
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

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            accelerator = self.trainer.accelerator
            distributed_type = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type))
            wrapper = type(self.trainer.model_wrapped).__name__
            ran = strategy_that_ran(str(distributed_type), wrapper)
            as_requested = ran == expected_strategy(config.strategy, world)
            events.emit("wrapped", rank=rank, distributed_type=str(distributed_type), model_wrapper=wrapper,
                        requested=config.strategy, ran=ran, as_requested=as_requested)
            if not as_requested and rank == 0:
                # accelerate turns an FSDP request into plain DDP on CPU-only machines without saying so, and
                # DataParallel with fewer than two GPUs is one plain process.
                print(f"stjobs.train: warning: STJOBS_STRATEGY={config.strategy} but training runs as {ran} "
                      f"({distributed_type} with {wrapper})", file=sys.stderr, flush=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            if state.is_world_process_zero and logs and "loss" in logs:
                events.emit("loss", rank=rank, step=state.global_step, loss=float(logs["loss"]))

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kwargs: Any) -> None:
            name = getattr(evaluator, "primary_metric", None)
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

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ended_at = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_ends.append(time.monotonic())
            flagged = torch.tensor([1 if preemption.signum is not None else 0], device=args.device)
            if world > 1:
                # A signal may reach only some ranks; stopping alone would leave the others hanging in all-reduce.
                dist.all_reduce(flagged, op=dist.ReduceOp.MAX)
            if int(flagged.item()):
                control.should_save = True
                control.should_training_stop = True
                self.preempted_at = state.global_step

    callback = Events()
    trainer = Trainer(model=model, args=args, train_dataset=train_table, loss=loss, evaluator=evaluator,
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
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    if callback.preempted_at is not None:
        saved = config.checkpoint_dir / f"checkpoint-{callback.preempted_at}"
        events.emit("preempted", rank=rank, step=callback.preempted_at, checkpoint=str(saved.resolve()),
                    signal=signal.Signals(preemption.signum).name if preemption.signum else None)
        return 0

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
        events.emit("saved", rank=rank, path=final)
        print(events.summary(steps, runtime, throughput, global_batch, callback.metric, callback.scores, final),
              flush=True)
        events.emit("done", rank=rank, global_step=trainer.state.global_step)
    return 0

