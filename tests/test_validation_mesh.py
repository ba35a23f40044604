"""Validation inside a running KVStoreMesh: rejected entries never reach the cache,
are counted, logged once and shown in status; turned off, bytes pass unchecked."""

from __future__ import annotations

import asyncio
import logging

import pytest
from harness.mesh import MeshEnv, read_tree, sample_state

from clustermesh.keys import ENDPOINTS, IDENTITIES, NODES
from kvstoremesh.status import format_status, remote_cluster_model

GOOD = b'{"Name":"node-x","Cluster":"cluster1","ClusterID":1}'
WRONG_CLUSTER = b'{"Name":"node-x","Cluster":"cluster2","ClusterID":1}'
KEY = b"cilium/cache/nodes/v1/cluster1/node-x"


async def started(mesh_env: MeshEnv, **options: object) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1)
    await c1.publish(sample_state("cluster1", 1))
    await c1.write_canaries()
    await mesh_env.start_mesh(**options)
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()


async def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_entry_flipping_between_valid_and_invalid(mesh_env: MeshEnv,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    await started(mesh_env)
    c1 = mesh_env.remotes["cluster1"]
    remote = mesh_env.mesh.remotes["cluster1"]

    async def cached() -> bytes | None:
        return (await read_tree(mesh_env.local, KEY)).get(KEY)

    await c1.put(NODES, "node-x", GOOD)
    await wait_for(lambda: _eq(cached(), GOOD), "valid entry cached")
    caplog.set_level(logging.WARNING, logger="kvstoremesh.rejections")
    for _ in range(3):  # the same bad value again and again: logged once
        await c1.put(NODES, "node-x", WRONG_CLUSTER)
    await wait_for(lambda: _eq(cached(), None), "invalid version withdrawn")
    await mesh_env.assert_converged()
    await wait_for(lambda: _true(remote.rejections.total == 3), "3 rejections counted")
    assert [r.message for r in caplog.records].count(
        "cluster cluster1: nodes entry 'node-x' rejected: cluster-mismatch") == 1
    await c1.put(NODES, "node-x", GOOD)
    await wait_for(lambda: _eq(cached(), GOOD), "valid again, cached again")

    # A hostile identity and ipcache entry of another cluster's range stay out.
    await c1.put(IDENTITIES, "196609", b"k8s:io.cilium.k8s.policy.cluster=cluster3;")
    await c1.put(ENDPOINTS, "10.1.7.7", b'{"IP":"10.1.7.7","ID":196609}')
    await mesh_env.assert_converged()
    tree = await mesh_env.local_tree()
    assert b"cilium/cache/identities/v1/cluster1/id/196609" not in tree
    assert b"cilium/cache/ip/v1/cluster1/10.1.7.7" not in tree

    model = remote_cluster_model(remote.status())
    rejected = model["rejected-entries"]
    assert rejected["total"] == 5
    assert rejected["latest"][-1] == {"resource": "endpoints", "key": "10.1.7.7",
                                      "reason": "id-out-of-range"}
    text = format_status([model], verbose=True)
    assert "rejected entries: 5 (latest: " in text and "endpoints '10.1.7.7': id-out-of-range" \
        in text


async def test_validation_off_mirrors_bytes_unchecked(mesh_env: MeshEnv) -> None:
    await started(mesh_env, validate_remote_data=False)
    c1 = mesh_env.remotes["cluster1"]
    await c1.put(NODES, "node-x", WRONG_CLUSTER)
    await c1.put(IDENTITIES, "5", b"\x00\xff not labels")
    await mesh_env.assert_converged()
    tree = await mesh_env.local_tree()
    assert tree[KEY] == WRONG_CLUSTER
    assert tree[b"cilium/cache/identities/v1/cluster1/id/5"] == b"\x00\xff not labels"
    assert mesh_env.mesh.remotes["cluster1"].rejections.total == 0


async def _eq(value, expected) -> bool:
    return await value == expected


async def _true(value: bool) -> bool:
    return value
