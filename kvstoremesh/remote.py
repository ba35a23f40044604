"""One remote cluster: connect, check, reflect; reconnect on any failure.

:class:`RemoteCluster.run` loops over *sessions*.  A session is one connection
to the remote etcd and lives until something fails:

1. connect (first endpoint that answers) and pin the remote etcd cluster ID;
2. read ``cilium/cluster-config/<name>`` and judge it (:mod:`kvstoremesh.remoteconfig`:
   waited for while missing; a config that does not fit our mesh is refused and what
   we cached of the remote withdrawn);
3. publish the cached copy of that config locally (``cached`` and
   ``syncedCanaries`` set) and keep it asserted;
4. start one :class:`~kvstoremesh.reflector.Reflector` per resource the remote
   exports — after the remote's sync canary for it appears, if the remote advertises
   ``syncedCanaries``; for the others drain what was cached and write or delete the
   cache canary, as :mod:`kvstoremesh.resources` decides from the remote's config;
5. run the checks of :mod:`kvstoremesh.liveness`: heartbeat, status and cluster ID,
   config changes.

Any task of the session failing ends the whole session (a
:class:`~clustermesh.tasks.TaskSet`); the failure
is counted, and a new session starts after a
:data:`~clustermesh.backoff.REMOTE_SESSION` backoff, which starts over after a
session that synced.  Because every session begins with a list-and-diff, whatever
changed while we were away — keys deleted, a compaction, even a different etcd
cluster — is reconciled.

Everything else reads a remote through :meth:`RemoteCluster.status`, a frozen
:class:`~kvstoremesh.snapshot.RemoteStatus`: the state below is private.  Every time
read and wait goes through the ``clock`` given to the remote.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from clustermesh.assertion import keep_asserted
from clustermesh.backoff import REMOTE_SESSION, Backoff
from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.controllers import GROUP_REMOTE_CLUSTER
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import EtcdConfig, EtcdConfigError, load_etcd_config
from clustermesh.etcd.errors import EtcdError
from clustermesh.keys import RESOURCES, Resource, cluster_config_key
from clustermesh.keys import synced_prefix as synced_prefix_of
from clustermesh.syncstore import Seeds
from clustermesh.syncwriter import SyncWriter
from clustermesh.tasks import TaskSet

from .diagnostics import ClusterIds, Network, Problem, expiring_certificates, pod_cidrs
from .liveness import (
    CanaryWatcher,
    ConfigRefused,
    Heartbeat,
    SessionFailure,
    check_status,
    status_line,
    watch_config_change,
)
from .options import MeshOptions
from .reflector import Reflector
from .rejections import Rejections
from .remoteconfig import read_cluster_config, refusal
from .resources import Reflection, rules_of
from .snapshot import ReflectorStatus, RemoteStatus
from .validation import validator

if TYPE_CHECKING:
    from .metrics import MeshMetrics

log = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class _State:
    """What :meth:`RemoteCluster.status` reports beside the reflectors (see
    :class:`~kvstoremesh.snapshot.RemoteStatus` for the fields)."""

    connected: bool = False
    config_retrieved: bool = False
    config: CiliumClusterConfig | None = None
    registered: bool = False
    status: str = "Waiting for initial connection to be established"
    failures: int = 0
    last_failure: float | None = None
    disconnected_since: float | None
    ever_connected: bool = False
    etcd_cluster_id: int | None = None
    ready_after: float | None = None
    problem: Problem | None = None
    certificate_problems: tuple[Problem, ...] = ()


class RemoteCluster:
    """One remote, run by :meth:`run` (see the module docstring).

    Read through :meth:`status`; besides it, ``name``, ``created`` (clock time),
    ``rejections``, ``pod_cidrs`` and ``etcd_config`` (the last session's) are public,
    and :meth:`drain`, :meth:`delete_cached_config` remove what it cached.
    """

    def __init__(self, *, name: str, config_path: Path, local: EtcdClient, writer: SyncWriter,
                 options: MeshOptions, metrics: MeshMetrics | None = None,
                 cluster_ids: ClusterIds | None = None, clock: Clock = REAL_CLOCK,
                 on_ready: Callable[[], None] | None = None,
                 seeds: Seeds | None = None) -> None:
        self.name = name
        self.rejections = Rejections(name)
        # Cached node key -> its pod CIDRs, for the mesh's overlap check (which reads it
        # only when status().pod_cidrs_version changed).
        self.pod_cidrs: dict[bytes, list[Network]] = {}
        self.created = clock.monotonic()
        self._config_path = config_path
        self._local = local
        self._writer = writer
        self._options = options
        self._metrics = metrics
        self._cluster_ids = cluster_ids if cluster_ids is not None else ClusterIds()
        self._clock = clock
        self._on_ready = on_ready
        self._seeds = seeds  # what the cache holds, from a warm standby (first session)
        self._state = _State(disconnected_since=self.created)
        self._heartbeat = Heartbeat(timeout=options.heartbeat_timeout, clock=clock)
        self._pod_cidrs_version = 0  # bumped whenever pod_cidrs changes
        # The reflectors of the current (or last) session, in RESOURCES order; a resource
        # the remote does not export and nobody waits for has none.
        self._reflectors: dict[Resource, Reflector] = {}
        self._client: EtcdClient | None = None
        # The etcd config of the current (or last) session: the TLS files it names are
        # what the certificate expiry metric reads.
        self.etcd_config: EtcdConfig | None = None

    # ------------------------------------------------------------------ status

    def status(self) -> RemoteStatus:
        s = self._state
        reflectors = tuple([r.status() for r in self._reflectors.values()])
        # Positional, in the field order of RemoteStatus: a third of the cost of keywords,
        # and /readyz and every scrape build one per remote (see kvstoremesh.snapshot).
        return RemoteStatus(
            self.name, self._ready(reflectors), s.connected, s.config_retrieved, s.config,
            s.registered, s.status, s.failures, s.last_failure, s.ever_connected,
            s.disconnected_since, s.etcd_cluster_id, self._heartbeat.last, s.ready_after,
            s.problem, s.certificate_problems, reflectors, self.rejections.total,
            tuple(self.rejections.latest), self._pod_cidrs_version)

    def inherit_failures(self, previous: RemoteStatus) -> None:
        """Carry the failure history of the remote this one replaces (a config reload)."""
        self._state.failures = previous.failures
        self._state.last_failure = previous.last_failure

    @property
    def session_client(self) -> EtcdClient | None:
        """The remote etcd client of the session in progress (None between sessions)."""
        return self._client

    def _ready(self, reflectors: tuple[ReflectorStatus, ...]) -> bool:
        s = self._state
        return (s.connected and s.config_retrieved and s.registered
                and all(r.synced for r in reflectors))

    def _maybe_ready(self) -> None:
        """After a change that can make the remote ready (a reflector synced, the
        reflectors registered): note its first ready, and tell ``on_ready``."""
        if not self._ready(tuple(r.status() for r in self._reflectors.values())):
            return
        if self._state.ready_after is None:
            self._state.ready_after = self._clock.monotonic() - self.created
            log.info("cluster %s: all resources synced, ready (%.2fs after start)", self.name,
                     self._state.ready_after)
        if self._on_ready is not None:
            self._on_ready()

    def _node_seen(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            if self.pod_cidrs.pop(key, None) is not None:
                self._pod_cidrs_version += 1
            return
        cidrs = pod_cidrs(value)
        if self.pod_cidrs.get(key) != cidrs:
            self.pod_cidrs[key] = cidrs
            self._pod_cidrs_version += 1

    def _data_received(self) -> float:
        return max((r.status().last_received for r in self._reflectors.values()), default=0.0)

    def _report(self, status: str) -> None:
        self._state.status = status

    def _report_waiting(self, status: str, problem: Problem | None) -> None:
        self._state.status = status
        self._state.problem = problem

    # --------------------------------------------------------------------- run

    async def run(self) -> None:
        """Sessions until cancelled; failures are counted and retried with backoff."""
        # A session that lasted longer than the policy's reset_after (60 s) starts the
        # backoff over by itself.
        backoff = Backoff(REMOTE_SESSION, clock=self._clock)
        while True:
            try:
                await self._session()
            except* Exception as group:
                # A session that got through a full sync was a success (as a connection
                # is for upstream's controller): the next delay is the base one again.
                if self._synced_in_session():
                    backoff.reset()
                if not self._state.registered:  # failed before upstream's "ready" point
                    self._count_connection(ok=False)
                self._failed(_leaves(group))
            finally:
                self._disconnected()
            await backoff.wait()

    def _failed(self, errors: list[Exception]) -> None:
        for exc in errors:
            if isinstance(exc, ConfigRefused):
                self._state.problem = exc.problem
            elif not isinstance(exc, (EtcdError, EtcdConfigError, SessionFailure, OSError)):
                log.error("cluster %s: unexpected error", self.name, exc_info=exc)
        reason = "; ".join(str(e) for e in errors)
        self._state.failures += 1
        self._state.last_failure = self._clock.wall()
        self._state.status = reason
        log.warning("cluster %s: connection failed: %s", self.name, reason)

    def _count_connection(self, *, ok: bool) -> None:
        """One run of upstream's remote-connection controller: connect, read the
        cluster-config, register the watches."""
        if self._metrics is not None:
            self._metrics.controllers.record(GROUP_REMOTE_CLUSTER, ok=ok)

    def _synced_in_session(self) -> bool:
        """Whether the current session listed every resource it mirrors."""
        config = self._state.config
        return self._state.registered and config is not None and all(
            r.status().listed for resource, r in self._reflectors.items()
            if rules_of(resource).reflection(config) is Reflection.RUN)

    def _disconnected(self) -> None:
        if self._state.connected:
            self._state.disconnected_since = self._clock.monotonic()
        self._state.connected = False
        self._state.registered = False
        self._client = None

    async def _session(self) -> None:
        etcd_config = await asyncio.to_thread(load_etcd_config, self._config_path)
        self.etcd_config = etcd_config
        for warning in etcd_config.warnings:
            log.warning("cluster %s: %s: %s", self.name, self._config_path, warning)
        self._state.certificate_problems = tuple(expiring_certificates(
            etcd_config, remote=self.name, now=datetime.fromtimestamp(self._clock.wall(), UTC)))
        observer = self._metrics.etcd_operation if self._metrics is not None else None
        async with EtcdClient(etcd_config, name=f"remote {self.name}",
                              observer=observer) as remote:
            self._client = remote
            cluster_id = (await remote.status()).cluster_id
            self._connected(remote, cluster_id)
            config = await read_cluster_config(remote, name=self.name,
                                               config_path=self._config_path,
                                               clock=self._clock, report=self._report_waiting)
            await self._judge(config)
            # Not asyncio.TaskGroup: on 3.11 it can swallow our cancellation (see TaskSet).
            async with TaskSet() as group:
                group.create_task(self._assert_cached_config(config))
                group.create_task(self._heartbeat.watch(remote,
                                                        data_received=self._data_received))
                group.create_task(check_status(
                    remote, name=self.name, pinned=cluster_id,
                    interval=self._options.status_check_interval, clock=self._clock,
                    cluster_ids=self._cluster_ids, cluster_id=config.id, report=self._report))
                group.create_task(watch_config_change(remote, name=self.name, config=config))
                canaries = CanaryWatcher() if config.synced_canaries else None
                if canaries is not None:
                    group.create_task(canaries.run(remote, synced_prefix_of(self.name).encode()))
                self._register(group, remote, config, canaries)

    def _connected(self, remote: EtcdClient, cluster_id: int) -> None:
        s = self._state
        s.etcd_cluster_id = cluster_id
        s.connected = True
        s.ever_connected = True
        s.disconnected_since = None
        s.status = status_line(remote, cluster_id)
        log.info("cluster %s: connected to %s (etcd cluster ID %x)", self.name,
                 remote.endpoint, cluster_id)

    async def _judge(self, config: CiliumClusterConfig) -> None:
        """Accept ``config``, or refuse the remote (facts §6.2).

        What we cached of a refused remote is withdrawn: with its ID in doubt, its
        identities and endpoints would be foreign data to the agents.
        """
        problem = refusal(config, name=self.name, local_id=self._options.cluster_id,
                          max_connected_clusters=self._options.max_connected_clusters,
                          cluster_ids=self._cluster_ids)
        if problem is not None:
            await self.delete_cached_config()
            await self.drain()
            raise ConfigRefused(problem)
        self._state.problem = None
        self._state.config = config
        self._state.config_retrieved = True
        log.info("cluster %s: cluster configuration retrieved: %s", self.name,
                 config.to_json().decode())

    def _register(self, group: TaskSet, remote: EtcdClient,
                  config: CiliumClusterConfig, canaries: CanaryWatcher | None) -> None:
        previous = self._reflectors
        self._reflectors = {}
        o = self._options
        for resource in RESOURCES:
            rules = rules_of(resource)
            how = rules.reflection(config)
            validate = None
            if o.validate_remote_data:
                validate = validator(resource, cluster=self.name, cluster_id=config.id,
                                     max_connected_clusters=o.max_connected_clusters)
            old = previous.get(resource)
            reflector = Reflector(
                resource=resource, cluster=self.name, remote=remote, local=self._local,
                writer=self._writer, remote_cached=config.cached, page_size=o.page_size,
                # Its canary is written already: readiness is not lost by reconnecting.
                synced=old is not None and old.status().synced,
                clock=self._clock, metrics=self._metrics, on_synced=self._maybe_ready,
                validate=validate, rejections=self.rejections,
                observe=self._node_seen if rules.observed else None, seeds=self._seeds)
            if how is Reflection.OFF:
                # Not in _reflectors: readiness, status and metrics leave it out.
                group.create_task(reflector.withdraw())
                continue
            self._reflectors[resource] = reflector
            if how is Reflection.SYNCED_EMPTY:
                group.create_task(reflector.mark_synced_empty())
                continue
            canary = resource.remote_canary(self.name, cached=config.cached).encode()
            group.create_task(self._reflect(reflector, canaries, canary))
        self._state.registered = True
        self._count_connection(ok=True)
        self._maybe_ready()  # reconnected with every canary still written

    @staticmethod
    async def _reflect(reflector: Reflector, canaries: CanaryWatcher | None,
                       canary: bytes) -> None:
        if canaries is not None:
            await canaries.wait_for(canary)
        await reflector.run()

    async def _assert_cached_config(self, config: CiliumClusterConfig) -> None:
        """Publish the cached cluster-config; rewrite it whenever it is changed or deleted."""
        await keep_asserted(self._local, cluster_config_key(self.name).encode(),
                            config.as_cached().to_json(),
                            runs=self._metrics.controllers if self._metrics else None,
                            clock=self._clock)

    # ---------------------------------------------------------------- removal

    async def delete_cached_config(self) -> None:
        await self._local.delete(cluster_config_key(self.name).encode())

    async def drain(self, resources: tuple[str, ...] | None = None) -> None:
        """Delete this cluster's cached data (all resources, or only those named)."""
        if resources is None:
            await self._writer.flush()
            await self._local.delete(synced_prefix_of(self.name).encode(), prefix=True)
        for resource in RESOURCES:
            if resources is not None:
                if resource.name not in resources:
                    continue
                await self._local.delete(resource.cache_canary(self.name).encode())
            await self._writer.flush()
            await self._local.delete(resource.cache_prefix(self.name).encode(), prefix=True)
            reflector = self._reflectors.get(resource)
            if reflector is not None:
                reflector.canary_deleted()


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    out: list[Exception] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
