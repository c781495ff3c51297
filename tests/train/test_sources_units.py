"""Units of the multi-dataset recipe that need no ML stack: --train-data/--eval-data sources, the loss table, kinds and
labels, Matryoshka and gradient-sync refusals, and the finished-run marker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stjobs.train import checkpoints, recipe_data
from stjobs.train.args import DataSource, TrainConfigError, data_sources, parse_config, parse_data_source
from stjobs.train.data import check_labels, detect_kind, detect_layout, resolve_loss
from stjobs.train.losses import DEFAULT_LOSS, LOSS_KINDS, LOSSES, canonical_loss
from tests.train.conftest import refused_in_one_line

BASE = ["--model", "m", "--output-dir", "/tmp/out"]


# --- [NAME=]PATH[:LOSS] ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "name", "path", "loss"), [
    ("a.jsonl", None, "a.jsonl", None),
    ("nli=data/nli.jsonl:softmax", "nli", "data/nli.jsonl", "SoftmaxLoss"),
    ("stsb=/d/sts.jsonl:CosineSimilarityLoss", "stsb", "/d/sts.jsonl", "CosineSimilarityLoss"),
    ("q=pairs.csv:MNRL", "q", "pairs.csv", "MultipleNegativesRankingLoss"),  # aliases are case-insensitive
    ("x.jsonl:online-contrastive", None, "x.jsonl", "OnlineContrastiveLoss"),
    ("my.set-1=a.jsonl", "my.set-1", "a.jsonl", None),
    ("_n=a.jsonl", "_n", "a.jsonl", None),
    # A ':' whose tail is not a loss belongs to the path; only the last ':' can start a loss.
    ("hf:org/name", None, "hf:org/name", None),
    ("data/v1:2.jsonl", None, "data/v1:2.jsonl", None),
    ("x.jsonl:cosine:cosent", None, "x.jsonl:cosine", "CoSENTLoss"),
    ("nli=/x/y:z.jsonl", "nli", "/x/y:z.jsonl", None),
    # An '=' is a name only after a valid name: a path with '=' in it stays a path.
    ("/data/a=b.jsonl", None, "/data/a=b.jsonl", None),
    ("./a=b.jsonl:cosent", None, "./a=b.jsonl", "CoSENTLoss"),
    ("9x=a.jsonl", None, "9x=a.jsonl", None),
    ("n=a=b.jsonl", "n", "a=b.jsonl", None),
])
def test_parse_data_source(text: str, name: str | None, path: str, loss: str | None) -> None:
    assert parse_data_source(text) == DataSource(name=name, path=path, loss=loss)


@pytest.mark.parametrize(("text", "option", "needles"), [
    ("nli=:softmax", "--train-data", ["--train-data: got 'nli=:softmax'", "names no data", "[NAME=]PATH[:LOSS]"]),
    (":mnrl", "--train-data", ["got ':mnrl'", "[NAME=]PATH[:LOSS]"]),
    ("", "--train-data", ["got ''"]),
    ("e.jsonl:mnrl", "--eval-data", ["--eval-data: got 'e.jsonl:mnrl'", "expected [NAME=]PATH", "--train-data"]),
])
def test_parse_data_source_refuses(text: str, option: str, needles: list[str]) -> None:
    with pytest.raises(TrainConfigError) as raised:
        parse_data_source(text, option)
    message = str(raised.value)
    assert "\n" not in message and raised.value.exit_code == 2
    for needle in needles:
        assert needle in message, (needle, message)


def test_eval_sources_take_names_but_no_loss() -> None:
    assert parse_data_source("stsb=e.jsonl", "--eval-data") == DataSource("stsb", "e.jsonl", None)
    assert parse_data_source("e.jsonl:v2", "--eval-data") == DataSource(None, "e.jsonl:v2", None)


def test_data_sources_reads_both_spellings_of_one_option_only() -> None:
    argv = ["--model", "m", "--train-data", "nli=n.jsonl:softmax", "--eval-data", "stsb=e.jsonl",
            "--train-data=stsb=s.jsonl:cosine", "--train-data-extra", "x", "--loss", "cosent"]
    assert data_sources(argv, "--train-data") == [DataSource("nli", "n.jsonl", "SoftmaxLoss"),
                                                  DataSource("stsb", "s.jsonl", "CosineSimilarityLoss")]
    assert data_sources(argv, "--eval-data") == [DataSource("stsb", "e.jsonl", None)]
    assert data_sources(["--model", "m"], "--train-data") == []
    assert data_sources(["--train-data", "a.jsonl"], "--train-data") == [DataSource(None, "a.jsonl", None)]
    assert data_sources(["--train-data"], "--train-data") == []  # a value-less last flag: argparse's to report


@pytest.mark.parametrize(("argv", "option", "needles"), [
    (["--train-data", "a.jsonl", "--train-data", "b=b.jsonl"], "--train-data",
     ["--train-data: got 'a.jsonl' among 2 values", "NAME=PATH[:LOSS]"]),
    (["--train-data", "a=a.jsonl", "--train-data=a=b.jsonl:cosent"], "--train-data",
     ["--train-data: got 'a=b.jsonl:CoSENTLoss'", "'a' is already 'a=a.jsonl'", "distinct names"]),
    (["--eval-data", "x=a.jsonl", "--eval-data", "b.jsonl"], "--eval-data",
     ["--eval-data: got 'b.jsonl' among 2 values", "NAME=PATH for each"]),
])
def test_data_sources_refuse_unnamed_or_repeated_names(argv: list[str], option: str, needles: list[str]) -> None:
    with pytest.raises(TrainConfigError) as raised:
        data_sources(argv, option)
    for needle in needles:
        assert needle in str(raised.value), (needle, str(raised.value))


def test_parse_config_collects_every_source() -> None:
    config = parse_config([*BASE, "--train-data", "nli=n.jsonl:softmax", "--train-data", "stsb=s.jsonl",
                           "--eval-data", "stsb=e.jsonl", "--eval-data", "nli=ne.jsonl", "--loss", "cosine",
                           "--multi-dataset-sampler", "round_robin"], environ={})
    assert config.train_data == (DataSource("nli", "n.jsonl", "SoftmaxLoss"), DataSource("stsb", "s.jsonl", None))
    assert [config.source_loss(s) for s in config.train_data] == ["SoftmaxLoss", "CosineSimilarityLoss"]
    assert len(config.eval_data) == 2 and config.use_evaluator
    assert config.multi_dataset_sampler == "round_robin" and config.gradient_sync
    single = parse_config([*BASE, "--train-data", "d.jsonl"], environ={})
    assert single.train_data == (DataSource(None, "d.jsonl", None),) and single.eval_data == ()
    assert not single.use_evaluator and single.multi_dataset_sampler == "proportional"
    assert single.matryoshka_dims is None
    dims = parse_config([*BASE, "--train-data", "d.jsonl", "--matryoshka-dims", "16,64,32"], environ={})
    assert dims.matryoshka_dims == (16, 64, 32)


@pytest.mark.parametrize(("extra", "env", "needles"), [
    (["--train-data", "a.jsonl", "--train-data", "b.jsonl"], {}, ["--train-data: got 'a.jsonl'", "NAME=PATH"]),
    (["--train-data", "a=x.jsonl", "--train-data", "a=y.jsonl"], {}, ["'a=y.jsonl'", "distinct names"]),
    (["--train-data", "a=:cosent"], {}, ["--train-data", "names no data"]),
    (["--train-data", "d.jsonl", "--eval-data", "e.jsonl:cosent"], {}, ["--eval-data", "[NAME=]PATH"]),
    (["--train-data", "d.jsonl", "--matryoshka-dims", "64,x"], {}, ["--matryoshka-dims", "'64,x'", "distinct"]),
    (["--train-data", "d.jsonl", "--matryoshka-dims", "32,0"], {}, ["--matryoshka-dims", "positive"]),
    (["--train-data", "d.jsonl", "--matryoshka-dims", "32,32"], {}, ["--matryoshka-dims", "'32,32'", "distinct"]),
    (["--train-data", "d.jsonl:softmax", "--matryoshka-dims", "32"], {},
     ["--matryoshka-dims: got 32 with SoftmaxLoss", "d.jsonl", "full embedding dimension"]),
    (["--train-data", "d.jsonl", "--loss", "softmax", "--matryoshka-dims", "32,16"], {},
     ["--matryoshka-dims: got 32,16 with SoftmaxLoss"]),
    (["--train-data", "d.jsonl", "--no-gradient-sync"], {"STJOBS_STRATEGY": "fsdp"},
     ["--no-gradient-sync", "STJOBS_STRATEGY=fsdp", "only with ddp"]),
    (["--train-data", "d.jsonl", "--no-gradient-sync"], {"STJOBS_STRATEGY": "single"}, ["--no-gradient-sync"]),
    (["--train-data", "a=x.jsonl:gist", "--train-data", "b=y.jsonl"], {},
     ["--train-data: got 'a=x.jsonl:GISTEmbedLoss' without --guide-model"]),
    (["--train-data", "a=x.jsonl:cosent", "--train-data", "b=y.jsonl", "--guide-model", "g"], {},
     ["--guide-model", "CoSENTLoss+default", "GISTEmbedLoss"]),
    (["--train-data", "d.jsonl", "--multi-dataset-sampler", "random"], {}, ["--multi-dataset-sampler", "'random'"]),
])
def test_bad_source_options_exit_2_with_one_line(extra: list[str], env: dict[str, str], needles: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    refused_in_one_line([*BASE, *extra], env, capsys, needles)


def test_gradient_sync_and_guides_are_accepted_where_they_fit() -> None:
    assert not parse_config([*BASE, "--train-data", "d.jsonl", "--no-gradient-sync"], environ={}).gradient_sync
    config = parse_config([*BASE, "--train-data", "a=x.jsonl:gist", "--train-data", "b=y.jsonl:cosent",
                           "--guide-model", "g"], environ={})
    assert config.guide_model == "g"


# --- the loss table ------------------------------------------------------------------------------------------------

def test_loss_table_is_whole_and_stdlib_only(repo_root: Path, run_env: dict[str, str]) -> None:
    assert set(LOSSES) == set(LOSS_KINDS) and set(DEFAULT_LOSS.values()) <= set(LOSSES)
    assert DEFAULT_LOSS["labelled"] == "SoftmaxLoss"
    assert [canonical_loss(t) for t in ("softmax", "Contrastive", "ONLINE-CONTRASTIVE", "nope")] == [
        "SoftmaxLoss", "ContrastiveLoss", "OnlineContrastiveLoss", None]
    # `stjobs render` reads the table without torch; the old import places still answer.
    code = ("import sys, stjobs.train.losses, stjobs.train.objectives, stjobs.train.recipe_data\n"
            "from stjobs.train.args import LOSSES, loss_name, GUIDED_LOSSES\n"
            "from stjobs.train.data import IN_BATCH_NEGATIVE_LOSSES, DEFAULT_LOSS, build_loss, build_evaluator\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'sentence_transformers', 'accelerate') "
            "if m in sys.modules]\nassert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root, env=run_env, timeout=60)


# --- kinds, labels and losses --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("columns", "kind", "used"), [
    (["premise", "hypothesis", "label"], "labelled", ("premise", "hypothesis", "label")),
    (["label", "hypothesis", "premise", "id"], "labelled", ("premise", "hypothesis", "label")),
    (["sentence1", "sentence2", "label"], "labelled", ("sentence1", "sentence2", "label")),
    (["sentence1", "sentence2", "score"], "scored", ("sentence1", "sentence2", "score")),
    (["anchor", "positive", "negative"], "triplets", ("anchor", "positive", "negative")),
    (["anchor", "positive", "label"], "pairs", ("anchor", "positive")),
])
def test_detect_layout(columns: list[str], kind: str, used: tuple[str, ...]) -> None:
    assert detect_layout(columns) == (kind, used)


@pytest.mark.parametrize("columns", [["sentence1", "sentence2", "score", "label"],
                                     ["premise", "hypothesis", "label", "anchor", "positive"],
                                     ["premise", "hypothesis", "sentence1", "sentence2", "label"]])
def test_columns_of_two_kinds_are_refused(columns: list[str]) -> None:
    with pytest.raises(TrainConfigError, match=r"expected the columns of one kind, not of several") as raised:
        detect_kind(columns, "--train-data nli")
    assert str(raised.value).startswith("--train-data nli: got columns [")


def test_half_a_labelled_layout_is_no_kind() -> None:
    with pytest.raises(TrainConfigError) as raised:
        detect_kind(["premise", "hypothesis"])
    assert "labelled: premise, hypothesis, label" in str(raised.value)
    assert "labelled: sentence1, sentence2, label" in str(raised.value)


@pytest.mark.parametrize(("kind", "asked", "option", "needles"), [
    ("scored", "ContrastiveLoss", "--loss", ["--loss: got 'ContrastiveLoss'",
                                            "premise/hypothesis/label or sentence1/sentence2/label",
                                            "CoSENTLoss, CosineSimilarityLoss"]),
    ("labelled", "CoSENTLoss", "--train-data nli", ["--train-data nli: got 'CoSENTLoss'", "labelled",
                                                     "SoftmaxLoss, ContrastiveLoss, OnlineContrastiveLoss"]),
    ("pairs", "SoftmaxLoss", "--loss", ["needs premise/hypothesis/label", "data is pairs (anchor/positive)"]),
])
def test_labelled_losses_fit_only_labelled_data(kind: str, asked: str, option: str, needles: list[str]) -> None:
    with pytest.raises(TrainConfigError) as raised:
        resolve_loss(kind, asked, option)  # type: ignore[arg-type]
    for needle in needles:
        assert needle in str(raised.value), (needle, str(raised.value))
    assert resolve_loss("labelled", None) == "SoftmaxLoss"
    assert resolve_loss("labelled", "OnlineContrastiveLoss") == "OnlineContrastiveLoss"


@pytest.mark.parametrize(("loss", "labels", "ok"), [
    ("ContrastiveLoss", [0, 1], True), ("ContrastiveLoss", [1], True), ("OnlineContrastiveLoss", [0, 1], True),
    ("ContrastiveLoss", [0, 1, 2], False), ("OnlineContrastiveLoss", [1, 2], False),
    ("SoftmaxLoss", [0, 1, 2, 5], True),
])
def test_contrastive_losses_take_labels_0_and_1(loss: str, labels: list[int], ok: bool) -> None:
    if ok:
        check_labels(loss, labels, "--train-data pairs")
        return
    with pytest.raises(TrainConfigError) as raised:
        check_labels(loss, labels, "--train-data pairs")
    message = str(raised.value)
    assert message.startswith(f"--train-data pairs: got labels {', '.join(map(str, labels))} for {loss}")
    assert "expected only 0 (dissimilar) and 1 (similar)" in message


# --- the finished-run marker ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("record", "max_steps", "epochs", "finished"), [
    ({"global_step": 10, "max_steps": 10, "epochs": None}, 10, None, True),
    ({"global_step": 10, "max_steps": 10, "epochs": None}, 8, None, True),  # trained further than asked
    ({"global_step": 10, "max_steps": 10, "epochs": None}, 20, None, False),  # a longer plan continues
    ({"global_step": 40, "max_steps": None, "epochs": 1.0}, 30, None, True),
    ({"global_step": 40, "max_steps": None, "epochs": 1.0}, None, 1.0, True),
    ({"global_step": 40, "max_steps": None, "epochs": 2.0}, None, 1.0, True),
    ({"global_step": 40, "max_steps": None, "epochs": 1.0}, None, 2.0, False),
    ({"global_step": 10, "max_steps": 10, "epochs": None}, None, 1.0, False),  # steps say nothing of epochs
    ({"global_step": "10", "max_steps": 10}, 10, None, False),
    ({"global_step": True, "max_steps": 1}, 1, None, False),
    ([10], 10, None, False),
])
def test_finished_run(tmp_path: Path, record: object, max_steps: int | None, epochs: float | None,
                      finished: bool) -> None:
    (tmp_path / checkpoints.RUN_MARKER).write_text(json.dumps(record))
    assert (checkpoints.finished_run(tmp_path, max_steps, epochs) is not None) is finished


def test_run_marker_round_trip_and_clearing(tmp_path: Path) -> None:
    assert checkpoints.finished_run(tmp_path / "none", 5, None) is None
    path = checkpoints.write_run_marker(tmp_path, 12, 12, None, ["nli=n.jsonl:SoftmaxLoss", "stsb=s.jsonl"])
    assert path == tmp_path / "stjobs_run.json" and not list(tmp_path.glob("*.tmp"))
    assert checkpoints.finished_run(tmp_path, 12, None) == {
        "global_step": 12, "max_steps": 12, "epochs": None, "train_data": ["nli=n.jsonl:SoftmaxLoss", "stsb=s.jsonl"]}
    path.write_text('{"global_step": 12, "max_')  # cut off: not a finished run
    assert checkpoints.finished_run(tmp_path, 12, None) is None
    checkpoints.clear_run_marker(tmp_path)
    checkpoints.clear_run_marker(tmp_path)  # nothing there: fine
    assert not path.exists()


@pytest.mark.parametrize(("argv", "rank", "stops", "says"), [
    (["--max-steps", "7"], "0", True, True),
    (["--max-steps", "7"], "1", True, False),  # every rank stops, rank 0 alone says so
    (["--max-steps", "7", "--no-resume"], "0", False, False),
    (["--max-steps", "9"], "0", False, False),
])
def test_already_complete_decides_from_the_marker(tmp_path: Path, argv: list[str], rank: str, stops: bool,
                                                  says: bool, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from stjobs.train.run import already_complete

    (tmp_path / "final").mkdir()
    checkpoints.write_run_marker(tmp_path / "final", 7, 7, None, ["d.jsonl"])
    monkeypatch.setenv("RANK", rank)
    config = parse_config(["--model", "m", "--train-data", "d.jsonl", "--output-dir", str(tmp_path), *argv],
                          environ={})
    assert already_complete(config) is stops
    out = capsys.readouterr().out
    if not says:
        assert out == ""
        return
    event, line = out.splitlines()
    assert json.loads(event.removeprefix("STJOBS_EVENT ")) == {
        "event": "already_complete", "rank": 0, "step": 7, "path": str(tmp_path / "final"), "max_steps": 7,
        "epochs": None}
    assert line == (f"stjobs.train: {tmp_path / 'final'} already holds the model trained to step 7 (--max-steps 7); "
                    "nothing to train. To train again from scratch: --no-resume, or a new --output-dir")


# --- recipe data ---------------------------------------------------------------------------------------------------

def test_recipe_data_is_deterministic_and_its_labels_follow_the_texts(tmp_path: Path) -> None:
    first = recipe_data.write_recipe(tmp_path / "a", train_rows=90, eval_rows=30, seed=5)
    again = recipe_data.write_recipe(tmp_path / "b", train_rows=90, eval_rows=30, seed=5)
    assert list(first) == ["nli-train", "sts-train", "sts-eval"]
    assert [p.name for p in first.values()] == ["nli-train.jsonl", "sts-train.jsonl", "sts-eval.jsonl"]
    assert [p.read_bytes() for p in first.values()] == [p.read_bytes() for p in again.values()]
    assert recipe_data.nli_rows(30, 6) != recipe_data.nli_rows(30, 5)
    train = [json.loads(line) for line in first["sts-train"].read_text().splitlines()]
    held = [json.loads(line) for line in first["sts-eval"].read_text().splitlines()]
    assert train != held[:len(train)] and (len(train), len(held)) == (90, 30)

    nli = recipe_data.nli_rows(300, 1)
    assert {row["label"] for row in nli} == {0, 1, 2} and all(list(row) == ["premise", "hypothesis", "label"]
                                                              for row in nli)
    for row in nli:
        premise, hypothesis = str(row["premise"]), str(row["hypothesis"])
        outdoors = any(p in premise.lower() for p, general in recipe_data.PLACES if general == "outdoors")
        if row["label"] == 0:  # the premise in general words: its kind of place
            assert hypothesis.endswith("outdoors." if outdoors else "indoors.")
        elif row["label"] == 1:  # the same activity plus a detail the premise lacks
            assert any(hypothesis.endswith(f"{detail}.") for detail in recipe_data.DETAILS)
            assert any(a in premise and a in hypothesis for a, _, _ in recipe_data.ACTIVITIES)
        else:  # the other kind of place, another kind of activity
            assert hypothesis.endswith("indoors." if outdoors else "outdoors.")
            assert not any(a in premise and a in hypothesis for a, _, _ in recipe_data.ACTIVITIES)
    sts = recipe_data.sts_rows(100, 1)
    assert {row["score"] for row in sts} == set(recipe_data.STS_SCORES)
    assert all(row["sentence1"] != row["sentence2"] for row in sts)
    for row in sts:
        shared_activity = any(a in str(row["sentence1"]) and a in str(row["sentence2"])
                              for a, _, _ in recipe_data.ACTIVITIES)
        assert shared_activity is (float(row["score"]) >= 0.5), row  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a positive integer"):
        recipe_data.nli_rows(0)
