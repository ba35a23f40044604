"""The KVStoreMesh daemon: the set of remote clusters, and their life cycle.

:class:`KVStoreMesh` owns the local etcd client and its single
:class:`~clustermesh.syncwriter.SyncWriter`, follows the config directory, and
runs one :class:`~kvstoremesh.remote.RemoteCluster` per file in it:

* a new file starts a remote; a changed file restarts it (new endpoints or
  certificates);
* a removed file removes the cluster: its cached cluster-config goes first (so
  agents stop connecting), then, after a grace period, its canaries and every
  cache prefix.  A file that comes back during removal is started again once
  the cleanup is done;
* at start-up, clusters that the local cache still holds but the directory no
  longer names (removed while we were down) are removed the same way — no data
  of a removed cluster outlives us;
* with ``--clustermesh-cache-ttl``, a remote disconnected for that long has its
  services, service exports and EndpointSlices drained (the backends it can no longer
  vouch for; the rest stays to keep connections up), counted in
  ``remote_cluster_cache_revocations``;
* with ``--disable-drain-on-disconnection`` nothing of a removed cluster is deleted,
  not even its cluster-config, as upstream (whose drain starts with that key): agents
  keep the cluster as it was last seen.  Clusters found orphaned at start-up are kept
  too, for the same reason.  Either is logged, as the data then stays until someone
  deletes it or the cluster comes back.

Beside the remotes, the daemon checks its local etcd (:mod:`clustermesh.quorum`):
more than ``--kvstore-max-consecutive-quorum-errors`` failed checks in a row make it
not live and not ready, naming the reason.  With ``--enable-heartbeat`` it also writes
``cilium/.heartbeat`` there (:mod:`clustermesh.heartbeat`), for agents of an external
etcd that no clustermesh-apiserver writes into.

Shutdown cancels everything and never drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter as Tally

from aiohttp import web

from clustermesh.etcd.client import EtcdClient, prefix_range_end
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import EtcdError
from clustermesh.flags import listen_address
from clustermesh.heartbeat import write_heartbeats
from clustermesh.keys import (
    CLUSTER_CONFIG_PREFIX,
    ENDPOINT_SLICES,
    RESOURCES,
    SERVICE_EXPORTS,
    SERVICES,
    SYNCED_PREFIX,
)
from clustermesh.quorum import QuorumCheck
from clustermesh.serving import bound_port, health_app, json_app, metrics_app, serve
from clustermesh.syncwriter import SyncWriter

from .configdir import ClusterFile, ConfigDirectory
from .diagnostics import ClusterIds, Problem, overlapping_pod_cidrs
from .metrics import MeshMetrics
from .options import MeshOptions
from .remote import RemoteCluster
from .status import Readiness, status_models

log = logging.getLogger(__name__)

REMOVAL_ATTEMPTS = 5
# What --clustermesh-cache-ttl revokes: every resource that carries service backends
# (Cilium: services and service exports; EndpointSlices are the same backends, "v2").
REVOKED_ON_TTL = (SERVICES, SERVICE_EXPORTS, ENDPOINT_SLICES)


class KVStoreMesh:
    def __init__(self, options: MeshOptions) -> None:
        self.options = options
        self.local: EtcdClient | None = None
        self.writer: SyncWriter | None = None
        self.remotes: dict[str, RemoteCluster] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._removals: dict[str, asyncio.Task[None]] = {}
        self._revoked: set[str] = set()
        self.revocations: Tally[str] = Tally()  # cache TTL revocations per remote cluster
        self.quorum: QuorumCheck | None = None
        self.started_at = time.monotonic()
        self.initial_clusters: set[str] = set()
        self.config_ready = asyncio.Event()
        self.local_connected = False
        self.metrics = MeshMetrics(controller_groups=options.controller_group_metrics)
        self.metrics.attach(self)
        self.readiness = Readiness(self)
        # overlapping_pod_cidrs() of the last problems() call, and the remotes' pod CIDR
        # versions it was computed from (25k nodes take ~0.2 s: not on every /readyz).
        self._overlaps: tuple[object, list[Problem]] = (None, [])
        self.cluster_ids = ClusterIds()
        self.runners: dict[str, web.AppRunner] = {}

    # -------------------------------------------------------------- lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        o = self.options
        local_config = load_etcd_config(o.local_config)
        self.local = EtcdClient(local_config, name="local etcd",
                                observer=self.metrics.etcd_operation)
        self.writer = SyncWriter(self.local, max_txn_ops=o.max_txn_ops,
                                 max_request_bytes=o.max_request_bytes,
                                 max_inflight=o.max_inflight, qps=o.qps,
                                 bootstrap_qps=o.bootstrap_qps,
                                 on_commit=self.metrics.writes_committed,
                                 on_error=self.metrics.writes_failed)
        self.quorum = QuorumCheck(self.local, metrics=self.metrics,
                                  max_errors=o.max_consecutive_quorum_errors,
                                  interval=o.status_check_interval)
        await self._start_servers()
        try:
            await self.local.connect_retrying(stop=stop)
        except BaseException:
            await self._stop_servers()
            raise
        self.local_connected = True
        self.writer.start()
        directory = ConfigDirectory(o.config_dir, local_cluster_name=o.cluster_name,
                                    interval=o.config_poll_interval)
        background = [asyncio.create_task(directory.run(self, ready=self.config_ready),
                                          name="config-dir"),
                      asyncio.create_task(self._watch_readiness(), name="readiness"),
                      asyncio.create_task(self._log_problems(), name="problems"),
                      asyncio.create_task(self.quorum.run(), name="quorum-check")]
        if o.enable_heartbeat:
            background.append(asyncio.create_task(
                write_heartbeats(self.local, runs=self.metrics.controllers), name="heartbeat"))
        try:
            await self.config_ready.wait()
            self.initial_clusters = set(directory.known)
            await self._remove_orphans(set(directory.known))
            if o.cache_ttl > 0:
                background.append(asyncio.create_task(self._revoke_stale_caches()))
            await stop.wait()
        finally:
            log.info("shutting down (caches are kept)")
            for task in [*background, *self._tasks.values(), *self._removals.values()]:
                task.cancel()
            await asyncio.gather(*background, *self._tasks.values(),
                                 *self._removals.values(), return_exceptions=True)
            await self.writer.stop(drain_timeout=5.0)
            await self.local.close()
            await self._stop_servers()
            log.info("stopped")

    # ------------------------------------------------------------ diagnostics

    def problems(self) -> list[Problem]:
        """Misconfigurations of the mesh as we see it now (see kvstoremesh.diagnostics)."""
        found: list[Problem] = []
        for _, remote in sorted(self.remotes.items()):
            if remote.state.problem is not None:
                found.append(remote.state.problem)
            found.extend(remote.state.certificate_problems)
        versions = tuple((name, remote.created, remote.pod_cidrs_version)
                         for name, remote in sorted(self.remotes.items()))
        if self._overlaps[0] != versions:
            self._overlaps = (versions, overlapping_pod_cidrs({
                name: [net for nets in remote.pod_cidrs.values() for net in nets]
                for name, remote in self.remotes.items()}))
        found.extend(self._overlaps[1])
        return found

    async def _log_problems(self) -> None:
        """One log line when a problem appears and one when it is gone."""
        known: set[Problem] = set()
        while True:
            current = set(self.problems())
            for problem in sorted(current - known, key=lambda p: p.message):
                log.error("mesh problem (%s): %s", problem.kind, problem.message)
            for problem in sorted(known - current, key=lambda p: p.message):
                log.info("mesh problem resolved (%s): %s", problem.kind, problem.message)
            known = current
            await asyncio.sleep(5.0)

    # ---------------------------------------------------------------- serving

    def _quorum_problem(self) -> str | None:
        return self.quorum.problem if self.quorum is not None else None

    def _readiness_with_problems(self) -> tuple[bool, list[str]]:
        ready, lines = self.readiness.check()
        quorum = self._quorum_problem()
        if quorum is not None:
            ready, lines = False, [quorum, *lines]
        return ready, lines + [f"problem: {p.message}" for p in self.problems()]

    def liveness(self) -> tuple[bool, list[str]]:
        """Alive while the writer loop runs and the local etcd keeps quorum (never
        depends on remotes)."""
        problems = []
        if self.writer is not None and self.local_connected and not self.writer.alive:
            problems.append("local etcd writer stopped")
        quorum = self._quorum_problem()
        if quorum is not None:
            problems.append(quorum)
        return not problems, problems

    async def _start_servers(self) -> None:
        o = self.options
        health = health_app(live=self.liveness, ready=self._readiness_with_problems)
        self.runners["health"] = await serve(health, "", o.health_port)
        if o.prometheus_serve_addr:
            host, port = listen_address(o.prometheus_serve_addr)
            self.runners["metrics"] = await serve(metrics_app(self.metrics.registry), host, port)
        if o.api_serve_addr:
            host, port = listen_address(o.api_serve_addr)
            api = json_app({"/v1/cluster": lambda: status_models(self)})
            self.runners["api"] = await serve(api, host, port)

    def port(self, server: str) -> int:
        """The port ``health``, ``metrics`` or ``api`` listens on."""
        return bound_port(self.runners[server])

    async def _stop_servers(self) -> None:
        for runner in self.runners.values():
            await runner.cleanup()
        self.runners.clear()

    async def _watch_readiness(self) -> None:
        """Log the transition to ready and end the writer's bootstrap rate."""
        while True:
            ready, _ = self.readiness.check()
            if ready:
                assert self.writer is not None
                self.writer.bootstrap_done()
                log.info("KVStoreMesh ready: %d/%d remote clusters ready (%.1fs after start)",
                         sum(1 for r in self.remotes.values() if r.ready), len(self.remotes),
                         time.monotonic() - self.started_at)
                return
            await asyncio.sleep(0.2)

    # ------------------------------------------------------ config directory

    async def cluster_upserted(self, file: ClusterFile) -> None:
        name = file.name
        removal = self._removals.get(name)
        if removal is not None:
            log.info("cluster %s: re-added while being removed; starts after the cleanup", name)
            await self._stop_remote(name)  # a start still pending from an earlier re-add
            self._tasks[name] = asyncio.create_task(self._start_after(removal, file))
            return
        await self._stop_remote(name)
        self._start_remote(file)

    async def cluster_removed(self, name: str) -> None:
        remote = self.remotes.get(name)
        await self._stop_remote(name)
        self.remotes.pop(name, None)
        self.cluster_ids.release(name)
        if remote is None:
            return
        if self.options.disable_drain_on_disconnection:
            log.warning("cluster %s: configuration removed; its cached data (cluster-config "
                        "included) is kept (--disable-drain-on-disconnection): agents keep "
                        "seeing the cluster until it is configured again or deleted by hand",
                        name)
            return
        log.info("cluster %s: configuration removed; draining its cached data", name)
        self._start_removal(remote)

    def _start_remote(self, file: ClusterFile) -> None:
        assert self.local is not None and self.writer is not None
        previous = self.remotes.get(file.name)
        remote = RemoteCluster(name=file.name, config_path=file.path, local=self.local,
                               writer=self.writer, options=self.options, metrics=self.metrics,
                               cluster_ids=self.cluster_ids)
        if previous is not None:  # keep the failure history across a config change
            remote.state.failures = previous.state.failures
            remote.state.last_failure = previous.state.last_failure
        self.remotes[file.name] = remote
        self._tasks[file.name] = asyncio.create_task(remote.run(), name=f"remote-{file.name}")
        log.info("cluster %s: configuration %s (re)loaded", file.name, file.path)

    async def _start_after(self, removal: asyncio.Task[None], file: ClusterFile) -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(removal)
        self._tasks.pop(file.name, None)
        self._start_remote(file)

    async def _stop_remote(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---------------------------------------------------------------- removal

    def _start_removal(self, remote: RemoteCluster) -> None:
        task = asyncio.create_task(self._remove(remote), name=f"remove-{remote.name}")
        self._removals[remote.name] = task
        task.add_done_callback(lambda _: self._removals.pop(remote.name, None))

    async def _remove(self, remote: RemoteCluster) -> None:
        """Cilium's drain: cluster-config first, grace, then canaries and caches; retried."""
        delay = 2.0
        for attempt in range(1, REMOVAL_ATTEMPTS + 1):
            try:
                await remote.delete_cached_config()
                if attempt == 1:
                    await asyncio.sleep(self.options.removal_grace)
                await remote.drain()
                log.info("cluster %s: cached data removed", remote.name)
                return
            except EtcdError as exc:
                log.warning("cluster %s: removal attempt %d failed: %s", remote.name, attempt, exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay *= 2
        log.error("cluster %s: giving up removing its cached data after %d attempts",
                  remote.name, REMOVAL_ATTEMPTS)

    async def _remove_orphans(self, configured: set[str]) -> None:
        """Remove clusters the cache holds but the config directory no longer names."""
        assert self.local is not None and self.writer is not None
        names: set[str] = set()
        for prefix in (CLUSTER_CONFIG_PREFIX + "/", SYNCED_PREFIX + "/"):
            async for page, _ in self.local.range_pages(prefix.encode(), keys_only=True):
                for kv in page:
                    names.add(kv.key.decode(errors="replace")[len(prefix):].split("/", 1)[0])
        # Cache data whose canaries are already gone (a drain interrupted half-way).
        for resource in RESOURCES:
            names |= await self._clusters_under(resource.cache_base + "/")
        orphans = sorted(n for n in names - configured - {self.options.cluster_name}
                         if n and n not in self._removals)
        if orphans and self.options.disable_drain_on_disconnection:
            log.warning("clusters %s: cached but no longer configured; kept: "
                        "--disable-drain-on-disconnection", ", ".join(orphans))
            return
        for name in orphans:
            log.info("cluster %s: cached but no longer configured; removing it", name)
            orphan = RemoteCluster(name=name, config_path=self.options.config_dir / name,
                                   local=self.local, writer=self.writer, options=self.options)
            self._start_removal(orphan)

    async def _clusters_under(self, base: str) -> set[str]:
        """Cluster names below ``base`` (``<base><cluster>/...``): one 1-key read per
        cluster, skipping over each cluster's keys instead of listing them."""
        assert self.local is not None
        names: set[str] = set()
        start, end = base.encode(), prefix_range_end(base.encode())
        while True:
            resp = await self.local.range(start, end, limit=1, keys_only=True)
            if not resp.kvs:
                return names
            name = resp.kvs[0].key[len(base):].split(b"/", 1)[0]
            names.add(name.decode(errors="replace"))
            start = prefix_range_end(base.encode() + name + b"/")

    # -------------------------------------------------------------- cache TTL

    async def _revoke_stale_caches(self) -> None:
        ttl = self.options.cache_ttl
        while True:
            await asyncio.sleep(min(ttl / 4, 5.0))
            now = time.monotonic()
            for name, remote in list(self.remotes.items()):
                since = remote.state.disconnected_since
                if since is None:
                    self._revoked.discard(name)
                    continue
                if name in self._revoked or now - since < ttl:
                    continue
                log.warning("cluster %s: disconnected for more than %.0fs; draining its services",
                            name, ttl)
                try:
                    await remote.drain(tuple(r.name for r in REVOKED_ON_TTL))
                    self._revoked.add(name)
                    self.revocations[name] += 1
                except EtcdError as exc:
                    log.warning("cluster %s: draining services failed: %s", name, exc)
