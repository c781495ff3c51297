"""What a run optimises and measures: the loss module of each dataset and the evaluator of each held-out one.

The names and the kinds they fit are the table in :mod:`stjobs.train.losses`; which kind a dataset is, is decided in
:mod:`stjobs.train.data`. sentence-transformers is imported inside the functions, so importing this stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stjobs.train.args import TrainConfigError
from stjobs.train.losses import FULL_DIMENSION_LOSSES, LOSS_KINDS, DataKind

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.evaluation import BaseEvaluator
    from torch import nn

CACHED_MINI_BATCH_SIZE = 8
# Kinds without an evaluator here: a labelled eval set would need a classifier the saved model does not have.
NO_EVALUATOR_KINDS: frozenset[DataKind] = frozenset({"labelled"})


def build_loss(name: str, model: SentenceTransformer, world_size: int, gather: bool, batch_size: int,
               guide: SentenceTransformer | None = None, num_labels: int | None = None,
               matryoshka_dims: Sequence[int] | None = None) -> nn.Module:
    """The loss module; in-batch-negative losses see all processes' batches when ``gather`` and world_size > 1.
    ``num_labels``: SoftmaxLoss's classes; ``matryoshka_dims``: wrap the loss in MatryoshkaLoss."""
    from sentence_transformers.sentence_transformer import losses

    base = _base_loss(name, model, world_size, gather, batch_size, guide, num_labels)
    if not matryoshka_dims:
        return base
    if name in FULL_DIMENSION_LOSSES:  # args.validate and data.check_matryoshka refuse it before this
        raise TrainConfigError(f"--matryoshka-dims: got them with {name}; expected another loss")
    return losses.MatryoshkaLoss(model, base, list(matryoshka_dims))


def _base_loss(name: str, model: SentenceTransformer, world_size: int, gather: bool, batch_size: int,
               guide: SentenceTransformer | None, num_labels: int | None) -> nn.Module:
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
    if name == "SoftmaxLoss":
        if num_labels is None or num_labels < 2:
            raise TrainConfigError(f"--loss: got SoftmaxLoss with {num_labels} label(s) in the data; expected "
                                   "labels of at least 2 classes (0 and 1 at least)")
        return losses.SoftmaxLoss(model, embedding_dimension=embedding_dimension(model), num_labels=num_labels)
    if name == "ContrastiveLoss":
        return losses.ContrastiveLoss(model)
    if name == "OnlineContrastiveLoss":
        return losses.OnlineContrastiveLoss(model)
    raise TrainConfigError(f"--loss: got {name!r}; expected one of {', '.join(LOSS_KINDS)}")


def embedding_dimension(model: Any) -> int:
    dimension = model.get_embedding_dimension()
    if not dimension:
        raise TrainConfigError("--model: the model does not say its embedding dimension; expected a model with a "
                               "pooling module")
    return int(dimension)


def check_matryoshka_dims(dims: Sequence[int] | None, model: Any, model_name: str) -> None:
    """Each Matryoshka dimension is a prefix of the embedding: none may be larger than the model's."""
    if not dims:
        return
    full = embedding_dimension(model)
    if max(dims) > full:
        raise TrainConfigError(
            f"--matryoshka-dims: got {','.join(map(str, dims))}, but {model_name} embeds in {full} dimensions; "
            f"expected dimensions of at most {full}"
        )


def build_evaluator(table: Any, kind: DataKind, batch_size: int, name: str = "") -> BaseEvaluator | None:
    """Retrieval (ndcg@10) for pairs/triplets, Spearman correlation of cosine similarity for scored pairs, None for
    labelled pairs (see NO_EVALUATOR_KINDS). ``name`` prefixes the metrics (several evaluators of one run)."""
    from sentence_transformers.sentence_transformer import evaluation

    if kind in NO_EVALUATOR_KINDS:
        return None
    if kind == "scored":
        return evaluation.EmbeddingSimilarityEvaluator(
            list(table["sentence1"]), list(table["sentence2"]), [float(s) for s in table["score"]],
            batch_size=batch_size, similarity_fn_names=["cosine"], name=name, write_csv=True,
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
        queries, corpus, relevant, batch_size=batch_size, show_progress_bar=False, name=name,
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10], map_at_k=[10],
    )


def _first_score(scores: list[float]) -> float:
    return scores[0]


def combine_evaluators(evaluators: Sequence[BaseEvaluator]) -> BaseEvaluator | None:
    """None, the one evaluator, or a SequentialEvaluator whose main score is the first evaluator's (the one the
    events report; sentence-transformers' default would be the last's)."""
    if not evaluators:
        return None
    if len(evaluators) == 1:
        return evaluators[0]
    from sentence_transformers.base.evaluation import SequentialEvaluator

    return SequentialEvaluator(evaluators, main_score_function=_first_score)


def primary_metric(evaluator: Any) -> str | None:
    """The metric the events report: the evaluator's primary one, or the first's of a SequentialEvaluator."""
    inner = getattr(evaluator, "evaluators", None)
    if inner:
        return primary_metric(inner[0])
    name = getattr(evaluator, "primary_metric", None)
    return str(name) if name else None
