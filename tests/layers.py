"""The import contracts of the layout, read from the source (every import, lazy ones included).

``violations(sources)`` takes ``{module name: source text}`` and returns one line per broken rule, so
the contract test runs it on the real tree and on a tree with a deliberate mistake alike.

The rules (docs/design.md, "Layout"):
- layers point one way: each package imports only the first-party packages listed in ``ALLOWED``;
- ``registry``, ``core``, ``compat``, ``data``, ``runtime``, ``services`` and ``serving`` never reach
  torch, directly or through any first-party module they import, at module level or inside a function;
- ``compat`` reaches no registry, SQLAlchemy, ONNX Runtime or FAISS the same way;
- nothing outside ``registry`` imports its schema or session (``registry.schema``, ``registry.db``);
- ``cli`` and ``tui`` import no SQLAlchemy and no torch themselves, and reach training only through
  ``upgrader.training.pipeline``, imported inside the function of the action that trains.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FIRST_PARTY = ("upgrader", "registry", "tui")

#: package -> the first-party packages it may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "registry": set(),
    "upgrader.core": set(),
    "upgrader.compat": {"upgrader.core"},
    "upgrader.data": {"upgrader.core"},
    "upgrader.runtime": {"upgrader.core"},
    "upgrader.services": {"upgrader.core", "upgrader.compat", "upgrader.data", "upgrader.runtime", "registry"},
    "upgrader.serving": {"upgrader.core", "upgrader.compat", "upgrader.data", "upgrader.runtime",
                         "upgrader.services", "registry"},
    "upgrader.training": {"upgrader.core", "upgrader.compat", "upgrader.data", "upgrader.runtime",
                          "upgrader.services", "registry"},
    "upgrader.study": {"upgrader.core", "upgrader.compat", "upgrader.data", "upgrader.runtime",
                       "upgrader.services", "upgrader.serving", "upgrader.training", "registry"},
    "upgrader.cli": {"upgrader", "registry", "tui"},
    "upgrader": {"upgrader.cli"},  # upgrader/server.py: the `python -m upgrader.server` entry
    "tui": {"upgrader.core", "upgrader.compat", "upgrader.services", "upgrader.training", "registry"},
}
TORCH_FREE = ("registry", "upgrader.core", "upgrader.compat", "upgrader.data", "upgrader.runtime",
              "upgrader.services", "upgrader.serving")
COMPAT_FORBIDDEN = ("registry", "sqlalchemy", "onnxruntime", "faiss")
PIPELINE = "upgrader.training.pipeline"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports, fully qualified
    lazy: bool  # inside a function (runs only when that function does)
    line: int


def package_of(module: str) -> str:
    """The layer a first-party module belongs to (``upgrader.compat.gate`` -> ``upgrader.compat``)."""
    parts = module.split(".")
    if parts[0] == "upgrader" and len(parts) > 1 and parts[1] not in ("server", "__main__"):
        return ".".join(parts[:2])
    return parts[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, source: str) -> Iterator[Import]:
    tree = ast.parse(source)
    is_package = module.endswith(".__init__")
    base = module.removesuffix(".__init__")

    def visit(node: ast.AST, lazy: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:  # the `if TYPE_CHECKING:` body never runs
                    yield from visit(other, lazy)
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(base, alias.name, lazy, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - child.level + (1 if is_package else 0)]
                    target = ".".join(anchor + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:  # `from pkg import mod` may name a submodule
                    yield Import(base, f"{target}.{alias.name}" if alias.name != "*" else target, lazy, child.lineno)
            yield from visit(child, inner)

    yield from visit(tree, False)


def read_tree(root: Path) -> dict[str, str]:
    """``{module name: source}`` of every first-party module under ``root``."""
    out: dict[str, str] = {}
    for top in FIRST_PARTY:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            out[".".join(rel.parts)] = path.read_text()
    return out


def violations(sources: dict[str, str]) -> list[str]:
    """Every broken import rule in ``sources`` (empty when the tree keeps the contracts)."""
    modules = {m.removesuffix(".__init__") for m in sources}
    imports = [imp for m, src in sources.items() for imp in _imports(m, src)]

    def resolve(target: str) -> str | None:
        """The first-party module a target names (``from a.b import c`` may name a.b.c or a.b's c)."""
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges: dict[str, list[Import]] = {m: [] for m in modules}
    for imp in imports:
        edges[imp.module].append(imp)

    def reach(start: str, *, lazy_too: bool) -> dict[str, list[str]]:
        """Everything ``start`` imports transitively -> one import chain that gets there."""
        seen: dict[str, list[str]] = {start: [start]}
        stack = [start]
        while stack:
            cur = stack.pop()
            for imp in edges.get(cur, []):
                if imp.lazy and not lazy_too:
                    continue
                mod = resolve(imp.target)
                name = mod or imp.target.split(".")[0]
                if name not in seen:
                    seen[name] = seen[cur] + [name]
                    if mod is not None:
                        stack.append(mod)
        return seen

    bad: list[str] = []
    for imp in imports:
        src_pkg, mod = package_of(imp.module), resolve(imp.target)
        where = f"{imp.module}:{imp.line} imports {imp.target}"
        if mod is not None:
            dst_pkg = package_of(mod)
            allowed = ALLOWED.get(src_pkg, set()) | {src_pkg}
            if dst_pkg != src_pkg and not any(dst_pkg == a or dst_pkg.startswith(a + ".") for a in allowed):
                bad.append(f"{where}: {src_pkg} may not import {dst_pkg}")
            if mod.split(".")[0] == "registry" and mod in ("registry.schema", "registry.db") and src_pkg != "registry":
                bad.append(f"{where}: only registry/ uses its schema and session")
        top = imp.target.split(".")[0]
        if src_pkg in ("upgrader.cli", "tui"):
            if top in ("sqlalchemy", "torch"):
                bad.append(f"{where}: the UIs import no {top}")
            if mod is not None and package_of(mod) == "upgrader.training" and (mod != PIPELINE or not imp.lazy):
                bad.append(f"{where}: the UIs reach training only through {PIPELINE}, imported inside the action")
    for module in sorted(modules):
        pkg = package_of(module)
        if pkg in TORCH_FREE:
            chain = reach(module, lazy_too=True).get("torch")
            if chain:
                bad.append(f"{module} reaches torch: {' -> '.join(chain)}")
        if pkg == "upgrader.compat":
            reached = reach(module, lazy_too=True)
            for name in COMPAT_FORBIDDEN:
                hit = next((c for m, c in reached.items() if m == name or m.startswith(name + ".")), None)
                if hit:
                    bad.append(f"{module} reaches {name}: {' -> '.join(hit)}")
        if pkg in ("upgrader.cli", "tui"):
            chain = reach(module, lazy_too=False).get("torch")
            if chain:
                bad.append(f"{module} imports torch at start-up: {' -> '.join(chain)}")
    return bad
