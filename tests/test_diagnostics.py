"""Mesh diagnostics: each misconfiguration found, refused where it must be, and shown in
/readyz?verbose, the status API, status text, metrics and logs."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
from pathlib import Path

import aiohttp
import pytest
from harness import EtcdFactory, Pki
from harness.fakeclock import FakeClock
from harness.mesh import MeshEnv, sample_state
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.config import load_etcd_config
from clustermesh.keys import NODES
from kvstoremesh.diagnostics import (
    Network,
    PodCidrOverlaps,
    config_problem,
    expiring_certificates,
    overlapping_pod_cidrs,
    pod_cidrs,
)
from kvstoremesh.status import format_status, status_models

net = ipaddress.ip_network


def node(name: str, cluster: str, cluster_id: int, cidr4: str, mask4: str) -> bytes:
    return (f'{{"Name":"{name}","Cluster":"{cluster}","ClusterID":{cluster_id},'
            f'"IPv4AllocCIDR":{{"IP":"{cidr4}","Mask":"{mask4}"}},'
            f'"IPv6AllocCIDR":null}}').encode()


def test_pod_cidrs_of_a_node() -> None:
    value = (b'{"Name":"n","IPv4AllocCIDR":{"IP":"10.244.1.0","Mask":"////AA=="},'
             b'"IPv6AllocCIDR":{"IP":"fd00::","Mask":"////////////////////AA=="},'
             b'"IPv4SecondaryAllocCIDRs":[{"IP":"10.99.0.0","Mask":"//8AAA=="}]}')
    assert pod_cidrs(value) == [net("10.244.1.0/24"), net("fd00::/120"), net("10.99.0.0/16")]
    assert pod_cidrs(b"not json") == []
    assert pod_cidrs(b'{"IPv4AllocCIDR":null}') == []


def test_overlaps_are_found_across_clusters_only() -> None:
    problems = overlapping_pod_cidrs({
        "a": [net("10.1.0.0/24"), net("10.1.1.0/24"), net("10.1.0.0/16")],  # self-overlap: ok
        "b": [net("10.2.0.0/16")],
        "c": [net("10.2.5.0/24"), net("fd00::/64")],
        "d": [net("10.0.0.0/8")],
        "e": [net("fd00:0:0:1::/64")],
    })
    pairs = {tuple(sorted((p.message.split("cluster ")[1].split(" ")[0],
                           p.message.split("cluster ")[2].split(":")[0]))) for p in problems}
    assert pairs == {("a", "d"), ("b", "d"), ("c", "d"), ("b", "c")}
    assert all(p.kind == "pod-cidr-overlap" for p in problems)
    assert overlapping_pod_cidrs({"a": [net("10.1.0.0/16")], "b": [net("10.2.0.0/16")]}) == []


# Small address blocks, so that random ones overlap, touch and nest often.
networks = st.one_of(
    st.builds(lambda i, p: ipaddress.ip_network((i << (32 - p) % 2**32, p)),
              st.integers(0, 15), st.integers(24, 28)),
    st.builds(lambda i, p: ipaddress.ip_network((i << (128 - p), p)),
              st.integers(0, 3), st.integers(124, 126)))
meshes = st.dictionaries(st.sampled_from("abcdef"), st.lists(networks, max_size=6),
                         max_size=5)


@given(st.lists(meshes, min_size=1, max_size=4))
def test_the_incremental_overlap_check_finds_what_a_full_sweep_finds(
        steps: list[dict[str, list[Network]]]) -> None:
    """Whatever changes between two checks (clusters added, removed, their networks
    changed), the check says what one sweep of every network says, in the same order."""
    overlaps = PodCidrOverlaps()
    reads: list[str] = []
    previous: dict[str, object] = {}
    for mesh in steps:
        versions = {name: tuple(nets) for name, nets in mesh.items()}
        reads.clear()
        def networks(name: str, mesh: dict[str, list[Network]] = mesh) -> list[Network]:
            reads.append(name)
            return mesh[name]

        found = overlaps.check(versions, networks)
        assert found == overlapping_pod_cidrs(mesh)
        # Only a cluster whose version changed is read again.
        assert sorted(reads) == sorted(n for n, v in versions.items() if previous.get(n) != v)
        previous = dict(versions)


def test_config_problems() -> None:
    ok = CiliumClusterConfig(id=2, max_connected_clusters=255)
    assert config_problem(ok, remote="c2", local_id=1, max_connected_clusters=255) is None
    assert config_problem(CiliumClusterConfig(id=2), remote="c2", local_id=1,
                          max_connected_clusters=255) is None  # older peers omit the field
    cases = {
        "invalid-cluster-id": CiliumClusterConfig(id=0),
        "own-cluster-id": CiliumClusterConfig(id=1),
        "max-connected-clusters": CiliumClusterConfig(id=2, max_connected_clusters=511),
    }
    for kind, config in cases.items():
        problem = config_problem(config, remote="c2", local_id=1, max_connected_clusters=255)
        assert problem is not None and problem.kind == kind and "c2" in problem.message
    assert config_problem(CiliumClusterConfig(id=300), remote="c2", local_id=1,
                          max_connected_clusters=511) is None


def test_expiring_certificates(tmp_path: Path, pki: Pki) -> None:
    soon = pki.issue_client("soon", validity=dt.timedelta(days=10))
    later = pki.issue_client("later", validity=dt.timedelta(days=200))
    gone = pki.issue_client("gone", not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    for cert, expected in ((soon, "expires on"), (gone, "expired on"), (later, None)):
        config_file = tmp_path / f"{cert.name}.yaml"
        config_file.write_text(f"endpoints:\n- https://127.0.0.1:2379\ntrusted-ca-file: "
                               f"{cert.ca_file}\ncert-file: {cert.cert_file}\n"
                               f"key-file: {cert.key_file}\n")
        problems = expiring_certificates(load_etcd_config(config_file), remote="c2",
                                         now=dt.datetime.now(dt.UTC))
        if expected is None:
            assert problems == []
        else:
            (problem,) = problems
            assert problem.kind == "certificate-expiry" and expected in problem.message
            assert str(cert.cert_file) in problem.message


async def scrape_problems(mesh_env: MeshEnv) -> dict[tuple[str, str], float]:
    port = mesh_env.mesh.port("metrics")
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name == "cilium_kvstoremesh_mesh_problems":
            for sample in family.samples:
                found[(sample.labels["target_cluster"], sample.labels["kind"])] = sample.value
    return found


async def readyz_verbose(mesh_env: MeshEnv) -> str:
    port = mesh_env.mesh.port("health")
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/readyz?verbose") as resp:
        return await resp.text()


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_misconfigured_remotes_are_refused_and_reported(
        mesh_env: MeshEnv, etcd_factory: EtcdFactory, caplog: pytest.LogCaptureFixture) -> None:
    good = await mesh_env.add_remote("good", 1)
    twin_a = await mesh_env.add_remote("twin-a", 7)
    twin_b = await mesh_env.add_remote("twin-b", 7)
    ours = await mesh_env.add_remote("ours", 200)  # MeshEnv's local cluster ID is 200
    wide = await mesh_env.add_remote("wide", 9)
    await wide.write_config(CiliumClusterConfig(id=9, synced_canaries=True,
                                                max_connected_clusters=511))
    for remote in (good, twin_a, twin_b, ours, wide):
        await remote.publish(sample_state(remote.name, remote.config.id))
        await remote.write_canaries()
    # "misnamed" points at an etcd that publishes cluster3's config, not misnamed's.
    other = etcd_factory(name="cluster3-etcd")
    other.put("cilium/cluster-config/cluster3", '{"id":3,"capabilities":{}}')
    other.client_config(mesh_env.config_dir / "misnamed")

    await mesh_env.start_mesh(status_check_interval=0.2)
    mesh = mesh_env.mesh
    refused = {"twin-a": "duplicate-cluster-id", "twin-b": "duplicate-cluster-id",
               "ours": "own-cluster-id", "wide": "max-connected-clusters",
               "misnamed": "cluster-config-name"}
    def found(name: str, kind: str) -> bool:
        remote = mesh.remotes.get(name)
        problem = remote.status().problem if remote is not None else None
        return problem is not None and problem.kind == kind

    await until(lambda: all(found(n, k) for n, k in refused.items()),
                "every misconfiguration found")
    await until(lambda: mesh.remotes["good"].status().ready, "the good remote to be ready")
    for name in refused:
        assert not mesh.remotes[name].status().ready
        assert mesh.remotes[name].status().failures >= 1 or name == "misnamed"
    # Nothing of a refused cluster stays in the cache (twin-a was cached before twin-b
    # appeared: it is withdrawn once the conflict is seen).
    async with asyncio.timeout(10):
        while True:
            tree = await mesh_env.local_tree()
            leftovers = [k for k in tree for name in refused
                         if f"/{name}/".encode() in k or k.endswith(name.encode())]
            if not leftovers:
                break
            await asyncio.sleep(0.1)

    text = await readyz_verbose(mesh_env)
    assert "problem: remote cluster twin-a has cluster ID 7, like twin-b" in text
    assert "uses our own cluster ID 200" in text
    assert "maxConnectedClusters=511" in text
    assert "publishes the cluster-config of cluster3, not of misnamed" in text
    models = {m["name"]: m for m in status_models(mesh)}
    assert "problems" not in models["good"]
    assert any("cluster ID 7" in p for p in models["twin-b"]["problems"])
    assert "   └  problem: remote cluster twin-b has cluster ID 7, like twin-a" in (
        format_status(list(models.values())))
    metrics = await scrape_problems(mesh_env)
    for name, kind in refused.items():
        assert metrics[(name, kind)] == 1
    await until(lambda: any("mesh problem (own-cluster-id)" in r.message
                            for r in caplog.records), "the problem to be logged", timeout=8)


async def test_overlapping_pod_cidrs_are_reported_then_cleared(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1)
    c2 = await mesh_env.add_remote("cluster2", 2)
    await c1.put(NODES, "n1", node("n1", "cluster1", 1, "10.244.0.0", "////AA=="))
    await c2.put(NODES, "n2", node("n2", "cluster2", 2, "10.244.0.0", "//8AAA=="))
    for remote in (c1, c2):
        await remote.write_canaries()
    await mesh_env.start_mesh()
    await mesh_env.wait_ready()
    await mesh_env.assert_converged()
    mesh = mesh_env.mesh
    (problem,) = mesh.problems(mesh.remotes_status())
    assert problem.kind == "pod-cidr-overlap"
    assert "10.244.0.0/24 of cluster cluster1" in problem.message or \
        "10.244.0.0/16 of cluster cluster2" in problem.message
    assert "pod CIDR" in await readyz_verbose(mesh_env)
    assert (await scrape_problems(mesh_env))[("cluster1", "pod-cidr-overlap")] == 1
    # cluster2 moves to its own range: the problem goes away.
    await c2.put(NODES, "n2", node("n2", "cluster2", 2, "10.245.0.0", "//8AAA=="))
    await until(lambda: not mesh.problems(mesh.remotes_status()), "the overlap to clear")


async def test_a_problem_is_logged_once_found_and_once_resolved(
        mesh_env: MeshEnv, caplog: pytest.LogCaptureFixture) -> None:
    """The problems log loop looks every 5 s of the daemon's clock (a fake one here):
    however many looks, one line when a problem appears and one when it is gone."""
    caplog.set_level(logging.INFO, logger="kvstoremesh.mesh")
    ours = await mesh_env.add_remote("ours", 200)  # MeshEnv's local cluster ID is 200
    fake = FakeClock()
    mesh = await mesh_env.start_mesh(clock=fake.clock, heartbeat_timeout=86400.0)
    found = "mesh problem (own-cluster-id): remote cluster ours uses our own cluster ID 200"
    resolved = "mesh problem resolved (own-cluster-id)"

    def logged(line: str) -> int:
        return caplog.text.count(line)

    await until(lambda: any(p.kind == "own-cluster-id"
                            for p in mesh.problems(mesh.remotes_status())),
                "the refusal of ours")
    for _ in range(3):  # looks while the problem lasts
        fake.advance(5.0)
        await until(lambda: logged(found) == 1, "the problem to be logged")
    await ours.write_config(CiliumClusterConfig(id=3, synced_canaries=True,
                                                max_connected_clusters=255))

    async def fixed() -> bool:  # the refused session's backoff is on the clock
        fake.advance(1.0)
        await asyncio.sleep(0.05)
        return logged(resolved) == 1

    async with asyncio.timeout(15):
        while not await fixed():
            pass
    for _ in range(3):  # looks once it is gone
        fake.advance(5.0)
        await fake.settle()
    assert (logged(found), logged(resolved)) == (1, 1), caplog.text
