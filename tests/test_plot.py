"""`stjobs plot`: the figure from synthetic events, the refusal without events, and a real local job plotted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stjobs.errors import UsageError
from stjobs.plot import EVAL_TITLE, LOSS_TITLE, LR_TITLE, RATE_TITLE, TITLES, figure, series, write_png
from stjobs.train.events import format_event, parse_events
from tests.conftest import build_tiny_model, cli, job_of

pytest.importorskip("matplotlib")


def synthetic_run() -> list[dict[str, Any]]:
    """Two datasets, 4 logging steps, evaluations before, during and after, and a log of the shape a real one has
    (torchrun's rank prefix, other output between the events)."""
    lines = ["[rank0]: " + format_event("start", rank=0, model="tiny-bert", loss="SoftmaxLoss+CosineSimilarityLoss",
                                        world_size=2, global_batch_size=32),
             "some library warning",
             format_event("eval", rank=0, when="before", metric="spearman_cosine", score=0.1, step=0)]
    for index, step in enumerate((5, 10, 15, 20)):
        lines.append("[rank0]: " + format_event(
            "loss", rank=0, step=step, loss=2.0 - 0.3 * index, losses={"nli": 1.1 - 0.2 * index, "stsb": 0.3},
            learning_rate=5e-5 * (1 - index / 4), samples_per_second=None if index == 0 else 100.0 + index,
            epoch=step / 20))
    lines += [format_event("eval", rank=0, when="during", metric="spearman_cosine", score=0.4, step=10),
              format_event("throughput", rank=0, samples_per_second=95.0, steady_samples_per_second=102.0),
              format_event("eval", rank=0, when="after", metric="spearman_cosine", score=0.6, step=20)]
    return parse_events("\n".join(lines))


def axes_by_title(fig: Any) -> dict[str, Any]:
    return {axes.get_title(): axes for axes in fig.axes}


def line_data(axes: Any) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}


def test_the_figure_has_a_panel_per_series_with_the_events_points() -> None:
    fig = figure(series(synthetic_run()), "job-1")
    panels = axes_by_title(fig)
    assert tuple(panels) == TITLES
    loss = line_data(panels[LOSS_TITLE])
    assert loss["loss (all datasets)"] == ([5, 10, 15, 20], pytest.approx([2.0, 1.7, 1.4, 1.1]))
    assert loss["nli"][1] == pytest.approx([1.1, 0.9, 0.7, 0.5]) and loss["stsb"][0] == [5, 10, 15, 20]
    assert line_data(panels[LR_TITLE])["learning rate"][1] == pytest.approx([5e-5, 3.75e-5, 2.5e-5, 1.25e-5])
    # The first window had no measured rate: no point for it, not a zero.
    rate = line_data(panels[RATE_TITLE])
    assert rate["per logging window"] == ([10, 15, 20], [101.0, 102.0, 103.0])
    assert any("steady state 102.0/s" in label for label in rate)
    assert line_data(panels[EVAL_TITLE])["spearman_cosine"] == ([0, 10, 20], [0.1, 0.4, 0.6])
    assert fig.get_suptitle().splitlines() == ["job-1", "tiny-bert: SoftmaxLoss+CosineSimilarityLoss, 2 process(es), "
                                               "global batch 32"]


def test_a_panel_without_events_says_so() -> None:
    only_loss = [e for e in synthetic_run() if e["event"] == "loss"]
    for item in only_loss:
        item.pop("losses")
        item.pop("learning_rate")
    panels = axes_by_title(figure(series(only_loss), "job-2"))
    assert list(line_data(panels[LOSS_TITLE])) == ["loss"]
    assert [text.get_text() for text in panels[EVAL_TITLE].texts] == ["no eval events"]
    assert [text.get_text() for text in panels[LR_TITLE].texts] == ["no learning rate events"]


def test_a_resumed_run_plots_each_step_once_from_the_later_attempt() -> None:
    events = [{"event": "loss", "rank": 0, "step": step, "loss": value}
              for step, value in ((5, 3.0), (10, 2.0), (10, 2.5), (15, 1.0))]
    assert series(events).loss == [(5, 3.0), (10, 2.5), (15, 1.0)]


def test_the_png_is_written_and_the_same_events_give_the_same_bytes(tmp_path: Path) -> None:
    first = write_png(synthetic_run(), tmp_path / "a" / "plot.png", "job-1")
    second = write_png(synthetic_run(), tmp_path / "b.png", "job-1")
    assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert first.read_bytes() == second.read_bytes()


def test_a_log_without_events_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^plot: job-3: no loss or eval events in its log yet") as caught:
        write_png(parse_events("torchrun starting\n[rank0]: " + format_event("start", rank=0)), tmp_path / "p.png",
                  "job-3")
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2
    assert not (tmp_path / "p.png").exists()


def test_the_cli_refuses_a_job_without_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from stjobs import api
    from stjobs.cli import main

    monkeypatch.setattr(api, "logs", lambda job_id, follow=False, rank=None: iter(["starting\n"]))
    monkeypatch.setattr("stjobs.jobs.load_record",
                        lambda job_id: SimpleNamespace(job_id=job_id, job_dir=str(tmp_path), details={}))
    assert main(["plot", "job-4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stjobs: error: plot: job-4: no loss or eval events") and "\n" not in err


@pytest.mark.parametrize("flags, expected", [
    (("status", "--plot"), "--plot: got --plot without a JOB; expected stjobs status JOB --plot [FILE.png]"),
    (("status", "job-5", "--plot", "--watch", "1"), "--plot: got --plot without leaving out --watch"),
])
def test_status_plot_needs_one_job_and_no_watch(flags: tuple[str, ...], expected: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from stjobs.cli import main

    assert main(list(flags)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stjobs status: error: {expected}") and err.count("\n") == 1, err


@pytest.mark.slow
def test_a_real_local_job_is_plotted(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model")
    args = ["--model", str(model), "--train-data", "examples/data/train.jsonl", "--eval-data",
            "examples/data/eval.jsonl", "--max-steps", "12", "--per-device-batch-size", "8", "--logging-steps", "3"]
    done = cli("submit", "examples/tiny-ddp.yaml", "--wait", "--set", "entrypoint.args=" + json.dumps(args),
               "--set", f"output_dir={tmp_path / 'run'}")
    job_id = job_of(done.stdout)
    assert done.stdout.strip().endswith(f"{job_id}: COMPLETED"), done.stdout + done.stderr
    events = parse_events(cli("logs", job_id, "--raw").stdout)
    loss_events = [e for e in events if e["event"] == "loss"]
    assert len(loss_events) == 4
    assert all(e["learning_rate"] > 0 and e["epoch"] > 0 for e in loss_events)
    assert all(e["samples_per_second"] > 0 for e in loss_events[1:])

    job_dir = Path(json.loads(Path(os.environ["STJOBS_HOME"], "jobs", job_id, "job.json").read_text())["job_dir"])
    plotted = cli("plot", job_id)
    assert plotted.stdout.strip() == f"wrote {job_dir / 'plot.png'}"
    assert (job_dir / "plot.png").read_bytes()[:4] == b"\x89PNG"
    # `status JOB --plot FILE`: the job's line, then the picture (the same bytes: the same events, from its files).
    shown = cli("status", job_id, "--plot", str(tmp_path / "status.png")).stdout.splitlines()
    assert job_id in shown[-2] and "COMPLETED" in shown[-2] and "12/12" in shown[-2], shown
    assert shown[-1] == f"wrote {tmp_path / 'status.png'}"
    assert (tmp_path / "status.png").read_bytes() == (job_dir / "plot.png").read_bytes()

    from stjobs import api

    fig = figure(series(events), job_id)
    (line,) = [line for line in axes_by_title(fig)[LOSS_TITLE].get_lines() if line.get_label() == "loss"]
    assert len(line.get_xdata()) == len(loss_events)
    assert api.plot(job_id, tmp_path / "x.png") == tmp_path / "x.png"


def test_plot_without_a_job_draws_the_newest_or_says_there_is_none(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from stjobs import api
    from stjobs.cli import main
    from stjobs.jobs import JobRecord, jobs_root

    assert main(["plot"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stjobs: error: job: no job has been submitted yet") and err.count("\n") == 1
    for index, name in enumerate(("older", "newer")):
        job_dir = jobs_root() / name
        job_dir.mkdir(parents=True)
        JobRecord(job_id=name, backend="local", name=name, job_dir=str(job_dir), submitted_at=time.time() + index,
                  nodes=1, procs_per_node=1).save()
    drawn: list[str] = []
    monkeypatch.setattr(api, "events", lambda job_id, rank=None: drawn.append(job_id) or synthetic_run())
    assert main(["plot"]) == 0
    assert drawn == ["newer"] and (jobs_root() / "newer" / "plot.png").is_file()
