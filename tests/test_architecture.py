"""One way to do each thing, checked on the source: who may handle compaction, draw
random jitter, read the time or sleep.

These are the rules of the daemons and their shared core (``clustermesh``,
``kvstoremesh``, ``apiserver``); the tooling on top (``clustermesh_tools``) and the
generated stubs are out of scope.  Each rule names the one module allowed, so a new
hand-written relist loop, backoff or timer shows up here instead of in review:

* only :mod:`clustermesh.etcd.listwatch` catches ``EtcdCompacted`` /
  ``EtcdClusterChanged`` (everyone else follows a prefix through it);
* only :mod:`clustermesh.backoff` imports ``random`` (jitter is the backoff's);
* only :mod:`clustermesh.clock` calls ``time.monotonic``, ``time.time`` or a
  non-zero ``asyncio.sleep`` (every timer takes a ``Clock``, so tests drive it with a
  fake one); ``asyncio.sleep(0)``, a bare yield to the event loop, is not a timer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("clustermesh", "kvstoremesh", "apiserver")
GENERATED = ("clustermesh/etcd/pb", "clustermesh/endpointslice_pb")


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(GENERATED):
                yield rel, ast.parse(path.read_text(), filename=rel)


def _handled(node: ast.AST) -> Iterator[str]:
    """Names of exception classes an ``except`` clause or ``suppress(...)`` handles."""
    if isinstance(node, ast.ExceptHandler) and node.type is not None:
        types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        yield from (ast.unparse(t).rsplit(".", 1)[-1] for t in types)
    elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("suppress")):
        yield from (ast.unparse(a).rsplit(".", 1)[-1] for a in node.args)


def _offenders(rule: object) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if rule(node):  # type: ignore[operator]
                found.setdefault(rel, []).append(node.lineno)  # type: ignore[attr-defined]
    return found


def test_only_list_and_watch_handles_compaction() -> None:
    relist_errors = {"EtcdCompacted", "EtcdClusterChanged"}
    found = _offenders(lambda n: bool(relist_errors & set(_handled(n))))
    assert set(found) <= {"clustermesh/etcd/listwatch.py"}, found


def test_only_backoff_uses_random() -> None:
    def imports_random(node: ast.AST) -> bool:
        if isinstance(node, ast.Import):
            return any(a.name == "random" for a in node.names)
        return isinstance(node, ast.ImportFrom) and node.module == "random"

    found = _offenders(imports_random)
    assert set(found) <= {"clustermesh/backoff.py"}, found


def test_only_clock_reads_time_and_sleeps() -> None:
    def timer(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        name = ast.unparse(node.func)
        if name in ("time.monotonic", "time.time"):
            return True
        if name == "asyncio.sleep":
            return not (node.args and isinstance(node.args[0], ast.Constant)
                        and node.args[0].value == 0)
        return False

    found = _offenders(timer)
    assert set(found) <= {"clustermesh/clock.py"}, found


def test_the_rules_see_what_they_forbid() -> None:
    """The checks would notice: each finds the one module that is allowed."""
    assert set(_offenders(lambda n: "EtcdCompacted" in set(_handled(n)))) == {
        "clustermesh/etcd/listwatch.py"}
    assert "clustermesh/backoff.py" in _offenders(
        lambda n: isinstance(n, ast.Import) and any(a.name == "random" for a in n.names))
