"""Unit tests of the training entrypoint's parts: options, data kinds, losses, example data, events, checkpoints.

Most run without torch. The tiny-model test imports the ML stack (about 10 s); the one real training run (resume
included) is marked ``slow``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stjobs.train import events, example_data
from stjobs.train.args import TrainConfig, TrainConfigError, loss_name, parse_config
from stjobs.train.checkpoints import newest_checkpoint
from stjobs.train.data import DEFAULT_LOSS, detect_kind, resolve_loss
from stjobs.train.distributed import Preemption
from tests.train.conftest import refused_in_one_line

BASE = ["--model", "m", "--train-data", "d.jsonl", "--output-dir", "/tmp/out"]


# --- options -------------------------------------------------------------------------------------------------------

def test_global_batch_size_is_split_evenly() -> None:
    config = parse_config([*BASE, "--global-batch-size", "64"], environ={})
    assert config.batch_sizes(4) == (16, 64) and config.batch_sizes(1) == (64, 64)
    with pytest.raises(TrainConfigError, match=r"--global-batch-size: got 64 for 3 processes; expected a multiple"):
        config.batch_sizes(3)
    assert parse_config([*BASE, "--per-device-batch-size", "8"], environ={}).batch_sizes(2) == (8, 16)


def test_parse_config_defaults_and_frozen() -> None:
    config = parse_config(BASE, environ={})
    assert config.strategy == "ddp" and config.epochs == 1.0 and config.max_steps is None
    assert config.batch_sizes(1) == (16, 16) and config.batch_sizes(4) == (16, 64)
    assert config.resume and config.gather_across_devices and config.group_by_length
    assert config.learning_rate is None  # resolved per model at run time (5e-5, tiny-bert 1e-3)
    assert config.final_dir == Path("/tmp/out/final") and config.checkpoint_dir == Path("/tmp/out/checkpoints")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]


def test_parse_config_all_options() -> None:
    config = parse_config(
        [*BASE, "--eval-data", "e.jsonl", "--loss", "cosent", "--max-steps", "7", "--learning-rate", "1e-4",
         "--warmup-ratio", "0", "--save-steps", "5", "--eval-steps", "3", "--no-resume",
         "--no-gather-across-devices", "--dataloader-workers", "2", "--max-seq-length", "64"],
        environ={"STJOBS_STRATEGY": "single"})
    assert isinstance(config, TrainConfig)
    assert (config.loss, config.max_steps, config.epochs, config.learning_rate) == ("CoSENTLoss", 7, None, 1e-4)
    assert not config.resume and not config.gather_across_devices and config.use_evaluator
    assert (config.dataloader_workers, config.max_seq_length, config.strategy) == (2, 64, "single")


@pytest.mark.parametrize(
    ("extra", "env", "needles"),
    [
        (["--per-device-batch-size", "abc"], {}, ["--per-device-batch-size", "'abc'", "positive integer"]),
        (["--per-device-batch-size", "0"], {}, ["--per-device-batch-size", "'0'", "positive integer"]),
        (["--warmup-ratio", "1.5"], {}, ["--warmup-ratio", "'1.5'", "[0, 1)"]),
        (["--learning-rate", "-1"], {}, ["--learning-rate", "'-1'", "positive number"]),
        (["--loss", "FancyLoss"], {}, ["--loss", "'FancyLoss'", "MultipleNegativesRankingLoss"]),
        (["--per-device-batch-size", "8", "--global-batch-size", "16"], {},
         ["--global-batch-size", "not allowed with argument --per-device-batch-size"]),
        (["--precision", "int8"], {}, ["--precision", "'int8'", "bf16"]),
        (["--loss", "gist"], {}, ["--loss", "GISTEmbedLoss", "--guide-model"]),
        (["--guide-model", "g"], {}, ["--guide-model", "'g'", "GISTEmbedLoss"]),
        (["--max-steps", "5", "--epochs", "1"], {}, ["--epochs", "--max-steps"]),
        (["--eval-steps", "5"], {}, ["--eval-steps", "5", "--eval-data"]),
        (["--eval-data", "e.jsonl"], {"STJOBS_STRATEGY": "fsdp"}, ["--eval-data", "fsdp", "--no-evaluator"]),
        ([], {"STJOBS_STRATEGY": "zero3"}, ["STJOBS_STRATEGY", "'zero3'", "ddp, dp, fsdp, single"]),
    ],
)
def test_bad_options_exit_2_with_one_line(extra: list[str], env: dict[str, str], needles: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    refused_in_one_line([*BASE, *extra], env, capsys, needles)


def test_loss_aliases() -> None:
    assert loss_name("mnrl") == "MultipleNegativesRankingLoss"
    assert loss_name("cachedmultiplenegativesrankingloss") == "CachedMultipleNegativesRankingLoss"
    assert loss_name("CosineSimilarityLoss") == "CosineSimilarityLoss"


def test_cli_error_needs_no_ml_stack(repo_root: Path, run_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "stjobs.train", *BASE, "--max-steps", "x"], capture_output=True,
                          text=True, cwd=repo_root, env=run_env, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--max-steps" in done.stderr, done.stderr


def test_modules_import_without_ml_stack(repo_root: Path, run_env: dict[str, str]) -> None:
    code = ("import sys, stjobs.train, stjobs.train.args, stjobs.train.events, stjobs.train.example_data, "
            "stjobs.train.data, stjobs.train.models, stjobs.train.distributed, stjobs.train.checkpoints, "
            "stjobs.train.trainer, stjobs.train.run, stjobs.train.__main__\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'sentence_transformers', 'accelerate') "
            "if m in sys.modules]\nassert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root, env=run_env, timeout=60)


# --- data kinds and losses -----------------------------------------------------------------------------------------

def test_detect_kind() -> None:
    assert detect_kind(["anchor", "positive"]) == "pairs"
    assert detect_kind(["positive", "anchor", "id"]) == "pairs"
    assert detect_kind(["anchor", "positive", "negative"]) == "triplets"
    assert detect_kind(["score", "sentence2", "sentence1"]) == "scored"


@pytest.mark.parametrize("columns", [["question", "answer"], ["anchor"], ["sentence1", "sentence2"],
                                     ["anchor", "positive", "sentence1", "sentence2", "score"]])
def test_detect_kind_refuses_with_columns_found_and_expected(columns: list[str]) -> None:
    with pytest.raises(TrainConfigError) as raised:
        detect_kind(columns, "--eval-data")
    message = str(raised.value)
    assert message.startswith("--eval-data: got columns [" + ", ".join(columns) + "]")
    assert "anchor" in message and "sentence1" in message and raised.value.exit_code == 2


def test_default_losses() -> None:
    assert resolve_loss("pairs", None) == DEFAULT_LOSS["pairs"] == "MultipleNegativesRankingLoss"
    assert resolve_loss("triplets", None) == "MultipleNegativesRankingLoss"
    assert resolve_loss("scored", None) == "CoSENTLoss"
    assert resolve_loss("triplets", "CachedMultipleNegativesRankingLoss") == "CachedMultipleNegativesRankingLoss"
    assert resolve_loss("scored", "CosineSimilarityLoss") == "CosineSimilarityLoss"


@pytest.mark.parametrize(("kind", "loss", "needles"), [
    ("pairs", "CoSENTLoss", ["sentence1/sentence2/score", "pairs", "MultipleNegativesRankingLoss"]),
    ("triplets", "CosineSimilarityLoss", ["sentence1/sentence2/score", "triplets"]),
    ("scored", "MultipleNegativesRankingLoss", ["anchor/positive", "scored", "CoSENTLoss"]),
])
def test_loss_that_does_not_fit_the_data(kind: str, loss: str, needles: list[str]) -> None:
    with pytest.raises(TrainConfigError) as raised:
        resolve_loss(kind, loss)  # type: ignore[arg-type]
    assert str(raised.value).startswith(f"--loss: got {loss!r}")
    for needle in needles:
        assert needle in str(raised.value)


def test_prepare_selects_orders_and_checks_columns(tmp_path: Path, hf_offline: None) -> None:
    from stjobs.train.data import load_table, prepare

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "positive": f"p{i}", "anchor": f"a{i}"}) + "\n" for i in range(4)))
    table, kind = prepare(load_table(str(rows), "--train-data"), "--train-data")
    assert kind == "pairs" and table.column_names == ["anchor", "positive"] and len(table) == 4

    scored = tmp_path / "scored.csv"
    scored.write_text("sentence1,sentence2,score\na,b,1\nc,d,0\n")
    table, kind = prepare(load_table(str(scored), "--eval-data"), "--eval-data")
    assert kind == "scored" and table.features["score"].dtype == "float32"

    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text(json.dumps({"anchor": 1, "positive": 2}) + "\n")
    with pytest.raises(TrainConfigError, match="column 'anchor' has type int64; expected text"):
        prepare(load_table(str(numbers), "--train-data"), "--train-data")
    with pytest.raises(TrainConfigError, match="expected a file ending in"):
        (tmp_path / "data.txt").write_text("x")
        load_table(str(tmp_path / "data.txt"), "--train-data")
    with pytest.raises(TrainConfigError, match="expected an existing file or directory"):
        load_table(str(tmp_path / "missing.jsonl"), "--train-data")


# --- example data --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", example_data.KINDS)
def test_example_data_is_byte_identical_and_held_out(kind: str, tmp_path: Path) -> None:
    first = example_data.write(tmp_path / "a", train_rows=500, eval_rows=80, seed=3, kind=kind)
    second = example_data.write(tmp_path / "b", train_rows=500, eval_rows=80, seed=3, kind=kind)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    other = example_data.write(tmp_path / "c", train_rows=500, eval_rows=80, seed=4, kind=kind)
    assert other[0].read_bytes() != first[0].read_bytes()

    train = [json.loads(line) for line in first[0].read_text().splitlines()]
    held = [json.loads(line) for line in first[1].read_text().splitlines()]
    assert (len(train), len(held)) == (500, 80)
    columns = {"pairs": ["anchor", "positive"], "triplets": ["anchor", "positive", "negative"],
               "scored": ["sentence1", "sentence2", "score"]}[kind]
    assert all(list(row) == columns for row in train + held)
    train_texts = {v for row in train for k, v in row.items() if k != "score"}
    held_texts = {v for row in held for k, v in row.items() if k != "score"}
    assert train_texts and held_texts and not train_texts & held_texts, "a text appears in both splits"
    if kind == "scored":
        assert {row["score"] for row in train} <= {0.0, 0.2, 0.3, 1.0}
        assert len({row["score"] for row in train}) == 4
    else:
        assert len({row["anchor"] for row in train}) == len(train), "anchors repeat"


def test_example_data_cli(tmp_path: Path, repo_root: Path, run_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "stjobs.train.example_data", "--out", str(tmp_path),
                           "--train-rows", "30", "--eval-rows", "10"], capture_output=True, text=True,
                          cwd=repo_root, env=run_env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 30
    with pytest.raises(ValueError, match="positive integers"):
        example_data.generate(0, 10)


# --- events --------------------------------------------------------------------------------------------------------

def test_format_event_is_compact_sorted_and_valid_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    line = events.format_event("loss", step=5, loss=float("nan"))
    assert line == 'STJOBS_EVENT {"event":"loss","loss":null,"rank":3,"step":5}'
    assert events.format_event("done", rank=0) == 'STJOBS_EVENT {"event":"done","rank":0}'
    monkeypatch.delenv("RANK")
    assert json.loads(events.format_event("x")[len(events.PREFIX):]) == {"event": "x", "rank": 0}


def test_emit_writes_one_flushed_line(capsys: pytest.CaptureFixture[str]) -> None:
    print("partial output", end="")
    events.emit("saved", rank=0, path="/abs/final")
    out = capsys.readouterr().out
    assert out.endswith('STJOBS_EVENT {"event":"saved","path":"/abs/final","rank":0}\n')


def test_parse_events_tolerates_prefixes_and_junk() -> None:
    log = "\n".join([
        'STJOBS_EVENT {"event":"start","rank":0,"world_size":2}',
        '[rank1]:STJOBS_EVENT {"event":"start","rank":1,"world_size":2}',
        '[default0]:2024-01-01 12:00:00 STJOBS_EVENT {"event":"loss","rank":0,"step":5,"loss":1.5}',
        "0: STJOBS_EVENT {\"event\":\"eval\",\"rank\":0,\"when\":\"before\",\"score\":0.5} trailing words",
        'STJOBS_EVENT {"event":"cut","rank":0',  # truncated line: skipped
        "STJOBS_EVENT not json",
        'STJOBS_EVENT {"no_event_key":1}',
        "plain log line",
        'STJOBS_EVENT {"event":"a","rank":0}STJOBS_EVENT {"event":"b","rank":1}',  # two ranks on one line
    ])
    parsed = events.parse_events(log)
    assert [e["event"] for e in parsed] == ["start", "start", "loss", "eval", "a", "b"]
    assert parsed[1]["rank"] == 1 and parsed[2]["loss"] == 1.5
    assert events.first(parsed, "start", rank=1) == parsed[1] and events.first(parsed, "done") is None
    assert events.parse_events(events.format_event("throughput", samples_per_second=math.pi))[0]["rank"] == 0


def test_summary_lines() -> None:
    text = events.summary(100, 4.0, 800.0, 32, "cosine_ndcg@10", {"before": 0.3, "after": 0.9}, "/x/final")
    assert "800.0 samples/s" in text and "0.3000 -> 0.9000" in text and text.endswith("/x/final")


# --- checkpoints and preemption ------------------------------------------------------------------------------------

def test_newest_checkpoint_skips_incomplete(tmp_path: Path) -> None:
    assert newest_checkpoint(tmp_path / "nothing") is None
    # (step, trainer_state.json): whole, never written, cut off mid-write, or copied from another step.
    for step, state in [(20, '{"global_step": 20}'), (100, '{"global_step": 100, "log_history": []}'),
                        (120, None), (130, '{"global_step": 130, "log_hist'), (140, '{"global_step": 100}')]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-latest").mkdir()
    (tmp_path / "eval").mkdir()
    torn: list[tuple[Path, str]] = []
    assert newest_checkpoint(tmp_path, torn) == tmp_path / "checkpoint-100"
    assert [(path.name, why.split(" (")[0]) for path, why in torn] == [
        ("checkpoint-140", "trainer_state.json names step 100, not 140"),
        ("checkpoint-130", "trainer_state.json is unreadable"),
        ("checkpoint-120", "no trainer_state.json")]


def test_preemption_signal_only_sets_a_flag(restore_signals: None) -> None:
    flag = Preemption()
    flag.install()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert flag.signum == signal.SIGUSR2
    # SLURM delivers one USR2 twice (slurmstepd and torchrun's forward): the copy must not kill the rank.
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.signum == signal.SIGUSR2


# --- models --------------------------------------------------------------------------------------------------------

def test_resolve_model_path(tmp_path: Path) -> None:
    from stjobs.train.models import resolve_model_path

    assert resolve_model_path("tiny-bert") is None
    bundled = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert bundled is not None and (Path(bundled) / "modules.json").is_file()
    assert resolve_model_path("all-MiniLM-L6-v2") == bundled
    with pytest.raises(TrainConfigError, match="expected a saved SentenceTransformer model"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(TrainConfigError, match="expected an existing model directory"):
        resolve_model_path("./no/such/model")


def test_tiny_vocab_is_deterministic() -> None:
    from stjobs.train.models import SPECIAL_TOKENS, tiny_vocab

    texts = [f"{row['anchor']} {row['positive']}" for row in example_data.generate(400, 10, seed=2)[0]]
    vocab = tiny_vocab(texts, size=500)
    assert vocab == tiny_vocab(list(texts), size=500)
    assert len(vocab) == 500 and [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert sorted(vocab.values()) == list(range(500))


def test_build_tiny_model_is_reproducible_and_encodes(small_data: Path, tmp_path: Path, hf_offline: None) -> None:
    from sentence_transformers import SentenceTransformer

    from stjobs.train.data import load_table, prepare
    from stjobs.train.models import TINY_MARKER, build_tiny_model, default_learning_rate, training_texts

    table, kind = prepare(load_table(str(small_data / "train.jsonl"), "--train-data"), "--train-data")
    texts = training_texts(table, kind)
    assert len(texts) == 600 and texts[:2] == [table[0]["anchor"], table[0]["positive"]]
    first = build_tiny_model(texts, tmp_path / "one", seed=7)
    second = build_tiny_model(texts, tmp_path / "two", seed=7)
    names = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert TINY_MARKER in names and "modules.json" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert default_learning_rate(str(first)) == 1e-3

    model = SentenceTransformer(str(first))
    assert model.encode(["What is the capital of Valia?"]).shape == (1, 64)


# --- a real run ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_single_process_run_saves_and_resumes(small_data: Path, tmp_path: Path, repo_root: Path,
                                              run_env: dict[str, str]) -> None:
    def train(steps: int) -> list[dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "stjobs.train", "--model", "tiny-bert", "--train-data",
             str(small_data / "train.jsonl"), "--eval-data", str(small_data / "eval.jsonl"), "--output-dir",
             str(tmp_path / "run"), "--max-steps", str(steps), "--save-steps", "10", "--logging-steps", "5"],
            capture_output=True, text=True, cwd=repo_root, env=run_env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return events.parse_events(done.stdout)

    first = train(20)
    start = events.first(first, "start")
    assert start is not None and start["world_size"] == 1 and start["backend"] is None
    assert start["learning_rate"] == 1e-3, "tiny-bert gets its own default learning rate"
    assert events.first(first, "wrapped") is not None and events.first(first, "resumed") is None
    scores = {e["when"]: e["score"] for e in first if e["event"] == "eval"}
    assert set(scores) == {"before", "after"}
    assert [e["step"] for e in first if e["event"] == "loss"] == [5, 10, 15, 20]
    assert events.first(first, "saved") == {"event": "saved", "rank": 0, "path": str(tmp_path / "run" / "final")}
    assert [e["event"] for e in first][-1] == "done"

    # A torn checkpoint newer than the last whole one: the process died while writing it (weights written,
    # trainer_state.json cut off). Resume must skip it, say so, and start from checkpoint-20.
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.copytree(checkpoints / "checkpoint-20", checkpoints / "checkpoint-25")
    state_file = checkpoints / "checkpoint-25" / "trainer_state.json"
    state_file.write_bytes(state_file.read_bytes()[:40])
    second = train(30)
    skipped = events.first(second, "checkpoint_skipped")
    assert skipped is not None and skipped["checkpoint"] == str(checkpoints / "checkpoint-25"), second
    resumed = events.first(second, "resumed")
    assert resumed is not None and resumed["checkpoint"] == str(checkpoints / "checkpoint-20")
    assert resumed["step"] == 20
    assert events.first(second, "done") == {"event": "done", "rank": 0, "global_step": 30}
    before = events.first(second, "eval")
    assert before is not None and before["when"] == "before" and before["score"] == pytest.approx(scores["after"])
    assert [e["step"] for e in second if e["event"] == "loss"] == [25, 30]


@pytest.mark.slow
def test_sigusr2_checkpoints_and_exits_0_without_final(small_data: Path, tmp_path: Path, repo_root: Path,
                                                        run_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stjobs.train", "--model", "tiny-bert", "--train-data", str(small_data / "train.jsonl"),
         "--output-dir", str(out), "--max-steps", "100000", "--logging-steps", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=repo_root, env=run_env)
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if '"event":"loss"' in line:
                proc.send_signal(signal.SIGUSR2)
                break
        lines.extend(proc.stdout)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    preempted = events.first(events.parse_events("".join(lines)), "preempted")
    assert preempted is not None and preempted["signal"] == "SIGUSR2"
    assert Path(preempted["checkpoint"]) == out / "checkpoints" / f"checkpoint-{preempted['step']}"
    assert newest_checkpoint(out / "checkpoints") == Path(preempted["checkpoint"])
    assert not (out / "final").exists()


def test_shipped_example_data_is_what_the_generator_writes(tmp_path: Path, repo_root: Path,
                                                           run_env: dict[str, str]) -> None:
    """examples/data is generated by the script in the repo, not edited by hand: regenerating gives the same bytes."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "stjobs.train.example_data", "--out", str(tmp_path)], check=True,
                   cwd=repo_root, env=run_env, capture_output=True)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (repo_root / "examples" / "data" / name).read_bytes(), name
