"""The layers (docs/ARCHITECTURE.md): the domain package `mmrec_pipeline` knows nothing of Dagster or of the
Dagster layer (`assets`, `resources`), and no project module imports itself through others (no import cycle).

Read from the source with `ast`, so an import inside a function counts as well as one at the top."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmrec_pipeline", "assets", "resources")
DAGSTER_LAYER = ("dagster", "assets", "resources")
# Cycles allowed among the project's modules: none (the explicit model contract removed the last two).
KNOWN_CYCLES: list[list[str]] = []


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Every module name the file imports (absolute; relative imports resolved), and for `from X import Y` also
    `X.Y` (Y may be a submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a name that is not a module of its own, e.g. a class imported
    from a package, points at the module that defines it)."""
    modules = project_modules()
    return {name: {m for m in imported_names(path, name) if m in modules and m != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_domain_package_imports_no_dagster_layer():
    modules = project_modules()
    offenders = {name: sorted(m for m in imported_names(path, name) if m.split(".")[0] in DAGSTER_LAYER)
                 for name, path in modules.items() if name.split(".")[0] == "mmrec_pipeline"}
    assert {name: found for name, found in offenders.items() if found} == {}
    assert len(offenders) > 40  # the walk found the package's modules


def test_no_import_cycle_among_project_modules():
    graph = import_graph()
    assert "assets.definitions" in graph["resources.runner"]  # the walk sees project imports
    assert [c for c in cycles(graph) if c not in KNOWN_CYCLES] == []


def test_cycle_finder_finds_a_cycle_and_ignores_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
