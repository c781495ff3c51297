"""The one Jinja environment. Templates only lay text out; every value they print is decided in Python."""

from __future__ import annotations

import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from stjobs.errors import RenderError
from stjobs.launch import Arg, shell_line, shell_word


def templates_dir() -> Path:
    """Templates ship inside the wheel (stjobs/templates); in a source checkout they sit at the top level."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "templates", package.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RenderError(f"templates: not found next to {package}; reinstall stjobs")


def _quote(value: object) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise RenderError(f"templates: cannot shell-quote a {type(value).__name__}")
    return shlex.quote(str(value))


def _argv(argv: tuple[Arg, ...] | list[Arg]) -> str:
    return shell_line(tuple(argv))


@lru_cache(maxsize=1)
def docker_quote(value: object) -> str:
    """A double-quoted Dockerfile word (LABEL, ENV, ARG defaults): backslash, quote and '$' escaped."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise RenderError(f"a Dockerfile value cannot hold a line break: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


@lru_cache(maxsize=1)  # one environment per process: it caches the compiled templates
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails the render instead of printing nothing
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sh"] = _quote
    env.filters["word"] = shell_word
    env.filters["argv"] = _argv
    env.filters["dq"] = docker_quote
    return env


def render_template(template: str, **context: Any) -> str:
    try:
        return environment().get_template(template).render(**context)
    except jinja2.TemplateError as error:
        raise RenderError(f"template {template}: {error}") from None
