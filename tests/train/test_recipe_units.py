"""Units of the multi-dataset recipe with the ML stack but no training run: labelled data, the losses and evaluators
built for it, and the batch samplers of several datasets (per dataset, and one dataset per step on every rank)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stjobs.train import recipe_data
from stjobs.train.args import TrainConfigError, parse_config


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return recipe_data.write_recipe(tmp_path_factory.mktemp("recipe"), train_rows=120, eval_rows=30, seed=2)


@pytest.fixture(scope="module")
def tiny(recipe: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny-bert of the recipe's texts, loaded."""
    from stjobs.train.data import load_table, prepare
    from stjobs.train.models import build_tiny_model, load_model, training_texts

    texts: list[str] = []
    for stem in ("nli-train", "sts-train"):
        table, kind = prepare(load_table(str(recipe[stem]), "--train-data"), "--train-data")
        texts += training_texts(table, kind)
    return load_model(str(build_tiny_model(texts, tmp_path_factory.mktemp("tiny") / "m", seed=1)), None)


# --- labelled data -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("labels", "needle"), [
    ([0.0, 1.0], "column 'label' has type float64; expected integers from 0"),
    (["entailment", "neutral"], "column 'label' has type string; expected integers from 0"),
    ([0, -1, 2], "column 'label' holds -1; expected integers from 0"),
    ([0, None, 1], "column 'label' has empty values; expected integers from 0"),
])
def test_labels_must_be_class_ids(labels: list[Any], needle: str, tmp_path: Path, hf_offline: None) -> None:
    from stjobs.train.data import load_table, prepare

    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": label} for i, label in enumerate(labels)]
    path = jsonl(tmp_path / "nli.jsonl", rows)
    with pytest.raises(TrainConfigError) as raised:
        prepare(load_table(str(path), "--train-data"), "--train-data")
    assert str(raised.value).startswith("--train-data: ") and needle in str(raised.value), str(raised.value)


def test_labelled_data_keeps_its_texts_then_int64_labels(tmp_path: Path, hf_offline: None) -> None:
    from stjobs.train.data import label_values, load_table, prepare
    from stjobs.train.models import training_texts

    rows = [{"label": i % 3, "id": i, "hypothesis": f"h{i}", "premise": f"p{i}"} for i in range(6)]
    table, kind = prepare(load_table(str(jsonl(tmp_path / "a.jsonl", rows)), "--train-data"), "--train-data")
    assert kind == "labelled" and table.column_names == ["premise", "hypothesis", "label"]
    assert table.features["label"].dtype == "int64" and label_values(table) == [0, 1, 2]
    assert training_texts(table, kind)[:4] == ["p0", "h0", "p1", "h1"]  # tiny-bert's vocabulary sees both texts
    pairs = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i % 2} for i in range(4)]
    table, kind = prepare(load_table(str(jsonl(tmp_path / "b.csv.jsonl", pairs)), "--eval-data"), "--eval-data")
    assert kind == "labelled" and table.column_names == ["sentence1", "sentence2", "label"]
    scored = [{"sentence1": "a", "sentence2": "b", "score": 1}]
    assert prepare(load_table(str(jsonl(tmp_path / "c.jsonl", scored)), "--x"), "--x")[1] == "scored"


@pytest.mark.parametrize(("extra", "needle"), [
    (["--train-data", "nli={nli}:contrastive", "--train-data", "stsb={sts}"],
     "--train-data nli: got labels 0, 1, 2 for ContrastiveLoss; expected only 0 (dissimilar) and 1"),
    (["--train-data", "nli={nli}", "--train-data", "stsb={sts}", "--matryoshka-dims", "32,16"],
     "--matryoshka-dims: got 32,16 with SoftmaxLoss for --train-data 'nli="),
    (["--train-data", "nli={nli}", "--train-data", "stsb={sts}:mnrl"],
     "--train-data stsb: got 'MultipleNegativesRankingLoss', which needs anchor/positive"),
    (["--train-data", "nli={nli}", "--train-data", "stsb={sts}", "--loss", "cosent"],
     "--loss: got 'CoSENTLoss', which needs sentence1/sentence2/score columns, but the data is labelled"),
])
def test_each_dataset_is_checked_against_its_loss(extra: list[str], needle: str, recipe: dict[str, Path],
                                                  hf_offline: None) -> None:
    from stjobs.train.data import load_train_data

    argv = [part.format(nli=recipe["nli-train"], sts=recipe["sts-train"]) for part in extra]
    config = parse_config(["--model", "m", "--output-dir", "/tmp/o", *argv], environ={})
    with pytest.raises(TrainConfigError) as raised:
        load_train_data(config)
    assert needle in str(raised.value), str(raised.value)


def test_load_train_data_gives_each_dataset_its_loss_and_classes(recipe: dict[str, Path], hf_offline: None) -> None:
    from stjobs.train.data import load_train_data

    config = parse_config(["--model", "m", "--output-dir", "/tmp/o", "--train-data", f"nli={recipe['nli-train']}",
                           "--train-data", f"stsb={recipe['sts-train']}:cosine"], environ={})
    nli, sts = load_train_data(config)
    assert (nli.kind, nli.loss, nli.num_labels, nli.option) == ("labelled", "SoftmaxLoss", 3, "--train-data nli")
    assert (sts.kind, sts.loss, sts.num_labels) == ("scored", "CosineSimilarityLoss", None)
    assert sts.describe() == {"name": "stsb", "kind": "scored", "loss": "CosineSimilarityLoss", "rows": 120}


# --- losses and evaluators -----------------------------------------------------------------------------------------

def test_labelled_losses_and_matryoshka(tiny: Any) -> None:
    from sentence_transformers.sentence_transformer import losses

    from stjobs.train.objectives import build_loss, check_matryoshka_dims

    softmax = build_loss("SoftmaxLoss", tiny, 1, True, 16, num_labels=3)
    assert isinstance(softmax, losses.SoftmaxLoss) and softmax.classifier.out_features == 3
    assert softmax.classifier.in_features == 3 * 64  # (u, v, |u - v|) of the full embedding
    with pytest.raises(TrainConfigError, match="at least 2 classes"):
        build_loss("SoftmaxLoss", tiny, 1, True, 16, num_labels=1)
    assert isinstance(build_loss("ContrastiveLoss", tiny, 1, True, 16), losses.ContrastiveLoss)
    wrapped = build_loss("OnlineContrastiveLoss", tiny, 1, True, 16, matryoshka_dims=(64, 32, 16))
    assert isinstance(wrapped, losses.MatryoshkaLoss) and list(wrapped.matryoshka_dims) == [64, 32, 16]
    assert isinstance(wrapped.loss, losses.OnlineContrastiveLoss)
    with pytest.raises(TrainConfigError, match="--matryoshka-dims: got them with SoftmaxLoss"):
        build_loss("SoftmaxLoss", tiny, 1, True, 16, num_labels=3, matryoshka_dims=(32,))
    check_matryoshka_dims((64, 8), tiny, "tiny-bert")
    check_matryoshka_dims(None, tiny, "tiny-bert")
    with pytest.raises(TrainConfigError) as raised:
        check_matryoshka_dims((32, 128), tiny, "tiny-bert")
    assert str(raised.value) == ("--matryoshka-dims: got 32,128, but tiny-bert embeds in 64 dimensions; expected "
                                 "dimensions of at most 64")


def test_evaluators_follow_the_data_that_has_one(recipe: dict[str, Path], tiny: Any, hf_offline: None) -> None:
    from sentence_transformers.base.evaluation import SequentialEvaluator

    from stjobs.train.data import load_table, prepare
    from stjobs.train.objectives import build_evaluator, combine_evaluators, primary_metric

    nli, _ = prepare(load_table(str(recipe["nli-train"]), "--eval-data"), "--eval-data")
    sts, _ = prepare(load_table(str(recipe["sts-eval"]), "--eval-data"), "--eval-data")
    assert build_evaluator(nli, "labelled", 8) is None
    assert combine_evaluators([]) is None
    alone = build_evaluator(sts, "scored", 8)
    assert alone is not None and combine_evaluators([alone]) is alone
    alone(tiny)  # the evaluator names its primary metric when it runs
    assert primary_metric(alone) == "spearman_cosine"
    first, second = build_evaluator(sts, "scored", 8, "stsb"), build_evaluator(sts, "scored", 8, "sts2")
    assert first is not None and second is not None
    both = combine_evaluators([first, second])
    assert isinstance(both, SequentialEvaluator)
    scores = both(tiny)
    # The events report the first evaluator's metric, and the main score is that one (the library's is the last).
    assert primary_metric(both) == "stsb_spearman_cosine" and scores["sequential_score"] == scores[
        "stsb_spearman_cosine"]
    assert "sts2_spearman_cosine" in scores


# --- samplers of several datasets ----------------------------------------------------------------------------------

def two_tables() -> tuple[Any, Any]:
    from datasets import Dataset

    pairs = Dataset.from_dict({"anchor": [f"q {i} " + "w" * (i % 7) for i in range(70)],
                               "positive": [f"p {i % 20}" for i in range(70)]})  # repeated positives
    scored = Dataset.from_dict({"sentence1": [f"s {i}" for i in range(45)], "sentence2": [f"t {i}" for i in range(45)],
                                "score": [0.5] * 45})
    return pairs, scored


@pytest.fixture()
def two_ranks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from stjobs.train import sampler

    monkeypatch.setattr(sampler, "_world_size", lambda: 2)
    yield


def multi(kind: str, batch_size: int = 4, seed: int = 3) -> tuple[Any, list[Any], list[int]]:
    import torch
    from torch.utils.data import ConcatDataset

    from stjobs.train.sampler import MULTI_DATASET_SAMPLER_CLASSES, DatasetBatchSamplers

    pairs, scored = two_tables()
    per_dataset = DatasetBatchSamplers({id(pairs): True, id(scored): False}, group_by_length=True)
    generator = torch.Generator().manual_seed(seed)
    samplers = [per_dataset(table, batch_size=batch_size, drop_last=True, generator=generator, seed=seed)
                for table in (pairs, scored)]
    made = MULTI_DATASET_SAMPLER_CLASSES[kind](ConcatDataset([pairs, scored]), batch_samplers=samplers,
                                               generator=generator, seed=seed)
    return made, samplers, [len(pairs), len(scored)]


def which(batch: list[int], sizes: list[int]) -> int:
    owners = {0 if index < sizes[0] else 1 for index in batch}
    assert len(owners) == 1, batch
    return owners.pop()


@pytest.mark.parametrize("kind", ["proportional", "round_robin"])
def test_two_ranks_of_one_step_train_the_same_dataset(kind: str, two_ranks: None) -> None:
    from stjobs.train.sampler import LengthGroupedBatchSampler, UniqueTextBatchSampler

    made, samplers, sizes = multi(kind)
    assert [type(s) for s in samplers] == [UniqueTextBatchSampler, LengthGroupedBatchSampler]
    batches = list(made)
    assert batches and len(batches) % 2 == 0 and len(batches) == len(made)
    steps = [(which(batches[i], sizes), which(batches[i + 1], sizes)) for i in range(0, len(batches), 2)]
    assert all(a == b for a, b in steps), steps
    assert {a for a, _ in steps} == {0, 1}
    if kind == "round_robin":
        assert [a for a, _ in steps] == [0, 1] * (len(steps) // 2)
    else:  # every full step of both datasets, once: 70 rows / 4 -> 17 batches -> 8 steps; 45 -> 11 -> 5
        assert sorted(a for a, _ in steps) == [0] * 8 + [1] * 5
        rows = [i for batch in batches for i in batch]
        assert len(rows) == len(set(rows))
    for batch in batches:  # the pairs' sampler keeps a text out of a batch that already has it
        if which(batch, sizes) == 0:
            positives = [f"p {i % 20}" for i in batch]
            assert len(set(positives)) == len(positives)


@pytest.mark.parametrize("kind", ["proportional", "round_robin"])
def test_one_process_gets_sentence_transformers_own_order(kind: str) -> None:
    import torch
    from sentence_transformers.base.sampler import ProportionalBatchSampler, RoundRobinBatchSampler

    ours, _, _ = multi(kind)
    theirs, samplers, _ = multi(kind)
    library = {"proportional": ProportionalBatchSampler, "round_robin": RoundRobinBatchSampler}[kind]
    reference = library(theirs.dataset, batch_samplers=samplers, generator=torch.Generator().manual_seed(3), seed=3)
    assert list(ours) == list(reference) and len(ours) == len(reference)


def test_per_dataset_samplers_without_length_grouping() -> None:
    from sentence_transformers.base.sampler import DefaultBatchSampler, NoDuplicatesBatchSampler

    from stjobs.train.sampler import DatasetBatchSamplers

    pairs, scored = two_tables()
    plain = DatasetBatchSamplers({id(pairs): True, id(scored): False}, group_by_length=False)
    assert type(plain(pairs, batch_size=4, drop_last=False)) is NoDuplicatesBatchSampler
    assert type(plain(scored, batch_size=4, drop_last=False)) is DefaultBatchSampler
    with pytest.raises(RuntimeError, match="a dataset it was not given"):
        plain(pairs.select(range(4)), batch_size=4, drop_last=False)


def test_the_trainer_hands_each_dataset_to_its_sampler(recipe: dict[str, Path], tiny: Any, tmp_path: Path,
                                                       hf_offline: None) -> None:
    """sentence-transformers calls the batch sampler with the very dataset objects of the DatasetDict."""
    import datasets
    from sentence_transformers import SentenceTransformerTrainer

    from stjobs.train.data import load_train_data
    from stjobs.train.objectives import build_loss
    from stjobs.train.sampler import LengthGroupedBatchSampler, StepRoundRobinBatchSampler, UniqueTextBatchSampler
    from stjobs.train.trainer import training_args

    pairs = jsonl(tmp_path / "pairs.jsonl", [{"anchor": f"q{i}", "positive": f"a{i}"} for i in range(40)])
    config = parse_config(["--model", "m", "--output-dir", str(tmp_path), "--train-data", f"qa={pairs}",
                           "--train-data", f"stsb={recipe['sts-train']}", "--multi-dataset-sampler", "round_robin",
                           "--max-steps", "2"], environ={"STJOBS_STRATEGY": "single"})
    loaded = load_train_data(config)
    args = training_args(config, "m", tiny, 1, True, False,
                         {id(item.table): item.loss == "MultipleNegativesRankingLoss" for item in loaded})
    trainer = SentenceTransformerTrainer(
        model=tiny, args=args, train_dataset=datasets.DatasetDict({"qa": loaded[0].table, "stsb": loaded[1].table}),
        loss={item.source.name or "": build_loss(item.loss or "", tiny, 1, True, 16) for item in loaded})
    sampler = trainer.get_train_dataloader().batch_sampler
    sampler = getattr(sampler, "batch_sampler", sampler)  # accelerate may wrap it
    assert isinstance(sampler, StepRoundRobinBatchSampler)
    assert [type(s) for s in sampler.batch_samplers] == [UniqueTextBatchSampler, LengthGroupedBatchSampler]
