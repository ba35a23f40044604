"""One Kubernetes EndpointSlice -> its "service v2" kvstore entry (facts §4.4).

Pure, no I/O.  :func:`endpointslice_entries` takes a ``discovery.k8s.io/v1``
EndpointSlice as the plain JSON dict the Kubernetes API returns and returns
``{"cilium/state/endpointslices/v1/<cluster>/<ns>/<slice name>": value}``, the value
being the zstd-compressed ``ClusterEndpointSlice`` of :mod:`clustermesh.endpointslice`.
The key is the slice's own name, not the Service's.

Mapping (Cilium ``clustermesh-apiserver/clustermesh/endpointslice_export_sync.go``):
cluster name and ID are the local cluster's; labels and annotations are copied
verbatim; ``addressType``, endpoints and ports are copied as the slim discovery types
hold them.  A field absent from the object stays unset (a nil Go pointer), so a missing
condition is "unknown", not false, and a port without ``port`` has none.  Dropped,
because the slim type has no field for them: ``targetRef``, ``hints.forNodes``,
``ports[].appProtocol``.

Unlike Cilium we refuse some slices outright (:class:`InvalidEndpointSlice`): FQDN
ones and ones with an address that is not of the slice's family, which every
consumer's decoder rejects anyway, and ones without the ``kubernetes.io/service-name``
label, which Cilium would delete because their Service lookup fails.  Malformed
field types and strings that are not valid Unicode, which the Kubernetes API never
returns but a hand-written manifest can hold, are refused too.

Whether the Service is global and shared and its namespace global is not decided
here: the publisher does that and deletes the key when the slice must not be exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clustermesh.endpointslice import (
    ADDRESS_TYPES,
    Endpoint,
    EndpointConditions,
    EndpointHints,
    EndpointPort,
    encode,
    is_valid_address,
)
from clustermesh.keys import ENDPOINT_SLICES

__all__ = ["SERVICE_NAME_LABEL", "InvalidEndpointSlice", "endpointslice_entries"]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_INT32 = range(-(1 << 31), 1 << 31)


class InvalidEndpointSlice(ValueError):
    """An EndpointSlice we do not export; :attr:`reason` is short and stable."""

    def __init__(self, reason: str, *, obj: str) -> None:
        super().__init__(f"EndpointSlice {obj}: {reason}")
        self.reason = reason
        self.obj = obj


class _Reader:
    """Typed access to one slice's fields, raising InvalidEndpointSlice on bad input."""

    def __init__(self, obj: str) -> None:
        self.obj = obj

    def fail(self, reason: str) -> InvalidEndpointSlice:
        return InvalidEndpointSlice(reason, obj=self.obj)

    def str_map(self, value: Any, reason: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise self.fail(reason)
        return dict(value)

    def optional(self, value: Any, kind: type, reason: str) -> Any:
        """``value`` if it is of ``kind``, None if absent; bool is not an int here."""
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(reason)
        return value

    def items(self, value: Any, reason: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise self.fail(reason)
        return list(value)

    def mapping(self, value: Any, reason: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(reason)
        return value

    def endpoint(self, raw: Any, address_type: str) -> Endpoint:
        raw = self.mapping(raw, "invalid-endpoint")
        addresses = self.items(raw.get("addresses"), "invalid-endpoint")
        if not all(is_valid_address(a, address_type) for a in addresses):
            raise self.fail("invalid-address")
        conditions_in = self.optional(raw.get("conditions"), Mapping, "invalid-endpoint") or {}
        conditions: EndpointConditions = {}
        for field in ("ready", "serving", "terminating"):
            value = self.optional(conditions_in.get(field), bool, "invalid-endpoint")
            if value is not None:
                conditions[field] = value
        endpoint: Endpoint = {"addresses": addresses, "conditions": conditions}
        for field in ("hostname", "nodeName", "zone"):
            value = self.optional(raw.get(field), str, "invalid-endpoint")
            if value is not None:
                endpoint[field] = value
        topology = self.str_map(raw.get("deprecatedTopology"), "invalid-endpoint")
        if topology:
            endpoint["deprecatedTopology"] = topology
        hints_in = self.optional(raw.get("hints"), Mapping, "invalid-endpoint")
        if hints_in is not None:
            zones = [self.mapping(z, "invalid-endpoint")
                     for z in self.items(hints_in.get("forZones"), "invalid-endpoint")]
            hints: EndpointHints = {"forZones": [
                {"name": self.optional(z.get("name"), str, "invalid-endpoint") or ""}
                for z in zones]}
            endpoint["hints"] = hints
        return endpoint

    def port(self, raw: Any) -> EndpointPort:
        raw = self.mapping(raw, "invalid-port")
        port: EndpointPort = {}
        for field, kind in (("name", str), ("protocol", str), ("port", int)):
            value = self.optional(raw.get(field), kind, "invalid-port")
            if value is not None:
                port[field] = value
        if port.get("port", 0) not in _INT32:
            raise self.fail("invalid-port")
        return port


def endpointslice_entries(slice_: Mapping[str, Any], *, cluster: str,
                          cluster_id: int) -> dict[str, bytes]:
    """The kvstore entry of one EndpointSlice; raises InvalidEndpointSlice (see module)."""
    metadata = slice_.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    reader = _Reader(f"{namespace or ''}/{name or ''}")
    if not isinstance(namespace, str) or not namespace:
        raise reader.fail("missing-namespace")
    if not isinstance(name, str) or not name:
        raise reader.fail("missing-name")
    labels = reader.str_map(metadata.get("labels"), "invalid-labels")
    if not labels.get(SERVICE_NAME_LABEL):
        raise reader.fail("missing-service-name")
    annotations = reader.str_map(metadata.get("annotations"), "invalid-annotations")
    address_type = slice_.get("addressType")
    if address_type not in ADDRESS_TYPES:
        raise reader.fail("invalid-address-type")
    endpoints = [reader.endpoint(e, address_type)
                 for e in reader.items(slice_.get("endpoints"), "invalid-endpoint")]
    ports = [reader.port(p) for p in reader.items(slice_.get("ports"), "invalid-port")]
    try:
        value = encode(cluster=cluster, cluster_id=cluster_id, namespace=namespace, name=name,
                       address_type=address_type, labels=labels, annotations=annotations,
                       endpoints=endpoints, ports=ports)
    except UnicodeEncodeError:
        # A lone surrogate (JSON "\ud800"): the Kubernetes API never sends one.
        raise reader.fail("invalid-utf8") from None
    return {f"{ENDPOINT_SLICES.state_prefix(cluster)}{namespace}/{name}": value}
