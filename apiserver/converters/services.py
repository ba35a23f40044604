"""Service + EndpointSlices -> ``cilium/state/services/v1/<cluster>/<ns>/<name>``.

``ClusterService`` JSON for global and shared services
(``clustermesh-apiserver/clustermesh/service_sync.go``, ``pkg/annotation``,
``pkg/k8s/endpoints.go`` ParseEndpointSliceV1, ``pkg/clustermesh/store/store.go``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clustermesh.keys import SERVICES

from .gojson import OMIT, Struct, go_json
from .inputs import annotation, as_int, as_list, as_str, as_str_map, get, netip_string

_GLOBAL_SERVICE = ("service.cilium.io/global", "io.cilium/global-service")
_SHARED_SERVICE = ("service.cilium.io/shared", "io.cilium/shared-service")
_HEADLESS_LABEL = "service.kubernetes.io/headless"
_SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def _is_global_service(service: Mapping[str, Any]) -> bool:
    value = annotation(service, *_GLOBAL_SERVICE)
    return value is not None and value.lower() == "true"


def is_shared_service(service: Mapping[str, Any]) -> bool:
    """Cilium's ``annotation.GetAnnotationShared``: global and not ``shared != true``."""
    if not _is_global_service(service):
        return False
    value = annotation(service, *_SHARED_SERVICE)
    return value is None or value.lower() == "true"


def _is_headless(service: Mapping[str, Any]) -> bool:
    labels = get(service, "metadata", "labels")
    if isinstance(labels, Mapping) and _HEADLESS_LABEL in labels:
        return True
    return as_str(get(service, "spec", "clusterIP")).lower() == "none"


def _l4(protocol: str, port: int) -> Struct:
    return Struct(("Protocol", protocol), ("Port", port & 0xFFFF))


def _slice_ports(slice_: Mapping[str, Any]) -> dict[str, Struct]:
    """The port configuration an EndpointSlice gives each of its backends."""
    ports: dict[str, Struct] = {}
    for port in as_list(slice_.get("ports")):
        if not isinstance(port, Mapping):
            continue
        protocol = port.get("protocol")
        if protocol is None:
            protocol = "TCP"
        elif protocol not in ("TCP", "UDP", "SCTP"):
            continue
        if port.get("port") is None:
            continue
        ports[as_str(port.get("name"))] = _l4(protocol, as_int(port.get("port")))
    return ports


def _conditions(endpoint: Mapping[str, Any]) -> tuple[bool, bool]:
    """(ready, serving) as Cilium's ``ParseEndpointConditionsV1`` reads them (nil = true)."""
    conditions = endpoint.get("conditions")
    if not isinstance(conditions, Mapping):
        conditions = {}
    ready = conditions.get("ready")
    serving = conditions.get("serving")
    return ready is None or ready is True, serving is None or serving is True


def _backends(slices: Sequence[Mapping[str, Any]], namespace: str, name: str,
              ) -> tuple[dict[str, Any], dict[str, str], dict[str, Struct]]:
    backends: dict[str, Any] = {}
    hostnames: dict[str, str] = {}
    zones: dict[str, Struct] = {}
    mine = [
        s for s in slices
        if isinstance(s, Mapping)
        and as_str(get(s, "metadata", "namespace")) in ("", namespace)
        and get(s, "metadata", "labels", _SERVICE_NAME_LABEL) == name
    ]
    # Go visits the slices of a service in no particular order; sort for determinism.
    mine.sort(key=lambda s: as_str(get(s, "metadata", "name")))
    for slice_ in mine:
        if slice_.get("addressType") not in ("IPv4", "IPv6"):
            continue
        ports = _slice_ports(slice_)
        # Within one slice a later endpoint listing the same address replaces the earlier.
        parsed: dict[str, Mapping[str, Any]] = {}
        for endpoint in as_list(slice_.get("endpoints")):
            if not isinstance(endpoint, Mapping):
                continue
            for raw in as_list(endpoint.get("addresses")):
                addr = netip_string(raw)
                if addr is not None:
                    parsed[addr] = endpoint
        for addr, endpoint in parsed.items():
            ready, serving = _conditions(endpoint)
            if not ready and not serving:
                continue
            backends[addr] = dict(ports)
            hostname = as_str(endpoint.get("hostname"))
            if hostname:
                hostnames[addr] = hostname
            zone = endpoint.get("zone")
            if zone is None:
                zone = get(endpoint, "deprecatedTopology", "topology.kubernetes.io/zone")
            zone = as_str(zone)
            if zone:
                for_zones = [
                    Struct(("name", as_str(hint.get("name"))))
                    for hint in as_list(get(endpoint, "hints", "forZones"))
                    if isinstance(hint, Mapping)
                ]
                zones[addr] = Struct(("zone", zone), ("forZones", for_zones))
    return backends, hostnames, zones


def service_entries(service: Mapping[str, Any], slices: Sequence[Mapping[str, Any]], *,
                    cluster: str, cluster_id: int) -> dict[str, bytes]:
    """Service + EndpointSlices -> ``cilium/state/services/v1/<cluster>/<ns>/<name>``.

    Published only when the Service is global (``service.cilium.io/global`` or
    ``io.cilium/global-service`` = "true", any case), shared (the
    ``service.cilium.io/shared``/``io.cilium/shared-service`` annotation absent
    or "true", any case); the caller checks its namespace.

    Frontends: every ClusterIP (``clusterIPs``, else ``clusterIP``) with the
    Service's named ports, none for headless Services.  Backends: the
    addresses of the Service's slices (label ``kubernetes.io/service-name``)
    whose endpoint is ready or serving (nil conditions count as true), with
    the slice's ports; hostnames and zones (with ``hints.forZones``) as Cilium
    records them.
    """
    name = as_str(get(service, "metadata", "name"))
    ns = as_str(get(service, "metadata", "namespace"))
    if not name or not ns:
        return {}
    if not is_shared_service(service):
        return {}
    frontends: dict[str, Any] = {}
    if not _is_headless(service):
        port_config: dict[str, Struct] = {}
        for port in as_list(get(service, "spec", "ports")):
            if isinstance(port, Mapping):
                port_config[as_str(port.get("name"))] = _l4(as_str(port.get("protocol")),
                                                         as_int(port.get("port")))
        cluster_ips = [as_str(ip) for ip in as_list(get(service, "spec", "clusterIPs"))]
        if not cluster_ips:
            cluster_ips = [as_str(get(service, "spec", "clusterIP"))]
        for ip in cluster_ips:
            frontends[ip] = port_config

    backends, hostnames, zones = _backends(slices, ns, name)
    value = Struct(
        ("cluster", cluster),
        ("namespace", ns),
        ("name", name),
        ("frontends", frontends),
        ("backends", backends),
        ("hostnames", hostnames, OMIT),
        ("zones", zones, OMIT),
        ("labels", as_str_map(get(service, "metadata", "labels")) or {}),
        ("selector", as_str_map(get(service, "spec", "selector")) or {}),
        ("includeExternal", True),
        ("shared", True),
        ("clusterID", cluster_id),
    )
    return {f"{SERVICES.state_prefix(cluster)}{ns}/{name}": go_json(value)}
