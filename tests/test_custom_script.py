"""The README's own-script example, run as a user runs it: examples/my-script.yaml submitted on the local backend,
2 processes of torchrun running examples/scripts/train_pairs.py (a real SentenceTransformerTrainer with stjobs'
PreemptionCallback), all-MiniLM-L6-v2 by its hub name without a hub (stjobs.train.model_path)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import cli, job_of

pytestmark = pytest.mark.slow

STEPS = 10  # the script logs the loss every 10 steps


def test_the_custom_script_example_trains_all_minilm_offline_on_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--model", "sentence-transformers/all-MiniLM-L6-v2", "--train-data", "examples/data/train.jsonl",
            "--max-steps", str(STEPS), "--per-device-batch-size", "8"]
    done = cli("submit", "examples/my-script.yaml", "--wait", "--set", "entrypoint.args=" + json.dumps(args),
               "--set", f"output_dir={out}")
    job_id = job_of(done.stdout)
    log = cli("logs", job_id).stdout
    assert done.stdout.strip().endswith(f"{job_id}: COMPLETED"), done.stdout + log[-3000:]
    assert "outgoing traffic has been disabled" not in log

    assert (out / "final" / "modules.json").is_file(), sorted(p.name for p in out.iterdir())
    (line,) = [line for line in log.splitlines() if "trained to step" in line]
    assert f"trained to step {STEPS} on 2 processes, mean loss " in line, line
    assert math.isfinite(float(line.rsplit(" ", 1)[1]))
    # The Trainer's own record: it saves at the last step, and its state holds the steps and the logged loss.
    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == STEPS and state["max_steps"] == STEPS
    losses = [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]
    assert [step for step, _ in losses] == [STEPS] and math.isfinite(losses[0][1]), state["log_history"]
