"""The built-in training entrypoint: ``python -m stjobs.train --model M --train-data PATH --output-dir DIR``.

Modules: ``args`` (command line -> frozen TrainConfig, data sources), ``losses`` (the loss table, stdlib only),
``data`` (loading, data kinds), ``objectives`` (loss modules and evaluators), ``models`` (model resolution,
tiny-bert), ``sampler`` (length-grouped and multi-dataset batches; imports torch), ``distributed`` (process group,
preemption, which strategy ran), ``checkpoints`` (which checkpoint to resume from, finished runs), ``trainer`` (the
Trainer, its arguments and event callback), ``run`` (the run's top level), ``events`` (STJOBS_EVENT lines),
``example_data`` and ``recipe_data`` (deterministic demo data: retrieval; NLI and STS). Importing this package needs
only the standard library; torch, transformers, datasets and sentence-transformers are imported when a run starts.

For your own training script: ``from stjobs.train import model_path`` (models.model_path: the local directory of a
model stjobs resolves offline, e.g. the bundled all-MiniLM-L6-v2, else the name unchanged), and
``stjobs.train.callbacks`` (PreemptionCallback, resume_checkpoint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stjobs.train.models import model_path as model_path
else:
    def __getattr__(name: str) -> object:
        """``model_path`` on first use: importing this package stays stdlib-only and loads no submodule."""
        if name == "model_path":
            from stjobs.train.models import model_path

            return model_path
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["model_path"]
