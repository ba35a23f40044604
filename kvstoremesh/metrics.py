"""Prometheus metrics of KVStoreMesh, under Cilium's names (facts §5).

Two kinds:

* **Events** — histograms and counters updated as things happen: etcd request
  durations, watch-event handling, write errors, propagation lag.
* **State** — gauges computed at scrape time by :class:`_StateCollector` (remote
  clusters, failures, readiness, cache revocations, queue sizes, cached keys,
  heartbeat age) from one snapshot of each remote
  (:class:`~kvstoremesh.snapshot.RemoteStatus`), the snapshots the status API reads,
  so they can never drift from what it says.  What the collector needs of the mesh
  is the Protocol :class:`MeshState`; this module imports neither the mesh nor the
  remotes.  Which initial-sync series a remote has is asked of
  :data:`~kvstoremesh.resources.RULES` (``ResourceRules.reflection``).

The remote-cluster gauges carry only ``target_cluster`` (and the total none), as
upstream's newest ``pkg/clustermesh/common/metrics.go``: the ``source_cluster`` and
``source_node_name`` labels they used to have named the local cluster and an empty
node, the same on every series.  ``remote_cluster_cache_revocations`` is a gauge
there too (a count kept in a gauge), so it has no ``_total`` suffix.

The kvstore metrics common to both daemons come from
:class:`clustermesh.metrics.KVStoreMetrics`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.keys import QueueLabels, cluster_of
from clustermesh.metrics import KVStoreMetrics

from .diagnostics import Problem
from .resources import RULES, Reflection
from .snapshot import RemoteStatus

NS = "cilium_kvstoremesh"
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


# The ``mode`` of our revocations: --clustermesh-cache-ttl always drains, there is no
# dry run (upstream's PR discussed one; its label values are unverified).
REVOCATION_MODE = "enforced"


class MeshState(Protocol):
    """The mesh as the state gauges see it."""

    @property
    def revocations(self) -> Mapping[str, int]:
        """Cache TTL revocations per remote cluster (a cluster never revoked: absent)."""
        ...

    def remotes_status(self) -> Mapping[str, RemoteStatus]:
        """One snapshot of every running remote, by name."""
        ...

    def problems(self, remotes: Mapping[str, RemoteStatus]) -> list[Problem]:
        """The mesh's misconfigurations, as of the snapshots ``remotes``."""
        ...

    def queue_sizes(self) -> Mapping[QueueLabels, int]:
        """The local etcd writer's queue, by key labels (``SyncWriter.queue_sizes``)."""
        ...


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

        # Upstream's name and label (facts §7): 1 while this replica holds the lock.
        self.leader = Gauge(f"{NS}_leader_election_master_status",
                            "Whether this replica is the leader (holds the leader election "
                            "lock)", ["name"], registry=self.registry).labels("kvstoremesh")
        self.leader_changes = Counter(
            f"{NS}_leader_changes",
            "Changes of the holder of the leader election lock seen by this replica",
            registry=self.registry)

    def entry_rejected(self, cluster: str, resource: str, reason: str) -> None:
        self.rejected_entries.labels(cluster, resource, reason).inc()

    def attach(self, mesh: MeshState, *, clock: Clock = REAL_CLOCK) -> None:
        """Export ``mesh``'s state gauges; ``clock`` tells the heartbeat ages."""
        self.registry.register(_StateCollector(mesh, metrics=self, clock=clock))

    def writes_committed(self, keys_and_lags: list[tuple[bytes, float]]) -> None:
        """SyncWriter commit hook: propagation lag of each change observed in a watch."""
        for key, lag in keys_and_lags:
            cluster = cluster_of(key.decode(errors="replace"))
            if cluster is not None:
                self.propagation_lag.labels(cluster).observe(lag)


class _StateCollector(Collector):
    def __init__(self, mesh: MeshState, *, metrics: KVStoreMetrics, clock: Clock) -> None:
        self.mesh = mesh
        self.metrics = metrics
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        mesh = self.mesh
        remotes = mesh.remotes_status()  # the one snapshot of each remote for this scrape
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
        initial = self.metrics.initial_sync_family()
        bootstrap = self.metrics.bootstrap_family()
        now = self.clock.monotonic()
        for name in sorted(remotes):
            status = remotes[name]
            failures.add_metric([name], status.failures)
            last.add_metric([name], status.last_failure or 0)
            readiness.add_metric([name], 1 if status.ready else 0)
            revocations.add_metric([REVOCATION_MODE, name], mesh.revocations.get(name, 0))
            if status.last_heartbeat is not None:
                heartbeat.add_metric([name], now - status.last_heartbeat)
            if status.ready_after is not None:
                bootstrap.add_metric([name], status.ready_after)
            for rules in RULES:
                resource = rules.resource
                reflector = status.reflector(resource)
                scope = "/".join(resource.cache_base.split("/")[2:4])
                cached.add_metric([name, resource.name],
                                  reflector.cached_keys if reflector else 0)
                how = rules.reflection(status.config)
                # A series that can never turn 1 would alert forever: a resource never
                # read has no "read" series, one without a canary no "write" series.
                if how is Reflection.RUN:
                    initial.add_metric([scope, name, "read"],
                                       1 if reflector is not None and reflector.listed else 0)
                if how is not Reflection.OFF:
                    initial.add_metric([scope, name, "write"],
                                       1 if reflector is not None and reflector.synced else 0)
        problems = GaugeMetricFamily(f"{NS}_mesh_problems",
                                     "Mesh misconfigurations found (duplicate or own cluster "
                                     "IDs, overlapping pod CIDRs, expiring certificates...)",
                                     labels=["target_cluster", "kind"])
        for (cluster, kind), count in sorted(Tally(
                (p.cluster, p.kind) for p in mesh.problems(remotes)).items()):
            problems.add_metric([cluster, kind], count)
        yield from (failures, last, readiness, revocations, heartbeat, cached, initial,
                    bootstrap, problems)

        yield self.metrics.sync_queue_family(mesh.queue_sizes())
