"""``stjobs plot``: one PNG of a run, drawn from the training's STJOBS events (:mod:`stjobs.train.events`).

Four panels over the optimisation step: the training loss (and each dataset's, for a multi-dataset run), the
learning rate, samples/s per logging window, and the evaluation scores. Only the events are read, so a job of any
backend plots the same way. matplotlib is imported inside :func:`figure` (Agg: files only), so this module costs
nothing until a plot is drawn and ``stjobs render`` never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stjobs.errors import StjobsError, UsageError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# The panels' titles, in reading order (left to right, top to bottom); tests find the axes by them.
LOSS_TITLE = "training loss"
LR_TITLE = "learning rate"
RATE_TITLE = "samples/s"
EVAL_TITLE = "evaluation"
TITLES = (LOSS_TITLE, LR_TITLE, RATE_TITLE, EVAL_TITLE)


@dataclass
class RunSeries:
    """What the panels draw, as plain lists: (step, value) points sorted by step."""

    loss: list[tuple[int, float]] = field(default_factory=list)
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    learning_rate: list[tuple[int, float]] = field(default_factory=list)
    samples_per_second: list[tuple[int, float]] = field(default_factory=list)
    steady_samples_per_second: float | None = None
    scores: list[tuple[int, float, str]] = field(default_factory=list)  # (step, score, when)
    metric: str | None = None
    heading: str = ""

    def empty(self) -> bool:
        return not (self.loss or self.scores)


def _number(value: Any) -> float | None:
    # bool is an int to Python, but never a loss; null (a diverged loss, an unmeasured rate) is no point.
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _by_step(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The rank-0 events called ``name``, one per step, sorted by step. A requeued or resumed job's log holds the
    steps after its checkpoint twice; the later attempt's event is the one that counts (it trained the model)."""
    found: dict[int, dict[str, Any]] = {}
    for item in events:
        step = item.get("step")
        if item.get("event") == name and item.get("rank", 0) == 0 and isinstance(step, int):
            found[step] = item
    return [found[step] for step in sorted(found)]


def series(events: list[dict[str, Any]]) -> RunSeries:
    """The panels' data from a run's events (pure: no matplotlib)."""
    run = RunSeries()
    for item in _by_step(events, "loss"):
        step = int(item["step"])
        for key, points in (("loss", run.loss), ("learning_rate", run.learning_rate),
                            ("samples_per_second", run.samples_per_second)):
            value = _number(item.get(key))
            if value is not None:
                points.append((step, value))
        per_dataset = item.get("losses")
        if isinstance(per_dataset, dict):
            for name, value in per_dataset.items():
                number = _number(value)
                if number is not None:
                    run.losses.setdefault(str(name), []).append((step, number))
    # "before" and "after" can share a step with a "during" evaluation: keyed by (when, step), not by step alone.
    evaluations: dict[tuple[str, int], dict[str, Any]] = {}
    for item in events:
        if item.get("event") == "eval" and isinstance(item.get("step"), int):
            evaluations[(str(item.get("when")), int(item["step"]))] = item
    order = {"before": 0, "during": 1, "after": 2}
    for (when, step), item in sorted(evaluations.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 1))):
        score = _number(item.get("score"))
        if score is not None:
            run.scores.append((step, score, when))
            run.metric = str(item.get("metric") or run.metric or "score")
    throughput = [item for item in events if item.get("event") == "throughput"]
    if throughput:
        run.steady_samples_per_second = _number(throughput[-1].get("steady_samples_per_second"))
    start = next((item for item in events if item.get("event") == "start" and item.get("rank", 0) == 0), None)
    if start is not None:
        run.heading = (f"{start.get('model')}: {start.get('loss')}, {start.get('world_size')} process(es), "
                       f"global batch {start.get('global_batch_size')}")
    return run


def figure(run: RunSeries, title: str) -> Figure:
    """The 2 x 2 panels of ``run``; the caller saves and closes it."""
    fig = _new_figure((11, 7.5))
    grid = fig.subplots(2, 2)
    loss_axes, lr_axes, rate_axes, eval_axes = (grid[0][0], grid[0][1], grid[1][0], grid[1][1])
    for axes, name in zip((loss_axes, lr_axes, rate_axes, eval_axes), TITLES, strict=True):
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("step")
        axes.grid(True, color="#eeeeee", linewidth=0.6)
    _line(loss_axes, run.loss, "loss (all datasets)" if run.losses else "loss", linewidth=1.8)
    for name, points in sorted(run.losses.items()):
        _line(loss_axes, points, name, linewidth=1.0, alpha=0.8)
    _line(lr_axes, run.learning_rate, "learning rate")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _line(rate_axes, run.samples_per_second, "per logging window", marker=".")
    if run.steady_samples_per_second:
        # The whole run's steady-state figure (the throughput event) beside the windows it summarises.
        rate_axes.axhline(run.steady_samples_per_second, color="#999999", linestyle="--", linewidth=1.0,
                          label=f"steady state {run.steady_samples_per_second:,.1f}/s")
    if run.samples_per_second:
        rate_axes.set_ylim(bottom=0)
    _line(eval_axes, [(step, score) for step, score, _ in run.scores], run.metric or "score", marker="o")
    for index, (step, score, when) in enumerate(run.scores):
        if when in ("before", "after"):
            # "after" sits at the right edge: its label goes left of the point so it stays inside; each label
            # goes on the side of its point away from the line to its neighbour, so the line never crosses it.
            left = when == "after"
            neighbour = run.scores[max(0, min(len(run.scores) - 1, index - 1 if left else index + 1))][1]
            below = neighbour > score
            eval_axes.annotate(f"{when} {score:.3f}", (step, score), textcoords="offset points",
                               xytext=(-5 if left else 5, -6 if below else 6), ha="right" if left else "left",
                               va="top" if below else "bottom", fontsize=7)
    eval_axes.margins(x=0.05, y=0.15)
    if run.metric:
        eval_axes.set_ylabel(run.metric, fontsize=8)
    for axes, has, what in ((loss_axes, run.loss, "loss"), (lr_axes, run.learning_rate, "learning rate"),
                            (rate_axes, run.samples_per_second, "samples/s"), (eval_axes, run.scores, "eval")):
        if has:
            axes.legend(fontsize=7, loc="best")
        else:
            axes.text(0.5, 0.5, f"no {what} events", ha="center", va="center", transform=axes.transAxes,
                      color="#999999")
    fig.suptitle(title + (f"\n{run.heading}" if run.heading else ""), fontsize=10)
    fig.tight_layout()
    return fig


def _new_figure(size: tuple[float, float]) -> Figure:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a login node or in CI
        from matplotlib.figure import Figure
    except ImportError:
        raise StjobsError("plot: the PNG needs matplotlib; pip install 'stjobs[bench]'") from None
    # A bare Figure, not pyplot: nothing global to leak between plots in one process (the API, the tests).
    return Figure(figsize=size)


def _line(axes: Axes, points: list[tuple[int, float]], label: str, **style: Any) -> None:
    if points:
        axes.plot([step for step, _ in points], [value for _, value in points], label=label, **style)


def write_png(events: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Draw ``events`` into ``path`` (parents created); refuses a log without loss or eval events (exit code 2:
    nothing to draw is the caller's timing, not a failure of stjobs)."""
    run = series(events)
    if run.empty():
        raise UsageError(f"plot: {title}: no loss or eval events in its log yet (the training writes a loss event "
                         "every --logging-steps steps)")
    fig = figure(run, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No Software/date entries: the same events give the same bytes, so a committed PNG only changes with its run.
    fig.savefig(path, dpi=100, metadata={"Software": None})
    return path


def sweep_figure(runs: dict[str, tuple[str, RunSeries]], title: str) -> Figure:
    """A sweep's points side by side: each point's training loss, and each point's evaluation scores, over steps
    (one line per point, labelled with its values)."""
    fig = _new_figure((12, 5))
    loss_axes, eval_axes = fig.subplots(1, 2)
    for axes, name in ((loss_axes, LOSS_TITLE), (eval_axes, EVAL_TITLE)):
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("step")
        axes.grid(True, color="#eeeeee", linewidth=0.6)
    metrics = set()
    for job_id, (label, run) in runs.items():
        name = f"{job_id.rsplit('-', 1)[-1]}: {label}" if label else job_id
        _line(loss_axes, run.loss, name, linewidth=1.2)
        _line(eval_axes, [(step, score) for step, score, _ in run.scores], name, marker="o", linewidth=1.0)
        if run.metric:
            metrics.add(run.metric)
    if len(metrics) == 1:
        eval_axes.set_ylabel(metrics.pop(), fontsize=8)
    for axes, has in ((loss_axes, any(run.loss for _, run in runs.values())),
                      (eval_axes, any(run.scores for _, run in runs.values()))):
        if has:
            axes.legend(fontsize=7, loc="best")
        else:
            axes.text(0.5, 0.5, "no events", ha="center", va="center", transform=axes.transAxes, color="#999999")
    fig.suptitle(f"{title}: {len(runs)} point(s)", fontsize=10)
    fig.tight_layout()
    return fig


def write_sweep_png(points: dict[str, tuple[str, list[dict[str, Any]]]], path: Path, title: str) -> Path:
    """A sweep's picture from each point's events (``points``: job id -> (label, events)); refused while no point
    has logged a loss or an evaluation."""
    runs = {job_id: (label, series(events)) for job_id, (label, events) in points.items()}
    if all(run.empty() for _, run in runs.values()):
        raise UsageError(f"plot: {title}: no point has loss or eval events yet")
    fig = sweep_figure(runs, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    return path
