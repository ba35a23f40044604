"""Background churn on remote clusters, and the rig the reliability tests build on.

:class:`Churn` writes into one or more :class:`~harness.mesh.Remote` clusters as a
busy clustermesh-apiserver would: new objects, updates, deletes, across every
resource (nodes, services, service exports, identities, endpoints, EndpointSlices —
mirrored only from remotes with an EndpointSlice export mode), now and then
several in one txn — all from a seeded :class:`random.Random`, so a seed names a
reproducible workload.  It keeps the remotes' heartbeats fresh as well (with a
small ``heartbeat_timeout`` the daemon would otherwise reconnect all the time).

Faults are the point of the tests that use it, so a write that fails (the remote
is down, paused, replaced) is counted and skipped, never raised: churn goes on
against whatever answers.  Every write is bounded by a timeout, the rate is
bounded (``rate`` operations per second over all remotes) and :meth:`Churn.stop`
ends it promptly.  Stop it before the final convergence check: the check then
compares against a remote that no longer changes.

:class:`Rig` assembles a scenario on a :class:`~harness.mesh.MeshEnv`: remotes
with bulk data and sync canaries, each optionally behind a
:class:`~harness.tcpproxy.TcpProxy` (the daemon's config file then names the
proxy, while the test's own client talks to etcd directly), plus one churn over
all of them.  :meth:`Rig.close` stops the churn and the proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from apiserver.endpointslices import endpointslice_entries
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.client import EtcdClient, delete_op, put_op
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import EtcdError
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IDENTITIES,
    NODES,
    RESOURCES,
    SERVICES,
    Resource,
)

from .certs import ClientCert
from .etcd import EtcdCluster, EtcdServer, free_port
from .mesh import MeshEnv, Remote, sample_state
from .oracle import identity_bounds
from .tcpproxy import TcpProxy

log = logging.getLogger(__name__)

WRITE_TIMEOUT = 3.0
_REPO = Path(__file__).resolve().parents[2]
BULK_BASE = 10 << 16  # key numbering of publish_bulk (10.10.x.x, node-655360...)
CHURN_BASE = 20 << 16  # and of the churn: the two never collide


@dataclass
class ChurnStats:
    puts: int = 0
    deletes: int = 0
    txns: int = 0
    failed: int = 0
    heartbeats: int = 0
    by_remote: dict[str, int] = field(default_factory=dict)

    @property
    def writes(self) -> int:
        return self.puts + self.deletes

    def __str__(self) -> str:
        return (f"{self.puts} puts, {self.deletes} deletes ({self.txns} txns), "
                f"{self.failed} failed writes, {self.heartbeats} heartbeats")


def _value(rng: random.Random, remote: Remote, resource: Resource, suffix: str,
           generation: int) -> bytes:
    """A value the agents' rules accept (as the apiserver writes it); about one in
    twenty is invalid instead (raw bytes, or JSON naming another cluster), so that
    entries also flip between cached and rejected."""
    cluster, cluster_id = remote.name, remote.config.id
    roll = rng.random()
    if roll < 0.03:
        return rng.randbytes(rng.randrange(0, 64))
    if roll < 0.05:
        cluster = cluster + "-impostor"
    pad = "x" * rng.randrange(0, 160)
    if resource is IDENTITIES:
        return (f"k8s:app=churn-{generation};k8s:io.cilium.k8s.policy.cluster={cluster};"
                f"k8s:pad={pad}").encode()
    if resource is ENDPOINT_SLICES:  # zstd protobuf, as the apiserver encodes it
        namespace, name = suffix.split("/", 1)
        slice_ = {"metadata": {"namespace": namespace, "name": name,
                               "labels": {"kubernetes.io/service-name": name,
                                          "generation": str(generation)},
                               "annotations": {"pad": pad}},
                  "addressType": "IPv4",
                  "endpoints": [{"addresses": [f"10.{cluster_id % 256}.2.{generation % 250}"],
                                 "conditions": {"ready": True}}],
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        (value,) = endpointslice_entries(slice_, cluster=cluster, cluster_id=cluster_id).values()
        return value
    if resource is ENDPOINTS:
        low, _ = identity_bounds(cluster_id, 255)
        doc: dict[str, object] = {"IP": suffix, "ID": low + generation % 1000, "Key": 0,
                                  "Metadata": pad, "K8sNamespace": "churn"}
    elif resource is NODES:
        doc = {"Name": suffix, "Cluster": cluster, "ClusterID": cluster_id,
               "IPAddresses": [], "Generation": generation, "Pad": pad}
    else:
        namespace, name = suffix.split("/", 1)
        doc = {"cluster": cluster, "namespace": namespace, "name": name}
        if resource is SERVICES:
            doc |= {"clusterID": cluster_id, "frontends": {"10.96.0.1": {}}, "backends": {},
                    "labels": {"generation": str(generation)}, "pad": pad}
        else:
            doc |= {"exportCreationTimestamp": "2026-01-01T00:00:00Z", "type": "ClusterSetIP",
                    "sessionAffinity": "None", "ports": [], "pad": pad}
    return json.dumps(doc, separators=(",", ":")).encode()


def _suffix(remote: Remote, resource: Resource, n: int, *, base: int) -> str:
    """Key below the resource prefix: unique per ``n`` (``base`` separates workloads)."""
    if resource is ENDPOINTS:
        m = base + n
        return f"10.{m // 65536 % 256}.{m // 256 % 256}.{m % 256}"
    if resource is IDENTITIES:
        low, _ = identity_bounds(remote.config.id, 255)
        return str(low + 1000 + (base + n) % 60000)
    if resource is NODES:
        return f"node-{base + n}"
    return f"ns-{n % 7}/svc-{base + n}"


class Churn:
    """``churn = Churn(remotes, seed=1, rate=150); churn.start(); ...; await churn.stop()``."""

    def __init__(self, remotes: Iterable[Remote], *, seed: int, rate: float = 150.0,
                 heartbeat_interval: float = 0.25, txn_probability: float = 0.1,
                 delete_probability: float = 0.35) -> None:
        self.remotes = list(remotes)
        self.seed = seed
        self.rng = random.Random(seed)
        self.rate = rate
        self.heartbeat_interval = heartbeat_interval
        self.txn_probability = txn_probability
        self.delete_probability = delete_probability
        self.stats = ChurnStats()
        # Keys this churn created and believes to exist, per remote name.
        self._keys: dict[str, list[tuple[Resource, str]]] = {r.name: [] for r in self.remotes}
        self._counter = 0
        self._generation = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._paused = asyncio.Event()
        self._paused.set()  # set = running

    # ------------------------------------------------------------------ control

    def start(self) -> Churn:
        assert not self._tasks, "already started"
        self._tasks = [asyncio.create_task(self._writes(), name="churn-writes")]
        if self.heartbeat_interval > 0:
            self._tasks.append(asyncio.create_task(self._heartbeats(), name="churn-heartbeats"))
        return self

    async def stop(self) -> ChurnStats:
        """Stop writing (a write in flight is abandoned). Heartbeats go on — a real
        apiserver never stops them — until :meth:`close`."""
        await self._cancel([t for t in self._tasks if t.get_name() == "churn-writes"])
        return self.stats

    async def close(self) -> ChurnStats:
        """Stop writes and heartbeats."""
        await self._cancel(list(self._tasks))
        return self.stats

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = [t for t in self._tasks if t not in tasks]
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result,
                                                                    asyncio.CancelledError):
                raise result

    def replace_remote(self, remote: Remote) -> None:
        """Write to ``remote`` instead of the remote of the same name (a new etcd)."""
        self.remotes = [remote if r.name == remote.name else r for r in self.remotes]
        self._keys[remote.name] = []

    def remove_remote(self, name: str) -> None:
        self.remotes = [r for r in self.remotes if r.name != name]

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks if t.get_name() == "churn-writes")

    # -------------------------------------------------------------------- loops

    async def _writes(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while True:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # a stalled write must not cause a burst
            if not self.remotes:
                continue
            remote = self.rng.choice(self.remotes)
            ops = self._plan(remote)
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    if len(ops) == 1:
                        kind, key, value = ops[0]
                        if kind == "put":
                            await remote.client.put(key, value)
                        else:
                            await remote.client.delete(key)
                    else:
                        await remote.client.txn(success=[
                            put_op(k, v) if kind == "put" else delete_op(k)
                            for kind, k, v in ops])
                        self.stats.txns += 1
            except (EtcdError, TimeoutError, OSError) as exc:
                self.stats.failed += 1
                log.debug("churn write to %s failed: %s", remote.name, exc)
                continue
            for kind, _, _ in ops:
                if kind == "put":
                    self.stats.puts += 1
                else:
                    self.stats.deletes += 1
            self.stats.by_remote[remote.name] = self.stats.by_remote.get(remote.name, 0) + len(ops)

    def _plan(self, remote: Remote) -> list[tuple[str, bytes, bytes]]:
        """One write (or a small txn of distinct keys) for ``remote``."""
        count = self.rng.randint(2, 6) if self.rng.random() < self.txn_probability else 1
        ops: list[tuple[str, bytes, bytes]] = []
        used: set[bytes] = set()
        keys = self._keys[remote.name]
        for _ in range(count):
            self._generation += 1
            if keys and self.rng.random() < self.delete_probability:
                resource, suffix = keys.pop(self.rng.randrange(len(keys)))
                kind = "delete"
            elif keys and self.rng.random() < 0.3:
                resource, suffix = self.rng.choice(keys)  # update in place
                kind = "put"
            else:
                resource = self.rng.choice(RESOURCES)
                self._counter += 1
                suffix = _suffix(remote, resource, self._counter, base=CHURN_BASE)
                keys.append((resource, suffix))
                kind = "put"
            key = remote.key(resource, suffix)
            if key in used:
                continue  # a txn may not touch one key twice
            used.add(key)
            value = (b"" if kind == "delete"
                     else _value(self.rng, remote, resource, suffix, self._generation))
            ops.append((kind, key, value))
        return ops

    async def _heartbeats(self) -> None:
        # One task per remote: a hung remote must not delay the others' heartbeats.
        beating: dict[int, asyncio.Task[None]] = {}
        try:
            while True:
                current = {id(r): r for r in self.remotes}
                for key, remote in current.items():
                    if key not in beating:
                        beating[key] = asyncio.create_task(
                            run_heartbeats([remote], self.heartbeat_interval, self.stats))
                for key in [k for k in beating if k not in current]:
                    beating.pop(key).cancel()
                await asyncio.sleep(self.heartbeat_interval)
        finally:
            for task in beating.values():
                task.cancel()
            await asyncio.gather(*beating.values(), return_exceptions=True)


async def run_heartbeats(remotes: Iterable[Remote], interval: float = 0.25,
                         stats: ChurnStats | None = None) -> None:
    """Keep heartbeats fresh without churn (run as a task, cancel to stop)."""
    remotes = list(remotes)
    while True:
        for remote in remotes:
            with contextlib.suppress(EtcdError, TimeoutError, OSError):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await remote.heartbeat()
                    if stats is not None:
                        stats.heartbeats += 1
        await asyncio.sleep(interval)


# ----------------------------------------------------------------------------- the rig


async def publish_bulk(remote: Remote, count: int, *, seed: int, txn_ops: int = 100,
                       value_size: int = 120) -> int:
    """Write ``count`` more objects (spread over every resource) in txns; returns count."""
    rng = random.Random(seed)
    weights = {ENDPOINTS: 5, IDENTITIES: 2, NODES: 1}
    population = [r for r in RESOURCES for _ in range(weights.get(r, 1))]
    ops = []
    for n in range(count):
        resource = rng.choice(population)
        suffix = _suffix(remote, resource, n, base=BULK_BASE)
        value = _value(random.Random(rng.random()), remote, resource, suffix, n)
        if value_size > 120 and resource is not IDENTITIES:  # bigger, still valid
            doc = json.loads(value) if value[:1] == b"{" else None
            if isinstance(doc, dict):
                doc["Bulk"] = "b" * value_size
                value = json.dumps(doc, separators=(",", ":")).encode()
        ops.append(put_op(remote.key(resource, suffix), value))
    for i in range(0, len(ops), txn_ops):
        await remote.client.txn(success=ops[i:i + txn_ops])
    return count


def write_daemon_config(env: MeshEnv, name: str, server: EtcdServer | EtcdCluster, *,
                        endpoints: list[str] | None = None, client: ClientCert | None = None,
                        username: str | None = None, password: str | None = None) -> Path:
    """Atomically (re)write the daemon's config file for cluster ``name``."""
    tmp = env.config_dir / f".{name}.daemon.tmp"
    server.client_config(tmp, endpoints=endpoints, client=client, username=username,
                         password=password)
    target = env.config_dir / name
    tmp.replace(target)
    return target


async def attach_remote(env: MeshEnv, name: str, cluster_id: int,
                        server: EtcdServer | EtcdCluster, harness_config: Path, *,
                        service_exports: bool | None = True) -> Remote:
    """Like :meth:`MeshEnv.add_remote` for servers the default client config cannot talk
    to (client certificates, auth): the test's own client uses ``harness_config``.
    Writes the cluster-config and a heartbeat; writes no daemon config file."""
    client = EtcdClient(load_etcd_config(harness_config), name=f"test {name}")
    await client.connect()
    config = CiliumClusterConfig(id=cluster_id, synced_canaries=True, max_connected_clusters=255,
                                 service_exports_enabled=service_exports)
    remote = Remote(name=name, config=config, server=server, client=client,
                    config_file=env.config_dir / name)
    await remote.write_config()
    await remote.heartbeat()
    old = env.remotes.get(name)
    if old is not None:
        await old.client.close()
    env.remotes[name] = remote
    return remote


class Rig:
    """Remotes with data (optionally behind proxies) and one churn over them."""

    def __init__(self, env: MeshEnv, seed: int) -> None:
        self.env = env
        self.seed = seed
        self.rng = random.Random(seed)
        self.proxies: dict[str, TcpProxy] = {}
        self.churn: Churn | None = None
        self._stopped: list[Churn] = []
        self.retired: list[Remote] = []

    async def add(self, name: str, cluster_id: int, *, keys: int = 200, proxied: bool = True,
                  server: EtcdServer | EtcdCluster | None = None, write_file: bool = True,
                  service_exports: bool | None = True, endpoint_slices: str = "",
                  value_size: int = 120) -> Remote:
        remote = await self.env.add_remote(name, cluster_id, server=server, write_file=False,
                                           service_exports=service_exports,
                                           endpoint_slices=endpoint_slices)
        await self.populate(remote, keys, value_size=value_size)
        if proxied:
            proxy = await TcpProxy.to_url(remote.server.endpoints[0], name=name).start()
            self.proxies[name] = proxy
        if write_file:
            self.write_file(name)
        return remote

    async def populate(self, remote: Remote, keys: int, *, value_size: int = 120) -> None:
        await remote.publish(sample_state(remote.name, remote.config.id))
        await publish_bulk(remote, keys, seed=self.seed * 1000 + remote.config.id,
                           value_size=value_size)
        await remote.write_canaries()

    def write_file(self, name: str, **creds: object) -> Path:
        """The daemon's config for ``name``: through its proxy if it has one."""
        remote = self.env.remotes[name]
        proxy = self.proxies.get(name)
        endpoints = [proxy.url] if proxy is not None else None
        return write_daemon_config(self.env, name, remote.server, endpoints=endpoints,
                                   **creds)  # type: ignore[arg-type]

    def start_churn(self, rate: float = 150.0, **kwargs: object) -> Churn:
        assert self.churn is None or not self.churn.running
        if self.churn is not None:
            self._stopped.append(self.churn)
        self.churn = Churn(self.env.remotes.values(), seed=self.seed, rate=rate,
                           **kwargs).start()  # type: ignore[arg-type]
        return self.churn

    async def stop_churn(self) -> ChurnStats:
        """Stop the writes (heartbeats go on until :meth:`close`)."""
        assert self.churn is not None
        return await self.churn.stop()

    async def close(self) -> None:
        for churn in [*self._stopped, *([self.churn] if self.churn else [])]:
            with contextlib.suppress(Exception):
                await churn.close()
        self.churn = None
        for proxy in self.proxies.values():
            await proxy.close()
        for remote in self.retired:
            with contextlib.suppress(Exception):
                await remote.client.close()


class DaemonProcess:
    """KVStoreMesh as a real process (``python -m kvstoremesh.main``) for a
    :class:`~harness.mesh.MeshEnv`: what a kill -9 is tested against."""

    def __init__(self, env: MeshEnv, log_file: Path, *args: str,
                 local_config: Path | None = None) -> None:
        """``local_config``: the daemon's own local etcd config (default: the env's)."""
        self.env = env
        self.log_file = log_file
        self.args = args
        self.local_config = local_config or env.local_config
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.health_port = 0  # of the current run

    async def start(self, *extra: str) -> DaemonProcess:
        repo = _REPO
        self.starts += 1
        self.health_port = free_port()
        with self.log_file.open("ab") as log:
            log.write(f"=== start #{self.starts}\n".encode())
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kvstoremesh.main", "--cluster-name", "local",
                "--cluster-id", "200", "--clustermesh-config", str(self.env.config_dir),
                "--kvstore-opt", f"etcd.config={self.local_config}",
                "--health-port", str(self.health_port), "--api-serve-addr", "127.0.0.1:0",
                *self.args, *extra, cwd=repo, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(repo)})
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def alive(self) -> None:
        """Raise if the daemon exited (for :func:`harness.convergence.wait_converged`)."""
        if self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"the daemon exited ({self.proc.returncode}):\n"
                                 f"{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    async def readyz(self) -> tuple[int, str]:
        """``GET /readyz?verbose``: (status, body); (0, error) when nothing answers."""
        url = f"http://127.0.0.1:{self.health_port}/readyz?verbose"

        def get() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
            except OSError as exc:
                return 0, str(exc)

        return await asyncio.to_thread(get)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the daemon, which must still be running (ours, not reaped)."""
        assert self.proc is not None and self.proc.returncode is None
        self.proc.send_signal(sig)

    async def kill(self) -> int:
        """SIGKILL (no shutdown code runs) and reap; returns the exit status."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        async with asyncio.timeout(10):
            return await self.proc.wait()

    async def stop(self) -> int:
        """SIGTERM, as Kubernetes does; returns the exit status."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            async with asyncio.timeout(10):
                return await self.proc.wait()
        except TimeoutError:
            return await self.kill()


__all__ = ["Churn", "ChurnStats", "DaemonProcess", "Rig", "attach_remote", "publish_bulk",
           "run_heartbeats", "write_daemon_config"]
