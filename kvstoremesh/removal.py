"""Removing a cluster from the cache: Cilium's drain, with a grace period and retries.

A remote whose config file is removed, or one found cached at start-up that the
config directory no longer names (an *orphan*, :func:`orphaned_clusters`), is removed
by :class:`Removals` in upstream's order:

1. its cached cluster-config is deleted at once, so agents stop connecting to it;
2. after ``--cluster-removal-grace`` (the grace agents get to notice), its sync
   canaries and then every cache prefix of it go (``drain``);
3. an etcd error retries the whole removal, up to :data:`REMOVAL_ATTEMPTS` times,
   waiting :data:`~clustermesh.backoff.CLUSTER_REMOVAL` backoff between attempts; the
   grace is waited once, after the first successful deletion of the cluster-config.
   A removal taken over from another leader waits only what is left of its grace.

Both waits read the mesh's :class:`~clustermesh.clock.Clock`.  Shutdown cancels a
removal half-way; whatever it left (canaries and caches without a cluster-config) is
an orphan at the next start, so nothing of a removed cluster outlives us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Protocol

from clustermesh.backoff import CLUSTER_REMOVAL, Backoff
from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.etcd.client import EtcdClient, prefix_range_end
from clustermesh.etcd.errors import EtcdError
from clustermesh.keys import CLUSTER_CONFIG_PREFIX, RESOURCES, SYNCED_PREFIX

log = logging.getLogger(__name__)

REMOVAL_ATTEMPTS = 5


class Removable(Protocol):
    """What a removal needs of a remote cluster (a stopped one: nothing else writes)."""

    @property
    def name(self) -> str: ...

    async def delete_cached_config(self) -> None: ...

    async def drain(self, resources: tuple[str, ...] | None = None) -> None: ...


class Removals:
    """The removals in progress, one task per cluster name."""

    def __init__(self, *, grace: float, clock: Clock = REAL_CLOCK) -> None:
        self.grace = grace
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, remote: Removable, *, waited: float = 0.0) -> None:
        """Remove ``remote``; ``waited``: seconds of its grace already gone by (a removal
        begun by the previous leader, resumed)."""
        name = remote.name
        task = asyncio.create_task(self._remove(remote, waited), name=f"remove-{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda _: self._tasks.pop(name, None))

    def in_progress(self) -> frozenset[str]:
        """Names of the clusters being removed now."""
        return frozenset(self._tasks)

    async def wait(self, name: str) -> None:
        """Until the removal of ``name`` (if any) is over, however it ended; cancelling
        the waiter does not cancel the removal."""
        task = self._tasks.get(name)
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def cancel(self) -> None:
        """Shutdown: cancel every removal and wait for them to end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _remove(self, remote: Removable, waited: float) -> None:
        backoff = Backoff(CLUSTER_REMOVAL, clock=self._clock)
        graced = False
        for attempt in range(1, REMOVAL_ATTEMPTS + 1):
            try:
                await remote.delete_cached_config()
                if not graced:
                    graced = True
                    if self.grace - waited > 0:
                        await self._clock.sleep(self.grace - waited)
                await remote.drain()
                log.info("cluster %s: cached data removed", remote.name)
                return
            except EtcdError as exc:
                log.warning("cluster %s: removal attempt %d failed: %s", remote.name, attempt,
                            exc)
                if attempt < REMOVAL_ATTEMPTS:
                    await backoff.wait()
        log.error("cluster %s: giving up removing its cached data after %d attempts",
                  remote.name, REMOVAL_ATTEMPTS)


async def orphaned_clusters(local: EtcdClient, *, keep: Collection[str]) -> list[str]:
    """The clusters the local cache holds something of (a cluster-config, a canary, cache
    keys) that are not in ``keep`` (the configured ones, the local cluster, those being
    removed), in name order."""
    names: set[str] = set()
    for prefix in (CLUSTER_CONFIG_PREFIX + "/", SYNCED_PREFIX + "/"):
        async for page, _ in local.range_pages(prefix.encode(), keys_only=True):
            for kv in page:
                names.add(kv.key.decode(errors="replace")[len(prefix):].split("/", 1)[0])
    # Cache data whose canaries are already gone (a drain interrupted half-way).
    for resource in RESOURCES:
        names |= await _clusters_under(local, resource.cache_base + "/")
    return sorted(n for n in names if n and n not in keep)


async def _clusters_under(local: EtcdClient, base: str) -> set[str]:
    """Cluster names below ``base`` (``<base><cluster>/...``): one 1-key read per
    cluster, skipping over each cluster's keys instead of listing them."""
    names: set[str] = set()
    start, end = base.encode(), prefix_range_end(base.encode())
    while True:
        resp = await local.range(start, end, limit=1, keys_only=True)
        if not resp.kvs:
            return names
        name = resp.kvs[0].key[len(base):].split(b"/", 1)[0]
        names.add(name.decode(errors="replace"))
        start = prefix_range_end(base.encode() + name + b"/")
