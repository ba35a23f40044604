"""clustermesh-apiserver against real etcd, fed from a manifests directory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from harness import EtcdFactory, EtcdServer
from harness.k8s_objects import expected_state
from harness.mesh import MeshEnv, read_tree, tree_revisions

from apiserver.daemon import ApiServer, ApiserverOptions
from apiserver.sample import workload
from apiserver.sources import KINDS_BY_NAME
from apiserver.sources.manifests import ManifestSource
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.keys import RESOURCES, SERVICE_EXPORTS


def write_manifests(directory: Path, name: str, objects: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump_all(objects))
    tmp.replace(directory / name)


class Running:
    def __init__(self, server: ApiServer, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.server, self.task, self.stop = server, task, stop

    async def wait_ready(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.server.ready()[0]:
                if self.task.done():
                    self.task.result()
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.stop.set()
        async with asyncio.timeout(10):
            await self.task


@pytest.fixture
async def apiserver_env(tmp_path: Path, etcd: EtcdServer) -> AsyncIterator[dict]:
    config = etcd.client_config(tmp_path / "etcd.yaml")
    client = EtcdClient(load_etcd_config(config))
    await client.connect()
    running: list[Running] = []

    async def start(**overrides: object) -> Running:
        values: dict[str, object] = dict(cluster_name="cluster1", cluster_id=1,
                                         local_config=config, health_port=0,
                                         heartbeat_interval=0.2)
        values.update(overrides)
        server = ApiServer(ApiserverOptions(**values),  # type: ignore[arg-type]
                           ManifestSource(tmp_path / "manifests", interval=0.05))
        stop = asyncio.Event()
        run = Running(server, asyncio.create_task(server.run(stop)), stop)
        running.append(run)
        return run

    yield {"start": start, "client": client, "dir": tmp_path / "manifests", "etcd": etcd}
    for run in running:
        with contextlib.suppress(Exception):
            await run.close()
    await client.close()


async def wait_state(client: EtcdClient, expected: dict[bytes, bytes], *,
                     timeout: float = 10.0) -> dict[bytes, bytes]:
    """Wait until the cluster's state keys equal ``expected`` exactly."""
    async with asyncio.timeout(timeout):
        while True:
            state = await read_tree(client, b"cilium/state/")
            if state == expected:
                return state
            await asyncio.sleep(0.05)


async def test_publishes_workload_canaries_config_and_heartbeat(apiserver_env: dict) -> None:
    objects = workload(cluster="cluster1", cluster_id=1)
    write_manifests(apiserver_env["dir"], "workload.yaml", objects)
    run = await apiserver_env["start"]()
    await run.wait_ready()
    client: EtcdClient = apiserver_env["client"]
    expected = expected_state(objects, cluster="cluster1", cluster_id=1)
    # nodes, identities, dual-stack pod IPs, the service and its EndpointSlice
    assert len(expected) == 3 + 2 + 8 + 1 + 1
    await wait_state(client, expected)
    tree = await read_tree(client)
    assert tree[b"cilium/cluster-config/cluster1"] == (
        b'{"id":1,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,'
        b'"serviceExportsEnabled":false,'
        b'"endpointSlicesExportMode":"services-and-endpointslices"}}')
    # Every resource has its canary, service exports too although MCS-API is off
    # (Cilium pretends they are synced so that readers need no special case).
    for resource in RESOURCES:
        assert resource.state_canary("cluster1").encode() in tree
    assert not any(k.startswith(SERVICE_EXPORTS.state_prefix("cluster1").encode())
                   for k in tree)
    first = (await client.get(b"cilium/.heartbeat")).mod_revision
    async with asyncio.timeout(5):
        while (await client.get(b"cilium/.heartbeat")).mod_revision == first:
            await asyncio.sleep(0.05)
    # The cluster-config is re-asserted when someone deletes it.
    await client.delete(b"cilium/cluster-config/cluster1")
    async with asyncio.timeout(5):
        while await client.get(b"cilium/cluster-config/cluster1") is None:
            await asyncio.sleep(0.05)
    assert run.server.ready() == (True, [])


async def test_follows_manifest_changes(apiserver_env: dict) -> None:
    objects = workload(cluster="cluster1", cluster_id=1)
    write_manifests(apiserver_env["dir"], "workload.yaml", objects)
    run = await apiserver_env["start"]()
    await run.wait_ready()
    client: EtcdClient = apiserver_env["client"]

    # Remove one dual-stack endpoint, add a node, make the service non-global.
    changed = [o for o in objects if o["metadata"]["name"] != "client-1"]
    changed.append({"apiVersion": "cilium.io/v2", "kind": "CiliumNode",
                    "metadata": {"name": "extra"}, "spec": {}})
    write_manifests(apiserver_env["dir"], "workload.yaml", changed)
    await wait_state(client, expected_state(changed, cluster="cluster1", cluster_id=1))

    for obj in changed:
        if obj["kind"] == "Service":
            obj["metadata"]["annotations"]["service.cilium.io/global"] = "false"
    write_manifests(apiserver_env["dir"], "workload.yaml", changed)
    state = await wait_state(client, expected_state(changed, cluster="cluster1", cluster_id=1))
    assert not any(k.startswith(b"cilium/state/services/") for k in state)

    # A broken file keeps what it published; a namespace turning non-global withdraws.
    broken = apiserver_env["dir"] / "workload.yaml"
    tmp = broken.with_name(".workload.yaml.tmp")
    tmp.write_text("kind: [unclosed")
    tmp.replace(broken)
    # The sentinel: a new object in a later file. A scan that sees it has read the broken
    # file too (one scan reads every file), so once its key is published, the broken
    # file's effect (none) is in the state as well.
    sentinel = {"apiVersion": "cilium.io/v2", "kind": "CiliumNode",
                "metadata": {"name": "sentinel"}, "spec": {}}
    write_manifests(apiserver_env["dir"], "zz-sentinel.yaml", [sentinel])
    with_sentinel = expected_state([*changed, sentinel], cluster="cluster1", cluster_id=1)
    (sentinel_key,) = with_sentinel.keys() - state.keys()
    async with asyncio.timeout(10):
        while sentinel_key not in (now := await read_tree(client, b"cilium/state/")):
            await asyncio.sleep(0.05)
    assert now == {**state, sentinel_key: with_sentinel[sentinel_key]}
    state = now
    for obj in changed:
        if obj["kind"] == "Namespace":
            obj["metadata"]["annotations"] = {"clustermesh.cilium.io/global": "false"}
    write_manifests(apiserver_env["dir"], "workload.yaml", changed)
    state = await wait_state(client, {k: v for k, v in state.items()
                                      if k.startswith(b"cilium/state/nodes/")})
    assert run.server.ready()[0]


async def test_restart_writes_nothing_and_removes_stale(apiserver_env: dict) -> None:
    objects = workload(cluster="cluster1", cluster_id=1)
    write_manifests(apiserver_env["dir"], "workload.yaml", objects)
    client: EtcdClient = apiserver_env["client"]
    run = await apiserver_env["start"](heartbeat_interval=3600)
    await run.wait_ready()
    await run.close()
    # Left over from an earlier life of this cluster: must go after the restart.
    await client.put(b"cilium/state/nodes/v1/cluster1/gone", b"{}")
    await client.put(b"cilium/state/ip/v1/default/10.1.9.9", b"{}")
    before = await tree_revisions(client)
    run = await apiserver_env["start"](heartbeat_interval=3600)
    await run.wait_ready()
    expected = expected_state(objects, cluster="cluster1", cluster_id=1)
    await wait_state(client, expected)
    after = await tree_revisions(client)
    unchanged = {k: r for k, r in before.items()
                 if k not in (b"cilium/state/nodes/v1/cluster1/gone",
                              b"cilium/state/ip/v1/default/10.1.9.9", b"cilium/.heartbeat")}
    assert {k: after[k] for k in unchanged} == unchanged, "unchanged keys were rewritten"


async def test_end_to_end_apiserver_to_kvstoremesh(tmp_path: Path,
                                                   etcd_factory: EtcdFactory) -> None:
    """Cluster A's apiserver publishes from manifests; cluster B's KVStoreMesh mirrors
    it; B's cache equals exactly what A published."""
    a_etcd = etcd_factory(name="cluster-a")
    config = a_etcd.client_config(tmp_path / "a.yaml")
    manifests = tmp_path / "a-manifests"
    objects = workload(cluster="cluster1", cluster_id=1)
    write_manifests(manifests, "workload.yaml", objects)
    server = ApiServer(ApiserverOptions(cluster_name="cluster1", cluster_id=1,
                                        local_config=config, health_port=0),
                       ManifestSource(manifests, interval=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    env = await MeshEnv.create(tmp_path / "b", etcd_factory)
    try:
        # The remote is A itself: MeshEnv only writes its config file and reads it back.
        a_client = EtcdClient(load_etcd_config(config))
        await a_client.connect()
        (env.config_dir / "cluster1").write_text(config.read_text())
        await env.start_mesh()
        async with asyncio.timeout(15):
            while not (env.mesh.remotes.get("cluster1")
                       and env.mesh.remotes["cluster1"].status().ready):
                await asyncio.sleep(0.05)
        published = await read_tree(a_client, b"cilium/state/")
        cache = await read_tree(env.local, b"cilium/cache/")
        translated = {}
        for key, value in published.items():
            for resource in RESOURCES:
                source = resource.state_prefix("cluster1").encode()
                if key.startswith(source):
                    target = resource.cache_prefix("cluster1").encode()
                    translated[target + key[len(source):]] = value
        assert translated and cache == translated
        # A live change in A reaches B.
        objects = [o for o in objects if o["metadata"]["name"] != "echo-0"]
        write_manifests(manifests, "workload.yaml", objects)
        async with asyncio.timeout(10):
            while any(k.startswith(b"cilium/cache/ip/v1/cluster1/10.1.0.10")
                      for k in await read_tree(env.local, b"cilium/cache/")):
                await asyncio.sleep(0.05)
        await a_client.close()
    finally:
        stop.set()
        await task
        await env.close()


def test_every_sample_kind_is_known() -> None:
    assert {o["kind"] for o in workload(cluster="c", cluster_id=1)} <= KINDS_BY_NAME.keys()


async def test_etcd_side_runs_while_kubernetes_is_missing(tmp_path: Path,
                                                          etcd: EtcdServer) -> None:
    """No Kubernetes configuration yet: cluster-config, heartbeat and health still work,
    readiness says what it waits for; once the API appears the apiserver gets ready."""
    from harness.fake_kube import FakeKube

    from apiserver.sources.kubernetes import KubernetesSource

    config = etcd.client_config(tmp_path / "etcd.yaml")
    kubeconfig = tmp_path / "kubeconfig"
    server = ApiServer(ApiserverOptions(cluster_name="cluster1", cluster_id=1,
                                        local_config=config, health_port=0,
                                        heartbeat_interval=3600),
                       KubernetesSource(kubeconfig=kubeconfig))
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    client = EtcdClient(load_etcd_config(config))
    await client.connect()
    try:
        async with asyncio.timeout(10):
            while (await client.get(b"cilium/cluster-config/cluster1") is None
                   or await client.get(b"cilium/.heartbeat") is None
                   or server.source_error is None):
                await asyncio.sleep(0.05)
        ready, waiting = server.ready()
        assert not ready
        assert "endpoints: waiting for the first full list of CiliumEndpoint, Namespace" in waiting
        assert waiting[-1] == f"source: ConfigException: kubeconfig {kubeconfig} does not exist"
        assert server.live() == (True, [])
        async with FakeKube() as kube:
            kube.write_kubeconfig(kubeconfig)
            async with asyncio.timeout(30):
                while not server.ready()[0]:
                    await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await client.close()
