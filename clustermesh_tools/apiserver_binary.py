"""``clustermesh-apiserver``: upstream's one binary, the root of its command tree.

    clustermesh-apiserver clustermesh [flags]        the apiserver daemon (apiserver.main)
    clustermesh-apiserver kvstoremesh [flags]        the KVStoreMesh daemon (kvstoremesh.main)
    clustermesh-apiserver etcdinit [flags]           etcd users, roles, auth (apiserver.etcdinit)
    clustermesh-apiserver kvstoremesh-dbg status|troubleshoot          (kvstoremesh.dbg)
    clustermesh-apiserver clustermesh-dbg troubleshoot                 (apiserver.dbg)
    clustermesh-apiserver version

Cilium's Helm chart execs exactly these (``/usr/bin/clustermesh-apiserver <command>``),
and cilium-cli's sysdump runs the debug ones, so the tree, the command names and
cobra's error text (``Error: unknown command "x" for "clustermesh-apiserver"``) are
upstream's; :func:`clustermesh.goflags.run_group` dispatches. The binary runs both
daemons, which never import each other, so it belongs to the tooling layer; each
subcommand is imported only when it runs. ``python -m clustermesh_tools.apiserver_binary``
is the same command.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Sequence
from importlib import metadata

from clustermesh.goflags import Command, FlagSet, run_group

__all__ = ["COMMANDS", "ROOT", "main", "version_line"]

ROOT = "clustermesh-apiserver"


def version_line() -> str:
    """Upstream prints ``<version> <commit> <go version> <os>/<arch>``; ours names itself."""
    try:
        version = metadata.version("clustermesh")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return (f"{version} clustermesh (Python implementation of Cilium's clustermesh-apiserver) "
            f"python {platform.python_version()} {sys.platform}/{platform.machine()}")


def _version_main(argv: Sequence[str]) -> int:
    FlagSet(command=f"{ROOT} version", short="Print version information").parse_or_exit(argv)
    print(version_line())
    return 0


def _clustermesh_main(argv: Sequence[str]) -> int:
    from apiserver.main import run

    return run(argv, command=f"{ROOT} clustermesh")


def _kvstoremesh_main(argv: Sequence[str]) -> int:
    from kvstoremesh.main import run

    return run(argv, command=f"{ROOT} kvstoremesh")


def _etcdinit_main(argv: Sequence[str]) -> int:
    from apiserver.etcdinit import main as etcdinit_main

    return etcdinit_main(list(argv))


def _kvstoremesh_dbg_main(argv: Sequence[str]) -> int:
    from kvstoremesh.dbg import kvstoremesh_dbg

    return kvstoremesh_dbg(argv, path=f"{ROOT} kvstoremesh-dbg")


def _clustermesh_dbg_main(argv: Sequence[str]) -> int:
    from apiserver.dbg import clustermesh_dbg

    return clustermesh_dbg(argv, path=f"{ROOT} clustermesh-dbg")


COMMANDS = (
    Command(name="clustermesh", short="Run the ClusterMesh apiserver", run=_clustermesh_main),
    Command(name="clustermesh-dbg", short="Troubleshoot the ClusterMesh apiserver",
            run=_clustermesh_dbg_main),
    Command(name="etcdinit", short="Initialise the etcd data directory (users, roles, auth)",
            run=_etcdinit_main),
    Command(name="kvstoremesh", short="Run KVStoreMesh", run=_kvstoremesh_main),
    Command(name="kvstoremesh-dbg", short="Inspect and troubleshoot KVStoreMesh",
            run=_kvstoremesh_dbg_main),
    Command(name="version", short="Print version information", run=_version_main),
)


def main(argv: list[str] | None = None) -> int:
    """The ``clustermesh-apiserver`` console script; the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_group(argv, path=ROOT, short="Run the ClusterMesh apiserver components",
                         commands=COMMANDS)
    except SystemExit as exc:  # parse_or_exit of a subcommand
        return exc.code if isinstance(exc.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
