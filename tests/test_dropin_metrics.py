"""Drop-in behaviour of the flags upstream's daemons share with ours, against real etcd:

* the heartbeat writer both daemons use (``--enable-heartbeat`` for KVStoreMesh), its
  timer driven by a fake clock;
* the local etcd quorum check (``--kvstore-max-consecutive-quorum-errors``) against an
  etcd that is paused (SIGSTOP: it hangs) or stopped, in isolation and in both daemons;
* ``--controller-group-metrics`` (only the selected groups are exported);
* ``--disable-drain-on-disconnection`` (a removed cluster keeps everything);
* the cache revocation gauge, and every series upstream documents for the two daemons
  present on a real scrape (the list the README's "Metrics compared with upstream"
  shows), with no ``*_created`` series.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import EtcdServer, free_port, waiting, write_client_config
from harness.fakeclock import FakeClock
from harness.mesh import MeshEnv, Remote, read_tree, sample_state
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apiserver.daemon import ApiServer, ApiserverOptions
from apiserver.sources.manifests import ManifestSource
from clustermesh.controllers import ControllerRuns, selected_groups
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.heartbeat import write_heartbeats
from clustermesh.keys import HEARTBEAT_KEY, SERVICES, cluster_config_key
from clustermesh.metrics import KVStoreMetrics
from clustermesh.quorum import QuorumCheck
from clustermesh.serving import bound_port

NS = "cilium_kvstoremesh"
API_NS = "cilium_clustermesh_apiserver"
RUNS = "controllers_group_runs_total"
# Upstream's documented series (Documentation/observability/metrics.rst, newest
# pkg/clustermesh/common/metrics.go); the README lists the same.
KVSTORE = ("kvstore_operations_duration_seconds", "kvstore_events_queue_seconds",
           "kvstore_quorum_errors_total", "kvstore_sync_errors_total",
           "kvstore_sync_queue_size", "kvstore_initial_sync_completed")
UPSTREAM_KVSTOREMESH = ("bootstrap_seconds", "remote_clusters", "remote_cluster_failures",
                        "remote_cluster_last_failure_ts", "remote_cluster_readiness_status",
                        "remote_cluster_cache_revocations", *KVSTORE, RUNS)
UPSTREAM_APISERVER = ("bootstrap_seconds", *KVSTORE, RUNS)

Samples = dict[str, list[tuple[dict[str, str], float]]]


# Apiserver and KVStoreMesh start-up and first scrapes: 15 s here, as before the move.
wait_until = functools.partial(waiting.wait_until, timeout=15.0)


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


def parse(text: str) -> tuple[set[str], Samples]:
    """Family names (counters with ``_total``, as exposed) and samples by name."""
    families, samples = set(), {}
    for family in text_string_to_metric_families(text):
        families.add(family.name + "_total" if family.type == "counter" else family.name)
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return families, samples


def runs(samples: Samples, ns: str) -> dict[tuple[str, str], float]:
    return {(labels["group_name"], labels["status"]): value
            for labels, value in samples.get(f"{ns}_{RUNS}", [])}


def registry_runs(registry: CollectorRegistry, ns: str) -> dict[tuple[str, str], float]:
    return runs(parse(generate_latest(registry).decode())[1], ns)


def metric_value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for have, v in samples.get(name, [])
               if all(have.get(k) == want for k, want in labels.items()))


async def status_is_not(port: int, path: str, status: int) -> tuple[int, str] | None:
    result = await get(port, path)
    return None if result[0] == status else result


async def synced_remote(env: MeshEnv, name: str, cluster_id: int) -> Remote:
    remote = await env.add_remote(name, cluster_id)
    await remote.publish(sample_state(name, cluster_id))
    await remote.write_canaries()
    return remote


@pytest.fixture
async def client(etcd: EtcdServer, tmp_path: Path) -> Any:
    config = etcd.client_config(tmp_path / "etcd.yaml")
    async with EtcdClient(load_etcd_config(config), name="local etcd",
                          dial_timeout=1.0) as c:
        yield c


def test_controller_group_selection() -> None:
    assert selected_groups(["all"]) is None
    assert selected_groups(["a,b", "c d"]) == {"a", "b", "c", "d"}
    assert selected_groups(["none"]) == selected_groups([]) == frozenset()
    assert selected_groups(["x", "all"]) is None
    metrics = KVStoreMetrics("t", controller_groups=["kept"])
    for group, ok in (("kept", True), ("kept", False), ("other", True), ("other", False)):
        with pytest.raises(RuntimeError) if not ok else contextlib.nullcontext(), \
                metrics.controllers.run(group):
            if not ok:
                raise RuntimeError("boom")
    assert registry_runs(metrics.registry, "t") == {("kept", "success"): 1,
                                                     ("kept", "failure"): 1}


async def test_cancelled_run_is_not_counted() -> None:
    registry = CollectorRegistry()
    runs_ = ControllerRuns(namespace="t", registry=registry, groups=["all"])

    entered = asyncio.Event()

    async def hang() -> None:
        with runs_.run("g"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert registry_runs(registry, "t") == {}


async def test_heartbeat_at_start_every_interval_and_after_a_failure(
        client: EtcdClient, etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeClock()
    registry = CollectorRegistry()
    runs_ = ControllerRuns(namespace="t", registry=registry, groups=["all"])
    task = asyncio.create_task(write_heartbeats(client, runs=runs_, clock=fake.clock))
    try:
        await fake.wait_for_sleeps(1)
        assert (await client.get(HEARTBEAT_KEY.encode())).value == b"2023-11-14T22:13:20Z"
        fake.advance(60.0)
        await fake.wait_for_sleeps(2)
        assert (await client.get(HEARTBEAT_KEY.encode())).value == b"2023-11-14T22:14:20Z"
        assert fake.sleeps == [60.0, 60.0]
        await asyncio.to_thread(etcd.stop)
        fake.advance(60.0)
        await fake.wait_for_sleeps(3)  # the failed write was logged, and the loop went on
        assert "heartbeat write failed" in caplog.text
        await asyncio.to_thread(etcd.start)
        fake.advance(60.0)
        await fake.wait_for_sleeps(4)
        assert (await client.get(HEARTBEAT_KEY.encode())).value == b"2023-11-14T22:16:20Z"
    finally:
        task.cancel()
    assert registry_runs(registry, "t") == {("kvstore-heartbeat", "success"): 3,
                                            ("kvstore-heartbeat", "failure"): 1}


async def test_quorum_check_on_a_hung_then_a_stopped_etcd(
        client: EtcdClient, etcd: EtcdServer) -> None:
    metrics = KVStoreMetrics("t", controller_groups=["all"])
    check = QuorumCheck(client, metrics=metrics, max_errors=2, interval=0.5)
    assert await check.check_once() and check.problem is None
    etcd.pause()
    try:
        for failures in (1, 2):
            assert not await check.check_once()
            assert (check.consecutive, check.problem, check.reconnects) == (failures, None, 0)
        assert not await check.check_once()  # the third in a row: beyond the limit
        assert check.problem is not None and check.reconnects == 1
        assert "3 consecutive quorum check failures" in check.problem
        assert "--kvstore-max-consecutive-quorum-errors=2" in check.problem
    finally:
        etcd.resume()
    assert await check.check_once()  # on the recreated connection
    assert (check.consecutive, check.problem) == (0, None)
    await asyncio.to_thread(etcd.stop)
    assert not await check.check_once()
    _, samples = parse(generate_latest(metrics.registry).decode())
    assert {labels["error"]: value for labels, value
            in samples["t_kvstore_quorum_errors_total"]} == {"timeout": 3, "unavailable": 1}
    assert runs(samples, "t") == {("kvstore-quorum-check", "success"): 2,
                                  ("kvstore-quorum-check", "failure"): 4}


async def test_quorum_check_waits_less_while_failing(client: EtcdClient,
                                                     etcd: EtcdServer) -> None:
    fake = FakeClock()
    check = QuorumCheck(client, metrics=KVStoreMetrics("t"), max_errors=2, interval=30.0,
                        clock=fake.clock)
    await asyncio.to_thread(etcd.stop)
    task = asyncio.create_task(check.run())
    try:
        await fake.wait_for_sleeps(1)
        await asyncio.to_thread(etcd.start)
        fake.advance(5.0)
        await fake.wait_for_sleeps(2)
    finally:
        task.cancel()
    assert fake.sleeps == [5.0, 30.0] and check.consecutive == 0


async def test_kvstoremesh_heartbeat_and_controller_groups(mesh_env: MeshEnv) -> None:
    await synced_remote(mesh_env, "cluster1", 1)
    write_client_config(mesh_env.config_dir / "cluster2",
                        endpoints=[f"http://127.0.0.1:{free_port()}"])  # never connects
    mesh = await mesh_env.start_mesh(enable_heartbeat=True, per_cluster_ready_timeout=0.5,
                                     controller_group_metrics=("all",))
    await wait_until(lambda: "cluster1" in mesh.remotes and mesh.remotes["cluster1"].status().ready,
                     "cluster1 to be ready")
    beat = await wait_until(lambda: mesh_env.local.get(HEARTBEAT_KEY.encode()),
                            "the heartbeat in the local etcd")
    assert len(beat.value) == 20 and beat.value.endswith(b"Z")
    status, text = await get(mesh.port("metrics"), "/metrics")
    assert status == 200
    counted = runs(parse(text)[1], NS)
    for group in ("kvstore-heartbeat", "kvstore-quorum-check", "cluster-config-refresh",
                  "clustermesh-remote-cluster"):
        assert counted.get((group, "success"), 0) >= 1, (group, counted)
    assert counted[("clustermesh-remote-cluster", "failure")] >= 1  # cluster2
    await mesh_env.stop_mesh()

    # Only the selected group; and no heartbeat without --enable-heartbeat.
    await mesh_env.local.delete(HEARTBEAT_KEY.encode())
    mesh = await mesh_env.start_mesh(controller_group_metrics=("kvstore-quorum-check",))
    await wait_until(lambda: registry_runs(mesh.metrics.registry, NS),
                     "a quorum check to be counted")
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "quorum-check" in names and "heartbeat" not in names  # created together
    assert set(registry_runs(mesh.metrics.registry, NS)) == {
        ("kvstore-quorum-check", "success")}
    assert await mesh_env.local.get(HEARTBEAT_KEY.encode()) is None


async def test_kvstoremesh_paused_local_etcd_turns_it_unhealthy_until_it_answers(
        mesh_env: MeshEnv) -> None:
    await synced_remote(mesh_env, "cluster1", 1)
    mesh = await mesh_env.start_mesh(status_check_interval=0.3,
                                     max_consecutive_quorum_errors=2)
    await mesh_env.wait_ready()
    health = mesh.port("health")
    assert await get(health, "/healthz") == (200, "OK\n")
    mesh_env.local_server.pause()
    try:
        status, text = await wait_until(
            lambda: status_is_not(health, "/healthz?verbose", 200), "/healthz to fail")
        assert status == 500 and "consecutive quorum check failures" in text, text
        status, text = await get(health, "/readyz?verbose")
        assert status == 500 and "consecutive quorum check failures" in text, text
        _, samples = parse((await get(mesh.port("metrics"), "/metrics"))[1])
        assert metric_value(samples, f"{NS}_kvstore_quorum_errors_total", error="timeout") >= 3
        await wait_until(lambda: mesh.quorum is not None and mesh.quorum.reconnects >= 1,
                         "the etcd connection to be recreated")
    finally:
        mesh_env.local_server.resume()
    await wait_until(lambda: status_is_not(health, "/healthz", 500), "/healthz to recover",
                     timeout=20)
    assert await get(health, "/healthz") == (200, "OK\n")
    assert await get(health, "/readyz") == (200, "Ready\n")
    await mesh_env.assert_converged()


async def test_apiserver_paused_etcd_turns_it_unhealthy_until_it_answers(
        etcd: EtcdServer, tmp_path: Path) -> None:
    server = ApiServer(ApiserverOptions(
        cluster_name="cluster1", cluster_id=1, local_config=etcd.client_config(
            tmp_path / "etcd.yaml"), health_port=0, prometheus_serve_addr="127.0.0.1:0",
        status_check_interval=0.3, max_consecutive_quorum_errors=1),
        ManifestSource(tmp_path / "manifests", interval=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        await wait_until(lambda: server.ready()[0], "the apiserver to be ready")
        health = bound_port(server.runners["health"])
        etcd.pause()
        try:
            status, text = await wait_until(
                lambda: status_is_not(health, "/healthz?verbose", 200), "/healthz to fail")
            assert status == 500 and "2 consecutive quorum check failures" in text, text
            assert "--kvstore-max-consecutive-quorum-errors=1" in text
            status, text = await get(health, "/readyz?verbose")
            assert status == 500 and "consecutive quorum check failures" in text, text
            _, samples = parse((await get(bound_port(server.runners["metrics"]),
                                          "/metrics"))[1])
            assert metric_value(samples, f"{API_NS}_kvstore_quorum_errors_total",
                                error="timeout") >= 2
        finally:
            etcd.resume()
        await wait_until(lambda: status_is_not(health, "/healthz", 500),
                         "/healthz to recover", timeout=20)
        assert await get(health, "/readyz") == (200, "Ready\n")
    finally:
        stop.set()
        await task


async def test_disable_drain_keeps_a_removed_cluster_and_orphans(
        mesh_env: MeshEnv, caplog: pytest.LogCaptureFixture) -> None:
    await synced_remote(mesh_env, "cluster1", 1)
    mesh = await mesh_env.start_mesh(disable_drain_on_disconnection=True)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    cached = await read_tree(mesh_env.local)
    assert cluster_config_key("cluster1").encode() in cached
    caplog.set_level(logging.WARNING, logger="kvstoremesh.mesh")

    mesh_env.remove_remote_file("cluster1")
    await wait_until(lambda: "is kept (--disable-drain-on-disconnection)" in caplog.text,
                     "the removal to be logged")
    # cluster_removed() registers a removal before it returns: none was.
    assert "cluster1" not in mesh.remotes and not mesh.removals_in_progress()
    assert await read_tree(mesh_env.local) == cached
    await mesh_env.stop_mesh()

    mesh = await mesh_env.start_mesh(disable_drain_on_disconnection=True)  # now an orphan
    await wait_until(lambda: "cluster1: cached but no longer configured; kept" in caplog.text,
                     "the orphan to be logged")
    assert not mesh.removals_in_progress()
    assert await read_tree(mesh_env.local) == cached


async def test_cache_revocation_is_counted(mesh_env: MeshEnv) -> None:
    remote = await synced_remote(mesh_env, "cluster1", 1)
    fake = FakeClock()  # the cache TTL is reached by advancing it
    mesh = await mesh_env.start_mesh(clock=fake.clock, cache_ttl=60.0,
                                     heartbeat_timeout=86400.0)
    await mesh_env.wait_ready()
    prefix = SERVICES.cache_prefix("cluster1").encode()
    assert any(k.startswith(prefix) for k in await read_tree(mesh_env.local))
    port = mesh.port("metrics")

    async def revocations() -> list[tuple[dict[str, str], float]]:
        _, samples = parse((await get(port, "/metrics"))[1])
        return samples[f"{NS}_remote_cluster_cache_revocations"]

    assert await revocations() == [({"mode": "enforced", "target_cluster": "cluster1"}, 0)]
    await asyncio.to_thread(remote.server.stop)

    async def disconnected() -> bool:  # seen by the session's status checks, on the clock
        fake.advance(1.0)
        return mesh.remotes["cluster1"].status().disconnected_since is not None

    await wait_until(disconnected, "cluster1 to notice the disconnection")
    fake.advance(60.0 + 5.0)  # the TTL, and the revocation loop's period

    async def revoked() -> bool:
        return await revocations() == [
            ({"mode": "enforced", "target_cluster": "cluster1"}, 1)]

    await wait_until(revoked, "the revocation to be counted")
    assert not any(k.startswith(prefix) for k in await read_tree(mesh_env.local))


async def test_every_documented_series_is_exported_and_no_created(
        mesh_env: MeshEnv, tmp_path: Path) -> None:
    await synced_remote(mesh_env, "cluster1", 1)
    mesh = await mesh_env.start_mesh(controller_group_metrics=("all",))
    await mesh_env.wait_ready()
    families, samples = parse((await get(mesh.port("metrics"), "/metrics"))[1])
    assert {f"{NS}_{name}" for name in UPSTREAM_KVSTOREMESH} <= families
    assert not [name for name in samples if name.endswith("_created")]

    server = ApiServer(ApiserverOptions(
        cluster_name="local", cluster_id=200, local_config=mesh_env.local_config,
        health_port=0, prometheus_serve_addr="127.0.0.1:0", heartbeat_interval=3600,
        controller_group_metrics=("all",)), ManifestSource(tmp_path / "manifests"))
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        await wait_until(lambda: server.publisher is not None and "metrics" in server.runners,
                         "the apiserver to start")
        port = bound_port(server.runners["metrics"])

        async def scraped() -> tuple[set[str], Samples] | None:
            result = parse((await get(port, "/metrics"))[1])
            return result if runs(result[1], API_NS) else None

        families, samples = await wait_until(scraped, "the apiserver's controllers to run")
        assert {f"{API_NS}_{name}" for name in UPSTREAM_APISERVER} <= families
        assert not [name for name in samples if name.endswith("_created")]
        assert not [name for name in samples if name.startswith("go_")]  # not a Go program
        assert {("kvstore-heartbeat", "success"), ("kvstore-quorum-check", "success")} <= set(
            runs(samples, API_NS))
        assert await mesh_env.local.get(HEARTBEAT_KEY.encode()) is not None
    finally:
        stop.set()
        await task
