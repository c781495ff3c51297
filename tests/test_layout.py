"""The package's shape: no import circle, no module that wants splitting, one library per job, and a README
whose layout section is the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "stjobs"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path) -> set[str]:
    """Every stjobs module ``path`` imports at run time, at the top or inside a function (the lazy imports are the
    ones that hid the circles); ``if TYPE_CHECKING:`` blocks are left out: they never run."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            for child in node.orelse:  # type: ignore[attr-defined]
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                  else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if name in MODULES and name != module_name(path)}


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(path) for name, path in MODULES.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return out


def test_the_import_graph_has_no_circle() -> None:
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_circles() -> None:
    """The check above could fail: the two circles this layout removed are found in their old shape."""
    old = {"k8s": {"k8s_control"}, "k8s_control": {"k8s_logs", "k8s"}, "k8s_logs": {"k8s_control"},
           "slurm": {"slurm_submit"}, "slurm_submit": {"slurm"}, "plan": set()}
    assert circles(old) == [["k8s", "k8s_control", "k8s_logs"], ["slurm", "slurm_submit"]]


def test_the_public_api_sits_above_backends_and_images() -> None:
    graph = import_graph()
    below_api = [name for name in MODULES if name.startswith(("stjobs.backends", "stjobs.images"))]
    tops = ["stjobs.cli", *(name for name in MODULES if name == "stjobs.bench" or name.startswith("stjobs.bench."))]
    assert len(tops) > 2  # the bench is a package: every module of it is checked, not only its face
    for name in below_api:
        assert not graph[name] & (set(tops) | {"stjobs.api"}), name
    # the CLI and the benchmark reach backends and images only through the API (and the backend table's names)
    for top in tops:
        reached = {name for name in graph[top] if name.startswith(("stjobs.backends.", "stjobs.images"))}
        assert reached == set(), (top, reached)


def test_backends_are_packages_with_the_same_face() -> None:
    import importlib

    from stjobs.backends import BACKENDS, Backend

    face = {"NAME", "render", "uses_image", "check", "submit", "status", "statuses", "logs", "cancel", "output_file",
            "output_tail"}
    assert face <= set(vars(Backend)) | set(Backend.__annotations__)  # the Protocol says the same face
    for name, module_path in BACKENDS.items():
        module = importlib.import_module(module_path)
        assert Path(module.__file__ or "").name == "__init__.py", name
        assert face <= set(vars(module)), (name, face - set(vars(module)))
        assert name == module.NAME


def test_api_has_no_backend_special_cases() -> None:
    source = (PACKAGE / "api.py").read_text(encoding="utf-8")
    assert not re.search(r"backend\s*(==|!=|\bin\b)", source)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_past_the_split_line(name: str) -> None:
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name}: {lines} lines; split it along a real seam"


def test_jinja2_and_pyyaml_are_the_only_template_and_yaml_libraries() -> None:
    others = re.compile(r"^\s*(import|from)\s+(minijinja|ruamel|mako|chevron|pystache|strictyaml|yamlin|yamlout)"
                        r"\b|stjobs\.(yamlin|yamlout)", re.M)
    for path in MODULES.values():
        assert not others.search(path.read_text(encoding="utf-8")), path
    assert "import jinja2" in (PACKAGE / "templating.py").read_text(encoding="utf-8")
    assert "import yaml" in (PACKAGE / "yamlio.py").read_text(encoding="utf-8")
    deps = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert "minijinja" not in deps.lower() and '"Jinja2>=' in deps and '"PyYAML>=' in deps


def readme_layout() -> dict[str, set[str]]:
    """The README's layout block as {directory: files named on its lines}."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    out: dict[str, set[str]] = {}
    current = ""
    for line in block.splitlines():
        words = line.split()
        if words and words[0].endswith("/") and not line.startswith(" "):
            current = words[0]
            words = words[1:]
        out.setdefault(current, set()).update(w for w in words if re.fullmatch(r"[\w]+\.py", w))
    return out


def test_the_readme_layout_is_the_tree() -> None:
    listed = {f"{directory}{name}" for directory, names in readme_layout().items() if directory.startswith("stjobs")
              for name in names}
    actual = {str(path.relative_to(REPO)) for path in MODULES.values()}
    assert listed == actual, f"missing from the README: {sorted(actual - listed)}; not in the tree: " \
                             f"{sorted(listed - actual)}"
