"""CiliumEndpoint and CiliumEndpointSlice -> ipcache entries ``cilium/state/ip/v1/default/<IP>``.

One ``IPIdentityPair`` JSON per address (``pkg/identity/identity.go``;
``clustermesh-apiserver/clustermesh/converters.go`` ciliumEndpointMapper and
ciliumEndpointSliceMapper).  Both kinds go through one builder, so a pod exports
the same bytes whichever of the two sources is active.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clustermesh.keys import ENDPOINTS

from .gojson import OMIT, Struct, go_json
from .inputs import as_int, as_list, as_str, get, net_ip_string, net_ip_text, parse_net_ip


def _pod_uid(cep: Mapping[str, Any]) -> str:
    for owner in as_list(get(cep, "metadata", "ownerReferences")):
        if isinstance(owner, Mapping) and owner.get("kind") == "Pod":
            return as_str(owner.get("uid"))
    return ""


def _ip_identity_entries(networking: Any, *, identity_id: Any, encryption_key: Any,
                         namespace: str, pod_name: str, pod_uid: str, service_account: str,
                         named_ports: Any, problems: list[str] | None) -> dict[str, bytes]:
    """One ``IPIdentityPair`` per address of one endpoint (CiliumEndpoint or CES entry)."""
    if not isinstance(networking, Mapping):
        return {}
    host_ip = net_ip_text(networking.get("node"))
    identity = as_int(identity_id) & 0xFFFFFFFF
    key = as_int(encryption_key) & 0xFF
    ports = [
        Struct(("Name", as_str(p.get("name"))), ("Port", as_int(p.get("port")) & 0xFFFF),
                ("Protocol", as_str(p.get("protocol"))))
        for p in as_list(named_ports) if isinstance(p, Mapping)
    ]
    entries: dict[str, bytes] = {}
    prefix = ENDPOINTS.state_prefix("")
    for address in as_list(networking.get("addressing")):
        if not isinstance(address, Mapping):
            continue
        for raw in (address.get("ipv4"), address.get("ipv6")):
            if not raw:
                continue
            addr = parse_net_ip(raw)
            if addr is None:
                if problems is not None:
                    problems.append(f"endpoint {pod_name}: unparsable IP {str(raw)[:64]!r} "
                                    "not exported")
                continue
            ip = net_ip_string(addr)
            # The same IP listed twice by one owner: the later entry wins (as upstream).
            entries[prefix + ip] = go_json(Struct(
                ("IP", ip),
                ("Mask", None, OMIT),
                ("HostIP", host_ip),
                ("ID", identity),
                ("Key", key),
                ("Metadata", ""),
                ("K8sNamespace", namespace, OMIT),
                ("K8sPodName", pod_name, OMIT),
                ("K8sPodUID", pod_uid, OMIT),
                ("K8sServiceAccount", service_account, OMIT),
                ("NamedPorts", ports, OMIT),
            ))
    return entries


def endpoint_entries(cep: Mapping[str, Any], *,
                     problems: list[str] | None = None) -> dict[str, bytes]:
    """CiliumEndpoint -> one ``cilium/state/ip/v1/default/<IP>`` per address.

    Value: ``IPIdentityPair`` {IP, HostIP (= ``status.networking.node``), ID
    (``status.identity.id``), Key (``status.encryption.key``), Metadata "",
    K8sNamespace, K8sPodName, K8sPodUID (owner Pod), K8sServiceAccount,
    NamedPorts}; ``Mask`` (nil for host entries) and the empty K8s*/NamedPorts
    fields are omitted.  Unparsable addresses are skipped and described in
    ``problems`` (Cilium would write a ``<nil>`` key that agents reject).
    """
    status = cep.get("status")
    return _ip_identity_entries(
        get(status, "networking"), identity_id=get(status, "identity", "id"),
        encryption_key=get(status, "encryption", "key"),
        namespace=as_str(get(cep, "metadata", "namespace")),
        pod_name=as_str(get(cep, "metadata", "name")), pod_uid=_pod_uid(cep),
        service_account=as_str(get(status, "service-account")),
        named_ports=get(status, "named-ports"), problems=problems)


def endpoint_slice_namespace(ces: Mapping[str, Any]) -> str:
    """The namespace of every endpoint of a CiliumEndpointSlice: its ``namespace`` field.

    The object itself is cluster-scoped (``metadata.namespace`` is empty).
    """
    return as_str(ces.get("namespace"))


def cilium_endpoint_slice_entries(ces: Mapping[str, Any], *,
                                  problems: list[str] | None = None) -> dict[str, bytes]:
    """CiliumEndpointSlice (``cilium.io/v2alpha1``) -> the ipcache entries of its endpoints.

    Each ``endpoints[]`` item (a ``CoreCiliumEndpoint``: ``name``, ``id``,
    ``networking``, ``encryption``, ``named-ports``, ``service-account``,
    ``pod-uid``) yields exactly the bytes its CiliumEndpoint would
    (:func:`endpoint_entries`), with the slice's ``namespace`` field as
    ``K8sNamespace`` — so a pod exports the same value whichever source is active.
    """
    namespace = endpoint_slice_namespace(ces)
    entries: dict[str, bytes] = {}
    for endpoint in as_list(ces.get("endpoints")):
        if not isinstance(endpoint, Mapping):
            continue
        entries |= _ip_identity_entries(
            endpoint.get("networking"), identity_id=endpoint.get("id"),
            encryption_key=get(endpoint, "encryption", "key"), namespace=namespace,
            pod_name=as_str(endpoint.get("name")), pod_uid=as_str(endpoint.get("pod-uid")),
            service_account=as_str(endpoint.get("service-account")),
            named_ports=endpoint.get("named-ports"), problems=problems)
    return entries
