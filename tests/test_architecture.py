"""The shape of the code, read from the source with ``ast`` (nothing is imported).

Size: no function of ``runtime``, ``export`` or ``train`` is longer than 60 lines or takes
more than 8 parameters (``self``/``cls`` not counted; a click command's option list is the
exception, its body is not), and ``runtime``'s top level holds at most 8 modules besides its
subpackages: a newcomer finds a change's one place by the folder's name.

Import cycles: no module of ``runtime``, ``export`` or ``train`` takes part in a cycle of
intra-project imports. Every import statement counts wherever it is written: at the top,
inside a function (a lazy import) or under ``if TYPE_CHECKING:``, because a cycle through
a lazy import is still two modules that each need the other.

How an import becomes an edge of the graph (module names are dotted, a package's
``__init__.py`` is the package's own name):

- ``import runtime.errors`` and ``from runtime.errors import X``: an edge to ``runtime.errors``
  (to the longest prefix that is one of our modules).
- ``from runtime import errors``: an edge to ``runtime.errors`` when ``runtime/errors.py`` (or
  ``runtime/errors/__init__.py``) exists, since a name that is a submodule is an import of the
  submodule; ``from runtime import InputContract`` is an edge to ``runtime`` (its ``__init__``).
- Relative imports resolve the same way from the importing module's package:
  ``from . import server`` in ``runtime/web/__init__.py`` is ``runtime.web.server``,
  ``from ..errors import X`` in ``runtime/web/auth.py`` is ``runtime.errors``.
- Python also runs the parents' ``__init__`` on the way to a submodule; those implicit loads are
  not edges, or every package that re-exports its children would be a cycle with each of them.
- ``importlib.import_module`` with a computed name (``runtime/__init__``'s lazy names) is not
  seen; keep such imports to modules that import nothing back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "train")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _known_prefix(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets.add(_known_prefix(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else _known_prefix(base, modules))
    targets.discard(None)
    targets.discard(module)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: _imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path per strongly connected component of more than one module (Tarjan)."""
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
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(min(component), graph, component) for component in components]


def _cycle_through(start: str, graph: dict[str, set[str]], component: set[str]) -> list[str]:
    # Breadth-first from start back to start inside the component: the shortest cycle through it.
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def test_the_graph_sees_lazy_relative_and_type_checking_imports():
    graph = import_graph()
    assert "runtime.errors" in graph["runtime"]  # from runtime.errors import CifarEdgeError
    assert "runtime.web.server" in graph["runtime.web"]  # from runtime.web import server, in __getattr__
    assert "runtime.model.classifier" in graph["runtime.web.server"]  # under TYPE_CHECKING
    assert "train.fit" in graph["train"]  # from .fit import fit, inside a function
    assert not any(target.split(".")[0] not in PACKAGES for targets in graph.values() for target in targets)


def test_the_cycle_finder_reports_a_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(cycle) for cycle in cycles)


MAX_LINES, MAX_PARAMS, MAX_RUNTIME_TOP_MODULES = 60, 8, 8


def _is_click_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated with ``click.command``/``click.option``/``click.argument`` (its parameters
    are the command line's)."""
    def name(decorator: ast.expr) -> str:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")

    return any(name(d) in ("command", "option", "argument") for d in node.decorator_list)


def sizes_in(source: str, where: str) -> list[tuple[str, int, int, bool]]:
    """(where, lines, parameters, is a click command) for every function, nested ones too."""
    sizes = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            named = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
            params = len([a for a in named if a not in ("self", "cls")])
            params += bool(args.vararg) + bool(args.kwarg)
            sizes.append((f"{where}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1,
                          params, _is_click_command(node)))
    return sizes


def function_sizes() -> list[tuple[str, int, int, bool]]:
    return [size for path in project_modules().values()
            for size in sizes_in(path.read_text(), str(path.relative_to(ROOT)))]


def test_the_size_check_counts_lines_parameters_and_knows_click_commands():
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    source = (f"def long(a):\n{body}\n\n"
              "class C:\n    def many(self, a, b, c, d, e, f, g, h, *rest, **options):\n        pass\n\n"
              "@click.command()\n@click.option('--a')\n"
              "def main(a, b, c, d, e, f, g, h, i):\n    def inner(): pass\n")
    sizes = {where.split(" ")[1]: (lines, params, click) for where, lines, params, click in sizes_in(source, "x.py")}
    assert sizes == {"long": (61, 1, False), "many": (2, 10, False), "main": (2, 9, True), "inner": (1, 0, False)}


def test_no_function_is_too_long_or_takes_too_many_parameters():
    too_long = [f"{where}: {lines} lines" for where, lines, _, _ in function_sizes() if lines > MAX_LINES]
    too_many = [f"{where}: {params} parameters" for where, _, params, click in function_sizes()
                if params > MAX_PARAMS and not click]
    assert not too_long + too_many, "\n".join(too_long + too_many)


def test_runtime_top_level_is_a_few_modules_and_subpackages():
    top = sorted(p.stem for p in (ROOT / "runtime").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_RUNTIME_TOP_MODULES, top
    packages = sorted(p.name for p in (ROOT / "runtime").iterdir() if (p / "__init__.py").is_file())
    assert {"model", "image", "camera", "web", "bench", "cli"} <= set(packages)
