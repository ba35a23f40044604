"""Prometheus metrics of KVStoreMesh, under Cilium's names (facts §5).

Two kinds:

* **Events** — histograms and counters updated as things happen: etcd request
  durations, watch-event handling, write errors, propagation lag.
* **State** — gauges computed at scrape time from the live mesh by
  :class:`_StateCollector` (remote clusters, failures, readiness, cache
  revocations, queue sizes, cached keys, heartbeat age), so they can never drift
  from what the status API says.

The remote-cluster gauges carry only ``target_cluster`` (and the total none), as
upstream's newest ``pkg/clustermesh/common/metrics.go``: the ``source_cluster`` and
``source_node_name`` labels they used to have named the local cluster and an empty
node, the same on every series.  ``remote_cluster_cache_revocations`` is a gauge
there too (a count kept in a gauge), so it has no ``_total`` suffix.

The kvstore metrics common to both daemons come from
:class:`clustermesh.metrics.KVStoreMetrics`.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from clustermesh.keys import RESOURCES, Resource, cluster_of
from clustermesh.metrics import KVStoreMetrics

from .resources import Reflection, reflection

if TYPE_CHECKING:
    from .mesh import KVStoreMesh
    from .remote import RemoteCluster

NS = "cilium_kvstoremesh"
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


# The ``mode`` of our revocations: --clustermesh-cache-ttl always drains, there is no
# dry run (upstream's PR discussed one; its label values are unverified).
REVOCATION_MODE = "enforced"


class MeshMetrics(KVStoreMetrics):
    def __init__(self, *, controller_groups: Iterable[str] = ()) -> None:
        super().__init__(NS, controller_groups=controller_groups)
        self.propagation_lag = Histogram(
            f"{NS}_propagation_lag_seconds",
            "Seconds from a remote change arriving in our watch to its local commit",
            ["target_cluster"], buckets=_LAG_BUCKETS, registry=self.registry)

        self.rejected_entries = Counter(
            f"{NS}_rejected_entries",
            "Remote entries kept out of the cache by validation",
            ["target_cluster", "resource", "reason"], registry=self.registry)

    def entry_rejected(self, cluster: str, resource: str, reason: str) -> None:
        self.rejected_entries.labels(cluster, resource, reason).inc()

    def attach(self, mesh: KVStoreMesh) -> None:
        self.registry.register(_StateCollector(mesh))

    def writes_committed(self, keys_and_lags: list[tuple[bytes, float]]) -> None:
        """SyncWriter commit hook: propagation lag of each change observed in a watch."""
        for key, lag in keys_and_lags:
            cluster = cluster_of(key.decode(errors="replace"))
            if cluster is not None:
                self.propagation_lag.labels(cluster).observe(lag)


def _reflection(remote: RemoteCluster, resource: Resource) -> Reflection:
    """How ``resource`` of ``remote`` is reflected; RUN until its config is known (a
    remote never connected has every resource pending)."""
    config = remote.state.config
    return Reflection.RUN if config is None else reflection(resource, config)


class _StateCollector(Collector):
    def __init__(self, mesh: KVStoreMesh) -> None:
        self.mesh = mesh

    def collect(self) -> Iterator[GaugeMetricFamily]:
        mesh = self.mesh
        remotes = sorted(mesh.remotes.items())
        per_remote = ["target_cluster"]

        total = GaugeMetricFamily(f"{NS}_remote_clusters",
                                  "The total number of remote clusters meshed with the local "
                                  "cluster")
        total.add_metric([], len(remotes))
        yield total

        failures = GaugeMetricFamily(f"{NS}_remote_cluster_failures",
                                     "The total number of failures related to the remote cluster",
                                     labels=per_remote)
        last = GaugeMetricFamily(f"{NS}_remote_cluster_last_failure_ts",
                                 "The timestamp of the last failure of the remote cluster",
                                 labels=per_remote)
        readiness = GaugeMetricFamily(f"{NS}_remote_cluster_readiness_status",
                                      "The readiness status of the remote cluster",
                                      labels=per_remote)
        revocations = GaugeMetricFamily(
            f"{NS}_remote_cluster_cache_revocations",
            "The total number of cache revocations related to the remote cluster",
            labels=["mode", "target_cluster"])
        heartbeat = GaugeMetricFamily(f"{NS}_remote_heartbeat_age_seconds",
                                      "Seconds since the remote cluster's heartbeat last changed",
                                      labels=["target_cluster"])
        cached = GaugeMetricFamily(f"{NS}_cached_keys",
                                   "Keys cached locally per remote cluster and resource",
                                   labels=["target_cluster", "resource"])
        initial = GaugeMetricFamily(f"{NS}_kvstore_initial_sync_completed",
                                    "Whether the initial synchronization from/to the kvstore "
                                    "has completed", labels=["scope", "source_cluster", "action"])
        bootstrap = GaugeMetricFamily(f"{NS}_bootstrap_seconds",
                                      "Duration in seconds to complete bootstrap",
                                      labels=["source_cluster"])
        now = time.monotonic()
        for name, remote in remotes:
            failures.add_metric([name], remote.state.failures)
            last.add_metric([name], remote.state.last_failure or 0)
            readiness.add_metric([name], 1 if remote.ready else 0)
            revocations.add_metric([REVOCATION_MODE, name], mesh.revocations[name])
            if remote.state.last_heartbeat is not None:
                heartbeat.add_metric([name], now - remote.state.last_heartbeat)
            if remote.state.ready_after is not None:
                bootstrap.add_metric([name], remote.state.ready_after)
            for resource in RESOURCES:
                reflector = remote.reflectors.get(resource.name)
                scope = "/".join(resource.cache_base.split("/")[2:4])
                cached.add_metric([name, resource.name],
                                  reflector.cached_keys if reflector else 0)
                how = _reflection(remote, resource)
                # A series that can never turn 1 would alert forever: a resource never
                # read has no "read" series, one without a canary no "write" series.
                if how is Reflection.RUN:
                    initial.add_metric([scope, name, "read"],
                                       1 if reflector is not None and reflector.listed else 0)
                if how is not Reflection.OFF:
                    initial.add_metric([scope, name, "write"], 1 if reflector is not None
                                       and reflector.synced.is_set() else 0)
        problems = GaugeMetricFamily(f"{NS}_mesh_problems",
                                     "Mesh misconfigurations found (duplicate or own cluster "
                                     "IDs, overlapping pod CIDRs, expiring certificates...)",
                                     labels=["target_cluster", "kind"])
        for (cluster, kind), count in sorted(Tally(
                (p.cluster, p.kind) for p in mesh.problems()).items()):
            problems.add_metric([cluster, kind], count)
        yield from (failures, last, readiness, revocations, heartbeat, cached, initial,
                    bootstrap, problems)

        queue = GaugeMetricFamily(f"{NS}_kvstore_sync_queue_size",
                                  "Number of elements queued for synchronization in the kvstore",
                                  labels=["scope", "source_cluster"])
        if mesh.writer is not None:
            sizes = mesh.metrics.queue_sizes(mesh.writer.queued_keys())
            for (scope, cluster), size in sorted(sizes.items()):
                queue.add_metric([scope, cluster], size)
        yield queue
