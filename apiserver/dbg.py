"""``clustermesh-apiserver clustermesh-dbg``: upstream's debug command of the apiserver.

cilium-cli's sysdump runs it in the ``apiserver`` container and stores what it prints:

* ``clustermesh-dbg troubleshoot [--etcd-config FILE] [--timeout 5s]`` prints the
  EtcdDbg report (:mod:`clustermesh.etcdcheck`) of the local etcd, the one the apiserver
  writes to; the exit status is 0 however the checks went, as upstream.

KVStoreMesh's counterpart, ``kvstoremesh-dbg``, is :mod:`kvstoremesh.dbg`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from clustermesh.etcdcheck import add_report_flags, etcd_report, print_lines
from clustermesh.goflags import Command, FlagSet, run_group


def _troubleshoot(argv: Sequence[str], *, path: str) -> int:
    fs = FlagSet(command=f"{path} troubleshoot", bind_env=False,
                 short="Troubleshoot the connectivity to the local etcd")
    add_report_flags(fs)
    args = fs.parse_or_exit(argv)
    print_lines(["Local etcd kvstore:",
                 *asyncio.run(etcd_report(Path(args.etcd_config), timeout=args.timeout))])
    return 0


def clustermesh_dbg(argv: Sequence[str], *, path: str) -> int:
    """Run ``clustermesh-dbg ARGV``; ``path`` is the command's name in help and errors."""
    return run_group(argv, path=path, short="Troubleshoot the ClusterMesh apiserver", commands=(
        Command(name="troubleshoot", short="Troubleshoot the connectivity to the local etcd",
                run=lambda a: _troubleshoot(a, path=path)),
    ))
