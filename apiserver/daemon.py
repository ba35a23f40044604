"""The clustermesh-apiserver daemon: one source, one publisher, one etcd.

Tasks while running:

* the source (Kubernetes or a manifests directory) feeding the
  :class:`~apiserver.publisher.Publisher`, which writes through the one
  :class:`~clustermesh.syncwriter.SyncWriter`;
* ``cilium/cluster-config/<name>`` kept asserted (rewritten if deleted or
  modified, as Cilium's enforcer does);
* ``cilium/.heartbeat`` rewritten every minute, the liveness signal every
  remote reader watches (:mod:`clustermesh.heartbeat`, shared with KVStoreMesh);
* the quorum check of the etcd (:mod:`clustermesh.quorum`): more than
  ``--kvstore-max-consecutive-quorum-errors`` failures in a row make the daemon not
  live and not ready, and recreate the etcd connection;
* with ``--cluster-users-enabled``, the etcd users of ``users.yaml``
  (:mod:`apiserver.users`), from the moment etcd answers;
* health (``/healthz``, ``/readyz``: ready once every resource has written its
  sync canary) and metrics servers; with the latter, the probe of the certificate
  the etcd serves (:mod:`clustermesh.servedcert`).

Every timer of the daemon (the source's restart backoff, the "not ready" report, and
those of the publisher, users management, heartbeat, quorum check and served
certificate probe it starts) runs on the one injected :class:`~clustermesh.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from clustermesh.assertion import keep_asserted
from clustermesh.backoff import KUBERNETES, Backoff
from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import EtcdConfig, load_etcd_config
from clustermesh.flags import listen_address
from clustermesh.heartbeat import write_heartbeats
from clustermesh.keys import cluster_config_key
from clustermesh.metrics import KVStoreMetrics
from clustermesh.quorum import STATUS_CHECK_INTERVAL, QuorumCheck
from clustermesh.servedcert import ServedCertificates
from clustermesh.serving import bound_port, health_app, metrics_app, serve
from clustermesh.syncwriter import SyncWriter

from .exports import ExportOptions
from .publisher import Publisher
from .sources import Source
from .users import UsersManager

log = logging.getLogger(__name__)

NS = "cilium_clustermesh_apiserver"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiserverOptions:
    cluster_name: str
    cluster_id: int
    max_connected_clusters: int = 255
    local_config: Path
    mcs_api: bool = False
    cilium_endpoint_slices: bool = False
    default_global_namespace: bool = True
    service_v2: str = "prefer-legacy"
    health_port: int = 9880
    prometheus_serve_addr: str = ""
    heartbeat_interval: float = 60.0
    status_check_interval: float = STATUS_CHECK_INTERVAL  # of the quorum check
    qps: float = 0.0
    bootstrap_qps: float = 0.0
    max_inflight: int = 4
    max_txn_ops: int = 128
    max_request_bytes: int = 1536 * 1024
    # Drop-in flags of upstream's clustermesh subcommand that have a meaning for us.
    cluster_users_enabled: bool = False
    cluster_users_config_path: Path = Path("/var/lib/cilium/etcd-config/users.yaml")
    max_consecutive_quorum_errors: int = 2
    controller_group_metrics: tuple[str, ...] = ()  # "all", or group names
    debug: bool = False

    @property
    def exports(self) -> ExportOptions:
        return ExportOptions(cluster=self.cluster_name, cluster_id=self.cluster_id,
                             mcs_api=self.mcs_api,
                             cilium_endpoint_slices=self.cilium_endpoint_slices,
                             default_global_namespace=self.default_global_namespace,
                             service_v2=self.service_v2)

    @property
    def cluster_config(self) -> CiliumClusterConfig:
        return CiliumClusterConfig(
            id=self.cluster_id, synced_canaries=True,
            max_connected_clusters=self.max_connected_clusters,
            service_exports_enabled=self.mcs_api,
            endpoint_slices_export_mode=self.exports.endpoint_slices_export_mode)


class ApiServer:
    def __init__(self, options: ApiserverOptions, source: Source, *,
                 clock: Clock = REAL_CLOCK) -> None:
        self.options = options
        self.source = source
        self.clock = clock
        self.metrics = KVStoreMetrics(NS, controller_groups=options.controller_group_metrics)
        self.quorum: QuorumCheck | None = None
        self.local: EtcdClient | None = None
        self.writer: SyncWriter | None = None
        self.publisher: Publisher | None = None
        self.runners: dict[str, web.AppRunner] = {}
        self.source_error: str | None = None  # why the objects source last failed
        self.users: UsersManager | None = None  # with --cluster-users-enabled
        self.served = ServedCertificates(self._etcd_configs, clock=clock)

    def _quorum_problems(self) -> list[str]:
        problem = self.quorum.problem if self.quorum is not None else None
        return [problem] if problem is not None else []

    def ready(self) -> tuple[bool, list[str]]:
        if self.publisher is None:
            return False, ["local etcd: not connected"]
        quorum = self._quorum_problems()
        publisher = self.publisher
        waiting = []
        for resource, synced in publisher.resource_synced.items():
            if synced.is_set():
                continue
            unlisted = [k.name for k in publisher.exports.inputs[resource]
                        if k not in publisher.kinds_synced]
            waiting.append(f"{resource.name}: waiting for the first full list of "
                           f"{', '.join(unlisted)}" if unlisted else f"{resource.name}: writing")
        if waiting and self.source_error is not None:
            waiting.append(f"source: {self.source_error}")
        return not (quorum or waiting), quorum + waiting

    def live(self) -> tuple[bool, list[str]]:
        problems = []
        if self.writer is not None and self.publisher is not None and not self.writer.alive:
            problems.append("etcd writer stopped")
        if self.publisher is not None and self.publisher.failed is not None:
            problems.append(f"publisher failed: {self.publisher.failed}")
        problems += self._quorum_problems()
        return not problems, problems

    def _etcd_configs(self) -> dict[str, EtcdConfig]:
        """The etcd's config, under our cluster name (none before :meth:`run`)."""
        if self.local is None:
            return {}
        return {self.options.cluster_name: self.local.config}

    def port(self, server: str) -> int:
        return bound_port(self.runners[server])

    async def run(self, stop: asyncio.Event) -> None:
        o = self.options
        self.local = EtcdClient(load_etcd_config(o.local_config), name="local etcd",
                                observer=self.metrics.etcd_operation)
        self.quorum = QuorumCheck(self.local, metrics=self.metrics,
                                  max_errors=o.max_consecutive_quorum_errors,
                                  interval=o.status_check_interval, clock=self.clock)
        self.runners["health"] = await serve(health_app(live=self.live, ready=self.ready),
                                             "", o.health_port)
        if o.prometheus_serve_addr:
            self.metrics.registry.register(_StateCollector(self))
            self.metrics.export_health(ready=self.ready, etcd_configs=self._etcd_configs,
                                       served=self.served.series)
            host, port = listen_address(o.prometheus_serve_addr)
            self.runners["metrics"] = await serve(metrics_app(self.metrics.registry), host, port)
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.local.connect_retrying(stop=stop)
            tasks += self._start_users_management()
            self.writer = SyncWriter(
                self.local, max_txn_ops=o.max_txn_ops, max_request_bytes=o.max_request_bytes,
                max_inflight=o.max_inflight, qps=o.qps, bootstrap_qps=o.bootstrap_qps,
                on_error=lambda keys: self.metrics.writes_failed(
                    keys, default_cluster=o.cluster_name), clock=self.clock)
            self.writer.start()
            self.publisher = Publisher(o.exports, local=self.local, writer=self.writer,
                                       clock=self.clock)
            self.publisher.start()
            tasks += [
                asyncio.create_task(self._run_source(), name="source"),
                asyncio.create_task(self._report_waiting(), name="waiting"),
                asyncio.create_task(keep_asserted(
                    self.local, cluster_config_key(o.cluster_name).encode(),
                    o.cluster_config.to_json(), runs=self.metrics.controllers),
                    name="cluster-config"),
                asyncio.create_task(write_heartbeats(
                    self.local, runs=self.metrics.controllers, interval=o.heartbeat_interval,
                    clock=self.clock),
                    name="heartbeat"),
                asyncio.create_task(self.quorum.run(), name="quorum-check"),
            ]
            if o.prometheus_serve_addr:  # the probe's results are only ever scraped
                tasks.append(asyncio.create_task(self.served.run(), name="served-certs"))
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            # A task failing while we stop (etcd going down with the pod) is not an error.
            for task in done:
                if (not stop.is_set() and task is not waiter and not task.cancelled()
                        and task.exception()):
                    raise task.exception()  # type: ignore[misc]
        finally:
            log.info("shutting down")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.publisher is not None:
                await self.publisher.close()
            if self.writer is not None:
                await self.writer.stop(drain_timeout=5.0)
            await self.local.close()
            for runner in self.runners.values():
                await runner.cleanup()

    def _start_users_management(self) -> list[asyncio.Task[None]]:
        """Cluster users (apiserver/users.py): as soon as etcd answers, not after
        Kubernetes, so remote clusters can authenticate while the source is still down."""
        o = self.options
        if not o.cluster_users_enabled:
            log.info("etcd users management disabled")
            return []
        assert self.local is not None
        self.users = UsersManager(self.local, cluster_name=o.cluster_name,
                                  path=o.cluster_users_config_path,
                                  runs=self.metrics.controllers, clock=self.clock)
        return [asyncio.create_task(self.users.run(), name="users")]

    async def _run_source(self) -> None:
        """The source, restarted with backoff whenever it fails.

        The etcd side (cluster-config, heartbeat, users, health and metrics) does not
        depend on it: a Kubernetes API that is unreachable or not configured yet only
        keeps readiness false until the first full list of every kind.  The restart
        backoff is the Kubernetes client's (:data:`~clustermesh.backoff.KUBERNETES`),
        whichever the source: it waits for the API server, or for a fix of its access.
        """
        assert self.publisher is not None
        backoff = Backoff(KUBERNETES, clock=self.clock)
        while True:
            try:
                await self.source.run(self.publisher, self.publisher.kinds)
                error = "ended unexpectedly"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            first = self.source_error is None
            self.source_error = error
            delay = backoff.next_delay()
            (log.warning if first else log.info)(
                "objects source failed (%s); retrying in %.1fs", error, delay)
            await self.clock.sleep(delay)

    async def _report_waiting(self) -> None:
        """While not ready, say what readiness waits for: after 5 s, then every minute.

        Never returns (a finished task ends the daemon)."""
        delay = 5.0
        while True:
            await self.clock.sleep(delay)
            delay = 60.0
            ready, waiting = self.ready()
            if not ready:
                log.warning("not ready: %s", "; ".join(waiting))


class _StateCollector(Collector):
    def __init__(self, server: ApiServer) -> None:
        self.server = server

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cluster = self.server.options.cluster_name
        publisher = self.server.publisher
        metrics = self.server.metrics
        initial = metrics.initial_sync_family()
        bootstrap = metrics.bootstrap_family()
        contested = GaugeMetricFamily(
            f"{NS}_contested_keys", "Exported keys claimed by more than one object (e.g. one "
            "IP by two endpoints): the first claimant's value is exported", labels=["scope"])
        promotions = CounterMetricFamily(
            f"{NS}_owner_promotions", "Times a waiting claimant of a key took over its value "
            "because the exported owner released it", labels=["scope"])
        if publisher is not None:
            for resource, event in publisher.resource_synced.items():
                scope = "/".join(resource.base.split("/")[2:4])
                initial.add_metric([scope, cluster, "write"], 1 if event.is_set() else 0)
                ownership = publisher.ownership[resource]
                contested.add_metric([scope], ownership.contested)
                promotions.add_metric([scope], ownership.promotions)
            if publisher.ready:
                bootstrap.add_metric([cluster], max(publisher.synced_after.values(), default=0))
        writer = self.server.writer
        queue = metrics.sync_queue_family(writer.queue_sizes() if writer is not None else {},
                                          default_cluster=cluster)
        yield from (initial, bootstrap, queue, contested, promotions)
