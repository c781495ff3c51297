"""Command line of ``python -m stjobs.train``, parsed into one frozen :class:`TrainConfig`.

Standard library only, so the launcher can validate a training command without torch installed. Every bad value
ends in one line ``stjobs.train: error: <option>: <what was wrong>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

from stjobs.errors import StjobsError

# The loss table lives in stjobs.train.losses (stdlib only); these names are read from here too.
from stjobs.train.losses import FULL_DIMENSION_LOSSES as FULL_DIMENSION_LOSSES
from stjobs.train.losses import GUIDED_LOSSES as GUIDED_LOSSES
from stjobs.train.losses import LOSS_ALIASES as LOSS_ALIASES
from stjobs.train.losses import LOSSES as LOSSES
from stjobs.train.losses import canonical_loss
from stjobs.train.losses import loss_name as loss_name

STRATEGIES = ("ddp", "dp", "fsdp", "single")
STRATEGY_ENV = "STJOBS_STRATEGY"

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MULTI_DATASET_SAMPLERS = ("proportional", "round_robin")  # sentence-transformers' MultiDatasetBatchSamplers values
DEFAULT_PER_DEVICE_BATCH_SIZE = 16

DEFAULT_LOGGING_STEPS = 10

_N = TypeVar("_N", int, float)


class TrainConfigError(StjobsError):
    """A training option is invalid; the message names the option, the value and the expected form."""

    exit_code = 2


@dataclass(frozen=True)
class TrainConfig:
    model: str
    train_data: tuple[DataSource, ...]  # one or more; several are named (check_sources)
    output_dir: Path
    eval_data: tuple[DataSource, ...] = ()
    loss: str | None = None  # for sources without their own; None: the default loss of the data kind (losses.py)
    # At most one of the two is given; the run resolves the other from the world size (see batch_sizes).
    per_device_batch_size: int | None = None
    global_batch_size: int | None = None
    max_steps: int | None = None  # exactly one of max_steps / epochs is set after parsing
    epochs: float | None = None
    learning_rate: float | None = None  # None: 5e-5, or TINY_LEARNING_RATE for a tiny-bert (see models.py)
    warmup_ratio: float = 0.1
    save_steps: int | None = None
    save_total_limit: int = 2
    logging_steps: int = DEFAULT_LOGGING_STEPS
    eval_steps: int | None = None
    seed: int = 42
    max_seq_length: int | None = None
    resume: bool = True
    evaluator: bool = True
    gather_across_devices: bool = True  # only has an effect with more than one process
    dataloader_workers: int | None = None  # None: 2 per process on GPUs, 0 on CPUs (every core runs a rank)
    group_by_length: bool = True
    precision: str = "auto"  # auto: bf16 from compute capability 8.0, fp16 on older GPUs, fp32 on CPU
    find_unused_parameters: bool = False
    fsdp_layer_class: str | None = None  # None: from the model's config.json (see models.fsdp_layer_class)
    guide_model: str | None = None  # the guide of GISTEmbedLoss / CachedGISTEmbedLoss
    throughput_skip_steps: int = 5  # warm-up steps left out of the steady-state samples/s
    strategy: str = "ddp"
    matryoshka_dims: tuple[int, ...] | None = None  # wraps every dataset's loss in MatryoshkaLoss
    multi_dataset_sampler: str = "proportional"  # sentence-transformers' default; only with several train sources
    gradient_sync: bool = True  # False: --no-gradient-sync, a benchmark bound (each DDP rank trains its own copy)

    def batch_sizes(self, world: int) -> tuple[int, int]:
        """(per device, global) for ``world`` processes; a global size must split evenly."""
        if self.global_batch_size is not None:
            if self.global_batch_size % world:
                raise TrainConfigError(
                    f"--global-batch-size: got {self.global_batch_size} for {world} processes; expected a multiple "
                    f"of {world} (each process takes an equal share)")
            return self.global_batch_size // world, self.global_batch_size
        per_device = self.per_device_batch_size or DEFAULT_PER_DEVICE_BATCH_SIZE
        return per_device, per_device * world

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.output_dir / "final"

    @property
    def use_evaluator(self) -> bool:
        return self.evaluator and bool(self.eval_data)

    def source_loss(self, source: DataSource) -> str | None:
        """The loss asked for ``source``: its own, else --loss (None: the data kind's default)."""
        return source.loss or self.loss


def _number(kind: Callable[[str], _N], expected: str, ok: Callable[[_N], bool]) -> Callable[[str], _N]:
    # argparse prefixes the message with "argument --option:", so the line names option, value and expected form.
    def convert(text: str) -> _N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; expected {expected}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"got {text!r}; expected {expected}")
        return value

    return convert


positive_int = _number(int, "a positive integer", lambda v: v > 0)
non_negative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _number(float, "a positive number", lambda v: v > 0)
ratio = _number(float, "a number in [0, 1)", lambda v: 0 <= v < 1)


# --- data sources: --train-data [NAME=]PATH[:LOSS], --eval-data [NAME=]PATH ------------------------------------------

DATA_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
SOURCE_FORMS = {"--train-data": "[NAME=]PATH[:LOSS]", "--eval-data": "[NAME=]PATH"}


@dataclass(frozen=True)
class DataSource:
    """One ``--train-data`` / ``--eval-data`` value: an optional dataset name, the data, an optional loss."""

    name: str | None
    path: str
    loss: str | None  # the canonical class name (stjobs.train.losses); None: --loss, else the kind's default

    @property
    def text(self) -> str:
        """The value as a command line would spell it."""
        return (f"{self.name}=" if self.name else "") + self.path + (f":{self.loss}" if self.loss else "")


def source_form(option: str) -> str:
    return SOURCE_FORMS.get(option, SOURCE_FORMS["--train-data"])


def parse_data_source(text: str, option: str = "--train-data") -> DataSource:
    """``[NAME=]PATH[:LOSS]``. A NAME is the text before the first ``=`` when it matches ``DATA_NAME_RE`` (so
    ``/data/a=b.jsonl`` is a path; write ``./a=b.jsonl`` for a file really named so); a LOSS is the text after
    the last ``:`` when it names a known loss or alias (case-insensitive), else the ``:`` belongs to the path.
    ``--eval-data`` takes no loss. Raises :class:`TrainConfigError` naming option, value and form."""
    name: str | None = None
    rest = text
    head, sep, tail = text.partition("=")
    if sep and DATA_NAME_RE.fullmatch(head):
        name, rest = head, tail
    loss: str | None = None
    path, sep, suffix = rest.rpartition(":")
    if sep and canonical_loss(suffix) is not None:
        loss, rest = canonical_loss(suffix), path
    if loss is not None and option == "--eval-data":
        raise TrainConfigError(f"{option}: got {text!r}; expected {source_form(option)} (a loss belongs to "
                               "--train-data: evaluation trains nothing)")
    if not rest.strip():
        raise TrainConfigError(f"{option}: got {text!r}, which names no data; expected {source_form(option)}")
    return DataSource(name=name, path=rest, loss=loss)


def check_sources(sources: Sequence[DataSource], option: str) -> None:
    """Several sources of one option need names, all distinct: they key the datasets, losses and evaluators."""
    if len(sources) < 2:
        return
    seen: dict[str, DataSource] = {}
    for source in sources:
        if source.name is None:
            raise TrainConfigError(
                f"{option}: got {source.text!r} among {len(sources)} values; expected NAME="
                f"{source_form(option).removeprefix('[NAME=]')} for each (the names tell the datasets apart)")
        if source.name in seen:
            raise TrainConfigError(
                f"{option}: got {source.text!r}, but the name {source.name!r} is already {seen[source.name].text!r}; "
                f"expected distinct names ({source_form(option)})")
        seen[source.name] = source


def data_sources(argv: Sequence[str], option: str) -> list[DataSource]:
    """Every value of ``option`` (``--opt VALUE`` and ``--opt=VALUE``) in a training command line, parsed and checked
    as the training will; raises :class:`TrainConfigError` for a bad one. For the snapshot and the plan's notes."""
    found: list[DataSource] = []
    args = list(argv)
    for index, arg in enumerate(args):
        if arg == option and index + 1 < len(args):
            found.append(parse_data_source(args[index + 1], option))
        elif arg.startswith(option + "="):
            found.append(parse_data_source(arg[len(option) + 1:], option))
    check_sources(found, option)
    return found


# The options naming data the job reads, and what the training reads as a local file (by suffix, with the
# datasets builder for it: stjobs.train.data.load_table) rather than a hub dataset name.
DATA_OPTIONS = ("--train-data", "--eval-data")
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def names_a_path(text: str) -> bool:
    """Whether a data value is meant as a local path (a file's suffix, or ``.``, ``/``, ``~`` first), which must
    then exist, rather than a hub dataset name."""
    return text.startswith((".", "/", "~")) or Path(text).suffix.lower() in FILE_BUILDERS


def data_paths(argv: Sequence[str]) -> list[tuple[str, DataSource]]:
    """(option, source) for every data value of a training command line that names a local path; an option with
    a malformed value is left out (the training names it in one line). For the checks made at submit."""
    found: list[tuple[str, DataSource]] = []
    for option in DATA_OPTIONS:
        try:
            sources = data_sources(argv, option)
        except TrainConfigError:
            continue
        found += [(option, source) for source in sources if names_a_path(source.path)]
    return found


def _source_type(option: str) -> Callable[[str], DataSource]:
    def convert(text: str) -> DataSource:
        try:
            return parse_data_source(text, option)
        except TrainConfigError as error:
            # argparse adds "argument --option: " itself.
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"{option}: ")) from None

    return convert


def matryoshka_dims(text: str) -> tuple[int, ...]:
    """``--matryoshka-dims 64,32,16``: distinct positive integers, in any order."""
    expected = "a comma list of distinct positive integers, e.g. 64,32,16"
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected {expected}") from None
    if not dims or min(dims) <= 0 or len(set(dims)) != len(dims):
        raise argparse.ArgumentTypeError(f"got {text!r}; expected {expected}")
    return dims


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse's default prints the whole usage block; a job log wants the reason on one line.
        self.exit(2, f"{self.prog}: error: {message.replace(chr(10), ' ')}\n")


def _batch_options(p: argparse.ArgumentParser) -> None:
    """The options that decide what one step sees: shared with the launcher's batch statement (batch_options)."""
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--per-device-batch-size", type=positive_int, default=None,
                       help=f"rows per process and step (default {DEFAULT_PER_DEVICE_BATCH_SIZE})")
    batch.add_argument("--global-batch-size", type=positive_int, default=None,
                       help="rows per step over all processes, split evenly between them")
    p.add_argument("--gather-across-devices", action=argparse.BooleanOptionalAction, default=True,
                   help="in-batch negatives from all processes (MultipleNegativesRankingLoss family)")


class _QuietParser(argparse.ArgumentParser):
    # Python 3.11's argparse exits on some errors (an ambiguous abbreviation such as --g) even with
    # exit_on_error=False: raise instead, so reading a plan's batch options never ends the process.
    def error(self, message: str) -> NoReturn:
        raise argparse.ArgumentError(None, message)


def batch_options(argv: Sequence[str]) -> argparse.Namespace | None:
    """The batch options of a training command line, read as the training will read them; None if invalid."""
    parser = _QuietParser(add_help=False, exit_on_error=False)
    _batch_options(parser)
    try:
        return parser.parse_known_args(list(argv))[0]
    except argparse.ArgumentError:
        return None  # the training run reports the bad value itself


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stjobs.train", description="Train a sentence-transformers model (one process per device).")
    p.add_argument("--model", required=True, help="local SentenceTransformer dir, all-MiniLM-L6-v2, or tiny-bert")
    p.add_argument("--train-data", required=True, action="append", type=_source_type("--train-data"),
                   help="[NAME=]PATH[:LOSS]: .jsonl/.json/.csv/.parquet file, saved dataset dir or name; repeat it "
                   "(with names) to train on several datasets, each with its own loss")
    p.add_argument("--eval-data", default=[], action="append", type=_source_type("--eval-data"),
                   help="[NAME=]PATH: held-out data (repeatable); each gets the evaluator of its kind")
    # Under stjobs the spec's output_dir arrives as STJOBS_OUTPUT_DIR; an explicit flag wins.
    default_output = os.environ.get("STJOBS_OUTPUT_DIR")
    p.add_argument("--output-dir", required=default_output is None, default=default_output, type=Path)
    p.add_argument("--loss", type=loss_name, default=None,
                   help=f"for sources without their own :LOSS; one of {', '.join(LOSSES)}")
    p.add_argument("--matryoshka-dims", type=matryoshka_dims, default=None,
                   help="e.g. 64,32,16: wrap every dataset's loss in MatryoshkaLoss at these dimensions")
    p.add_argument("--multi-dataset-sampler", choices=MULTI_DATASET_SAMPLERS, default="proportional",
                   help="several --train-data: proportional (to their sizes) or round_robin; one dataset per step")
    _batch_options(p)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=positive_int, default=None)
    length.add_argument("--epochs", type=positive_float, default=None, help="default 1 when --max-steps is unset")
    p.add_argument("--learning-rate", type=positive_float, default=None,
                   help="default 5e-5; 1e-3 for tiny-bert models, which start from random weights")
    p.add_argument("--warmup-ratio", type=ratio, default=0.1)
    p.add_argument("--save-steps", type=positive_int, default=None, help="checkpoint every N steps")
    p.add_argument("--save-total-limit", type=positive_int, default=2)
    p.add_argument("--logging-steps", type=positive_int, default=DEFAULT_LOGGING_STEPS)
    p.add_argument("--eval-steps", type=positive_int, default=None, help="also evaluate every N steps")
    p.add_argument("--seed", type=non_negative_int, default=42)
    p.add_argument("--max-seq-length", type=positive_int, default=None)
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore existing checkpoints")
    p.add_argument("--no-evaluator", dest="evaluator", action="store_false")
    p.add_argument("--dataloader-workers", type=non_negative_int, default=None,
                   help="data loading processes per training process (default: 2 on GPUs, 0 on CPUs)")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="batch texts of similar length together (less padding)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 on GPUs of compute capability 8.0 and up, fp16 on older ones, fp32 on CPU")
    p.add_argument("--find-unused-parameters", action="store_true",
                   help="DDP: for models with parameters that get no gradient in a step (slower)")
    p.add_argument("--fsdp-layer-class", default=None,
                   help="FSDP: the layer class to wrap (default: from the model's config, e.g. BertLayer)")
    p.add_argument("--guide-model", default=None, help="GISTEmbedLoss / CachedGISTEmbedLoss: the guide model")
    p.add_argument("--throughput-skip-steps", type=non_negative_int, default=5,
                   help="warm-up steps left out of the steady-state samples/s of the throughput event")
    p.add_argument("--no-gradient-sync", dest="gradient_sync", action="store_false",
                   help="benchmark bound only: DDP ranks skip the gradient all-reduce, each trains its own copy; "
                   "not a training configuration")
    return p


def validate(config: TrainConfig) -> None:
    """Cross-option rules; raises :class:`TrainConfigError`."""
    if config.strategy not in STRATEGIES:
        raise TrainConfigError(f"{STRATEGY_ENV}: got {config.strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if config.eval_steps is not None and not config.use_evaluator:
        raise TrainConfigError(
            f"--eval-steps: got {config.eval_steps}; expected it only together with --eval-data (and no --no-evaluator)"
        )
    check_sources(config.train_data, "--train-data")
    check_sources(config.eval_data, "--eval-data")
    asked = [config.source_loss(source) for source in config.train_data]
    for source in config.train_data:
        if config.source_loss(source) in GUIDED_LOSSES and config.guide_model is None:
            where = f"--train-data: got {source.text!r}" if source.loss else f"--loss: got {config.loss}"
            raise TrainConfigError(f"{where} without --guide-model; expected a guide model for it")
    if config.guide_model is not None and not GUIDED_LOSSES.intersection(asked):
        losses = "+".join(loss or "default" for loss in asked)
        raise TrainConfigError(f"--guide-model: got {config.guide_model!r} with loss {losses}; "
                               f"expected it only with {' or '.join(sorted(GUIDED_LOSSES))}")
    if config.matryoshka_dims is not None:
        # Losses left to the data kind's default are checked once the data is loaded (data.check_matryoshka).
        for source in config.train_data:
            if config.source_loss(source) in FULL_DIMENSION_LOSSES:
                raise TrainConfigError(matryoshka_refusal(config.matryoshka_dims, config.source_loss(source) or "",
                                                          source))
    if not config.gradient_sync and config.strategy != "ddp":
        raise TrainConfigError(f"--no-gradient-sync: got it with {STRATEGY_ENV}={config.strategy}; expected it only "
                               "with ddp (it skips DDP's gradient all-reduce)")
    if config.strategy == "fsdp" and config.use_evaluator:
        # The evaluator runs on one process, while FSDP needs every rank in every forward: it would hang or crash.
        raise TrainConfigError(
            f"--eval-data: got {' '.join(repr(source.text) for source in config.eval_data)} with "
            f"{STRATEGY_ENV}=fsdp; expected --no-evaluator (the evaluator is not supported with FSDP yet)"
        )


def matryoshka_refusal(dims: Sequence[int], loss: str, source: DataSource) -> str:
    """The one line refusing MatryoshkaLoss around a loss that needs the full embedding (SoftmaxLoss)."""
    return (f"--matryoshka-dims: got {','.join(map(str, dims))} with {loss} for --train-data {source.text!r}; "
            f"expected no --matryoshka-dims with {loss} (its classifier takes the full embedding dimension), or "
            "another loss for that data")


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> TrainConfig:
    """Parse the command line (and ``STJOBS_STRATEGY``); prints one line and exits 2 on any bad value."""
    parser = build_parser()
    ns = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    env = os.environ if environ is None else environ
    values = vars(ns)
    if values["max_steps"] is None and values["epochs"] is None:
        values["epochs"] = 1.0
    values["train_data"], values["eval_data"] = tuple(values["train_data"]), tuple(values["eval_data"])
    config = TrainConfig(strategy=env.get(STRATEGY_ENV, "ddp").strip().lower() or "ddp", **values)
    try:
        validate(config)
    except TrainConfigError as exc:
        parser.error(str(exc))
    return config
