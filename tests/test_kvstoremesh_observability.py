"""KVStoreMesh observability against real etcd: ``/healthz`` and ``/readyz`` (with the
per-cluster and global ready timeouts), ``/metrics`` checked by value (then by
``promtool`` and by a real Prometheus server), the status API ``GET /v1/cluster``
(schema, counts, no secrets), and a SIGTERM of the daemon run as a process.

Nothing is mocked: every remote is a real etcd (or a closed port, for "unreachable"),
the daemon runs in-process through :class:`harness.mesh.MeshEnv` (or as a subprocess
for the signal test), and every HTTP call goes over a real socket.  Only time is fake
in the ready-timeout tests (:mod:`harness.fakeclock`): the timeouts are the daemon's
timers, so they are reached by advancing its clock, not by waiting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import EtcdFactory, enable_auth, free_port, write_client_config
from harness.fakeclock import FakeClock
from harness.mesh import MeshEnv, Remote, read_tree, sample_state
from harness.oracle import MIRROR, NOTHING, entry_accepted, expected_reflection
from harness.prometheus import PrometheusNotFound, PrometheusServer, find_prometheus_binary
from harness.waiting import wait_until
from prometheus_client.parser import text_string_to_metric_families

from clustermesh.clusterconfig import (
    EXPORT_ENDPOINTSLICES_ONLY,
    EXPORT_SERVICES_AND_ENDPOINTSLICES,
)
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IDENTITIES,
    NODES,
    RESOURCES,
    SERVICE_EXPORTS,
    SERVICES,
)
from kvstoremesh.mesh import KVStoreMesh

REPO = Path(__file__).resolve().parents[1]
NS = "cilium_kvstoremesh"

# ------------------------------------------------------------------------ helpers


def remote_ready(mesh: KVStoreMesh, name: str) -> bool:
    """Whether remote ``name`` is started (the daemon may still be taking the lock) and
    ready."""
    remote = mesh.remotes.get(name)
    return remote is not None and remote.status().ready


def remote_failures(mesh: KVStoreMesh, name: str) -> int:
    remote = mesh.remotes.get(name)
    return remote.status().failures if remote is not None else 0




async def http_get(mesh: KVStoreMesh, server: str, path: str) -> tuple[int, str]:
    """GET ``path`` from one of the daemon's servers (``health``, ``metrics``, ``api``)."""
    url = f"http://127.0.0.1:{mesh.port(server)}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def api_clusters(mesh: KVStoreMesh) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{mesh.port('api')}/v1/cluster"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        return await resp.json()


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> Samples:
    """Sample name (``..._count``, ``..._total`` included) -> [(labels, value)]."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The value of the one series of ``name`` whose labels include ``labels``."""
    found = [value for have, value in samples.get(name, [])
             if all(have.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (f"{name}{labels}: expected one series, found {len(found)}: "
                             f"{samples.get(name)}")
    return found[0]


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` matching ``labels`` (0 when there is none)."""
    return sum(value for have, value in samples.get(name, [])
               if all(have.get(k) == v for k, v in labels.items()))


async def scrape(mesh: KVStoreMesh) -> tuple[str, Samples]:
    status, text = await http_get(mesh, "metrics", "/metrics")
    assert status == 200
    return text, parse_metrics(text)


async def start(env: MeshEnv, **overrides: Any) -> KVStoreMesh:
    """Start the daemon in-process and wait until its three servers listen."""
    mesh = await env.start_mesh(**overrides)
    await wait_until(lambda: {"health", "metrics", "api"} <= mesh.runners.keys(),
                     "the daemon's servers to listen")
    return mesh


def write_unreachable_remote(env: MeshEnv, name: str) -> int:
    """A config file for ``name`` whose only endpoint is a closed loopback port."""
    port = free_port()
    tmp = env.dir / f".{name}.unreachable"
    write_client_config(tmp, endpoints=[f"http://127.0.0.1:{port}"])
    tmp.replace(env.config_dir / name)
    return port


async def synced_remote(env: MeshEnv, name: str, cluster_id: int, **kwargs: Any) -> Remote:
    remote = await env.add_remote(name, cluster_id, **kwargs)
    await remote.publish(sample_state(name, cluster_id))
    await remote.write_canaries()
    return remote


async def expected_counts(remote: Remote) -> dict[str, int]:
    """Keys of each resource the remote publishes for this cluster name that pass the
    agents' rules (what the daemon must cache: clusters sharing an etcd share the
    identities and ipcache prefixes, and each caches only its own); none for a resource
    the remote's config says it does not export (both from harness.oracle, not from the
    daemon's own validation)."""
    counts: dict[str, int] = {}
    for resource in RESOURCES:
        prefix = remote.prefix(resource).encode()
        keys = await read_tree(remote.client, prefix)
        if expected_reflection(resource, remote.config) != MIRROR:
            counts[resource.name] = 0
        else:
            counts[resource.name] = sum(
                1 for key, value in keys.items()
                if entry_accepted(resource, key[len(prefix):].decode(), value,
                                  cluster=remote.name, cluster_id=remote.config.id,
                                  max_connected_clusters=255))
    return counts


# ---------------------------------------------------------------------- readiness


async def test_readyz_waits_for_the_remote_canaries_then_reports_ready(
        mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1)
    await c1.publish(sample_state("cluster1", 1))  # no sync canaries yet
    mesh = await start(mesh_env)

    status, text = await wait_until(
        lambda: _readyz_if(mesh, lambda t: "cluster1: waiting for" in t),
        "/readyz?verbose to name cluster1")
    lines = text.splitlines()
    assert status == 500
    assert lines[0] == "NotReady"
    detail = next(line for line in lines if line.startswith("cluster1: "))
    waited = set(detail.removeprefix("cluster1: waiting for ").removesuffix(" to sync")
                 .split(", "))
    # Every resource gated by a remote canary; service exports are unsupported by this
    # remote (no capability) and count as synced at once.
    assert {NODES.name, SERVICES.name, IDENTITIES.name, ENDPOINTS.name} <= waited
    assert waited <= {r.name for r in RESOURCES}
    # Without ?verbose: the bare word.
    assert await http_get(mesh, "health", "/readyz") == (500, "NotReady\n")
    # Liveness never depends on remotes.
    assert await http_get(mesh, "health", "/healthz") == (200, "OK\n")

    # Nothing turns ready while canaries are missing. The sentinel: one canary (nodes)
    # appears, and once readiness has taken it in (nodes is no longer waited for), it
    # still waits for the others.
    await c1.write_canaries((NODES,))

    def waiting_for(text: str) -> set[str]:
        line = next((ln for ln in text.splitlines() if ln.startswith("cluster1: waiting")), "")
        return set(line.removeprefix("cluster1: waiting for ").removesuffix(" to sync")
                   .split(", ")) if line else set()

    status, text = await wait_until(
        lambda: _readyz_if(mesh, lambda t: NODES.name not in waiting_for(t)),
        "/readyz to stop waiting for nodes")
    assert status == 500, text
    assert {SERVICES.name, IDENTITIES.name, ENDPOINTS.name} <= waiting_for(text), text
    assert not mesh.remotes["cluster1"].status().ready

    await c1.write_canaries()
    await wait_until(lambda: _readyz_if(mesh, lambda t: t.startswith("Ready")),
                     "/readyz to turn ready after the canaries")
    assert await http_get(mesh, "health", "/readyz") == (200, "Ready\n")
    assert mesh.remotes["cluster1"].status().ready
    await mesh_env.assert_converged()


async def _readyz_if(mesh: KVStoreMesh, accept: Callable[[str], bool]
                     ) -> tuple[int, str] | None:
    status, text = await http_get(mesh, "health", "/readyz?verbose")
    return (status, text) if accept(text) else None


def ready_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "kvstoremesh.mesh" and r.getMessage().startswith("KVStoreMesh ready")]


async def test_ready_is_noticed_when_the_last_remote_syncs(
        mesh_env: MeshEnv, caplog: pytest.LogCaptureFixture) -> None:
    """The readiness watcher wakes when a remote turns ready, not on a poll: the fake
    clock never moves here, so a poll would never run."""
    caplog.set_level(logging.INFO, logger="kvstoremesh.mesh")
    await synced_remote(mesh_env, "cluster1", 1)
    stuck = await mesh_env.add_remote("cluster2", 2)
    await stuck.publish(sample_state("cluster2", 2))  # canaries come later
    fake = FakeClock()
    mesh = await start(mesh_env, clock=fake.clock, heartbeat_timeout=86400.0)
    await wait_until(lambda: remote_ready(mesh, "cluster1"), "cluster1 to sync")
    assert ready_logged(caplog) == []  # cluster2 is still waited for
    await stuck.write_canaries()
    await wait_until(lambda: ready_logged(caplog), "the daemon to log that it is ready")
    assert ready_logged(caplog) == ["KVStoreMesh ready: 2/2 remote clusters ready "
                                    "(0.0s after start)"]


async def test_per_cluster_ready_timeout_drops_an_unreachable_remote(
        mesh_env: MeshEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kvstoremesh.mesh")
    await synced_remote(mesh_env, "cluster1", 1)
    write_unreachable_remote(mesh_env, "cluster2")
    fake = FakeClock()  # the ready timeouts count on it: no waiting for them in real time
    mesh = await start(mesh_env, clock=fake.clock, per_cluster_ready_timeout=15.0)

    # Held back by the unreachable cluster only, once cluster1 has synced.
    status, text = await wait_until(
        lambda: _readyz_if(mesh, lambda t: "cluster2: not connected" in t
                           and "cluster1" not in t), "/readyz to wait for cluster2 only")
    assert status == 500, text
    fake.advance(15.0)  # the timeout, not more: still waited for
    status, text = await http_get(mesh, "health", "/readyz?verbose")
    assert status == 500 and "cluster2: not connected" in text, text
    fake.advance(0.001)
    status, text = await http_get(mesh, "health", "/readyz?verbose")
    assert status == 200, text
    assert text.splitlines()[:2] == [
        "Ready", "cluster2: not waited for (no connection within 15s)"], text
    assert mesh.remotes["cluster1"].status().ready
    assert not mesh.remotes["cluster2"].status().ready
    assert not mesh.remotes["cluster2"].status().ever_connected

    # Ready latches; liveness is unaffected by the dead remote.
    fake.advance(60.0)
    assert await http_get(mesh, "health", "/readyz") == (200, "Ready\n")
    # The readiness watcher, parked until just past the timeout, woke and logged when.
    await wait_until(lambda: ready_logged(caplog), "the daemon to log that it is ready")
    assert ready_logged(caplog) == ["KVStoreMesh ready: 1/2 remote clusters ready "
                                    "(15.0s after start)"]
    assert await http_get(mesh, "health", "/healthz") == (200, "OK\n")
    assert await http_get(mesh, "health", "/healthz?verbose") == (200, "OK\n")


async def test_global_ready_timeout_reports_ready_regardless(mesh_env: MeshEnv) -> None:
    stuck = await mesh_env.add_remote("stuck", 3)
    await stuck.publish(sample_state("stuck", 3))  # connects, but never writes canaries
    fake = FakeClock()
    # A heartbeat timeout longer than the advances below: the session stays up.
    mesh = await start(mesh_env, clock=fake.clock, global_ready_timeout=600.0,
                       heartbeat_timeout=86400.0)

    status, text = await wait_until(
        lambda: _readyz_if(mesh, lambda t: "stuck: waiting for" in t),
        "/readyz to wait for the canaries")
    assert status == 500, text
    fake.advance(600.0)  # the timeout, not more: still waiting for the canaries
    status, text = await http_get(mesh, "health", "/readyz?verbose")
    assert status == 500 and "stuck: waiting for" in text, text
    fake.advance(0.001)
    status, text = await http_get(mesh, "health", "/readyz?verbose")
    assert status == 200, text
    lines = text.splitlines()
    assert lines[:2] == ["Ready", "global ready timeout (600s) elapsed"], text
    assert lines[2].startswith("stuck: waiting for"), text
    # The remote itself is still not ready; the status API says so.
    assert mesh.remotes["stuck"].status().connected
    assert not mesh.remotes["stuck"].status().ready
    (model,) = await api_clusters(mesh)
    assert model["name"] == "stuck" and model["ready"] is False and model["connected"] is True
    assert await http_get(mesh, "health", "/healthz") == (200, "OK\n")


# ------------------------------------------------------------------------ metrics


async def test_metrics_by_value_after_sync_update_and_remote_failure(
        mesh_env: MeshEnv) -> None:
    c1 = await synced_remote(mesh_env, "cluster1", 1, service_exports=True,
                             endpoint_slices=EXPORT_SERVICES_AND_ENDPOINTSLICES)
    # No MCS-API support: no exports; no EndpointSlice export mode: no slices.
    c2 = await synced_remote(mesh_env, "cluster2", 2)
    mesh = await start(mesh_env, status_check_interval=0.3)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()

    _, m = await scrape(mesh)
    # Upstream's newest label sets: the total has none, the per-remote gauges only
    # target_cluster (no source_cluster / source_node_name); no *_created series at all.
    assert m[f"{NS}_remote_clusters"] == [({}, 2)]
    for family in ("remote_cluster_readiness_status", "remote_cluster_failures",
                   "remote_cluster_last_failure_ts"):
        assert [labels for labels, _ in m[f"{NS}_{family}"]] == [
            {"target_cluster": "cluster1"}, {"target_cluster": "cluster2"}], family
    assert [labels for labels, _ in m[f"{NS}_remote_cluster_cache_revocations"]] == [
        {"mode": "enforced", "target_cluster": "cluster1"},
        {"mode": "enforced", "target_cluster": "cluster2"}]
    assert [name for name in m if name.endswith("_created")] == []
    counts = {"cluster1": await expected_counts(c1), "cluster2": await expected_counts(c2)}
    assert counts["cluster2"][SERVICE_EXPORTS.name] == 0  # published, but not supported
    assert counts["cluster1"][SERVICE_EXPORTS.name] == 1
    assert counts["cluster2"][ENDPOINT_SLICES.name] == 0  # published, but not exported
    assert counts["cluster1"][ENDPOINT_SLICES.name] == 2
    for name in ("cluster1", "cluster2"):
        assert metric(m, f"{NS}_remote_cluster_readiness_status", target_cluster=name) == 1
        assert metric(m, f"{NS}_remote_cluster_cache_revocations", target_cluster=name) == 0
        assert metric(m, f"{NS}_remote_cluster_failures", target_cluster=name) == 0
        assert metric(m, f"{NS}_remote_cluster_last_failure_ts", target_cluster=name) == 0
        for resource, count in counts[name].items():
            assert metric(m, f"{NS}_cached_keys", target_cluster=name,
                          resource=resource) == count, (name, resource)
        for resource in RESOURCES:
            scope = "/".join(resource.cache_base.split("/")[2:4])
            how = expected_reflection(resource, mesh_env.remotes[name].config)
            series = sorted((labels["action"], value) for labels, value
                            in m[f"{NS}_kvstore_initial_sync_completed"]
                            if labels["source_cluster"] == name and labels["scope"] == scope)
            # Read if mirrored; written if it has a canary; no series that never turns 1.
            assert series == ([] if how == NOTHING else [("write", 1)] if how != MIRROR
                              else [("read", 1), ("write", 1)]), (name, scope, series)
        assert 0 <= metric(m, f"{NS}_remote_heartbeat_age_seconds", target_cluster=name) < 10
        assert 0 < metric(m, f"{NS}_bootstrap_seconds", source_cluster=name) < 10
    # A resource the remote does not support is never read: no "read" series claims
    # it is incomplete (that would alert forever), as in Cilium, which never starts it.
    assert not [labels for labels, _ in m[f"{NS}_kvstore_initial_sync_completed"]
                if labels["source_cluster"] == "cluster2"
                and labels["scope"] == "serviceexports/v1" and labels["action"] == "read"]
    # Nor for EndpointSlices of a remote that does not export them: no canary, no series.
    assert not [labels for labels, _ in m[f"{NS}_kvstore_initial_sync_completed"]
                if labels["source_cluster"] == "cluster2"
                and labels["scope"] == "endpointslices/v1"]
    # etcd requests were timed, by action and scope, all successful so far.
    ops = f"{NS}_kvstore_operations_duration_seconds"
    assert metric_sum(m, f"{ops}_count", action="GetPrefix", outcome="success") > 0
    assert metric_sum(m, f"{ops}_count", action="Txn", outcome="success") > 0
    assert metric_sum(m, f"{ops}_count", outcome="failure") == 0
    assert {labels["scope"] for labels, _ in m[f"{ops}_count"]} >= {
        "nodes/v1", "services/v1", "identities/v1", "ip/v1", "cluster-config"}
    # The process collectors of the daemon's own registry.
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_start_time_seconds", "process_open_fds"):
        assert m[name][0][1] > 0, name
    assert "python_info" in m

    # A live update is propagated and its lag observed.
    lag = f"{NS}_propagation_lag_seconds"
    before = metric_sum(m, f"{lag}_count", target_cluster="cluster1")
    await c1.put(NODES, "node-new", b'{"Name":"node-new","Cluster":"cluster1","ClusterID":1}')
    await mesh_env.assert_converged()
    m = await wait_until(lambda: _scrape_if(
        mesh, lambda m: metric_sum(m, f"{lag}_count", target_cluster="cluster1") > before),
        "propagation_lag_seconds to count the update")
    assert metric_sum(m, f"{lag}_count", target_cluster="cluster1") == before + 1
    assert 0 <= metric_sum(m, f"{lag}_sum", target_cluster="cluster1") < 5
    assert metric(m, f"{NS}_cached_keys", target_cluster="cluster1",
                  resource=NODES.name) == counts["cluster1"][NODES.name] + 1

    # cluster2's etcd goes away: its failure is counted and timestamped, and its
    # readiness drops to 0 while cluster1 stays at 1.
    stopped_at = time.time()
    await asyncio.to_thread(c2.server.stop)
    m = await wait_until(lambda: _scrape_if(
        mesh, lambda m: metric(m, f"{NS}_remote_cluster_failures",
                               target_cluster="cluster2") >= 1),
        "a failure of cluster2 to be counted")
    last_failure = metric(m, f"{NS}_remote_cluster_last_failure_ts", target_cluster="cluster2")
    assert stopped_at <= last_failure <= time.time()
    assert metric(m, f"{NS}_remote_cluster_readiness_status", target_cluster="cluster2") == 0
    assert metric(m, f"{NS}_remote_cluster_readiness_status", target_cluster="cluster1") == 1
    assert metric(m, f"{NS}_remote_cluster_failures", target_cluster="cluster1") == 0
    assert m[f"{NS}_remote_clusters"] == [({}, 2)]
    # The cache is kept while the remote is away; the daemon stays ready (latched).
    assert metric(m, f"{NS}_cached_keys", target_cluster="cluster2",
                  resource=NODES.name) == counts["cluster2"][NODES.name]
    assert await http_get(mesh, "health", "/readyz") == (200, "Ready\n")
    assert await http_get(mesh, "health", "/healthz") == (200, "OK\n")
    models = {doc["name"]: doc for doc in await api_clusters(mesh)}
    assert models["cluster2"]["ready"] is False and models["cluster2"]["connected"] is False
    assert models["cluster2"]["num-failures"] >= 1
    assert models["cluster1"]["ready"] is True

    # It comes back: readiness returns to 1, the failure history stays.
    await asyncio.to_thread(c2.server.start)
    m = await wait_until(lambda: _scrape_if(
        mesh, lambda m: metric(m, f"{NS}_remote_cluster_readiness_status",
                               target_cluster="cluster2") == 1),
        "cluster2 to be ready again", timeout=15)
    assert metric(m, f"{NS}_remote_cluster_failures", target_cluster="cluster2") >= 1
    assert metric(m, f"{NS}_remote_cluster_last_failure_ts",
                  target_cluster="cluster2") >= last_failure
    await mesh_env.assert_converged()


async def _scrape_if(mesh: KVStoreMesh, accept: Callable[[Samples], bool]) -> Samples | None:
    _, samples = await scrape(mesh)
    return samples if accept(samples) else None


async def test_promtool_accepts_the_metrics(mesh_env: MeshEnv) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian package 'prometheus' provides it)")
    await synced_remote(mesh_env, "cluster1", 1, service_exports=True)
    write_unreachable_remote(mesh_env, "cluster2")  # failures and a last-failure time
    mesh = await start(mesh_env)
    await mesh_env.wait_ready()
    await wait_until(lambda: remote_failures(mesh, "cluster2") >= 1,
                     "cluster2 to fail at least once")
    # One live update, so that the histograms of events and lag have samples too, and
    # one entry validation rejects, so that the rejection counter has a series.
    await mesh_env.remotes["cluster1"].put(
        NODES, "node-new", b'{"Name":"node-new","Cluster":"cluster1","ClusterID":1}')
    await mesh_env.remotes["cluster1"].put(NODES, "node-bad", b"{}")
    await mesh_env.assert_converged()
    text, m = await scrape(mesh)
    assert metric(m, f"{NS}_remote_cluster_failures", target_cluster="cluster2") >= 1
    assert metric_sum(m, f"{NS}_propagation_lag_seconds_count") >= 1
    assert metric(m, f"{NS}_rejected_entries_total", target_cluster="cluster1",
                  resource="nodes", reason="name-mismatch") == 1

    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate(text.encode())
    assert (proc.returncode, out.decode()) == (0, ""), text


async def test_real_prometheus_scrapes_the_readiness_gauge(
        mesh_env: MeshEnv, tmp_path: Path) -> None:
    try:
        find_prometheus_binary()
    except PrometheusNotFound as exc:
        pytest.skip(str(exc))
    await synced_remote(mesh_env, "cluster1", 1)
    mesh = await start(mesh_env)
    await mesh_env.wait_ready()
    target = f"127.0.0.1:{mesh.port('metrics')}"
    prom = PrometheusServer(tmp_path / "prometheus", [target], scrape_interval="1s")
    await asyncio.to_thread(prom.start)
    try:
        async def readiness() -> list[dict[str, Any]]:
            return await asyncio.to_thread(
                prom.query, f"{NS}_remote_cluster_readiness_status")

        result = await wait_until(readiness, "Prometheus to have scraped the gauge",
                                  timeout=15, interval=0.25)
        (series,) = result
        # Only target_cluster, as upstream's newest; Prometheus adds job and instance.
        assert series["metric"] == {
            "__name__": f"{NS}_remote_cluster_readiness_status", "job": "kvstoremesh",
            "instance": target, "target_cluster": "cluster1"}
        assert float(series["value"][1]) == 1
        (up,) = await asyncio.to_thread(prom.query, 'up{job="kvstoremesh"}')
        assert float(up["value"][1]) == 1
        (health,) = await asyncio.to_thread(prom.targets_health)
        assert health["health"] == "up" and health["lastError"] == "", health
    except BaseException:
        print(prom.log_tail())
        raise
    finally:
        await asyncio.to_thread(prom.stop)
    assert not prom.is_running


# ----------------------------------------------------------------------- status API

_NONE = type(None)
_RFC3339_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

#: Cilium's RemoteCluster model (api/v1/openapi.yaml): key -> type or nested schema.
REMOTE_CLUSTER_SCHEMA: dict[str, Any] = {
    "name": str, "ready": bool, "connected": bool, "status": str,
    "num-nodes": int, "num-shared-services": int, "num-service-exports": int,
    "num-identities": int, "num-endpoints": int, "num-failures": int,
    "synced": {"nodes": bool, "services": bool, "service-exports": (bool, _NONE),
               "identities": bool, "endpoints": bool},
    "config": {"required": bool, "retrieved": bool, "cluster-id": int, "kvstoremesh": bool,
               "sync-canaries": bool, "service-exports-enabled": (bool, _NONE)},
}
# Ours, always present too (Cilium main's spelling of its EndpointSlice fields is unverified).
REMOTE_CLUSTER_SCHEMA["num-endpointslices"] = int
REMOTE_CLUSTER_SCHEMA["synced"]["endpointslices"] = (bool, _NONE)
REMOTE_CLUSTER_SCHEMA["config"]["endpointslices-export-mode"] = str
REMOTE_CLUSTER_OPTIONAL: dict[str, Any] = {"last-failure": str, "rejected-entries": dict,
                                           "problems": list}


def schema_errors(doc: Any, schema: dict[str, Any], optional: dict[str, Any] | None = None,
                  path: str = "") -> list[str]:
    """Every way ``doc`` differs from ``schema`` (exact key set; bool is not an int)."""
    optional = optional or {}
    if not isinstance(doc, dict):
        return [f"{path or '.'}: expected an object, got {type(doc).__name__}"]
    errors = [f"{path}.{key}: missing" for key in schema if key not in doc]
    errors += [f"{path}.{key}: unexpected" for key in doc
               if key not in schema and key not in optional]
    for key, value in doc.items():
        spec = schema.get(key, optional.get(key))
        if spec is None:
            continue
        if isinstance(spec, dict):
            errors += schema_errors(value, spec, path=f"{path}.{key}")
            continue
        types = spec if isinstance(spec, tuple) else (spec,)
        if isinstance(value, bool) and bool not in types:
            errors.append(f"{path}.{key}: expected {types}, got a bool")
        elif not isinstance(value, types):
            errors.append(f"{path}.{key}: expected {types}, got {value!r}")
    return errors


def assert_model(doc: dict[str, Any]) -> None:
    errors = schema_errors(doc, REMOTE_CLUSTER_SCHEMA, REMOTE_CLUSTER_OPTIONAL)
    assert not errors, (errors, doc)
    for key in doc:
        if key.startswith("num-"):
            assert doc[key] >= 0, (key, doc)
    if "last-failure" in doc:
        assert _RFC3339_MILLIS.match(doc["last-failure"]), doc["last-failure"]


def test_schema_checker_rejects_what_it_should() -> None:
    good = {"a": 1, "b": {"c": True, "d": None}}
    schema = {"a": int, "b": {"c": bool, "d": (bool, _NONE)}}
    assert schema_errors(good, schema) == []
    assert schema_errors({"a": True, "b": {"c": 1, "d": "x"}}, schema) == [
        ".a: expected (<class 'int'>,), got a bool",
        ".b.c: expected (<class 'bool'>,), got 1",
        ".b.d: expected (<class 'bool'>, <class 'NoneType'>), got 'x'"]
    assert schema_errors({"a": 1, "b": {"c": True}, "z": 0}, schema) == [
        ".z: unexpected", ".b.d: missing"]


async def test_status_api_models_are_sorted_typed_and_counted(mesh_env: MeshEnv) -> None:
    # Added out of order; cluster10 shares cluster1's etcd.  EndpointSlice export modes:
    # both, only slices (no legacy services), none (a 1.18/1.19 peer).
    c2 = await synced_remote(mesh_env, "cluster2", 2, service_exports=False,
                             endpoint_slices=EXPORT_ENDPOINTSLICES_ONLY)
    c1 = await synced_remote(mesh_env, "cluster1", 1, service_exports=True,
                             endpoint_slices=EXPORT_SERVICES_AND_ENDPOINTSLICES)
    await synced_remote(mesh_env, "cluster10", 10, server=c1.server)  # exports unsupported
    write_unreachable_remote(mesh_env, "dead")
    mesh = await start(mesh_env)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    await wait_until(lambda: remote_failures(mesh, "dead") >= 1, "dead to fail")

    models = await api_clusters(mesh)
    assert [doc["name"] for doc in models] == ["cluster1", "cluster10", "cluster2", "dead"]
    for doc in models:
        assert_model(doc)
    by_name = {doc["name"]: doc for doc in models}
    for remote, exports in ((c1, True), (mesh_env.remotes["cluster10"], None), (c2, False)):
        doc = by_name[remote.name]
        counts = await expected_counts(remote)
        mode = remote.config.endpoint_slices_export_mode
        assert doc["ready"] is True and doc["connected"] is True, doc
        assert doc["status"].startswith("etcd: 1/1 connected: http://127.0.0.1:"), doc
        assert doc["status"].endswith(f"ID: {remote.server.cluster_id():x}"), doc
        assert (doc["num-nodes"], doc["num-endpoints"], doc["num-identities"],
                doc["num-shared-services"], doc["num-service-exports"],
                doc["num-endpointslices"]) == (
            counts[NODES.name], counts[ENDPOINTS.name], counts[IDENTITIES.name],
            counts[SERVICES.name], counts[SERVICE_EXPORTS.name],
            counts[ENDPOINT_SLICES.name]), doc
        assert doc["num-failures"] == 0 and "last-failure" not in doc, doc
        # "services" is synced (its canary written) even when only slices are exported.
        assert doc["synced"] == {"nodes": True, "services": True,
                                 "service-exports": True if exports is not None else None,
                                 "identities": True, "endpoints": True,
                                 "endpointslices": True if mode else None}
        assert doc["config"] == {"required": True, "retrieved": True,
                                 "cluster-id": remote.config.id, "kvstoremesh": False,
                                 "sync-canaries": True, "service-exports-enabled": exports,
                                 "endpointslices-export-mode": mode}
    # The counts differ by mode: none of the sample's 2 services or 2 slices is lost or
    # invented.
    assert [(by_name[n]["num-shared-services"], by_name[n]["num-endpointslices"])
            for n in ("cluster1", "cluster10", "cluster2")] == [(2, 2), (2, 0), (0, 2)]

    dead = by_name["dead"]
    assert dead["ready"] is False and dead["connected"] is False
    assert dead["num-failures"] >= 1
    failed_at = datetime.strptime(dead["last-failure"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs((datetime.now(UTC).replace(tzinfo=None) - failed_at).total_seconds()) < 30
    assert dead["status"], dead  # the error that made it fail
    assert dead["synced"] == {"nodes": False, "services": False, "service-exports": None,
                              "identities": False, "endpoints": False, "endpointslices": None}
    assert dead["config"] == {"required": True, "retrieved": False, "cluster-id": 0,
                              "kvstoremesh": False, "sync-canaries": False,
                              "service-exports-enabled": None,
                              "endpointslices-export-mode": ""}
    assert all(dead[key] == 0 for key in dead if key.startswith("num-") and key != "num-failures")


async def test_no_credentials_in_any_output(mesh_env: MeshEnv, etcd_factory: EtcdFactory,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password, wrong_password, root_password = "alice-S3cret-9f1e", "Wr0ng-pw-77ad", "r00t-4c2b"
    server = etcd_factory(name="remote-secure", extra_args=["--auth-token=simple"])
    secure = await mesh_env.add_remote("secure", 5, server=server, write_file=False)
    await secure.publish(sample_state("secure", 5))
    await secure.write_canaries()
    enable_auth(server, root_password=root_password, users={"alice": password},
                roles={"cilium-ro": [("read", "cilium/", True)]}, grants={"alice": ["cilium-ro"]})
    # The daemon reads as alice; the test's own client becomes root.
    server.client_config(mesh_env.dir / "remote-secure.yaml", username="alice",
                         password=password)
    root_config = server.client_config(mesh_env.dir / "root-secure.yaml", username="root",
                                       password=root_password)
    await secure.client.close()
    secure.client = EtcdClient(load_etcd_config(root_config), name="test secure root")
    await secure.client.connect()
    mesh_env.write_remote_file(secure)
    # A second cluster on the same etcd whose password is wrong: its error is shown.
    tmp = mesh_env.dir / ".wrongpw"
    server.client_config(tmp, username="alice", password=wrong_password)
    tmp.replace(mesh_env.config_dir / "wrongpw")

    mesh = await start(mesh_env)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    await wait_until(lambda: remote_failures(mesh, "wrongpw") >= 1,
                     "wrongpw to fail authentication")
    client = mesh.remotes["secure"].session_client
    assert client is not None and client._token, "the daemon should hold an auth token"
    secrets = {"password": password, "wrong password": wrong_password,
               "root password": root_password, "token": client._token}

    outputs = {path: (await http_get(mesh, server_name, path))[1] for server_name, path in (
        ("api", "/v1/cluster"), ("metrics", "/metrics"), ("health", "/readyz?verbose"),
        ("health", "/readyz"), ("health", "/healthz"), ("health", "/healthz?verbose"))}
    outputs["logs"] = caplog.text
    models = {doc["name"]: doc for doc in await api_clusters(mesh)}
    assert models["secure"]["ready"] is True
    assert models["wrongpw"]["connected"] is False
    assert "authentication failed" in models["wrongpw"]["status"], models["wrongpw"]
    assert "wrongpw: not connected" in outputs["/readyz?verbose"]  # the error is shown...
    for where, text in outputs.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} leaked in {where}"  # ...never a secret


# -------------------------------------------------------------------------- SIGTERM


async def test_sigterm_exits_cleanly_and_keeps_the_cache(mesh_env: MeshEnv,
                                                        tmp_path: Path) -> None:
    await synced_remote(mesh_env, "cluster1", 1, service_exports=True)
    health, api = free_port(), free_port()
    log_file = tmp_path / "kvstoremesh.log"
    with log_file.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvstoremesh.main", "--cluster-name", "local",
            "--cluster-id", "200", "--clustermesh-config", str(mesh_env.config_dir),
            "--kvstore-opt", f"etcd.config={mesh_env.local_config}",
            "--health-port", str(health), "--api-serve-addr", f"127.0.0.1:{api}",
            cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        async def ready() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"daemon exited early ({proc.returncode}):\n"
                                     f"{log_file.read_text()}")
            try:
                async with aiohttp.ClientSession() as session, session.get(
                        f"http://127.0.0.1:{health}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(ready, "the daemon's /readyz to answer 200", timeout=20, interval=0.1)
        await mesh_env.assert_converged()
        before = await mesh_env.local_tree()

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            code = await proc.wait()
        took = time.monotonic() - sent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    logs = log_file.read_text()
    assert code == 0, logs
    assert took < 5, (took, logs)
    assert "shutting down" in logs
    assert "Traceback" not in logs, logs
    # Shutdown never drains: every cached key (and canary, and cluster-config) is still there.
    assert await mesh_env.local_tree() == before
    await mesh_env.assert_converged(timeout=0)
