"""Secrets: a spec names them, never holds them. A canary value in the submitting environment must reach the job
by name and appear nowhere else: not in a rendered file of any backend, not in a plan printout, not in a job
directory file or a log line.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import offline_env, stjobs_bin

SECRET = "HF_TOKEN"
# The probe proves the job saw the value (its length and hash) without ever printing it.
PROBE = """\
import hashlib, os, sys
value = os.environ.get("HF_TOKEN")
if value is None:
    print("secret-missing", flush=True)
    sys.exit(3)
print("secret-seen", len(value), hashlib.sha256(value.encode()).hexdigest(), flush=True)
"""


@pytest.fixture()
def canary() -> str:
    return f"canary-{secrets.token_hex(16)}"


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """A submit directory with the probe script and a spec naming the secret (and an image, for k8s)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "probe.py").write_text(PROBE)
    spec = {"name": "secret-canary", "image": "ghcr.io/org/train:1.0", "secrets": [SECRET],
            "env": {"PROBE_NOTE": "not a secret"}, "entrypoint": {"script": "probe.py"}}
    (work / "job.yaml").write_text(yaml.safe_dump(spec))
    return work


def cli(work: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([stjobs_bin(), *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"stjobs {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def files_holding(root: Path, needle: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle``; the list of files looked at must not be empty."""
    files = [path for path in root.rglob("*") if path.is_file()]
    assert files, f"nothing under {root}"
    return [str(path) for path in files if needle.encode() in path.read_bytes()]


def container_env(manifest: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The env list of every container of every replica (PyTorchJob) in the manifest."""
    found: list[list[dict[str, Any]]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "containers" in node:
                found.extend(container.get("env", []) for container in node["containers"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(manifest)
    return found


@pytest.mark.parametrize("backend", ["local", "slurm", "k8s"])
def test_canary_never_reaches_rendered_files_or_the_plan(backend: str, work: Path, tmp_path: Path,
                                                         canary: str) -> None:
    env = offline_env(**{SECRET: canary, "STJOBS_HOME": str(tmp_path / "home")})
    out = tmp_path / "out"
    rendered = cli(work, env, "render", "job.yaml", "-b", backend, "-o", str(out))
    dry = cli(work, env, "render", "job.yaml", "-b", backend, "--dry-run")
    for printed in (rendered.stdout, rendered.stderr, dry.stdout, dry.stderr):
        assert canary not in printed
    assert f"secrets taken from the environment: {SECRET}" in dry.stdout  # the name is stated, by name only
    assert files_holding(out, canary) == []
    assert files_holding(out, SECRET), "the rendered files name the secret"
    # The validated spec written next to the scripts lists the name.
    assert yaml.safe_load((out / "stjobs.yaml").read_text())["secrets"] == [SECRET]
    if backend == "k8s":
        manifest = yaml.safe_load((out / "pytorchjob.yaml").read_text())
        envs = container_env(manifest)
        assert envs, "the manifest has containers"
        for entries in envs:
            entry = next(item for item in entries if item["name"] == SECRET)
            assert entry == {"name": SECRET, "valueFrom": {"secretKeyRef": {"name": "secret-canary-secrets",
                                                                           "key": SECRET}}}
    else:
        # SLURM and local hand the job the submitting environment: the scripts only check that the name is set.
        for path in out.rglob("*"):
            if path.is_file():
                text = path.read_text()
                assert not re.search(rf"\b{SECRET}=", text), f"{path} assigns {SECRET}"
                assert "export " + SECRET not in text, path
        assert f"${{{SECRET}+x}}" in (out / "launch.sh").read_text()


def test_local_job_gets_the_secret_by_name_and_writes_it_nowhere(work: Path, tmp_path: Path, canary: str) -> None:
    home = tmp_path / "home"
    env = offline_env(**{SECRET: canary, "STJOBS_HOME": str(home)})
    submitted = cli(work, env, "submit", "job.yaml", "--wait", timeout=300)
    job_id = submitted.stdout.split()[1]
    assert submitted.stdout.rstrip().endswith(f"{job_id}: COMPLETED"), submitted.stdout
    logs = cli(work, env, "logs", job_id)
    status = cli(work, env, "status", job_id, "--json")
    table = cli(work, env, "status")
    # The job saw exactly the canary: proof that it was passed, by name, through the environment.
    assert f"secret-seen {len(canary)} {hashlib.sha256(canary.encode()).hexdigest()}" in logs.stdout, logs.stdout
    assert json.loads(status.stdout)["state"] == "COMPLETED"
    for done in (submitted, logs, status, table):
        assert canary not in done.stdout and canary not in done.stderr
    job_dir = home / "jobs" / job_id
    assert (job_dir / "job.json").is_file() and (job_dir / "output.log").is_file()
    assert files_holding(home, canary) == [], "no job directory file or log may hold the value"
    assert files_holding(work, canary) == []


def test_a_secret_missing_where_you_submit_is_refused_before_anything_starts(work: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = offline_env(STJOBS_HOME=str(home))
    env.pop(SECRET, None)
    done = subprocess.run([stjobs_bin(), "submit", "job.yaml"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"stjobs: error: secrets[0]: got '{SECRET}'; expected a variable set where you submit (export {SECRET}=... "
        "first; the job takes its value from this environment, never from a file)"]
    assert not home.exists()
