"""The collection's layout rules, checked on the source tree.

- ``module_utils`` holds only code shipped to hosts: no module under ``plugins/modules`` reaches controller code
  (``plugin_utils`` or a controller-only module), whatever it imports transitively, at the top or inside functions.
- The private modules import each other without a cycle (imports inside functions count; ``if TYPE_CHECKING:``
  imports never run and do not).
- Every exception class of the collection derives from ``_errors.FleetpatchError``.
- Every private module declares ``__all__``, and every public name another file imports from it is listed there.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pathlib
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
PLUGINS = REPO_ROOT / "plugins"
PACKAGE = "ansible_collections.fleetpatch.rollout"
PRIVATE_PACKAGES = ("plugins.module_utils", "plugins.plugin_utils")
# controller-only logic (plans, policy, calendar, gates, check analysis, drift, run state): never on a host
CONTROLLER_ONLY = ("_plan", "_policy", "_calendar", "_gate", "_analysis", "_drift", "_runstate")
MOVED_TO_PLUGIN_UTILS = ("_plan", "_policy", "_calendar", "_gate", "_analysis")
# files that import the collection's private modules: the collection itself, its tests, benchmarks and tools, the demo
# collection built on it
CONSUMER_ROOTS = ("plugins", "tests/unit", "tests/integration", "tests/harness", "bench", "bin",
                  "collections/ansible_collections/fleetpatch/demo")


class Import(t.NamedTuple):
    module: str  # dotted name below the collection, e.g. plugins.module_utils._io
    names: tuple[str, ...]  # names taken from it ('' for the module object itself)
    alias: str  # the name bound to the module object ('' unless the module itself is imported)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_runtime(tree: ast.AST) -> t.Iterator[ast.AST]:
    """Every node that can run: ``if TYPE_CHECKING:`` bodies are left out."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


@functools.lru_cache(maxsize=None)
def collection_imports(path: pathlib.Path) -> list[Import]:
    """The collection modules path imports at run time (top level and inside functions)."""
    found: list[Import] = []
    nodes = sorted(_walk_runtime(ast.parse(path.read_text(encoding="utf-8"))), key=lambda node: getattr(node, "lineno", 0))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE + "."):
            module = node.module[len(PACKAGE) + 1:]
            if module in PRIVATE_PACKAGES:
                # from <pkg> import _x [as y]: the module object
                for alias in node.names:
                    found.append(Import(f"{module}.{alias.name}", ("",), alias.asname or alias.name))
            else:
                found.append(Import(module, tuple(alias.name for alias in node.names), ""))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.append(Import(alias.name[len(PACKAGE) + 1:], ("",), ""))
    return found


def private_modules() -> dict[str, pathlib.Path]:
    return {f"{package}.{path.stem}": path for package in PRIVATE_PACKAGES
            for path in sorted((REPO_ROOT / package.replace(".", "/")).glob("_*.py"))}


def import_graph() -> dict[str, set[str]]:
    modules = private_modules()
    return {name: {imp.module for imp in collection_imports(path) if imp.module in modules} for name, path in modules.items()}


def host_closure(path: pathlib.Path) -> set[str]:
    """Every collection module a file reaches through its imports."""
    modules = private_modules()
    seen: set[str] = set()
    todo = [imp.module for imp in collection_imports(path)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in modules:
            todo.extend(imp.module for imp in collection_imports(modules[name]))
    return seen


# ------------------------------------------------------------------------------------------ host and controller


@pytest.mark.parametrize("name", MOVED_TO_PLUGIN_UTILS)
def test_controller_only_modules_live_in_plugin_utils(name: str) -> None:
    assert not (PLUGINS / "module_utils" / f"{name}.py").exists()
    assert (PLUGINS / "plugin_utils" / f"{name}.py").exists()


@pytest.mark.parametrize("path", sorted(PLUGINS.glob("modules/*.py")), ids=lambda path: path.name)
def test_modules_reach_only_host_code(path: pathlib.Path) -> None:
    reached = host_closure(path)
    controller = sorted(name for name in reached
                        if not name.startswith("plugins.module_utils.") or name.rsplit(".", 1)[-1] in CONTROLLER_ONLY)
    assert not controller, f"{path.name} ships controller code to hosts: {controller}"


def test_module_utils_imports_no_controller_code() -> None:
    offenders = {name: sorted(deps - {dep for dep in deps if dep.startswith("plugins.module_utils.")})
                 for name, deps in import_graph().items() if name.startswith("plugins.module_utils.")}
    assert {name: deps for name, deps in offenders.items() if deps} == {}
    assert not [name for name in private_modules() if name.startswith("plugins.module_utils.")
                and name.rsplit(".", 1)[-1] in CONTROLLER_ONLY]


def test_private_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_layout_rules_see_lazy_imports_and_skip_type_checking_ones(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "import typing as t\n"
        "if t.TYPE_CHECKING:\n"
        f"    from {PACKAGE}.plugins.module_utils._a import A\n"
        "def f():\n"
        f"    from {PACKAGE}.plugins.module_utils import _b as b\n"
        f"    from {PACKAGE}.plugins.plugin_utils._c import C, D\n",
        encoding="utf-8",
    )
    assert collection_imports(source) == [
        Import("plugins.module_utils._b", ("",), "b"),
        Import("plugins.plugin_utils._c", ("C", "D"), ""),
    ]


# ------------------------------------------------------------------------------------------ errors


def plugin_module_names() -> list[str]:
    names = []
    for path in sorted(PLUGINS.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        names.append(".".join((PACKAGE,) + path.relative_to(REPO_ROOT).with_suffix("").parts))
    return names


@pytest.mark.parametrize("module_name", plugin_module_names(), ids=lambda name: name[len(PACKAGE) + 1:])
def test_every_exception_class_derives_from_fleetpatch_error(module_name: str) -> None:
    module = importlib.import_module(module_name)
    classes = [obj for _name, obj in inspect.getmembers(module, inspect.isclass)
               if obj.__module__ == module.__name__ and issubclass(obj, BaseException)]
    assert [cls.__qualname__ for cls in classes if not issubclass(cls, FleetpatchError)] == []


# ------------------------------------------------------------------------------------------ __all__


def declared_all(path: pathlib.Path) -> list[str] | None:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def consumer_files() -> list[pathlib.Path]:
    files: list[pathlib.Path] = []
    for root in CONSUMER_ROOTS:
        base = REPO_ROOT / root
        files.extend(path for path in sorted(base.rglob("*.py")) if "output" not in path.relative_to(REPO_ROOT).parts)
        files.extend(path for path in sorted(base.glob("*")) if path.is_file() and not path.suffix and _is_python(path))
    return files


def _is_python(path: pathlib.Path) -> bool:
    with path.open("rb") as handle:
        return b"python" in handle.readline()


@functools.lru_cache(maxsize=None)
def names_used_from_private_modules() -> dict[str, dict[str, set[str]]]:
    """module -> name -> the files that import it (from m import name, or m.name on an imported module object)."""
    modules = private_modules()
    used: dict[str, dict[str, set[str]]] = {name: {} for name in modules}
    for path in consumer_files():
        if path.suffix != ".py" and not _is_python(path):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = str(path.relative_to(REPO_ROOT))
        aliases: dict[str, str] = {}
        for imp in collection_imports(path):
            if imp.module not in modules or modules[imp.module] == path:
                continue
            for name in imp.names:
                if name:
                    used[imp.module].setdefault(name, set()).add(rel)
            if imp.alias:
                aliases[imp.alias] = imp.module
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                used[aliases[node.value.id]].setdefault(node.attr, set()).add(rel)
    return used


@pytest.mark.parametrize("name", sorted(private_modules()), ids=lambda name: name.rsplit(".", 1)[-1])
def test_private_module_declares_what_others_import_in_all(name: str) -> None:
    path = private_modules()[name]
    declared = declared_all(path)
    assert declared is not None, f"{path.relative_to(REPO_ROOT)} has no __all__"
    assert len(declared) == len(set(declared)), "__all__ lists a name twice"
    module = importlib.import_module(f"{PACKAGE}.{name}")
    assert [entry for entry in declared if not hasattr(module, entry)] == [], "__all__ lists names the module lacks"
    # a _name is private by its spelling even when a sibling module borrows it; __all__ is the public interface
    missing = {entry: sorted(files) for entry, files in names_used_from_private_modules()[name].items()
               if entry not in declared and not entry.startswith("_")}
    assert missing == {}, "imported by other files but not in __all__"
