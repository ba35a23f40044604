"""``clustermesh-apiserver clustermesh``: the apiserver daemon's command line.

Upstream has no binary of the apiserver alone: Cilium's Helm chart execs
``/usr/bin/clustermesh-apiserver clustermesh [flags]``, one subcommand of the binary
whose command tree (``kvstoremesh``, ``etcdinit``, the ``*-dbg`` commands, ``version``)
is :mod:`clustermesh_tools.apiserver_binary`, in the tooling layer because it runs both
daemons. This module is the daemon's part: :func:`build_parser` is the one place the
``clustermesh`` flags are declared (facts §10, the chart's args, and ours: ``--source``,
``--manifests-dir``, ``--clustermesh-service-v2``, ...), parsed by
:mod:`clustermesh.goflags` with Cilium's conventions (pflag syntax, ``CILIUM_<FLAG>``
environment variables, cobra's errors); defaults come from
:class:`~apiserver.daemon.ApiserverOptions` and the Kubernetes source. :func:`run`
parses, validates and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clustermesh.clusterconfig import validate_local_cluster
from clustermesh.etcd.config import EtcdConfigError
from clustermesh.flags import add_daemon_flags, daemon_settings, option_default
from clustermesh.goflags import FlagSet, Parsed, log_no_effect
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

COMMAND = "clustermesh-apiserver clustermesh"
GOPS_PORT = 9892  # upstream's defaults.GopsPortApiserver
PPROF_PORT = 6063
_K8S_CLIENT = "the Kubernetes client keeps its own connection settings"


def build_parser(*, command: str = COMMAND) -> FlagSet:
    """Every flag of the ``clustermesh`` subcommand, defaults from ApiserverOptions."""
    def d(name: str) -> Any:
        return option_default(ApiserverOptions, name)

    fs = FlagSet(command=command, short="Run the ClusterMesh apiserver",
                 long="Publish this cluster's identities, endpoints, nodes and global services "
                      "into its etcd, as Cilium's clustermesh-apiserver does.\nEvery flag is "
                      "also read from CILIUM_<FLAG_NAME>; a flag on the command line wins.")
    add_daemon_flags(fs, options_cls=ApiserverOptions, gops_port=GOPS_PORT,
                     pprof_port=PPROF_PORT)
    fs.boolean("cluster-users-enabled", default=d("cluster_users_enabled"),
               help="Enable the management of etcd users for remote clusters")
    fs.string("cluster-users-config-path", default=str(d("cluster_users_config_path")),
              help="The path of the config file with the list of etcd users to manage")
    fs.boolean("clustermesh-enable-mcs-api", default=d("mcs_api"),
               help="Enable Cluster Mesh MCS-API support (publish ServiceExports)")
    fs.boolean("clustermesh-mcs-api-install-crds", default=True,
               no_effect="this apiserver never installs CRDs",
               help="Install and manage the MCS-API CRDs")
    fs.boolean("clustermesh-default-global-namespace", default=d("default_global_namespace"),
               help="Whether namespaces without the clustermesh.cilium.io/global annotation "
                    "are global")
    fs.boolean("enable-cilium-endpoint-slice", default=d("cilium_endpoint_slices"),
               help="Publish the ipcache from CiliumEndpointSlices instead of "
                    "CiliumEndpoints")
    fs.boolean("enable-external-workloads", no_effect="External Workloads were removed "
                                                      "from Cilium (1.18)",
               help="Enable support for external workloads")
    fs.boolean("enable-k8s", default=True, no_effect="the source of objects is --source",
               help="Enable the k8s clientset")
    fs.boolean("enable-k8s-api-discovery", no_effect="the API groups used are fixed",
               help="Enable discovery of Kubernetes API groups and resources")
    fs.boolean("enable-k8s-endpoint-slice", default=True,
               no_effect="EndpointSlices (discovery.k8s.io/v1) are always used",
               help="Enable support of Kubernetes EndpointSlice")
    fs.string("k8s-kubeconfig-path", default="", aliases=("kubeconfig",),
              help="Absolute path of the kubernetes kubeconfig file (default: in-cluster)")
    fs.string("k8s-api-server", default="",
              help="Kubernetes API server URL (overrides the kubeconfig's server)")
    fs.number("k8s-client-qps", default=DEFAULT_CLIENT_QPS,
              help="Queries per second limit for the K8s client (<= 0: unlimited)")
    fs.integer("k8s-client-burst", default=DEFAULT_CLIENT_BURST,
               help="Burst value allowed for the K8s client")
    fs.duration("k8s-client-connection-keep-alive", default=30.0, no_effect=_K8S_CLIENT,
                help="Configures the keep alive duration of K8s client connections")
    fs.duration("k8s-client-connection-timeout", default=30.0, no_effect=_K8S_CLIENT,
                help="Configures the timeout of K8s client connections")
    fs.duration("k8s-heartbeat-timeout", default=30.0, no_effect=_K8S_CLIENT,
                help="Configures the timeout for api-server heartbeat")
    fs.string("k8s-service-proxy-name", default="",
              help="Export only Services whose service.kubernetes.io/service-proxy-name "
                   "label equals this (default: only Services without the label)")
    # Ours.
    fs.string("source", default="kubernetes", choices=("kubernetes", "manifests"),
              help="Where the Kubernetes objects come from")
    fs.string("manifests-dir", default="",
              help="With --source manifests: directory of YAML manifests, watched live")
    fs.duration("manifests-poll-interval", default=1.0, hidden=True,
                help="How often --manifests-dir is rescanned")
    fs.string("clustermesh-service-v2", default=d("service_v2"), choices=SERVICE_V2_MODES,
              help="Also publish EndpointSlices (endpointslices/v1); only-endpointslice "
                   "publishes no legacy services/v1")
    fs.duration("heartbeat-interval", default=d("heartbeat_interval"), hidden=True,
                help="How often cilium/.heartbeat is written")
    return fs


def options_from_args(args: Parsed) -> tuple[ApiserverOptions, Source]:
    """Validate the arguments as a whole; ValueError names what is wrong."""
    validate_local_cluster(name=args.cluster_name, cluster_id=args.cluster_id,
                           max_connected_clusters=args.max_connected_clusters)
    common = daemon_settings(args, options_cls=ApiserverOptions)
    source: Source
    if args.source == "manifests":
        if not args.manifests_dir:
            raise ValueError("--source manifests needs --manifests-dir DIR")
        from .sources.manifests import ManifestSource

        source = ManifestSource(Path(args.manifests_dir), interval=args.manifests_poll_interval)
    else:
        source = KubernetesSource(
            kubeconfig=Path(args.k8s_kubeconfig_path) if args.k8s_kubeconfig_path else None,
            api_server=args.k8s_api_server or None,
            label_selectors=default_label_selectors(args.k8s_service_proxy_name),
            client_qps=args.k8s_client_qps, client_burst=args.k8s_client_burst)
    options = ApiserverOptions(
        cluster_name=args.cluster_name, cluster_id=args.cluster_id,
        max_connected_clusters=args.max_connected_clusters,
        local_config=common.local_config, mcs_api=args.clustermesh_enable_mcs_api,
        cilium_endpoint_slices=args.enable_cilium_endpoint_slice,
        default_global_namespace=args.clustermesh_default_global_namespace,
        service_v2=args.clustermesh_service_v2,
        health_port=args.health_port, prometheus_serve_addr=args.prometheus_serve_addr,
        heartbeat_interval=args.heartbeat_interval, qps=common.qps,
        bootstrap_qps=common.bootstrap_qps, max_inflight=common.max_inflight,
        max_txn_ops=args.max_txn_ops, max_request_bytes=args.max_request_bytes,
        cluster_users_enabled=args.cluster_users_enabled,
        cluster_users_config_path=Path(args.cluster_users_config_path),
        max_consecutive_quorum_errors=args.kvstore_max_consecutive_quorum_errors,
        controller_group_metrics=common.controller_group_metrics,
        debug=args.debug)
    return options, source


async def serve(options: ApiserverOptions, source: Source) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await ApiServer(options, source).run(stop)


def run(argv: Sequence[str], *, command: str, env: Mapping[str, str] | None = None) -> int:
    """Parse, validate, run until SIGTERM/SIGINT; the exit status."""
    fs = build_parser(command=command)
    args = fs.parse_or_exit(argv, env=env)
    try:
        options, source = options_from_args(args)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    setup_logging(level="debug" if args.debug else args.log_level, fmt=args.log_format)
    log_no_effect(fs, args, log)
    try:
        asyncio.run(serve(options, source))
    except EtcdConfigError as exc:
        log.error("%s", exc)
        return 1
    return 0
