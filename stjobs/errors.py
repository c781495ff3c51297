"""One root error class; the CLI prints ``str(error)`` (one line) and exits with ``error.exit_code``."""

from __future__ import annotations

from itertools import islice


class StjobsError(Exception):
    """Root of every error stjobs raises on purpose. The message is meant for the user, as one line."""

    exit_code = 1


class InputError(StjobsError):
    """Something the user gave is unusable: ``<field>: got <value>; expected <form>``, exit code 2."""

    exit_code = 2

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}: got {_show(value)}; expected {expected}")


class SpecError(InputError):
    """The job spec (file, overrides or flags) is invalid. Names the field, the value and the expected form."""


class EnvError(InputError):
    """An environment variable stjobs reads (STJOBS_HOME, STJOBS_K8S_SCHEMAS) points at something unusable."""


class UsageError(StjobsError):
    """A command was called wrongly (unknown backend, unknown job id, ...)."""

    exit_code = 2


class RenderError(StjobsError):
    """A template or an artifact could not be produced; nothing was written."""


class OutputError(InputError, RenderError):
    """The output directory given cannot take the rendered files (a file, not empty, not creatable); nothing
    was written. Bad input, so exit code 2, and still a RenderError for callers that catch those."""


class SubmitError(StjobsError):
    """The backend refused or failed the submission; carries the backend's own reason."""


# Values shown in messages are cut here; the repr is built only this far, because a YAML alias bomb (a few
# hundred bytes of anchors) is a value whose full repr would take billions of characters.
SHOWN = 80


def _show(value: object) -> str:
    text = _brief(value, SHOWN + 20)
    # One-line messages: a huge or multi-line value is cut, the field name says where to look.
    text = text.replace("\n", "\\n")
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."


def _brief(value: object, room: int) -> str:
    """``repr(value)`` for lists, tuples and dicts, but it stops once about ``room`` characters are made."""
    if room <= 0:
        return "..."
    if isinstance(value, str):
        return repr(value[:room])
    if not isinstance(value, (dict, list, tuple)):
        return repr(value)
    parts: list[str] = []
    used = 1
    # Each item takes at least one character: looking at more than ``room`` of them is never needed.
    for item in islice(value.items() if isinstance(value, dict) else value, room):
        if isinstance(value, dict):
            text = _brief(item[0], room - used)
            text += ": " + _brief(item[1], room - used - len(text) - 2)
        else:
            text = _brief(item, room - used)
        parts.append(text)
        used += len(text) + 2
        if used > room:
            break
    marks = "{}" if isinstance(value, dict) else "[]" if isinstance(value, list) else "()"
    tail = "," if isinstance(value, tuple) and len(value) == 1 else ""
    return marks[0] + ", ".join(parts) + tail + marks[1]
