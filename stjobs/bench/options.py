"""What ``stjobs bench`` is asked (BenchOptions), the shape it resolves to on this machine (BenchShape), one row of
its result (BenchRow), and the docs' own table it is compared with. Standard library only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stjobs.errors import UsageError
from stjobs.train import mpnet

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
MODEL_SIZES = tuple(mpnet.SIZES)


@dataclass(frozen=True)
class DocsSetup:
    """The sentence-transformers distributed-training docs' benchmark, as they state it."""

    model: str = "microsoft/mpnet-base"
    max_seq_length: int = 384
    per_device_batch_size: int = 32
    gpus: str = "4 x V100"
    precision: str = "fp16"
    data: str = "MultiNLI + SNLI (SoftmaxLoss) and STSB (CosineSimilarityLoss), trained together"


DOCS = DocsSetup()
DOCS_GPUS = 4
# (samples/s, speed-up over no parallelism) per row key. The docs give one DDP figure for both of its launches
# (torchrun and accelerate launch), so both DDP rows show it. Rows the docs do not have are absent ("-").
DOCS_ROWS: dict[str, tuple[float, float]] = {
    "single-1": (2724.0, 1.0),
    "dp": (3675.0, 1.349),
    "ddp": (6980.0, 2.562),
    "ddp-accelerate": (6980.0, 2.562),
    "fsdp": (5782.0, 2.122),
}
# How the docs launch each of their rows (train_script.py is their script; ours is python -m stjobs.train).
DOCS_LAUNCH: dict[str, str] = {
    "single-1": "CUDA_VISIBLE_DEVICES=0 python train_script.py",
    "dp": "python train_script.py",
    "ddp": "torchrun --nproc_per_node=4 train_script.py",
    "ddp-accelerate": "accelerate launch --num_processes 4 train_script.py",
    "fsdp": 'torchrun --nproc_per_node=4 train_script.py  (fsdp=["full_shard", "auto_wrap"], '
            'transformer_layer_cls_to_wrap: the model\'s layer class, no evaluator, FULL_STATE_DICT)',
}

# Goals printed next to the measured ratios (never asserted in a test: they are the machine's answer).
NO_SYNC_FRACTION_GOAL = 0.90  # DDP's samples/s as a fraction of DDP without the gradient all-reduce
DDP_EFFICIENCY_GOAL = 0.95  # DDP over N processes vs no parallelism, as a fraction of N (1.9x on 2 cores)
DEFAULTS_SPEEDUP_GOAL = 1.3  # stjobs defaults vs docs-style DDP
EQUAL_LOSS_TOLERANCE = 0.10  # relative difference of the final training loss that still counts as equal
FINAL_LOSS_WINDOW = 3  # the final loss: the mean of this many last logged losses

# The defaults that differ by machine: (GPU machine, CPU-only machine). On GPUs the docs' shape; on two CPU
# cores a smaller MPNet, so that the whole bench (six jobs there) takes a few minutes.
@dataclass(frozen=True)
class MachineDefaults:
    model_size: str
    max_seq_length: int
    steps: int
    skip_steps: int


GPU_DEFAULTS = MachineDefaults(model_size="base", max_seq_length=384, steps=60, skip_steps=10)
CPU_DEFAULTS = MachineDefaults(model_size="small", max_seq_length=128, steps=40, skip_steps=10)


@dataclass(frozen=True)
class BenchOptions:
    """What the user asked; None: the machine's default (GPU_DEFAULTS or CPU_DEFAULTS)."""

    model: str | None = None  # a local SentenceTransformer directory; None: the generated MPNet of model_size
    model_size: str | None = None  # base (mpnet-base's shape), small or tiny
    per_device_batch_size: int = 32  # the docs' 32 per device
    max_seq_length: int | None = None
    steps: int | None = None  # optimisation steps per row
    skip_steps: int | None = None  # warm-up steps left out of samples/s
    data_rows: int | None = None  # training rows per dataset; None: enough that no row sees a row twice
    precision: str = "auto"  # auto: what stjobs.gpus decides for the GPU (fp16 on V100), fp32 on CPUs
    learning_rate: float | None = None  # None: the training's default for the model
    out_dir: Path = Path("bench")
    processes: int | None = None  # DDP processes; default: the GPUs, or the CPU cores
    seed: int = 42

    def shape(self, gpus: int, cpus: int) -> BenchShape:
        """The resolved shape on a machine with ``gpus`` GPUs and ``cpus`` cores; refuses a bad option in one
        line."""
        defaults = GPU_DEFAULTS if gpus else CPU_DEFAULTS
        size = self.model_size or defaults.model_size
        if size not in MODEL_SIZES:
            raise UsageError(f"--model-size: got {size!r}; expected one of {', '.join(MODEL_SIZES)}")
        if self.model is not None and self.model_size is not None:
            raise UsageError(f"--model-size: got {self.model_size} with --model {self.model}; expected one of "
                             "them (the size is of the generated MPNet)")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision: got {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        steps = self.steps if self.steps is not None else defaults.steps
        skip = self.skip_steps if self.skip_steps is not None else min(defaults.skip_steps, steps // 4)
        if steps <= skip + 2:
            raise UsageError(f"--steps: got {steps}; expected more than --skip-steps + 2 ({skip + 2})")
        procs = self.processes or (gpus if gpus else cpus)
        if gpus and procs > gpus:
            raise UsageError(f"--processes: got {procs} on a machine with {gpus} GPUs; expected at most {gpus} "
                             "(one process per GPU)")
        # Every row reads each training row at most once: the same data, whatever the row's world size.
        rows = self.data_rows or max(1000, steps * self.per_device_batch_size * max(procs, 1))
        return BenchShape(model=self.model, model_size=None if self.model else size,
                          per_device_batch_size=self.per_device_batch_size,
                          max_seq_length=self.max_seq_length or defaults.max_seq_length, steps=steps,
                          skip_steps=skip, data_rows=rows, processes=procs, gpus=gpus, cpus=cpus)


@dataclass(frozen=True)
class BenchShape:
    """The bench as it runs on this machine: every default filled in."""

    model: str | None
    model_size: str | None
    per_device_batch_size: int
    max_seq_length: int
    steps: int
    skip_steps: int
    data_rows: int
    processes: int
    gpus: int
    cpus: int
    precision: str = "fp32"  # filled by run_bench from the GPU it finds

    def describe_model(self) -> str:
        return self.model if self.model is not None else mpnet.describe(self.model_size or "base")


@dataclass(frozen=True)
class BenchRow:
    key: str
    label: str
    strategy: str
    launcher: str = "torchrun"
    launch: str = ""  # in short: torchrun x 2, accelerate launch x 4, python (DataParallel)
    command: str = ""  # the whole command line the local backend ran
    samples_per_second: float | None = None
    speedup: float | None = None
    final_loss: float | None = None  # the mean of the last FINAL_LOSS_WINDOW logged losses
    final_losses: dict[str, float] = field(default_factory=dict)  # the same per dataset
    ran: str | None = None  # the strategy the training reports it ran
    precision: str | None = None  # the precision the training reports
    job_id: str | None = None
    busy_cores_before: float | None = None  # cores other processes kept busy just before the row started
    note: str = ""  # why the row has no figure, or what to know about it

    @property
    def docs(self) -> tuple[float, float] | None:
        """The docs' (samples/s, speed-up) for this row, or None where the docs have no such row."""
        return DOCS_ROWS.get(self.key)

    def to_data(self) -> dict[str, Any]:
        docs = self.docs
        return {"key": self.key, "label": self.label, "strategy": self.strategy, "launcher": self.launcher,
                "launch": self.launch, "command": self.command, "samples_per_second": self.samples_per_second,
                "speedup": self.speedup,
                "final_loss": self.final_loss, "final_losses": dict(self.final_losses), "ran": self.ran,
                "precision": self.precision, "job_id": self.job_id,
                "busy_cores_before": self.busy_cores_before, "note": self.note,
                "docs_samples_per_second": docs[0] if docs else None, "docs_speedup": docs[1] if docs else None,
                "docs_launch": DOCS_LAUNCH.get(self.key)}
