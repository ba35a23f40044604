"""Where a remote key becomes a cache key.

A :class:`Reflector` mirrors one resource of one remote cluster, e.g. the nodes
of ``cluster1``, from ``cilium/state/nodes/v1/cluster1/`` on the remote etcd to
``cilium/cache/nodes/v1/cluster1/`` on the local one, for one session.  It iterates
:func:`~clustermesh.etcd.listwatch.list_and_watch` over the remote prefix and writes
through one :class:`~clustermesh.syncstore.SyncStore` over the cache prefix:

1. **Before the first list** the store learns what the local cache holds under the
   prefix (:meth:`~clustermesh.syncstore.SyncStore.load`, once per session; right after
   a takeover, from what the standby followed instead of a read).
2. **Pages** of the remote list: every key is translated (the suffix after the remote
   prefix is kept verbatim) and upserted; the store queues a write only for a value
   that differs from what the cache holds, so a restart with a full cache costs
   reads and no writes.
3. **Listed**: the keys the store holds but the list did not contain were deleted
   on the remote meanwhile, and are deleted from the cache — a diff against the
   store, never a re-read of the local cache, also after a relist (a compaction or
   another etcd cluster behind the endpoints: :mod:`~clustermesh.etcd.listwatch`
   relists by itself).  Then, once what was queued is committed, the sync canary
   ``cilium/synced/<cluster>/cilium/cache/<resource>/v1`` (kept if present).
4. **Changes**: each put or delete, translated, in order.

An entry that validation rejects, or whose put alone could never fit a request to the
local etcd, is not cached, and a version cached before is withdrawn.  The value bytes
are copied verbatim.  Everything else reads a reflector through :meth:`Reflector.status`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.etcd.client import EtcdClient, Event, KeyValue
from clustermesh.etcd.listwatch import Changes, Listed, Page, list_and_watch
from clustermesh.etcd.watch import PUT
from clustermesh.keys import Resource, metrics_scope
from clustermesh.syncstore import Seeds, SyncStore
from clustermesh.syncwriter import SyncWriter

from .snapshot import ReflectorStatus

if TYPE_CHECKING:
    from .metrics import MeshMetrics
    from .rejections import Rejections

log = logging.getLogger(__name__)


# Keys handled between two yields to the event loop while reading a listed page.
_PACE_EVERY = 256


class Reflector:
    """One resource of one remote, for one session (see the module docstring).

    ``synced``: its cache canary is written already (by an earlier session), so
    readiness is not lost while this one lists again.  ``validate(key below the
    prefix, value)`` returns why an entry must not be cached; ``observe(cache key,
    value or None when removed)`` sees every entry as it is cached or removed.
    ``seeds``: what the cache holds, known without reading it (a replica that took over
    from a warm standby).
    """

    def __init__(self, *, resource: Resource, cluster: str, remote: EtcdClient,
                 local: EtcdClient, writer: SyncWriter, remote_cached: bool,
                 page_size: int = 5000, synced: bool = False, clock: Clock = REAL_CLOCK,
                 metrics: MeshMetrics | None = None,
                 on_synced: Callable[[], None] | None = None,
                 validate: Callable[[str, bytes], str | None] | None = None,
                 rejections: Rejections | None = None,
                 observe: Callable[[bytes, bytes | None], None] | None = None,
                 seeds: Seeds | None = None) -> None:
        self.resource = resource
        self._cluster = cluster
        self._remote = remote
        self._page_size = page_size
        self._source = resource.remote_prefix(cluster, cached=remote_cached).encode()
        self._target = resource.cache_prefix(cluster).encode()
        self._store = SyncStore(writer=writer, local=local, prefix=self._target,
                                canary=resource.cache_canary(cluster).encode(),
                                page_size=page_size, seeds=seeds, clock=clock)
        # The writer's own limit (its fits(), inlined): checked for every listed key.
        self._max_entry = writer.max_entry_bytes
        self._scope = metrics_scope(self._target.decode())
        self._clock = clock
        self._metrics = metrics
        self._on_synced = on_synced
        self._validate = validate
        self._rejections = rejections
        self._observe = observe
        self._listed = False  # this session has read the remote's initial list
        self._synced = synced  # the cache canary is written
        self._relists = 0
        # Clock time data last arrived from the remote (a list page, watch events):
        # proof that the connection is alive, counted like a heartbeat by the session.
        self._last_received = 0.0
        # status() until one of its fields changes: every /readyz, scrape and status
        # request asks each of the (up to 6 x 511) reflectors, and most are unchanged.
        # Whatever changes a field, or the store's size, sets it to None.
        self._status: ReflectorStatus | None = None

    def status(self) -> ReflectorStatus:
        if self._status is None:
            # Positional, in the field order of ReflectorStatus (see RemoteCluster.status).
            self._status = ReflectorStatus(self.resource, self._listed, self._synced,
                                           len(self._store), self._relists,
                                           self._last_received)
        return self._status

    async def run(self) -> None:
        """Mirror until cancelled; an etcd error ends the run (and the session)."""
        await self._store.load()
        self._status = None
        seen: set[bytes] = set()  # cache keys of the list in progress
        async with aclosing(list_and_watch(self._remote, self._source,
                                           page_size=self._page_size)) as items:
            async for item in items:
                if isinstance(item, Changes):
                    self._apply(item.events)
                elif isinstance(item, Page):
                    self._last_received = self._clock.monotonic()
                    self._status = None
                    await self._read_page(item.kvs, seen)
                else:
                    await self._list_complete(item, seen)
                    seen = set()  # a page after this starts a relist

    async def drain(self) -> int:
        """Delete everything this reflector's prefix holds in the cache (the reflector
        must not be running); how many keys were deleted."""
        await self._store.load()
        self._status = None
        try:
            return await self._store.drain()
        finally:
            self._status = None

    async def mark_synced_empty(self) -> None:
        """For a resource the remote does not export but readers wait for
        (:attr:`~kvstoremesh.resources.Reflection.SYNCED_EMPTY`): drain what was cached and
        count it as synced, canary included."""
        await self.drain()
        await self._store.mark_synced()
        self._now_synced()

    async def withdraw(self) -> None:
        """For a resource the remote does not export and no reader waits for
        (:attr:`~kvstoremesh.resources.Reflection.OFF`): drain what was cached, and delete
        the canary a session that did reflect it left behind."""
        await self.drain()
        await self._store.delete_canary()

    def canary_deleted(self) -> None:
        """Someone else deleted its cache canary (the remote's data was drained): not
        synced until a session writes the canary again."""
        self._synced = False
        self._status = None

    # ---------------------------------------------------------------- internals

    async def _read_page(self, kvs: Sequence[KeyValue], seen: set[bytes]) -> None:
        # The hot loop of an initial sync (100k+ keys): locals, no call per key beyond
        # the upsert.
        target, cut, upsert, add = self._target, len(self._source), self._upsert, seen.add
        for i, kv in enumerate(kvs, 1):
            key = target + kv.key[cut:]
            add(key)
            upsert(key, kv.value, None)
            if i % _PACE_EVERY == 0:
                # A page takes ~30 ms of CPU: let the writer start txns meanwhile, and
                # wait while its queue is long (the local etcd is the bottleneck then).
                await self._store.pace()

    async def _list_complete(self, listed: Listed, seen: set[bytes]) -> None:
        if listed.relist:
            self._relists += 1
        self._listed = True
        self._status = None
        known = self._store.keys()  # a snapshot: deleting from the store meanwhile is safe
        for key in known:
            if key not in seen:
                self._remove(key, None)
        await self._store.mark_synced()
        self._now_synced()

    def _apply(self, events: Sequence[Event]) -> None:
        observed = self._clock.monotonic()
        self._last_received = observed
        self._status = None
        target, cut = self._target, len(self._source)
        actions: Counter[str] = Counter()
        for event in events:
            key = target + event.kv.key[cut:]
            if event.type == PUT:
                self._upsert(key, event.kv.value, observed)
                actions["create" if event.kv.version == 1 else "update"] += 1
            else:
                self._remove(key, observed)
                actions["delete"] += 1
        if self._metrics is not None:
            self._metrics.events_handled(self._scope, actions,
                                         self._clock.monotonic() - observed)

    def _upsert(self, key: bytes, value: bytes, observed: float | None) -> None:
        # An entry whose put alone exceeds the local etcd's request limit can never be
        # written, and retrying it would stall the writer: rejected like an invalid one.
        too_large = len(key) + len(value) > self._max_entry
        validate = self._validate
        if too_large or validate is not None:
            suffix = key[len(self._target):].decode(errors="replace")
            reason = "too-large" if too_large or validate is None else validate(suffix, value)
            if reason is not None:
                self._reject(suffix, reason)
                self._remove(key, observed)  # a previously valid version is withdrawn
                return
        if self._observe is not None:
            self._observe(key, value)
        self._store.upsert(key, value, observed=observed)
        self._status = None

    def _remove(self, key: bytes, observed: float | None) -> None:
        if self._observe is not None:
            self._observe(key, None)
        self._store.delete(key, observed=observed)
        self._status = None

    def _reject(self, suffix: str, reason: str) -> None:
        if self._rejections is not None:
            self._rejections.record(self.resource.name, suffix, reason)
        if self._metrics is not None:
            self._metrics.entry_rejected(self._cluster, self.resource.name, reason)

    def _now_synced(self) -> None:
        if self._synced:
            return
        log.info("cluster %s: %s synced (%d keys)", self._cluster, self.resource.name,
                 len(self._store))
        self._synced = True
        self._status = None
        if self._on_synced is not None:
            self._on_synced()
