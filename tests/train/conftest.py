"""Fixtures for the training entrypoint's unit tests: small example data, offline env, signal hygiene."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from stjobs.train import example_data

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def run_env() -> dict[str, str]:
    """The environment for subprocesses: no hub access, one thread per process (the CI box has two cores)."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("STJOBS_STRATEGY", None)
    return env


@pytest.fixture()
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300/60-row pairs split: enough to build a vocabulary and train a few steps, small enough to be quick."""
    out = tmp_path_factory.mktemp("train-data")
    example_data.write(out, train_rows=300, eval_rows=60, seed=1)
    return out


@pytest.fixture()
def hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")


@pytest.fixture()
def restore_signals() -> Iterator[None]:
    """Tests that install the preemption handlers must not leave them in the pytest process."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def refused_in_one_line(argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str],
                        needles: list[str]) -> None:
    """The training's options parser exits 2 with one ``stjobs.train: error:`` line holding every needle."""
    from stjobs.train.args import parse_config

    with pytest.raises(SystemExit) as exited:
        parse_config(argv, environ=environ)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stjobs.train: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
