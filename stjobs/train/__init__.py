"""The built-in training entrypoint: ``python -m stjobs.train --model M --train-data PATH --output-dir DIR``.

Modules: ``args`` (command line -> frozen TrainConfig), ``data`` (loading, data kinds, losses, evaluators),
``models`` (model resolution, tiny-bert), ``sampler`` (length-grouped batches; imports torch), ``distributed``
(process group, preemption, which strategy ran), ``checkpoints`` (which checkpoint to resume from), ``trainer``
(the Trainer, its arguments and event callback), ``run`` (the run's top level), ``events`` (STJOBS_EVENT lines),
``example_data`` (deterministic demo data). Importing this package needs only the standard library; torch,
transformers, datasets and sentence-transformers are imported when a run starts.
"""
