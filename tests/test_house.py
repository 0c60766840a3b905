"""The house rules, read from the source with ``ast`` (nothing is imported):

* data flows one way: every ``fewlabel`` import, at the top of a module or inside a function, goes to
  the same layer or a lower one (the order of docs/internals.md);
* no module imports another module's ``_private`` name;
* no circular import between modules, at the top of a module or inside a function (a lazy import
  that closes a cycle only hides it until that function runs);
* a source file is at most ``MAX_LINES`` lines, or its module docstring has a line starting
  ``Why this file is long:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 400
LONG_REASON = "Why this file is long:"
# Lowest first. Modules in one tuple are one layer (they may import each other, never upwards).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("data",),
    ("models",),
    ("pretrain", "training"),
    ("evaluate",),
    ("pipeline",),
    ("experiments", "api"),
    ("explain",),
    ("report",),
    ("demo",),
    ("cli", "__main__"),
)
ANYWHERE = ("errors", "fileio", "settings", "strategies", "figures", "jsonable", "limits", "version")
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "fewlabel").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(module: str) -> bool:
    path = MODULES.get(module)
    return path is not None and path.name == "__init__.py"


def imports(module: str, source: str) -> list[tuple[str, str | None, int, bool]]:
    """(imported module, imported name or None, line, at module level) of every fewlabel import.

    ``from package import submodule`` counts as an import of the submodule."""
    tree = ast.parse(source)
    top = {id(node) for node in tree.body}
    top |= {id(n) for node in tree.body if isinstance(node, (ast.If, ast.Try)) for n in ast.walk(node)}
    package = module if _is_package(module) else module.rpartition(".")[0]
    out: list[tuple[str, str | None, int, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno, id(node) in top) for a in node.names
                    if a.name.split(".")[0] == "fewlabel"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "fewlabel":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    out.append((sub, None, node.lineno, id(node) in top))
                else:
                    out.append((base, alias.name, node.lineno, id(node) in top))
    return out


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(module: str, source: str) -> list[str]:
    """Imports of ``module`` that go up the layers (or out of the shared modules)."""
    area = _area(module)
    if area == "":  # the package root: the public facade whose lazy attributes reach every layer
        return []
    found = []
    for target, _, line, _ in imports(module, source):
        to = _area(target)
        if to == "" or to in ANYWHERE:  # the root is the facade; shared modules go anywhere
            continue
        if area in ANYWHERE:
            found.append(f"{module}:{line} imports {target}: a shared module imports only shared ones")
        elif to not in RANK or area not in RANK:
            found.append(f"{module}:{line} imports {target}: {to if to not in RANK else area} has no layer")
        elif RANK[to] > RANK[area]:
            found.append(f"{module}:{line} imports {target}: {to} is above {area}")
    return found


def private_imports(module: str, source: str) -> list[str]:
    return [f"{module}:{line} imports {name} from {target}"
            for target, name, line, _ in imports(module, source)
            if name is not None and name.startswith("_") and not name.startswith("__") and target != module]


def test_every_module_has_a_layer_and_imports_downwards_only() -> None:
    found = [v for module, path in MODULES.items() for v in layer_violations(module, path.read_text())]
    assert not found, "\n".join(found)


def test_an_upward_import_is_caught_even_inside_a_function() -> None:
    assert layer_violations("fewlabel.data.tensors", "from fewlabel.report.html import build_report\n")
    lazy = "def f():\n    from fewlabel.experiments import run_view\n    return run_view\n"
    assert layer_violations("fewlabel.pipeline.data", lazy) == [
        "fewlabel.pipeline.data:2 imports fewlabel.experiments.run_view: experiments is above pipeline"]
    assert layer_violations("fewlabel.settings", "import fewlabel.training.loop\n")
    assert layer_violations("fewlabel.gadgets.x", "from fewlabel.data import tensors\n")  # no layer yet
    assert not layer_violations("fewlabel.report.html", "from fewlabel.data import tensors\n")
    assert not layer_violations("fewlabel.data.tensors", "from fewlabel.errors import DataError\n")


def test_no_module_imports_another_modules_private_name() -> None:
    found = [v for module, path in MODULES.items() for v in private_imports(module, path.read_text())]
    assert not found, "\n".join(found)
    assert private_imports("fewlabel.experiments.stacking", "from fewlabel.experiments.cell import _x\n")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """module → the fewlabel modules it imports, at the top or inside a function."""
    return {module: {t for t, _, _, _ in imports(module, source) if t != module}
            for module, source in sources.items()}


def test_no_circular_import_even_through_a_function() -> None:
    cycle = _cycle(import_graph({module: path.read_text() for module, path in MODULES.items()}))
    assert cycle is None, " -> ".join(cycle or [])
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_a_cycle_closed_by_an_import_inside_a_function_is_caught() -> None:
    lazy = {"fewlabel.evaluate.metrics": "def f():\n    from fewlabel.evaluate.cluster_bootstrap import g\n",
            "fewlabel.evaluate.cluster_bootstrap": "from fewlabel.evaluate.metrics import h\n"}
    metrics, boot = "fewlabel.evaluate.metrics", "fewlabel.evaluate.cluster_bootstrap"
    assert _cycle(import_graph(lazy)) == [boot, metrics, boot]
    assert _cycle(import_graph({**lazy, metrics: "def f():\n    pass\n"})) is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_files_say_why(module: str) -> None:
    path = MODULES[module]
    text = path.read_text()
    n_lines = len(text.splitlines())
    if n_lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert any(line.startswith(LONG_REASON) for line in doc.splitlines()), (
        f"{path.relative_to(SRC)} has {n_lines} lines (> {MAX_LINES}): split it, or say in its module "
        f"docstring on a line starting {LONG_REASON!r}")
