"""Strategy pieces without a training run: the length-grouped sampler, the FSDP layer class, the losses."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from stjobs.train.args import TrainConfigError


def table(rows: int, seed: int = 0, duplicates: int = 0) -> object:
    from datasets import Dataset

    rng = random.Random(seed)
    anchors = [" ".join("w" * rng.randint(1, 9) for _ in range(rng.randint(1, 60))) + f" #{i}" for i in range(rows)]
    for i in range(duplicates):  # the same anchor text again in another row
        anchors[rows - 1 - i] = anchors[i]
    return Dataset.from_dict({"anchor": anchors, "positive": [f"p {i}" for i in range(rows)]})


def sampler(data: object, batch_size: int, drop_last: bool = False, unique: bool = False, world: int = 1,
            seed: int = 3) -> object:
    from stjobs.train import sampler as module

    kind = module.UniqueTextBatchSampler if unique else module.LengthGroupedBatchSampler
    made = kind(data, batch_size=batch_size, drop_last=drop_last, seed=seed)
    made.world = world
    return made


def padding(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of a batch's cells (rows x longest row) that would be padding."""
    cells = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / cells


def test_every_row_once_and_far_less_padding_than_random() -> None:
    from stjobs.train.sampler import text_lengths

    data = table(1000)
    grouped = list(sampler(data, 16))
    flat = sorted(i for batch in grouped for i in batch)
    assert flat == list(range(1000)) and len(grouped) == len(sampler(data, 16)) == 63
    lengths = text_lengths(data)
    rng = random.Random(1)
    order = list(range(1000))
    rng.shuffle(order)
    shuffled = [order[i:i + 16] for i in range(0, 1000, 16)]
    assert padding(grouped, lengths) < padding(shuffled, lengths) / 3


def test_order_is_seeded_per_epoch() -> None:
    data = table(300)
    first, again = sampler(data, 8), sampler(data, 8)
    assert list(first) == list(again)
    again.set_epoch(1)
    assert list(first) != list(again)
    assert list(sampler(data, 8, seed=4)) != list(first)


def test_drop_last_keeps_only_full_batches() -> None:
    grouped = list(sampler(table(100), 16, drop_last=True))
    assert len(grouped) == 6 and all(len(b) == 16 for b in grouped)


def test_the_batches_of_one_step_have_neighbouring_lengths() -> None:
    """Under DDP batch i goes to rank i % world: the two batches of a step must come from adjacent lengths."""
    from stjobs.train.sampler import text_lengths

    data = table(2048, seed=5)
    lengths = text_lengths(data)
    grouped = list(sampler(data, 16, world=2))
    longest = [max(lengths[i] for i in batch) for batch in grouped]
    within = [abs(longest[i] - longest[i + 1]) for i in range(0, len(longest) - 1, 2)]
    across = [abs(longest[i] - longest[i + 1]) for i in range(1, len(longest) - 1, 2)]
    assert sum(within) * 4 < sum(across)


def test_in_batch_negative_batches_never_repeat_a_text() -> None:
    data = table(200, duplicates=40)
    grouped = list(sampler(data, 16, unique=True))
    assert sorted(i for b in grouped for i in b) == list(range(200))
    for batch in grouped:
        texts = [data[i]["anchor"] for i in batch]
        assert len(texts) == len(set(texts))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stjobs.train.models import build_tiny_model

    return build_tiny_model(["a small text", "another text here", "more words to learn"],
                            tmp_path_factory.mktemp("tiny") / "model", seed=1)


def test_fsdp_layer_class_comes_from_the_config(tiny: Path, hf_offline: None) -> None:
    from stjobs.train.models import fsdp_layer_class, load_model, model_type

    assert model_type(str(tiny)) == "bert"
    model = load_model(str(tiny), None)
    assert fsdp_layer_class(str(tiny), model, None) == "BertLayer"
    assert fsdp_layer_class(str(tiny), model, "BertLayer") == "BertLayer"
    with pytest.raises(TrainConfigError, match=r"--fsdp-layer-class: layer class 'MPNetLayer' is not in the model; "
                                               r"expected one of .*BertLayer"):
        fsdp_layer_class(str(tiny), model, "MPNetLayer")


def test_fsdp_layer_class_unknown_model_type_asks_for_the_option(tiny: Path, tmp_path: Path,
                                                                 hf_offline: None) -> None:
    from stjobs.train.models import fsdp_layer_class, load_model

    model = load_model(str(tiny), None)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "my-own-arch"}))
    with pytest.raises(TrainConfigError, match=r"--fsdp-layer-class: not given, and model type 'my-own-arch'"):
        fsdp_layer_class(str(odd), model, None)


@pytest.mark.parametrize("name", ["MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss",
                                  "MultipleNegativesSymmetricRankingLoss",
                                  "CachedMultipleNegativesSymmetricRankingLoss", "GISTEmbedLoss",
                                  "CachedGISTEmbedLoss"])
def test_in_batch_negative_losses_gather_across_devices_by_default(name: str, tiny: Path, hf_offline: None) -> None:
    from stjobs.train.data import IN_BATCH_NEGATIVE_LOSSES, build_loss
    from stjobs.train.models import load_model

    model = load_model(str(tiny), None)
    assert name in IN_BATCH_NEGATIVE_LOSSES
    loss = build_loss(name, model, world_size=2, gather=True, batch_size=16, guide=model)
    assert loss.gather_across_devices is True
    assert build_loss(name, model, world_size=1, gather=True, batch_size=16, guide=model).gather_across_devices is False
    assert build_loss(name, model, world_size=2, gather=False, batch_size=16, guide=model).gather_across_devices \
        is False
    if "Symmetric" in name:
        assert tuple(loss.directions) == ("query_to_doc", "doc_to_query")


@pytest.mark.parametrize("unique", [False, True])
def test_two_ranks_of_half_batches_get_the_rows_of_one_full_batch(unique: bool) -> None:
    """Step k of 2 processes x B/2 holds exactly the rows of step k of 1 process x B: DDP parity needs it."""
    data = table(1000, seed=7)
    whole = list(sampler(data, 16, unique=unique))
    halves = list(sampler(data, 8, unique=unique, world=2))
    steps = [sorted(halves[i] + halves[i + 1]) for i in range(0, len(halves) - 1, 2)]
    assert steps[:len(whole) - 1] == [sorted(batch) for batch in whole[:len(whole) - 1]]


def test_parameters_no_embedding_uses_are_found(tiny: Path, hf_offline: None) -> None:
    """A mean-pooled BERT never uses its pooler: DDP without the unused-parameter search would fail on it."""
    from stjobs.train.models import load_model, unused_parameters

    model = load_model(str(tiny), None)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    assert unused_parameters(model) == ["0.model.pooler.dense.weight", "0.model.pooler.dense.bias"]
    assert all(param.requires_grad for param in model.parameters())
    assert all(param.grad is None for param in model.parameters()) and model.training
    assert all(param.equal(before[name]) for name, param in model.named_parameters())
