"""Constants folded across the firmware's modules for the device image (issue 14).

mpy-cross folds `NAME = const(1)` only inside its own module, and keeps a public one as a global,
because another module may read it. On stock MicroPython a .mpy file is loaded into the heap, so
each public constant costs a global's slot and its name interned in RAM, and each `p.NAME` in
another module a global lookup, an attribute lookup and that name again: the 68 of the protocol
codec alone took 2.9 KB of the 56 KiB an ESP32 starts with. Before `jikimi build` compiles a
module of the firmware package it therefore rewrites it so that

- `alias.NAME`, with `alias` bound by `from jikimi import mod [as alias]`, and a name taken by
  `from jikimi.mod import NAME`, become NAME's value, where NAME is an integer const() of mod;
- each such constant is renamed `_NAME` in its own module, which mpy-cross then folds away.

Only the tokens change, in place, so the compiled module keeps the source's line numbers (and
mpy-cross's errors their file:line). The sources stay as they are: the host and the tests on
CPython import them, and the frozen image (boards/*/manifest.py) compiles them. Code run on the
device image must therefore not read such a constant as an attribute at run time: a module alias
used other than as `alias.attribute` is refused (FoldError), since its use cannot be followed.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "jikimi"

_BINARY = {ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor,
           ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.Add: operator.add,
           ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}
_UNARY = {ast.USub: operator.neg, ast.Invert: operator.invert, ast.UAdd: operator.pos}


class FoldError(Exception):
    """A module whose constants cannot be folded safely; `line` is the 1-based source line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _value(node: ast.expr, known: dict[str, int]) -> int | None:
    """The integer `node` evaluates to from literals and the constants before it, else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        return known.get(node.id)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left, known), _value(node.right, known)
        return None if left is None or right is None else _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        operand = _value(node.operand, known)
        return None if operand is None else _UNARY[type(node.op)](operand)
    return None


def module_constants(tree: ast.Module) -> dict[str, int]:
    """Every top-level `NAME = const(<integer expression>)` of a module: name -> value."""
    found: dict[str, int] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                and node.value.func.id == "const" and len(node.value.args) == 1):
            value = _value(node.value.args[0], found)
            if value is not None:
                found[node.targets[0].id] = value
    return found


def package_constants(package_dir: Path) -> dict[str, dict[str, int]]:
    """module name (without the package) -> its public integer constants, for every module of
    the package folder that CPython can parse (one it cannot is left to mpy-cross's errors)."""
    table: dict[str, dict[str, int]] = {}
    for source in sorted(package_dir.glob("*.py")):
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"))
        except SyntaxError:
            continue
        public = {name: value for name, value in module_constants(tree).items() if not name.startswith("_")}
        if public:
            table[source.stem] = public
    return table


@dataclass(frozen=True)
class _Edit:
    line: int  # 1-based
    start: int  # UTF-8 byte offsets in the line, as ast gives them
    end: int
    text: str


def _bindings(tree: ast.Module, table: dict[str, dict[str, int]]) -> tuple[dict[str, str], dict[str, int], list[_Edit]]:
    """(module alias -> module, imported constant name -> value, edits of the imports that took
    constants by name), for the package's modules imported anywhere in `tree`."""
    aliases: dict[str, str] = {}
    imported: dict[str, int] = {}
    edits: list[_Edit] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == PACKAGE:
            for name in node.names:
                if name.name in table:
                    aliases[name.asname or name.name] = name.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith(PACKAGE + "."):
            constants = table.get(node.module[len(PACKAGE) + 1:], {})
            kept = [name for name in node.names if name.name not in constants]
            if len(kept) == len(node.names):
                continue
            for name in node.names:
                if name.name in constants:
                    imported[name.asname or name.name] = constants[name.name]
            if node.lineno != node.end_lineno:
                raise FoldError(node.lineno, "an import of constants by name must be on one line to be folded")
            text = ("from %s import %s" % (node.module, ", ".join(
                n.name if n.asname is None else "%s as %s" % (n.name, n.asname) for n in kept))) if kept else "pass"
            edits.append(_Edit(node.lineno, node.col_offset, node.end_col_offset, text))
    return aliases, imported, edits


def fold(source: str, table: dict[str, dict[str, int]], own: str | None = None) -> str:
    """`source` with the package's constants folded (see the module's doc); `own` is the
    module's name in the package, whose own constants become private. Raises SyntaxError when
    CPython cannot parse it, FoldError when a use cannot be followed."""
    tree = ast.parse(source)
    aliases, imported, edits = _bindings(tree, table)
    private = table.get(own, {}) if own is not None else {}
    attribute_of_alias: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            attribute_of_alias.add(id(node.value))
            constants = table[aliases[node.value.id]]
            if node.attr in constants:
                if not isinstance(node.ctx, ast.Load):
                    raise FoldError(node.lineno, "%s.%s is a constant: it cannot be assigned" % (node.value.id, node.attr))
                edits.append(_Edit(node.lineno, node.col_offset, node.end_col_offset, repr(constants[node.attr])))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in aliases and id(node) not in attribute_of_alias:
                raise FoldError(node.lineno, "the module alias %r is used other than as %s.attribute: its "
                                "constants cannot be folded" % (node.id, node.id))
            if node.id in imported:
                if not isinstance(node.ctx, ast.Load):
                    raise FoldError(node.lineno, "%s is an imported constant: it cannot be assigned" % node.id)
                edits.append(_Edit(node.lineno, node.col_offset, node.end_col_offset, repr(imported[node.id])))
            elif node.id in private:
                edits.append(_Edit(node.lineno, node.col_offset, node.end_col_offset, "_" + node.id))
        elif isinstance(node, ast.arg) and (node.arg in aliases or node.arg in imported):
            raise FoldError(node.lineno, "the argument %r hides a folded import" % node.arg)
    clashes = sorted(name for name in private if "_" + name in module_constants(tree))
    if clashes:
        raise FoldError(1, "%s and _%s are both constants of this module" % (clashes[0], clashes[0]))
    return _apply(source, edits)


def _apply(source: str, edits: list[_Edit]) -> str:
    lines = source.splitlines(keepends=True)
    encoded = [line.encode("utf-8") for line in lines]
    for edit in sorted(edits, key=lambda e: (e.line, e.start), reverse=True):
        line = encoded[edit.line - 1]
        encoded[edit.line - 1] = line[:edit.start] + edit.text.encode("utf-8") + line[edit.end:]
    return b"".join(encoded).decode("utf-8")


def fold_file(source: Path, package_dir: Path) -> str:
    """The text to compile for `source`, with the constants of the package in `package_dir` (a
    module in a folder named like the package is one of that folder's)."""
    if source.parent.name == PACKAGE:
        package_dir = source.parent
    own = source.stem if source.parent == package_dir else None
    return fold(source.read_text(encoding="utf-8"), package_constants(package_dir), own=own)
