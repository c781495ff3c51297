"""``stjobs bench``: the sentence-transformers distributed-training docs' table, reproduced row for row here.

The docs (microsoft/mpnet-base, max_seq_length 384, MultiNLI + SNLI with SoftmaxLoss and STSB with
CosineSimilarityLoss trained together, 32 per device, 4 x V100, fp16) measure no parallelism, DataParallel, DDP
and FSDP. This runs the same recipe on generated data of the same shape, offline, with the mpnet-base architecture
(random weights; smaller sizes of it on CPUs), each row a real job through the local backend (the spec, launch plan
and launcher a user gets), launched the way the docs launch it, plus DDP without gradient sync (a bound) and
stjobs' defaults. Rows that cannot run here say why; the others still run.

Modules: ``options`` (what is asked, the shape it resolves to, a row, the docs' figures), ``rows`` (which rows and
their jobs), ``data`` (the generated recipe), ``report`` (the table beside the docs', checks, bench.json),
``chart`` (bench.png), ``run`` (running it). Importing this package needs only the standard library.
"""

from __future__ import annotations

from stjobs.bench.data import variable_length_pairs
from stjobs.bench.options import DOCS, DOCS_ROWS, BenchOptions, BenchRow, BenchShape
from stjobs.bench.report import BenchReport, build_report
from stjobs.bench.rows import RowPlan, plan_rows, row_spec
from stjobs.bench.run import run_bench

__all__ = ["DOCS", "DOCS_ROWS", "BenchOptions", "BenchReport", "BenchRow", "BenchShape", "RowPlan", "build_report",
           "plan_rows", "row_spec", "run_bench", "variable_length_pairs"]
