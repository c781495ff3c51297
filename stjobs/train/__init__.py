"""The built-in training entrypoint: ``python -m stjobs.train --model M --train-data PATH --output-dir DIR``.

Modules: ``args`` (command line -> frozen TrainConfig), ``data`` (loading, data kinds, losses, evaluators),
``models`` (model resolution, tiny-bert), ``run`` (the training), ``events`` (STJOBS_EVENT lines),
``example_data`` (deterministic demo data). Importing this package needs only the standard library; torch,
transformers, datasets and sentence-transformers are imported when a run starts.
"""
