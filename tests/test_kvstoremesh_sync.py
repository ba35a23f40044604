"""KVStoreMesh core: byte-exact mirroring and reconciliation against real etcd.

Every test ends with ``assert_converged``: the whole local ``cilium/`` tree must
equal what the remotes hold, translated to the cache layout.
"""

from __future__ import annotations

import asyncio

from harness.convergence import WriteLog
from harness.mesh import MeshEnv, sample_state, tree_revisions

from clustermesh.keys import ENDPOINTS, IDENTITIES, NODES, SERVICE_EXPORTS, SERVICES


async def test_mirrors_every_resource_byte_for_byte(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1, service_exports=True)
    c10 = await mesh_env.add_remote("cluster10", 10, server=c1.server)  # shares c1's etcd
    for remote in (c1, c10):
        await remote.publish(sample_state(remote.name, remote.config.id))
        await remote.write_canaries()
    # Keys the cache must NOT take: identity slave keys and locks, other clusters' state.
    await c1.client.put(b"cilium/state/identities/v1/value/k8s:app=x/node1", b"65537")
    await c1.client.put(b"cilium/state/nodes/v1/cluster100/node-x", b"{}")
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()

    local = await mesh_env.local_tree()
    # Spot-check the layout against Cilium's documented examples.
    assert local[b"cilium/cache/ip/v1/cluster1/10.1.0.5"] == sample_state("cluster1", 1)[
        ENDPOINTS]["10.1.0.5"]
    assert b"cilium/cache/ip/v1/cluster1/fd00:10:1::5" in local
    assert b"cilium/cache/identities/v1/cluster1/id/65537" in local
    assert b"cilium/cache/serviceexports/v1/cluster1/default/svc-0" in local
    assert not any(k.startswith(b"cilium/cache/serviceexports/v1/cluster10/") for k in local)
    assert not any(b"cluster100" in k or b"/value/" in k for k in local)
    assert local[b"cilium/cluster-config/cluster1"] == (
        b'{"id":1,"capabilities":{"syncedCanaries":true,"cached":true,'
        b'"maxConnectedClusters":255,"serviceExportsEnabled":true}}')

    await assert_snapshot_counts(mesh_env, c1.name, c10.name)

    # Live updates, deletes, and a value with arbitrary bytes.
    await c1.put(NODES, "node-new", b'{"Name":"node-new","Cluster":"cluster1","ClusterID":1}')
    await c1.delete(SERVICES, "default/svc-1")
    labels = "k8s:app=\u00e9t\u00e9 \u2603;k8s:io.cilium.k8s.policy.cluster=cluster10;"
    await c10.put(IDENTITIES, "655370", labels.encode())
    await mesh_env.assert_converged()
    await assert_snapshot_counts(mesh_env, c1.name, c10.name)


async def assert_snapshot_counts(env: MeshEnv, *names: str) -> None:
    """Each reflector's snapshot (kept between changes) counts what the cache holds."""
    tree = await env.local_tree()
    assert env.mesh is not None
    for name in names:
        for reflector in env.mesh.remotes[name].status().reflectors:
            prefix = reflector.resource.cache_prefix(name).encode()
            assert reflector.cached_keys == sum(k.startswith(prefix) for k in tree), (
                name, reflector)


async def test_canaries_gate_each_resource(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1)
    await c1.publish(sample_state("cluster1", 1))
    await c1.write_canaries((NODES,))
    await mesh_env.start_mesh()
    nodes_canary = NODES.cache_canary("cluster1").encode()
    async with asyncio.timeout(10):
        while await mesh_env.local.get(nodes_canary) is None:
            await asyncio.sleep(0.05)
    tree = await mesh_env.local_tree()
    assert any(k.startswith(b"cilium/cache/nodes/v1/cluster1/") for k in tree)
    # No remote canary for endpoints yet: nothing of them is cached, no local canary.
    assert not any(k.startswith(b"cilium/cache/ip/v1/cluster1/") for k in tree)
    assert ENDPOINTS.cache_canary("cluster1").encode() not in tree
    assert not mesh_env.mesh.remotes["cluster1"].status().ready
    await c1.write_canaries()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()


async def test_without_synced_canaries_everything_starts_at_once(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1, synced_canaries=False)
    await c1.publish(sample_state("cluster1", 1))
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()


async def test_chained_cache_reads_the_remote_cache_layout(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1, cached=True)
    await c1.publish(sample_state("cluster1", 1))
    await c1.write_canaries()
    # A cached remote must be read from cilium/cache/..., never from its state keys.
    await c1.client.put(b"cilium/state/nodes/v1/cluster1/ghost", b"{}")
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    assert b"cilium/cache/nodes/v1/cluster1/ghost" not in await mesh_env.local_tree()


async def test_service_exports_follow_the_remote_capability(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1, service_exports=None)
    await c1.publish(sample_state("cluster1", 1))
    await c1.write_canaries()
    # Left over from an earlier run where the remote still exported services.
    stale = b"cilium/cache/serviceexports/v1/cluster1/default/old"
    await mesh_env.local.put(stale, b"{}")
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()  # drained, and its canary written anyway
    # The remote turns MCS-API on: the session restarts and exports are mirrored.
    from clustermesh.clusterconfig import CiliumClusterConfig

    await c1.write_config(CiliumClusterConfig(id=1, synced_canaries=True,
                                              max_connected_clusters=255,
                                              service_exports_enabled=True))
    await mesh_env.assert_converged()
    assert b"cilium/cache/serviceexports/v1/cluster1/default/svc-0" in (
        await mesh_env.local_tree())
    assert SERVICE_EXPORTS.cache_canary("cluster1").encode() in await mesh_env.local_tree()


async def test_restart_with_full_cache_writes_nothing_and_removes_stale(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1)
    await c1.publish(sample_state("cluster1", 1, endpoints=200))
    await c1.write_canaries()
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    await mesh_env.stop_mesh()

    before = await tree_revisions(mesh_env.local)
    async with WriteLog(mesh_env.local) as writes:
        await mesh_env.start_mesh()
        await mesh_env.wait_ready()
        await mesh_env.assert_converged()
    assert writes.keys == [], "unchanged data rewritten"
    assert await tree_revisions(mesh_env.local) == before

    # While we are down the remote deletes and changes keys: the restart reconciles.
    await mesh_env.stop_mesh()
    for i in range(100):
        await c1.delete(ENDPOINTS, f"10.1.0.{i + 5}")
    await c1.put(NODES, "node-0", b'{"Name":"node-0","Cluster":"cluster1","ClusterID":1,"x":1}')
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    after = await tree_revisions(mesh_env.local)
    untouched = [k for k in after
                 if k.startswith(b"cilium/cache/ip/") and after[k] == before.get(k)]
    assert len(untouched) == 101  # 100 remaining IPv4 + 1 IPv6 were not rewritten


async def test_stale_keys_removed_after_disconnect(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1)
    await c1.publish(sample_state("cluster1", 1, endpoints=50))
    await c1.write_canaries()
    await mesh_env.start_mesh(status_check_interval=0.2)  # a dead remote is seen quickly
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()

    cached = {k: v for k, v in (await mesh_env.local_tree()).items()
              if k.startswith(b"cilium/cache/")}
    assert b"cilium/cache/ip/v1/cluster1/10.1.0.5" in cached
    c1.server.stop()
    # Remote down: once the daemon has seen it fail (the sentinel: its session ended),
    # the cache still serves what it had.
    remote = mesh_env.mesh.remotes["cluster1"]
    async with asyncio.timeout(15):
        while remote.status().connected or remote.status().failures == 0:
            await asyncio.sleep(0.05)
    assert {k: v for k, v in (await mesh_env.local_tree()).items()
            if k.startswith(b"cilium/cache/")} == cached
    c1.server.start()
    for i in range(20):
        await c1.delete(ENDPOINTS, f"10.1.0.{i + 5}")
    await c1.put(ENDPOINTS, "10.1.9.9", b'{"IP":"10.1.9.9","ID":65538}')
    await mesh_env.assert_converged()


async def test_relist_after_remote_compaction(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1)
    await c1.publish(sample_state("cluster1", 1, endpoints=30))
    await c1.write_canaries()
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()

    # Stop the remote, change it, compact past our watch revision, restart it:
    # the resumed watch hits "compacted" and the reflector must relist and diff.
    c1.server.stop()
    c1.server.start()
    for i in range(10):
        await c1.delete(ENDPOINTS, f"10.1.0.{i + 5}")
    await c1.put(ENDPOINTS, "10.1.7.7", b'{"IP":"10.1.7.7","ID":65538}')
    c1.server.stop()
    await asyncio.sleep(1.5)  # the watch backs off; it resumes only after the compaction
    c1.server.start()
    c1.server.compact()
    await mesh_env.assert_converged()
    assert mesh_env.mesh.remotes["cluster1"].status().reflector(ENDPOINTS).relists >= 1
