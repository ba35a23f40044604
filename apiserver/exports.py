"""What this cluster exports, computed from its Kubernetes objects (pure, no I/O).

The rules are declared once here and nowhere else:

* :class:`ExportOptions` says which etcd resources are published and which
  Kubernetes kinds each is built from (``--enable-cilium-endpoint-slice``
  picks CiliumEndpointSlices instead of CiliumEndpoints for the ipcache;
  ``--clustermesh-service-v2`` decides whether legacy ``services/v1`` values
  are published beside the ``endpointslices/v1`` ones; without MCS-API the
  service exports publish nothing but their canary).
* :class:`Exports` holds the current objects of those kinds.  Each published
  key has an *owner*, ``(resource, namespace, name)`` of the object it comes
  from (a CiliumIdentity, CiliumEndpoint, CiliumEndpointSlice, CiliumNode,
  Service, ServiceExport or EndpointSlice).  A change of an object returns the
  owners it affects — an EndpointSlice its Service, a Service its export and
  its slices, a Namespace every owner filed under it — and
  :meth:`Exports.desired` recomputes one owner's keys.

Global namespaces (``clustermesh.cilium.io/global``, default from
``--clustermesh-default-global-namespace``) filter every owner except nodes:
an identity by its pod-namespace label, a CiliumEndpointSlice by its
``namespace`` field (upstream indexes CES by their empty metadata namespace and
so misses namespace changes until the slice's next event; we re-evaluate them at
once), everything else by ``metadata.namespace``.  An owner whose Namespace
object does not exist (yet) exports nothing and says so; it is recomputed when
the Namespace appears, without a new version of the object.

:meth:`Exports.desired` returns the owner's keys and the problems found on the
way (an unparsable IP, a namespace that does not exist, an EndpointSlice that
cannot be exported): the publisher logs them and exports what is valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clustermesh.clusterconfig import (
    EXPORT_ENDPOINTSLICES_ONLY,
    EXPORT_SERVICES_AND_ENDPOINTSLICES,
)
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IDENTITIES,
    NODES,
    SERVICE_EXPORTS,
    SERVICES,
    Resource,
)

from . import converters
from .endpointslices import InvalidEndpointSlice, endpointslice_entries
from .sources import (
    CILIUM_ENDPOINT,
    CILIUM_ENDPOINT_SLICE,
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

#: ``--clustermesh-service-v2`` values (Cilium main).
SERVICE_V2_MODES = ("prefer-legacy", "prefer-endpointslice", "only-endpointslice")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

Owner = tuple[Resource, str, str]  # (resource, namespace, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportOptions:
    cluster: str
    cluster_id: int
    mcs_api: bool = False
    cilium_endpoint_slices: bool = False
    default_global_namespace: bool = converters.DEFAULT_GLOBAL_NAMESPACE
    service_v2: str = "prefer-legacy"

    def __post_init__(self) -> None:
        if self.service_v2 not in SERVICE_V2_MODES:
            raise ValueError(f"--clustermesh-service-v2 {self.service_v2!r}: must be one of "
                             f"{', '.join(SERVICE_V2_MODES)}")

    @property
    def legacy_services(self) -> bool:
        """Whether ``services/v1`` values (and their canary) are published."""
        return self.service_v2 != "only-endpointslice"

    @property
    def endpoint_slices_export_mode(self) -> str:
        return (EXPORT_SERVICES_AND_ENDPOINTSLICES if self.legacy_services
                else EXPORT_ENDPOINTSLICES_ONLY)

    def owner_kinds(self) -> dict[Resource, Kind]:
        """The published resources, each with the kind whose objects own its keys."""
        owners = {
            IDENTITIES: CILIUM_IDENTITY,
            ENDPOINTS: CILIUM_ENDPOINT_SLICE if self.cilium_endpoint_slices else CILIUM_ENDPOINT,
            NODES: CILIUM_NODE,
            SERVICES: SERVICE,
            SERVICE_EXPORTS: SERVICE_EXPORT,
            ENDPOINT_SLICES: ENDPOINT_SLICE,
        }
        if not self.legacy_services:
            del owners[SERVICES]
        return owners

    def inputs(self) -> dict[Resource, tuple[Kind, ...]]:
        """The kinds each published resource is computed from (all listed: it goes live)."""
        inputs: dict[Resource, tuple[Kind, ...]] = {}
        for resource, owner in self.owner_kinds().items():
            kinds = [owner]
            if resource is SERVICES:
                kinds.append(ENDPOINT_SLICE)
            elif resource in (SERVICE_EXPORTS, ENDPOINT_SLICES):
                kinds.append(SERVICE)
            if owner is not CILIUM_NODE:
                kinds.append(NAMESPACE)
            # Without MCS-API, service exports publish nothing but still write their
            # canary (Cilium "pretends" they are synced, so readers need no special case).
            inputs[resource] = tuple(kinds) if resource is not SERVICE_EXPORTS or self.mcs_api \
                else ()
        return inputs


def _service_of(endpoint_slice: Obj) -> str | None:
    """The Service an EndpointSlice belongs to (its kubernetes.io/service-name label)."""
    labels = (endpoint_slice.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL)
    return service if isinstance(service, str) and service else None


def _namespace_of(kind: Kind, obj: Obj) -> str:
    """The namespace whose global status decides whether ``obj`` is exported."""
    if kind is CILIUM_IDENTITY:
        return converters.identity_namespace(obj) or ""
    if kind is CILIUM_ENDPOINT_SLICE:
        return converters.endpoint_slice_namespace(obj)
    return object_key(obj)[0]


def describe(owner: Owner, kind: Kind) -> str:
    """``CiliumEndpoint ns/name``: how logs name an owner."""
    _, ns, name = owner
    return f"{kind.name} {ns}/{name}" if ns else f"{kind.name} {name}"


class Exports:
    """The current objects and the rules that turn them into keys (see module doc)."""

    def __init__(self, options: ExportOptions) -> None:
        self.options = options
        self.inputs = options.inputs()
        self.owner_kind = {r: k for r, k in options.owner_kinds().items() if self.inputs[r]}
        self.kinds: tuple[Kind, ...] = tuple(dict.fromkeys(
            k for kinds in self.inputs.values() for k in kinds))
        self.objects: dict[Kind, dict[tuple[str, str], Obj]] = {k: {} for k in self.kinds}
        # (namespace, service) -> {slice name: EndpointSlice}: a Service's recompute
        # must not scan every slice of the cluster.
        self._slices: dict[tuple[str, str], dict[str, Obj]] = {}
        # Owners filed under each namespace, for namespace events (nodes are never).
        self._by_namespace: dict[str, set[Owner]] = {}
        self._owner_namespace: dict[Owner, str] = {}

    # ----------------------------------------------------------------- changes

    def upsert(self, kind: Kind, obj: Obj) -> set[Owner]:
        """Record ``obj``; the owners whose keys may change."""
        if kind not in self.objects:
            return set()
        ns, name = object_key(obj)
        old = self.objects[kind].get((ns, name))
        self.objects[kind][(ns, name)] = obj
        return self._changed(kind, ns, name, old, obj)

    def delete(self, kind: Kind, namespace: str, name: str) -> set[Owner]:
        if kind not in self.objects:
            return set()
        old = self.objects[kind].pop((namespace, name), None)
        return set() if old is None else self._changed(kind, namespace, name, old, None)

    def replace(self, kind: Kind, objects: Sequence[Obj]) -> set[Owner]:
        """The complete current set of ``kind``: diffed against what is held."""
        if kind not in self.objects:
            return set()
        new = {object_key(o): o for o in objects}
        old = self.objects[kind]
        self.objects[kind] = new
        owners: set[Owner] = set()
        for key in old.keys() | new.keys():
            if old.get(key) != new.get(key):
                owners |= self._changed(kind, key[0], key[1], old.get(key), new.get(key))
        return owners

    def _changed(self, kind: Kind, ns: str, name: str, old: Obj | None,
                 new: Obj | None) -> set[Owner]:
        owners: set[Owner] = set()
        for resource, owner_kind in self.owner_kind.items():
            if owner_kind is kind:
                owner = (resource, ns, name)
                owners.add(owner)
                self._file(owner, kind, new)
        if kind is ENDPOINT_SLICE:
            if old is not None and (service := _service_of(old)):
                self._slices.get((ns, service), {}).pop(name, None)
                owners.add((SERVICES, ns, service))
            if new is not None and (service := _service_of(new)):
                self._slices.setdefault((ns, service), {})[name] = new
                owners.add((SERVICES, ns, service))
        elif kind is SERVICE:
            owners.add((SERVICE_EXPORTS, ns, name))
            owners |= {(ENDPOINT_SLICES, ns, s) for s in self._slices.get((ns, name), {})}
        elif kind is NAMESPACE:
            owners |= self._by_namespace.get(name, set())
        return {o for o in owners if o[0] in self.owner_kind}

    def _file(self, owner: Owner, kind: Kind, obj: Obj | None) -> None:
        """Keep the namespace index of ``owner`` current (``obj`` None: it is gone)."""
        if kind is CILIUM_NODE:
            return
        previous = self._owner_namespace.pop(owner, None)
        if previous is not None:
            filed = self._by_namespace.get(previous)
            if filed is not None:
                filed.discard(owner)
                if not filed:
                    del self._by_namespace[previous]
        if obj is not None:
            ns = _namespace_of(kind, obj)
            self._owner_namespace[owner] = ns
            self._by_namespace.setdefault(ns, set()).add(owner)

    # ----------------------------------------------------------------- queries

    def owners(self, resource: Resource) -> Iterable[Owner]:
        kind = self.owner_kind.get(resource)
        if kind is None:
            return ()
        return [(resource, ns, name) for ns, name in self.objects[kind]]

    def get(self, kind: Kind, ns: str, name: str) -> Obj | None:
        return self.objects.get(kind, {}).get((ns, name))

    def describe(self, owner: Owner) -> str:
        return describe(owner, self.owner_kind[owner[0]])

    def claim_order(self, owner: Owner) -> tuple[str, str, str]:
        """Who claimed first, as far as Kubernetes can tell: (creationTimestamp, ns, name)."""
        obj = self.get(self.owner_kind[owner[0]], owner[1], owner[2]) or {}
        stamp = (obj.get("metadata") or {}).get("creationTimestamp")
        return (stamp if isinstance(stamp, str) else "", owner[1], owner[2])

    def desired(self, owner: Owner) -> tuple[dict[str, bytes], list[str]]:
        """The keys ``owner`` publishes now, and the problems that kept anything back."""
        resource, ns, name = owner
        kind = self.owner_kind[resource]
        obj = self.get(kind, ns, name)
        if obj is None:
            return {}, []
        problems: list[str] = []
        if kind is not CILIUM_NODE and not self._namespace_global(owner, problems):
            return {}, problems
        o = self.options
        if resource is IDENTITIES:
            return converters.identity_entries(obj), problems
        if resource is ENDPOINTS:
            convert = (converters.cilium_endpoint_slice_entries if kind is CILIUM_ENDPOINT_SLICE
                       else converters.endpoint_entries)
            return convert(obj, problems=problems), problems
        if resource is NODES:
            return converters.node_entries(obj, cluster=o.cluster,
                                           cluster_id=o.cluster_id), problems
        if resource is SERVICES:
            slices = list(self._slices.get((ns, name), {}).values())
            return converters.service_entries(obj, slices, cluster=o.cluster,
                                              cluster_id=o.cluster_id), problems
        if resource is SERVICE_EXPORTS:
            return converters.service_export_entries(obj, self.get(SERVICE, ns, name),
                                                     cluster=o.cluster), problems
        try:
            return self._endpointslice(obj, ns), problems
        except InvalidEndpointSlice as exc:
            problems.append(str(exc))
            return {}, problems

    def _namespace_global(self, owner: Owner, problems: list[str]) -> bool:
        ns = self._owner_namespace.get(owner, "")
        if not ns:
            if owner[0] is IDENTITIES:
                problems.append("no k8s:io.kubernetes.pod.namespace security label")
            elif owner[0] is ENDPOINTS:
                problems.append("no namespace")
            return False
        namespace = self.get(NAMESPACE, "", ns)
        if namespace is None:
            problems.append(f"namespace {ns} does not exist (yet)")
            return False
        return converters.namespace_is_global(
            namespace, default=self.options.default_global_namespace)

    def _endpointslice(self, obj: Obj, ns: str) -> dict[str, bytes]:
        """An EndpointSlice of a shared global Service -> its ``endpointslices/v1`` key."""
        service = _service_of(obj)
        if service is None:
            raise InvalidEndpointSlice("missing-service-name", obj="/".join(object_key(obj)))
        svc = self.get(SERVICE, ns, service)
        if svc is None or not converters.is_shared_service(svc):
            return {}
        return endpointslice_entries(obj, cluster=self.options.cluster,
                                     cluster_id=self.options.cluster_id)
