"""PyYAML as configured in stjobs.yamlio: what it writes reads back as exactly the data written (PyYAML and a YAML
1.2 reading of the same text), hostile strings included; the C and pure-Python classes agree byte for byte."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from stjobs import yamlio
from stjobs.errors import SpecError
from tests.test_render import golden_cases, render_for

TRICKY = ["", "yes", "No", "ON", "off", "y", "N", "null", "NULL", "~", "True", "1", "1.5", "0x1f", "0o17", "1e3",
          "-1", "+1", "1_000", "0755", ".inf", ".NaN", "2026-11-30", "12:30", "a: b", "a #b", "#c", "- x", "[x]",
          "{x}", "*a", "&a", "!t", "%x", "@x", "`x", "'q'", '"d"', "a\nb", "a\r\nb", "a\n", "\n", "a\n\n", " a\nb",
          "a \nb", "\ta\nb", "a\n b", " lead", "trail ", "tab\t", "\u2028", "\u2029", "\x85", "\x00", "\x7f", "é",
          "😀", "\ufeff", "key:", "a:b", "http://x.y/z", "<<", "=", "?", "|", ">", "--model", "-x", "-.inf", "-inf",
          "--", "- -", "$(HOME)", "${X}", "back\\slash", "-", "---", "...", "a,b", "ghcr.io/o/i:1.0@sha256:ab"]

# What a YAML 1.2 core-schema reader (kubectl, Go's yaml.v3) or Go's yaml.v2 takes for a non-string when it is
# written plain: those must never be written plain.
YAML12_NOT_STRING = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|0o[0-7]+|0x[0-9a-fA-F]+|[-+]?\.(inf|Inf|INF)"
    r"|\.(nan|NaN|NAN)|[yYnN]|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF|null|Null|NULL|~|true|True|TRUE"
    r"|false|False|FALSE|")


def roundtrip(data: Any) -> Any:
    return yaml.safe_load(yamlio.dump(data))


def plain_scalars(text: str) -> list[str]:
    """Every scalar of ``text`` that was written plain (no quotes, no block style)."""
    return [event.value for event in yaml.parse(text)
            if isinstance(event, yaml.ScalarEvent) and event.style is None and event.implicit[0]]


def test_tricky_strings_as_values_and_keys() -> None:
    data = {"values": TRICKY, "keys": {t: t for t in TRICKY if t}, "nested": [{"a": t, "b": [t, {t or "x": t}]}
                                                                              for t in TRICKY]}
    assert roundtrip(data) == data


@pytest.mark.parametrize("text", [t for t in TRICKY if YAML12_NOT_STRING.fullmatch(t)])
def test_strings_other_readers_would_misread_are_quoted(text: str) -> None:
    out = yamlio.dump({"k": text})
    assert plain_scalars(out) == ["k"], out
    assert out.startswith('k: "'), out  # double quotes, as the issue asks: one style for every such value


def test_scalars_and_empty_containers() -> None:
    data = {"n": [1, 0, -3, 2.5, 1e20, 4.0, True, False, None], "empty": [[], {}, [[], {}]], "deep": [[1, [2]], []],
            "map": {"list": [], "dict": {}, "none": None}}
    assert roundtrip(data) == data


def test_tuples_are_lists_and_nothing_is_anchored() -> None:
    shared = {"a": [1, 2]}
    out = yamlio.dump({"t": ("x", 1), "one": shared, "two": shared})
    assert "&" not in out and "*" not in out
    assert yaml.safe_load(out) == {"t": ["x", 1], "one": shared, "two": shared}


def test_random_strings_from_a_hostile_alphabet() -> None:
    rnd = random.Random(20261130)
    alphabet = "ab:-_ #'\"\\\n\t\r$()`;{}[],&*!|>%@?.~0123456789é😀\u2028\x00\x1f\x85"
    for _ in range(3000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 14)))
        data = {text or "k": [text, {"x": text}], "v": text}
        out = yamlio.dump(data)
        assert yaml.safe_load(out) == data, repr(text)
        assert not any(YAML12_NOT_STRING.fullmatch(s) for s in plain_scalars(out)), out


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40))
def test_any_text_reads_back(text: str) -> None:
    data = {"v": text, "l": [text], "m": {"k": {"x": text}}}
    assert roundtrip(data) == data


def test_plain_where_plain_is_safe_and_long_lines_stay_whole() -> None:
    out = yamlio.dump({"image": "ghcr.io/org/img:1.0", "name": "pytorch", "port": "29500", "flag": "yes",
                       "long": "word " * 60 + "end"})
    assert out.splitlines()[:4] == ["image: ghcr.io/org/img:1.0", "name: pytorch", 'port: "29500"', 'flag: "yes"']
    assert len(out.splitlines()) == 5  # PyYAML folds at 80 columns unless told otherwise


def test_multi_line_strings_are_literal_blocks() -> None:
    script = "import sys\nprint(sys.argv)\n"
    out = yamlio.dump({"args": ["-c", script]})
    assert out == "args:\n- -c\n- |\n  import sys\n  print(sys.argv)\n"


@pytest.mark.parametrize("bad", [{"k": object()}, {"k": float("nan")}, {"k": float("inf")}])
def test_unknown_types_are_refused(bad: dict[Any, Any]) -> None:
    with pytest.raises(yaml.representer.RepresenterError):
        yamlio.dump(bad)


@pytest.mark.parametrize("backend,spec_path", golden_cases(("local", "slurm", "k8s")),
                         ids=lambda v: getattr(v, "stem", v))
def test_c_and_pure_dumpers_write_the_same_bytes(backend: str, spec_path: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The goldens are written with libyaml where PyYAML has it; a PyYAML without it writes the same files."""
    ours = render_for(backend, spec_path)
    pure = type("PureDumper", (yaml.SafeDumper,), {"ignore_aliases": yamlio._Dumper.ignore_aliases,
                                                    "yaml_representers": yamlio._Dumper.yaml_representers})
    monkeypatch.setitem(yamlio.DUMP_OPTIONS, "Dumper", pure)
    again = render_for(backend, spec_path)
    yaml_files = [item.path for item in ours.files if item.path.endswith((".yaml", ".yml"))]
    assert yaml_files
    for path in yaml_files:
        assert ours.file(path).content == again.file(path).content, path


def test_duplicate_keys_and_bombs_refused() -> None:
    with pytest.raises(SpecError, match=r"line 2, column 11: the key 'c' is given twice"):
        yamlio.load("a: 1\nb: {c: 1, c: 2}\n", "spec file", "job.yaml")
    # a merge key (<<) is not a repeated key; the keys it merges may be overridden, as YAML says
    assert yamlio.read("base: &b {x: 1}\nuse:\n  <<: *b\n  x: 2\n")["use"] == {"x": 2}
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{k}: &{k} [{', '.join(['*' + p] * 10)}]\n" for p, k in zip("abcde", "bcdef", strict=True))
    with pytest.raises(SpecError, match="at most 100000 values"):
        yamlio.load(bomb, "spec file", "job.yaml")
