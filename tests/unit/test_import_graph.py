"""gateway/ (and pool/) have no import circles: the imports that run when a module loads form a graph without cycles,
and in the data plane (gateway/proxy/) even type-only and deferred imports do (it reads top to bottom)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _loading_imports(tree: ast.Module) -> list[ast.stmt]:
    """The import statements that run at load time: module level, outside ``if TYPE_CHECKING:``."""
    found: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            found += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
        elif isinstance(node, ast.Try):
            found += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


def import_graph(package: str = "gateway", *, every_import: bool = False) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (a package's ``__init__`` counts as the package).

    ``from pkg import sub`` is an edge to ``pkg.sub`` only when ``sub`` is a module; ``every_import``
    also counts imports inside functions and under ``TYPE_CHECKING``."""
    files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        tree = ast.parse(path.read_text())
        nodes = list(ast.walk(tree)) if every_import else _loading_imports(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            else:
                continue
            deps.update(t for t in targets if t in files and t != name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_in_gateway() -> None:
    """No module of gateway/ reaches itself through the imports that run when it loads."""
    graph = import_graph()
    assert "gateway.proxy.http1" in graph["gateway.proxy.fasthead"]
    assert cycles(graph) == []


def test_no_import_circles_in_the_data_plane() -> None:
    """In gateway/proxy/ not even a type-only or deferred import closes a circle."""
    graph = import_graph(every_import=True)
    proxy = {m: {d for d in deps if d.startswith("gateway.proxy")} for m, deps in graph.items() if m.startswith("gateway.proxy")}
    assert cycles(proxy) == []


def test_no_import_circles_in_the_control_plane() -> None:
    """In pool/ (the stores split by concern, the accounts) not even a type-only or deferred import closes
    a circle."""
    graph = import_graph("pool", every_import=True)
    assert "pool.store.records" in graph["pool.store.users"]
    assert cycles(graph) == []


def test_the_checker_sees_a_circle() -> None:
    """The checker is not vacuous: a two-module circle is reported."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
