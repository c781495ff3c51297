"""The one Jinja2 environment, the documented variables of each template, and templates a site owns."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jinja2
import jinja2.meta
import pytest

import stjobs
from stjobs import templating
from stjobs.errors import RenderError, SpecError
from tests.conftest import EXAMPLES, REPO, offline_env, stjobs_bin

SITE_EXAMPLE = EXAMPLES / "site-template.yaml"
TWO_NODES = EXAMPLES / "two-nodes.yaml"


def test_a_misspelt_variable_fails_the_render() -> None:
    env = templating.environment()
    with pytest.raises(jinja2.UndefinedError, match="'nmae' is undefined"):
        env.from_string("{{ nmae }}").render(name="x")
    with pytest.raises(jinja2.UndefinedError, match="'nmae' is undefined"):
        env.from_string("{{ nmae | sh }}").render(name="x")
    with pytest.raises(RenderError, match="null value reached the 'sh' filter"):
        env.from_string("{{ name | sh }}").render(name=None)


def test_a_template_gets_exactly_its_documented_variables() -> None:
    with pytest.raises(RenderError, match=r"^template sbatch.sh.j2: rendered with \['name'\]; documented"):
        templating.render_template("sbatch.sh.j2", name="x")
    with pytest.raises(RenderError, match="template nope.j2"):
        templating.render_template("nope.j2")


@pytest.mark.parametrize("name", sorted(templating.TEMPLATES))
def test_documented_variables_cover_what_each_template_reads(name: str) -> None:
    env = templating.environment()
    source = env.loader.get_source(env, name)[0]  # type: ignore[union-attr]
    used = jinja2.meta.find_undeclared_variables(env.parse(source))
    documented = set(templating.TEMPLATES[name].variables) | set(templating.SPEC_VARIABLE)
    assert used <= documented, f"{name} reads undocumented {sorted(used - documented)}"
    assert used, name


def test_readme_lists_each_templates_variables() -> None:
    """The README's table is the one made from the code (python -m stjobs.templating prints it)."""
    assert templating.variables_table() in (REPO / "README.md").read_text(encoding="utf-8")


def test_a_site_template_extends_the_packaged_one_and_the_plan_says_so() -> None:
    plan = stjobs.render(stjobs.load_spec(SITE_EXAMPLE), "slurm")
    batch = plan.file("job.sbatch")
    assert batch.site_template == str(EXAMPLES / "site-templates" / "sbatch.sh.j2")
    assert "module load cuda/12.4" in batch.content and "#SBATCH --comment=stjobs:site-template" in batch.content
    assert "#SBATCH --partition=gpu\n" in batch.content  # the packaged lines are still there (super())
    assert plan.file("launch.sh").site_template is None  # not overridden: stjobs' own
    assert "job.sbatch" in plan.describe() and "from site template" in plan.describe()
    # the same spec without the site directory renders the packaged batch file
    plain = stjobs.render(stjobs.load_spec(SITE_EXAMPLE, [("templates", None)]), "slurm")
    assert "module load" not in plain.file("job.sbatch").content


def site_dir(tmp_path: Path, **files: str) -> Path:
    site = tmp_path / "site"
    site.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (site / name.replace("__", ".")).write_text(text)
    return site


def test_a_site_template_may_replace_the_whole_file(tmp_path: Path) -> None:
    site = site_dir(tmp_path, node_launch__sh__j2="#!/bin/bash\n# {{ spec.name }} on {{ spec.nodes }} node(s)\n"
                    "cd {{ workdir | sh }}\nexec {{ argv | argv }}\n")
    plan = stjobs.render(stjobs.load_spec(TWO_NODES, [("templates", str(site))]), "local")
    text = plan.file("launch.sh").content
    # The workdir, taken from the spec file's directory: an absolute path.
    assert text.startswith("#!/bin/bash\n# two-nodes on 2 node(s)\ncd /")
    assert "\nexec " in text
    assert "--rdzv-backend c10d" in text


@pytest.mark.parametrize("text,problem", [
    ("#!/bin/bash\n#SBATCH {{ nodes }}\n{% if %}\n", "line 3: Expected an expression"),
    ("#!/bin/bash\n\n#SBATCH --partition={{ partiton }}\n", "line 3: 'partiton' is undefined"),
    ("#!/bin/bash\n{{ name | sh }}\n{{ missing | sh }}\n", "line 3: 'missing' is undefined"),
    ('{% extends "stjobs/sbatch.sh.j2" %}\n{% block site_setup %}\n\n{{ nope }}\n{% endblock %}\n',
     "line 4: 'nope' is undefined"),
    ('{% include "_preamble.j2" %}\n', "line 1: _preamble.j2"),
])
def test_a_broken_site_template_names_the_file_and_the_line(tmp_path: Path, text: str, problem: str) -> None:
    site = site_dir(tmp_path, sbatch__sh__j2=text)
    spec = stjobs.load_spec(TWO_NODES, [("templates", str(site))])
    with pytest.raises(SpecError) as caught:
        stjobs.render(spec, "slurm")
    message = str(caught.value)
    assert message.startswith("templates: got '") and "'; expected sbatch.sh.j2 there to be a Jinja template" in message
    assert problem in message and "\n" not in message
    assert "sbatch.sh.j2 gets: exit_record, job_setup, max_requeues, name," in message


def test_partials_are_the_sites_own_and_a_misspelt_override_is_refused(tmp_path: Path) -> None:
    site = site_dir(tmp_path, _preamble__j2="module load site\n",
                    sbatch__sh__j2='{% extends "stjobs/sbatch.sh.j2" %}{% block site_setup %}\n'
                                   '{% include "_preamble.j2" %}{% endblock %}')
    plan = stjobs.render(stjobs.load_spec(TWO_NODES, [("templates", str(site))]), "slurm")
    assert "\nmodule load site\n" in plan.file("job.sbatch").content
    (site / "sbatch.j2").write_text("typo")
    with pytest.raises(SpecError, match=r"sbatch.j2'; expected a file named like a packaged template \(did you "
                                        r"mean sbatch.sh.j2\?"):
        stjobs.render(stjobs.load_spec(TWO_NODES, [("templates", str(site))]), "slurm")
    with pytest.raises(SpecError, match="it is not a directory"):
        stjobs.render(stjobs.load_spec(TWO_NODES, [("templates", str(tmp_path / "none"))]), "slurm")


def test_flag_spec_and_environment_in_that_order(tmp_path: Path) -> None:
    """--templates beats the spec's templates:, which beats $STJOBS_TEMPLATES; the CLI exits 2 on a broken one
    and writes nothing."""
    spec_dir = tmp_path / "project"
    shutil.copytree(EXAMPLES / "site-templates", spec_dir / "site-templates")
    (spec_dir / "job.yaml").write_text(SITE_EXAMPLE.read_text())
    env_site = site_dir(tmp_path / "env", sbatch__sh__j2="#!/bin/bash\n# from the environment\n")
    flag_site = site_dir(tmp_path / "flag", sbatch__sh__j2="#!/bin/bash\n# from the flag {{ name }}\n")

    def render(*extra: str, env_site_dir: Path | None = env_site, spec: str = "job.yaml") -> str:
        env = offline_env(STJOBS_TEMPLATES=str(env_site_dir)) if env_site_dir else offline_env()
        done = subprocess.run([stjobs_bin(), "render", spec, "-b", "slurm", "--dry-run", *extra], cwd=spec_dir,
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert f"from site template {spec_dir / 'site-templates' / 'sbatch.sh.j2'}" in render()  # the spec's
    assert f"from site template {flag_site / 'sbatch.sh.j2'}" in render("--templates", "../flag/site")
    (spec_dir / "bare.yaml").write_text("name: bare\nentrypoint: {module: stjobs.train}\n")
    assert f"from site template {env_site / 'sbatch.sh.j2'}" in render(spec="bare.yaml")
    assert "from site template" not in render(spec="bare.yaml", env_site_dir=None)

    (flag_site / "sbatch.sh.j2").write_text("{{ nope }}\n")
    out = tmp_path / "out"
    done = subprocess.run([stjobs_bin(), "render", "job.yaml", "-b", "slurm", "-o", str(out), "--templates",
                           str(flag_site)], cwd=spec_dir, env=offline_env(), capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("stjobs: error: templates: got ") and done.stderr.count("\n") == 1
    assert "line 1: 'nope' is undefined" in done.stderr
    assert not out.exists()


def test_the_environment_is_cached_per_directory(tmp_path: Path) -> None:
    site = site_dir(tmp_path, sbatch__sh__j2="x")
    assert templating.environment(site) is templating.environment(site)
    assert templating.environment(site) is not templating.environment(None)


def test_submitit_refuses_a_site_batch_template_instead_of_ignoring_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit writes its own batch script: a site's sbatch.sh.j2 would be dropped without a word."""
    monkeypatch.setenv("STJOBS_HOME", str(tmp_path / "home"))
    spec = stjobs.load_spec(SITE_EXAMPLE)
    with pytest.raises(stjobs.UsageError, match=r"^--sbatch: got a site batch template .*sbatch.sh.j2\) without "
                                                r"--sbatch; expected --sbatch"):
        stjobs.submit(spec, "slurm")
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("stjobs.yaml"))
