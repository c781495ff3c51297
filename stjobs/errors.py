"""One root error class; the CLI prints ``str(error)`` (one line) and exits with ``error.exit_code``."""

from __future__ import annotations


class StjobsError(Exception):
    """Root of every error stjobs raises on purpose. The message is meant for the user, as one line."""

    exit_code = 1


class SpecError(StjobsError):
    """The job spec (file, overrides or flags) is invalid. Names the field, the value and the expected form."""

    exit_code = 2

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}: got {_show(value)}; expected {expected}")


class UsageError(StjobsError):
    """A command was called wrongly (unknown backend, unknown job id, ...)."""

    exit_code = 2


class RenderError(StjobsError):
    """A template or an artifact could not be produced; nothing was written."""


class SubmitError(StjobsError):
    """The backend refused or failed the submission; carries the backend's own reason."""


def _show(value: object) -> str:
    text = repr(value)
    # One-line messages: a huge or multi-line value is cut, the field name says where to look.
    text = text.replace("\n", "\\n")
    return text if len(text) <= 80 else text[:77] + "..."
