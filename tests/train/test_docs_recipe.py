"""The sentence-transformers docs' NLI + STSB recipe on this machine: two datasets, each with its own loss
(SoftmaxLoss on NLI-like labelled pairs, CosineSimilarityLoss on STS-like scored pairs), trained together by two
DDP processes under torchrun, evaluated on the STS data; then the same command again, which must not train."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stjobs.train import events, recipe_data

pytestmark = pytest.mark.slow

STEPS = 10
LOGGING_STEPS = 2


def test_nli_and_stsb_train_together_on_two_processes_and_a_rerun_trains_nothing(
        tmp_path: Path, repo_root: Path, run_env: dict[str, str]) -> None:
    files = recipe_data.write_recipe(tmp_path / "data", train_rows=240, eval_rows=60, seed=3)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "stjobs.train", "--model", "tiny-bert",
               "--train-data", f"nli={files['nli-train']}:softmax",
               "--train-data", f"stsb={files['sts-train']}:cosine",
               "--eval-data", f"stsb={files['sts-eval']}",
               "--output-dir", str(out), "--max-steps", str(STEPS), "--logging-steps", str(LOGGING_STEPS),
               "--per-device-batch-size", "8"]

    def train() -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
        done = subprocess.run(command, capture_output=True, text=True, cwd=repo_root, env=run_env, timeout=240)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        return done, events.parse_events(done.stdout)

    _, first = train()
    starts = [e for e in first if e["event"] == "start"]
    assert sorted(e["rank"] for e in starts) == [0, 1]  # type: ignore[type-var]
    start = starts[0]
    assert start["kind"] == "labelled+scored" and start["loss"] == "SoftmaxLoss+CosineSimilarityLoss"
    assert start["datasets"] == [{"name": "nli", "kind": "labelled", "loss": "SoftmaxLoss", "rows": 240},
                                 {"name": "stsb", "kind": "scored", "loss": "CosineSimilarityLoss", "rows": 240}]
    assert start["train_rows"] == 480 and start["world_size"] == 2
    assert {e["model_wrapper"] for e in first if e["event"] == "wrapped"} == {"DistributedDataParallel"}

    losses = [e for e in first if e["event"] == "loss"]
    assert [e["step"] for e in losses] == list(range(LOGGING_STEPS, STEPS + 1, LOGGING_STEPS))
    seen: set[str] = set()
    for event in losses:
        per_dataset = event["losses"]
        assert isinstance(per_dataset, dict) and per_dataset and set(per_dataset) <= {"nli", "stsb"}, event
        assert all(isinstance(v, float) and v > 0 for v in per_dataset.values()), event
        seen.update(per_dataset)
    assert seen == {"nli", "stsb"}, losses

    scores = {e["when"]: e for e in first if e["event"] == "eval"}
    assert set(scores) == {"before", "after"}
    assert {e["metric"] for e in scores.values()} == {"spearman_cosine"}
    assert all(e["rank"] == 0 for e in scores.values())
    assert events.first(first, "done") == {"event": "done", "rank": 0, "global_step": STEPS}
    # SoftmaxLoss's classifier lives outside the model DDP wraps: both ranks still end with the same one.
    assert events.first(first, "loss_weights") == {"event": "loss_weights", "rank": 0, "parameters": 2,
                                                   "same_on_every_rank": True}
    assert (out / "final" / "modules.json").is_file() and (out / "final" / "stjobs_run.json").is_file()

    # The same command again: the run is finished, so no rank trains (and nothing steps past --max-steps).
    again, second = train()
    assert [e["event"] for e in second] == ["already_complete"], second
    assert second[0] == {"event": "already_complete", "rank": 0, "step": STEPS, "path": str(out / "final"),
                         "max_steps": STEPS, "epochs": None}
    assert f"already holds the model trained to step {STEPS} (--max-steps {STEPS}); nothing to train" in again.stdout
    assert not (out / "checkpoints" / f"checkpoint-{STEPS + 1}").exists()
