"""One remote cluster: connect, check, reflect; reconnect on any failure.

:class:`RemoteCluster.run` loops over *sessions*.  A session is one connection
to the remote etcd and lives until something fails:

1. connect (first endpoint that answers) and pin the remote etcd cluster ID;
2. read ``cilium/cluster-config/<name>`` (required; retried with a status
   message while missing);
3. publish the cached copy of that config locally (``cached`` and
   ``syncedCanaries`` set) and keep it asserted;
4. start one reflector per resource the remote exports — after the remote's sync
   canary for it appears, if the remote advertises ``syncedCanaries``; for the others
   drain what was cached and write or delete the cache canary, as
   :mod:`kvstoremesh.resources` decides from the remote's cluster-config;
5. watch the heartbeat and the cluster ID, and the remote config itself.

Any task of the session failing ends the whole session (a TaskGroup); the
failure is counted, and a new session starts after a backoff.  Because every
session begins with a list-and-diff, whatever changed while we were away — keys
deleted, a compaction, even a different etcd cluster — is reconciled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from clustermesh.assertion import keep_asserted
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.controllers import GROUP_REMOTE_CLUSTER
from clustermesh.etcd.client import EtcdClient, prefix_range_end
from clustermesh.etcd.config import EtcdConfigError, load_etcd_config
from clustermesh.etcd.errors import EtcdCompacted, EtcdError, EtcdPermissionDenied
from clustermesh.etcd.watch import PUT
from clustermesh.keys import (
    CLUSTER_CONFIG_PREFIX,
    HEARTBEAT_KEY,
    NODES,
    RESOURCES,
    cluster_config_key,
)
from clustermesh.keys import synced_prefix as synced_prefix_of
from clustermesh.syncwriter import SyncWriter

from .diagnostics import (
    ClusterIds,
    Network,
    Problem,
    config_problem,
    duplicate_id_problem,
    expiring_certificates,
    pod_cidrs,
)
from .options import MeshOptions
from .reflector import Reflector
from .rejections import Rejections
from .resources import Reflection, reflection
from .validation import check_entry

if TYPE_CHECKING:
    from .metrics import MeshMetrics

log = logging.getLogger(__name__)


class SessionFailure(Exception):
    """A check failed (heartbeat, cluster ID, config change): reconnect."""


@dataclass(slots=True)
class RemoteStatus:
    connected: bool = False
    config_retrieved: bool = False
    config: CiliumClusterConfig | None = None
    registered: bool = False
    status: str = "Waiting for initial connection to be established"
    failures: int = 0
    last_failure: float | None = None  # unix time
    disconnected_since: float | None = field(default_factory=time.monotonic)
    ever_connected: bool = False
    etcd_cluster_id: int | None = None
    last_heartbeat: float | None = None  # monotonic time the heartbeat last changed
    ready_after: float | None = None  # seconds from start to first ready
    problem: Problem | None = None  # why the remote's configuration is refused
    certificate_problems: list[Problem] = field(default_factory=list)


class CanaryWatcher:
    """Tracks which sync canaries a remote has written (``cilium/synced/<c>/...``)."""

    def __init__(self) -> None:
        self._present: set[bytes] = set()
        self._events: dict[bytes, asyncio.Event] = {}

    def _event(self, key: bytes) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    async def wait_for(self, key: bytes) -> None:
        await self._event(key).wait()

    def seen(self, key: bytes) -> None:
        self._present.add(key)
        self._event(key).set()

    async def run(self, remote: EtcdClient, prefix: bytes) -> None:
        while True:  # list, watch; relist if the remote compacted past us
            kvs, revision = await remote.list_prefix(prefix)
            for kv in kvs:
                self.seen(kv.key)
            with contextlib.suppress(EtcdCompacted):
                async with remote.watch(prefix, start_revision=revision + 1) as watch:
                    async for batch in watch:
                        for event in batch.events:
                            # A canary never "un-syncs" a running reflector; deletes are ignored.
                            if event.type == PUT:
                                self.seen(event.kv.key)


class RemoteCluster:
    def __init__(self, *, name: str, config_path: Path, local: EtcdClient, writer: SyncWriter,
                 options: MeshOptions, metrics: MeshMetrics | None = None,
                 cluster_ids: ClusterIds | None = None) -> None:
        self.name = name
        self.cluster_ids = cluster_ids if cluster_ids is not None else ClusterIds()
        self.pod_cidrs: dict[bytes, list[Network]] = {}  # cached node key -> its pod CIDRs
        self.pod_cidrs_version = 0  # bumped whenever pod_cidrs changes
        self.metrics = metrics
        self.created = time.monotonic()
        self.config_path = config_path
        self.local = local
        self.writer = writer
        self.options = options
        self.state = RemoteStatus()
        self.reflectors: dict[str, Reflector] = {}
        self.rejections = Rejections(name)
        self._remote_client: EtcdClient | None = None

    # ------------------------------------------------------------------ status

    @property
    def ready(self) -> bool:
        s = self.state
        return (s.connected and s.config_retrieved and s.registered
                and all(r.synced.is_set() for r in self.reflectors.values()))

    def synced(self, resource_name: str) -> bool:
        reflector = self.reflectors.get(resource_name)
        return reflector is not None and reflector.synced.is_set()

    def _node_seen(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            if self.pod_cidrs.pop(key, None) is not None:
                self.pod_cidrs_version += 1
            return
        cidrs = pod_cidrs(value)
        if self.pod_cidrs.get(key) != cidrs:
            self.pod_cidrs[key] = cidrs
            self.pod_cidrs_version += 1

    def _reflector_synced(self) -> None:
        if self.ready and self.state.ready_after is None:
            self.state.ready_after = time.monotonic() - self.created
            log.info("cluster %s: all resources synced, ready (%.2fs after start)", self.name,
                     self.state.ready_after)

    def _fail(self, reason: str) -> None:
        self.state.failures += 1
        self.state.last_failure = time.time()
        self.state.status = reason
        log.warning("cluster %s: connection failed: %s", self.name, reason)

    # --------------------------------------------------------------------- run

    async def run(self) -> None:
        """Sessions until cancelled; failures are counted and retried with backoff."""
        backoff = 1.0
        while True:
            started = time.monotonic()
            synced = False
            try:
                await self._session()
            except* Exception as group:
                synced = self._synced_in_session()
                if not self.state.registered:  # failed before upstream's "ready" point
                    self._count_connection(ok=False)
                errors = _leaves(group)
                for exc in errors:
                    if not isinstance(exc, (EtcdError, EtcdConfigError, SessionFailure, OSError)):
                        log.error("cluster %s: unexpected error", self.name, exc_info=exc)
                self._fail("; ".join(str(e) for e in errors))
            finally:
                self._disconnected()
            # A session that got through a full sync was a success (as a connection is
            # for upstream's controller): the next failure starts from the base backoff.
            if synced or time.monotonic() - started > 60:
                backoff = 1.0
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, 30.0)

    def _count_connection(self, *, ok: bool) -> None:
        """One run of upstream's remote-connection controller: connect, read the
        cluster-config, register the watches."""
        if self.metrics is not None:
            self.metrics.controllers.record(GROUP_REMOTE_CLUSTER, ok=ok)

    def _synced_in_session(self) -> bool:
        """Whether the current session listed every resource it reflects."""
        config = self.state.config
        return self.state.registered and config is not None and all(
            r.listed for r in self.reflectors.values()
            if reflection(r.resource, config) is Reflection.RUN)

    def _disconnected(self) -> None:
        if self.state.connected:
            self.state.disconnected_since = time.monotonic()
        self.state.connected = False
        self.state.registered = False
        self._remote_client = None

    async def _session(self) -> None:
        etcd_config = await asyncio.to_thread(load_etcd_config, self.config_path)
        observer = self.metrics.etcd_operation if self.metrics is not None else None
        for warning in etcd_config.warnings:
            log.warning("cluster %s: %s: %s", self.name, self.config_path, warning)
        self.state.certificate_problems = expiring_certificates(etcd_config, remote=self.name)
        async with EtcdClient(etcd_config, name=f"remote {self.name}",
                              observer=observer) as remote:
            self._remote_client = remote
            status = await remote.status()
            self.state.etcd_cluster_id = status.cluster_id
            self.state.connected = True
            self.state.ever_connected = True
            self.state.disconnected_since = None
            self.state.status = _status_line(remote, status.cluster_id)
            log.info("cluster %s: connected to %s (etcd cluster ID %x)", self.name,
                     remote.endpoint, status.cluster_id)
            config, config_revision = await self._read_cluster_config(remote)
            await self._check_config(config)
            self.state.config = config
            self.state.config_retrieved = True
            log.info("cluster %s: cluster configuration retrieved: %s", self.name,
                     config.to_json().decode())
            async with asyncio.TaskGroup() as group:
                group.create_task(self._assert_cached_config(config))
                group.create_task(self._watch_heartbeat(remote))
                group.create_task(self._check_cluster_id(remote, status.cluster_id))
                group.create_task(self._watch_config_change(remote, config, config_revision))
                canaries = CanaryWatcher() if config.synced_canaries else None
                if canaries is not None:
                    group.create_task(canaries.run(remote, synced_prefix_of(self.name).encode()))
                self._register(group, remote, config, canaries)

    def _register(self, group: asyncio.TaskGroup, remote: EtcdClient,
                  config: CiliumClusterConfig, canaries: CanaryWatcher | None) -> None:
        previous = self.reflectors
        self.reflectors = {}
        for resource in RESOURCES:
            how = reflection(resource, config)
            validate = None
            if self.options.validate_remote_data:
                validate = partial(check_entry, resource, cluster=self.name,
                                   cluster_id=config.id,
                                   max_connected_clusters=self.options.max_connected_clusters)
            reflector = Reflector(resource=resource, cluster=self.name, remote=remote,
                                  local=self.local, writer=self.writer,
                                  remote_cached=config.cached, page_size=self.options.page_size,
                                  metrics=self.metrics, on_synced=self._reflector_synced,
                                  validate=validate, rejections=self.rejections,
                                  observe=self._node_seen if resource is NODES else None)
            if how is Reflection.OFF:
                # Not in self.reflectors: readiness, status and metrics leave it out.
                group.create_task(reflector.withdraw())
                continue
            old = previous.get(resource.name)
            if old is not None and old.synced.is_set():
                reflector.synced.set()  # canary already written; readiness is not lost
            self.reflectors[resource.name] = reflector
            if how is Reflection.SYNCED_EMPTY:
                group.create_task(reflector.mark_synced_empty())
                continue
            canary = resource.remote_canary(self.name, cached=config.cached).encode()
            group.create_task(self._reflect(reflector, canaries, canary))
        self.state.registered = True
        self._count_connection(ok=True)

    async def _reflect(self, reflector: Reflector, canaries: CanaryWatcher | None,
                       canary: bytes) -> None:
        if canaries is not None:
            await canaries.wait_for(canary)
        await reflector.run()

    # ------------------------------------------------------------ cluster config

    async def _check_config(self, config: CiliumClusterConfig) -> None:
        """Refuse a remote whose cluster-config does not fit our mesh (facts §6.2).

        What we cached of a refused remote is withdrawn: with its ID in doubt, its
        identities and endpoints would be foreign data to the agents.
        """
        problem = config_problem(config, remote=self.name, local_id=self.options.cluster_id,
                                 max_connected_clusters=self.options.max_connected_clusters)
        if problem is None:
            self.cluster_ids.claim(self.name, config.id)
            others = self.cluster_ids.sharing(self.name)
            if others:
                problem = duplicate_id_problem(self.name, config.id, others)
        self.state.problem = problem
        if problem is not None:
            await self.delete_cached_config()
            await self.drain()
            raise SessionFailure(problem.message)

    async def _read_cluster_config(self, remote: EtcdClient
                                   ) -> tuple[CiliumClusterConfig, int]:
        key = cluster_config_key(self.name).encode()
        delay = 1.0
        while True:
            resp = await remote.range(key)
            if resp.kvs:
                try:
                    return CiliumClusterConfig.from_json(resp.kvs[0].value), resp.header.revision
                except ValueError as exc:
                    self.state.status = f"invalid cluster configuration at {key.decode()}: {exc}"
            else:
                self.state.status = (f"waiting for the remote cluster configuration "
                                     f"({key.decode()} is missing)")
                others = await self._published_config_names(remote)
                if others:
                    self.state.problem = Problem(
                        "cluster-config-name", self.name,
                        f"the etcd configured in {self.config_path} publishes the "
                        f"cluster-config of {', '.join(others)}, not of {self.name}: name the "
                        "file after the cluster it points to")
                    self.state.status += f"; {self.state.problem.message}"
            log.warning("cluster %s: %s", self.name, self.state.status)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _published_config_names(self, remote: EtcdClient) -> list[str]:
        """Which cluster-configs the remote publishes (a diagnostic for a misnamed file).

        Cilium's ``remote`` role may read only its own cluster's key: a permission error
        here means "cannot tell", not a failed connection (a remote whose apiserver is
        still starting must be waited for without counting a failure, as upstream does).
        """
        prefix = CLUSTER_CONFIG_PREFIX + "/"
        try:
            resp = await remote.range(prefix.encode(), prefix_range_end(prefix.encode()),
                                      keys_only=True, limit=10)
        except EtcdPermissionDenied:
            return []
        return [kv.key.decode(errors="replace")[len(prefix):] for kv in resp.kvs]

    async def _watch_config_change(self, remote: EtcdClient, config: CiliumClusterConfig,
                                   revision: int) -> None:
        """End the session when the remote publishes a different cluster config."""
        key = cluster_config_key(self.name).encode()

        def check(value: bytes) -> None:
            try:
                new = CiliumClusterConfig.from_json(value)
            except ValueError:
                return  # keep the last valid config, as Cilium does
            if new != config:
                raise SessionFailure("remote cluster configuration changed")

        while True:
            try:
                async with remote.watch(key, prefix=False, start_revision=revision + 1) as watch:
                    async for batch in watch:
                        for event in batch.events:
                            if event.type == PUT:  # a delete keeps the last known config
                                check(event.kv.value)
            except EtcdCompacted:
                resp = await remote.range(key)
                if resp.kvs:
                    check(resp.kvs[0].value)
                revision = resp.header.revision

    async def _assert_cached_config(self, config: CiliumClusterConfig) -> None:
        """Publish the cached cluster-config; rewrite it whenever it is changed or deleted."""
        await keep_asserted(self.local, cluster_config_key(self.name).encode(),
                            config.as_cached().to_json(),
                            runs=self.metrics.controllers if self.metrics else None)

    async def delete_cached_config(self) -> None:
        await self.local.delete(cluster_config_key(self.name).encode())

    # ----------------------------------------------------------------- checks

    async def _watch_heartbeat(self, remote: EtcdClient) -> None:
        # Like Cilium: the connection counts as a heartbeat; receipt time, not the value.
        self.state.last_heartbeat = time.monotonic()
        timeout = self.options.heartbeat_timeout

        async def watch() -> None:
            while True:  # from "now" again if the remote compacted past us
                with contextlib.suppress(EtcdCompacted):
                    async with remote.watch(HEARTBEAT_KEY.encode(), prefix=False) as w:
                        async for batch in w:
                            if batch.events:
                                self.state.last_heartbeat = time.monotonic()

        task = asyncio.create_task(watch())
        try:
            while True:
                await asyncio.sleep(min(timeout / 4, 5.0))
                if task.done():
                    task.result()  # re-raise the watch's error
                # Data arriving counts too: on a slow link the heartbeat events queue
                # behind a long initial list, which must not end the session.
                received = max((r.last_received for r in self.reflectors.values()), default=0)
                age = time.monotonic() - max(self.state.last_heartbeat, received)
                if age > timeout:
                    raise SessionFailure(
                        f"{age:.0f}s since last heartbeat update has been received "
                        f"(limit {timeout:.0f}s)")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, EtcdError):
                await task

    async def _check_cluster_id(self, remote: EtcdClient, pinned: int) -> None:
        errors = 0
        while True:
            await asyncio.sleep(self.options.status_check_interval)
            try:
                status = await remote.status()
            except EtcdError as exc:
                errors += 1
                self.state.status = f"status check failed ({errors} in a row): {exc}"
                if errors > 2:
                    raise SessionFailure(self.state.status) from None
                continue
            errors = 0
            if status.cluster_id != pinned:
                raise SessionFailure(
                    f"etcd cluster ID changed from {pinned:x} to {status.cluster_id:x}")
            others = self.cluster_ids.sharing(self.name)
            if others and self.state.config is not None:
                self.state.problem = duplicate_id_problem(self.name, self.state.config.id,
                                                          others)
                raise SessionFailure(self.state.problem.message)
            self.state.status = _status_line(remote, status.cluster_id)

    # ---------------------------------------------------------------- removal

    async def drain(self, resources: tuple[str, ...] | None = None) -> None:
        """Delete this cluster's cached data (all resources, or only those named)."""
        if resources is None:
            await self.writer.flush()
            await self.local.delete(synced_prefix_of(self.name).encode(), prefix=True)
        for resource in RESOURCES:
            if resources is not None and resource.name not in resources:
                continue
            if resources is not None:
                await self.local.delete(resource.cache_canary(self.name).encode())
            await self.writer.flush()
            await self.local.delete(resource.cache_prefix(self.name).encode(), prefix=True)
            reflector = self.reflectors.get(resource.name)
            if reflector is not None:
                reflector.synced.clear()


def _status_line(remote: EtcdClient, cluster_id: int) -> str:
    n = len(remote.config.endpoints)
    return f"etcd: 1/{n} connected: {remote.endpoint}, ID: {cluster_id:x}"


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    out: list[Exception] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
