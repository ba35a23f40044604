"""Command line of the cache daemon: ``kvstoremesh`` and ``clustermesh-apiserver kvstoremesh``.

Both names run the same daemon with upstream's flags (facts §6, and what Cilium's chart
renders), parsed by :mod:`clustermesh.goflags` with Cilium's conventions: pflag syntax,
``CILIUM_<FLAG>`` environment variables, cobra's errors. :func:`build_parser` is the one
place the flags are declared; their defaults are :class:`~kvstoremesh.options.MeshOptions`'
fields. Flags of upstream's Go runtime (gops, pprof, the hive shell, ...) are accepted
and named in one log line at start, with the reason they have no effect here.

``kvstoremesh status`` (our own console script only) is :mod:`kvstoremesh.statuscmd`,
``kvstoremesh uninstall`` (the chart's post-delete hook) :mod:`kvstoremesh.uninstall`;
upstream's spelling is ``clustermesh-apiserver kvstoremesh-dbg status``
(:mod:`kvstoremesh.dbg`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clustermesh.clusterconfig import validate_local_cluster
from clustermesh.etcd.config import EtcdConfigError
from clustermesh.flags import add_daemon_flags, daemon_settings, option_default
from clustermesh.goflags import FlagSet, Parsed, log_no_effect
from clustermesh.logs import setup_logging

from . import statuscmd, uninstall
from .mesh import KVStoreMesh
from .options import MeshOptions

log = logging.getLogger("kvstoremesh")

GOPS_PORT = 9894  # upstream's defaults.GopsPortKVStoreMesh
PPROF_PORT = 6064


def build_parser(*, command: str = "kvstoremesh") -> FlagSet:
    """Every flag of the daemon (upstream's, then ours), defaults from MeshOptions."""
    def d(name: str) -> Any:
        return option_default(MeshOptions, name)

    long = ("Mirror every remote cluster's etcd into the local etcd (Cilium KVStoreMesh, "
            "wire-compatible).\nEvery flag is also read from CILIUM_<FLAG_NAME> (e.g. "
            "CILIUM_CLUSTER_NAME); a flag on the command line wins.")
    if command == "kvstoremesh":
        long += ("\nRun 'kvstoremesh status --help' for the status command; "
                 "'kvstoremesh uninstall' (same flags) removes the cache.")
    fs = FlagSet(command=command, short="Run KVStoreMesh", long=long)
    add_daemon_flags(fs, options_cls=MeshOptions, gops_port=GOPS_PORT, pprof_port=PPROF_PORT)
    fs.string("clustermesh-config", default="",
              help="Path to the ClusterMesh configuration directory (one etcd config file "
                   "per remote cluster, named after the cluster; required)")
    fs.duration("clustermesh-cache-ttl", default=d("cache_ttl"),
                help="Drain the cached data of a remote disconnected for longer than this "
                     "(0s: never)")
    fs.duration("per-cluster-ready-timeout", default=d("per_cluster_ready_timeout"),
                help="Remote clusters not connected within this are dropped from the "
                     "readiness wait")
    fs.duration("global-ready-timeout", default=d("global_ready_timeout"),
                help="Report ready after this, even if not every remote is synced")
    fs.boolean("enable-heartbeat", default=d("enable_heartbeat"),
               help="Write the cilium/.heartbeat key into the local etcd every minute")
    fs.boolean("disable-drain-on-disconnection", hidden=True,
               default=d("disable_drain_on_disconnection"),
               help="Keep the cached data of a remote cluster whose config is removed")
    fs.string("api-serve-addr", default=d("api_serve_addr"),
              help="Address of the status API (GET /v1/cluster)")
    fs.duration("kvstore-connectivity-timeout", default=120.0,
                no_effect="the etcd client reconnects on its own timers",
                help="Time after which an incomplete kvstore operation is considered failed")
    fs.duration("kvstore-periodic-sync", default=300.0,
                no_effect="cache keys carry no lease; nothing needs refreshing",
                help="Periodic kvstore synchronization interval")
    # Ours.
    fs.duration("leader-election-lease-ttl", default=d("leader_election_lease_ttl"),
                help="TTL of the leader election lease: how long a crashed leader keeps "
                     "the lock (a graceful stop releases it at once); lower is a faster "
                     "takeover but a leader cut off from etcd for that long steps down")
    fs.string("leader-election-identity", default=d("leader_election_identity"),
              help="Name of this replica in the leader lock's status, unique among "
                   "replicas (default: the host name, i.e. the pod name)")
    fs.duration("cluster-removal-grace", default=d("removal_grace"),
                help="Wait between deleting a removed cluster's config and its cached data")
    fs.duration("heartbeat-timeout", default=d("heartbeat_timeout"),
                help="Reconnect a remote whose heartbeat is older than this")
    fs.duration("status-check-interval", default=d("status_check_interval"),
                help="How often a remote's etcd status and cluster ID are checked")
    fs.boolean("validate-remote-data", default=d("validate_remote_data"),
               help="Keep remote entries that agents would reject out of the cache "
                    "(--validate-remote-data=false mirrors bytes unchecked, like upstream)")
    return fs


def options_from_args(args: Parsed) -> MeshOptions:
    """Validate the arguments as a whole; ValueError names what is wrong."""
    validate_local_cluster(name=args.cluster_name, cluster_id=args.cluster_id,
                           max_connected_clusters=args.max_connected_clusters)
    if args.leader_election_lease_ttl < 1 or args.leader_election_lease_ttl % 1:
        raise ValueError(f"--leader-election-lease-ttl must be a whole number of seconds, at "
                         f"least 1s (etcd leases count in seconds; etcd itself may raise it "
                         f"to its minimum), not {args.leader_election_lease_ttl:g}s")
    if not args.clustermesh_config:
        raise ValueError("--clustermesh-config DIR is required (the directory of remote "
                         "cluster configs)")
    common = daemon_settings(args, options_cls=MeshOptions)
    return MeshOptions(
        cluster_name=args.cluster_name,
        cluster_id=args.cluster_id,
        max_connected_clusters=args.max_connected_clusters,
        config_dir=Path(args.clustermesh_config),
        local_config=common.local_config,
        health_port=args.health_port,
        prometheus_serve_addr=args.prometheus_serve_addr,
        api_serve_addr=args.api_serve_addr,
        per_cluster_ready_timeout=args.per_cluster_ready_timeout,
        global_ready_timeout=args.global_ready_timeout,
        cache_ttl=args.clustermesh_cache_ttl,
        removal_grace=args.cluster_removal_grace,
        heartbeat_timeout=args.heartbeat_timeout,
        status_check_interval=args.status_check_interval,
        qps=common.qps,
        bootstrap_qps=common.bootstrap_qps,
        max_inflight=common.max_inflight,
        max_txn_ops=args.max_txn_ops,
        max_request_bytes=args.max_request_bytes,
        validate_remote_data=args.validate_remote_data,
        enable_heartbeat=args.enable_heartbeat,
        disable_drain_on_disconnection=args.disable_drain_on_disconnection,
        max_consecutive_quorum_errors=args.kvstore_max_consecutive_quorum_errors,
        controller_group_metrics=common.controller_group_metrics,
        leader_election_lease_ttl=args.leader_election_lease_ttl,
        leader_election_identity=args.leader_election_identity,
        debug=args.debug,
    )


async def serve(options: MeshOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await KVStoreMesh(options).run(stop)


def _daemon(options: MeshOptions) -> int:
    asyncio.run(serve(options))
    return 0


def run(argv: Sequence[str], *, command: str, env: Mapping[str, str] | None = None,
        action: Callable[[MeshOptions], int] = _daemon) -> int:
    """Parse, validate, run ``action`` (the daemon: until SIGTERM/SIGINT); the exit
    status."""
    fs = build_parser(command=command)
    args = fs.parse_or_exit(argv, env=env)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    setup_logging(level="debug" if args.debug else args.log_level, fmt=args.log_format)
    log_no_effect(fs, args, log)
    try:
        return action(options)
    except EtcdConfigError as exc:
        log.error("%s", exc)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        return statuscmd.main(argv[1:])
    if argv[:1] == ["uninstall"]:
        # The daemon's flags: the chart's hook passes the same as its replicas'.
        return run(argv[1:], command="kvstoremesh uninstall", action=uninstall.run)
    return run(argv, command="kvstoremesh")


if __name__ == "__main__":
    sys.exit(main())
