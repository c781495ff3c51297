"""Training data: loading, deciding its kind from the columns, and the losses and evaluators that fit each kind.

Kinds (decided by column names, order-independent; any other columns are dropped):

* ``pairs``    -- ``anchor``, ``positive``
* ``triplets`` -- ``anchor``, ``positive``, ``negative``
* ``scored``   -- ``sentence1``, ``sentence2``, ``score``

The kind rules and loss table are plain Python so they can be checked without the ML stack; ``datasets`` and
``sentence_transformers`` are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stjobs.train.args import TrainConfigError

# The loss table lives in stjobs.train.losses (stdlib only); these names are read from here too.
from stjobs.train.losses import DEFAULT_LOSS as DEFAULT_LOSS
from stjobs.train.losses import IN_BATCH_NEGATIVE_LOSSES as IN_BATCH_NEGATIVE_LOSSES
from stjobs.train.losses import LOSS_KINDS as LOSS_KINDS
from stjobs.train.losses import DataKind as DataKind

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.evaluation import BaseEvaluator
    from torch import nn

# Column order matters: sentence-transformers feeds the text columns to the loss in dataset order.
KIND_COLUMNS: dict[DataKind, tuple[str, ...]] = {
    "triplets": ("anchor", "positive", "negative"),
    "pairs": ("anchor", "positive"),
    "scored": ("sentence1", "sentence2", "score"),
}
TEXT_COLUMNS = frozenset({"anchor", "positive", "negative", "sentence1", "sentence2"})

CACHED_MINI_BATCH_SIZE = 8
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
EVAL_SPLITS = ("validation", "dev", "eval", "test")


def detect_kind(columns: Sequence[str], option: str = "--train-data") -> DataKind:
    """The data kind for these column names; the richest kind wins (anchor/positive/negative -> triplets)."""
    present = set(columns)
    matches = [kind for kind, needed in KIND_COLUMNS.items() if present.issuperset(needed)]
    if not matches:
        expected = "; ".join(f"{kind}: {', '.join(cols)}" for kind, cols in KIND_COLUMNS.items())
        raise TrainConfigError(
            f"{option}: got columns [{', '.join(columns)}]; expected the columns of one kind ({expected})"
        )
    if "scored" in matches and len(matches) > 1:
        raise TrainConfigError(
            f"{option}: got columns [{', '.join(columns)}]; expected either anchor/positive[/negative] or "
            "sentence1/sentence2/score columns, not both"
        )
    return matches[0]


def resolve_loss(kind: DataKind, requested: str | None) -> str:
    """The loss to train with: ``requested`` if it fits ``kind``, else the kind's default when nothing was asked."""
    if requested is None:
        return DEFAULT_LOSS[kind]
    if requested not in LOSS_KINDS:
        raise TrainConfigError(f"--loss: got {requested!r}; expected one of {', '.join(LOSS_KINDS)}")
    if kind not in LOSS_KINDS[requested]:
        fits = ", ".join(name for name, kinds in LOSS_KINDS.items() if kind in kinds)
        needs = " or ".join("/".join(KIND_COLUMNS[k]) for k in sorted(LOSS_KINDS[requested]))
        raise TrainConfigError(
            f"--loss: got {requested!r}, which needs {needs} columns, but the data is {kind} "
            f"({'/'.join(KIND_COLUMNS[kind])}); expected one of {fits}"
        )
    return requested


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
    if path.suffix.lower() in FILE_BUILDERS or spec.startswith((".", "/", "~")):
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
    kind = detect_kind(list(table.column_names), option)
    columns = KIND_COLUMNS[kind]
    table = table.select_columns(list(columns))
    for name in columns:
        dtype = str(getattr(table.features[name], "dtype", table.features[name]))
        if name in TEXT_COLUMNS and dtype not in ("string", "large_string"):
            raise TrainConfigError(f"{option}: column {name!r} has type {dtype}; expected text (string)")
        if name == "score" and not dtype.startswith(("float", "int", "double")):
            raise TrainConfigError(f"{option}: column 'score' has type {dtype}; expected numbers")
    if kind == "scored":
        # Losses compare float scores with float similarities; an int column (0/1 labels) would fail there.
        table = table.cast_column("score", _float32())
    if len(table) == 0:
        raise TrainConfigError(f"{option}: got an empty dataset; expected at least one row")
    return table, kind


def _float32() -> Any:
    import datasets

    return datasets.Value("float32")


def build_loss(name: str, model: SentenceTransformer, world_size: int, gather: bool, batch_size: int,
               guide: SentenceTransformer | None = None) -> nn.Module:
    """The loss module; in-batch-negative losses see all processes' batches when ``gather`` and world_size > 1."""
    from sentence_transformers.sentence_transformer import losses

    gather_across = gather and world_size > 1
    mini_batch_size = min(CACHED_MINI_BATCH_SIZE, batch_size)
    if name == "MultipleNegativesRankingLoss":
        return losses.MultipleNegativesRankingLoss(model, gather_across_devices=gather_across)
    if name == "CachedMultipleNegativesRankingLoss":
        return losses.CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=mini_batch_size, gather_across_devices=gather_across
        )
    # The symmetric classes are deprecated in sentence-transformers 6: the same loss is MNRL in both directions.
    symmetric: dict[str, Any] = {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"}
    if name == "MultipleNegativesSymmetricRankingLoss":
        return losses.MultipleNegativesRankingLoss(model, gather_across_devices=gather_across, **symmetric)
    if name == "CachedMultipleNegativesSymmetricRankingLoss":
        return losses.CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=mini_batch_size, gather_across_devices=gather_across, **symmetric
        )
    if name in ("GISTEmbedLoss", "CachedGISTEmbedLoss"):
        if guide is None:
            raise TrainConfigError(f"--loss: got {name} without --guide-model; expected a guide model for it")
        if name == "GISTEmbedLoss":
            return losses.GISTEmbedLoss(model, guide, gather_across_devices=gather_across)
        return losses.CachedGISTEmbedLoss(model, guide, mini_batch_size=mini_batch_size,
                                          gather_across_devices=gather_across)
    if name == "CoSENTLoss":
        return losses.CoSENTLoss(model)
    if name == "CosineSimilarityLoss":
        return losses.CosineSimilarityLoss(model)
    raise TrainConfigError(f"--loss: got {name!r}; expected one of {', '.join(LOSS_KINDS)}")


def build_evaluator(table: Any, kind: DataKind, batch_size: int) -> BaseEvaluator:
    """Retrieval (ndcg@10) for pairs/triplets, Spearman correlation of cosine similarity for scored pairs."""
    from sentence_transformers.sentence_transformer import evaluation

    if kind == "scored":
        return evaluation.EmbeddingSimilarityEvaluator(
            list(table["sentence1"]), list(table["sentence2"]), [float(s) for s in table["score"]],
            batch_size=batch_size, similarity_fn_names=["cosine"], name="", write_csv=True,
        )
    queries: dict[str, Any] = {}  # the evaluator's value type is a union of text and media inputs
    corpus: dict[str, Any] = {}
    relevant: dict[str, set[str]] = {}
    query_ids: dict[str, str] = {}
    doc_ids: dict[str, str] = {}

    def doc_id(text: str) -> str:
        # Identical texts are one document, so a duplicate positive is not counted as a miss.
        if text not in doc_ids:
            doc_ids[text] = f"d{len(doc_ids)}"
            corpus[doc_ids[text]] = text
        return doc_ids[text]

    negatives = table["negative"] if kind == "triplets" else []
    for i, (anchor, positive) in enumerate(zip(table["anchor"], table["positive"], strict=True)):
        if anchor not in query_ids:
            query_ids[anchor] = f"q{len(query_ids)}"
            queries[query_ids[anchor]] = anchor
        relevant.setdefault(query_ids[anchor], set()).add(doc_id(positive))
        if negatives:
            doc_id(negatives[i])
    return evaluation.InformationRetrievalEvaluator(
        queries, corpus, relevant, batch_size=batch_size, show_progress_bar=False, name="",
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10], map_at_k=[10],
    )
