"""The one Jinja environment. Templates only lay text out; every value they print is decided in Python."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import minijinja

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


def _defined(name: str, apply: Callable[[Any], str]) -> Callable[[Any], str]:
    """``apply`` as a template filter that refuses a missing value.

    MiniJinja's strict mode fails on an undefined variable everywhere except as the input of a filter written in
    Python, which receives ``None``: none of our filters has a use for ``None``, so it means a misspelt name.
    """

    def checked(value: Any) -> str:
        if value is None:
            raise RenderError(f"an undefined (or null) value reached the '{name}' filter")
        return apply(value)

    return checked


def _load(name: str) -> str | None:
    try:
        return (templates_dir() / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


@lru_cache(maxsize=1)  # one environment per process: it keeps the parsed templates
def environment() -> minijinja.Environment:
    # MiniJinja, not Jinja2: the same template language from Jinja's author, implemented in Rust. Importing
    # Jinja2 (its compiler, lexer and parser modules, and what they import) cost about half of a whole
    # `stjobs render` process, more than everything else together; MiniJinja imports in a third of that time
    # and parses our templates in microseconds. The templates are plain Jinja and render the same bytes with
    # either (the golden files are unchanged by the switch).
    return minijinja.Environment(
        loader=_load,
        undefined_behavior="strict",  # a misspelt variable fails the render instead of printing nothing
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        filters={name: _defined(name, apply) for name, apply in
                 (("sh", _quote), ("word", shell_word), ("argv", _argv), ("dq", docker_quote))},
    )


def render_template(template: str, **context: Any) -> str:
    try:
        text: str = environment().render_template(template, **context)
    except minijinja.TemplateError as error:  # the first line names the problem; the rest is a source dump
        raise RenderError(f"template {template}: {str(error).splitlines()[0]}") from None
    except RenderError as error:  # from one of our filters
        raise RenderError(f"template {template}: {error}") from None
    return text
