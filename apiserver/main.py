"""``clustermesh-apiserver`` command line (Cilium's subcommand and flag names).

    clustermesh-apiserver clustermesh --cluster-name NAME --cluster-id ID \\
        --kvstore-opt etcd.config=FILE (--source kubernetes [--kubeconfig PATH] |
        --source manifests --manifests-dir DIR) [--clustermesh-enable-mcs-api] ...
    clustermesh-apiserver etcdinit --cluster-name NAME --kvstore-opt etcd.config=FILE
"""

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

from .daemon import ApiServer, ApiserverOptions
from .exports import SERVICE_V2_MODES
from .sources import Source
from .sources.kubernetes import (
    DEFAULT_CLIENT_BURST,
    DEFAULT_CLIENT_QPS,
    KubernetesSource,
    default_label_selectors,
)

log = logging.getLogger("clustermesh-apiserver")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clustermesh-apiserver clustermesh",
        description="Publish this cluster's identities, endpoints, nodes and global services "
                    "into its etcd, as Cilium's clustermesh-apiserver does.")
    p.add_argument("--cluster-name", required=True, help="name of this cluster")
    p.add_argument("--cluster-id", type=int, required=True, help="ID of this cluster")
    p.add_argument("--max-connected-clusters", type=int, default=255, choices=(255, 511))
    p.add_argument("--kvstore-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="etcd.config=FILE (required), etcd.qps=N, etcd.bootstrapQps=N, "
                        "etcd.maxInflight=N; repeatable")
    p.add_argument("--source", choices=("kubernetes", "manifests"), default="kubernetes",
                   help="where the Kubernetes objects come from (default kubernetes)")
    p.add_argument("--k8s-kubeconfig-path", "--kubeconfig", dest="kubeconfig", type=Path,
                   help="with --source kubernetes: kubeconfig file (default: in-cluster)")
    p.add_argument("--k8s-api-server", default="", metavar="URL",
                   help="Kubernetes API server URL (overrides the kubeconfig's server)")
    p.add_argument("--k8s-client-qps", type=float, default=DEFAULT_CLIENT_QPS,
                   help="queries per second towards the Kubernetes API (default 10; "
                        "<= 0: unlimited)")
    p.add_argument("--k8s-client-burst", type=int, default=DEFAULT_CLIENT_BURST,
                   help="burst of queries towards the Kubernetes API (default 20)")
    p.add_argument("--k8s-service-proxy-name", default="",
                   help="export only Services whose service.kubernetes.io/service-proxy-name "
                        "label equals this (default: only Services without the label)")
    p.add_argument("--enable-k8s-endpoint-slice", type=bool_arg, nargs="?", const=True,
                   default=True, metavar="BOOL",
                   help="accepted for compatibility: EndpointSlices (discovery/v1) are "
                        "always used")
    p.add_argument("--manifests-dir", type=Path,
                   help="with --source manifests: directory of YAML manifests, watched live")
    p.add_argument("--manifests-poll-interval", type=duration_arg, default=1.0,
                   metavar="DURATION", help=argparse.SUPPRESS)
    p.add_argument("--clustermesh-enable-mcs-api", action="store_true",
                   help="publish MCS-API ServiceExports")
    p.add_argument("--enable-cilium-endpoint-slice", type=bool_arg, nargs="?", const=True,
                   default=False, metavar="BOOL",
                   help="publish the ipcache from CiliumEndpointSlices instead of "
                        "CiliumEndpoints (default false)")
    p.add_argument("--clustermesh-default-global-namespace", type=bool_arg, nargs="?",
                   const=True, default=True, metavar="BOOL",
                   help="whether namespaces without the clustermesh.cilium.io/global "
                        "annotation are global (default true)")
    p.add_argument("--clustermesh-service-v2", choices=SERVICE_V2_MODES,
                   default="prefer-legacy",
                   help="also publish EndpointSlices (endpointslices/v1); only-endpointslice "
                        "publishes no legacy services/v1 (default prefer-legacy)")
    p.add_argument("--health-port", type=int, default=9880,
                   help="port of /healthz and /readyz (default 9880)")
    p.add_argument("--prometheus-serve-addr", default="",
                   help="HOST:PORT or :PORT to serve /metrics on (default: off)")
    p.add_argument("--heartbeat-interval", type=duration_arg, default=60.0,
                   metavar="DURATION", help=argparse.SUPPRESS)
    p.add_argument("--max-txn-ops", type=int, default=128,
                   help="etcd's --max-txn-ops (default 128)")
    p.add_argument("--max-request-bytes", type=int, default=1536 * 1024,
                   help="etcd's --max-request-bytes (default 1.5 MiB)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", default="text", choices=("text", "json"))
    return p


def options_from_args(args: argparse.Namespace) -> tuple[ApiserverOptions, Source]:
    validate_local_cluster(name=args.cluster_name, cluster_id=args.cluster_id,
                           max_connected_clusters=args.max_connected_clusters)
    opts = parse_kvstore_opts(args.kvstore_opt)
    if not opts.get("etcd.config"):
        raise ValueError("--kvstore-opt etcd.config=FILE is required")
    source: Source
    if args.source == "manifests":
        if args.manifests_dir is None:
            raise ValueError("--source manifests needs --manifests-dir DIR")
        from .sources.manifests import ManifestSource

        source = ManifestSource(args.manifests_dir, interval=args.manifests_poll_interval)
    else:
        source = KubernetesSource(
            kubeconfig=args.kubeconfig, api_server=args.k8s_api_server or None,
            label_selectors=default_label_selectors(args.k8s_service_proxy_name),
            client_qps=args.k8s_client_qps, client_burst=args.k8s_client_burst)
    if not args.enable_k8s_endpoint_slice:
        log.warning("--enable-k8s-endpoint-slice=false has no effect: EndpointSlices "
                    "(discovery.k8s.io/v1) are always used, as in Cilium main")
    options = ApiserverOptions(
        cluster_name=args.cluster_name, cluster_id=args.cluster_id,
        max_connected_clusters=args.max_connected_clusters,
        local_config=Path(opts["etcd.config"]), mcs_api=args.clustermesh_enable_mcs_api,
        cilium_endpoint_slices=args.enable_cilium_endpoint_slice,
        default_global_namespace=args.clustermesh_default_global_namespace,
        service_v2=args.clustermesh_service_v2,
        health_port=args.health_port, prometheus_serve_addr=args.prometheus_serve_addr,
        heartbeat_interval=args.heartbeat_interval, qps=kvstore_number(opts, "etcd.qps"),
        bootstrap_qps=kvstore_number(opts, "etcd.bootstrapQps"),
        max_inflight=int(kvstore_number(opts, "etcd.maxInflight", 4)),
        max_txn_ops=args.max_txn_ops, max_request_bytes=args.max_request_bytes)
    return options, source


async def serve(options: ApiserverOptions, source: Source) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await ApiServer(options, source).run(stop)


def clustermesh_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(level=args.log_level, fmt=args.log_format)
    try:
        options, source = options_from_args(args)
    except ValueError as exc:
        parser.exit(2, f"clustermesh-apiserver: error: {exc}\n")
    try:
        asyncio.run(serve(options, source))
    except EtcdConfigError as exc:
        log.error("%s", exc)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"clustermesh": clustermesh_main}
    if argv[:1] == ["etcdinit"]:
        from .etcdinit import main as etcdinit_main

        return etcdinit_main(argv[1:])
    if not argv or argv[0] not in commands:
        print("usage: clustermesh-apiserver {clustermesh,etcdinit} [flags]\n\n"
              "  clustermesh  publish this cluster's state into its etcd\n"
              "  etcdinit     create the etcd users and roles, then enable auth",
              file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
