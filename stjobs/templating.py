"""The one Jinja2 environment, and the variables each template receives.

Templates only lay text out; every value they print is decided in Python. A site (or a user) may point stjobs at
a directory of its own templates (the spec's ``templates``, ``--templates DIR`` or ``$STJOBS_TEMPLATES``): a file
there named like a packaged template replaces it, receives the same variables (:data:`TEMPLATES`), and can still
extend or include the packaged one as ``stjobs/NAME``. Files whose names start with ``_`` are the site's own
partials. Anything else ending in ``.j2`` is refused: a misspelt override must not be ignored without a word.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from stjobs.errors import RenderError, SpecError
from stjobs.launch import Arg, shell_line, shell_word
from stjobs.plan import RenderedFile
from stjobs.spec import JobSpec


@dataclass(frozen=True)
class TemplateDoc:
    renders: str  # what the template renders, for the README's table
    variables: dict[str, str]  # name -> what it holds


# Every template gets the validated spec as plain data too: a site's override may want any field.
SPEC_VARIABLE = {"spec": "the validated job spec as plain data (`spec.slurm.partition`, `spec.gpus_per_node`, ...)"}
_IMAGE_VARIABLES = {
    "name": "the job name", "variant": "`gpu` or `cpu`", "base_image": "the base image (with its digest if pinned)",
    "labels": "OCI labels as (key, value) pairs", "label_block": "the LABEL instruction's body, quoted",
    "env": "the image's environment as sorted (key, value) pairs", "env_block": "the ENV instruction's body, quoted",
    "apt_packages": "Debian packages to install (list)", "venv": "whether the image makes a venv (CPU variant)",
    "venv_dir": "the venv's path", "torch": "the torch version pinned", "torch_note": "where torch comes from",
    "torch_index_url": "the CPU wheel index, or empty", "files_dir": "where the build files sit in the context",
    "workdir": "the image's WORKDIR", "hf_home": "HF_HOME (a volume)", "cache_root": "the cache volume's root",
    "uid": "the numeric non-root user", "copy_code": "whether the code is copied in (`build.code: copy`)",
    "build_command": "the build command, for the header", "pip": "the pip to install with",
    "python": "the Python to run", "sif": "the Apptainer image path",
    "arch_check": "Python that fails the build when torch lacks kernels for the GPU (gpu variant; else empty)",
}
TEMPLATES: dict[str, TemplateDoc] = {
    "node_launch.sh.j2": TemplateDoc("`launch.sh`: starts the launcher on one node (every backend but k8s)", {
        "name": "the job name", "required": "run-time variables the script checks are set (list)",
        "descriptions": "what each run-time variable is, for the error message (mapping)",
        "secrets": "secret names taken from the environment (list; never values)",
        "env": "environment the launch exports as (key, value) pairs", "workdir": "the directory to `cd` into",
        "python": "the spec's `python` (None: `$STJOBS_PYTHON`, else python3)",
        "python_modules": "top-level packages the interpreter must find before the launch (list)",
        "snapshot": "whether `stjobs submit` copies the code (`snapshot.enabled`)",
        "code_dir": "the copy's directory inside the job directory",
        "argv": "the launcher's argv (use the `argv` filter)",
    }),
    "sbatch.sh.j2": TemplateDoc("`job.sbatch`: the SLURM batch file", {
        "name": "the job name", "nodes": "node count", "procs_per_node": "processes per node",
        "sbatch_file": "the batch file's name", "sbatch_options": "`--key=value` options for the #SBATCH lines",
        "node_script": "the node launch script's name", "job_setup": "shell lines: job id, logs, rendezvous",
        "user_setup": "shell lines from `slurm.setup`", "signal_lead_s": "seconds of warning before the limit (0: "
        "no preemption handling)", "max_requeues": "`slurm.max_requeues`", "out_of_requeues_exit": "the exit "
        "status once requeues are spent (75)", "srun": "the srun argv (use the `argv` filter)",
        "exit_record": "the exit record's file name in the job directory (holds `${SLURM_JOB_ID}`)",
        "points_dir": "a sweep's job array: the directory of the points (task N runs points/N/); None otherwise",
    }),
    "Dockerfile.j2": TemplateDoc("`images/Dockerfile.gpu` and `images/Dockerfile.cpu`", _IMAGE_VARIABLES),
    "apptainer.def.j2": TemplateDoc("`images/apptainer.def`", _IMAGE_VARIABLES),
}
PACKAGED_PREFIX = "stjobs/"  # where a site's template finds the packaged one to extend or include
FILTERS_DOC = {"sh": "shell-quote one value", "word": "shell-quote a word that may hold run-time `${VARS}`",
               "argv": "a whole command line, each word quoted", "dq": "a double-quoted Dockerfile value"}


def templates_dir() -> Path:
    """Templates ship inside the wheel (stjobs/templates); in a source checkout they sit at the top level."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "templates", package.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RenderError(f"templates: not found next to {package}; reinstall stjobs")


def _quote(value: object) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise RenderError(f"cannot shell-quote a {type(value).__name__}")
    return shlex.quote(str(value))


def _argv(argv: tuple[Arg, ...] | list[Arg]) -> str:
    return shell_line(tuple(argv))


def docker_quote(value: object) -> str:
    """A double-quoted Dockerfile word (LABEL, ENV, ARG defaults): backslash, quote and '$' escaped."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise RenderError(f"a Dockerfile value cannot hold a line break: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _defined(name: str, apply: Callable[[Any], str]) -> Callable[[Any], str]:
    """``apply`` as a filter that refuses a missing value: StrictUndefined fails when a value is printed, but a
    filter written in Python receives the Undefined object (or None) and would quote its text."""

    def checked(value: Any) -> str:
        if isinstance(value, jinja2.Undefined):
            value._fail_with_undefined_error()
        if value is None:
            raise RenderError(f"a null value reached the '{name}' filter")
        return apply(value)

    return checked


def site_overrides(site: Path) -> dict[str, Path]:
    """The packaged templates ``site`` replaces, by name. Refuses a directory that is not one and a ``.j2``
    file that replaces nothing (not a packaged name, not a ``_partial``)."""
    if not site.is_dir():
        raise SpecError("templates", str(site), "a directory of template overrides (it is not a directory)")
    found = {}
    for path in sorted(site.iterdir()):
        if path.name in TEMPLATES:
            found[path.name] = path
        elif path.suffix == ".j2" and not path.name.startswith("_"):
            import difflib

            guess = difflib.get_close_matches(path.name, list(TEMPLATES), n=1)
            hint = f"did you mean {guess[0]}? " if guess else ""
            raise SpecError("templates", str(path), f"a file named like a packaged template ({hint}one of "
                            f"{', '.join(TEMPLATES)}), or a partial whose name starts with '_'")
    return found


@lru_cache(maxsize=8)  # one environment per template directory and process: it keeps the parsed templates
def environment(site: Path | None = None) -> jinja2.Environment:
    packaged = jinja2.FileSystemLoader(str(templates_dir()))
    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(str(site))] if site is not None else []
    loaders += [jinja2.PrefixLoader({PACKAGED_PREFIX.rstrip("/"): packaged}), packaged]
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails the render instead of printing nothing
        autoescape=False,  # shell, Dockerfile and definition files: quoting is the filters' job, not HTML's
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update({name: _defined(name, apply) for name, apply in
                        (("sh", _quote), ("word", shell_word), ("argv", _argv), ("dq", docker_quote))})
    return env


def _line_of(error: BaseException, filename: str | None) -> int | None:
    """The template line an error was raised at: Jinja2 rewrites tracebacks so that template frames carry the
    template's file name and line."""
    line = getattr(error, "lineno", None)
    if isinstance(line, int):
        return line
    tb, found = error.__traceback__, None
    while tb is not None:
        if filename is not None and tb.tb_frame.f_code.co_filename == filename:
            found = tb.tb_lineno
        tb = tb.tb_next
    return found


def render_template(template: str, site: Path | None = None, **context: Any) -> tuple[str, Path | None]:
    """``template`` rendered with ``context`` (which must hold exactly its documented variables), and the site
    file it came from (None: the packaged one). A packaged template that fails is our bug (RenderError); a
    site's is the user's input (SpecError naming the file and the line)."""
    doc = TEMPLATES.get(template)
    if doc is None or set(context) != set(doc.variables) | set(SPEC_VARIABLE):
        raise RenderError(f"template {template}: rendered with {sorted(context)}; documented: "
                          f"{sorted(doc.variables) if doc else 'nothing'}")  # keeps TEMPLATES honest
    overrides = site_overrides(site) if site is not None else {}
    source = overrides.get(template)
    filename = None
    try:
        compiled = environment(site if overrides else None).get_template(template)
        filename = compiled.filename
        return compiled.render(**context), source
    except (jinja2.TemplateError, RenderError) as error:
        problem = error.message if isinstance(error, jinja2.TemplateError) else str(error)
        name = getattr(error, "filename", None) or filename
        line = _line_of(error, name)
        where = f"line {line}: " if line else ""
        first = " ".join(str(problem or type(error).__name__).split())
        if site is not None and (source is not None or (name is not None and site in Path(name).parents)):
            shown = Path(name).name if name else template
            raise SpecError("templates", str(site), f"{shown} there to be a Jinja template that renders ({where}"
                            f"{first}; {template} gets: {', '.join(sorted([*doc.variables, *SPEC_VARIABLE]))})"
                            ) from None
        raise RenderError(f"template {template}: {where}{first}") from None


def render_file(path: str, template: str, spec: JobSpec, executable: bool = False,
                **context: Any) -> RenderedFile:
    """``path`` rendered from ``template`` (the spec's site directory first), with the spec among the variables."""
    text, source = render_template(template, spec.templates_dir, spec=spec.to_data(), **context)
    return RenderedFile(path, text, executable=executable, site_template=str(source) if source else None)


def variables_table() -> str:
    """The README's table of templates and the variables each receives, made from :data:`TEMPLATES`."""
    rows = ["| template | renders | variables |", "|---|---|---|"]
    for name, doc in TEMPLATES.items():
        names = ", ".join(f"`{var}`" for var in [*doc.variables, *SPEC_VARIABLE])
        rows.append(f"| `{name}` | {doc.renders} | {names} |")
    rows.append("")
    rows.append("Filters: " + "; ".join(f"`{name}`: {text}" for name, text in FILTERS_DOC.items()) + ".")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m stjobs.templating: the table, to paste into the README
    sys.stdout.write(variables_table())
