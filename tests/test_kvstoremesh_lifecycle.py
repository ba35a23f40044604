"""KVStoreMesh life cycle against real etcd: the config directory, cluster removal,
orphans, the session checks (heartbeat, etcd cluster ID), a local leader loss and
the cache TTL.

The removal grace and the cache TTL are the daemon's own timers: those tests run it on
a fake clock (:mod:`harness.fakeclock`) and advance it, so they wait for no timer in
real time and can check the instant before a deadline as well as the one after.

Every test ends with ``assert_converged``: the whole local ``cilium/`` tree must
equal what the configured remotes hold, translated to the cache layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import EtcdFactory
from harness.fakeclock import FakeClock
from harness.mesh import MeshEnv, Remote, read_tree, sample_state, tree_revisions
from harness.waiting import wait_until

from clustermesh.clusterconfig import EXPORT_SERVICES_AND_ENDPOINTSLICES
from clustermesh.etcd.client import EtcdClient, prefix_range_end, put_op
from clustermesh.etcd.watch import DELETE, PUT
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IDENTITIES,
    NODES,
    RESOURCES,
    SERVICE_EXPORTS,
    SERVICES,
    cluster_config_key,
    synced_prefix,
)
from kvstoremesh.mesh import KVStoreMesh
from kvstoremesh.resources import REVOKED_ON_TTL

# ------------------------------------------------------------------------ helpers




def is_cluster_key(key: bytes, name: str) -> bool:
    """Whether a local key holds data of remote cluster ``name`` (config, canary or cache)."""
    return (key == cluster_config_key(name).encode()
            or key.startswith(synced_prefix(name).encode())
            or any(key.startswith(r.cache_prefix(name).encode()) for r in RESOURCES))


def cluster_part(tree: dict[bytes, object], name: str) -> dict[bytes, object]:
    return {k: v for k, v in tree.items() if is_cluster_key(k, name)}


@dataclass(frozen=True)
class Seen:
    type: int  # PUT or DELETE
    key: bytes
    revision: int


class Recorder:
    """Every change under ``cilium/`` of the local etcd, with the time it was seen."""

    SENTINEL = b"cilium/state/test-recorder"  # outside MeshEnv.local_tree()

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.events: list[Seen] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        revision = (await self.client.range(b"cilium/", count_only=True)).header.revision
        self._task = asyncio.create_task(self._run(revision + 1))
        # Timestamps are only meaningful once the stream is live: wait for our own write.
        await self.client.put(self.SENTINEL, b"x")
        await wait_until(lambda: any(e.key == self.SENTINEL for e in self.events),
                         "the recorder's watch to start", timeout=5)

    async def _run(self, start_revision: int) -> None:
        async with self.client.watch(b"cilium/", start_revision=start_revision) as watch:
            async for batch in watch:
                for event in batch.events:
                    self.events.append(Seen(event.type, bytes(event.kv.key),
                                            event.kv.mod_revision))

    async def sync(self) -> None:
        """Return once every change made before the call is recorded: a write of ours
        after them has been."""
        revision = await self.client.put(self.SENTINEL, b"sync")
        await wait_until(lambda: any(e.key == self.SENTINEL and e.revision >= revision
                                     for e in self.events), "the recorder to catch up",
                         timeout=5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.delete(self.SENTINEL)

    def of(self, name: str) -> list[Seen]:
        return [e for e in self.events if is_cluster_key(e.key, name)]


async def add_published(env: MeshEnv, name: str, cluster_id: int, *,
                        write_file: bool = True, **kwargs: object) -> Remote:
    """A remote with sample state and all its sync canaries."""
    remote = await env.add_remote(name, cluster_id, write_file=False, **kwargs)  # type: ignore[arg-type]
    await remote.publish(sample_state(name, cluster_id))
    await remote.write_canaries()
    if write_file:
        env.write_remote_file(remote)
    return remote


def write_atomically(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


async def count_prefix(client: EtcdClient, prefix: bytes) -> int:
    return (await client.range(prefix, prefix_range_end(prefix), count_only=True)).count


# The fake-clock tests: time moves only when the test advances it (harness.fakeclock).
POLL = 0.05  # MeshEnv's config_poll_interval: one poll of the directory
GRACE = 120.0  # --cluster-removal-grace; no other timer of the daemon asks for this delay
TTL = 60.0  # --clustermesh-cache-ttl


async def start_on(env: MeshEnv, fake: FakeClock, **overrides: object) -> KVStoreMesh:
    """The daemon with every timer on ``fake``; a heartbeat timeout long enough that
    advancing the clock never ends a session by itself."""
    return await env.start_mesh(clock=fake.clock, removal_grace=GRACE,
                                heartbeat_timeout=86400.0, **overrides)


async def removal_in_grace(env: MeshEnv, fake: FakeClock, name: str, *,
                           graces: int = 1) -> None:
    """One poll of the directory (whose file for ``name`` is gone), then until the
    removal deleted the cluster-config and waits on the clock for the grace (the
    ``graces``-th one asked for): the sentinel that nothing else of it is deleted before
    the test advances the clock."""
    fake.advance(POLL)
    config_key = cluster_config_key(name).encode()

    async def parked() -> bool:
        return (fake.sleeps.count(GRACE) >= graces
                and await env.local.get(config_key) is None)

    await wait_until(parked, f"the removal of {name} to wait for the grace", timeout=5)


async def until_advancing(fake: FakeClock, check: Callable[[], bool], what: str, *,
                          step: float, timeout: float = 15.0) -> None:
    """Advance ``fake`` by ``step`` at each poll until ``check()`` (what it waits for
    needs real time, e.g. a connection, and timers on the clock, e.g. a backoff)."""
    async with asyncio.timeout(timeout):
        while not check():
            fake.advance(step)
            await asyncio.sleep(0.05)
    assert check(), what


# -------------------------------------------------------------------------- tests


async def test_config_dir_add_change_remove_while_running(mesh_env: MeshEnv) -> None:
    await add_published(mesh_env, "cluster1", 1)
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    mesh = mesh_env.mesh
    assert mesh is not None

    # A new file: cluster2 is mirrored while the daemon runs.
    c2 = await add_published(mesh_env, "cluster2", 2)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    assert b"cilium/cache/nodes/v1/cluster2/node-0" in await mesh_env.local_tree()

    # cluster1's file now points at another etcd holding other data for the same name.
    old = mesh_env.remotes["cluster1"]
    other = mesh_env.factory(name="remote-cluster1-b")
    new = await mesh_env.add_remote("cluster1", 1, server=other, service_exports=True,
                                    write_file=False)
    state = sample_state("cluster1", 1, nodes=1, endpoints=1, services=1)
    state[NODES]["node-0"] = b'{"Name":"node-0","Cluster":"cluster1","ClusterID":1,"moved":true}'
    state[NODES]["node-b"] = b'{"Name":"node-b","Cluster":"cluster1","ClusterID":1}'
    await new.publish(state)
    await new.write_canaries()
    mesh_env.write_remote_file(new)
    await mesh_env.assert_converged()
    await mesh_env.wait_ready()
    local = await mesh_env.local_tree()
    assert local[b"cilium/cache/nodes/v1/cluster1/node-0"] == (
        b'{"Name":"node-0","Cluster":"cluster1","ClusterID":1,"moved":true}')
    for stale in (b"cilium/cache/nodes/v1/cluster1/node-1",
                  b"cilium/cache/ip/v1/cluster1/10.1.0.6",
                  b"cilium/cache/services/v1/cluster1/default/svc-1"):
        assert stale not in local, stale
    assert b"cilium/cache/serviceexports/v1/cluster1/default/svc-0" in local
    assert mesh.remotes["cluster1"].status().etcd_cluster_id == other.cluster_id()
    # The old etcd is no longer followed: a node put there is not cached by the time a
    # later one put on the new etcd is (the sentinel, through the same reflector path).
    await old.put(NODES, "ghost", b'{"Name":"ghost","Cluster":"cluster1","ClusterID":1}')
    await mesh_env.mirror_sentinel(new, "after-ghost")
    assert b"cilium/cache/nodes/v1/cluster1/ghost" not in await mesh_env.local_tree()
    await old.client.close()

    # The file of cluster2 goes: every key of it goes (cache, canaries, cluster-config).
    assert cluster_part(await mesh_env.local_tree(), "cluster2")
    mesh_env.remove_remote_file("cluster2")
    await mesh_env.assert_converged()
    assert not cluster_part(await read_tree(mesh_env.local), "cluster2")
    assert "cluster2" not in mesh.remotes
    # ... and stays gone: nothing of it is written any more (checked once a later put on
    # a remote still configured has been mirrored: the sentinel).
    await c2.put(NODES, "node-late", b'{"Name":"node-late","Cluster":"cluster2","ClusterID":2}')
    await mesh_env.mirror_sentinel(new, "after-node-late")
    assert not cluster_part(await read_tree(mesh_env.local), "cluster2")
    await c2.client.close()
    await mesh_env.assert_converged()


async def test_removal_order_and_grace(mesh_env: MeshEnv) -> None:
    # "cluster10" shares the prefix "cluster1": removing cluster1 must not touch it.
    # cluster1 exports EndpointSlices, so that every resource has something to remove.
    await add_published(mesh_env, "cluster1", 1,
                        endpoint_slices=EXPORT_SERVICES_AND_ENDPOINTSLICES)
    await add_published(mesh_env, "cluster10", 10)
    fake = FakeClock()
    mesh = await start_on(mesh_env, fake)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()

    before = await tree_revisions(mesh_env.local)
    doomed = set(cluster_part(before, "cluster1"))
    config_key = cluster_config_key("cluster1").encode()
    kept = {k: r for k, r in before.items() if k not in doomed}
    assert cluster_part(kept, "cluster10")
    recorder = Recorder(mesh_env.local)
    await recorder.start()
    removed = mesh_env.remove_remote_file("cluster1")
    try:
        await removal_in_grace(mesh_env, fake, "cluster1")
        # The cluster-config went at once; the rest waits for the clock, even one
        # instant before the grace is over.
        fake.advance(GRACE - 0.001)
        await fake.settle()
        assert mesh.removals_in_progress() == {"cluster1"}
        assert set(cluster_part(await tree_revisions(mesh_env.local), "cluster1")) == (
            doomed - {config_key})
        await recorder.sync()
        assert [e.key for e in recorder.of("cluster1")] == [config_key]
        fake.advance(0.001)

        async def gone() -> bool:
            return not cluster_part(await tree_revisions(mesh_env.local), "cluster1")

        await wait_until(gone, "cluster1's data to be removed", timeout=10)
    finally:
        await recorder.stop()
        await removed.client.close()

    events = sorted(recorder.of("cluster1"), key=lambda e: e.revision)
    assert all(e.type == DELETE for e in events), [e for e in events if e.type == PUT]
    assert {e.key for e in events} == doomed
    assert events[0].key == config_key, events[:3]
    rest = events[1:]
    canaries = [e for e in rest if e.key.startswith(synced_prefix("cluster1").encode())]
    caches = [e for e in rest if e not in canaries]
    assert len(canaries) == len(RESOURCES)
    assert {e.key for e in canaries} == {r.cache_canary("cluster1").encode() for r in RESOURCES}
    assert {r for r in RESOURCES for e in caches
            if e.key.startswith(r.cache_prefix("cluster1").encode())} == set(RESOURCES) - {
                SERVICE_EXPORTS}  # cluster1 has no MCS-API: nothing cached, only a canary
    assert max(e.revision for e in canaries) < min(e.revision for e in caches)

    # The other cluster was not written at all.
    assert await tree_revisions(mesh_env.local) == kept
    await mesh_env.assert_converged()
    assert mesh.removals_in_progress() == frozenset()


async def test_readded_during_removal_starts_after_cleanup(
        mesh_env: MeshEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kvstoremesh.mesh")
    await add_published(mesh_env, "cluster1", 1)
    await add_published(mesh_env, "cluster2", 2)
    fake = FakeClock()
    mesh = await start_on(mesh_env, fake)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()

    recorder = Recorder(mesh_env.local)
    await recorder.start()
    c2 = mesh_env.remove_remote_file("cluster2")
    config_key = cluster_config_key("cluster2").encode()
    await removal_in_grace(mesh_env, fake, "cluster2")
    # The remote changes meanwhile, then its file comes back, within the grace period.
    await c2.put(NODES, "node-late", b'{"Name":"node-late","Cluster":"cluster2","ClusterID":2}')
    await c2.delete(SERVICES, "default/svc-1")
    mesh_env.remotes["cluster2"] = c2
    mesh_env.write_remote_file(c2)
    fake.advance(POLL)
    await wait_until(lambda: "cluster cluster2: re-added while being removed" in caplog.text,
                     "the daemon to see the file come back", timeout=5)
    # Seen, and not started: the removal still waits for the clock.
    assert "cluster2" not in mesh.remotes and mesh.removals_in_progress() == {"cluster2"}
    assert await mesh_env.local.get(config_key) is None
    fake.advance(GRACE)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    await recorder.stop()

    # The cleanup did run, and the cluster was started again only after it.
    events = recorder.of("cluster2")
    cache_deletes = [e for e in events if e.type == DELETE
                     and e.key.startswith(NODES.cache_prefix("cluster2").encode())]
    assert cache_deletes, "the removal never drained cluster2's cache"
    restart = [e for e in events if e.type == PUT and e.key == config_key]
    assert restart, "cluster2's cluster-config was not published again"
    assert restart[0].revision > max(e.revision for e in cache_deletes)
    # Exactly one session of cluster2 runs.
    assert sum(1 for t in asyncio.all_tasks() if t.get_name() == "remote-cluster2") == 1


async def test_file_changed_twice_during_removal_runs_one_remote(
        mesh_env: MeshEnv, caplog: pytest.LogCaptureFixture) -> None:
    """Re-added, then changed again while the removal still waits: the first pending
    start must be replaced, not leaked next to the second one."""
    caplog.set_level(logging.INFO, logger="kvstoremesh.mesh")
    await add_published(mesh_env, "cluster1", 1)
    await add_published(mesh_env, "cluster2", 2)
    fake = FakeClock()
    mesh = await start_on(mesh_env, fake)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()

    c2 = mesh_env.remove_remote_file("cluster2")
    await removal_in_grace(mesh_env, fake, "cluster2")
    mesh_env.remotes["cluster2"] = c2
    mesh_env.write_remote_file(c2)
    readded = "cluster cluster2: re-added while being removed"
    fake.advance(POLL)
    await wait_until(lambda: readded in caplog.text, "the daemon to see the file come back",
                     timeout=5)
    # Same endpoints, different bytes: a config change while the removal still waits.
    text = c2.config_file.read_text()
    write_atomically(c2.config_file, text + "# rotated\n")
    fake.advance(POLL)
    await wait_until(lambda: caplog.text.count(readded) == 2, "the daemon to see the change",
                     timeout=5)
    assert "cluster2" not in mesh.remotes
    fake.advance(GRACE)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    sessions = [t for t in asyncio.all_tasks() if t.get_name() == "remote-cluster2"]
    assert len(sessions) == 1, f"{len(sessions)} sessions of cluster2 run"

    # Removed for good: nothing of cluster2 may come back. assert_converged() returns once
    # the removal drained the cache, i.e. after the grace; the sentinel (a put on cluster1
    # mirrored) then shows the daemon went on working after it, without cluster2.
    mesh_env.remove_remote_file("cluster2")
    await removal_in_grace(mesh_env, fake, "cluster2", graces=2)
    fake.advance(GRACE)
    await mesh_env.assert_converged()
    await c2.put(NODES, "node-late", b'{"Name":"node-late","Cluster":"cluster2","ClusterID":2}')
    await mesh_env.mirror_sentinel(mesh_env.remotes["cluster1"])
    assert not cluster_part(await read_tree(mesh_env.local), "cluster2")
    assert "cluster2" not in mesh.remotes and mesh.removals_in_progress() == frozenset()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "remote-cluster2"]
    await mesh_env.assert_converged(timeout=0)
    await c2.client.close()


async def test_orphans_removed_at_startup(mesh_env: MeshEnv) -> None:
    # The local cluster's own keys (its clustermesh-apiserver writes them) share the etcd.
    own = {
        b"cilium/cluster-config/local": b'{"id":200,"capabilities":{"syncedCanaries":true}}',
        b"cilium/synced/local/cilium/state/nodes/v1": b"2026-01-01T00:00:00Z",
        b"cilium/synced/local/cilium/state/services/v1": b"2026-01-01T00:00:00Z",
        b"cilium/state/nodes/v1/local/node-0": b'{"Name":"node-0"}',
    }
    for key, value in own.items():
        await mesh_env.local.put(key, value)
    await add_published(mesh_env, "cluster1", 1)
    await add_published(mesh_env, "cluster2", 2)
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    await mesh_env.stop_mesh()

    # cluster2 is unconfigured while we are down.
    removed = mesh_env.remove_remote_file("cluster2")
    await removed.client.close()
    before = await tree_revisions(mesh_env.local)
    assert cluster_part(before, "cluster2")
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    # Everything but cluster2 untouched (same mod_revisions), nothing of cluster2 left.
    after = await tree_revisions(mesh_env.local)
    assert after == {k: r for k, r in before.items() if not is_cluster_key(k, "cluster2")}
    tree = await read_tree(mesh_env.local)
    assert {k: tree.get(k) for k in own} == own


async def test_removal_interrupted_by_shutdown_finishes_at_next_start(mesh_env: MeshEnv) -> None:
    await add_published(mesh_env, "cluster1", 1)
    await add_published(mesh_env, "cluster2", 2)
    await mesh_env.start_mesh(removal_grace=30.0)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()

    removed = mesh_env.remove_remote_file("cluster2")
    await removed.client.close()
    config_key = cluster_config_key("cluster2").encode()

    async def config_gone() -> bool:
        return await mesh_env.local.get(config_key) is None

    await wait_until(config_gone, "the removal of cluster2 to start", timeout=5)
    await mesh_env.stop_mesh()  # within the grace: shutdown never drains
    left = cluster_part(await read_tree(mesh_env.local), "cluster2")
    assert left and config_key not in left
    # Only its canaries and cache are left (no cluster-config): still an orphan.
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()


async def test_etcd_cluster_id_change_resyncs(mesh_env: MeshEnv,
                                              caplog: pytest.LogCaptureFixture) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1, write_file=False)
    await c1.publish(sample_state("cluster1", 1, nodes=3, endpoints=6, services=3))
    await c1.write_canaries()
    mesh_env.write_remote_file(c1)
    await add_published(mesh_env, "cluster2", 2)
    mesh = await mesh_env.start_mesh(status_check_interval=0.3)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    remote = mesh.remotes["cluster1"]
    old_id = remote.status().etcd_cluster_id
    assert old_id == c1.server.cluster_id()
    others = cluster_part(await tree_revisions(mesh_env.local), "cluster2")

    # The remote etcd loses its data: same endpoint, a new etcd cluster.
    c1.server.stop()
    c1.server.wipe()
    c1.server.start()
    new_id = c1.server.cluster_id()
    assert new_id != old_id
    await c1.write_config()
    await c1.heartbeat()
    state = sample_state("cluster1", 1, nodes=1, endpoints=2, services=1)
    state[NODES]["node-new"] = b'{"Name":"node-new","Cluster":"cluster1","ClusterID":1}'
    await c1.publish(state)
    await c1.write_canaries()

    await wait_until(lambda: remote.status().etcd_cluster_id == new_id and remote.status().ready,
                     "cluster1 to reconnect to the new etcd cluster", timeout=10)
    assert remote.status().failures >= 1
    assert f"etcd cluster ID changed from {old_id:x} to {new_id:x}" in caplog.text
    await mesh_env.assert_converged()
    local = await mesh_env.local_tree()
    assert b"cilium/cache/nodes/v1/cluster1/node-new" in local
    for stale in (b"cilium/cache/nodes/v1/cluster1/node-2",
                  b"cilium/cache/ip/v1/cluster1/10.1.0.10",
                  b"cilium/cache/services/v1/cluster1/default/svc-2"):
        assert stale not in local, stale
    assert cluster_part(await tree_revisions(mesh_env.local), "cluster2") == others


async def test_local_leader_loss_mid_sync(tmp_path: Path, etcd_factory: EtcdFactory) -> None:
    local_cluster = etcd_factory.cluster()
    env = await MeshEnv.create(tmp_path / "mesh", etcd_factory,
                               local_server=local_cluster)  # type: ignore[arg-type]
    try:
        c1 = await add_published(env, "cluster1", 1)
        total = 5000
        ops = [put_op(c1.key(ENDPOINTS, f"10.1.{100 + i // 250}.{i % 250}"),
                      f'{{"IP":"10.1.{100 + i // 250}.{i % 250}","ID":65537}}'.encode())
               for i in range(total)]
        for i in range(0, total, 100):
            await c1.client.txn(success=ops[i:i + 100])
        leader = await asyncio.to_thread(local_cluster.leader)
        # Rate-limited writes, so that the sync is still running when the leader dies.
        mesh = await env.start_mesh(max_txn_ops=50, bootstrap_qps=40)
        prefix = ENDPOINTS.cache_prefix("cluster1").encode()
        cached = 0

        async def some_cached() -> bool:
            nonlocal cached
            cached = await count_prefix(env.local, prefix)
            return cached >= 300

        await wait_until(some_cached, "the first cache keys", timeout=10)
        leader.kill()
        assert cached < total, "the sync was over before the leader was killed"
        assert not mesh.remotes["cluster1"].status().ready
        await env.assert_converged(timeout=20)
        await env.wait_ready()
        assert await count_prefix(env.local, prefix) == total + 4  # + sample_state's
        new_leader = await asyncio.to_thread(local_cluster.leader)
        assert new_leader is not leader
    finally:
        await env.close()


async def test_cache_ttl_drains_services_of_a_disconnected_remote(mesh_env: MeshEnv) -> None:
    c1 = await add_published(mesh_env, "cluster1", 1, service_exports=True,
                             endpoint_slices=EXPORT_SERVICES_AND_ENDPOINTSLICES)
    await add_published(mesh_env, "cluster2", 2, service_exports=True,
                        endpoint_slices=EXPORT_SERVICES_AND_ENDPOINTSLICES)
    fake = FakeClock()
    mesh = await start_on(mesh_env, fake, cache_ttl=TTL)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    snapshot = await read_tree(mesh_env.local)

    def is_drained(key: bytes) -> bool:
        return any(key.startswith(r.cache_prefix("cluster1").encode())
                   or key == r.cache_canary("cluster1").encode() for r in REVOKED_ON_TTL)

    # Every carrier of backends: 2 services, 1 export, 2 EndpointSlices, 3 canaries.
    assert set(REVOKED_ON_TTL) == {SERVICES, SERVICE_EXPORTS, ENDPOINT_SLICES}
    assert sum(1 for k in snapshot if is_drained(k)) == 2 + 1 + 2 + 3

    c1.server.stop()
    remote = mesh.remotes["cluster1"]
    # Its session notices through its status checks (every second of the clock).
    await until_advancing(fake, lambda: remote.status().disconnected_since is not None,
                          "cluster1 to notice the disconnection", step=1.0)
    disconnected = remote.status().disconnected_since
    assert disconnected is not None

    async def services_gone() -> bool:
        return not any(is_drained(k) for k in await read_tree(mesh_env.local))

    # Disconnected for one instant less than the TTL: the loop looked, nothing is drained.
    fake.advance(disconnected + TTL - 0.001 - fake.monotonic())
    await fake.settle()
    assert not await services_gone(), "drained before the TTL"
    assert mesh.revocations["cluster1"] == 0
    # The loop looks every TTL/4 (at most 5 s): past the TTL, it drains, once.
    fake.advance(min(TTL / 4, 5.0))
    await wait_until(services_gone, "cluster1's services to be drained", timeout=10)
    assert mesh.revocations["cluster1"] == 1
    assert remote.status().disconnected_since == disconnected
    # Nodes, endpoints, identities (and their canaries, and the config) stay; cluster2 too.
    assert await read_tree(mesh_env.local) == {
        k: v for k, v in snapshot.items() if not is_drained(k)}
    for resource in (NODES, ENDPOINTS, IDENTITIES):
        assert resource.cache_canary("cluster1").encode() in snapshot
    fake.advance(TTL)
    await fake.settle()
    assert mesh.revocations["cluster1"] == 1

    # It comes back once its session's backoff (on the clock) is over.
    c1.server.start()
    await until_advancing(fake, lambda: remote.status().ready, "cluster1 to reconnect",
                          step=5.0)
    await mesh_env.wait_ready(timeout=15)
    await mesh_env.assert_converged()


async def test_bad_config_file_fails_only_that_cluster(mesh_env: MeshEnv) -> None:
    await add_published(mesh_env, "cluster1", 1)
    missing_ca = mesh_env.dir / "no-such-dir" / "ca.crt"
    write_atomically(mesh_env.config_dir / "cluster2",
                     f"endpoints:\n- https://127.0.0.1:2379\ntrusted-ca-file: {missing_ca}\n")
    write_atomically(mesh_env.config_dir / "cluster3",
                     "endpoints: [http://127.0.0.1:2379\ncert-file: {\n")
    mesh = await mesh_env.start_mesh()
    await mesh_env.wait_ready()

    def failed(name: str) -> Callable[[], bool]:
        return lambda: name in mesh.remotes and mesh.remotes[name].status().failures >= 2

    await wait_until(failed("cluster2"), "cluster2 to fail", timeout=8)
    await wait_until(failed("cluster3"), "cluster3 to fail", timeout=8)
    bad_ca = mesh.remotes["cluster2"].status()
    assert str(missing_ca) in bad_ca.status and "does not exist" in bad_ca.status, bad_ca.status
    assert str(mesh_env.config_dir / "cluster2") in bad_ca.status, bad_ca.status
    malformed = mesh.remotes["cluster3"].status()
    assert str(mesh_env.config_dir / "cluster3") in malformed.status, malformed.status
    assert "invalid YAML" in malformed.status, malformed.status
    assert not mesh.remotes["cluster2"].status().ready
    assert not mesh.remotes["cluster3"].status().ready
    assert mesh.remotes["cluster1"].status().failures == 0
    await mesh_env.assert_converged()  # nothing of cluster2/cluster3 in the cache

    # cluster2's file is fixed: it connects, keeping its failure history.
    failures = bad_ca.failures
    await add_published(mesh_env, "cluster2", 2)
    await mesh_env.wait_ready()
    assert mesh.remotes["cluster2"].status().failures >= failures
    assert mesh.remotes["cluster3"].status().failures >= 2
    await mesh_env.assert_converged()


async def test_cache_left_without_canaries_is_removed_at_startup(mesh_env: MeshEnv) -> None:
    """A drain cut short after the canaries and cluster-config were deleted (the daemon
    died mid-removal) leaves cache keys only; the next start must still find them."""
    await add_published(mesh_env, "cluster1", 1)
    await add_published(mesh_env, "cluster12", 12)
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    await mesh_env.stop_mesh()

    removed = mesh_env.remove_remote_file("cluster12")
    await removed.client.close()
    await mesh_env.local.delete(b"cilium/cluster-config/cluster12")
    await mesh_env.local.delete(b"cilium/synced/cluster12/", prefix=True)
    assert cluster_part(await tree_revisions(mesh_env.local), "cluster12")  # cache remains
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()  # exact tree: nothing of cluster12 left
