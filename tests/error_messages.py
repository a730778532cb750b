"""Read the literal text of every error a package raises, to check its wording without running it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

#: Words of the CLI that must not appear in messages raised below it: a flag (``--reason``) or a
#: command line (`` `upgrader promote` ``). The product's name alone ("an upgrader checkpoint") is fine.
CLI_WORDS = re.compile(r"(?<![\w{}-])--[a-z]|`upgrader ")


def _strings(node: ast.AST, constants: dict[str, str]) -> list[str]:
    """The literal text inside an expression: string constants, f-strings (``{}`` for each value),
    named str constants."""
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in constants:
        return [constants[node.id]]
    return [s for child in ast.iter_child_nodes(node) for s in _strings(child, constants)]


def error_messages(root: Path, error_names: set[str]) -> list[tuple[str, int, str]]:
    """(file, line, text) of every literal given to the constructor of one of ``error_names`` under ``root``.

    Positional arguments only: keyword arguments (``subject=...``) are not part of the message.
    """
    out: list[tuple[str, int, str]] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        constants = {
            t.id: n.value.value
            for n in tree.body
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in error_names:
                text = "".join(s for arg in node.args for s in _strings(arg, constants))
                out.append((str(path.relative_to(root)), node.lineno, text))
    return out


def offending(messages: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """The messages that speak in CLI words."""
    return [(f, line, text) for f, line, text in messages if CLI_WORDS.search(text)]
