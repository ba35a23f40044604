"""KVStoreMesh test environment: remote clusters on real etcd, an in-process daemon,
and the convergence check every mesh test ends with.

:class:`MeshEnv` owns one local etcd (the cache) and any number of remote
clusters (:class:`Remote`), each with its own etcd (or sharing one, as several
cluster names can).  A remote publishes like a clustermesh-apiserver does:
``cilium/cluster-config/<name>``, the heartbeat, state keys and sync canaries.

:meth:`MeshEnv.expected` computes, from what the remotes hold *now*, the exact
local ``cilium/`` tree a correct KVStoreMesh must converge to (cache keys with
byte-identical values, one canary per resource the remote's cluster-config calls
for, the cached cluster-config), and :meth:`MeshEnv.assert_converged` waits for it
and reports missing, extra and different keys otherwise.  Which resources are
mirrored, and which entries the agents' rules accept (every resource, EndpointSlices
included), comes from :mod:`harness.oracle`, written from the spec rather than from
the daemon's code: the daemon's own validation (:mod:`kvstoremesh.validation`) is
never asked what to expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from apiserver.endpointslices import endpointslice_entries
from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    HEARTBEAT_KEY,
    IDENTITIES,
    KVSTOREMESH_LOCK,
    KVSTOREMESH_REPLICAS,
    NODES,
    RESOURCES,
    SERVICE_EXPORTS,
    SERVICES,
    Resource,
    cluster_config_key,
)
from kvstoremesh.mesh import KVStoreMesh
from kvstoremesh.options import MeshOptions

from .etcd import EtcdCluster, EtcdFactory, EtcdServer
from .oracle import (
    CANARY_ONLY,
    MIRROR,
    NOTHING,
    cached_cluster_config,
    entry_accepted,
    expected_reflection,
)

CANARY = b"<rfc3339>"  # placeholder in expected trees: any RFC3339 UTC timestamp
_RFC3339 = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
LOCAL_NAME = "local"


# KVStoreMesh's own keys, of no cluster: its leader lock and the replicas' registrations
# (the leader election tests check them; the cache's checks leave them out).
DAEMON_KEYS = (f"{KVSTOREMESH_LOCK}/".encode(), f"{KVSTOREMESH_REPLICAS}/".encode())


async def read_tree(client: EtcdClient, prefix: bytes = b"cilium/") -> dict[bytes, bytes]:
    """Every key under ``prefix`` and its value (:data:`DAEMON_KEYS` left out)."""
    kvs, _ = await client.list_prefix(prefix)
    return {kv.key: kv.value for kv in kvs if not kv.key.startswith(DAEMON_KEYS)}


async def tree_revisions(client: EtcdClient, prefix: bytes = b"cilium/") -> dict[bytes, int]:
    """Each key's mod revision (:data:`DAEMON_KEYS` left out)."""
    kvs, _ = await client.list_prefix(prefix)
    return {kv.key: kv.mod_revision for kv in kvs if not kv.key.startswith(DAEMON_KEYS)}


def sample_state(name: str, cluster_id: int, *, nodes: int = 2, endpoints: int = 3,
                 services: int = 2) -> dict[Resource, dict[str, bytes]]:
    """Realistic objects of one cluster: key suffix (below the state prefix) -> value.

    Every service has an EndpointSlice too: what a remote with an EndpointSlice export
    mode mirrors, and one without must not (the cache then holds none of them).
    """
    ident = (cluster_id << 16) + 1
    state: dict[Resource, dict[str, bytes]] = {r: {} for r in RESOURCES}
    for i in range(nodes):
        state[NODES][f"node-{i}"] = (
            f'{{"Name":"node-{i}","Cluster":"{name}","IPAddresses":[{{"Type":"InternalIP",'
            f'"IP":"172.18.{cluster_id}.{i + 2}"}}],"ClusterID":{cluster_id},'
            f'"Source":"custom-resource","EncryptionKey":0}}').encode()
    state[IDENTITIES][str(ident)] = (
        f"k8s:app=echo;k8s:io.cilium.k8s.policy.cluster={name};"
        "k8s:io.kubernetes.pod.namespace=default;").encode()
    for i in range(endpoints):
        ip = f"10.{cluster_id}.0.{i + 5}"
        state[ENDPOINTS][ip] = (
            f'{{"IP":"{ip}","HostIP":"172.18.{cluster_id}.2","ID":{ident},"Key":0,'
            f'"Metadata":"","K8sNamespace":"default","K8sPodName":"echo-{i}"}}').encode()
    ip6 = f"fd00:10:{cluster_id}::5"
    state[ENDPOINTS][ip6] = (f'{{"IP":"{ip6}","HostIP":"172.18.{cluster_id}.2",'
                             f'"ID":{ident},"Key":0,"Metadata":""}}').encode()
    for i in range(services):
        state[SERVICES][f"default/svc-{i}"] = (
            f'{{"cluster":"{name}","namespace":"default","name":"svc-{i}","frontends":'
            f'{{"10.96.0.{i + 10}":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{}},'
            f'"labels":{{}},"selector":{{"app":"echo"}},"includeExternal":true,"shared":true,'
            f'"clusterID":{cluster_id}}}').encode()
    for i in range(services):
        state[ENDPOINT_SLICES].update(sample_endpointslice(name, cluster_id, f"svc-{i}"))
    state[SERVICE_EXPORTS]["default/svc-0"] = (
        f'{{"cluster":"{name}","name":"svc-0","namespace":"default",'
        '"exportCreationTimestamp":"2026-01-01T00:00:00Z","ports":[],"type":"ClusterSetIP",'
        '"sessionAffinity":"None"}').encode()
    return state


def sample_endpointslice(cluster: str, cluster_id: int, service: str) -> dict[str, bytes]:
    """One EndpointSlice of ``default/<service>`` as the apiserver exports it: key suffix
    -> value."""
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-{cluster_id:05x}", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by":
                                    "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [f"10.{cluster_id}.1.{i + 5}"],
                       "conditions": {"ready": True, "serving": True, "terminating": False},
                       "nodeName": f"node-{i}", "zone": "zone-a"} for i in range(2)],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }
    prefix = ENDPOINT_SLICES.state_prefix(cluster)
    return {key.removeprefix(prefix): value for key, value in
            endpointslice_entries(slice_, cluster=cluster, cluster_id=cluster_id).items()}


@dataclass
class Remote:
    """A remote cluster as its clustermesh-apiserver would publish it."""

    name: str
    config: CiliumClusterConfig
    server: EtcdServer | EtcdCluster
    client: EtcdClient
    config_file: Path
    cached: bool = False  # publishes a KVStoreMesh's cache layout (chained caches)

    def prefix(self, resource: Resource) -> str:
        return resource.remote_prefix(self.name, cached=self.cached)

    def key(self, resource: Resource, suffix: str) -> bytes:
        return (self.prefix(resource) + suffix).encode()

    async def put(self, resource: Resource, suffix: str, value: bytes) -> int:
        return await self.client.put(self.key(resource, suffix), value)

    async def delete(self, resource: Resource, suffix: str) -> int:
        return await self.client.delete(self.key(resource, suffix))

    async def publish(self, state: dict[Resource, dict[str, bytes]]) -> None:
        for resource, objects in state.items():
            for suffix, value in objects.items():
                await self.put(resource, suffix, value)

    async def write_config(self, config: CiliumClusterConfig | None = None) -> None:
        if config is not None:
            self.config = config
        await self.client.put(cluster_config_key(self.name).encode(), self.config.to_json())

    async def heartbeat(self) -> None:
        await self.client.put(HEARTBEAT_KEY.encode(), time.strftime("%Y-%m-%dT%H:%M:%SZ").encode())

    def published_canaries(self) -> tuple[Resource, ...]:
        """The canaries this remote writes once synced, for its cluster-config: a
        clustermesh-apiserver writes none for what it does not export (EndpointSlices
        without a mode, services when ``endpointslices-only``); a KVStoreMesh (``cached``)
        writes the services one anyway."""
        exported = []
        for resource in RESOURCES:
            reflection = expected_reflection(resource, self.config)
            if reflection == NOTHING or (reflection == CANARY_ONLY and resource is SERVICES
                                         and not self.cached):
                continue
            exported.append(resource)
        return tuple(exported)

    async def write_canaries(self, resources: tuple[Resource, ...] | None = None) -> None:
        """Write the given remote canaries (default: :meth:`published_canaries`)."""
        for resource in self.published_canaries() if resources is None else resources:
            await self.client.put(resource.remote_canary(self.name, cached=self.cached).encode(),
                                  b"2026-01-01T00:00:00Z")


@dataclass
class MeshEnv:
    dir: Path
    factory: EtcdFactory
    local_server: EtcdServer
    local: EtcdClient
    remotes: dict[str, Remote] = field(default_factory=dict)
    mesh: KVStoreMesh | None = None
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event | None = None

    @property
    def config_dir(self) -> Path:
        return self.dir / "clustermesh"

    @property
    def local_config(self) -> Path:
        return self.dir / "local-etcd.yaml"

    @classmethod
    async def create(cls, dir: Path, factory: EtcdFactory,
                     local_server: EtcdServer | EtcdCluster | None = None, *,
                     daemon_user: tuple[str, str] | None = None) -> MeshEnv:
        """``daemon_user``: (name, password) the daemon's local etcd config logs in with
        (auth on); the test's own client is root then."""
        local_server = local_server or factory(name="local")
        (dir / "clustermesh").mkdir(parents=True, exist_ok=True)
        user, password = daemon_user or (None, None)
        local_server.client_config(dir / "local-etcd.yaml", username=user, password=password)
        own = dir / "local-etcd.yaml"
        if local_server.auth_enabled:
            own = local_server.client_config(dir / "harness-local-etcd.yaml", username="root",
                                             password=local_server.root_password)
        local = EtcdClient(load_etcd_config(own), name="test local")
        await local.connect()
        return cls(dir=dir, factory=factory, local_server=local_server, local=local)

    async def add_remote(self, name: str, cluster_id: int, *,
                         server: EtcdServer | EtcdCluster | None = None,
                         synced_canaries: bool = True, service_exports: bool | None = None,
                         endpoint_slices: str = "", cached: bool = False,
                         write_file: bool = True) -> Remote:
        server = server or self.factory(name=f"remote-{name}")
        config_file = self.dir / f"remote-{name}.yaml"
        server.client_config(config_file)
        client = EtcdClient(load_etcd_config(config_file), name=f"test {name}")
        await client.connect()
        config = CiliumClusterConfig(id=cluster_id, synced_canaries=synced_canaries,
                                     max_connected_clusters=255,
                                     service_exports_enabled=service_exports, cached=cached,
                                     endpoint_slices_export_mode=endpoint_slices)
        remote = Remote(name=name, config=config, server=server, client=client,
                        config_file=self.config_dir / name, cached=cached)
        await remote.write_config()
        await remote.heartbeat()
        self.remotes[name] = remote
        if write_file:
            self.write_remote_file(remote)
        return remote

    def write_remote_file(self, remote: Remote) -> None:
        # Atomic, like a Kubernetes Secret volume update.
        tmp = self.config_dir / f".{remote.name}.tmp"
        tmp.write_bytes((self.dir / f"remote-{remote.name}.yaml").read_bytes())
        tmp.replace(remote.config_file)

    def remove_remote_file(self, name: str) -> Remote:
        remote = self.remotes.pop(name)
        remote.config_file.unlink()
        return remote

    def options(self, **overrides: object) -> MeshOptions:
        values: dict[str, object] = {
            "cluster_name": LOCAL_NAME, "cluster_id": 200, "config_dir": self.config_dir,
            "local_config": self.local_config, "config_poll_interval": 0.05,
            "removal_grace": 0.0, "status_check_interval": 1.0,
            "health_port": 0, "api_serve_addr": "127.0.0.1:0",
            "prometheus_serve_addr": "127.0.0.1:0",
        }
        values.update(overrides)
        return MeshOptions(**values)  # type: ignore[arg-type]

    async def start_mesh(self, *, clock: Clock = REAL_CLOCK,
                         **overrides: object) -> KVStoreMesh:
        """Run the daemon with ``overrides`` of :meth:`options`, its timers on ``clock``."""
        assert self._task is None, "mesh already running"
        self.mesh = KVStoreMesh(self.options(**overrides), clock=clock)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.mesh.run(self._stop))
        return self.mesh

    async def stop_mesh(self) -> None:
        if self._task is None:
            return
        assert self._stop is not None
        self._stop.set()
        try:
            async with asyncio.timeout(15):
                await self._task
        finally:
            self._task = None

    def check_running(self) -> None:
        """Raise if the in-process daemon ended: its error, or AssertionError."""
        if self._task is not None and self._task.done():
            self._task.result()
            raise AssertionError("the KVStoreMesh task ended")

    async def wait_ready(self, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                if self._task is not None and self._task.done():
                    self._task.result()
                mesh = self.mesh
                if (mesh is not None and mesh.config_ready.is_set() and self.remotes
                        and all(name in mesh.remotes and mesh.remotes[name].status().ready
                                for name in self.remotes)):
                    return
                await asyncio.sleep(0.05)

    async def expected(self) -> dict[bytes, bytes]:
        """The exact local tree a correct KVStoreMesh holds for the current remotes.

        With validation on (the default), entries the agents' rules reject are not
        expected in the cache; the rules are :func:`harness.oracle.entry_accepted`'s
        (the daemon's own are tested in test_validation, and compared with the
        oracle's in test_oracle).
        """
        validate = self.mesh is None or self.mesh.options.validate_remote_data
        max_connected = self.mesh.options.max_connected_clusters if self.mesh else 255
        tree: dict[bytes, bytes] = {}
        for remote in self.remotes.values():
            name = remote.name
            tree[cluster_config_key(name).encode()] = cached_cluster_config(remote.config)
            for resource in RESOURCES:
                reflection = expected_reflection(resource, remote.config)
                if reflection == NOTHING:
                    continue
                tree[resource.cache_canary(name).encode()] = CANARY
                if reflection != MIRROR:
                    continue
                source = remote.prefix(resource).encode()
                target = resource.cache_prefix(name).encode()
                for key, value in (await read_tree(remote.client, source)).items():
                    suffix = key[len(source):]
                    if validate and not entry_accepted(
                            resource, suffix.decode(errors="replace"), value,
                            cluster=name, cluster_id=remote.config.id,
                            max_connected_clusters=max_connected):
                        continue
                    tree[target + suffix] = value
        return tree

    async def mirror_sentinel(self, remote: Remote, name: str = "sentinel",
                              timeout: float = 10.0) -> bytes:
        """Put a new node on ``remote`` and wait until the daemon has cached it; returns
        its cache key.  The marker for a negative check: events the daemon received
        before it (on this remote's session) have gone through the reflector and the
        writer by then, so "X was not cached" can be asserted without a fixed sleep."""
        value = json.dumps({"Name": name, "Cluster": remote.name,
                            "ClusterID": remote.config.id}).encode()
        await remote.put(NODES, name, value)
        key = NODES.cache_prefix(remote.name).encode() + name.encode()
        try:
            async with asyncio.timeout(timeout):
                while (kv := await self.local.get(key)) is None or kv.value != value:
                    self.check_running()
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"sentinel {name} of {remote.name} not cached within "
                                 f"{timeout}s") from None
        return key

    async def local_tree(self) -> dict[bytes, bytes]:
        """The local ``cilium/`` tree minus the local cluster's own keys and the leader
        election's."""
        tree = await read_tree(self.local)
        own = (f"cilium/cluster-config/{LOCAL_NAME}".encode(),
               f"cilium/synced/{LOCAL_NAME}/".encode(), b"cilium/state/", b"cilium/.heartbeat",
               *DAEMON_KEYS)
        return {k: v for k, v in tree.items() if not k.startswith(own)}

    async def diff(self) -> dict[str, list[bytes]]:
        expected = await self.expected()
        actual = await self.local_tree()
        different = [k for k in expected.keys() & actual.keys()
                     if not value_matches(expected[k], actual[k])]
        return {"missing": sorted(expected.keys() - actual.keys()),
                "extra": sorted(actual.keys() - expected.keys()),
                "different": sorted(different)}

    async def assert_converged(self, timeout: float = 15.0) -> None:
        """Wait until the local tree equals :meth:`expected`; fail with the diff otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            if self._task is not None and self._task.done():
                self._task.result()
            diff = await self.diff()
            if not any(diff.values()):
                return
            if time.monotonic() > deadline:
                shown = {k: v[:10] for k, v in diff.items()}
                raise AssertionError(f"local cache did not converge within {timeout}s: {shown}")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop_mesh()
        for remote in self.remotes.values():
            await remote.client.close()
        await self.local.close()


def value_matches(expected: bytes, actual: bytes) -> bool:
    if expected == CANARY:
        return _RFC3339.match(actual) is not None
    return expected == actual
