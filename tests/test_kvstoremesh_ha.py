"""KVStoreMesh replicas sharing one destination etcd (in-process daemons, real etcd).

Two replicas on the same local etcd: one leads, the other follows the cache as a warm
standby (ready once it has listed it, writing nothing) and takes over on a graceful stop
without rewriting a single unchanged key; keys an upstream KVStoreMesh left on its lease
are rewritten once without it; a removal the old leader began is resumed with what is
left of its grace.  The process-level faults (kill -9, SIGSTOP past the lease, a
blackholed leader, etcd members killed) are in ``test_reliability_ha``.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness import EtcdFactory, EtcdServer, enable_auth
from harness.convergence import WriteLog, wait_converged
from harness.fakeclock import FakeClock
from harness.mesh import CANARY, MeshEnv, read_tree, sample_state

from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import EtcdPermissionDenied
from clustermesh.keys import HEARTBEAT_KEY, KVSTOREMESH_LOCK, NODES, cluster_config_key
from kvstoremesh.access import REPLICA_PERMISSIONS, ROLE
from kvstoremesh.mesh import KVStoreMesh
from kvstoremesh.snapshot import LEADER, STANDBY
from kvstoremesh.uninstall import uninstall

TTL = 5.0


@contextlib.asynccontextmanager
async def replica(env: MeshEnv, identity: str, *, clock: Clock = REAL_CLOCK,
                  **overrides: Any) -> AsyncIterator[tuple[KVStoreMesh, asyncio.Event]]:
    """A second replica beside ``env.mesh``: (the daemon, the event that stops it)."""
    options = {"leader_election_lease_ttl": TTL, **overrides}
    mesh = KVStoreMesh(env.options(leader_election_identity=identity, **options), clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(mesh.run(stop))
    try:
        yield mesh, stop
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


async def until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


def master_status(mesh: KVStoreMesh) -> float | None:
    return mesh.metrics.registry.get_sample_value(
        "cilium_kvstoremesh_leader_election_master_status", {"name": "kvstoremesh"})


def all_ready(mesh: KVStoreMesh, names: Any) -> bool:
    return all(n in mesh.remotes and mesh.remotes[n].status().ready for n in names)


def get(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


async def two_remotes(env: MeshEnv) -> None:
    for name, cluster_id in (("cluster1", 1), ("cluster2", 2)):
        remote = await env.add_remote(name, cluster_id)
        await remote.publish(sample_state(name, cluster_id, endpoints=30))
        await remote.write_canaries()


async def test_standby_takes_over_a_graceful_stop_without_rewriting(mesh_env: MeshEnv) -> None:
    env = mesh_env
    await two_remotes(env)
    first = await env.start_mesh(leader_election_identity="replica-a",
                                 leader_election_lease_ttl=TTL)
    await env.wait_ready()
    await env.assert_converged()
    async with replica(env, "replica-b") as (second, _):
        await until(lambda: second.follower is not None and second.follower.listed.is_set(),
                    "the standby listed the cache")
        # The standby is ready (a rolling update may go on), says who leads, writes nothing.
        status, body, _ = await asyncio.to_thread(
            get, f"http://127.0.0.1:{second.port('health')}/readyz?verbose")
        assert status == 200, body
        assert "standby (replica-b): the leader is replica-a" in body
        _, _, headers = await asyncio.to_thread(
            get, f"http://127.0.0.1:{second.port('api')}/v1/cluster")
        assert '"role": "standby"' in headers["Kvstoremesh-Leader-Election"]
        assert second.leadership().role == STANDBY and not second.remotes
        assert first.leadership().role == LEADER
        assert (master_status(second), master_status(first)) == (0, 1)

        async with WriteLog(env.local) as writes:
            await env.stop_mesh()  # graceful: the lease is revoked at once
            await until(lambda: second.role == LEADER, "the standby leads")
            await until(lambda: all_ready(second, env.remotes), "the new leader ready")
            sentinel = await env.mirror_sentinel(env.remotes["cluster1"])
        # Not one unchanged key rewritten: the only write is the sentinel's.
        assert writes.keys == [sentinel]
        assert second.metrics.registry.get_sample_value(
            "cilium_kvstoremesh_leader_changes_total") == 1
        assert master_status(second) == 1
        status, body, _ = await asyncio.to_thread(
            get, f"http://127.0.0.1:{second.port('health')}/readyz?verbose")
        assert status == 200 and "leader: this replica (replica-b" in body
        await wait_converged(env, alive=lambda: None)


async def test_keys_on_a_lease_are_rewritten_once_without_it(mesh_env: MeshEnv) -> None:
    """What upstream's KVStoreMesh wrote (every key on its session lease) is taken over:
    each such key is written once, without a lease, so it outlives that lease."""
    env = mesh_env
    await two_remotes(env)
    expected = await env.expected()
    upstream = await env.local.lease_grant(60)
    for key, value in expected.items():
        await env.local.put(key, b"2026-12-01T00:00:00Z" if value == CANARY else value,
                            lease=upstream)
    async with WriteLog(env.local) as writes:
        await env.start_mesh(leader_election_identity="ours")
        await env.wait_ready()
        sentinel = await env.mirror_sentinel(env.remotes["cluster2"])
    assert sorted(writes.keys) == sorted([*expected, sentinel])  # each exactly once
    await env.local.lease_revoke(upstream)  # upstream's lease goes: nothing goes with it
    await wait_converged(env)


async def test_a_removal_begun_by_the_old_leader_is_resumed(mesh_env: MeshEnv) -> None:
    """The old leader deleted the cluster-config and waited 40 s of a 100 s grace; the
    new leader waits the remaining 60 s, then drains (neither restarted nor skipped)."""
    env = mesh_env
    fake = FakeClock()
    await two_remotes(env)
    slow = {"removal_grace": 100.0, "leader_election_lease_ttl": 120.0}  # no real expiry
    await env.start_mesh(clock=fake.clock, leader_election_identity="a", **slow)
    await env.wait_ready()
    async with replica(env, "b", clock=fake.clock, **slow) as (second, _):
        await until(lambda: second.follower is not None and second.follower.listed.is_set(),
                    "the standby listed the cache")
        env.remove_remote_file("cluster2")
        config = cluster_config_key("cluster2").encode()

        async def polled_and_deleted() -> bool:
            fake.advance(0.05)  # the config directory poll runs on the fake clock too
            return await absent(env.local, config)

        await until_async(polled_and_deleted, "cluster-config deleted")
        await until(lambda: "cluster2" in second.follower.config_removed_at,
                    "the standby saw the removal begin")
        fake.advance(40.0 - (fake.monotonic() - second.follower.config_removed_at["cluster2"]))
        await env.stop_mesh()  # the old leader's removal is cancelled half-way
        await until(lambda: second.role == LEADER, "the standby leads")
        cached = NODES.cache_prefix("cluster2").encode()
        await until(lambda: any(abs(d - 60.0) < 1e-6 for d in fake.sleeps),
                    "the remaining grace waited for")
        assert (await env.local.range(cached, cached + b"\xff", count_only=True)).count > 0
        fake.advance(60.0)
        await until_async(lambda: prefix_empty(env.local, cached), "cluster2 drained")
        await wait_converged(env, alive=lambda: None)


async def absent(client: EtcdClient, key: bytes) -> bool:
    return await client.get(key) is None


async def prefix_empty(client: EtcdClient, prefix: bytes) -> bool:
    return (await client.range(prefix, prefix + b"\xff", count_only=True)).count == 0


async def until_async(predicate: Any, what: str, timeout: float = 15.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


async def test_replicas_need_no_more_than_the_documented_role(tmp_path: Path,
                                                               etcd_factory: EtcdFactory) -> None:
    """Leader and standby run as a user with only kvstoremesh.access's permissions on an
    etcd with auth on (the agents' etcd of kvstoreMode external), and the standby takes
    over; that role cannot touch the agents' own state."""
    server = etcd_factory(name="agents-etcd", extra_args=["--auth-token=simple"])
    enable_auth(server, users={"kvstoremesh": "kvpw"},
                roles={ROLE: [(p.access, p.key, p.range_end or None)
                              for p in REPLICA_PERMISSIONS]},
                grants={"kvstoremesh": [ROLE]})
    env = await MeshEnv.create(tmp_path / "mesh", etcd_factory, local_server=server,
                               daemon_user=("kvstoremesh", "kvpw"))
    try:
        await two_remotes(env)
        await env.start_mesh(leader_election_identity="a", leader_election_lease_ttl=TTL,
                             enable_heartbeat=True)
        await env.wait_ready()
        async with replica(env, "b", enable_heartbeat=True) as (second, _):
            await until(lambda: second.follower is not None
                        and second.follower.listed.is_set(), "the standby listed the cache")
            await env.stop_mesh()
            await until(lambda: second.role == LEADER, "the standby leads")
            await until(lambda: all_ready(second, env.remotes), "the new leader ready")
            await wait_converged(env, alive=lambda: None,
                                 tolerate=(HEARTBEAT_KEY.encode(),))
        kvstoremesh = await client_as(env, server, "kvstoremesh", "kvpw")
        try:
            with pytest.raises(EtcdPermissionDenied):
                await kvstoremesh.put(b"cilium/state/nodes/v1/local/x", b"{}")
        finally:
            await kvstoremesh.close()
    finally:
        await env.close()


async def client_as(env: MeshEnv, server: EtcdServer, user: str, password: str) -> EtcdClient:
    config = server.client_config(env.dir / f"{user}.yaml", username=user, password=password)
    client = EtcdClient(load_etcd_config(config), name=user)
    await client.connect()
    return client


async def test_uninstall_waits_for_the_leader_then_removes_the_cache_only(
        mesh_env: MeshEnv) -> None:
    """``kvstoremesh uninstall`` (the chart's post-delete hook in external mode) queues
    for the lock behind a replica still running, then removes every remote cluster's
    cached data, and nothing of the local cluster's own."""
    env = mesh_env
    await two_remotes(env)
    own = {b"cilium/state/nodes/v1/local/node-1": b"{}",
           cluster_config_key("local").encode(): b'{"id":200}'}
    for key, value in own.items():
        await env.local.put(key, value)
    await env.start_mesh(leader_election_identity="a", leader_election_lease_ttl=TTL)
    await env.wait_ready()
    removal = asyncio.create_task(uninstall(env.options(leader_election_lease_ttl=TTL)))
    lock = KVSTOREMESH_LOCK.encode() + b"/"

    async def queued() -> bool:
        return len((await env.local.list_prefix(lock))[0]) == 2

    await until_async(queued, "the uninstall waiting for the lock")
    assert not removal.done()
    assert NODES.cache_prefix("cluster1").encode() + b"node-0" in await env.local_tree()
    await env.stop_mesh()
    assert await asyncio.wait_for(removal, 15) == 0
    assert await read_tree(env.local) == own
    assert (await env.local.list_prefix(b"cilium/kvstoremesh-"))[0] == []
