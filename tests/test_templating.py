"""The one template environment: strict about missing values, and plain Jinja (Jinja2 renders the same bytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2  # not a dependency of stjobs; here through the train extra (torch requires it)
import pytest

import stjobs
import stjobs.api
import stjobs.backends.slurm
import stjobs.images
from stjobs import templating
from stjobs.errors import RenderError
from tests.test_render import golden_cases, render_for


def test_a_misspelt_variable_fails_the_render() -> None:
    with pytest.raises(minijinja_error()):
        templating.environment().render_str("{{ nmae }}", name="x")
    with pytest.raises(RenderError, match="undefined .* reached the 'sh' filter"):
        templating.environment().render_str("{{ nmae | sh }}", name="x")


def test_render_errors_are_one_line_naming_the_template() -> None:
    with pytest.raises(RenderError) as caught:
        templating.render_template("Dockerfile.j2")
    assert str(caught.value).startswith("template Dockerfile.j2: undefined value: `")
    assert "\n" not in str(caught.value)
    with pytest.raises(RenderError, match=r"^template sbatch.sh.j2: .*'sh' filter$"):
        templating.render_template("sbatch.sh.j2")
    with pytest.raises(RenderError, match="^template nope.j2: template not found"):
        templating.render_template("nope.j2")


def minijinja_error() -> type[Exception]:
    import minijinja

    return minijinja.TemplateError


def jinja2_render(template: str, context: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templating.templates_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True, autoescape=False)
    env.filters.update({"sh": templating._quote, "word": stjobs.launch.shell_word, "argv": templating._argv,
                        "dq": templating.docker_quote})
    return env.get_template(template).render(**context)


@pytest.mark.parametrize("backend,spec_path", golden_cases(), ids=lambda v: getattr(v, "stem", v))
def test_templates_are_plain_jinja(backend: str, spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every template render of every golden example gives the same bytes under Jinja2: the templates use
    nothing MiniJinja-specific, so they stay readable and portable for anyone who knows Jinja."""
    rendered: list[str] = []

    real = templating.render_template

    def both(template: str, **context: Any) -> str:
        ours = real(template, **context)
        assert ours == jinja2_render(template, context), f"{template} differs under Jinja2"
        rendered.append(template)
        return ours

    for module in (templating, stjobs.images, stjobs.backends.slurm):
        monkeypatch.setattr(module, "render_template", both)
    if backend == "image":
        render_for(backend, spec_path)
    else:  # what `stjobs render` writes: with the image's build files for container jobs
        stjobs.api.render_job(stjobs.load_spec(spec_path), backend)
    assert rendered, "no template was rendered: the patch missed a caller"
