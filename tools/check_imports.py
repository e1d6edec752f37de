"""`make lint`: the import contracts, checked on every import, and no import circle at all.

lint-imports (import-linter) reads every import statement, those inside functions too, but not an import
by name (``__import__("bridge.x")``, ``importlib.import_module(name)``). This check adds those imports to
the same graph, runs pyproject.toml's contracts on it, and then refuses any circle between the package's
modules, however its imports are written (a function-level or by-name import only hides a circle).

    python tools/check_imports.py [pyproject.toml]
"""

from __future__ import annotations

import ast
import itertools
import sys
import tomllib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the functions that import a module named by a string
IMPORT_FUNCTIONS = frozenset({"__import__", "import_module"})


@dataclass(frozen=True)
class ByName:
    """``importer`` imports ``imported`` by name at ``line`` of its file."""

    importer: str
    imported: str
    line: int
    text: str


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (a folder under ``root``), by dotted name, and its file."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def by_name_imports(modules: dict[str, Path]) -> tuple[list[ByName], list[str]]:
    """The package's imports by name of its own modules, and the ones whose target cannot be read."""
    found: list[ByName] = []
    unreadable: list[str] = []
    for importer, path in modules.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source, filename=str(path))
        for scope in _scopes(tree):
            for call in _import_calls(scope):
                names = _targets(call, scope)
                if names is None:
                    unreadable.append(f"{path}:{call.lineno}: cannot tell which module `{ast.unparse(call)}` "
                                      "imports: name it in a string here, or import it plainly")
                    continue
                for name in names:
                    module = _longest_module(name, modules)
                    if module is not None and module != importer:
                        found.append(ByName(importer, module, call.lineno, lines[call.lineno - 1].strip()))
    return found, unreadable


def _scopes(tree: ast.Module) -> Iterable[ast.AST]:
    yield tree
    yield from (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef))


def _own_nodes(scope: ast.AST) -> Iterable[ast.AST]:
    """The nodes of a module or function, not those of the functions inside it."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo.extend(ast.iter_child_nodes(node))


def _import_calls(scope: ast.AST) -> Iterable[ast.Call]:
    for node in _own_nodes(scope):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in IMPORT_FUNCTIONS and node.args:
                yield node


def _targets(call: ast.Call, scope: ast.AST) -> list[str] | None:
    """The module names a call may import: a literal, or else every module-like string of its scope."""
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        if arg.value.startswith("."):
            return None  # relative to a package given at run time
        fromlist = _strings(call.args[3:4] + [kw.value for kw in call.keywords if kw.arg == "fromlist"])
        return [arg.value, *(f"{arg.value}.{name}" for name in fromlist)]
    named = [value for value in _strings([scope]) if "." in value and " " not in value]
    return named or None


def _strings(nodes: Sequence[ast.AST]) -> list[str]:
    return [node.value for root in nodes for node in ast.walk(root)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def _longest_module(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def circles(graph: Any, modules: Iterable[str]) -> list[list[str]]:
    """One shortest circle through each strongly connected group of modules (Tarjan's algorithm)."""
    inside = set(modules) & set(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & inside) for m in sorted(inside)}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []
    for start, targets in edges.items():
        if start in order:
            continue
        work = [(start, iter(targets))]
        order[start] = low[start] = len(order)
        stack.append(start)
        while work:
            node, following = work[-1]
            for nxt in following:
                if nxt not in order:
                    order[nxt] = low[nxt] = len(order)
                    stack.append(nxt)
                    work.append((nxt, iter(edges[nxt])))
                    break
                if nxt in stack:
                    low[node] = min(low[node], order[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == order[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in edges[node]:
                        groups.append(group)
    return [_shortest_circle(min(group), group, edges) for group in groups]


def _shortest_circle(start: str, group: set[str], edges: dict[str, list[str]]) -> list[str]:
    came_from: dict[str, str] = {}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        for nxt in edges[node]:
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if nxt in group and nxt not in came_from:
                came_from[nxt] = node
                todo.append(nxt)
    raise ValueError(f"{start} is in no circle")


def main(argv: Sequence[str]) -> int:
    config = Path(argv[0] if argv else "pyproject.toml").resolve()
    root = config.parent
    package = tomllib.loads(config.read_text(encoding="utf-8"))["tool"]["importlinter"]["root_package"]
    sys.path.insert(0, str(root))  # the package as the contracts see it: beside its config

    from importlinter import configuration  # noqa: PLC0415  (after the path is set)
    from importlinter.adapters.building import GraphBuilder  # noqa: PLC0415
    from importlinter.application.app_config import settings  # noqa: PLC0415
    from importlinter.application.use_cases import lint_imports  # noqa: PLC0415

    modules = package_modules(root, package)
    by_name, unreadable = by_name_imports(modules)
    graphs: list[Any] = []

    class WithByName(GraphBuilder):
        """import-linter's graph, plus the imports by name."""

        def build(self, *args: Any, **kwargs: Any) -> Any:
            graph = super().build(*args, **kwargs)
            for edge in by_name:
                graph.add_import(importer=edge.importer, imported=edge.imported, line_number=edge.line,
                                 line_contents=edge.text)
            graphs.append(graph)
            return graph

    configuration.configure()
    settings.configure(GRAPH_BUILDER=WithByName())
    print(f"{len(by_name)} import(s) by name of {package}'s own modules:")
    for edge in by_name:
        print(f"  {edge.importer} -> {edge.imported}  (line {edge.line}: {edge.text})")
    kept = lint_imports(config_filename=str(config), cache_dir=None, no_logo=True)
    if not graphs:
        return 1  # import-linter could not build the graph and said why
    found = circles(graphs[0], modules)
    for circle in found:
        print(f"import circle: {' -> '.join(circle)}")
        for importer, imported in itertools.pairwise(circle):
            for detail in graphs[0].get_import_details(importer=importer, imported=imported)[:1]:
                where = modules[importer].relative_to(root)
                print(f"  {where}:{detail['line_number']}: {detail['line_contents']}")
    for problem in unreadable:
        print(problem)
    if not found:
        print(f"no import circle between {package}'s {len(modules)} modules (every import, by name too)")
    return 0 if kept and not found and not unreadable else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
