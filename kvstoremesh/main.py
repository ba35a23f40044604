"""``kvstoremesh``: command line of the cache daemon (Cilium's flag names)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from clustermesh.clusterconfig import validate_local_cluster
from clustermesh.etcd.config import EtcdConfigError, parse_kvstore_opts
from clustermesh.flags import bool_arg, duration_arg, kvstore_number
from clustermesh.logs import setup_logging

from . import statuscmd
from .mesh import KVStoreMesh
from .options import MeshOptions

log = logging.getLogger("kvstoremesh")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvstoremesh",
        description="Mirror every remote cluster's etcd into the local etcd "
                    "(Cilium KVStoreMesh, wire-compatible).",
        epilog="Run 'kvstoremesh status --help' for the status command.",
    )
    p.add_argument("--cluster-name", required=True, help="name of the local cluster")
    p.add_argument("--cluster-id", type=int, required=True, help="ID of the local cluster")
    p.add_argument("--max-connected-clusters", type=int, default=255, choices=(255, 511),
                   help="maximum number of clusters in the mesh (default 255)")
    p.add_argument("--clustermesh-config", type=Path, required=True, metavar="DIR",
                   help="directory with one etcd config file per remote cluster, "
                        "named after the cluster")
    p.add_argument("--kvstore", default="etcd", choices=("etcd",), help=argparse.SUPPRESS)
    p.add_argument("--kvstore-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="local etcd options: etcd.config=FILE (required), etcd.qps=N, "
                        "etcd.bootstrapQps=N, etcd.maxInflight=N; repeatable")
    p.add_argument("--health-port", type=int, default=9881,
                   help="port of /healthz and /readyz (default 9881)")
    p.add_argument("--prometheus-serve-addr", default="",
                   help="HOST:PORT or :PORT to serve /metrics on (default: off)")
    p.add_argument("--api-serve-addr", default="localhost:9889",
                   help="HOST:PORT of the status API (default localhost:9889)")
    p.add_argument("--per-cluster-ready-timeout", type=duration_arg, default=15.0,
                   metavar="DURATION",
                   help="drop a remote that has not connected within this from the "
                        "readiness wait (default 15s)")
    p.add_argument("--global-ready-timeout", type=duration_arg, default=600.0,
                   metavar="DURATION", help="report ready after this regardless (default 10m)")
    p.add_argument("--clustermesh-cache-ttl", type=duration_arg, default=0.0,
                   metavar="DURATION",
                   help="drain a disconnected remote's services after this (default 0s: never)")
    p.add_argument("--cluster-removal-grace", type=duration_arg, default=180.0,
                   metavar="DURATION",
                   help="wait between deleting a removed cluster's config and its data "
                        "(default 3m)")
    p.add_argument("--heartbeat-timeout", type=duration_arg, default=120.0,
                   metavar="DURATION",
                   help="reconnect a remote whose heartbeat is older than this (default 2m)")
    p.add_argument("--status-check-interval", type=duration_arg, default=30.0,
                   metavar="DURATION",
                   help="how often a remote's etcd status and cluster ID are checked "
                        "(default 30s)")
    p.add_argument("--max-txn-ops", type=int, default=128,
                   help="local etcd's --max-txn-ops (default 128)")
    p.add_argument("--max-request-bytes", type=int, default=1536 * 1024,
                   help="local etcd's --max-request-bytes (default 1.5 MiB)")
    p.add_argument("--validate-remote-data", type=bool_arg, nargs="?", const=True,
                   default=True, metavar="true|false",
                   help="keep remote entries that agents would reject out of the cache "
                        "(default true; false mirrors bytes unchecked, like upstream)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", default="text", choices=("text", "json"))
    return p




def options_from_args(args: argparse.Namespace) -> MeshOptions:
    """Validate the arguments as a whole; ValueError explains what is wrong."""
    validate_local_cluster(name=args.cluster_name, cluster_id=args.cluster_id,
                           max_connected_clusters=args.max_connected_clusters)
    opts = parse_kvstore_opts(args.kvstore_opt)
    config = opts.get("etcd.config")
    if not config:
        raise ValueError("--kvstore-opt etcd.config=FILE is required (the local etcd's config)")
    return MeshOptions(
        cluster_name=args.cluster_name,
        cluster_id=args.cluster_id,
        max_connected_clusters=args.max_connected_clusters,
        config_dir=args.clustermesh_config,
        local_config=Path(config),
        health_port=args.health_port,
        prometheus_serve_addr=args.prometheus_serve_addr,
        api_serve_addr=args.api_serve_addr,
        per_cluster_ready_timeout=args.per_cluster_ready_timeout,
        global_ready_timeout=args.global_ready_timeout,
        cache_ttl=args.clustermesh_cache_ttl,
        removal_grace=args.cluster_removal_grace,
        heartbeat_timeout=args.heartbeat_timeout,
        status_check_interval=args.status_check_interval,
        qps=kvstore_number(opts, "etcd.qps"),
        bootstrap_qps=kvstore_number(opts, "etcd.bootstrapQps"),
        max_inflight=int(kvstore_number(opts, "etcd.maxInflight", 4)),
        max_txn_ops=args.max_txn_ops,
        max_request_bytes=args.max_request_bytes,
        validate_remote_data=args.validate_remote_data,
    )




async def serve(options: MeshOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await KVStoreMesh(options).run(stop)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        return statuscmd.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.exit(2, f"kvstoremesh: error: {exc}\n")
    try:
        asyncio.run(serve(options))
    except EtcdConfigError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
