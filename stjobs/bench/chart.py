"""bench.png: per row the docs' speed-up beside the one measured here (grouped bars), samples/s written on them."""

from __future__ import annotations

from pathlib import Path

from stjobs.bench.report import BenchReport
from stjobs.errors import StjobsError

DOCS_COLOUR = "#999999"
HERE_COLOUR = "#4c72b0"


def chart(report: BenchReport, path: Path) -> None:
    """Rows top to bottom in the table's order; a row without a figure has no bar and says why in short."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
        import matplotlib.pyplot as plt
    except ImportError:
        raise StjobsError("bench: the PNG chart needs matplotlib; pip install 'stjobs[bench]'") from None
    rows = list(report.rows)[::-1]  # barh draws bottom-up
    height = 0.38
    figure, axes = plt.subplots(figsize=(10, 0.75 * len(rows) + 2.4))
    positions = list(range(len(rows)))
    docs = [row.docs[1] if row.docs else 0.0 for row in rows]
    here = [row.speedup or 0.0 for row in rows]
    docs_bars = axes.barh([p + height / 2 for p in positions], docs, height, color=DOCS_COLOUR,
                          label=f"docs ({report.machine_docs()})")
    here_bars = axes.barh([p - height / 2 for p in positions], here, height, color=HERE_COLOUR,
                          label=f"here ({report.machine_here()})")
    for bar, row in zip(docs_bars, rows, strict=True):
        text = f" {row.docs[1]:.2f}x  ({row.docs[0]:,.0f}/s)" if row.docs else " - (not in the docs)"
        axes.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=7)
    for bar, row in zip(here_bars, rows, strict=True):
        if row.samples_per_second is not None and row.speedup is not None:
            text = f" {row.speedup:.2f}x  ({row.samples_per_second:,.1f}/s)"
        else:
            text = " not run: " + (row.note[:60] + ("..." if len(row.note) > 60 else ""))
        axes.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=7)
    axes.set_yticks(positions, [row.label for row in rows], fontsize=8)
    axes.axvline(1.0, color="#dddddd", linewidth=0.8, zorder=0)
    axes.set_xlabel("speed-up over no parallelism (steady-state samples/s)")
    widest = max([*docs, *here, 1.0])
    axes.set_xlim(0, widest * 1.6)  # room for the labels right of the longest bar
    shape = report.shape
    axes.set_title(f"{shape.describe_model()}, {shape.per_device_batch_size} per device, max length "
                   f"{shape.max_seq_length}, {shape.precision}, {shape.steps} steps", fontsize=9)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)
