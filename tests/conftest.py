from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
VENV_BIN = Path(sys.executable).parent
# A relative workdir is taken from the spec file's directory, so rendered files name this checkout's path: the
# goldens show it as if the project lived here, and a checkout anywhere else must render the same bytes.
GOLDEN_PROJECT = "/home/user/project"


def as_golden(text: str) -> str:
    """Rendered text as the goldens hold it: this checkout's path shown as GOLDEN_PROJECT."""
    return text.replace(str(REPO), GOLDEN_PROJECT)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own STJOBS_HOME: jobs from one test never show up in another's status table."""
    home = tmp_path_factory.mktemp("stjobs-home")
    monkeypatch.setenv("STJOBS_HOME", str(home))
    # No site or user defaults file reaches a test (CI runs as root: a stray /etc/stjobs/defaults.yaml would):
    # set empty, these read none; tests/test_site_defaults.py sets its own.
    monkeypatch.setenv("STJOBS_SITE_DEFAULTS", "")
    monkeypatch.setenv("STJOBS_DEFAULTS", "")
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


def cli(*args: str, check: bool = True, timeout: float = 600,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed ``stjobs`` command, run as a user runs it. STJOBS_PYTHON: the interpreter every node runs
    (sbatch passes the submitting environment on; the local backend sets the same one). ``env``: more variables
    (e.g. SLURM_CONF for the cluster without accounting)."""
    done = subprocess.run([stjobs_bin(), *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env=offline_env(STJOBS_PYTHON=str(VENV_BIN / "python"), **(env or {})))
    if check and done.returncode != 0:
        raise AssertionError(f"stjobs {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def job_of(stdout: str) -> str:
    """The job id from the first line of `stjobs submit`: "submitted <id> ..."."""
    first = stdout.splitlines()[0] if stdout else ""
    assert first.startswith("submitted "), stdout
    return first.split()[1]


def job_state(job_id: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli("status", job_id, "--json").stdout)
    return result


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 120, poll_s: float = 0.3) -> Any:
    """``check()``'s first true answer, polled every ``poll_s``; fails naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fake Kubernetes API server (tests/k8s_fake.py) and a kubeconfig pointing at it, found the way a user's
    is: through $KUBECONFIG. Render-time schema checks are off: the server checks."""
    from tests.k8s_fake import FakeKube, write_kubeconfig

    monkeypatch.delenv("STJOBS_K8S_SCHEMAS", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with FakeKube() as server:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", server.url)))
        yield server


def build_tiny_model(out: Path) -> Path:
    """The tiny BERT of the example data, built by the same command a user runs (stjobs.train.models)."""
    subprocess.run([str(Path(stjobs_bin()).parent / "python"), "-m", "stjobs.train.models", "--tiny-from",
                    str(EXAMPLES / "data" / "train.jsonl"), "--out", str(out)], check=True, cwd=REPO,
                   env=offline_env(), capture_output=True)
    return out


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The image build's durations (issue: report them in the test output), when that group ran."""
    module = sys.modules.get("tests.test_image_build")
    timings = getattr(module, "TIMINGS", None)
    if timings:
        terminalreporter.section("image build timings")
        for step, seconds in timings.items():
            terminalreporter.write_line(f"{step:48} {seconds:7.1f} s")
