"""Kubernetes objects in, etcd keys out: the apiserver's reconciling publisher.

:class:`Publisher` is the :class:`~apiserver.sources.ObjectSink` every source
feeds.  :class:`~apiserver.exports.Exports` holds the objects and says which
*owners* (one identity, endpoint, endpoint slice, node, service, service export
or EndpointSlice) a change affects and what keys each owner publishes.  Owners
may claim the same key (two endpoints with one IP): an
:class:`~apiserver.ownership.Ownership` per resource decides whose value is
exported.  Every resource's keys go through its own
:class:`~clustermesh.syncstore.SyncStore` (prefix ``cilium/state/<resource>/v1/<cluster>/``),
which deduplicates writes against what etcd holds, so only keys whose value changes are
written, and writes the resource's sync canary.  Keys are ``str`` in here (converters
and ownership work on text) and become bytes only at the store boundary.

Each etcd resource goes live once every kind it is built from has been listed:

1. the store reads what our etcd already holds under the resource's state prefix
   (:meth:`~clustermesh.syncstore.SyncStore.load`);
2. without yielding to the event loop, compute every owner's keys from the
   current objects and seed the ownership of each key from what is exported
   (the claimant already exported stays primary, so a restart flips nothing),
   queue writes for keys that differ and deletes for keys nobody publishes any
   more (left over from before a restart) — a restart with unchanged objects
   writes nothing;
3. once those writes are committed, the store writes the sync canary
   ``cilium/synced/<cluster>/cilium/state/<resource>/v1`` (if it is missing: one from
   before a restart keeps its timestamp).

From then on changes flow through incrementally, in arrival order.  An object
that cannot be (fully) exported is logged once per distinct problem, naming
the object; what it can export is exported, and nothing of other objects changes.

Time (how long the initial sync took, the canaries' timestamps) is read through the
injected :class:`~clustermesh.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.etcd.client import EtcdClient
from clustermesh.keys import Resource
from clustermesh.syncstore import SyncStore
from clustermesh.syncwriter import SyncWriter

from .exports import ExportOptions, Exports, Owner, describe
from .ownership import DELETE, KEEP, Action, Ownership
from .sources import Kind, Obj, ReportedOnce

log = logging.getLogger(__name__)


class Publisher:
    """The :class:`~apiserver.sources.ObjectSink` that publishes one cluster's objects
    (see the module docstring): one :class:`SyncStore` and one :class:`Ownership` per
    published resource, all writing through the one ``writer``."""

    def __init__(self, options: ExportOptions, *, local: EtcdClient, writer: SyncWriter,
                 clock: Clock = REAL_CLOCK) -> None:
        self.options = options
        self.cluster = options.cluster
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
        self.stores: dict[Resource, SyncStore] = {
            r: SyncStore(writer=writer, local=local, prefix=r.state_prefix(self.cluster).encode(),
                         canary=r.state_canary(self.cluster).encode(), clock=clock)
            for r in self.resources}
        self._fits = writer.fits  # whether a put can ever be committed (request limit)
        self._claims: dict[Owner, tuple[str, ...]] = {}  # owner -> keys it claims
        self._problems: ReportedOnce[Owner] = ReportedOnce(log.warning)
        self._clock = clock
        self.started = clock.monotonic()
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
        fits = self._fits
        fitting = {}
        for key, value in desired.items():
            if fits(key.encode(), value):
                fitting[key] = value
            else:
                problems.append(f"{key} is {len(value)} bytes, more than etcd accepts in one "
                                "request")
        if problems:
            self._problems.report(owner, tuple(problems), "%s: not (fully) exported: %s",
                                  self.exports.describe(owner), "; ".join(problems))
        else:
            self._problems.resolved(owner)
        return fitting

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
        store = self.stores[owner[0]]
        for key, value in desired.items():
            _act(store, key, ownership.claim(key, owner, value))
        for key in self._claims.get(owner, ()):
            if key not in desired:
                _act(store, key, ownership.release(key, owner))
        if desired:
            self._claims[owner] = tuple(desired)
        else:
            self._claims.pop(owner, None)

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
        store = self.stores[resource]
        await store.load()
        # From here to the end of the pass nothing awaits: no event can slip in between.
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
        claimed: set[bytes] = set()
        for key, claimants in claims.items():
            claimants.sort(key=lambda c: c[0])
            encoded = key.encode()
            claimed.add(encoded)
            value = ownership.rebuild(key, [(o, v) for _, o, v in claimants],
                                      exported=lambda v, k=encoded: store.holds(k, v))
            store.upsert(encoded, value)
        stale = [key for key in store.keys() if key not in claimed]  # noqa: SIM118 (no __iter__)
        for key in stale:
            store.delete(key)
        self.live.add(resource)
        log.info("%s: publishing %d keys (%d stale removed)", resource.name, len(claims),
                 len(stale))
        await store.mark_synced()
        self.synced_after[resource] = self._clock.monotonic() - self.started
        self.resource_synced[resource].set()
        log.info("%s synced (%.2fs after start)", resource.name, self.synced_after[resource])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _act(store: SyncStore, key: str, action: Action) -> None:
    """Carry out what the ownership decided for ``key`` (the store skips no-op writes)."""
    if action is KEEP:
        return
    if action is DELETE:
        store.delete(key.encode())
        return
    assert isinstance(action, bytes)
    store.upsert(key.encode(), action)
