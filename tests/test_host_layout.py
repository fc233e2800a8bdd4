"""The host side's shape, kept true (issue 17): no import cycles, the product never depends on
the test infrastructure, every package says what it is for, and the README's command table
names every command and option the parser has."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from jikimi_host.cli import parser
from jikimi_host.paths import REPO_ROOT

HOST = REPO_ROOT / "host" / "jikimi_host"
# The virtual board and the rig: what tests, benchmarks and the demo run the product on.
TEST_INFRASTRUCTURE = ("jikimi_host.sim", "jikimi_host.rig")
# The product's libraries: what a bell's owner runs (the relay) and what flashes a real board.
PRODUCT = ("jikimi_host.relay", "jikimi_host.device", "jikimi_host.toolchain", "jikimi_host.errors",
           "jikimi_host.paths")


def module_name(path: Path) -> str:
    parts = path.relative_to(HOST.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def host_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(HOST.rglob("*.py")) if "__pycache__" not in path.parts}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every host module `path` imports, at the top or inside a function (a lazy import closes a
    cycle just the same once both ends run)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from package import module` imports that module; `from module import name`, the module
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = host_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_host_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():  # the check above cannot pass by finding nothing ever
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_product_never_imports_the_test_infrastructure():
    graph = import_graph()
    wrong = {module: sorted(name for name in imports if name.startswith(TEST_INFRASTRUCTURE))
             for module, imports in graph.items() if module.startswith(PRODUCT)}
    assert {module: names for module, names in wrong.items() if names} == {}


def test_every_host_module_says_what_it_is_for():
    silent = [name for name, path in host_modules().items()
              if not (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").strip()]
    assert silent == []


def readme_command_rows() -> dict[str, str]:
    """The README's command table: each command's usage cell, by command name."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## The `jikimi` command"):].split("\n## ", 1)[0]
    return {match["command"]: match["usage"]
            for match in re.finditer(r"^\| `jikimi (?P<command>[a-z-]+)(?P<usage>[^`]*)` \|", table, re.M)}


def test_the_readme_command_table_names_every_command_and_option():
    subcommands = next(action for action in parser()._actions if isinstance(action, argparse._SubParsersAction))
    rows = readme_command_rows()
    assert sorted(rows) == sorted(subcommands.choices)
    missing = {name: [action.option_strings[-1] for action in command._actions
                      if action.option_strings and "--help" not in action.option_strings
                      and not any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", rows[name])
                                  for option in action.option_strings)]
               for name, command in subcommands.choices.items()}
    assert {name: options for name, options in missing.items() if options} == {}
