"""stjobs' YAML writer must read back as exactly the data written, for ordinary and hostile strings alike."""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from stjobs import yamlout

TRICKY = ["", "yes", "No", "ON", "off", "y", "N", "null", "NULL", "~", "True", "1", "1.5", "0x1f", "0o17", "1e3",
          "-1", "+1", "1_000", ".inf", ".NaN", "2026-11-30", "12:30", "a: b", "a #b", "#c", "- x", "[x]", "{x}",
          "*a", "&a", "!t", "%x", "@x", "`x", "'q'", '"d"', "a\nb", "a\r\nb", " lead", "trail ", "tab\t",
          "\u2028", "\u2029", "\x85", "\x00", "\x7f", "é", "😀", "\ufeff", "key:", "a:b", "http://x.y/z", "<<",
          "=", "?", "|", ">", "--model", "-x", "-1", "-.inf", "-inf", "--", "- -",
          "$(HOME)", "${X}", "back\\slash", "-", "---", "...", "a,b", "ghcr.io/o/i:1.0@sha256:ab"]


def roundtrip(data: dict[str, Any]) -> Any:
    return yaml.safe_load(yamlout.dump(data))


def test_tricky_strings_as_values_and_keys() -> None:
    data = {"values": TRICKY, "keys": {t: t for t in TRICKY if t}, "nested": [{"a": t, "b": [t, {t or "x": t}]}
                                                                              for t in TRICKY]}
    assert roundtrip(data) == data


def test_scalars_and_empty_containers() -> None:
    data = {"n": [1, 0, -3, 2.5, 1e20, 4.0, True, False, None], "empty": [[], {}, [[], {}]], "deep": [[1, [2]], []],
            "map": {"list": [], "dict": {}, "none": None}}
    assert roundtrip(data) == data


def test_random_strings_from_a_hostile_alphabet() -> None:
    rnd = random.Random(20261130)
    alphabet = "ab:-_ #'\"\\\n\t\r$()`;{}[],&*!|>%@?.~0123456789é😀\u2028\x00\x1f\x85"
    for _ in range(3000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 14)))
        data = {text or "k": [text, {"x": text}], "v": text}
        assert roundtrip(data) == data, repr(text)


def test_plain_where_plain_is_safe() -> None:
    out = yamlout.dump({"image": "ghcr.io/org/img:1.0", "name": "pytorch", "port": "29500", "flag": "yes"})
    assert out == 'image: ghcr.io/org/img:1.0\nname: pytorch\nport: "29500"\nflag: "yes"\n'


@pytest.mark.parametrize("bad", [{"k": {1, 2}}, {"k": object()}, {1: "x"}])
def test_unknown_types_are_refused(bad: dict[Any, Any]) -> None:
    with pytest.raises(TypeError):
        yamlout.dump(bad)
