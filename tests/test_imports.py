"""The package's import graph: no cycles, every module importable alone, light modules stay light.

The graph is read from the source (every ``import``, also the ones inside functions, which is
where a cycle hides), so the test needs no heavy imports; one fresh interpreter then imports every
module in reverse order, which fails on any cycle that Python cannot resolve.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from conftest import REPO_ROOT

SRC = REPO_ROOT / "src"
PACKAGE = "aider_edge"
STANDARD_LIBRARY_ONLY = ("aider_edge.layout", "aider_edge.contract", "aider_edge.digest")
DRONE_FORBIDDEN = ("torch", "torchvision", "mlflow", "dvc", "prefect", "pydantic", "yaml")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports (absolute names; ``from pkg import mod`` counts as pkg.mod)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def package_graph() -> nx.DiGraph:
    """Edges from each aider_edge module to the aider_edge modules it imports."""
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    for name in MODULES:
        for target in imports_of(name):
            if target in MODULES and target != name:
                graph.add_edge(name, target)
    return graph


def test_the_import_graph_sees_the_modules_and_their_edges():
    graph = package_graph()
    assert {"aider_edge.stages.export", "aider_edge.layout", "aider_edge.edge.runtime"} <= set(
        graph
    )
    assert graph.has_edge("aider_edge.stages.export", "aider_edge.stages.select")
    assert graph.has_edge("aider_edge.registry", "aider_edge.edge.runtime")  # a lazy import


def test_no_import_cycle_among_the_package_modules():
    graph = package_graph()
    # Parent packages are imported with their children; their own imports count, not the children.
    cycles = list(nx.simple_cycles(graph))
    assert cycles == [], f"import cycles: {cycles[:3]}"


def test_every_module_imports_in_a_fresh_interpreter_in_reverse_order():
    names = sorted(MODULES, reverse=True)
    code = f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name", STANDARD_LIBRARY_ONLY)
def test_light_modules_use_the_standard_library_only(name: str):
    outside = {
        target.split(".")[0]
        for target in imports_of(name)
        if target.split(".")[0] not in sys.stdlib_module_names
        and target.split(".")[0] != "__future__"
    }
    assert outside <= {PACKAGE}, outside
    package_imports = {t for t in imports_of(name) if t.startswith(PACKAGE + ".") and t in MODULES}
    assert package_imports <= set(STANDARD_LIBRARY_ONLY), package_imports


def test_the_drone_runtime_reaches_neither_torch_nor_mlflow():
    """Everything ``aider_edge.edge`` imports, transitively, stays off the training stack."""
    graph = package_graph()
    edge = {n for n in MODULES if n == "aider_edge.edge" or n.startswith("aider_edge.edge.")}
    reached = edge | {d for n in edge for d in nx.descendants(graph, n)}
    third_party = {t.split(".")[0] for n in reached for t in imports_of(n)}
    assert not third_party & set(DRONE_FORBIDDEN), third_party & set(DRONE_FORBIDDEN)
    assert "aider_edge.config" not in reached


def test_the_served_model_reaches_no_torch():
    """The registered pyfunc (``serving``) runs in `mlflow models serve` without torch."""
    graph = package_graph()
    reached = {"aider_edge.serving"} | nx.descendants(graph, "aider_edge.serving")
    third_party = {t.split(".")[0] for n in reached for t in imports_of(n)}
    assert not third_party & {"torch", "torchvision", "dvc", "prefect"}
    assert "aider_edge.config" not in reached
