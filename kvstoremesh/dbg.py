"""``clustermesh-apiserver kvstoremesh-dbg``: upstream's debug command of KVStoreMesh.

cilium-cli's sysdump runs it in the ``kvstoremesh`` container and stores what it prints,
and runbooks grep that text, so the commands, flags and line shapes are upstream's:

* ``status [--verbose] [-o json|yaml|jsonpath=T] [-H HOST:PORT]`` asks KVStoreMesh's API
  (:mod:`kvstoremesh.statuscmd` fetches and renders it): exit 0 once the API answered,
  whatever the clusters' state, 1 when it did not;
* ``troubleshoot [clusters...] [--include-local] [--etcd-config FILE]
  [--clustermesh-config DIR] [--timeout 5s]`` prints the EtcdDbg report
  (:mod:`clustermesh.etcdcheck`) of every remote cluster config (and, with
  ``--include-local``, of the local etcd): exit 0 however the checks went, 1 only when
  the config directory is missing, as upstream.

``-H/--host`` is a persistent flag upstream: it may come before the subcommand word too.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.error
from collections.abc import Sequence
from pathlib import Path

from clustermesh.clusterconfig import validate_cluster_name
from clustermesh.etcd.config import is_cluster_config_file
from clustermesh.etcdcheck import INFO, add_report_flags, etcd_report, print_lines
from clustermesh.flags import option_default
from clustermesh.goflags import Command, FlagSet, run_group

from .options import MeshOptions
from .statuscmd import check_output, fetch, render

DEFAULT_CLUSTERMESH_CONFIG = "/var/lib/cilium/clustermesh/"
# Upstream's -H default is the daemon's own --api-serve-addr default.
DEFAULT_HOST = option_default(MeshOptions, "api_serve_addr")


def _status(argv: Sequence[str], *, path: str) -> int:
    fs = FlagSet(command=f"{path} status", short="Display the status of KVStoreMesh",
                 bind_env=False)
    fs.string("host", shorthand="H", default=DEFAULT_HOST, help="URI of the KVStoreMesh API")
    fs.boolean("verbose", help="Print the details of every cluster, not only the not-ready ones")
    fs.string("output", shorthand="o", default="",
              help="json| yaml| jsonpath='{}'")
    args = fs.parse_or_exit(argv)
    try:
        check_output(args.output)
    except ValueError as exc:
        fs.fail(f'invalid argument "{args.output}" for "-o, --output" flag: {exc}')
    host = args.host.removeprefix("http://").rstrip("/")
    try:
        models, leadership = fetch(host)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        hint = (f" (is KVStoreMesh running and serving the API on {host}?)"
                if isinstance(reason, ConnectionRefusedError) else "")
        print(f"Failed to retrieve status information: {reason}{hint}", file=sys.stderr)
        return 1
    sys.stdout.write(render(models, output=args.output, verbose=args.verbose,
                            leadership=leadership))
    return 0


def _troubleshoot(argv: Sequence[str], *, path: str) -> int:
    fs = FlagSet(command=f"{path} troubleshoot", args_usage="[clusters...]", bind_env=False,
                 short="Troubleshoot the connectivity to the remote clusters")
    fs.string("host", shorthand="H", default=DEFAULT_HOST, help="URI of the KVStoreMesh API")
    fs.boolean("include-local", help="Also troubleshoot the connectivity to the local etcd")
    fs.string("clustermesh-config", default=DEFAULT_CLUSTERMESH_CONFIG,
              help="Path to the ClusterMesh configuration directory")
    add_report_flags(fs)
    args = fs.parse_or_exit(argv)
    if args.include_local:
        print_lines(["Local etcd kvstore:",
                     *asyncio.run(etcd_report(Path(args.etcd_config), timeout=args.timeout)),
                     ""])
    directory = Path(args.clustermesh_config)
    try:
        found = sorted(p.name for p in directory.iterdir()
                       if not p.name.startswith("..") and is_cluster_config_file(p))
    except OSError as exc:
        print(f"Error: cannot read the ClusterMesh configuration directory {directory}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    lines = [f"Found {len(found)} cluster configurations"]
    selected = list(dict.fromkeys(args.positionals)) or found
    if args.positionals:
        lines.append(f"Troubleshooting filtered subset of clusters: {', '.join(selected)}")
    print_lines(lines)
    # Upstream reads the unprefixed CLUSTER_NAME the chart sets, only for this hint.
    local = os.environ.get("CLUSTER_NAME", "")
    for name in selected:
        lines = ["", f'Cluster "{name}":']
        if name == local:
            lines.append(f"{INFO}  This is the local cluster (CLUSTER_NAME)")
        try:
            validate_cluster_name(name)
        except ValueError as exc:
            lines.append(f"❌ Invalid cluster name: {exc}")
        if name not in found:
            lines.append("❌ Configuration not found")
        else:
            lines += asyncio.run(etcd_report(directory / name, timeout=args.timeout))
        print_lines(lines)
    return 0


def _host_after_command(argv: Sequence[str]) -> list[str]:
    """``-H/--host`` is a persistent flag upstream (``kvstoremesh-dbg -H x status``): move
    leading occurrences behind the subcommand word, where its FlagSet parses them."""
    args, moved = list(argv), []
    while args and (args[0] in ("-H", "--host") or args[0].startswith(("-H", "--host="))):
        takes_next = args[0] in ("-H", "--host")
        moved += args[:2] if takes_next else args[:1]
        args = args[2:] if takes_next else args[1:]
    return args[:1] + moved + args[1:]


def kvstoremesh_dbg(argv: Sequence[str], *, path: str) -> int:
    """Run ``kvstoremesh-dbg ARGV``; ``path`` is the command's name in help and errors."""
    argv = _host_after_command(argv)
    return run_group(argv, path=path, short="Inspect and troubleshoot KVStoreMesh", commands=(
        Command(name="status", short="Display the status of KVStoreMesh",
                run=lambda a: _status(a, path=path)),
        Command(name="troubleshoot", short="Troubleshoot the connectivity to remote clusters",
                run=lambda a: _troubleshoot(a, path=path)),
    ))
