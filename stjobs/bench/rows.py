"""Which rows ``stjobs bench`` has on this machine, and each row's local job: the docs' rows launched the way the
docs launch them, plus the bound and stjobs' defaults.

* no parallelism: one process on exactly one device (one GPU: the local backend sets CUDA_VISIBLE_DEVICES from
  gpus_per_node, the docs' ``CUDA_VISIBLE_DEVICES=0 python train_script.py``; on CPUs one thread, and a second
  row with every core, since one CPU process can use them all);
* DataParallel: strategy dp, one plain ``python`` process that sees every GPU of the node (the docs' ``python
  train_script.py``); it needs two GPUs;
* DDP twice: torchrun and ``accelerate launch`` (the docs give both commands for their one DDP figure);
* FSDP: strategy fsdp, which is the docs' settings (full shard, one unit per layer class, no evaluator,
  FULL_STATE_DICT before the save); on CPUs accelerate would run it as DDP under FSDP's name, so it does not run;
* DDP without gradient sync (``--no-gradient-sync``): what DDP would do if the all-reduce were free. A bound to
  measure DDP against, not a configuration that trains a model;
* stjobs' defaults: DDP with whatever the training does by default (length grouping, its sampler, workers).

The docs-style rows use the docs' configuration: no length grouping, sentence-transformers' default
(proportional) multi-dataset sampler, no dataloader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stjobs.bench.options import BenchShape
from stjobs.train import mpnet

if TYPE_CHECKING:
    from stjobs.spec import JobSpec

DOCS_STYLE = ("--no-group-by-length", "--dataloader-workers", "0", "--multi-dataset-sampler", "proportional")
NO_SYNC = "--no-gradient-sync"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class RowPlan:
    """One row before it runs: its job's shape and, when it cannot run here, why (``missing``)."""

    key: str
    label: str
    strategy: str
    procs: int
    cpus: int
    gpus: int
    extra: tuple[str, ...] = ()
    launcher: str = "torchrun"
    missing: str = ""


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}{'es' if word.endswith('s') else 's'}"


def launch_words(plan: RowPlan) -> str:
    """The row's launch in the docs' words: ``torchrun x 4``, ``accelerate launch x 4``, ``python`` (DP)."""
    if plan.strategy == "dp":
        return f"python, {_plural(plan.gpus, 'GPU')}"
    launcher = "accelerate launch" if plan.launcher == "accelerate" else "torchrun"
    return f"{launcher} x {plan.procs}" + (f", {_plural(plan.gpus, 'GPU')}" if plan.gpus else "")


def plan_rows(shape: BenchShape) -> list[RowPlan]:
    """Every row of the comparison, in the docs' order, with the ones this machine cannot run marked why."""
    gpus, cpus, procs = shape.gpus, shape.cpus, shape.processes
    # On CPUs one thread per rank, so N ranks use N cores; on GPUs the node's CPUs shared between the ranks.
    ddp_cpus = max(procs, cpus) if gpus else procs
    ddp_gpus = procs if gpus else 0
    where = _plural(procs, "GPU") if gpus else _plural(procs, "process")
    ddp_missing = "" if procs >= 2 else (f"DDP needs 2 processes; this machine has {_plural(gpus, 'GPU')}" if gpus
                                         else f"DDP needs 2 processes; this machine has {_plural(cpus, 'core')}")
    fsdp_extra = ("--fsdp-layer-class", mpnet.LAYER_CLASS) if shape.model is None else ()
    rows = [RowPlan("single-1", "no parallelism (1 GPU)" if gpus else "no parallelism (CPU, 1 thread)", "single",
                    procs=1, cpus=max(1, cpus // max(procs, 1)) if gpus else 1, gpus=min(gpus, 1), extra=DOCS_STYLE)]
    if not gpus:
        rows.append(RowPlan("single-all", f"no parallelism (CPU, {_plural(cpus, 'thread')})", "single", procs=1,
                            cpus=cpus, gpus=0, extra=DOCS_STYLE,
                            missing="" if cpus > 1 else "one core: the same as no parallelism with 1 thread"))
    rows += [
        RowPlan("dp", f"DataParallel ({_plural(gpus, 'GPU')})" if gpus else "DataParallel", "dp", procs=1,
                cpus=max(cpus, 1), gpus=gpus, extra=DOCS_STYLE,
                missing="" if gpus >= 2 else f"DataParallel needs at least 2 GPUs; this machine has {gpus}"),
        RowPlan("ddp", f"DDP, torchrun ({where})", "ddp", procs=procs, cpus=ddp_cpus, gpus=ddp_gpus,
                extra=DOCS_STYLE, missing=ddp_missing),
        RowPlan("ddp-accelerate", f"DDP, accelerate launch ({where})", "ddp", procs=procs, cpus=ddp_cpus,
                gpus=ddp_gpus, extra=DOCS_STYLE, launcher="accelerate", missing=ddp_missing),
        RowPlan("fsdp", f"FSDP ({_plural(procs, 'GPU')})" if gpus else "FSDP", "fsdp", procs=procs,
                cpus=max(procs, cpus), gpus=ddp_gpus, extra=(*DOCS_STYLE, *fsdp_extra),
                missing="" if gpus >= 2 and procs >= 2 else
                "FSDP needs 2 GPUs (on CPUs accelerate runs it as DDP under FSDP's name)"),
        RowPlan("ddp-no-sync", f"DDP without gradient sync ({where}; bound)", "ddp", procs=procs, cpus=ddp_cpus,
                gpus=ddp_gpus, extra=(*DOCS_STYLE, NO_SYNC), missing=ddp_missing),
        RowPlan("stjobs", f"stjobs defaults (DDP, {where})", "ddp", procs=procs, cpus=ddp_cpus, gpus=ddp_gpus,
                missing=ddp_missing),
    ]
    return rows


def train_args(shape: BenchShape, model: str, data: dict[str, Path], learning_rate: float | None,
               seed: int) -> list[str]:
    """The built-in training's arguments every row shares: the docs' two datasets, each with its own loss."""
    logging = max(1, min(10, shape.steps // 8))  # enough loss events for the final-loss window
    args = ["--model", model,
            "--train-data", f"nli={data['nli-train']}:softmax", "--train-data", f"sts={data['sts-train']}:cosine",
            "--max-steps", str(shape.steps), "--per-device-batch-size", str(shape.per_device_batch_size),
            "--max-seq-length", str(shape.max_seq_length), "--logging-steps", str(logging),
            "--throughput-skip-steps", str(shape.skip_steps), "--seed", str(seed), "--no-resume",
            "--precision", shape.precision]
    if learning_rate is not None:
        args += ["--learning-rate", repr(learning_rate)]
    return args


def row_spec(plan: RowPlan, args: list[str], out: Path) -> JobSpec:
    """The local job of one row. Its GPUs are exactly ``gpus_per_node`` (the local backend sets
    CUDA_VISIBLE_DEVICES), so "no parallelism" trains on one GPU even on a machine with several."""
    from stjobs.config import validate_spec

    return validate_spec({
        "name": f"bench-{plan.key}", "strategy": plan.strategy, "launcher": plan.launcher,
        "procs_per_node": plan.procs, "cpus_per_task": plan.cpus, "gpus_per_node": plan.gpus,
        "output_dir": str(out / "runs" / plan.key), "env": dict(OFFLINE),
        "entrypoint": {"module": "stjobs.train", "args": [*args, *plan.extra]},
    })
