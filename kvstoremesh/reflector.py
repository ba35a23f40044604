"""Where a remote key becomes a cache key.

A :class:`Reflector` mirrors one resource of one remote cluster, e.g. the nodes
of ``cluster1``, from ``cilium/state/nodes/v1/cluster1/`` on the remote etcd to
``cilium/cache/nodes/v1/cluster1/`` on the local one.  It is etcd's mirror in
two steps, plus client-go's reflector diff:

1. **Sync the base at revision R** (:meth:`Reflector.sync_base`): read what the
   local cache holds for this prefix, then list the remote prefix page by page
   at one pinned revision R, queueing a write for every key whose value differs
   from the cache.  Only when the remote list is complete are the cache keys it
   did not contain deleted.  Unchanged keys are never rewritten, so a restart
   with a full cache costs reads and no writes.
2. **Watch from R+1** (:meth:`Reflector.follow`): translate each event's key
   and queue the put or delete.  If the remote compacted past the revision we
   need, go back to step 1 (relist and diff: nothing stale survives).

The value bytes are copied verbatim; the key suffix after the watched prefix is
kept verbatim.  The reflector remembers a digest of every value it holds in the
cache, so repeated or no-op updates from the remote cost no writes.  After the
first complete base sync is committed it writes the sync canary
``cilium/synced/<cluster>/cilium/cache/<resource>/v1``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from clustermesh.clock import rfc3339_now
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.errors import EtcdCompacted
from clustermesh.etcd.watch import PUT
from clustermesh.keys import Resource, metrics_scope
from clustermesh.syncwriter import SyncWriter

if TYPE_CHECKING:
    from .metrics import MeshMetrics
    from .rejections import Rejections

log = logging.getLogger(__name__)


# Keys handled between two yields to the event loop while diffing a listed page.
_YIELD_EVERY = 256


def _digest(value: bytes) -> int:
    # Python's keyed 64-bit SipHash (seeded per process, so a remote cannot aim for a
    # collision; digests never leave the process): ~5x cheaper than blake2b, and an int
    # takes 17 bytes less per cached key than a 16-byte digest.
    return hash(value)


class Reflector:
    def __init__(self, *, resource: Resource, cluster: str, remote: EtcdClient,
                 local: EtcdClient, writer: SyncWriter, remote_cached: bool,
                 page_size: int = 5000, metrics: MeshMetrics | None = None,
                 on_synced: Callable[[], None] | None = None,
                 validate: Callable[[str, bytes], str | None] | None = None,
                 rejections: Rejections | None = None,
                 observe: Callable[[bytes, bytes | None], None] | None = None) -> None:
        self.resource = resource
        self.cluster = cluster
        self.remote = remote
        self.local = local
        self.writer = writer
        self.page_size = page_size
        self.source_prefix = resource.remote_prefix(cluster, cached=remote_cached).encode()
        self.target_prefix = resource.cache_prefix(cluster).encode()
        self.canary_key = resource.cache_canary(cluster).encode()
        self.scope = metrics_scope(self.target_prefix.decode())
        self.metrics = metrics
        self.on_synced = on_synced
        self.validate = validate  # (key below the prefix, value) -> reason to reject
        self.rejections = rejections
        self.observe = observe  # (cache key, value or None when removed): e.g. pod CIDRs
        self.listed = False  # the initial remote list has been read
        self.synced = asyncio.Event()  # ... and written, canary included
        self.relists = 0
        # monotonic time data last arrived from the remote (a list page, watch events):
        # proof that the connection is alive, counted like a heartbeat by the session
        self.last_received = 0.0
        # cache key -> digest of the value the local cache holds (or will once the writer commits)
        self._digests: dict[bytes, int] = {}

    @property
    def name(self) -> str:
        return self.resource.name

    @property
    def cached_keys(self) -> int:
        return len(self._digests)

    def to_cache_key(self, remote_key: bytes) -> bytes:
        return self.target_prefix + remote_key[len(self.source_prefix):]

    async def run(self) -> None:
        """Mirror until cancelled; errors other than compaction end the run."""
        while True:
            revision = await self.sync_base()
            try:
                await self.follow(revision + 1)
            except EtcdCompacted as exc:
                self.relists += 1
                log.info("cluster %s: %s: remote compacted past revision %d (%s); relisting",
                         self.cluster, self.name, revision + 1, exc)

    async def sync_base(self) -> int:
        """Make the cache equal the remote at one revision R, and return R."""
        # Writes this reflector queued earlier must land before we read the cache:
        # otherwise a queued put could commit after the diff decided its key is stale.
        await self.writer.flush()
        await self._load_cache()
        seen: set[bytes] = set()
        revision = 0
        async for page, page_revision in self.remote.range_pages(self.source_prefix,
                                                                 page_size=self.page_size):
            revision = page_revision
            self.last_received = time.monotonic()
            for i, kv in enumerate(page, 1):
                key = self.to_cache_key(kv.key)
                seen.add(key)
                self._upsert(key, kv.value)
                if i % _YIELD_EVERY == 0:
                    # A page takes ~30 ms of CPU: let the writer start txns meanwhile, and
                    # wait while its queue is long (the local etcd is the bottleneck then).
                    await self.writer.pace()
        self.listed = True
        for key in [k for k in self._digests if k not in seen]:
            self._remove(key)
        await self.writer.flush()
        await self._write_canary()
        return revision

    async def follow(self, start_revision: int) -> None:
        async with self.remote.watch(self.source_prefix, start_revision=start_revision) as watch:
            async for batch in watch:
                observed = time.monotonic()
                if batch.events:
                    self.last_received = observed
                actions: Counter[str] = Counter()
                for event in batch.events:
                    key = self.to_cache_key(event.kv.key)
                    if event.type == PUT:
                        self._upsert(key, event.kv.value, observed)
                        actions["create" if event.kv.version == 1 else "update"] += 1
                    else:
                        self._remove(key, observed)
                        actions["delete"] += 1
                if self.metrics is not None and actions:
                    self.metrics.events_handled(self.scope, actions,
                                                time.monotonic() - observed)

    async def drain(self) -> int:
        """Delete everything this reflector cached (the reflector must not be running)."""
        await self.writer.flush()
        await self._load_cache()
        for key in list(self._digests):
            self._remove(key)
        await self.writer.flush()
        return len(self._digests)

    async def mark_synced_empty(self) -> None:
        """For a resource the remote does not export but readers wait for
        (:attr:`~kvstoremesh.resources.Reflection.SYNCED_EMPTY`): drain what was cached and
        count it as synced, canary included."""
        await self.drain()
        await self._write_canary()

    async def withdraw(self) -> None:
        """For a resource the remote does not export and no reader waits for
        (:attr:`~kvstoremesh.resources.Reflection.OFF`): drain what was cached, and delete
        the canary a session that did reflect it left behind."""
        await self.drain()
        # Read first: a restart with nothing to withdraw must cost no request to the writer.
        if await self.local.get(self.canary_key) is not None:
            self.writer.delete(self.canary_key)
            await self.writer.flush()

    # ---------------------------------------------------------------- internals

    async def _load_cache(self) -> None:
        digests: dict[bytes, int] = {}
        async for page, _ in self.local.range_pages(self.target_prefix, page_size=self.page_size):
            for kv in page:
                digests[kv.key] = _digest(kv.value)
        self._digests = digests

    def _upsert(self, key: bytes, value: bytes, observed: float | None = None) -> None:
        # An entry whose put alone exceeds the local etcd's request limit can never be
        # written, and retrying it would stall the writer: rejected like an invalid one.
        too_large = not self.writer.fits(key, value)
        if self.validate is not None or too_large:
            suffix = key[len(self.target_prefix):].decode(errors="replace")
            reason = "too-large" if too_large else self.validate(suffix, value)  # type: ignore[misc]
            if reason is not None:
                # Not cached, and a previously valid version is withdrawn.
                if self.rejections is not None:
                    self.rejections.record(self.name, suffix, reason)
                if self.metrics is not None:
                    self.metrics.entry_rejected(self.cluster, self.name, reason)
                self._remove(key, observed)
                return
        if self.observe is not None:
            self.observe(key, value)
        digest = _digest(value)
        if self._digests.get(key) == digest:
            return
        self._digests[key] = digest
        self.writer.put(key, value, observed=observed)

    def _remove(self, key: bytes, observed: float | None = None) -> None:
        if self.observe is not None:
            self.observe(key, None)
        if self._digests.pop(key, None) is not None:
            self.writer.delete(key, observed=observed)

    async def _write_canary(self) -> None:
        # An existing canary (from before a relist or a restart) stays: rewriting its
        # timestamp would be churn, and agents only check that it exists.
        if await self.local.get(self.canary_key) is None:
            self.writer.put(self.canary_key, rfc3339_now())
            await self.writer.flush()
        if not self.synced.is_set():
            log.info("cluster %s: %s synced (%d keys)", self.cluster, self.name,
                     len(self._digests))
            self.synced.set()
            if self.on_synced is not None:
                self.on_synced()
