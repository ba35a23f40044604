"""KVStoreMesh and "service v2" EndpointSlices, against real etcd.

What is mirrored depends on the remote's ``endpointSlicesExportMode``
(:mod:`kvstoremesh.resources`): ``services-and-endpointslices`` mirrors both;
``endpointslices-only`` drains legacy services but writes their canary; no mode
(1.18/1.19) leaves EndpointSlices out entirely — no reflector, no readiness wait, no
canary.  Values are the apiserver's (``apiserver.endpointslices``); hostile ones are
broken frames, a zstd bomb, JSON, or values naming another cluster, ID or key.

Every test ends with the exact whole-keyspace comparison of
:func:`harness.convergence.wait_converged`, whose expectation comes from
:mod:`harness.oracle` (written from the spec, not from the daemon's code).  Nothing
waits a fixed time to see that nothing happened: a valid sentinel written after the
hostile entries proves they were processed.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import zstandard
from harness.convergence import WriteLog, wait_converged
from harness.mesh import MeshEnv, Remote, read_tree, sample_state, tree_revisions
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apiserver.endpointslices import endpointslice_entries
from clustermesh.clusterconfig import (
    EXPORT_ENDPOINTSLICES_ONLY,
    EXPORT_SERVICES_AND_ENDPOINTSLICES,
    EXPORT_SERVICES_ONLY,
    CiliumClusterConfig,
)
from clustermesh.keys import ENDPOINT_SLICES, SERVICES, cluster_config_key
from kvstoremesh.mesh import KVStoreMesh
from kvstoremesh.status import format_status, remote_cluster_model, waiting_for

BOTH = EXPORT_SERVICES_AND_ENDPOINTSLICES
ONLY = EXPORT_ENDPOINTSLICES_ONLY
NONE = EXPORT_SERVICES_ONLY
NS = "cilium_kvstoremesh"
SLICES = ENDPOINT_SLICES.cache_prefix("cluster1").encode()
SERVICES_CACHE = SERVICES.cache_prefix("cluster1").encode()
SLICES_CANARY = ENDPOINT_SLICES.cache_canary("cluster1").encode()
SERVICES_CANARY = SERVICES.cache_canary("cluster1").encode()


# ------------------------------------------------------------------------ helpers


async def published(env: MeshEnv, mode: str, *, cached: bool = False,
                    write_file: bool = True) -> Remote:
    """cluster1 (ID 1) exporting ``mode``, with the sample state (2 services, each with
    one EndpointSlice) and the canaries its publisher writes for that mode."""
    remote = await env.add_remote("cluster1", 1, endpoint_slices=mode, cached=cached,
                                  write_file=False)
    await remote.publish(sample_state("cluster1", 1))
    await remote.write_canaries()
    if write_file:
        env.write_remote_file(remote)
    return remote


async def converged(env: MeshEnv) -> None:
    report = await wait_converged(env)
    assert report.ok and report.checked == report.expected, report.summary()


def samples(mesh: KVStoreMesh, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` (with the namespace prefix) the daemon exposes."""
    text = generate_latest(mesh.metrics.registry).decode()
    return [(s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == f"{NS}_{name}"]


def initial_sync(mesh: KVStoreMesh, scope: str) -> list[tuple[str, float]]:
    """(action, value) of cluster1's initial-sync series for ``scope``, sorted."""
    return sorted((labels["action"], value)
                  for labels, value in samples(mesh, "kvstore_initial_sync_completed")
                  if labels["source_cluster"] == "cluster1" and labels["scope"] == scope)


def cached_keys(mesh: KVStoreMesh, resource: str) -> float:
    (value,) = [v for labels, v in samples(mesh, "cached_keys")
                if labels == {"target_cluster": "cluster1", "resource": resource}]
    return value


def slice_value(name: str, *, cluster: str = "cluster1", cluster_id: int = 1,
                namespace: str = "default") -> bytes:
    """The value the apiserver of ``cluster`` writes for EndpointSlice ``namespace/name``."""
    slice_ = {"metadata": {"name": name, "namespace": namespace,
                           "labels": {"kubernetes.io/service-name": "svc"}},
              "addressType": "IPv4",
              "endpoints": [{"addresses": ["10.1.3.7"], "conditions": {"ready": True}}]}
    (value,) = endpointslice_entries(slice_, cluster=cluster, cluster_id=cluster_id).values()
    return value


async def wait_local(env: MeshEnv, key: bytes, value: bytes | None = None) -> None:
    """Until the local etcd holds ``key`` (with ``value``, if given)."""
    async with asyncio.timeout(10):
        while True:
            have = (await read_tree(env.local, key)).get(key)
            if have is not None and value in (None, have):
                return
            await asyncio.sleep(0.05)


# -------------------------------------------------------------------- the cluster-config


@pytest.mark.parametrize("mode", [BOTH, ONLY, NONE, "some-future-mode"],
                         ids=["both", "only", "none", "future"])
def test_the_cached_cluster_config_keeps_the_mode_verbatim(mode: str) -> None:
    config = CiliumClusterConfig(id=1, synced_canaries=True, max_connected_clusters=255,
                                 endpoint_slices_export_mode=mode)
    cached = config.as_cached()
    assert cached == replace(config, cached=True)
    assert CiliumClusterConfig.from_json(cached.to_json()).endpoint_slices_export_mode == mode
    assert cached.to_json() == (
        b'{"id":1,"capabilities":{"syncedCanaries":true,"cached":true,'
        b'"maxConnectedClusters":255'
        + (b',"endpointSlicesExportMode":"' + mode.encode() + b'"' if mode else b"")
        + b"}}")


# ---------------------------------------------------------------------------- modes


async def test_services_and_endpointslices_are_both_mirrored(mesh_env: MeshEnv) -> None:
    c1 = await published(mesh_env, BOTH, write_file=False)
    # The remote's EndpointSlice canary is not there yet: that reflector waits for it.
    await c1.client.delete(ENDPOINT_SLICES.state_canary("cluster1").encode())
    mesh_env.write_remote_file(c1)
    mesh = await mesh_env.start_mesh()
    await wait_local(mesh_env, SERVICES_CANARY)  # the services are synced...
    remote = mesh.remotes["cluster1"]  # ...the slices wait for their remote canary
    assert not remote.status().ready
    waiting = waiting_for(remote.status())
    assert "endpointslices" in waiting, waiting
    tree = await read_tree(mesh_env.local)
    assert SLICES_CANARY not in tree and not any(k.startswith(SLICES) for k in tree)

    await c1.write_canaries((ENDPOINT_SLICES,))
    await mesh_env.wait_ready()
    await converged(mesh_env)
    local = await mesh_env.local_tree()
    state = sample_state("cluster1", 1)
    assert {k: v for k, v in local.items() if k.startswith(SLICES)} == {
        SLICES + suffix.encode(): value for suffix, value in state[ENDPOINT_SLICES].items()}
    assert len(state[ENDPOINT_SLICES]) == 2
    assert sum(1 for k in local if k.startswith(SERVICES_CACHE)) == 2
    assert {SLICES_CANARY, SERVICES_CANARY} <= local.keys()
    assert local[cluster_config_key("cluster1").encode()] == (
        b'{"id":1,"capabilities":{"syncedCanaries":true,"cached":true,'
        b'"maxConnectedClusters":255,"endpointSlicesExportMode":"services-and-endpointslices"}}')

    # Counted in status (API and text) and metrics.
    model = remote_cluster_model(remote.status())
    assert (model["num-endpointslices"], model["num-shared-services"]) == (2, 2)
    assert model["synced"]["endpointslices"] is True
    assert model["config"]["endpointslices-export-mode"] == BOTH
    assert format_status([model]).splitlines()[1].endswith(", 2 endpointslices")
    assert cached_keys(mesh, "endpointslices") == 2
    assert initial_sync(mesh, "endpointslices/v1") == [("read", 1), ("write", 1)]

    # Live: a new slice, a changed one, a deleted one.
    await c1.put(ENDPOINT_SLICES, "default/new-abcde", slice_value("new-abcde"))
    (first, second) = sorted(state[ENDPOINT_SLICES])
    await c1.put(ENDPOINT_SLICES, first, slice_value(first.split("/")[1]))
    await c1.delete(ENDPOINT_SLICES, second)
    await converged(mesh_env)
    assert remote_cluster_model(remote.status())["num-endpointslices"] == 2


async def test_a_remote_without_a_mode_leaves_endpointslices_out(mesh_env: MeshEnv) -> None:
    # A 1.18/1.19 remote that nevertheless holds EndpointSlice keys (and no canary for
    # them); the cache still has slices and a canary from when it exported them.
    c1 = await published(mesh_env, NONE)
    assert ENDPOINT_SLICES not in c1.published_canaries()
    assert sum(1 for k in await read_tree(c1.client, ENDPOINT_SLICES.state_prefix(
        "cluster1").encode())) == 2
    await mesh_env.local.put(SLICES + b"default/old-abcde", slice_value("old-abcde"))
    await mesh_env.local.put(SLICES_CANARY, b"2026-01-01T00:00:00Z")
    mesh = await mesh_env.start_mesh()
    await mesh_env.wait_ready()  # not waiting for a canary that never comes
    await converged(mesh_env)  # drained, canary deleted, nothing of the remote's slices
    tree = await read_tree(mesh_env.local)
    assert SLICES_CANARY not in tree and not any(k.startswith(SLICES) for k in tree)

    remote = mesh.remotes["cluster1"]
    assert remote.status().reflector(ENDPOINT_SLICES) is None
    model = remote_cluster_model(remote.status())
    assert model["num-endpointslices"] == 0
    assert model["synced"]["endpointslices"] is None
    assert model["config"]["endpointslices-export-mode"] == ""
    assert cached_keys(mesh, "endpointslices") == 0
    assert initial_sync(mesh, "endpointslices/v1") == []  # no series that never turns 1

    # A restart writes nothing (nothing left to withdraw, no canary to delete).
    await mesh_env.stop_mesh()
    async with WriteLog(mesh_env.local) as writes:
        await mesh_env.start_mesh()
        await mesh_env.wait_ready()
        await converged(mesh_env)
    assert writes.keys == []


async def test_endpointslices_only_drains_services_but_writes_their_canary(
        mesh_env: MeshEnv) -> None:
    # The remote still holds legacy services (an apiserver switched to only-endpointslice
    # leaves them behind), never writes their canary, and the cache has one from before.
    c1 = await published(mesh_env, ONLY)
    assert SERVICES not in c1.published_canaries()
    assert sum(1 for k in await read_tree(c1.client, SERVICES.state_prefix(
        "cluster1").encode())) == 2
    await mesh_env.local.put(SERVICES_CACHE + b"default/old", b"{}")
    mesh = await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await converged(mesh_env)
    tree = await read_tree(mesh_env.local)
    assert not any(k.startswith(SERVICES_CACHE) for k in tree)
    assert SERVICES_CANARY in tree  # 1.18/1.19 agents wait for it
    assert sum(1 for k in tree if k.startswith(SLICES)) == 2 and SLICES_CANARY in tree

    model = remote_cluster_model(mesh.remotes["cluster1"].status())
    assert (model["num-shared-services"], model["num-endpointslices"]) == (0, 2)
    assert model["synced"]["services"] is True
    assert initial_sync(mesh, "services/v1") == [("write", 1)]  # never read
    assert initial_sync(mesh, "endpointslices/v1") == [("read", 1), ("write", 1)]


async def test_a_mode_change_starts_a_new_session_both_ways(mesh_env: MeshEnv) -> None:
    c1 = await published(mesh_env, BOTH)
    mesh = await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await converged(mesh_env)
    remote = mesh.remotes["cluster1"]

    async def switch(mode: str) -> None:
        await c1.write_config(replace(c1.config, endpoint_slices_export_mode=mode))
        await c1.write_canaries()  # what its publisher writes in the new mode
        await converged(mesh_env)
        assert remote.status().config is not None
        assert remote.status().config.endpoint_slices_export_mode == mode
        await mesh_env.wait_ready()

    slices = {k: r for k, r in (await tree_revisions(mesh_env.local)).items()
              if k.startswith(SLICES)}
    assert len(slices) == 2
    await switch(ONLY)  # services drained, their canary kept; slices kept
    tree = await read_tree(mesh_env.local)
    assert not any(k.startswith(SERVICES_CACHE) for k in tree) and SERVICES_CANARY in tree
    assert {k: r for k, r in (await tree_revisions(mesh_env.local)).items()
            if k.startswith(SLICES)} == slices, "unchanged slices rewritten"
    await switch(BOTH)  # services mirrored again
    assert sum(1 for k in await read_tree(mesh_env.local, SERVICES_CACHE)) == 2
    await switch(NONE)  # slices drained, their canary deleted
    assert not await read_tree(mesh_env.local, SLICES)
    assert SLICES_CANARY not in await read_tree(mesh_env.local)
    await switch(BOTH)  # and back
    assert sum(1 for k in await read_tree(mesh_env.local, SLICES)) == 2
    assert remote.status().failures >= 4  # each change ended a session


# ------------------------------------------------------------------------ validation


async def test_hostile_endpointslices_stay_out_of_the_cache(mesh_env: MeshEnv) -> None:
    c1 = await published(mesh_env, BOTH, write_file=False)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * ((16 << 20) + 4096))
    assert len(bomb) < 4096
    await c1.put(ENDPOINT_SLICES, "default/bomb", bomb)  # in the initial list
    mesh_env.write_remote_file(c1)
    mesh = await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await converged(mesh_env)
    remote = mesh.remotes["cluster1"]
    assert remote.rejections.total == 1

    # Live: one of each, and a valid entry replaced by a broken version.
    await c1.put(ENDPOINT_SLICES, "default/flip", slice_value("flip"))
    await wait_local(mesh_env, SLICES + b"default/flip", slice_value("flip"))
    hostile = {
        "default/truncated": (slice_value("truncated")[:-5], "invalid-zstd"),
        "default/flip": (slice_value("flip")[:9], "invalid-zstd"),
        "default/wrong-cluster": (slice_value("wrong-cluster", cluster="cluster2"),
                                  "cluster-mismatch"),
        "default/mismatch": (slice_value("other-name"), "name-mismatch"),
        "other-ns/mismatch": (slice_value("mismatch"), "name-mismatch"),
        "default/wrong-id": (slice_value("wrong-id", cluster_id=2), "cluster-id-mismatch"),
        "default/json": (b'{"cluster":"cluster1","namespace":"default","name":"json"}',
                         "invalid-zstd"),
    }
    for suffix, (value, _) in hostile.items():
        await c1.put(ENDPOINT_SLICES, suffix, value)
    # The sentinel comes after them in the same watch: once it is cached, they were seen.
    await c1.put(ENDPOINT_SLICES, "default/sentinel", slice_value("sentinel"))
    await wait_local(mesh_env, SLICES + b"default/sentinel", slice_value("sentinel"))
    tree = await read_tree(mesh_env.local, SLICES)
    assert not {SLICES + s.encode() for s in (*hostile, "default/bomb")} & tree.keys()
    assert remote.rejections.total == 1 + len(hostile)
    latest = [(r.resource, r.key, r.reason) for r in remote.rejections.latest]
    assert latest == [("endpointslices", suffix, reason)
                      for suffix, (_, reason) in hostile.items()][-len(latest):]
    expected = {"too-large": 1, "invalid-zstd": 3, "cluster-mismatch": 1, "name-mismatch": 2,
                "cluster-id-mismatch": 1}
    assert remote.rejections.counts == {("endpointslices", r): n for r, n in expected.items()}
    assert {labels["reason"]: value for labels, value in samples(mesh, "rejected_entries_total")
            if labels["resource"] == "endpointslices"} == expected
    await converged(mesh_env)

    # Valid versions of the same keys are cached as soon as they are written.
    for suffix in (*hostile, "default/bomb"):
        namespace, name = suffix.split("/")
        await c1.put(ENDPOINT_SLICES, suffix, slice_value(name, namespace=namespace))
    await converged(mesh_env)
    tree = await read_tree(mesh_env.local, SLICES)
    assert {SLICES + s.encode() for s in (*hostile, "default/bomb")} <= tree.keys()
    assert remote_cluster_model(remote.status())["num-endpointslices"] == 2 + len(hostile) + 2


# --------------------------------------------------------------------------- chained


@pytest.mark.parametrize("mode", [BOTH, ONLY, NONE], ids=["both", "only", "none"])
async def test_a_chained_kvstoremesh_is_read_in_the_cache_layout(mesh_env: MeshEnv,
                                                                 mode: str) -> None:
    c1 = await published(mesh_env, mode, cached=True, write_file=False)
    # A KVStoreMesh writes the services canary even when only slices are exported.
    assert (SERVICES in c1.published_canaries(), ENDPOINT_SLICES in c1.published_canaries()
            ) == (True, mode != NONE)
    # Must never be read from a cached remote: its state keys.
    ghost = (ENDPOINT_SLICES.state_prefix("cluster1") + "default/ghost").encode()
    await c1.client.put(ghost, slice_value("ghost"))
    mesh_env.write_remote_file(c1)
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await converged(mesh_env)
    tree = await read_tree(mesh_env.local)
    assert SLICES + b"default/ghost" not in tree
    assert sum(1 for k in tree if k.startswith(SLICES)) == (2 if mode != NONE else 0)
    assert (SLICES_CANARY in tree) == (mode != NONE)
    assert SERVICES_CANARY in tree
