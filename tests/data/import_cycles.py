"""Finds import cycles among the modules of a package by reading their source (ast).

Usage: python tests/data/import_cycles.py [PACKAGE_DIR] [--all-imports]

By default an edge A -> B is an import that runs when A is imported: statements at module
level, inside module-level if/try/with blocks and class bodies, but not inside functions
nor under `if TYPE_CHECKING:`. With --all-imports, imports inside functions count too: a
cycle "hidden" in a function still couples the two modules and comes back the day someone
moves the import to the top.

Importing a submodule also runs its package's __init__, but that implicit edge is left
out, as pylint's cyclic-import does: otherwise every package whose __init__ re-exports a
submodule would be a cycle. Prints one line per cycle and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_names(package_dir: Path) -> dict[str, Path]:
    """{dotted name: file} of every module under package_dir (the package itself included),
    named from the top-level package so that a subpackage's modules keep their full names."""
    root = package_dir.resolve().parent
    while (root / "__init__.py").is_file():
        root = root.parent
    names = {}
    for path in sorted(package_dir.resolve().rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree: ast.AST, all_imports: bool):
    """The Import/ImportFrom nodes that run at import time (or all of them)."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if not all_imports:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.If) and _is_type_checking(node):
                stack.extend(node.orelse)
                continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    # A package's relative imports start from itself, a module's from its package.
    keep = len(base) - node.level + (1 if is_package else 0)
    return ".".join(base[:keep] + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str], all_imports: bool) -> set[str]:
    """The modules of `known` that `module` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in _import_nodes(tree, all_imports):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _resolve(module, path.name == "__init__.py", node)
            # `from pkg import name`: the submodule pkg.name if there is one, else pkg.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        found.update(t for t in targets if t in known and t != module)
    return found


def import_graph(package_dir: Path, all_imports: bool = False) -> dict[str, set[str]]:
    names = module_names(package_dir)
    known = set(names)
    return {name: imports_of(name, path, known, all_imports) for name, path in names.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module, or a
    module importing itself; each as a path [a, b, ..., a]. Tarjan's algorithm."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    cycles = [_path_through(graph, comp) for comp in components
              if len(comp) > 1 or comp[0] in graph.get(comp[0], ())]
    return sorted(cycles)


def _path_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A concrete cycle inside one strongly connected component, from its first module."""
    members, start = set(component), component[0]
    parents, frontier = {start: None}, [start]
    while frontier:  # breadth-first back to start: the shortest cycle through it
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, start]
                if nxt not in parents:
                    parents[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return component


def main(argv: list[str]) -> int:
    all_imports = "--all-imports" in argv
    paths = [a for a in argv[1:] if not a.startswith("--")]
    package_dir = Path(paths[0]) if paths else Path(__file__).resolve().parents[2] / "dann_dist"
    cycles = find_cycles(import_graph(package_dir, all_imports))
    for cycle in cycles:
        print("import cycle: " + " -> ".join(cycle))
    if not cycles:
        print(f"no import cycle in {package_dir}")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
