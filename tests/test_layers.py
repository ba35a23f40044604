"""The three layers, and no import cycles inside them, checked on the source.

* ``lint-imports`` keeps the contracts of ``pyproject.toml`` (``[tool.importlinter]``):
  :mod:`clustermesh_tools` above the daemons :mod:`kvstoremesh` and :mod:`apiserver`,
  which never import each other, above the shared core :mod:`clustermesh`.
* The modules of the four packages import each other without a cycle at run time.
  import-linter cannot say that (its ``acyclic_siblings`` contract looks at sibling
  packages with their subpackages squashed, and leaves out ``TYPE_CHECKING`` imports
  only for every contract at once, the layers included), so :func:`import_graph` reads
  every module with :mod:`ast`. An import under ``if TYPE_CHECKING:`` is type-only: it
  never runs, so it is counted apart and a cycle through one is allowed. Every other
  import runs, the ones inside functions included. An edge goes to the module imported
  (``from a import b`` to ``a.b`` when that is a module, else to ``a``), as grimp's.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("clustermesh", "kvstoremesh", "apiserver", "clustermesh_tools")


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    type_only: bool


def _modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Module name -> file, for every module of ``packages`` (directories under ``root``)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _known(name: str, modules: Mapping[str, Path]) -> str | None:
    """``name``, or its longest prefix that is one of ``modules``."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, importer: str,
             modules: Mapping[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [t for a in node.names if (t := _known(a.name, modules))]
    base = node.module or ""
    if node.level:
        package = importer if modules[importer].name == "__init__.py" else (
            importer.rpartition(".")[0])
        parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{parent}.{base}" if base else parent
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        target = submodule if submodule in modules else _known(base, modules)
        if target:
            targets.append(target)
    return targets


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> list[Import]:
    """Every import from one module of ``packages`` to another (or to itself: none)."""
    modules = _modules(root, packages)
    found: list[Import] = []

    def visit(node: ast.AST, importer: str, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_one(stmt, importer, True)
                for stmt in child.orelse:
                    visit_one(stmt, importer, type_only)
            else:
                visit_one(child, importer, type_only)

    def visit_one(node: ast.AST, importer: str, type_only: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.extend(Import(importer, target, node.lineno, type_only)
                         for target in dict.fromkeys(_targets(node, importer, modules))
                         if target != importer)
        else:
            visit(node, importer, type_only)

    for name, path in modules.items():
        visit(ast.parse(path.read_text(), filename=str(path)), name, False)
    return found


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """The modules of each import cycle (strongly connected components; Tarjan's)."""
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.importer, set()).add(imp.imported)
        edges.setdefault(imp.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(edges[module]):
            if imported not in index:
                connect(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            connect(module)
    return sorted(found)


def _describe(cycle: list[str], imports: Iterable[Import]) -> str:
    members = set(cycle)
    lines = [f"  {i.importer} -> {i.imported} (line {i.line})" for i in imports
             if i.importer in members and i.imported in members]
    return "cycle " + ", ".join(cycle) + ":\n" + "\n".join(lines)


def test_lint_imports_keeps_the_contracts() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_at_run_time(package: str) -> None:
    run_time = [i for i in import_graph() if not i.type_only]
    found = [c for c in cycles(run_time) if any(m.split(".")[0] == package for m in c)]
    assert not found, "\n".join(_describe(c, run_time) for c in found)


def test_the_graph_tells_run_time_from_type_only_imports(tmp_path: Path) -> None:
    """The checker itself, on a package with one cycle of each kind."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .c import C\n")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from . import a\nimport os\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..sub import d\n"
        "else:\n    from pkg.a import f\nC = 1\n")
    (pkg / "sub" / "d.py").write_text("from pkg.sub.c import C\nfrom pkg.sub import C as D\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert {(i.importer, i.imported, i.type_only) for i in graph} == {
        ("pkg.sub", "pkg.sub.c", False), ("pkg.a", "pkg.b", False), ("pkg.b", "pkg.a", False),
        ("pkg.sub.c", "pkg.sub.d", True), ("pkg.sub.c", "pkg.a", False),
        ("pkg.sub.d", "pkg.sub.c", False), ("pkg.sub.d", "pkg.sub", False)}
    assert cycles(i for i in graph if not i.type_only) == [["pkg.a", "pkg.b"]]
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.sub", "pkg.sub.c", "pkg.sub.d"]]
