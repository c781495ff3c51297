"""Site and user defaults files: merged under the spec and the flags, checked like a spec (naming the file), and
explained (``stjobs render --explain``, the plan's note). No defaults file: exactly today's specs and plans."""

from __future__ import annotations

from pathlib import Path

import pytest

import stjobs
from stjobs.cli import main
from stjobs.config import explain_spec, load_spec
from stjobs.errors import EnvError, SpecError
from tests.conftest import EXAMPLES

SPEC = "name: job\nslurm:\n  qos: normal\nenv:\n  FROM_SPEC: s\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    return path


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    site = write(tmp_path / "etc" / "defaults.yaml", "slurm:\n  partition: gpu\n  account: site-acct\n"
                 "  setup: [module load cuda]\nenv:\n  FROM_SITE: a\n  SHARED: site\nk8s:\n  namespace: ml\n")
    user = write(tmp_path / "home" / "defaults.yaml", "slurm:\n  account: my-acct\nenv:\n  SHARED: user\n")
    spec = write(tmp_path / "job" / "job.yaml", SPEC)
    monkeypatch.setenv("STJOBS_SITE_DEFAULTS", str(site))
    monkeypatch.setenv("STJOBS_DEFAULTS", str(user))
    return site, user, spec


def test_merge_order_site_user_spec_flags(files: tuple[Path, Path, Path]) -> None:
    site, user, spec_file = files
    spec = load_spec(spec_file, [("nodes", 2)], ["slurm.partition=big"])
    assert spec.slurm.partition == "big"  # --set over the site
    assert spec.slurm.account == "my-acct"  # user over site
    assert spec.slurm.qos == "normal" and spec.nodes == 2
    assert spec.k8s.namespace == "ml"
    # Maps merge key by key: every layer's env keys, the higher layer winning a shared one.
    assert spec.env == {"FROM_SITE": "a", "SHARED": "user", "FROM_SPEC": "s"}


def test_lists_replace(files: tuple[Path, Path, Path]) -> None:
    _, _, spec_file = files
    assert load_spec(spec_file).slurm.setup == ("module load cuda",)
    write(spec_file, "name: job\nslurm:\n  setup: [source venv/bin/activate]\n")
    spec = load_spec(spec_file)
    assert spec.slurm.setup == ("source venv/bin/activate",)  # replaced, not appended
    assert spec.slurm.partition == "gpu"  # the rest of the site's slurm block stays


def test_no_defaults_files_is_todays_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(EXAMPLES / "tiny-ddp.yaml")
    assert spec == load_spec(EXAMPLES / "tiny-ddp.yaml", defaults=())
    assert spec.defaults_from == ()
    assert "defaults" not in stjobs.render(spec).describe()
    # The usual places, absent: nothing read, nothing refused.
    monkeypatch.delenv("STJOBS_SITE_DEFAULTS")
    monkeypatch.delenv("STJOBS_DEFAULTS")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    from stjobs import defaults

    monkeypatch.setattr(defaults, "SITE_FILE", str(tmp_path / "no-etc" / "defaults.yaml"))
    assert load_spec(EXAMPLES / "tiny-ddp.yaml") == spec


def test_xdg_config_home_holds_the_user_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "xdg" / "stjobs" / "defaults.yaml", "slurm:\n  qos: xdg\n")
    monkeypatch.delenv("STJOBS_DEFAULTS")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert load_spec(None, [("name", "job")]).slurm.qos == "xdg"


@pytest.mark.parametrize("key", ["name", "entrypoint", "workdir", "output_dir"])
def test_identity_fields_are_refused(files: tuple[Path, Path, Path], key: str) -> None:
    site, _, spec_file = files
    write(site, f"{key}: x\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec_file)
    assert str(caught.value).startswith(f"site defaults {site}: {key}: got 'x'; expected no per-job value")


@pytest.mark.parametrize(("text", "words"), [
    ("slurm:\n  partiton: gpu\n", "slurm.partiton: got 'gpu'; expected a known field (did you mean 'partition'?"),
    ("nodes: 0\n", "nodes: got 0; expected a whole number"),
    ("env:\n  HF_TOKEN: x\n", "env.HF_TOKEN: got '<hidden>'"),
    ("- a\n", "got ['a']; expected a YAML mapping"),
    ("a: 1\na: 2\n", "is given twice"),
])
def test_bad_values_name_the_file(files: tuple[Path, Path, Path], text: str, words: str) -> None:
    _, user, spec_file = files
    write(user, text)
    with pytest.raises(SpecError) as caught:
        load_spec(spec_file)
    assert str(user)[:40] in str(caught.value) and "user defaults" in str(caught.value)  # long values are cut
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_rule_across_fields_says_which_file_set_the_value(files: tuple[Path, Path, Path]) -> None:
    site, _, spec_file = files
    write(site, "gpus_per_node: 4\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec_file, [("procs_per_node", 2)])
    assert "one process per GPU" in str(caught.value)
    write(site, "k8s:\n  queue: q\n")
    with pytest.raises(SpecError, match=f"the value is from site: {site}"):
        load_spec(spec_file)


def test_a_missing_file_named_by_the_environment_is_refused(files: tuple[Path, Path, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, spec_file = files
    monkeypatch.setenv("STJOBS_SITE_DEFAULTS", "/nonexistent/defaults.yaml")
    with pytest.raises(EnvError, match="STJOBS_SITE_DEFAULTS: got '/nonexistent/defaults.yaml'"):
        load_spec(spec_file)


def test_relative_paths_are_taken_from_the_defaults_files_directory(files: tuple[Path, Path, Path]) -> None:
    site, _, spec_file = files
    write(site, "templates: site-templates\nimage: images/train.sif\npython: envs/st/bin/python\n"
                "slurm:\n  container: apptainer\n  container_mounts: [data:/data, /abs:/abs]\n")
    spec = load_spec(spec_file)
    where = site.parent
    assert spec.templates == str(where / "site-templates")
    assert spec.image == str(where / "images" / "train.sif")
    assert spec.python == str(where / "envs" / "st" / "bin" / "python")
    assert spec.slurm.container_mounts == (f"{where / 'data'}:/data", "/abs:/abs")
    assert spec.workdir_path == str(spec_file.parent)  # the spec's own paths still from the spec file


def test_explain_rows_and_the_plans_note(files: tuple[Path, Path, Path]) -> None:
    site, user, spec_file = files
    rows = {row.field: row for row in explain_spec(spec_file, [("nodes", 2)], ["slurm.qos=high"])}
    assert rows["slurm.partition"].line() == f"slurm.partition = gpu  (site: {site})"
    assert rows["slurm.account"].line() == f"slurm.account = my-acct  (user: {user})"
    assert rows["slurm.setup"].line() == f'slurm.setup = ["module load cuda"]  (site: {site})'
    assert rows["env.SHARED"].source == f"user: {user}"
    assert rows["name"].line() == f"name = job  (spec: {spec_file})"
    assert rows["nodes"].line() == "nodes = 2  (flag: --nodes)"
    assert rows["slurm.qos"].line() == "slurm.qos = high  (--set)"
    assert "time_min" not in rows  # a packaged default
    spec = load_spec(spec_file)
    plan = stjobs.render(spec, "slurm").describe()
    assert (f"note: defaults: site {site} gave env.FROM_SITE, slurm.partition, slurm.setup, k8s.namespace; user "
            f"{user} gave env.SHARED, slurm.account (stjobs render --explain: where each value came from)\n") in plan
    assert plan == stjobs.render(load_spec(spec_file), "slurm").describe()  # byte-identical for the same inputs


def test_render_explain_prints_every_source(files: tuple[Path, Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    site, user, spec_file = files
    assert main(["render", str(spec_file), "--explain", "--time-min", "30", "--set", "k8s.namespace=team"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("values (where each came from; packaged defaults not listed):\n")
    assert f"  slurm.partition = gpu  (site: {site})\n" in out
    assert f"  slurm.account = my-acct  (user: {user})\n" in out
    assert "  time_min = 30  (flag: --time-min)\n" in out
    assert "  k8s.namespace = team  (--set)\n" in out
    assert "backend:" not in out  # alone, --explain renders nothing
    assert main(["render", str(spec_file), "--dry-run", "--explain"]) == 0
    out = capsys.readouterr().out
    assert out.index("backend: local") < out.index("note: defaults: ") < out.index("values (where")
