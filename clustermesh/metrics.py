"""kvstore metrics both daemons export, under Cilium's names (facts §5).

:class:`KVStoreMetrics` owns a registry (with the standard process, GC and
platform collectors), the event-driven kvstore metrics, the quorum errors of the
local etcd (:mod:`clustermesh.quorum`) and the controller run counts
(:mod:`clustermesh.controllers`); each daemon adds its own on top, under its
namespace (``cilium_kvstoremesh``, ``cilium_clustermesh_apiserver``).  One registry
per daemon instance, so tests can run several in one process.

Labels are upstream's newest: the kvstore families keep ``source_cluster``, which
names the cluster the data belongs to (``pkg/kvstore/store/metrics.go``); only the
remote-cluster gauges lost theirs, which named the local cluster and node.  No
``*_created`` series are exported: Go's client has none, and Prometheus would store
one extra series per counter and histogram for nothing.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily

from .certmetrics import (
    CertificateCollector,
    Check,
    ReadinessCollector,
    ServedExpiry,
    etcd_certificate_files,
)
from .controllers import ControllerRuns
from .etcd.config import EtcdConfig
from .keys import QueueLabels, cluster_of, metrics_scope

_METHOD_ACTIONS = {"Range": "Get", "Put": "Update", "DeleteRange": "Delete", "Txn": "Txn",
                   "Compact": "Compact", "Status": "Status", "Authenticate": "Authenticate"}


def _request_key(request: Any) -> str:
    key = getattr(request, "key", b"")
    if not key and getattr(request, "success", None):
        op = request.success[0]
        key = op.request_put.key or op.request_delete_range.key or op.request_range.key
    return key.decode(errors="replace") if isinstance(key, bytes) else ""


class KVStoreMetrics:
    def __init__(self, namespace: str, *, controller_groups: Iterable[str] = ()) -> None:
        # Process-wide, and both daemons build exactly one of these when they start.
        disable_created_metrics()
        self.namespace = namespace
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.operations = Histogram(
            f"{namespace}_kvstore_operations_duration_seconds",
            "Duration in seconds of kvstore operations",
            ["action", "kind", "outcome", "scope"], registry=registry)
        self.events_queue = Histogram(
            f"{namespace}_kvstore_events_queue_seconds",
            "Seconds waited before a received event was queued",
            ["action", "scope"], registry=registry)
        self.sync_errors = Counter(
            f"{namespace}_kvstore_sync_errors",
            "Number of times synchronization to the kvstore failed",
            ["scope", "source_cluster"], registry=registry)
        self.quorum_errors = Counter(
            f"{namespace}_kvstore_quorum_errors", "Number of quorum errors",
            ["error"], registry=registry)
        self.controllers = ControllerRuns(namespace=namespace, registry=registry,
                                          groups=controller_groups)

    def export_health(self, *, ready: Check,
                      etcd_configs: Callable[[], Mapping[str, EtcdConfig]],
                      served: Callable[[], Iterable[ServedExpiry]] = tuple) -> None:
        """Export ``<ns>_ready`` from ``ready`` (the function ``/readyz`` calls) and
        ``<ns>_certificate_not_after_timestamp_seconds`` of the TLS files of the etcd
        configs ``etcd_configs`` returns (by cluster) and of the served certificates
        ``served`` returns (the last results of :mod:`clustermesh.servedcert`), all read
        at scrape time (:mod:`clustermesh.certmetrics`)."""
        self.registry.register(ReadinessCollector(self.namespace, ready))
        self.registry.register(CertificateCollector(
            self.namespace, lambda: etcd_certificate_files(etcd_configs()), served=served))

    def etcd_operation(self, method: str, request: Any, seconds: float, ok: bool) -> None:
        """EtcdClient observer: one unary request finished."""
        action = _METHOD_ACTIONS.get(method, method)
        if method == "Range" and getattr(request, "range_end", b""):
            action = "GetPrefix"
        elif method == "DeleteRange" and getattr(request, "range_end", b""):
            action = "DeletePrefix"
        self.operations.labels(action, "etcd", "success" if ok else "failure",
                               metrics_scope(_request_key(request))).observe(seconds)

    def events_handled(self, scope: str, actions: Tally[str], seconds: float) -> None:
        for action, count in actions.items():
            hist = self.events_queue.labels(action, scope)
            for _ in range(count):
                hist.observe(seconds)

    def writes_failed(self, keys: list[bytes], *, default_cluster: str = "") -> None:
        """SyncWriter error hook: one error per (scope, cluster) in the failed batch."""
        seen: set[tuple[str, str]] = set()
        for key in keys:
            text = key.decode(errors="replace")
            seen.add((metrics_scope(text), cluster_of(text) or default_cluster))
        for scope, cluster in seen:
            self.sync_errors.labels(scope, cluster).inc()

    # Scrape-time families of the sync state both daemons export (their collectors fill
    # the first two; the queue is computed from the writer's queued keys).

    def initial_sync_family(self) -> GaugeMetricFamily:
        """``kvstore_initial_sync_completed{scope, source_cluster, action}``, empty."""
        return GaugeMetricFamily(f"{self.namespace}_kvstore_initial_sync_completed",
                                 "Whether the initial synchronization from/to the kvstore "
                                 "has completed", labels=["scope", "source_cluster", "action"])

    def bootstrap_family(self) -> GaugeMetricFamily:
        """``bootstrap_seconds{source_cluster}``, empty."""
        return GaugeMetricFamily(f"{self.namespace}_bootstrap_seconds",
                                 "Duration in seconds to complete bootstrap",
                                 labels=["source_cluster"])

    def sync_queue_family(self, queued: Mapping[QueueLabels, int], *,
                          default_cluster: str = "") -> GaugeMetricFamily:
        """``kvstore_sync_queue_size{scope, source_cluster}`` of the writer's
        :meth:`~clustermesh.syncwriter.SyncWriter.queue_sizes`; keys that name no cluster
        count for ``default_cluster``.

        Each of these label sets also gets its ``kvstore_sync_errors_total`` child, at 0
        until a write fails: a counter that appears only with its first error makes
        ``increase()`` miss that error (Prometheus' "initialise your counters")."""
        sizes: Tally[tuple[str, str]] = Tally()
        for (scope, cluster), size in queued.items():
            sizes[(scope, cluster or default_cluster)] += size
        for labels in sizes:
            self.sync_errors.labels(*labels)
        family = GaugeMetricFamily(f"{self.namespace}_kvstore_sync_queue_size",
                                   "Number of elements queued for synchronization in the "
                                   "kvstore", labels=["scope", "source_cluster"])
        for labels, size in sorted(sizes.items()):
            family.add_metric(list(labels), size)
        return family
