"""Kubernetes objects in, etcd keys out: the apiserver's reconciling publisher.

:class:`Publisher` is the :class:`~apiserver.sources.ObjectSink` every source
feeds.  It keeps the current objects of each kind and, for every *owner* (one
identity, endpoint, node, service or service export), the etcd keys that owner
publishes, computed by :mod:`apiserver.converters`.  A change of an object
recomputes only the owners it affects (an EndpointSlice its Service, a
Namespace everything in it) and writes only the keys whose value changed.

Each etcd resource goes live once every kind it is built from has been listed:

1. read what our etcd already holds under the resource's state prefix;
2. without yielding to the event loop, compute every owner's keys from the
   current objects, queue writes for keys that differ and deletes for keys
   nobody publishes any more (left over from before a restart) — so a restart
   with unchanged objects writes nothing;
3. once those writes are committed, write the sync canary
   ``cilium/synced/<cluster>/cilium/state/<resource>/v1``.

From then on changes flow through incrementally.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from clustermesh.etcd.client import EtcdClient
from clustermesh.keys import ENDPOINTS, IDENTITIES, NODES, SERVICE_EXPORTS, SERVICES, Resource
from clustermesh.syncwriter import SyncWriter

from . import converters
from .sources import (
    CILIUM_ENDPOINT,
    CILIUM_IDENTITY,
    CILIUM_NODE,
    ENDPOINT_SLICE,
    NAMESPACE,
    SERVICE,
    SERVICE_EXPORT,
    Kind,
    Obj,
    object_key,
)

log = logging.getLogger(__name__)

# The kinds each published resource is computed from.
# Namespaces annotated clustermesh.cilium.io/global: "false" keep their objects local.
INPUTS: dict[Resource, tuple[Kind, ...]] = {
    IDENTITIES: (CILIUM_IDENTITY, NAMESPACE),
    ENDPOINTS: (CILIUM_ENDPOINT, NAMESPACE),
    NODES: (CILIUM_NODE,),
    SERVICES: (SERVICE, ENDPOINT_SLICE, NAMESPACE),
    SERVICE_EXPORTS: (SERVICE_EXPORT, SERVICE, NAMESPACE),
}
# The kind whose objects are the owners of a resource's keys.
OWNER_KIND: dict[Resource, Kind] = {
    IDENTITIES: CILIUM_IDENTITY, ENDPOINTS: CILIUM_ENDPOINT, NODES: CILIUM_NODE,
    SERVICES: SERVICE, SERVICE_EXPORTS: SERVICE_EXPORT,
}
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

Owner = tuple[Resource, str, str]  # (resource, namespace, name)


def _service_of(endpoint_slice: Obj) -> str | None:
    """The Service an EndpointSlice belongs to (its kubernetes.io/service-name label)."""
    labels = (endpoint_slice.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL)
    return service if isinstance(service, str) and service else None


def _digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()


def rfc3339_now() -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()


class Publisher:
    def __init__(self, *, cluster: str, cluster_id: int, local: EtcdClient, writer: SyncWriter,
                 mcs_api: bool = False) -> None:
        self.cluster = cluster
        self.cluster_id = cluster_id
        self.local = local
        self.writer = writer
        self.resources: tuple[Resource, ...] = tuple(INPUTS)
        # Without MCS-API, service exports publish nothing but still write their canary
        # (Cilium "pretends" they are synced, so readers need no special case).
        self.inputs = {r: kinds if r is not SERVICE_EXPORTS or mcs_api else ()
                       for r, kinds in INPUTS.items()}
        self.kinds: tuple[Kind, ...] = tuple(dict.fromkeys(
            k for r in self.resources for k in self.inputs[r]))
        self.objects: dict[Kind, dict[tuple[str, str], Obj]] = {k: {} for k in self.kinds}
        self.kinds_synced: set[Kind] = set()
        self.live: set[Resource] = set()
        self.resource_synced: dict[Resource, asyncio.Event] = {
            r: asyncio.Event() for r in self.resources}
        self.owned: dict[Owner, dict[str, bytes]] = {}  # owner -> {key: digest}
        self.key_owner: dict[str, Owner] = {}
        self.started = time.monotonic()
        self.synced_after: dict[Resource, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed: BaseException | None = None
        # (namespace, service) -> {slice name: EndpointSlice}: a service's recompute
        # must not scan every slice of the cluster.
        self._slices: dict[tuple[str, str], dict[str, Obj]] = {}

    # ----------------------------------------------------------------- sink

    def upsert(self, kind: Kind, obj: Obj) -> None:
        if kind not in self.objects:
            return
        ns, name = object_key(obj)
        old = self.objects[kind].get((ns, name))
        self.objects[kind][(ns, name)] = obj
        self._index(kind, ns, name, old, obj)
        self._recompute(self._affected(kind, ns, name, old, obj))

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        if kind not in self.objects:
            return
        old = self.objects[kind].pop((namespace, name), None)
        if old is not None:
            self._index(kind, namespace, name, old, None)
            self._recompute(self._affected(kind, namespace, name, old, None))

    def replace(self, kind: Kind, objects: Sequence[Obj]) -> None:
        if kind not in self.objects:
            return
        new = {object_key(o): o for o in objects}
        old = self.objects[kind]
        self.objects[kind] = new
        owners: set[Owner] = set()
        for key in old.keys() | new.keys():
            if old.get(key) != new.get(key):
                self._index(kind, key[0], key[1], old.get(key), new.get(key))
                owners |= self._affected(kind, key[0], key[1], old.get(key), new.get(key))
        self._recompute(owners)

    def _index(self, kind: Kind, ns: str, name: str, old: Obj | None,
               new: Obj | None) -> None:
        if kind is not ENDPOINT_SLICE:
            return
        if old is not None and (service := _service_of(old)):
            self._slices.get((ns, service), {}).pop(name, None)
        if new is not None and (service := _service_of(new)):
            self._slices.setdefault((ns, service), {})[name] = new

    def synced(self, kind: Kind) -> None:
        self.kinds_synced.add(kind)
        self.start()

    def start(self) -> None:
        """Bring live every resource whose input kinds have all been listed."""
        for resource in self.resources:
            if resource not in self.live and all(
                    k in self.kinds_synced for k in self.inputs[resource]):
                self.live.add(resource)  # claimed; the task below makes it so
                self._spawn(self._go_live(resource))

    @property
    def ready(self) -> bool:
        return all(event.is_set() for event in self.resource_synced.values())

    # ------------------------------------------------------------ owners

    def _affected(self, kind: Kind, ns: str, name: str, old: Obj | None,
                  new: Obj | None) -> set[Owner]:
        owners: set[Owner] = set()
        if kind is CILIUM_IDENTITY:
            owners.add((IDENTITIES, "", name))
        elif kind is CILIUM_ENDPOINT:
            owners.add((ENDPOINTS, ns, name))
        elif kind is CILIUM_NODE:
            owners.add((NODES, "", name))
        elif kind is SERVICE:
            owners |= {(SERVICES, ns, name), (SERVICE_EXPORTS, ns, name)}
        elif kind is SERVICE_EXPORT:
            owners.add((SERVICE_EXPORTS, ns, name))
        elif kind is ENDPOINT_SLICE:
            for obj in (old, new):
                if obj is not None and (service := _service_of(obj)):
                    owners.add((SERVICES, ns, service))
        elif kind is NAMESPACE:
            for resource, owner_kind in ((ENDPOINTS, CILIUM_ENDPOINT), (SERVICES, SERVICE),
                                         (SERVICE_EXPORTS, SERVICE_EXPORT)):
                for obj_ns, obj_name in self.objects.get(owner_kind, {}):
                    if obj_ns == name:
                        owners.add((resource, obj_ns, obj_name))
            for (_, id_name), identity in self.objects.get(CILIUM_IDENTITY, {}).items():
                if converters.identity_namespace(identity) == name:
                    owners.add((IDENTITIES, "", id_name))
        return {o for o in owners if OWNER_KIND[o[0]] in self.objects}

    def _desired(self, owner: Owner) -> dict[str, bytes]:
        resource, ns, name = owner
        get = self._get
        if resource is IDENTITIES:
            obj = get(CILIUM_IDENTITY, "", name)
            id_ns = converters.identity_namespace(obj) if obj else None
            if id_ns is None or not converters.namespace_is_global(get(NAMESPACE, "", id_ns)):
                return {}
            return converters.identity_entries(obj)
        if resource is ENDPOINTS:
            obj = get(CILIUM_ENDPOINT, ns, name)
            if obj is None or not converters.namespace_is_global(get(NAMESPACE, "", ns)):
                return {}
            return converters.endpoint_entries(obj)
        if resource is NODES:
            obj = get(CILIUM_NODE, "", name)
            return converters.node_entries(obj, cluster=self.cluster,
                                           cluster_id=self.cluster_id) if obj else {}
        if resource is SERVICES:
            obj = get(SERVICE, ns, name)
            if obj is None:
                return {}
            slices = list(self._slices.get((ns, name), {}).values())
            return converters.service_entries(obj, slices, cluster=self.cluster,
                                              cluster_id=self.cluster_id,
                                              namespace=get(NAMESPACE, "", ns))
        obj = get(SERVICE_EXPORT, ns, name)
        return converters.service_export_entries(
            obj, get(SERVICE, ns, name), cluster=self.cluster,
            namespace=get(NAMESPACE, "", ns)) if obj else {}

    def _get(self, kind: Kind, ns: str, name: str) -> Obj | None:
        return self.objects.get(kind, {}).get((ns, name))

    def _all_owners(self, resource: Resource) -> Iterable[Owner]:
        for ns, name in self.objects.get(OWNER_KIND[resource], {}):
            yield (resource, ns, name)

    def _recompute(self, owners: Iterable[Owner]) -> None:
        for owner in owners:
            if owner[0] not in self.live:
                continue  # computed as a whole when the resource goes live
            try:
                desired = self._desired(owner)
            except Exception:  # a malformed object must not stop the others
                log.exception("cannot convert %s %s/%s; keeping what was published",
                              owner[0].name, owner[1], owner[2])
                continue
            self._apply(owner, desired, known=None)

    def _apply(self, owner: Owner, desired: Mapping[str, bytes],
               known: dict[str, bytes] | None) -> set[str]:
        """Queue the writes that make ``owner``'s keys equal ``desired``.

        ``known`` is what etcd holds (digests) when going live; otherwise our
        own record of what we published is the reference.
        """
        previous = self.owned.get(owner, {})
        current: dict[str, bytes] = {}
        for key, value in desired.items():
            if not self.writer.fits(key.encode(), value):
                log.error("%s %s/%s: %s is %d bytes, more than etcd accepts in one request; "
                          "not published", owner[0].name, owner[1], owner[2], key, len(value))
                continue
            digest = _digest(value)
            current[key] = digest
            held = known.get(key) if known is not None else (
                previous.get(key) if self.key_owner.get(key) == owner else None)
            if held != digest:
                self.writer.put(key.encode(), value)
            self.key_owner[key] = owner
        for key in previous.keys() - current.keys():
            if self.key_owner.get(key) == owner:
                del self.key_owner[key]
                self.writer.delete(key.encode())
        if current:
            self.owned[owner] = current
        else:
            self.owned.pop(owner, None)
        return set(current)

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
        # From here to the end of the loop nothing awaits: no event can slip in between.
        wanted: set[str] = set()
        for owner in list(self._all_owners(resource)):
            try:
                desired = self._desired(owner)
            except Exception:
                log.exception("cannot convert %s %s/%s", resource.name, owner[1], owner[2])
                continue
            wanted |= self._apply(owner, desired, known=known)
        stale = known.keys() - wanted
        for key in stale:
            self.writer.delete(key.encode())
        log.info("%s: publishing %d keys (%d stale removed)", resource.name, len(wanted),
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
