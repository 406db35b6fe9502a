"""The project's imports point one way: pipeline.py -> pipeline_cli -> pipeline_dag -> components
-> maskpipe, with no cycle anywhere (docs/architecture.md draws the map).

The graph is read from the source (``ast``), so nothing is imported to build it. Every import
counts, at module level or inside a function (a function-level import is still a dependency,
and a lazy back-edge is still a circle, only one that shows up later), except those under
``if TYPE_CHECKING:``, which never run: they name types for the reader and the type checker.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("maskpipe", "components", "pipeline_cli")
SCRIPTS = ("pipeline", "pipeline_dag")
# layer -> the project layers it must never import (third-party names checked too: kfp)
FORBIDDEN = {
    "maskpipe": ("kfp", "components", "pipeline_cli", "pipeline", "pipeline_dag"),
    "components": ("pipeline_cli", "pipeline", "pipeline_dag"),
    "pipeline_dag": ("pipeline_cli", "pipeline"),
    "pipeline_cli": ("pipeline",),
}


def module_files(root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> its file, for the project's own modules."""
    files = {name: root / f"{name}.py" for name in SCRIPTS if (root / f"{name}.py").is_file()}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_names(path: Path, module: str, is_package: bool) -> set[str]:
    """Every absolute dotted name ``path`` imports (``from a.b import c`` gives ``a.b`` and
    ``a.b.c``), relative imports resolved against ``module``."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph(root: Path = REPO) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the project's modules, every imported name per module). An edge is an
    import statement; that importing ``a.b`` first runs ``a/__init__.py`` is Python's doing, not
    an edge (a package's ``__init__`` may import its own modules)."""
    files = module_files(root)
    edges, raw = {}, {}
    for module, path in files.items():
        names = imported_names(path, module, path.name == "__init__.py")
        raw[module] = names
        # `from maskpipe import storage` names the module maskpipe.storage, not the package
        edges[module] = {n for n in names if n in files and n != module}
        edges[module] -= {n for n in edges[module] if any(m.startswith(n + ".") for m in edges[module])}
    return edges, raw


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``a -> b -> ... -> a``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer(module: str) -> str:
    return module.split(".")[0]


def back_edges(raw: dict[str, set[str]]) -> list[str]:
    """``module -> name`` for each import that points back up a layer."""
    bad = []
    for module, names in sorted(raw.items()):
        for name in sorted(names):
            if layer(name) in FORBIDDEN.get(layer(module), ()):
                bad.append(f"{module} -> {name}")
    return bad


def test_the_graph_sees_the_project():
    edges, _ = import_graph()
    assert {"pipeline", "pipeline_dag", "pipeline_cli.commands", "components.ensemble_infer",
            "maskpipe.ensemble", "maskpipe.runtime", "maskpipe.data.index"} <= set(edges)  # fmt: skip
    assert "maskpipe.backend" in edges["maskpipe.ensemble"]
    assert "pipeline_dag" in edges["pipeline_cli.local_run"]
    assert "maskpipe.torch_backend" in edges["maskpipe.runtime"]  # a function-level import counts


def test_no_import_cycle_among_the_projects_modules():
    edges, _ = import_graph()
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_points_back_up():
    _, raw = import_graph()
    assert back_edges(raw) == [], (
        "these imports point back up (maskpipe never imports kfp, components, pipeline_cli or "
        "the pipeline; components never import the CLI or the pipeline): " + "; ".join(back_edges(raw))
    )


@pytest.mark.parametrize(
    ("module", "line", "expect"),
    [
        ("maskpipe/labels.py", "def f():\n    from components import IMAGE\n", "back"),
        ("maskpipe/backend.py", "import kfp\n", "back"),
        ("components/image.py", "from pipeline_dag import TASKS\n", "back"),
        ("maskpipe/labels.py", "def f():\n    from maskpipe import ensemble\n", "cycle"),
        ("maskpipe/data/resize.py", "def f():\n    from ..torch_backend import checkpoint_view\n", "cycle"),
        ("maskpipe/backend.py", "from maskpipe.runtime import open_backend\n", "cycle"),
        ("maskpipe/serve_app.py", "def f():\n    from maskpipe.serve import ServeOptions\n", "cycle"),
        ("maskpipe/serve_app.py", "if TYPE_CHECKING:\n    from maskpipe.serve import ServeOptions\n", "clean"),
    ],
)
def test_a_back_edge_or_a_circle_is_caught(tmp_path, module, line, expect):
    """The checks above on a copy of the project with one bad import added (a test that could
    not fail would prove nothing)."""
    import shutil

    for name in (*PACKAGES, *(f"{s}.py" for s in SCRIPTS)):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    target = tmp_path / module
    target.write_text(target.read_text() + "\n" + line)
    edges, raw = import_graph(tmp_path)
    assert find_cycle(import_graph()[0]) is None  # the real project is clean...
    if expect == "back":
        assert any(edge.startswith(Path(module).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"))
                   for edge in back_edges(raw))  # fmt: skip
    elif expect == "cycle":
        assert find_cycle(edges) is not None
    else:  # a types-only import is no dependency
        assert find_cycle(edges) is None and back_edges(raw) == []
