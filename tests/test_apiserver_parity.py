"""clustermesh-apiserver at parity with Cilium's newest, end to end against real etcd:
IP ownership (Cilium #44020), CiliumEndpointSlices, global namespaces and the three
``--clustermesh-service-v2`` modes — each through the manifests source and through the
Kubernetes stand-in, each step ending in an exact comparison of the whole
``cilium/state/`` tree.

Ordering: a change that leaves etcd as it was (a claimant queued behind another) is
confirmed by a *sentinel*: a fresh CiliumEndpoint (or CiliumEndpointSlice) applied after
it, through the same watch stream (Kubernetes) or the same directory scan (manifests),
whose key appears only once everything before it was handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from harness import EtcdFactory, EtcdServer
from harness import fake_kube as fk
from harness.k8s_objects import cep, ces_of, endpoint_slice, expected_state, ns, service
from harness.mesh import MeshEnv, read_tree, tree_revisions

from apiserver.daemon import ApiServer, ApiserverOptions
from apiserver.sources import Source
from apiserver.sources.kubernetes import KubernetesSource, default_label_selectors
from apiserver.sources.manifests import ManifestSource
from clustermesh.backoff import BackoffPolicy
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.watch import PUT
from clustermesh.keys import ENDPOINT_SLICES, RESOURCES, SERVICES

CLUSTER, CLUSTER_ID = "cluster1", 1
IP = "cilium/state/ip/v1/default/"
CES = fk.Resource("cilium.io", "v2alpha1", "ciliumendpointslices", "CiliumEndpointSlice",
                  False)
RESOURCES_BY_KIND = {r.kind: r for r in (*fk.ALL_RESOURCES, CES)}
#: The Kubernetes source retries within a test's patience.
FAST_RETRY = BackoffPolicy(initial=0.02, maximum=0.1)


class Cluster:
    """One cluster: its objects (in manifests or the Kubernetes stand-in), its etcd,
    its apiserver, and what it should have published."""

    def __init__(self, source: str, tmp_path: Path, etcd: EtcdServer,
                 kube: fk.FakeKube | None) -> None:
        self.source = source
        self.dir = tmp_path / "manifests"
        self.dir.mkdir()
        self.tmp_path = tmp_path
        self.kube = kube
        self.config = etcd.client_config(tmp_path / "etcd.yaml")
        self.client = EtcdClient(load_etcd_config(self.config))
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # in apply order
        self.options: dict[str, Any] = {}
        self.server: ApiServer | None = None
        self._run: tuple[asyncio.Task[None], asyncio.Event] | None = None
        self._sentinels = itertools.count(1)

    @staticmethod
    def _id(obj: dict[str, Any]) -> tuple[str, str, str]:
        meta = obj["metadata"]
        return obj["kind"], meta.get("namespace", ""), meta["name"]

    def _file(self, oid: tuple[str, str, str]) -> Path:
        return self.dir / ("-".join(p for p in oid if p) + ".yaml")

    def apply(self, *objects: dict[str, Any]) -> None:
        for obj in objects:
            oid = self._id(obj)
            self.objects.pop(oid, None)
            self.objects[oid] = obj
            if self.kube is not None:
                self.kube.apply(RESOURCES_BY_KIND[obj["kind"]], copy.deepcopy(obj))
            else:
                tmp = self.dir / f".{oid[2]}.tmp"
                tmp.write_text(yaml.safe_dump(obj))
                tmp.replace(self._file(oid))

    def remove(self, *objects: dict[str, Any]) -> None:
        for obj in objects:
            oid = self._id(obj)
            del self.objects[oid]
            if self.kube is not None:
                self.kube.delete(RESOURCES_BY_KIND[oid[0]], oid[2], oid[1])
            else:
                self._file(oid).unlink()

    async def start(self, **options: Any) -> ApiServer:
        self.options = options
        source: Source
        if self.kube is not None:
            kubeconfig = self.kube.write_kubeconfig(self.tmp_path / "kubeconfig")
            source = KubernetesSource(kubeconfig=kubeconfig, backoff=FAST_RETRY,
                                      label_selectors=default_label_selectors(""))
        else:
            source = ManifestSource(self.dir, interval=0.02)
        self.server = ApiServer(ApiserverOptions(
            cluster_name=CLUSTER, cluster_id=CLUSTER_ID, local_config=self.config,
            health_port=0, heartbeat_interval=3600, prometheus_serve_addr="127.0.0.1:0",
            **options), source)
        stop = asyncio.Event()
        self._run = (asyncio.create_task(self.server.run(stop)), stop)
        async with asyncio.timeout(15):
            while not self.server.ready()[0]:
                if self._run[0].done():
                    self._run[0].result()
                await asyncio.sleep(0.02)
        return self.server

    async def stop(self) -> None:
        if self._run is not None:
            task, stop = self._run
            stop.set()
            async with asyncio.timeout(10):
                await task
            self._run = None

    def expected(self, *winners: dict[str, Any]) -> dict[bytes, bytes]:
        """The whole state tree: every object's keys, ``winners`` taking contested keys."""
        objects = [o for oid, o in self.objects.items()
                   if oid not in {self._id(w) for w in winners}]
        objects += [self.objects[self._id(w)] for w in winners]
        return expected_state(objects, cluster=CLUSTER, cluster_id=CLUSTER_ID, **self.options)

    async def settled(self, *winners: dict[str, Any], ces: bool = False) -> dict[bytes, bytes]:
        """Apply a sentinel after what was done, wait for it, and compare the whole tree."""
        n = next(self._sentinels)
        sentinel = cep(f"sentinel-{n}", "sentinels", f"10.9.0.{n}")
        if ces:
            sentinel = ces_of(f"sentinel-{n}", "sentinels", sentinel)
        self.apply(sentinel)
        expected = self.expected(*winners)
        async with asyncio.timeout(10):
            while True:
                state = await read_tree(self.client, b"cilium/state/")
                if f"{IP}10.9.0.{n}".encode() in state:
                    break
                await asyncio.sleep(0.02)
        assert state == expected
        return state


@pytest.fixture(params=["manifests", "kubernetes"])
async def cluster(request: pytest.FixtureRequest, tmp_path: Path,
                  etcd: EtcdServer) -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        kube = None
        if request.param == "kubernetes":
            kube = await stack.enter_async_context(fk.FakeKube((*fk.ALL_RESOURCES, CES)))
        c = Cluster(request.param, tmp_path, etcd, kube)
        await c.client.connect()
        c.apply(ns("app"), ns("sentinels", "true"))
        try:
            yield c
        finally:
            await c.stop()
            await c.client.close()


async def scrape(server: ApiServer) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{server.port('metrics')}/metrics") as resp:
        return await resp.text()


async def deletes_of(client: EtcdClient, key: str, since: int) -> int:
    """How many times ``key`` was deleted after revision ``since`` (up to now)."""
    now = (await client.status()).revision
    deletes = 0
    # All of cilium/: the revision `now` belongs to some write under it, so the watch
    # reaches it without waiting for a progress notification.
    async with client.watch(b"cilium/", start_revision=since + 1) as watch:
        async for batch in watch:
            deletes += sum(1 for e in batch.events if e.type != PUT and e.kv.key == key.encode())
            if batch.revision >= now:
                return deletes
    return deletes


# ------------------------------------------------------------------ IP ownership


async def test_ip_reuse_across_two_ceps(cluster: Cluster) -> None:
    a = cep("a", "app", "10.0.0.5", ident=65537)
    b = cep("b", "app", "10.0.0.5", ident=65538, ipv6="fd00::5")
    cluster.apply(a)
    server = await cluster.start()
    await cluster.settled()
    cluster.apply(b)  # B queues behind A for the IPv4 address; its IPv6 one is its own
    await cluster.settled(b, a)
    assert 'cilium_clustermesh_apiserver_contested_keys{scope="ip/v1"} 1.0' in await scrape(
        server)
    b2 = cep("b", "app", "10.0.0.5", ident=65539, ipv6="fd00::5")
    cluster.apply(b2)  # a pending claimant's update is only remembered
    await cluster.settled(b2, a)
    before = (await cluster.client.status()).revision
    cluster.remove(a)  # B takes over with its latest value, no delete in between
    await cluster.settled(b2)
    assert await deletes_of(cluster.client, IP + "10.0.0.5", before) == 0
    metrics = await scrape(server)
    assert 'cilium_clustermesh_apiserver_owner_promotions_total{scope="ip/v1"} 1.0' in metrics
    assert 'cilium_clustermesh_apiserver_contested_keys{scope="ip/v1"} 0.0' in metrics
    cluster.remove(b2)  # the last claimant goes: deleted
    state = await cluster.settled()
    assert (IP + "10.0.0.5").encode() not in state


async def test_ip_reuse_across_two_ces(cluster: Cluster) -> None:
    pod = cep("p", "app", "10.0.0.7", ident=65537)
    moved = cep("p", "app", "10.0.0.7", ident=65540)
    first = ces_of("ces-1", "app", pod, cep("q", "app", "10.0.0.8"))
    cluster.apply(first)
    await cluster.start(cilium_endpoint_slices=True)
    await cluster.settled(ces=True)
    # The endpoint moves to another slice: both slices claim its IP for a while.
    second = ces_of("ces-2", "app", moved)
    cluster.apply(second)
    await cluster.settled(second, first, ces=True)
    before = (await cluster.client.status()).revision
    first = ces_of("ces-1", "app", cep("q", "app", "10.0.0.8"))
    cluster.apply(first)  # the old slice drops the IP: the new slice's value, no delete
    await cluster.settled(first, second, ces=True)
    assert await deletes_of(cluster.client, IP + "10.0.0.7", before) == 0
    cluster.remove(second)
    state = await cluster.settled(ces=True)
    assert (IP + "10.0.0.7").encode() not in state


async def test_global_and_non_global_claimants(cluster: Cluster) -> None:
    cluster.apply(ns("local", "false"))
    local = cep("l", "local", "10.0.0.9", ident=65541)
    shared = cep("g", "app", "10.0.0.9", ident=65542)
    cluster.apply(local, shared)
    await cluster.start()
    await cluster.settled(shared)  # the non-global claimant claims nothing
    cluster.apply(ns("local"))  # now global: it queues behind the exported one
    await cluster.settled(local, shared)
    cluster.apply(ns("app", "false"))  # the exported claimant's namespace leaves the mesh
    await cluster.settled(local)
    cluster.apply(ns("local", "false"))
    state = await cluster.settled()
    assert not any(k.startswith(IP.encode() + b"10.0.0.9") for k in state)


async def test_restart_with_contested_ips_writes_nothing(cluster: Cluster) -> None:
    # B arrives first and is exported although A was created earlier: after a restart
    # the ownership must not flip to A (the (creationTimestamp, name) order).
    a = cep("a", "app", "10.0.0.6", ident=65537, created="2026-01-01T00:00:00Z")
    b = cep("b", "app", "10.0.0.6", ident=65538, created="2026-01-02T00:00:00Z")
    c = cep("c", "app", "10.0.0.6", ident=65539, created="2026-01-03T00:00:00Z")
    cluster.apply(b)
    await cluster.start()
    await cluster.settled()
    cluster.apply(c, a)
    await cluster.settled(a, c, b)
    await cluster.stop()
    before = await tree_revisions(cluster.client, b"cilium/state/")
    await cluster.start()
    assert await tree_revisions(cluster.client, b"cilium/state/") == before
    state = await cluster.settled(a, c, b)
    assert {k: v for k, v in (await tree_revisions(cluster.client, b"cilium/state/")).items()
            if k in before} == before, "a restart rewrote keys"
    # The rebuilt queue is (creationTimestamp, name): A before C.
    cluster.remove(b)
    await cluster.settled(c, a)
    assert state


# ------------------------------------------------------------------ global namespaces


async def test_namespace_annotation_back_and_forth(cluster: Cluster) -> None:
    cluster.apply(cep("p", "app", "10.0.0.2"), service("echo", "app"),
                  endpoint_slice("echo-1", "app", "echo", "10.0.0.2"),
                  ns("other"), cep("o", "other", "10.0.0.3"))
    await cluster.start()
    await cluster.settled()
    for value in ("false", "true", None, "False", "TRUE"):
        cluster.apply(ns("other", value))
        await cluster.settled()
    cluster.remove(ns("other"))  # deleted: everything of it goes
    await cluster.settled()
    cluster.apply(ns("other"))  # back: exported without a new version of the objects
    await cluster.settled()


async def test_default_non_global_namespaces(cluster: Cluster) -> None:
    cluster.apply(cep("p", "app", "10.0.0.2"), ns("opt-in", "true"),
                  cep("q", "opt-in", "10.0.0.3"))
    await cluster.start(default_global_namespace=False)
    state = await cluster.settled()
    assert (IP + "10.0.0.3").encode() in state and (IP + "10.0.0.2").encode() not in state


# ------------------------------------------------------------------ service v2


async def test_global_service_whose_slices_change(cluster: Cluster) -> None:
    cluster.apply(service("echo", "app"), endpoint_slice("echo-1", "app", "echo", "10.0.0.2"))
    await cluster.start()
    await cluster.settled()
    cluster.apply(endpoint_slice("echo-2", "app", "echo", "10.0.0.3", "10.0.0.4"))
    await cluster.settled()
    cluster.apply(endpoint_slice("echo-1", "app", "echo", "10.0.0.5"))
    await cluster.settled()
    cluster.remove(endpoint_slice("echo-1", "app", "echo"))
    await cluster.settled()
    cluster.apply(service("echo", "app", {}))  # no longer global: both kinds withdrawn
    state = await cluster.settled()
    assert not any(k.startswith(b"cilium/state/endpointslices/") for k in state)
    # A bad slice of a global service exports nothing; a later valid version is exported.
    cluster.apply(service("echo", "app"),
                  endpoint_slice("echo-3", "app", "echo", "not-an-ip"))
    await cluster.settled()
    cluster.apply(endpoint_slice("echo-3", "app", "echo", "10.0.0.6"))
    state = await cluster.settled()
    assert b"cilium/state/endpointslices/v1/cluster1/app/echo-3" in state


@pytest.mark.parametrize("mode", ["prefer-legacy", "prefer-endpointslice",
                                  "only-endpointslice"])
async def test_service_v2_modes_mirrored_by_kvstoremesh(cluster: Cluster, mode: str,
                                                        tmp_path: Path,
                                                        etcd_factory: EtcdFactory) -> None:
    cluster.apply(service("echo", "app"), endpoint_slice("echo-1", "app", "echo", "10.0.0.2"),
                  endpoint_slice("echo-2", "app", "echo", "10.0.0.3"))
    await cluster.start(service_v2=mode)
    state = await cluster.settled()
    legacy = mode != "only-endpointslice"
    assert any(k.startswith(b"cilium/state/services/") for k in state) is legacy
    assert sum(k.startswith(b"cilium/state/endpointslices/v1/") for k in state) == 2
    tree = await read_tree(cluster.client)
    config = CiliumClusterConfig.from_json(tree[b"cilium/cluster-config/cluster1"])
    assert config.endpoint_slices_export_mode == (
        "services-and-endpointslices" if legacy else "endpointslices-only")
    assert (SERVICES.state_canary(CLUSTER).encode() in tree) is legacy
    assert ENDPOINT_SLICES.state_canary(CLUSTER).encode() in tree

    # Another cluster's KVStoreMesh mirrors it byte for byte.
    env = await MeshEnv.create(tmp_path / "other", etcd_factory)
    try:
        (env.config_dir / CLUSTER).write_text(cluster.config.read_text())
        await env.start_mesh()
        async with asyncio.timeout(15):
            while not (env.mesh.remotes.get(CLUSTER) and env.mesh.remotes[CLUSTER].status().ready):
                await asyncio.sleep(0.05)
        published = await read_tree(cluster.client, b"cilium/state/")
        translated = {}
        for key, value in published.items():
            for resource in RESOURCES:
                source = resource.state_prefix(CLUSTER).encode()
                if key.startswith(source):
                    translated[resource.cache_prefix(CLUSTER).encode()
                               + key[len(source):]] = value
        assert await read_tree(env.local, b"cilium/cache/") == translated
        cached = await read_tree(env.local, b"cilium/cluster-config/")
        assert CiliumClusterConfig.from_json(
            cached[b"cilium/cluster-config/cluster1"]).endpoint_slices_export_mode == \
            config.endpoint_slices_export_mode
    finally:
        await env.close()


# ------------------------------------------------------------------ Kubernetes flags


def test_flags_parse_into_options_and_source(tmp_path: Path) -> None:
    from apiserver import main as apiserver_main

    config = tmp_path / "etcd.yaml"
    config.write_text("endpoints:\n- http://127.0.0.1:2379\n")
    base = ["--cluster-name", "c1", "--cluster-id", "1", "--kvstore-opt",
            f"etcd.config={config}"]
    args = apiserver_main.build_parser().parse_args([
        *base, "--k8s-kubeconfig-path", str(tmp_path / "kc"), "--k8s-api-server",
        "https://10.0.0.1:6443", "--k8s-client-qps", "5.5", "--k8s-client-burst", "7",
        "--k8s-service-proxy-name", "mine", "--enable-k8s-endpoint-slice=false",
        "--enable-cilium-endpoint-slice", "--clustermesh-default-global-namespace=false",
        "--clustermesh-service-v2", "only-endpointslice"])
    options, source = apiserver_main.options_from_args(args)
    assert isinstance(source, KubernetesSource)
    assert source.kubeconfig == tmp_path / "kc"
    assert source.api_server == "https://10.0.0.1:6443"
    assert source.label_selectors == {
        "Service": "service.kubernetes.io/service-proxy-name=mine",
        "EndpointSlice": "endpointslice.kubernetes.io/managed-by!="
                         "endpointslice-mesh-controller.cilium.io"}
    assert (source.rate_limiter.qps, source.rate_limiter.burst) == (5.5, 7)
    assert options.cilium_endpoint_slices is True
    assert options.default_global_namespace is False
    assert options.service_v2 == "only-endpointslice"
    assert options.cluster_config.endpoint_slices_export_mode == "endpointslices-only"
    # --kubeconfig stays an alias; the defaults are upstream's.
    args = apiserver_main.build_parser().parse_args([*base, "--kubeconfig", "/k"])
    options, source = apiserver_main.options_from_args(args)
    assert isinstance(source, KubernetesSource) and source.kubeconfig == Path("/k")
    assert source.label_selectors["Service"] == "!service.kubernetes.io/service-proxy-name"
    assert (source.rate_limiter.qps, source.rate_limiter.burst) == (10, 20)
    assert (options.cilium_endpoint_slices, options.default_global_namespace,
            options.service_v2) == (False, True, "prefer-legacy")
    with pytest.raises(SystemExit):
        apiserver_main.build_parser().parse_args([*base, "--clustermesh-service-v2", "x"])


async def test_selectors_keep_foreign_services_and_mirrored_slices_out(
        tmp_path: Path, etcd: EtcdServer) -> None:
    """Through the apiserver: a Service of another service proxy and an EndpointSlice
    mirrored from another cluster are never listed, so never exported."""
    async with fk.FakeKube((*fk.ALL_RESOURCES, CES)) as kube:
        c = Cluster("kubernetes", tmp_path, etcd, kube)
        await c.client.connect()
        try:
            other = service("other", "app")
            other["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "x"}
            mirrored = endpoint_slice("echo-remote", "app", "echo", "10.1.0.9")
            mirrored["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = (
                "endpointslice-mesh-controller.cilium.io")
            c.apply(ns("app"), ns("sentinels", "true"), service("echo", "app"),
                    endpoint_slice("echo-1", "app", "echo", "10.0.0.2"))
            for obj in (other, mirrored):  # straight into the stand-in, not `expected`
                kube.apply(RESOURCES_BY_KIND[obj["kind"]], copy.deepcopy(obj))
            await c.start()
            state = await c.settled()
            assert b"cilium/state/services/v1/cluster1/app/other" not in state
            assert b"cilium/state/endpointslices/v1/cluster1/app/echo-remote" not in state
        finally:
            await c.stop()
            await c.client.close()
