"""Training data: loading, deciding its kind from the columns, and the losses and evaluators that fit each kind.

Kinds (decided by column names, order-independent; any other columns are dropped):

* ``pairs``    -- ``anchor``, ``positive``
* ``triplets`` -- ``anchor``, ``positive``, ``negative``
* ``scored``   -- ``sentence1``, ``sentence2``, ``score`` (a similarity, any number)
* ``labelled`` -- ``premise``, ``hypothesis``, ``label`` or ``sentence1``, ``sentence2``, ``label`` (class ids
  0, 1, ...: NLI's entailment/neutral/contradiction, or 0/1 for the contrastive losses)

The kind rules are plain Python so they can be checked without the ML stack (the loss table is
:mod:`stjobs.train.losses`); ``datasets`` is imported inside the functions that need it. The loss modules and
evaluators built for a kind are in :mod:`stjobs.train.objectives`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stjobs.train.args import FILE_BUILDERS as FILE_BUILDERS
from stjobs.train.args import DataSource, TrainConfig, TrainConfigError, matryoshka_refusal, names_a_path

# The loss table lives in stjobs.train.losses (stdlib only), the loss and evaluator builders in
# stjobs.train.objectives; these names are read from here too.
from stjobs.train.losses import BINARY_LABEL_LOSSES, FULL_DIMENSION_LOSSES, LOSS_KINDS
from stjobs.train.losses import DEFAULT_LOSS as DEFAULT_LOSS
from stjobs.train.losses import IN_BATCH_NEGATIVE_LOSSES as IN_BATCH_NEGATIVE_LOSSES
from stjobs.train.losses import DataKind as DataKind
from stjobs.train.objectives import build_evaluator as build_evaluator
from stjobs.train.objectives import build_loss as build_loss

# The column layouts of each kind, the richest of a family first. Column order matters: sentence-transformers feeds
# the text columns to the loss in dataset order, and takes a column named label or score as the label.
KIND_LAYOUTS: tuple[tuple[DataKind, tuple[str, ...]], ...] = (
    ("triplets", ("anchor", "positive", "negative")),
    ("pairs", ("anchor", "positive")),
    ("scored", ("sentence1", "sentence2", "score")),
    ("labelled", ("premise", "hypothesis", "label")),
    ("labelled", ("sentence1", "sentence2", "label")),
)
# Each kind's first layout: what messages name.
KIND_COLUMNS: dict[DataKind, tuple[str, ...]] = {}
for _kind, _columns in KIND_LAYOUTS:
    KIND_COLUMNS.setdefault(_kind, _columns)
TEXT_COLUMNS = frozenset({"anchor", "positive", "negative", "sentence1", "sentence2", "premise", "hypothesis"})
LABELS_EXPECTED = "expected integers from 0 (class ids; a similarity goes in a 'score' column)"
EVAL_SPLITS = ("validation", "dev", "eval", "test")


def kind_columns(kind: DataKind) -> str:
    """The column layouts of ``kind`` as messages name them: ``premise/hypothesis/label or sentence1/...``."""
    return " or ".join("/".join(columns) for each, columns in KIND_LAYOUTS if each == kind)


def detect_layout(columns: Sequence[str], option: str = "--train-data") -> tuple[DataKind, tuple[str, ...]]:
    """The data kind for these column names and the columns it uses; the richest of a family wins
    (anchor/positive/negative -> triplets). Columns of two kinds at once are refused: which one was meant?"""
    present = set(columns)
    matches = [(kind, needed) for kind, needed in KIND_LAYOUTS if present.issuperset(needed)]
    if not matches:
        expected = "; ".join(f"{kind}: {', '.join(cols)}" for kind, cols in KIND_LAYOUTS)
        raise TrainConfigError(
            f"{option}: got columns [{', '.join(columns)}]; expected the columns of one kind ({expected})"
        )
    if len(matches) == 2 and [kind for kind, _ in matches] == ["triplets", "pairs"]:
        matches = matches[:1]
    if len(matches) > 1:
        found = "; ".join(f"{kind}: {', '.join(cols)}" for kind, cols in matches)
        raise TrainConfigError(
            f"{option}: got columns [{', '.join(columns)}]; expected the columns of one kind, not of several "
            f"({found})"
        )
    return matches[0]


def detect_kind(columns: Sequence[str], option: str = "--train-data") -> DataKind:
    """The data kind for these column names (see :func:`detect_layout`)."""
    return detect_layout(columns, option)[0]


def resolve_loss(kind: DataKind, requested: str | None, option: str = "--loss") -> str:
    """The loss to train with: ``requested`` if it fits ``kind``, else the kind's default when nothing was asked.
    ``option`` names where the request came from (``--loss``, or the ``--train-data`` value that named it)."""
    if requested is None:
        return DEFAULT_LOSS[kind]
    if requested not in LOSS_KINDS:
        raise TrainConfigError(f"{option}: got {requested!r}; expected one of {', '.join(LOSS_KINDS)}")
    if kind not in LOSS_KINDS[requested]:
        fits = ", ".join(name for name, kinds in LOSS_KINDS.items() if kind in kinds)
        needs = " or ".join(kind_columns(k) for k in sorted(LOSS_KINDS[requested]))
        raise TrainConfigError(
            f"{option}: got {requested!r}, which needs {needs} columns, but the data is {kind} "
            f"({kind_columns(kind)}); expected one of {fits}"
        )
    return requested


def check_labels(loss: str, labels: Sequence[int], option: str = "--train-data") -> None:
    """The contrastive losses read a label as similar (1) or not (0); any other class id has no meaning to them."""
    if loss in BINARY_LABEL_LOSSES and not set(labels) <= {0, 1}:
        raise TrainConfigError(
            f"{option}: got labels {', '.join(map(str, sorted(labels)))} for {loss}; expected only 0 (dissimilar) "
            "and 1 (similar) pairs, or SoftmaxLoss for class ids"
        )


def label_values(table: Any) -> list[int]:
    """The distinct labels of a prepared labelled table, sorted (SoftmaxLoss has max + 1 classes)."""
    return sorted(set(table["label"]))


def load_table(spec: str, option: str, split: str = "train") -> Any:
    """A ``datasets.Dataset`` from a local file, a ``save_to_disk`` directory, or a dataset name (online only)."""
    import datasets

    path = Path(spec).expanduser()
    if path.is_file():
        builder = FILE_BUILDERS.get("".join(path.suffixes[-1:]).lower())
        if builder is None:
            raise TrainConfigError(f"{option}: got {spec!r}; expected a file ending in {', '.join(FILE_BUILDERS)}")
        return datasets.load_dataset(builder, data_files=str(path.resolve()), split="train")
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise TrainConfigError(
                f"{option}: got directory {spec!r}; expected a dataset saved with save_to_disk (dataset_info.json)"
            ) from None
        if isinstance(loaded, datasets.DatasetDict):
            return _pick_split(loaded, spec, option, split)
        return loaded
    if names_a_path(spec):
        raise TrainConfigError(f"{option}: got {spec!r}; expected an existing file or directory")
    try:
        loaded = datasets.load_dataset(spec)
    except Exception as exc:  # hub errors come in many types; the user needs the name and the reason
        raise TrainConfigError(
            f"{option}: got dataset name {spec!r} but it could not be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); expected a local file/dir or a reachable hub dataset"
        ) from None
    return _pick_split(loaded, spec, option, split)


def _pick_split(loaded: Any, spec: str, option: str, split: str) -> Any:
    names = list(loaded.keys())
    wanted = (split,) if split == "train" else EVAL_SPLITS
    for name in wanted:
        if name in names:
            return loaded[name]
    raise TrainConfigError(f"{option}: got {spec!r} with splits {names}; expected a split named {' or '.join(wanted)}")


def prepare(table: Any, option: str) -> tuple[Any, DataKind]:
    """Keep only the kind's columns, in the order the loss expects, and check their types."""
    kind, columns = detect_layout(list(table.column_names), option)
    table = table.select_columns(list(columns))
    for name in columns:
        dtype = str(getattr(table.features[name], "dtype", table.features[name]))
        if name in TEXT_COLUMNS and dtype not in ("string", "large_string"):
            raise TrainConfigError(f"{option}: column {name!r} has type {dtype}; expected text (string)")
        if name == "score" and not dtype.startswith(("float", "int", "double")):
            raise TrainConfigError(f"{option}: column 'score' has type {dtype}; expected numbers")
        if name == "label" and not dtype.startswith(("int", "uint")):
            raise TrainConfigError(f"{option}: column 'label' has type {dtype}; {LABELS_EXPECTED}")
    if len(table) == 0:
        raise TrainConfigError(f"{option}: got an empty dataset; expected at least one row")
    if kind == "scored":
        # Losses compare float scores with float similarities; an int column (0/1 labels) would fail there.
        table = table.cast_column("score", _value("float32"))
    if kind == "labelled":
        labels = table["label"]
        if any(label is None for label in labels):
            raise TrainConfigError(f"{option}: column 'label' has empty values; {LABELS_EXPECTED}")
        if min(labels) < 0:
            raise TrainConfigError(f"{option}: column 'label' holds {min(labels)}; {LABELS_EXPECTED}")
        # Cross-entropy wants int64 class ids whatever width the file gave them.
        table = table.cast_column("label", _value("int64"))
    return table, kind


def _value(dtype: str) -> Any:
    import datasets

    return datasets.Value(dtype)


# --- the run's datasets ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedData:
    """One ``--train-data`` / ``--eval-data`` source, loaded and prepared, with the loss it trains (train only)."""

    source: DataSource
    option: str  # how messages name it: --train-data, or --train-data NAME when there are names
    table: Any
    kind: DataKind
    loss: str | None = None
    labels: tuple[int, ...] = ()  # labelled kind: the distinct class ids

    @property
    def num_labels(self) -> int | None:
        return max(self.labels) + 1 if self.labels else None

    def describe(self) -> dict[str, Any]:
        """The start event's entry for a training dataset."""
        return {"name": self.source.name, "kind": self.kind, "loss": self.loss, "rows": len(self.table)}


def source_option(option: str, source: DataSource) -> str:
    return f"{option} {source.name}" if source.name else option


def load_train_data(config: TrainConfig) -> list[LoadedData]:
    """Every training source, prepared, with its loss chosen and checked against the data (kind, labels,
    Matryoshka): one line for the first problem, before the model loads."""
    loaded = []
    for source in config.train_data:
        option = source_option("--train-data", source)
        table, kind = prepare(load_table(source.path, option), option)
        loss = resolve_loss(kind, config.source_loss(source), option if source.loss else "--loss")
        labels = tuple(label_values(table)) if kind == "labelled" else ()
        check_labels(loss, labels, option)
        if config.matryoshka_dims and loss in FULL_DIMENSION_LOSSES:
            raise TrainConfigError(matryoshka_refusal(config.matryoshka_dims, loss, source))
        loaded.append(LoadedData(source, option, table, kind, loss, labels))
    return loaded


def load_eval_data(config: TrainConfig) -> list[LoadedData]:
    """Every held-out source, prepared (evaluators are built from those of a kind that has one)."""
    loaded = []
    for source in config.eval_data:
        option = source_option("--eval-data", source)
        table, kind = prepare(load_table(source.path, option, "eval"), option)
        loaded.append(LoadedData(source, option, table, kind))
    return loaded
