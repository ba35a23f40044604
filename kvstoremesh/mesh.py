"""The KVStoreMesh daemon: a standby or the leader, the set of remote clusters, their life.

Replicas may share one local etcd, so the daemon alternates two roles
(:meth:`KVStoreMesh.run`):

* **standby** — it campaigns for the leader lock (:mod:`clustermesh.election`) and,
  meanwhile, follows the cache (:class:`~kvstoremesh.standby.CacheFollower`) and the
  config directory: ready once the cache is listed behind another leader, writing nothing;
* **leader** — once the lock is its own (and, for a standby that had listed the cache,
  once the follower has seen the revision its term starts at: its digests then seed the
  stores), the leader's work (below) runs until a stop or the term is lost; then it
  steps down and is a standby again.

Every write goes through the one local client, whose fence
(:class:`~clustermesh.etcd.fence.Fence`) makes each of them conditional on the lock (a
deposed leader cannot write), and the first write etcd refuses ends the term.  A single
replica wins at once; a stop revokes the lock's lease, so a standby takes over without
waiting for it to expire.

As leader, :class:`KVStoreMesh` owns its term's
:class:`~clustermesh.syncwriter.SyncWriter`, follows the config directory, and runs one
:class:`~kvstoremesh.remote.RemoteCluster` per file in it:

* a new file starts a remote; a changed file restarts it (new endpoints or
  certificates);
* a removed file removes the cluster: its cached cluster-config goes first (so
  agents stop connecting), then, after a grace period, its canaries and every
  cache prefix.  A file that comes back during removal is started again once
  the cleanup is done;
* at the start of a term, clusters that the local cache still holds but the
  directory no longer names (removed while we were down, or while the previous leader
  was removing them: then with what is left of the grace) are removed the same way —
  no data of a removed cluster outlives us;
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
etcd that no clustermesh-apiserver writes into.  With a metrics server, it probes the
certificate the local etcd and each running remote's etcd serve
(:mod:`clustermesh.servedcert`), as leader and as standby (which runs no remote).

Shutdown cancels everything and never drains.

Removal lives in :mod:`kvstoremesh.removal`.  Readiness, the status API and the
metrics (:mod:`kvstoremesh.status`, :mod:`kvstoremesh.metrics`) see the daemon only
through the Protocols they declare (``ReadinessSource``, ``StatusSource``,
``MeshState``), which :class:`KVStoreMesh` satisfies: :meth:`KVStoreMesh.remotes_status`
(one frozen :class:`~kvstoremesh.snapshot.RemoteStatus` per remote),
:meth:`KVStoreMesh.problems` of those snapshots, ``revocations`` and
:meth:`KVStoreMesh.queue_sizes`; so they never import this module or a remote.  The
daemon itself reads a remote only through its snapshot and its few public members.

Every timer of the daemon (readiness, removal, the cache TTL, the problems log, the
config directory poll, the heartbeat, the quorum check, the served certificate probe,
the remotes' own) reads the one :class:`~clustermesh.clock.Clock` given to
:class:`KVStoreMesh`, so tests drive them with a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections import Counter as Tally
from collections.abc import Awaitable, Iterator, Mapping
from typing import TypeVar

from aiohttp import web

from clustermesh.backoff import LEADER_ELECTION, Backoff
from clustermesh.clock import REAL_CLOCK, Clock, wait_event
from clustermesh.election import LeaderElection, SessionLost, Term
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import EtcdConfig, load_etcd_config
from clustermesh.etcd.errors import EtcdError
from clustermesh.etcd.fence import Fence
from clustermesh.flags import listen_address
from clustermesh.heartbeat import write_heartbeats
from clustermesh.keys import QueueLabels
from clustermesh.quorum import QuorumCheck
from clustermesh.servedcert import ServedCertificates
from clustermesh.serving import bound_port, health_app, json_app, metrics_app, serve
from clustermesh.syncstore import Seeds
from clustermesh.syncwriter import SyncWriter
from clustermesh.tasks import race

from .configdir import IGNORE, ClusterFile, ConfigDirectory
from .diagnostics import ClusterIds, Network, PodCidrOverlaps, Problem
from .metrics import MeshMetrics
from .options import MeshOptions
from .remote import RemoteCluster
from .removal import Removals, orphaned_clusters
from .resources import REVOKED_ON_TTL
from .snapshot import LEADER, STANDBY, Leadership, RemoteStatus
from .standby import CacheFollower
from .status import LEADERSHIP_HEADER, Readiness, standby_readiness, status_models

log = logging.getLogger(__name__)

T = TypeVar("T")
PROBLEMS_LOG_INTERVAL = 5.0  # seconds between two looks for new or resolved problems


class KVStoreMesh:
    def __init__(self, options: MeshOptions, *, clock: Clock = REAL_CLOCK) -> None:
        self.options = options
        self.clock = clock
        self.local: EtcdClient | None = None
        self.writer: SyncWriter | None = None  # the current term's
        self.revocations: Tally[str] = Tally()  # cache TTL revocations per remote cluster
        self.quorum: QuorumCheck | None = None
        self.local_connected = False
        self.identity = options.leader_election_identity or socket.gethostname()
        self.election: LeaderElection | None = None
        self.role = STANDBY
        self.follower: CacheFollower | None = None  # while standby
        self._fence = Fence(on_lost=self._fence_refused)
        self._leader_key: str | None = None  # the lock's owner as last seen
        self._was_ready = False  # ready once (as standby or leader): stays ready
        self._took_over = False  # this term began when another replica's ended
        self.metrics = MeshMetrics(controller_groups=options.controller_group_metrics)
        self.metrics.attach(self, clock=clock)
        self.served = ServedCertificates(self._etcd_configs, clock=clock)
        self.metrics.export_health(ready=self._readiness_with_problems,
                                   etcd_configs=self._etcd_configs,
                                   served=self.served.series)
        self.runners: dict[str, web.AppRunner] = {}
        self._new_term()

    # -------------------------------------------------------------- lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        o = self.options
        local_config = load_etcd_config(o.local_config)
        self.local = EtcdClient(local_config, name="local etcd",
                                observer=self.metrics.etcd_operation)
        self.local.fence = self._fence  # every write of ours holds only while we lead
        lock_client = EtcdClient(local_config, name="local etcd (leader election)",
                                 clock=self.clock)  # its lease keepalive runs on our clock
        self.election = LeaderElection(lock_client, identity=self.identity,
                                       ttl=int(o.leader_election_lease_ttl))
        self.quorum = QuorumCheck(self.local, metrics=self.metrics,
                                  max_errors=o.max_consecutive_quorum_errors,
                                  interval=o.status_check_interval, clock=self.clock)
        await self._start_servers()
        try:
            await self.local.connect_retrying(stop=stop)
            await lock_client.connect_retrying(stop=stop)
        except BaseException:
            await self._stop_servers()
            await self.local.close()
            await lock_client.close()
            raise
        self.local_connected = True
        background = [asyncio.create_task(self.quorum.run(), name="quorum-check")]
        if o.prometheus_serve_addr:  # the probe's results are only ever scraped
            background.append(asyncio.create_task(self.served.run(), name="served-certs"))
        try:
            await self._alternate(stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.election.resign()  # a standby takes over now, not after the TTL
            await self.local.close()
            await lock_client.close()
            await self._stop_servers()
            log.info("stopped")

    async def _alternate(self, stop: asyncio.Event) -> None:
        """Standby until the lock is ours, leader until it is lost, and again, until
        ``stop``."""
        assert self.election is not None
        o = self.options
        while not stop.is_set():
            follower = CacheFollower(self.local, page_size=o.page_size,
                                     clock=self.clock, on_leader=self._leader_seen)
            self.follower = follower
            # The standby follows the config directory too (its problems are logged on
            # every replica); the next term starts from what it knows.
            directory = ConfigDirectory(o.config_dir, local_cluster_name=o.cluster_name,
                                        interval=o.config_poll_interval, clock=self.clock)
            following = asyncio.gather(self._follow(follower), directory.run(IGNORE))
            try:
                term = await self._until(stop, self._campaign())
                if term is None:
                    return
                seeds: Seeds | None = None
                if follower.listed.is_set():
                    # A warm standby: every write of the leaders before us is in the
                    # follower's view once it has seen the revision our term starts at
                    # (later ones are fenced off); its digests spare the stores a read.
                    if await self._until(stop, follower.caught_up(term.since)) is None:
                        return
                    seeds = follower.seeds()
                # Else the lock came first (a lone replica starting): each store reads its
                # own prefix, alongside its remote's list, as a follower listing the whole
                # cache first would serialise the two.
                removed_at = dict(follower.config_removed_at)
            finally:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
            self.follower = None
            self._fence.hold(term.key, term.revision)
            self._took_over = term.since != term.revision  # another replica led before
            self.role = LEADER
            self.metrics.leader.set(1)
            self._leader_seen(term.key.decode())
            log.info("leader election: lock acquired (%s, lease %x); leading",
                     term.key.decode(), term.lease)
            try:
                await self._lead(directory, seeds, removed_at, stop)
            finally:
                self._fence.drop()
                self.metrics.leader.set(0)
                self.role = STANDBY
            if stop.is_set():
                return
            log.warning("leader election: leadership lost (%s); stepping down to standby",
                        self.election.lost_reason)
            await self.election.resign()

    @staticmethod
    async def _until(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
        """``work``'s result (never None), or None if ``stop`` comes first."""
        first = await race(work, stop.wait())
        return None if stop.is_set() else first.result()

    async def _campaign(self) -> Term:
        assert self.election is not None
        backoff = Backoff(LEADER_ELECTION, clock=self.clock)
        while True:
            try:
                return await self.election.campaign()
            except SessionLost as exc:
                log.warning("leader election: session lost while waiting: %s", exc)
            except EtcdError as exc:
                log.warning("leader election: %s; retrying", exc)
            await backoff.wait()

    async def _follow(self, follower: CacheFollower) -> None:
        backoff = Backoff(LEADER_ELECTION, clock=self.clock)
        while True:
            try:
                await follower.run()
            except EtcdError as exc:
                log.warning("standby: following the local etcd failed: %s; retrying", exc)
                await backoff.wait()

    def _leader_seen(self, key: str | None) -> None:
        """The lock's owner is ``key`` now (None: nobody): count a change."""
        if key is not None and self._leader_key is not None and key != self._leader_key:
            self.metrics.leader_changes.inc()
        if key is not None:
            self._leader_key = key

    def _fence_refused(self, reason: str) -> None:
        if self.election is not None:
            self.election.end_session(reason)

    async def _lead(self, directory: ConfigDirectory, seeds: Seeds | None,
                    removed_at: Mapping[str, float], stop: asyncio.Event) -> None:
        """One term: run the remotes until ``stop`` or the term is lost.  ``seeds``: the
        warm standby's digests (None: the stores read the cache); ``removed_at``: when
        the standby saw each cluster-config deleted (removals to resume)."""
        assert self.election is not None
        o = self.options
        self._new_term()
        self.writer = SyncWriter(self.local, max_txn_ops=o.max_txn_ops,
                                 max_request_bytes=o.max_request_bytes,
                                 max_inflight=o.max_inflight, qps=o.qps,
                                 bootstrap_qps=o.bootstrap_qps,
                                 on_commit=self.metrics.writes_committed,
                                 on_error=self.metrics.writes_failed, clock=self.clock)
        self._seeds = seeds
        self.writer.start()
        first_read = asyncio.Event()
        background = [asyncio.create_task(directory.run(self, ready=first_read),
                                          name="config-dir"),
                      asyncio.create_task(self._watch_readiness(), name="readiness"),
                      asyncio.create_task(self._log_problems(), name="problems")]
        if o.enable_heartbeat:
            background.append(asyncio.create_task(
                write_heartbeats(self.local, runs=self.metrics.controllers, clock=self.clock),
                name="heartbeat"))
        term_lost = self.election.lost
        try:
            await race(first_read.wait(), term_lost.wait(), stop.wait())
            if term_lost.is_set() or stop.is_set():
                return
            # Both at once: readiness must never see the directory read without knowing
            # which clusters it has to wait for.
            self.initial_clusters = set(directory.known)
            self.config_ready.set()
            self._maybe_ready.set()
            await self._remove_orphans(set(directory.known), removed_at)
            if o.cache_ttl > 0:
                background.append(asyncio.create_task(self._revoke_stale_caches(),
                                                      name="cache-ttl"))
            await race(stop.wait(), term_lost.wait())
        finally:
            graceful = stop.is_set() and not term_lost.is_set()
            if not graceful:
                self._fence.drop()  # not one more write goes out under this term
            log.info("%s (caches are kept)", "shutting down" if graceful
                     else "leaving the leader's work")
            for task in [*background, *self._tasks.values()]:
                task.cancel()
            await asyncio.gather(*background, *self._tasks.values(), self._removals.cancel(),
                                 return_exceptions=True)
            # Queued writes get a few seconds on a graceful stop, none once the lock is
            # lost (they would be refused anyway).
            await self.writer.stop(drain_timeout=5.0 if graceful else 0)
            if not stop.is_set():  # a standby shows none of its last term's work
                self.remotes = {}
                self.writer = None

    def _new_term(self) -> None:
        """The leader's state, anew for each term."""
        o = self.options
        self.remotes: dict[str, RemoteCluster] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._removals = Removals(grace=o.removal_grace, clock=self.clock)
        self._revoked: set[str] = set()
        self._seeds: Seeds | None = None  # the warm standby's view, for the first sessions
        self.cluster_ids = ClusterIds()
        self._overlaps = PodCidrOverlaps()
        self.started_at = self.clock.monotonic()  # of the term: ready timeouts count from it
        self.initial_clusters: set[str] = set()
        self.config_ready = asyncio.Event()  # set once initial_clusters is known
        # Set by whatever can make the mesh ready (a remote ready, one removed, the config
        # directory read); the readiness watcher waits for it rather than polling.
        self._maybe_ready = asyncio.Event()
        self.readiness = Readiness(self, per_cluster_timeout=o.per_cluster_ready_timeout,
                                   global_timeout=o.global_ready_timeout, clock=self.clock)

    # ------------------------------------------------- what the others read

    def remotes_status(self) -> dict[str, RemoteStatus]:
        """One snapshot of every running remote, by name, in name order."""
        return {name: self.remotes[name].status() for name in sorted(self.remotes)}

    def _etcd_configs(self) -> dict[str, EtcdConfig]:
        """The etcd config of the local etcd and of each running remote's last session,
        by cluster (a standby runs no remote: the local etcd's only)."""
        configs = {}
        if self.local is not None:
            configs[self.options.cluster_name] = self.local.config
        for name, remote in sorted(self.remotes.items()):
            if remote.etcd_config is not None:
                configs[name] = remote.etcd_config
        return configs

    def queue_sizes(self) -> Mapping[QueueLabels, int]:
        return self.writer.queue_sizes() if self.writer is not None else {}

    def removals_in_progress(self) -> frozenset[str]:
        """Names of the clusters whose cached data is being removed now."""
        return self._removals.in_progress()

    def problems(self, remotes: Mapping[str, RemoteStatus]) -> list[Problem]:
        """Misconfigurations of the mesh as of the snapshots ``remotes`` (see
        :mod:`kvstoremesh.diagnostics`).  The pod CIDRs of a remote are read only when
        its snapshot says they changed."""
        found: list[Problem] = []
        for name in sorted(remotes):
            status = remotes[name]
            if status.problem is not None:
                found.append(status.problem)
            found.extend(status.certificate_problems)
        versions = {name: (self.remotes[name].created, remotes[name].pod_cidrs_version)
                    for name in remotes if name in self.remotes}
        found.extend(self._overlaps.check(versions, self._pod_cidrs_of))
        return found

    def _pod_cidrs_of(self, name: str) -> Iterator[Network]:
        for nets in self.remotes[name].pod_cidrs.values():
            yield from nets

    async def _log_problems(self) -> None:
        """One log line when a problem appears and one when it is gone."""
        known: set[Problem] = set()
        while True:
            current = set(self.problems(self.remotes_status()))
            for problem in sorted(current - known, key=lambda p: p.message):
                log.error("mesh problem (%s): %s", problem.kind, problem.message)
            for problem in sorted(known - current, key=lambda p: p.message):
                log.info("mesh problem resolved (%s): %s", problem.kind, problem.message)
            known = current
            await self.clock.sleep(PROBLEMS_LOG_INTERVAL)

    # ---------------------------------------------------------------- serving

    def _quorum_problem(self) -> str | None:
        return self.quorum.problem if self.quorum is not None else None

    def leadership(self) -> Leadership:
        """This replica's role and who holds the leader lock, as known now."""
        identity = self.identity
        lease = self.election.lease if self.election is not None else 0
        if self.role == LEADER:
            return Leadership(LEADER, identity, lease, identity, lease)
        holder = self.follower.leader() if self.follower is not None else None
        if holder is None:
            return Leadership(STANDBY, identity, lease, None, 0)
        return Leadership(STANDBY, identity, lease, holder.identity or "", holder.lease)

    def _readiness_with_problems(self) -> tuple[bool, list[str]]:
        remotes = self.remotes_status()
        leadership = self.leadership()
        if leadership.role == LEADER:
            ready, lines = self.readiness.check(remotes)
            if ready:
                self._was_ready = True
            elif self._was_ready:  # taking over: the pod stays ready while the term syncs
                ready, lines = True, ["taken over; syncing", *lines]
        else:
            listed = self.follower is not None and self.follower.listed.is_set()
            ready, lines = standby_readiness(leadership, listed=listed)
            self._was_ready = self._was_ready or ready
            ready = self._was_ready
        lines = [*lines, leadership.describe()]
        quorum = self._quorum_problem()
        if quorum is not None:
            ready, lines = False, [quorum, *lines]
        return ready, lines + [f"problem: {p.message}" for p in self.problems(remotes)]

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
            # The list is Cilium's RemoteCluster models; role and leader go in a header.
            api = json_app({"/v1/cluster": lambda: status_models(self)},
                           headers=lambda: {LEADERSHIP_HEADER: json.dumps(
                               self.leadership().model())})
            self.runners["api"] = await serve(api, host, port)

    def port(self, server: str) -> int:
        """The port ``health``, ``metrics`` or ``api`` listens on."""
        return bound_port(self.runners[server])

    async def _stop_servers(self) -> None:
        for runner in self.runners.values():
            await runner.cleanup()
        self.runners.clear()

    async def _watch_readiness(self) -> None:
        """Log the transition to ready and end the writer's bootstrap rate.

        A check snapshots every remote, so it runs only when the verdict can have
        changed: something set ``_maybe_ready``, or a ready timeout ran out.
        """
        while True:
            self._maybe_ready.clear()
            remotes = self.remotes_status()
            ready, _ = self.readiness.check(remotes)
            if ready:
                assert self.writer is not None and self.readiness.ready_since is not None
                self.writer.bootstrap_done()
                log.info("KVStoreMesh ready: %d/%d remote clusters ready (%.1fs after %s)",
                         sum(1 for s in remotes.values() if s.ready), len(remotes),
                         self.readiness.ready_since - self.started_at,
                         "taking over" if self._took_over else "start")
                return
            await wait_event(self._maybe_ready, self.readiness.next_timeout(),
                             clock=self.clock)

    # ------------------------------------------------------ config directory

    async def cluster_upserted(self, file: ClusterFile) -> None:
        name = file.name
        if name in self._removals.in_progress():
            log.info("cluster %s: re-added while being removed; starts after the cleanup", name)
            await self._stop_remote(name)  # a start still pending from an earlier re-add
            self._tasks[name] = asyncio.create_task(self._start_after_removal(file))
            return
        await self._stop_remote(name)
        self._start_remote(file)

    async def cluster_removed(self, name: str) -> None:
        remote = self.remotes.get(name)
        await self._stop_remote(name)
        self.remotes.pop(name, None)
        self.cluster_ids.release(name)
        self._maybe_ready.set()  # readiness no longer waits for it
        if remote is None:
            return
        if self.options.disable_drain_on_disconnection:
            log.warning("cluster %s: configuration removed; its cached data (cluster-config "
                        "included) is kept (--disable-drain-on-disconnection): agents keep "
                        "seeing the cluster until it is configured again or deleted by hand",
                        name)
            return
        log.info("cluster %s: configuration removed; draining its cached data", name)
        self._removals.start(remote)

    def _new_remote(self, name: str, file: ClusterFile | None = None) -> RemoteCluster:
        assert self.local is not None and self.writer is not None
        if file is None:  # an orphan: never run, only removed
            return RemoteCluster(name=name, config_path=self.options.config_dir / name,
                                 local=self.local, writer=self.writer, options=self.options,
                                 clock=self.clock)
        return RemoteCluster(name=name, config_path=file.path, local=self.local,
                             writer=self.writer, options=self.options, metrics=self.metrics,
                             cluster_ids=self.cluster_ids, clock=self.clock,
                             on_ready=self._maybe_ready.set, seeds=self._seeds)

    def _start_remote(self, file: ClusterFile) -> None:
        previous = self.remotes.get(file.name)
        remote = self._new_remote(file.name, file)
        if previous is not None:  # keep the failure history across a config change
            remote.inherit_failures(previous.status())
        self.remotes[file.name] = remote
        self._tasks[file.name] = asyncio.create_task(remote.run(), name=f"remote-{file.name}")
        log.info("cluster %s: configuration %s (re)loaded", file.name, file.path)

    async def _start_after_removal(self, file: ClusterFile) -> None:
        await self._removals.wait(file.name)
        self._tasks.pop(file.name, None)
        self._start_remote(file)

    async def _stop_remote(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _remove_orphans(self, configured: set[str],
                              removed_at: Mapping[str, float]) -> None:
        """Remove clusters the cache holds but the config directory no longer names.

        A removal another leader began (``removed_at``: when this replica, then a
        standby, saw its cluster-config go) is resumed: its grace counts from then."""
        assert self.local is not None
        keep = configured | {self.options.cluster_name} | self._removals.in_progress()
        orphans = await orphaned_clusters(self.local, keep=keep)
        if orphans and self.options.disable_drain_on_disconnection:
            log.warning("clusters %s: cached but no longer configured; kept: "
                        "--disable-drain-on-disconnection", ", ".join(orphans))
            return
        now = self.clock.monotonic()
        for name in orphans:
            seen = removed_at.get(name)
            if seen is None:
                log.info("cluster %s: cached but no longer configured; removing it", name)
            else:
                log.info("cluster %s: resuming its removal, begun %.1fs ago", name, now - seen)
            self._removals.start(self._new_remote(name),
                                 waited=now - seen if seen is not None else 0.0)

    # -------------------------------------------------------------- cache TTL

    async def _revoke_stale_caches(self) -> None:
        """Drain what :data:`~kvstoremesh.resources.REVOKED_ON_TTL` names of each remote
        disconnected for ``--clustermesh-cache-ttl``; once per disconnection."""
        ttl = self.options.cache_ttl
        while True:
            await self.clock.sleep(min(ttl / 4, 5.0))
            now = self.clock.monotonic()
            for name, status in self.remotes_status().items():
                since = status.disconnected_since
                if since is None:
                    self._revoked.discard(name)
                    continue
                if name in self._revoked or now - since < ttl:
                    continue
                remote = self.remotes.get(name)
                if remote is None:  # removed while an earlier one was drained
                    continue
                log.warning("cluster %s: disconnected for more than %.0fs; draining its services",
                            name, ttl)
                try:
                    await remote.drain(tuple(r.name for r in REVOKED_ON_TTL))
                    self._revoked.add(name)
                    self.revocations[name] += 1
                except EtcdError as exc:
                    log.warning("cluster %s: draining services failed: %s", name, exc)
