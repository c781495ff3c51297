"""The built-in training's data files are checked at submit where this machine sees the job's files (issue 16):
a typo fails in one line before anything starts, not four seconds into the job under every rank's traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import stjobs
from stjobs.backends.common import check_workdir
from stjobs.errors import SpecError
from tests.conftest import EXAMPLES, offline_env, stjobs_bin


def spec_with(workdir: Path, *args: str) -> stjobs.JobSpec:
    return stjobs.load_spec(EXAMPLES / "tiny-ddp.yaml", overrides=[
        ("workdir", str(workdir)), ("entrypoint.args", ["--model", "tiny-bert", *args])])


@pytest.mark.parametrize("args, refused", [
    (("--train-data", "data/train.jsonl"), None),
    (("--train-data", "data/trian.jsonl"), "--train-data data/trian.jsonl"),
    (("--train-data", "nli=data/train.jsonl:softmax", "--train-data", "sts=data/sts.jsonl:cosine"),
     "--train-data sts=data/sts.jsonl:CosineSimilarityLoss"),
    (("--train-data", "data/train.jsonl", "--eval-data", "./held-out"), "--eval-data ./held-out"),
    (("--train-data", "data"), None),  # a saved dataset directory
    (("--train-data", "sentence-transformers/all-nli"), None),  # a hub name: not a path this machine must have
    (("--train-data", "/nowhere/at/all/train.jsonl"), None),  # a directory only the compute nodes may have
])
def test_missing_data_is_refused_naming_the_option_and_the_path(tmp_path: Path, args: tuple[str, ...],
                                                                refused: str | None) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"anchor": "a", "positive": "b"}\n')
    spec = spec_with(tmp_path, *args)
    if refused is None:
        assert check_workdir(spec, None, "for a local job") == tmp_path
        return
    with pytest.raises(SpecError) as error:
        check_workdir(spec, None, "for a local job")
    message = str(error.value)
    assert message.startswith(f"entrypoint.args: got '{refused}'; expected a data file or saved dataset that exists "
                              "for a local job (")
    assert "relative paths start at the workdir" in message


def test_an_absolute_path_in_a_directory_this_machine_has_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not; relative paths"):
        check_workdir(spec_with(tmp_path, "--train-data", str(tmp_path / "missing.jsonl")), None, "here")


def test_submit_refuses_before_any_job_exists(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = subprocess.run([stjobs_bin(), "submit", str(EXAMPLES / "tiny-ddp.yaml"), "--set",
                           'entrypoint.args=["--model","tiny-bert","--train-data","examples/data/trian.jsonl"]'],
                          capture_output=True, text=True, env=offline_env(STJOBS_HOME=str(home)), timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "stjobs: error: entrypoint.args: got '--train-data examples/data/trian.jsonl'; expected a data file or saved "
        f"dataset that exists for a local job ({EXAMPLES / 'data' / 'trian.jsonl'} does not; relative paths start "
        "at the workdir)"]
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())
