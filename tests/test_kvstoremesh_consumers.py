"""Readiness, the status model and the state gauges, fed made-up snapshots.

They read a remote only through :class:`~kvstoremesh.snapshot.RemoteStatus` and the
mesh only through the Protocols they declare, so no etcd and no daemon is needed here:
each test builds the snapshots it wants and a fake clock (:mod:`harness.fakeclock`)
stands for the time since start.  The wiring (the daemon serving these on ``/readyz``,
``/v1/cluster`` and ``/metrics``) is tested against real etcd in
test_kvstoremesh_observability.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from harness.fakeclock import FakeClock

from clustermesh.clusterconfig import EXPORT_SERVICES_AND_ENDPOINTSLICES, CiliumClusterConfig
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IDENTITIES,
    NODES,
    RESOURCES,
    SERVICE_EXPORTS,
    SERVICES,
    QueueLabels,
    Resource,
)
from kvstoremesh.diagnostics import Problem
from kvstoremesh.metrics import NS, MeshMetrics
from kvstoremesh.snapshot import STANDBY, Leadership, ReflectorStatus, RemoteStatus
from kvstoremesh.status import (
    Readiness,
    remote_cluster_model,
    standby_readiness,
    status_models,
    waiting_for,
)

PER_CLUSTER = 15.0
GLOBAL = 600.0

# A 1.18 peer: no MCS-API (service exports synced empty), no EndpointSlices (off).
OLD_PEER = CiliumClusterConfig(id=1, synced_canaries=True)
NEW_PEER = CiliumClusterConfig(id=2, synced_canaries=True, service_exports_enabled=True,
                               endpoint_slices_export_mode=EXPORT_SERVICES_AND_ENDPOINTSLICES)
OLD_PEER_RESOURCES = (NODES, SERVICES, SERVICE_EXPORTS, IDENTITIES, ENDPOINTS)

NEVER_CONNECTED = RemoteStatus(
    name="", ready=False, connected=False, config_retrieved=False, config=None,
    registered=False, status="Waiting for initial connection to be established", failures=0,
    last_failure=None, ever_connected=False, disconnected_since=1000.0, etcd_cluster_id=None,
    last_heartbeat=None, ready_after=None, problem=None, certificate_problems=(),
    reflectors=(), rejected_total=0, rejected_latest=(), pod_cidrs_version=0)


def replace(snapshot: RemoteStatus, /, **changes: object) -> RemoteStatus:
    return snapshot._replace(**changes)


def reflector(resource: Resource, *, synced: bool = True, keys: int = 0) -> ReflectorStatus:
    return ReflectorStatus(resource=resource, listed=synced, synced=synced, cached_keys=keys,
                           relists=0, last_received=0.0)


def never_connected(name: str, status: str = "connection refused") -> RemoteStatus:
    return replace(NEVER_CONNECTED, name=name, status=status)


def session(name: str, *, config: CiliumClusterConfig = OLD_PEER,
            resources: tuple[Resource, ...] = OLD_PEER_RESOURCES,
            pending: tuple[Resource, ...] = ()) -> RemoteStatus:
    """A connected remote with its reflectors registered; ``pending`` not synced yet."""
    return replace(NEVER_CONNECTED, name=name, ready=not pending, connected=True,
                   config_retrieved=True, config=config, registered=True,
                   status="etcd: 1/1 connected", ever_connected=True, disconnected_since=None,
                   reflectors=tuple(reflector(r, synced=r not in pending) for r in resources))


@dataclass
class Startup:
    """A :class:`~kvstoremesh.status.ReadinessSource`."""

    started_at: float
    initial_clusters: frozenset[str]
    local_connected: bool = True
    config_ready: asyncio.Event = field(default_factory=asyncio.Event)


def readiness(fake: FakeClock, *clusters: str, config_read: bool = True
              ) -> tuple[Readiness, Startup]:
    source = Startup(started_at=fake.monotonic(), initial_clusters=frozenset(clusters))
    if config_read:
        source.config_ready.set()
    return Readiness(source, per_cluster_timeout=PER_CLUSTER, global_timeout=GLOBAL,
                     clock=fake.clock), source


# ---------------------------------------------------------------------- readiness


def test_a_remote_never_connected_is_dropped_after_the_per_cluster_timeout() -> None:
    fake = FakeClock()
    check, _ = readiness(fake, "cluster1", "cluster2")
    remotes = {"cluster1": session("cluster1"), "cluster2": never_connected("cluster2")}
    assert check.check(remotes) == (False, ["cluster2: not connected (connection refused)"])
    fake.advance(PER_CLUSTER)  # not *more* than the timeout yet
    assert check.check(remotes) == (False, ["cluster2: not connected (connection refused)"])
    fake.advance(0.001)
    assert check.check(remotes) == (
        True, ["cluster2: not waited for (no connection within 15s)"])
    # Ready latches: a remote failing later does not flap the pod.
    fake.advance(30)
    remotes["cluster1"] = replace(remotes["cluster1"], ready=False, connected=False)
    assert check.check(remotes) == (True, ["ready since 15.0s after start"])


def test_a_remote_that_connected_is_waited_for_until_the_global_timeout() -> None:
    fake = FakeClock()
    check, _ = readiness(fake, "cluster1", "stuck")
    remotes = {"cluster1": session("cluster1"),
               "stuck": session("stuck", pending=(NODES, ENDPOINTS))}
    fake.advance(PER_CLUSTER + 1)  # connected once: the per-cluster timeout does not apply
    waiting = "stuck: waiting for nodes, endpoints to sync"
    assert check.check(remotes) == (False, [waiting])
    # Disconnected since: still waited for (it did connect), with upstream's status text.
    remotes["stuck"] = replace(remotes["stuck"], connected=False, status="timed out")
    assert check.check(remotes) == (False, ["stuck: not connected (timed out)"])
    fake.advance(GLOBAL - PER_CLUSTER - 1)
    assert not check.check(remotes)[0]
    fake.advance(0.001)
    assert check.check(remotes) == (
        True, ["global ready timeout (600s) elapsed", "stuck: not connected (timed out)"])
    assert check.check({}) == (True, [f"ready since {GLOBAL + 0.001:.1f}s after start"])


def test_the_global_timeout_needs_the_config_directory_read() -> None:
    fake = FakeClock()
    check, source = readiness(fake, config_read=False)
    fake.advance(GLOBAL + 1)
    assert check.check({}) == (False, ["config directory: not read yet"])
    source.local_connected = False
    assert check.check({}) == (False, ["local etcd: not connected"])
    source.local_connected = True
    source.config_ready.set()
    assert check.check({}) == (True, [])


def test_next_timeout_is_just_past_the_next_ready_timeout() -> None:
    fake = FakeClock()
    check, _ = readiness(fake, "cluster1")
    assert check.next_timeout() == pytest.approx(PER_CLUSTER + 0.01)
    fake.advance(PER_CLUSTER)  # not past it yet: still the next one
    assert check.next_timeout() == pytest.approx(0.01)
    fake.advance(0.01)
    assert check.next_timeout() == pytest.approx(GLOBAL - PER_CLUSTER)
    fake.advance(GLOBAL)
    assert check.next_timeout() is None


def test_only_the_initial_clusters_are_waited_for() -> None:
    fake = FakeClock()
    check, _ = readiness(fake, "cluster1", "cluster2")
    # cluster2 has no snapshot (its start waits for a removal); cluster3 came later.
    remotes = {"cluster1": session("cluster1"), "cluster3": never_connected("cluster3")}
    assert check.check(remotes) == (True, [])


def test_waiting_for_names_the_first_step_not_done() -> None:
    connected = session("c", pending=(SERVICES, IDENTITIES))
    assert waiting_for(never_connected("c", "dial tcp: refused")) == (
        "not connected (dial tcp: refused)")
    assert waiting_for(replace(connected, config_retrieved=False, status="no config")) == (
        "cluster configuration not retrieved (no config)")
    assert waiting_for(replace(connected, registered=False)) == "reflectors not started"
    assert waiting_for(connected) == "waiting for services, identities to sync"
    assert waiting_for(session("c")) == "ready"


# ------------------------------------------------------------------ status model


def test_the_model_takes_its_keys_from_the_resource_rules() -> None:
    status = replace(session("cluster1", pending=(ENDPOINTS,)),
                     reflectors=(reflector(NODES, keys=3), reflector(SERVICES, keys=2),
                                 reflector(SERVICE_EXPORTS), reflector(IDENTITIES, keys=1),
                                 reflector(ENDPOINTS, synced=False, keys=7)),
                     ready=False, failures=2, last_failure=1_700_000_000.25)
    model = remote_cluster_model(status)
    assert list(model) == [
        "name", "ready", "connected", "status", "num-nodes", "num-shared-services",
        "num-service-exports", "num-identities", "num-endpoints", "num-endpointslices",
        "num-failures", "synced", "config", "last-failure"]
    assert [model[k] for k in ("num-nodes", "num-shared-services", "num-service-exports",
                               "num-identities", "num-endpoints", "num-endpointslices")] == [
        3, 2, 0, 1, 7, 0]
    # Nullable entries are null for what the remote does not export (exports: synced
    # empty; EndpointSlices: off), the others plain booleans.
    assert model["synced"] == {"nodes": True, "services": True, "service-exports": None,
                               "identities": True, "endpoints": False,
                               "endpointslices": None}
    assert model["last-failure"] == "2023-11-14T22:13:20.250Z"
    new = remote_cluster_model(session("cluster2", config=NEW_PEER, resources=RESOURCES,
                                       pending=(ENDPOINT_SLICES,)))
    assert new["synced"]["service-exports"] is True
    assert new["synced"]["endpointslices"] is False
    unknown = remote_cluster_model(never_connected("cluster3"))
    assert unknown["synced"] == {"nodes": False, "services": False, "service-exports": None,
                                 "identities": False, "endpoints": False,
                                 "endpointslices": None}


@dataclass
class FakeMesh:
    """A :class:`~kvstoremesh.status.StatusSource` and
    :class:`~kvstoremesh.metrics.MeshState`; counts the snapshots handed out."""

    remotes: dict[str, RemoteStatus]
    revocations: dict[str, int] = field(default_factory=dict)
    queued: dict[QueueLabels, int] = field(default_factory=dict)
    snapshots: int = 0

    def remotes_status(self) -> Mapping[str, RemoteStatus]:
        self.snapshots += 1
        return dict(self.remotes)

    def problems(self, remotes: Mapping[str, RemoteStatus]) -> list[Problem]:
        return [p for name in sorted(remotes) if (p := remotes[name].problem) is not None]

    def queue_sizes(self) -> Mapping[QueueLabels, int]:
        return self.queued


def test_status_models_take_one_snapshot_and_attach_the_problems() -> None:
    problem = Problem("own-cluster-id", "ours", "remote cluster ours uses our own cluster ID")
    mesh = FakeMesh({"zeta": session("zeta"), "ours": replace(never_connected("ours"),
                                                              problem=problem)})
    models = status_models(mesh)
    assert mesh.snapshots == 1
    assert [m["name"] for m in models] == ["ours", "zeta"]
    assert models[0]["problems"] == [problem.message] and "problems" not in models[1]


# ------------------------------------------------------------------- state gauges


def test_state_gauges_follow_the_snapshots_and_the_rules() -> None:
    fake = FakeClock()
    old = replace(session("old", pending=(ENDPOINTS,)), last_heartbeat=fake.monotonic() - 7,
                  failures=3, last_failure=1_700_000_000.0)
    new = replace(session("new", config=NEW_PEER, resources=RESOURCES), ready_after=1.5)
    mesh = FakeMesh({"old": old, "new": new, "never": never_connected("never")},
                    revocations={"old": 2},
                    queued={("nodes/v1", "new"): 2})
    metrics = MeshMetrics()
    metrics.attach(mesh, clock=fake.clock)

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(f"{NS}_{name}", labels)

    assert value("remote_clusters") == 3
    assert mesh.snapshots == 1  # one scrape, one snapshot of each remote
    assert value("remote_cluster_failures", target_cluster="old") == 3
    assert value("remote_cluster_last_failure_ts", target_cluster="old") == 1_700_000_000.0
    assert value("remote_cluster_readiness_status", target_cluster="old") == 0
    assert value("remote_cluster_readiness_status", target_cluster="new") == 1
    assert value("remote_cluster_cache_revocations", mode="enforced",
                 target_cluster="old") == 2
    assert value("remote_cluster_cache_revocations", mode="enforced",
                 target_cluster="new") == 0
    assert value("remote_heartbeat_age_seconds", target_cluster="old") == 7
    assert value("remote_heartbeat_age_seconds", target_cluster="new") is None
    assert value("bootstrap_seconds", source_cluster="new") == 1.5
    assert value("kvstore_sync_queue_size", scope="nodes/v1", source_cluster="new") == 2

    def initial(cluster: str, scope: str, action: str) -> float | None:
        return value("kvstore_initial_sync_completed", scope=scope, source_cluster=cluster,
                     action=action)

    # The old peer: service exports synced empty (written, never read), no EndpointSlices.
    assert initial("old", "serviceexports/v1", "read") is None
    assert initial("old", "serviceexports/v1", "write") == 1
    assert initial("old", "endpointslices/v1", "read") is None
    assert initial("old", "endpointslices/v1", "write") is None
    assert initial("old", "ip/v1", "read") == 0 and initial("old", "ip/v1", "write") == 0
    assert initial("new", "endpointslices/v1", "read") == 1
    # A remote whose config is not known yet has every resource pending, both ways.
    for resource in RESOURCES:
        scope = "/".join(resource.cache_base.split("/")[2:4])
        assert initial("never", scope, "read") == 0 and initial("never", scope, "write") == 0


def test_a_standby_is_ready_only_behind_another_leader() -> None:
    """A replica that has listed the cache is ready while another one leads; one about to
    take a free lock is not (its /readyz would otherwise pass before it synced: a lone
    replica starting was seen ready with a remote not synced)."""
    ours, theirs = 0x10, 0x20
    other = Leadership(STANDBY, "b", ours, "a", theirs)
    assert standby_readiness(other, listed=True) == (True, [])
    assert standby_readiness(other, listed=False) == (False, ["local etcd: not listed yet"])
    for free in (Leadership(STANDBY, "b", ours, None, 0),  # nobody holds the lock
                 Leadership(STANDBY, "b", ours, "b", ours)):  # our own key, not leading yet
        assert standby_readiness(free, listed=True) == (
            False, ["no other replica leads: taking the lock"])
