"""An mpnet-base-shaped SentenceTransformer with random weights: the docs' benchmark model without a download.

The sentence-transformers distributed-training table was measured with ``microsoft/mpnet-base``. Its speed depends
on the architecture and the shapes (layers, width, vocabulary, sequence length), not on the trained weights, so the
GPU check and ``stjobs bench`` build the same architecture from its config, with random weights and a WordPiece
tokenizer made from the training texts (padded to mpnet-base's vocabulary size, so the embedding is the shape it is
there). Smaller sizes of the same architecture let the bench run on CPUs in minutes; their vocabulary shrinks with
them (VOCAB_SIZES), so the embedding keeps its share of the weights.

Standard library at import: torch, transformers and sentence-transformers are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MPNET_VOCAB = 30527  # microsoft/mpnet-base's vocabulary size
# The vocabulary each size is padded to. In mpnet-base the embedding is a fifth of the weights (23M of 109M), and DDP
# all-reduces its whole gradient every step; a small model with the full vocabulary would be mostly embedding (7.8M
# of 11M), so its steps would measure the all-reduce and the optimizer, not the encoder. The smaller sizes keep the
# base model's share instead (the tokenizer's own words, from the texts, always fit: at most TEXT_VOCAB).
VOCAB_SIZES = {"base": MPNET_VOCAB, "small": 4096, "tiny": 0}
TEXT_VOCAB = 4000
# MPNetConfig's defaults are mpnet-base's (12 layers, 768 wide, 12 heads, 3072 feed-forward): "base" adds nothing.
SIZES: dict[str, dict[str, int]] = {
    "base": {},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
}
TOKENIZER_MAX_LENGTH = 512  # mpnet-base's; the training's --max-seq-length cuts below it
LAYER_CLASS = "MPNetLayer"  # the block FSDP wraps as one unit (the docs' BertLayer, for this architecture)


def describe(size: str) -> str:
    """``mpnet-base architecture (12 x 768), random weights`` and the like, for tables and results."""
    shape = {"hidden_size": 768, "num_hidden_layers": 12, **SIZES[size]}
    return (f"mpnet-{size} architecture ({shape['num_hidden_layers']} x {shape['hidden_size']}), "
            "random weights")


def build_mpnet(texts: list[str], out: Path, size: str = "base", seed: int = 0) -> Path:
    """Save a SentenceTransformer (MPNet, mean pooling) of ``size`` under ``out`` and return its directory
    (``out/model``); the Hugging Face parts go to ``out/hf``. Same texts, size and seed: the same model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import MPNetConfig, MPNetModel

    from stjobs.train.models import tiny_vocab, wordpiece_tokenizer

    if size not in SIZES:
        raise ValueError(f"size: got {size!r}; expected one of {', '.join(SIZES)}")
    vocab = tiny_vocab(texts, size=TEXT_VOCAB)
    for index in range(len(vocab), VOCAB_SIZES[size]):
        vocab[f"[unused{index}]"] = index
    fast = wordpiece_tokenizer(vocab, TOKENIZER_MAX_LENGTH)
    shape: dict[str, Any] = dict(SIZES[size])
    config = MPNetConfig(vocab_size=len(vocab), pad_token_id=vocab["[PAD]"], **shape)
    from transformers.utils import logging as hf_logging

    # Saving and reloading draw transformers' progress bars ("Writing model shards", "Loading weights"): noise
    # in the bench's and the GPU check's console for a model that takes a second to build.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with torch.random.fork_rng(devices=[]):  # seeded weights without moving the caller's RNG stream
            torch.manual_seed(seed)
            MPNetModel(config).save_pretrained(str(out / "hf"))
        fast.save_pretrained(str(out / "hf"))
        transformer = Transformer(str(out / "hf"), max_seq_length=TOKENIZER_MAX_LENGTH)
        model_dir = out / "model"
        SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")]).save(
            str(model_dir))
    finally:
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    return model_dir
