"""What one producer owns under one prefix of the local etcd, written through the writer.

A :class:`SyncStore` is Cilium's syncstore over our one
:class:`~clustermesh.syncwriter.SyncWriter`: a KVStoreMesh reflector keeps one per
remote resource (``cilium/cache/nodes/v1/cluster1/``), the apiserver's publisher one
per resource of its cluster (``cilium/state/nodes/v1/cluster1/``).  It owns the two
rules both need:

* **No rewrite churn.**  The store remembers a digest of every value the local
  etcd holds under its prefix (or will, once the writer commits), loaded once by
  :meth:`SyncStore.load`.  :meth:`~SyncStore.upsert` of an unchanged value and
  :meth:`~SyncStore.delete` of an absent key queue nothing, so a restart with
  nothing changed costs reads and no writes.
* **The sync canary once the data is in.**  :meth:`~SyncStore.mark_synced` waits
  until every write queued before it is committed, then writes the canary — only
  if it is missing: an existing canary (from before a relist or a restart) keeps
  its timestamp, since agents only check that it exists.

The digest is Python's keyed 64-bit SipHash (``hash``, seeded per process, so a
remote cannot aim for a collision; digests never leave the process): about 5x
cheaper than blake2b, and an int costs 17 bytes less per key than a 16-byte digest.

A key bound to a lease (written by upstream's KVStoreMesh, which puts every key on its
session lease) counts as different from any value: it is rewritten once, without a
lease, so it never expires under us (:data:`LEASED`).

The store is the only writer of its prefix; keys are full etcd keys (bytes).  What it
holds is read from the destination by :meth:`SyncStore.load` — or, for a replica that
just took over from a warm standby, taken from what the standby followed (``seeds``:
see :mod:`kvstoremesh.standby`), without a read.
"""

from __future__ import annotations

from collections.abc import Iterator

from .clock import REAL_CLOCK, Clock, rfc3339_now
from .etcd.client import EtcdClient, KeyValue
from .keys import prefix_queue_labels
from .syncwriter import SyncWriter

# The digest of a key bound to a lease: equal to no value's (``hash`` never returns -1).
LEASED = -1


def digest_of(kv: KeyValue) -> int:
    """What a store remembers of a key the destination holds."""
    return LEASED if kv.lease else hash(kv.value)


# Digests of the destination known without reading it (a warm standby's), by store
# prefix: each store pops its own, so only a prefix's first session is spared the read.
Seeds = dict[bytes, dict[bytes, int]]


class SyncStore:
    def __init__(self, *, writer: SyncWriter, local: EtcdClient, prefix: bytes, canary: bytes,
                 page_size: int = 5000, seeds: Seeds | None = None,
                 clock: Clock = REAL_CLOCK) -> None:
        self.writer = writer
        self.local = local
        self.prefix = prefix
        self.canary = canary
        self._page_size = page_size
        self._seeds = seeds
        self._clock = clock
        self._digests: dict[bytes, int] = {}  # key -> hash of the value etcd holds (or will)
        self._labels = prefix_queue_labels(prefix)  # the writer's, once for all our keys

    def __len__(self) -> int:
        return len(self._digests)

    def keys(self) -> Iterator[bytes]:
        """A snapshot of the keys the store holds (safe to mutate the store meanwhile)."""
        return iter(list(self._digests))

    def holds(self, key: bytes, value: bytes) -> bool:
        """Whether the local etcd holds (or will hold) ``value`` at ``key``."""
        return self._digests.get(key) == hash(value)

    async def load(self) -> None:
        """Learn what the local etcd holds under the prefix.

        Writes queued earlier are committed first: a put still queued could otherwise
        land after this read and be missed by a diff against it.
        """
        await self.writer.flush()
        seeded = self._seeds.pop(self.prefix, None) if self._seeds is not None else None
        if seeded is not None:
            self._digests = seeded
            return
        digests: dict[bytes, int] = {}
        async for page, _ in self.local.range_pages(self.prefix, page_size=self._page_size):
            for kv in page:
                digests[kv.key] = LEASED if kv.lease else hash(kv.value)  # digest_of, inline
        self._digests = digests

    def upsert(self, key: bytes, value: bytes, *, observed: float | None = None) -> bool:
        """Queue ``value`` for ``key`` unless etcd holds it already; True if queued.

        ``observed`` is the writer's: when the change was seen at its source.
        """
        digest = hash(value)
        if self._digests.get(key) == digest:
            return False
        self._digests[key] = digest
        self.writer.put(key, value, observed=observed, labels=self._labels)
        return True

    def delete(self, key: bytes, *, observed: float | None = None) -> bool:
        """Queue the deletion of ``key`` if the store holds it; True if queued."""
        if self._digests.pop(key, None) is None:
            return False
        self.writer.delete(key, observed=observed, labels=self._labels)
        return True

    async def pace(self) -> None:
        """Let the writer run; wait while its queue is long (see ``SyncWriter.pace``)."""
        await self.writer.pace()

    async def mark_synced(self) -> None:
        """Once what was queued is committed, write the canary if it is missing (or bound
        to a lease: see :data:`LEASED`)."""
        await self.writer.flush()
        canary = await self.local.get(self.canary)
        if canary is None or canary.lease:
            self.writer.put(self.canary, rfc3339_now(self._clock))
            await self.writer.flush()

    async def drain(self) -> int:
        """Delete every key of the store (the canary stays); how many were deleted."""
        count = 0
        for key in self.keys():
            count += self.delete(key)
        await self.writer.flush()
        return count

    async def delete_canary(self) -> None:
        """Delete the canary (read first: nothing to delete costs no write)."""
        if await self.local.get(self.canary) is not None:
            self.writer.delete(self.canary)
            await self.writer.flush()
