"""The CLI's small edges (issue 16): no flag abbreviations, "did you mean" for a mistyped flag, command or value,
a missing spec said as such, a rank the job does not have refused, the k8s image message, shell completion."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from stjobs.cli import COMMANDS, build_parser, main
from stjobs.jobs import JobRecord, jobs_root

SPEC = "job.yaml"
GOOD = {"name": "job", "entrypoint": {"module": "stjobs.train", "args": ["--max-steps", 3]}}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / SPEC).write_text(yaml.safe_dump(GOOD))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += all_parsers(child)
    return found


def test_no_parser_takes_abbreviations() -> None:
    parsers = all_parsers(build_parser())
    assert len(parsers) > len(COMMANDS)  # the root, every command, and image's render and build
    assert [parser.prog for parser in parsers if parser.allow_abbrev] == []


@pytest.mark.parametrize("argv,words", [
    (["render", SPEC, "--dry-run", "--node", "2"], "did you mean --nodes? see stjobs render --help)"),
    (["render", SPEC, "--dry-run", "--node=2"], "did you mean --nodes?"),
    (["render", SPEC, "--dry-run", "--nodez", "2"], "did you mean --nodes?"),
    (["render", SPEC, "--dry", "--nodes", "2"], "did you mean --dry-run?"),
    (["submit", SPEC, "--wai"], "did you mean --wait?"),
    (["image", "render", SPEC, "--dry-rum"], "did you mean --dry-run?"),
])
def test_a_mistyped_or_shortened_flag_is_refused_with_the_nearest(argv: list[str], words: str, work: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv, capsys)
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith(f"stjobs {argv[0]}: error: arguments: got "), line
    assert words in line, line
    assert [path.name for path in work.iterdir()] == [SPEC]


def test_a_flag_near_nothing_gets_no_guess(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["render", SPEC, "--dry-run", "--zzzzzz"], capsys)
    assert code == 2
    assert one_line(err) == ("stjobs render: error: arguments: got '--zzzzzz'; expected only the options of "
                             "stjobs render (see stjobs render --help)")


@pytest.mark.parametrize("argv,prefix,words", [
    (["rendr", SPEC], "stjobs: error: argument COMMAND: invalid choice: 'rendr'", "did you mean render?"),
    (["image", "biuld"], "stjobs image: error: argument ACTION: invalid choice", "did you mean build?"),
    (["render", SPEC, "-b", "k9s", "--dry-run"], "stjobs render: error: argument --backend/-b", "did you mean k8s?"),
    (["completion", "bsh"], "stjobs completion: error: argument shell", "did you mean bash?"),
])
def test_a_mistyped_choice_gets_the_nearest(argv: list[str], prefix: str, words: str, work: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv, capsys)
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith(prefix) and words in line and "choose from" in line, line


@pytest.mark.parametrize("argv,field,value,guess", [
    (["--strategy", "fdsp"], "strategy", "'fdsp'", "did you mean 'fsdp'?"),
    (["--launcher", "acelerate"], "launcher", "'acelerate'", "did you mean 'accelerate'?"),
    (["--set", "strategy=singel"], "strategy", "'singel'", "did you mean 'single'?"),
])
def test_a_mistyped_spec_value_gets_the_nearest(argv: list[str], field: str, value: str, guess: str, work: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["render", SPEC, "--dry-run", *argv], capsys)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"stjobs: error: {field}: got {value}; expected one of "), line
    assert line.endswith(f"({guess})"), line


def test_an_unknown_set_key_already_gets_the_nearest(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["render", SPEC, "--dry-run", "--set", "nodez=2"], capsys)
    assert code == 2 and "did you mean 'nodes'?" in one_line(err)


@pytest.mark.parametrize("argv", [["render", "--dry-run"], ["render", "-o", "out"], ["submit"],
                                  ["image", "render", "--dry-run"], ["render", "--dry-run", "--nodes", "2"]])
def test_no_spec_given_or_found_says_so(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert (code, out) == (2, "")
    command = " ".join(argv[:2] if argv[0] == "image" else argv[:1])
    assert one_line(err) == (f"stjobs: error: no job spec: give a spec file (stjobs {command} job.yaml) or put "
                             f"stjobs.yaml in this directory ({tmp_path} has none)")
    assert list(tmp_path.iterdir()) == []


def test_the_default_spec_and_a_job_named_by_flags_still_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    # A job named by the flags alone is a spec: built from them, checked as any other.
    code, out, err = run(["render", "--dry-run", "--name", "job"], capsys)
    assert code == 0 and "job: job" in out, err
    code, out, err = run(["render", "--dry-run", "--set", "name=flags-only"], capsys)
    assert code == 0 and "job: flags-only" in out, err
    code, _, err = run(["render", "--dry-run", "--name", "Bad_Name"], capsys)
    assert code == 2 and one_line(err).startswith("stjobs: error: name: got 'Bad_Name'"), err
    (tmp_path / "stjobs.yaml").write_text(yaml.safe_dump(GOOD))
    code, out, err = run(["render", "--dry-run"], capsys)
    assert code == 0 and "job: job" in out, err


def local_job(nodes: int, procs: int, output: str) -> str:
    """A finished local job's record and console, as the supervisor leaves them (no training run needed)."""
    job_id = f"ranks-{nodes}x{procs}"
    job_dir = jobs_root() / job_id
    job_dir.mkdir(parents=True)
    JobRecord(job_id=job_id, backend="local", name="ranks", job_dir=str(job_dir), submitted_at=time.time(),
              nodes=nodes, procs_per_node=procs).save()
    (job_dir / "status.json").write_text('{"state": "COMPLETED", "exit_code": 0}\n')
    (job_dir / "output.log").write_text(output)
    return job_id


@pytest.mark.parametrize("nodes,procs,rank,words", [
    (1, 2, 5, "ranks 0-1 (1 node(s) x 2 process(es))"),
    (1, 2, 2, "ranks 0-1 (1 node(s) x 2 process(es))"),
    (1, 2, -1, "ranks 0-1 (1 node(s) x 2 process(es))"),
    (2, 4, 8, "ranks 0-7 (2 node(s) x 4 process(es))"),
    (1, 1, 1, "rank 0 only (1 node(s) x 1 process(es))"),
])
def test_logs_refuses_a_rank_the_job_does_not_have(nodes: int, procs: int, rank: int, words: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    job_id = local_job(nodes, procs, "[rank0]: zero\n[rank1]: one\n")
    code, out, err = run(["logs", job_id, "--rank", str(rank)], capsys)
    assert (code, out) == (2, "")
    assert one_line(err) == f"stjobs: error: --rank: got {rank}; expected a rank of job {job_id}, which has {words}"


def test_logs_of_a_rank_the_job_has(capsys: pytest.CaptureFixture[str]) -> None:
    job_id = local_job(1, 2, "[rank0]: zero\n[rank1]: one\nplain\n")
    assert run(["logs", job_id, "--rank", "1"], capsys) == (0, "[rank1]: one\n", "")
    assert run(["logs", job_id, "--rank", "0"], capsys) == (0, "[rank0]: zero\n", "")
    assert run(["logs", job_id], capsys)[1] == "[rank0]: zero\n[rank1]: one\nplain\n"


def test_k8s_without_an_image_names_the_flag_and_the_spec_key(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["render", SPEC, "-b", "k8s", "--dry-run"], capsys)
    assert code == 2
    line = one_line(err)
    assert line.startswith("stjobs: error: image: got None; expected a container image for the k8s backend"), line
    assert "--image" in line and "image:" in line.partition("expected")[2], line
    assert run(["render", SPEC, "-b", "k8s", "--dry-run", "--image", "ghcr.io/org/train:1.0"], capsys)[0] == 0


@pytest.mark.parametrize("argv", [["image", "build", SPEC, "--builder", "docker"],
                                  ["render", SPEC, "-b", "slurm", "--dry-run", "--set", "slurm.container=pyxis"]])
def test_other_commands_without_an_image_name_the_flag_and_the_spec_key(
        work: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(argv, capsys)
    line = one_line(err)
    assert code == 2 and line.startswith("stjobs: error: image: got None; expected "), line
    assert "pass --image REF or set image: in the spec" in line, line


def completion(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run(["completion", shell], capsys)
    assert (code, err) == (0, "")
    return out


def test_bash_completion_is_valid_bash_that_completes_the_commands(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "stjobs.bash"
    script.write_text(completion("bash", capsys))
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True).returncode == 0
    text = script.read_text()
    for name in COMMANDS:
        assert name in text, name
    # What a user gets on <TAB>: the function bash calls, asked as bash asks it.
    asks = {"stjobs ren": "render", "stjobs render --nod": "--nodes", "stjobs render -b ": "k8s local slurm",
            "stjobs image b": "build", "stjobs completion ": "bash zsh"}
    probe = "".join(f'COMP_WORDS=({line}{" " + chr(34) * 2 if line.endswith(" ") else ""}); '
                    f'COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMPREPLY=(); _shtab_stjobs; echo "${{COMPREPLY[*]}}"; '
                    for line in asks)
    done = subprocess.run(["bash", "-c", f"source {script}; {probe}"], capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines() == list(asks.values()), (done.stdout, done.stderr)


def test_zsh_completion_names_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    text = completion("zsh", capsys)
    assert text.startswith("#compdef stjobs\n")
    for name in COMMANDS:
        assert name in text, name
    assert "--nodes" in text and "--strategy" in text
    if shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n"], input=text, capture_output=True, text=True).returncode == 0

