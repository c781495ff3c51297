"""stjobs.yamlin must read every document it accepts exactly as PyYAML does, and hand everything else back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stjobs import yamlin

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def typed(value: Any) -> Any:
    """Equality that tells True from 1 and 1.0 from 1, which == does not."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


def pyyaml(text: str) -> tuple[bool, Any]:
    try:
        return True, yaml.safe_load(text)
    except yaml.YAMLError:
        return False, None


def agrees(text: str) -> bool:
    """The fast reader either declines or gives what PyYAML gives; PyYAML's errors are never accepted."""
    fast = yamlin.load(text)
    if fast is None:
        return True
    ok, slow = pyyaml(text)
    assert ok, f"accepted a document PyYAML refuses:\n{text}"
    assert typed(fast) == typed(slow), f"read differently:\n{text}\nfast: {fast!r}\nPyYAML: {slow!r}"
    return True


# Scalars chosen to hit YAML 1.1's traps: booleans, nulls, octal, sexagesimal, dates, floats without a dot,
# merge and value keys, indicators, comments, quotes, and ordinary spec words.
TRICKY = ["yes", "No", "ON", "off", "y", "n", "true", "False", "~", "null", "Null", "NULL", "", "0", "-0", "7",
          "010", "0x1F", "0o7", "0b101", "1_000", "12:30", "190:20:30", "2002-12-14", "2e-5", "1e3", "1.5", "-2.25",
          "1.", ".5", ".inf", "-.inf", ".NaN", "+1", "<<", "=", "-", "--", "--model", "-x", "./data/x.jsonl",
          "../up", ".hidden", "...", "---", "....x", "---x",
          "a#b", "a #b", "a: b", "a:b", "trail:", "$HOME", "${X:-1}", "it's", 'say "hi"',
          "a, b", "[x]", "{y}", "&anchor", "*alias", "!tag", "|", ">", "%dir", "@at", "`tick`", "a  b", " lead",
          "trail ", "ünï", "tab\there", "gpu", "stjobs.train", "ghcr.io/o/i:1.0", "/scratch/data:/data",
          "a100&ib", "source \"$HOME/venv/bin/activate\"", "module load cuda/12.4", "--mail-type=END"]
scalar_text = st.one_of(st.sampled_from(TRICKY), st.text(alphabet=st.characters(codec="ascii"), max_size=12))


def quoted(value: str) -> st.SearchStrategy[str]:
    return st.sampled_from([value, f"'{value}'", f'"{value}"', f"{value} # note", f"'{value}' # note"])


@st.composite
def documents(draw: st.DrawFn) -> str:
    """Spec-shaped YAML text, written in the styles people use: block and flow lists, comments, quotes."""
    keys = st.sampled_from(["name", "nodes", "env", "args", "on", "yes", "a.b", "nvidia.com/gpu", "x-y", "k8s",
                            "HF_TOKEN", "null", "a b", "1", "-k", "key"])
    lines: list[str] = []

    def mapping(indent: int, depth: int) -> None:
        for _ in range(draw(st.integers(1, 4))):
            key = draw(keys)
            pad = " " * indent
            kind = draw(st.sampled_from(["scalar", "scalar", "flow", "block", "map" if depth < 2 else "scalar",
                                         "empty", "comment"]))
            if kind == "scalar":
                lines.append(f"{pad}{key}: {draw(quoted(draw(scalar_text)))}")
            elif kind == "flow":
                items = draw(st.lists(st.sampled_from(["a", "'b c'", '"d"', "1", "2.5", "yes", "--x", "e:f",
                                                       "", "[g]", "h i", "#j", "k,l"]), max_size=4))
                if draw(st.booleans()) and len(items) > 1:
                    lines.append(f"{pad}{key}: [{', '.join(items[:1])},")
                    lines.append(f"{pad}{' ' * draw(st.integers(0, 4))}{', '.join(items[1:])}]")
                else:
                    lines.append(f"{pad}{key}: [{', '.join(items)}]")
            elif kind == "block":
                lines.append(f"{pad}{key}:")
                step = draw(st.sampled_from([0, 2, 4]))
                for _ in range(draw(st.integers(1, 3))):
                    lines.append(f"{pad}{' ' * step}- {draw(quoted(draw(scalar_text)))}")
            elif kind == "map":
                lines.append(f"{pad}{key}:{draw(st.sampled_from(['', '  # block']))}")
                mapping(indent + draw(st.sampled_from([1, 2, 4])), depth + 1)
            elif kind == "empty":
                lines.append(f"{pad}{key}:")
            else:
                lines.append(f"{pad}# {draw(scalar_text)}")
                lines.append(f"{pad}{key}: {draw(scalar_text)}")

    mapping(0, 0)
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
@example("name: a\nname: b\n")  # a repeated key: the last one wins in both
@example("a:\n- x\n- y\nb: 1\n")
@example("a:\n    b: 1\n  c: 2\n")
@example("a: [x,\ny]\n")
def test_generated_documents_read_as_pyyaml_reads_them(text: str) -> None:
    assert agrees(text)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_example_specs_read_as_pyyaml_reads_them(path: Path, data: st.DataObject) -> None:
    text = path.read_text()
    at = data.draw(st.integers(0, len(text)))
    insert = data.draw(st.sampled_from([" ", "  ", "\n", "#", ":", "- ", "'", '"', "[", "]", ",", "\\", "&", "*",
                                        "!", "|", "0", ".", "\t", "---\n", "yes", "~"]))
    cut = data.draw(st.integers(0, 3))
    assert agrees(text[:at] + insert + text[at + cut:])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_specs(path: Path) -> None:
    assert agrees(path.read_text())


def test_plain_spec_files_take_the_fast_path() -> None:
    """The speed target leans on this: the shapes of our own examples are read without PyYAML."""
    fast = [p.stem for p in EXAMPLES if yamlin.load(p.read_text()) is not None]
    assert {"demo", "tiny-ddp", "two-nodes", "gpu-2x8", "accelerate", "k8s-pytorchjob"} <= set(fast)


@settings(max_examples=500, deadline=None)
@given(st.one_of(scalar_text, st.lists(st.sampled_from(TRICKY[:40]), max_size=4).map(lambda x: f"[{', '.join(x)}]")))
def test_set_values_read_as_pyyaml_reads_them(text: str) -> None:
    fast = yamlin.load_value(text)
    if fast is not None:
        ok, slow = pyyaml(text)
        assert ok and typed(fast) == typed(slow), (text, fast, slow)


def test_render_of_a_plain_spec_does_not_import_pyyaml() -> None:
    code = ("import sys; from stjobs.cli import main\n"
            "try: main(['render', 'examples/gpu-2x8.yaml', '-b', 'slurm', '--dry-run'])\n"
            "except SystemExit as e: assert not e.code, e.code\n"
            "assert 'yaml' not in sys.modules, 'PyYAML imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
