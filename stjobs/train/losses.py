"""The losses the built-in training knows: their names, the short spellings users type, the data kinds each one
learns from, the default loss per kind, and which ones take their negatives from the batch.

Standard library only, and no other stjobs module: ``stjobs render`` reads this table to check and describe a
training command without torch installed, and :mod:`stjobs.train.args` parses ``--loss`` and ``--train-data
PATH:LOSS`` with it. The loss modules themselves are built in :func:`stjobs.train.data.build_loss`.
"""

from __future__ import annotations

import argparse
from typing import Literal

# The data kinds, decided from a dataset's column names (see stjobs.train.data.KIND_LAYOUTS).
DataKind = Literal["pairs", "triplets", "scored", "labelled"]
KINDS: tuple[DataKind, ...] = ("pairs", "triplets", "scored", "labelled")

# Canonical loss names (sentence-transformers class names) and the short spellings users type.
LOSSES = (
    "MultipleNegativesRankingLoss",
    "CachedMultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "CachedMultipleNegativesSymmetricRankingLoss",
    "GISTEmbedLoss",
    "CachedGISTEmbedLoss",
    "CoSENTLoss",
    "CosineSimilarityLoss",
    "SoftmaxLoss",
    "ContrastiveLoss",
    "OnlineContrastiveLoss",
)
LOSS_ALIASES = {
    "mnrl": "MultipleNegativesRankingLoss",
    "cmnrl": "CachedMultipleNegativesRankingLoss",
    "cached-mnrl": "CachedMultipleNegativesRankingLoss",
    "mnsrl": "MultipleNegativesSymmetricRankingLoss",
    "cmnsrl": "CachedMultipleNegativesSymmetricRankingLoss",
    "gist": "GISTEmbedLoss",
    "cached-gist": "CachedGISTEmbedLoss",
    "cosent": "CoSENTLoss",
    "cosine": "CosineSimilarityLoss",
    "softmax": "SoftmaxLoss",
    "contrastive": "ContrastiveLoss",
    "online-contrastive": "OnlineContrastiveLoss",
}

# Which data kinds each loss can learn from, and the default loss per kind.
LOSS_KINDS: dict[str, frozenset[DataKind]] = {
    "MultipleNegativesRankingLoss": frozenset({"pairs", "triplets"}),
    "CachedMultipleNegativesRankingLoss": frozenset({"pairs", "triplets"}),
    "MultipleNegativesSymmetricRankingLoss": frozenset({"pairs", "triplets"}),
    "CachedMultipleNegativesSymmetricRankingLoss": frozenset({"pairs", "triplets"}),
    "GISTEmbedLoss": frozenset({"pairs", "triplets"}),
    "CachedGISTEmbedLoss": frozenset({"pairs", "triplets"}),
    "CoSENTLoss": frozenset({"scored"}),
    "CosineSimilarityLoss": frozenset({"scored"}),
    "SoftmaxLoss": frozenset({"labelled"}),
    "ContrastiveLoss": frozenset({"labelled"}),
    "OnlineContrastiveLoss": frozenset({"labelled"}),
}
DEFAULT_LOSS: dict[DataKind, str] = {
    "pairs": "MultipleNegativesRankingLoss",
    "triplets": "MultipleNegativesRankingLoss",
    "scored": "CoSENTLoss",
    "labelled": "SoftmaxLoss",
}
# Losses whose negatives are the other rows of the batch: under data parallelism they gather every process's
# embeddings by default (gather_across_devices), so 2 processes x B/2 rows see the negatives of 1 x B. Their
# batches must not repeat a text (it would be scored as a negative of itself).
IN_BATCH_NEGATIVE_LOSSES = frozenset({
    "MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss", "MultipleNegativesSymmetricRankingLoss",
    "CachedMultipleNegativesSymmetricRankingLoss", "GISTEmbedLoss", "CachedGISTEmbedLoss",
})
# The losses that need a guide model (--guide-model).
GUIDED_LOSSES = frozenset({"GISTEmbedLoss", "CachedGISTEmbedLoss"})
# Pair losses whose label says similar (1) or not (0): any other label value has no meaning to them.
BINARY_LABEL_LOSSES = frozenset({"ContrastiveLoss", "OnlineContrastiveLoss"})
# SoftmaxLoss trains a classifier on (u, v, |u - v|) of the full embedding: MatryoshkaLoss would feed it truncated
# embeddings its input layer does not fit.
FULL_DIMENSION_LOSSES = frozenset({"SoftmaxLoss"})


def canonical_loss(text: str) -> str | None:
    """The canonical loss class name for ``text`` (case-insensitive, short aliases allowed), or None."""
    lowered = text.strip().lower()
    for name in LOSSES:
        if name.lower() == lowered:
            return name
    return LOSS_ALIASES.get(lowered)


def loss_name(text: str) -> str:
    """``--loss``'s argparse type: the canonical name, or an ArgumentTypeError naming the value and the choices."""
    name = canonical_loss(text)
    if name is None:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected one of {', '.join(LOSSES)}")
    return name
