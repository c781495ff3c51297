"""Every text file stjobs writes has ``\\n`` line endings on every OS: a batch file or launch script with CRLF fails
on the cluster (``/bin/bash^M: bad interpreter``). Python's text mode writes ``os.linesep`` unless told
``newline="\\n"``, so each text write in the package must say it; this reads the source, so a new write cannot
forget it."""

from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGE = REPO / "stjobs"
# Writes known to lack newline= (none now): the count of bare ones a file may still have; the check fails when a
# file has more than listed, and when it has fewer.
NOT_YET: dict[str, int] = {}
# Module-level openers whose mode is the second argument (as the builtin open's); os.open takes flags, not a mode.
PATH_FIRST = {"io", "gzip", "bz2", "lzma", "codecs", "os"}
TEMPFILES = {"NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"}


def _mode(call: ast.Call, index: int, default: str) -> str | None:
    """The mode the call opens with: a string, or None when the source does not say it as a literal."""
    for keyword in call.keywords:
        if keyword.arg == "mode":
            node: ast.expr | None = keyword.value
            break
    else:
        node = call.args[index] if len(call.args) > index else None
    if node is None:
        return default
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def bare_text_writes(source: str) -> list[int]:
    """Lines of calls that write text without ``newline=``: ``write_text``, and ``open`` / ``Path.open`` /
    ``os.fdopen`` / ``tempfile.*TemporaryFile`` in a text mode that writes (w, a, x or +; a mode that is not a
    literal counts as one)."""
    found = []
    for call in ast.walk(ast.parse(source)):
        if not isinstance(call, ast.Call) or any(keyword.arg == "newline" for keyword in call.keywords):
            continue
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        if name == "write_text":
            found.append(call.lineno)
            continue
        if name in TEMPFILES:
            mode = _mode(call, 0, "w+b")
        elif name == "fdopen" or (name == "open" and (owner is None or owner in PATH_FIRST - {"os"})):
            mode = _mode(call, 1, "r")
        elif name == "open" and owner != "os":  # a Path's open(mode, ...)
            mode = _mode(call, 0, "r")
        else:
            continue
        if mode is None or ("b" not in mode and any(letter in mode for letter in "wax+")):
            found.append(call.lineno)
    return sorted(found)


def test_the_check_finds_bare_text_writes() -> None:
    bad = ('p.write_text("x")\nopen(p, "w")\np.open("a", encoding="utf-8")\nos.fdopen(fd, "w")\n'
           'open(p, mode="x")\ntempfile.NamedTemporaryFile("w+")\nopen(p, kind)\nio.open(p, "wt")\n')
    assert bare_text_writes(bad) == [1, 2, 3, 4, 5, 6, 7, 8]
    good = ('p.write_text("x", newline="\\n")\nopen(p, "w", newline="\\n")\nopen(p)\nopen(p, "rb")\n'
            'p.open("ab")\nos.open(p, os.O_WRONLY)\nos.fdopen(fd, "ab")\ntempfile.TemporaryFile()\n'
            'p.write_bytes(b"x")\np.open(encoding="utf-8")\n')
    assert bare_text_writes(good) == []


def test_every_text_write_in_the_package_says_newline() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = bare_text_writes(path.read_text(encoding="utf-8"))
        if lines:
            found[str(path.relative_to(REPO))] = lines
    counts = {name: len(lines) for name, lines in found.items()}
    assert counts == NOT_YET, f"text writes without newline=\"\\n\" (file: lines): {found}"
