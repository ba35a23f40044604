"""Kubernetes objects in, etcd keys out: the apiserver's reconciling publisher.

:class:`Publisher` is the :class:`~apiserver.sources.ObjectSink` every source
feeds.  :class:`~apiserver.exports.Exports` holds the objects and says which
*owners* (one identity, endpoint, endpoint slice, node, service, service export
or EndpointSlice) a change affects and what keys each owner publishes.  Owners
may claim the same key (two endpoints with one IP): an
:class:`~apiserver.ownership.Ownership` per resource decides whose value is
exported.  Writes are deduplicated against what etcd holds, so only keys whose
value changes are written.

Each etcd resource goes live once every kind it is built from has been listed:

1. read what our etcd already holds under the resource's state prefix;
2. without yielding to the event loop, compute every owner's keys from the
   current objects and seed the ownership of each key from what is exported
   (the claimant already exported stays primary, so a restart flips nothing),
   queue writes for keys that differ and deletes for keys nobody publishes any
   more (left over from before a restart) — a restart with unchanged objects
   writes nothing;
3. once those writes are committed, write the sync canary
   ``cilium/synced/<cluster>/cilium/state/<resource>/v1``.

From then on changes flow through incrementally, in arrival order.  An object
that cannot be (fully) exported is logged once per distinct problem, naming
the object; what it can export is exported, and nothing of other objects changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from clustermesh.clock import rfc3339_now
from clustermesh.etcd.client import EtcdClient
from clustermesh.keys import Resource
from clustermesh.syncwriter import SyncWriter

from .exports import ExportOptions, Exports, Owner, describe
from .ownership import DELETE, KEEP, Action, Ownership
from .sources import Kind, Obj

log = logging.getLogger(__name__)


def _digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()


class Publisher:
    def __init__(self, options: ExportOptions, *, local: EtcdClient,
                 writer: SyncWriter) -> None:
        self.options = options
        self.cluster = options.cluster
        self.local = local
        self.writer = writer
        self.exports = Exports(options)
        self.resources: tuple[Resource, ...] = tuple(self.exports.inputs)
        self.kinds: tuple[Kind, ...] = self.exports.kinds
        self.kinds_synced: set[Kind] = set()
        self._claimed: set[Resource] = set()  # going live (or live)
        self.live: set[Resource] = set()  # the initial pass is done: changes flow through
        self.resource_synced: dict[Resource, asyncio.Event] = {
            r: asyncio.Event() for r in self.resources}
        self.ownership: dict[Resource, Ownership] = {
            r: Ownership(on_contested=self._contested) for r in self.resources}
        self._claims: dict[Owner, tuple[str, ...]] = {}  # owner -> keys it claims
        self._published: dict[str, bytes] = {}  # key -> digest of what etcd holds (or will)
        self._problems: dict[Owner, list[str]] = {}  # what was last logged per owner
        self.started = time.monotonic()
        self.synced_after: dict[Resource, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed: BaseException | None = None

    # ----------------------------------------------------------------- sink

    def upsert(self, kind: Kind, obj: Obj) -> None:
        self._recompute(self.exports.upsert(kind, obj))

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        self._recompute(self.exports.delete(kind, namespace, name))

    def replace(self, kind: Kind, objects: Sequence[Obj]) -> None:
        self._recompute(self.exports.replace(kind, objects))

    def synced(self, kind: Kind) -> None:
        self.kinds_synced.add(kind)
        self.start()

    def start(self) -> None:
        """Bring live every resource whose input kinds have all been listed."""
        for resource in self.resources:
            if resource not in self._claimed and all(
                    k in self.kinds_synced for k in self.exports.inputs[resource]):
                self._claimed.add(resource)
                self._spawn(self._go_live(resource))

    @property
    def ready(self) -> bool:
        return all(event.is_set() for event in self.resource_synced.values())

    # ------------------------------------------------------------ owners

    def _desired(self, owner: Owner) -> dict[str, bytes] | None:
        """``owner``'s keys now, its problems logged; None if conversion failed."""
        try:
            desired, problems = self.exports.desired(owner)
        except Exception:  # a malformed object must not stop the others
            log.exception("cannot convert %s; keeping what was published",
                          self.exports.describe(owner))
            return None
        fitting = {}
        for key, value in desired.items():
            if self.writer.fits(key.encode(), value):
                fitting[key] = value
            else:
                problems.append(f"{key} is {len(value)} bytes, more than etcd accepts in one "
                                "request")
        self._report(owner, problems)
        return fitting

    def _report(self, owner: Owner, problems: list[str]) -> None:
        if not problems:
            self._problems.pop(owner, None)
        elif self._problems.get(owner) != problems:
            self._problems[owner] = problems
            log.warning("%s: not (fully) exported: %s", self.exports.describe(owner),
                        "; ".join(problems))

    def _recompute(self, owners: Iterable[Owner]) -> None:
        for owner in owners:
            if owner[0] not in self.live:
                continue  # computed as a whole when the resource goes live
            desired = self._desired(owner)
            if desired is not None:
                self._apply(owner, desired)

    def _apply(self, owner: Owner, desired: Mapping[str, bytes]) -> None:
        """Claim ``desired`` for ``owner`` and release the keys it no longer lists."""
        ownership = self.ownership[owner[0]]
        for key, value in desired.items():
            self._act(key, ownership.claim(key, owner, value))
        for key in self._claims.get(owner, ()):
            if key not in desired:
                self._act(key, ownership.release(key, owner))
        if desired:
            self._claims[owner] = tuple(desired)
        else:
            self._claims.pop(owner, None)

    def _act(self, key: str, action: Action) -> None:
        if action is KEEP:
            return
        if action is DELETE:
            if self._published.pop(key, None) is not None:
                self.writer.delete(key.encode())
            return
        assert isinstance(action, bytes)
        digest = _digest(action)
        if self._published.get(key) != digest:
            self._published[key] = digest
            self.writer.put(key.encode(), action)

    def _contested(self, key: str, owners: list[Hashable]) -> None:
        names = [describe(o, self.exports.owner_kind[o[0]])  # type: ignore[index]
                 for o in owners]
        log.info("%s is claimed by %d owners: exporting %s's value; next in line: %s",
                 key, len(names), names[0], ", ".join(names[1:]))

    # ------------------------------------------------------------ going live

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed = task.exception()
            log.error("publishing failed: %s", task.exception())

    async def _go_live(self, resource: Resource) -> None:
        prefix = resource.state_prefix(self.cluster)
        known: dict[str, bytes] = {}
        async for page, _ in self.local.range_pages(prefix.encode()):
            for kv in page:
                known[kv.key.decode(errors="replace")] = _digest(kv.value)
        # From here to the end of the pass nothing awaits: no event can slip in between.
        self._published.update(known)
        claims: dict[str, list[tuple[tuple[str, str, str], Owner, bytes]]] = {}
        for owner in self.exports.owners(resource):
            desired = self._desired(owner)
            if not desired:
                continue
            self._claims[owner] = tuple(desired)
            order = self.exports.claim_order(owner)
            for key, value in desired.items():
                claims.setdefault(key, []).append((order, owner, value))
        ownership = self.ownership[resource]
        for key, claimants in claims.items():
            claimants.sort(key=lambda c: c[0])
            held = known.get(key)
            value = ownership.rebuild(key, [(o, v) for _, o, v in claimants],
                                      exported=lambda v, held=held: _digest(v) == held)
            self._act(key, value)
        stale = known.keys() - claims.keys()
        for key in stale:
            self._act(key, DELETE)
        self.live.add(resource)
        log.info("%s: publishing %d keys (%d stale removed)", resource.name, len(claims),
                 len(stale))
        await self.writer.flush()
        canary = resource.state_canary(self.cluster).encode()
        if await self.local.get(canary) is None:
            self.writer.put(canary, rfc3339_now())
            await self.writer.flush()
        self.synced_after[resource] = time.monotonic() - self.started
        self.resource_synced[resource].set()
        log.info("%s synced (%.2fs after start)", resource.name, self.synced_after[resource])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
