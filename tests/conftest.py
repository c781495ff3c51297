from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own STJOBS_HOME: jobs from one test never show up in another's status table."""
    home = tmp_path_factory.mktemp("stjobs-home")
    monkeypatch.setenv("STJOBS_HOME", str(home))
    return home


def stjobs_bin() -> str:
    path = VENV_BIN / "stjobs"
    return str(path) if path.exists() else "stjobs"


def offline_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"})
    env.update(extra)
    return env


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The image build's durations (issue: report them in the test output), when that group ran."""
    module = sys.modules.get("tests.test_image_build")
    timings = getattr(module, "TIMINGS", None)
    if timings:
        terminalreporter.section("image build timings")
        for step, seconds in timings.items():
            terminalreporter.write_line(f"{step:48} {seconds:7.1f} s")
