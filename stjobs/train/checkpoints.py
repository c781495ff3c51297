"""Which of the Trainer's ``checkpoint-N`` folders a run may resume from.

A separate module because this is the one piece of resuming that is ours rather than the Trainer's: a process killed
while saving (preemption past the grace period, a node lost) leaves a half-written checkpoint, and the Trainer would
pick it as the newest and fail to load it. And whether anything is left to train at all: the marker a finished run
leaves in ``final`` (RUN_MARKER). Only the standard library, so it is tested and used without torch.
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Written by the Trainer last, after the weights, optimizer, scheduler and RNG states: a checkpoint is complete when
# this file parses and names the checkpoint's own step. A process killed while saving leaves it missing or cut off.
CHECKPOINT_COMPLETE_MARKER = "trainer_state.json"


def newest_checkpoint(folder: Path, torn: list[tuple[Path, str]] | None = None) -> Path | None:
    """The highest-step ``checkpoint-N`` in ``folder`` that was written completely, or None. Incomplete ones
    (a process died while writing them) are skipped and, when ``torn`` is given, listed there with the reason."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    for step, child in sorted(found, reverse=True):
        why = checkpoint_problem(child, step)
        if why is None:
            return child
        if torn is not None:
            torn.append((child, why))
    return None


def checkpoint_problem(path: Path, step: int) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it is complete."""
    import json

    marker = path / CHECKPOINT_COMPLETE_MARKER
    try:
        state = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {CHECKPOINT_COMPLETE_MARKER} (the save did not finish)"
    except (OSError, ValueError) as error:
        return f"{CHECKPOINT_COMPLETE_MARKER} is unreadable ({type(error).__name__}; cut off while written?)"
    named = state.get("global_step") if isinstance(state, dict) else None
    if named != step:
        return f"{CHECKPOINT_COMPLETE_MARKER} names step {named}, not {step}"
    return None


# Written into `final` after the model, by rank 0, when a run ends at its planned length: what was trained and how far.
# A later run with the same output dir and --resume reads it to tell "already done" from "continue" (without it,
# resuming from the last checkpoint of a finished --max-steps N run stepped on to N + 1).
RUN_MARKER = "stjobs_run.json"


def write_run_marker(final_dir: Path, global_step: int, max_steps: int | None, epochs: float | None,
                     train_data: list[str]) -> Path:
    """Write the marker atomically (a reader never sees half of it); its path."""
    import json
    import os

    path = final_dir / RUN_MARKER
    record = {"global_step": global_step, "max_steps": max_steps, "epochs": epochs, "train_data": train_data}
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8", newline="\n")
    os.replace(scratch, path)
    return path


def finished_run(final_dir: Path, max_steps: int | None, epochs: float | None) -> dict[str, object] | None:
    """The marker's record when ``final_dir`` already holds a model trained as far as planned: to at least
    ``max_steps`` steps, or (a run of epochs) to at least ``epochs``. None when there is no readable marker or the
    plan goes further (a larger --max-steps continues from the checkpoints, as resuming does)."""
    import json

    try:
        record = json.loads((final_dir / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    step, ran_steps, ran_epochs = record.get("global_step"), record.get("max_steps"), record.get("epochs")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    if max_steps is not None:
        return record if step >= max_steps else None
    if epochs is not None and ran_steps is None and isinstance(ran_epochs, (int, float)) and ran_epochs >= epochs:
        return record
    return None


def clear_run_marker(final_dir: Path) -> None:
    """A run that trains removes the old marker first: if it stops early (preempted, killed) the next run must not
    take the previous model for this one's result."""
    (final_dir / RUN_MARKER).unlink(missing_ok=True)
