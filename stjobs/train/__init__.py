"""The built-in training entrypoint: ``python -m stjobs.train --model M --train-data PATH --output-dir DIR``.

Modules: ``args`` (command line -> frozen TrainConfig, data sources), ``losses`` (the loss table, stdlib only),
``data`` (loading, data kinds), ``objectives`` (loss modules and evaluators), ``models`` (model resolution,
tiny-bert), ``sampler`` (length-grouped and multi-dataset batches; imports torch), ``distributed`` (process group,
preemption, which strategy ran), ``checkpoints`` (which checkpoint to resume from, finished runs), ``trainer`` (the
Trainer, its arguments and event callback), ``run`` (the run's top level), ``events`` (STJOBS_EVENT lines),
``example_data`` and ``recipe_data`` (deterministic demo data: retrieval; NLI and STS). Importing this package needs
only the standard library; torch, transformers, datasets and sentence-transformers are imported when a run starts.
"""
