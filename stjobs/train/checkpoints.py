"""Which of the Trainer's ``checkpoint-N`` folders a run may resume from.

A separate module because this is the one piece of resuming that is ours rather than the Trainer's: a process killed
while saving (preemption past the grace period, a node lost) leaves a half-written checkpoint, and the Trainer would
pick it as the newest and fail to load it. Only the standard library, so it is tested and used without torch.
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
