"""What a standby replica keeps of the destination etcd, so that it takes over warm.

A KVStoreMesh replica that does not hold the leader lock writes nothing; it follows,
with one :func:`~clustermesh.etcd.listwatch.list_and_watch` over the key range from
``cilium/cache/`` to the end of ``cilium/kvstoremesh-replicas/``, what the leader
wrote and who holds the lock:

* a digest of every cache key (``cilium/cache/<resource>/v1/<cluster>/...``), grouped
  by the prefix of the :class:`~clustermesh.syncstore.SyncStore` that owns it, with
  :data:`~clustermesh.syncstore.LEASED` for a key bound to a lease (written by
  upstream's KVStoreMesh, whose keys vanish with its lease: they must be rewritten);
* the cached cluster-configs, and when each deleted one was seen go (a removal the
  leader started: its grace is resumed, neither restarted nor skipped);
* the lock keys (``cilium/kvstoremesh-lock/<lease hex>``, by create revision) and the
  replicas' registrations (lease -> identity): who leads, for the status.

The range is one ordered stream, so once the follower has seen the event at which its
replica's term began (:meth:`CacheFollower.caught_up`, :attr:`Term.since
<clustermesh.election.Term.since>`) it holds every write of every earlier leader (later
ones are fenced off by etcd).  On takeover :meth:`CacheFollower.seeds` hands the
digests to the new leader's stores, which then need no read of the destination and
write only what differs from the remotes.  A relist (compaction) rebuilds the view.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import aclosing

from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.election import LockHolder
from clustermesh.etcd.client import EtcdClient, KeyValue, prefix_range_end
from clustermesh.etcd.listwatch import Changes, Listed, Page, list_and_watch
from clustermesh.etcd.watch import PUT
from clustermesh.keys import (
    CACHE_PREFIX,
    CLUSTER_CONFIG_PREFIX,
    KVSTOREMESH_LOCK,
    KVSTOREMESH_REPLICAS,
    RESOURCES,
    Resource,
)
from clustermesh.syncstore import Seeds, digest_of

log = logging.getLogger(__name__)

FOLLOWED_FROM = (CACHE_PREFIX + "/").encode()
FOLLOWED_TO = prefix_range_end((KVSTOREMESH_REPLICAS + "/").encode())
_CONFIG = (CLUSTER_CONFIG_PREFIX + "/").encode()
_LOCK = (KVSTOREMESH_LOCK + "/").encode()
_REPLICAS = (KVSTOREMESH_REPLICAS + "/").encode()
_BY_CACHE_BASE = {r.cache_base.encode(): r for r in RESOURCES}


class CacheFollower:
    def __init__(self, client: EtcdClient, *, page_size: int = 5000, clock: Clock = REAL_CLOCK,
                 on_leader: Callable[[str | None], None] | None = None) -> None:
        """``on_leader(lock key or None)`` is called whenever the lock's owner changes."""
        self._client = client
        self._on_leader = on_leader
        self._page_size = page_size
        self._clock = clock
        self.listed = asyncio.Event()  # the first list is complete
        self.revision = 0  # everything up to it is in the view
        self._digests: dict[bytes, dict[bytes, int]] = {}  # store prefix -> key -> digest
        self._keys = 0
        self.cluster_configs: set[str] = set()
        self.config_removed_at: dict[str, float] = {}  # cluster -> clock time seen deleted
        self._locks: dict[bytes, tuple[int, int]] = {}  # lock key -> (create revision, lease)
        self._identities: dict[int, str] = {}  # lease -> registered identity
        self._advanced = asyncio.Event()
        self._prefixes: dict[tuple[Resource, bytes], bytes] = {}  # (resource, cluster) memo

    # ------------------------------------------------------------ what it knows

    def leader(self) -> LockHolder | None:
        """The lock's owner: the lock key created first."""
        if not self._locks:
            return None
        key, (_, lease) = min(self._locks.items(), key=lambda item: item[1][0])
        return LockHolder(key.decode(errors="replace"), lease, self._identities.get(lease))

    async def caught_up(self, revision: int) -> int:
        """Until the view includes every event up to ``revision`` (one in our range);
        the revision the view is at then."""
        while self.revision < revision:
            self._advanced.clear()
            await self._advanced.wait()
        return self.revision

    def seeds(self) -> Seeds:
        """Hand the digests over, by store prefix (the follower forgets them: call once,
        then stop it)."""
        digests, self._digests, self._keys = self._digests, {}, 0
        return digests

    # ------------------------------------------------------------------ follow

    async def run(self) -> None:
        """Follow until cancelled; etcd errors end it (the caller restarts it)."""
        fresh: CacheFollower | None = None
        async with aclosing(list_and_watch(self._client, FOLLOWED_FROM, range_end=FOLLOWED_TO,
                                           page_size=self._page_size)) as items:
            async for item in items:
                if isinstance(item, Page):
                    if fresh is None:  # a list begins: build the view anew beside this one
                        fresh = CacheFollower(self._client, clock=self._clock)
                    for kv in item.kvs:
                        fresh._put(kv)
                elif isinstance(item, Listed):
                    assert fresh is not None
                    self._adopt(fresh)
                    fresh = None
                    self._advance(item.revision)
                    if not self.listed.is_set():
                        log.info("standby: destination listed at revision %d (%d cache keys)",
                                 item.revision, self._keys)
                        self.listed.set()
                elif isinstance(item, Changes):
                    for event in item.events:
                        if event.type == PUT:
                            self._put(event.kv)
                        else:
                            self._delete(event.kv.key)
                    self._advance(item.events[-1].kv.mod_revision)

    def _adopt(self, fresh: CacheFollower) -> None:
        removed = self.cluster_configs - fresh.cluster_configs
        now = self._clock.monotonic()
        for name in removed:  # deleted while we relisted: seen go now
            self.config_removed_at.setdefault(name, now)
        self._digests, self._keys = fresh._digests, fresh._keys
        self.cluster_configs = fresh.cluster_configs
        self._locks, self._identities = fresh._locks, fresh._identities
        self._leader_changed()

    def _advance(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
            self._advanced.set()

    def _put(self, kv: KeyValue) -> None:
        key = kv.key
        if key.startswith(FOLLOWED_FROM):
            prefix = self._store_prefix(key)
            if prefix is not None:
                keys = self._digests.setdefault(prefix, {})
                self._keys += key not in keys
                keys[key] = digest_of(kv)
        elif key.startswith(_CONFIG):
            name = key[len(_CONFIG):].decode(errors="replace")
            self.cluster_configs.add(name)
            self.config_removed_at.pop(name, None)
        elif key.startswith(_LOCK):
            self._locks[key] = (kv.create_revision, kv.lease)
            self._leader_changed()
        elif key.startswith(_REPLICAS):
            self._identities[kv.lease] = kv.value.decode(errors="replace")

    def _delete(self, key: bytes) -> None:
        if key.startswith(FOLLOWED_FROM):
            prefix = self._store_prefix(key)
            keys = self._digests.get(prefix) if prefix is not None else None
            if keys is not None and keys.pop(key, None) is not None:
                self._keys -= 1
                if not keys:
                    del self._digests[prefix]
        elif key.startswith(_CONFIG):
            name = key[len(_CONFIG):].decode(errors="replace")
            if name in self.cluster_configs:
                self.cluster_configs.discard(name)
                self.config_removed_at[name] = self._clock.monotonic()
        elif key.startswith(_LOCK):
            self._locks.pop(key, None)
            self._leader_changed()
        elif key.startswith(_REPLICAS):
            lease = _lease_of(key[len(_REPLICAS):])
            if lease is not None:
                self._identities.pop(lease, None)

    def _leader_changed(self) -> None:
        if self._on_leader is not None:
            holder = self.leader()
            self._on_leader(holder.key if holder is not None else None)

    def _store_prefix(self, key: bytes) -> bytes | None:
        """The prefix of the store that owns cache ``key`` (None: not a store's layout)."""
        parts = key.split(b"/", 5)  # cilium, cache, <resource>, v1, <cluster>, <rest>
        if len(parts) < 6:
            return None
        resource = _BY_CACHE_BASE.get(b"/".join(parts[:4]))
        if resource is None:
            return None
        memo = (resource, parts[4])
        prefix = self._prefixes.get(memo)
        if prefix is None:
            prefix = resource.cache_prefix(parts[4].decode(errors="replace")).encode()
            self._prefixes[memo] = prefix
        return prefix if key.startswith(prefix) else None


def _lease_of(suffix: bytes) -> int | None:
    try:
        return int(suffix, 16)
    except ValueError:
        return None

