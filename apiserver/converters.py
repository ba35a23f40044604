"""Kubernetes objects -> the etcd entries Cilium's clustermesh-apiserver publishes.

Pure functions, no I/O.  Every converter takes Kubernetes objects as plain dicts
(the JSON the Kubernetes API returns, or a manifest loaded with
``yaml.safe_load``) and returns ``{full etcd key: value bytes}``; an empty dict
means "this object publishes nothing".  The caller diffs successive results of
the same owner to find the keys to delete.

The values must be byte-identical to what Cilium writes, because real Cilium
agents in other clusters decode them.  JSON values are therefore produced by
:func:`_go_json`, a small re-implementation of Go's ``encoding/json``
``Marshal``: compact output, struct fields in declaration order, ``omitempty``
(omits ``false``, ``0``, ``""``, nil and empty slices/maps; never a struct),
map keys sorted, ``null`` for nil slices/maps/pointers, ``[]byte``/``net.IPMask``
as base64, and Go's string escaping (``<``, ``>``, ``&``, U+2028, U+2029 as
``\\u00XX``/``\\u20XX``, ``\\b \\f \\n \\r \\t``, other control characters as
``\\u00XX``).

Mapping (Cilium sources in parentheses; facts §2, §4):

``identity_entries``
    CiliumIdentity ``<ID>`` -> ``cilium/state/identities/v1/id/<ID>`` = the
    security labels as ``source:key=value;`` sorted by key, not JSON
    (``clustermesh-apiserver/clustermesh/converters.go``,
    ``pkg/labels/labels.go`` Map2Labels/SortedList).
``endpoint_entries``
    CiliumEndpoint -> one ``cilium/state/ip/v1/default/<IP>`` per IPv4/IPv6
    address = ``IPIdentityPair`` JSON (``pkg/identity/identity.go``;
    ``converters.go`` ciliumEndpointMapper).
``cilium_endpoint_slice_entries``
    CiliumEndpointSlice -> the same entries for each endpoint it packs, with
    its ``namespace`` field as the namespace (``converters.go``
    ciliumEndpointSliceMapper).
``node_entries``
    CiliumNode -> ``cilium/state/nodes/v1/<cluster>/<name>`` = ``Node`` JSON with
    the local cluster name/ID forced (``pkg/node/types/node.go``
    ParseCiliumNode).
``service_entries``
    Service + its EndpointSlices -> ``cilium/state/services/v1/<cluster>/<ns>/<name>``
    = ``ClusterService`` JSON, only for global *and* shared services
    (``clustermesh-apiserver/clustermesh/service_sync.go``, ``pkg/annotation``,
    ``pkg/k8s/endpoints.go`` ParseEndpointSliceV1, ``pkg/clustermesh/store/store.go``).
``service_export_entries``
    ServiceExport + Service -> ``cilium/state/serviceexports/v1/<cluster>/<ns>/<name>``
    = ``MCSAPIServiceSpec`` JSON unless the Service is missing or ExternalName
    (``pkg/clustermesh/mcsapi/types/mcsapiservicespec.go``,
    ``clustermesh-apiserver/clustermesh/serviceexport_sync.go``).
``namespace_is_global``
    The ``clustermesh.cilium.io/global`` namespace annotation: present ->
    ``value.lower() == "true"``; absent -> the ``--clustermesh-default-global-namespace``
    default, ``True`` (``pkg/clustermesh/namespace/namespace.go``).

Cilium filters identities, endpoints, services, service exports and
EndpointSlices by the global status of their namespace.  The converters are
namespace-agnostic: the caller (:mod:`apiserver.exports`) applies
:func:`namespace_is_global` to the namespace each object belongs to
(:func:`identity_namespace` for an identity, :func:`endpoint_slice_namespace`
for a CiliumEndpointSlice, ``metadata.namespace`` otherwise).

No API-server defaulting is applied to the inputs (e.g. a Service port without
``protocol`` stays ``""``, as it does in Cilium's own tests with a fake
client); objects read from a real API server always carry the defaults.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from clustermesh.keys import ENDPOINTS, IDENTITIES, NODES, SERVICE_EXPORTS, SERVICES

__all__ = [
    "DEFAULT_GLOBAL_NAMESPACE",
    "GLOBAL_NAMESPACE_ANNOTATION",
    "endpoint_entries",
    "identity_entries",
    "identity_namespace",
    "namespace_is_global",
    "node_entries",
    "service_entries",
    "service_export_entries",
]

# --------------------------------------------------------------------------- annotations

GLOBAL_NAMESPACE_ANNOTATION = "clustermesh.cilium.io/global"
_GLOBAL_SERVICE = ("service.cilium.io/global", "io.cilium/global-service")
_SHARED_SERVICE = ("service.cilium.io/shared", "io.cilium/shared-service")
_WIREGUARD_PUB_KEY = ("network.cilium.io/wg-pub-key", "io.cilium.network.wg-pub-key")
_HEADLESS_LABEL = "service.kubernetes.io/headless"
_SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_POD_NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"

#: Cilium's ``--clustermesh-default-global-namespace`` default.
DEFAULT_GLOBAL_NAMESPACE = True

# --------------------------------------------------------------------------- Go JSON


class _Struct:
    """A Go struct value: ``(json name, value[, omitempty])`` in declaration order."""

    __slots__ = ("fields",)

    def __init__(self, *fields: tuple[str, Any] | tuple[str, Any, bool]) -> None:
        self.fields = fields


class _Present(str):
    """A non-nil ``*string``: never omitted by ``omitempty``, even when ``""``."""

    __slots__ = ()


_OMIT = True  # readability marker for the third element of a _Struct field

_GO_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
    "\t": "\\t", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
    "\u2028": "\\u2028", "\u2029": "\\u2029",
}
_GO_ESCAPE_RE = re.compile('["\\\\<>&\u2028\u2029\x00-\x1f\ud800-\udfff]')


def _go_escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    esc = _GO_ESCAPES.get(ch)
    if esc is not None:
        return esc
    if ch < " ":
        return f"\\u{ord(ch):04x}"
    # A lone surrogate: Go's JSON decoder would already have turned it into U+FFFD.
    return "\ufffd"


def _go_string(s: str) -> str:
    return '"' + _GO_ESCAPE_RE.sub(_go_escape_char, s) + '"'


def _go_empty(value: Any) -> bool:
    """Go's ``omitempty`` test (a struct is never empty)."""
    if value is None or value is False:
        return True
    if isinstance(value, _Present):
        return False
    if isinstance(value, int) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, str | bytes | list | tuple | dict):
        return len(value) == 0
    return False


def _go_encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_go_string(value))
    elif isinstance(value, bytes):
        out.append(_go_string(base64.b64encode(value).decode("ascii")))
    elif isinstance(value, _Struct):
        out.append("{")
        first = True
        for field in value.fields:
            name, item = field[0], field[1]
            if len(field) > 2 and field[2] and _go_empty(item):
                continue
            if not first:
                out.append(",")
            first = False
            out.append(_go_string(name))
            out.append(":")
            _go_encode(item, out)
        out.append("}")
    elif isinstance(value, Mapping):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(_go_string(key))
            out.append(":")
            _go_encode(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _go_encode(item, out)
        out.append("]")
    else:  # pragma: no cover - programming error
        raise TypeError(f"cannot encode {type(value).__name__} as Go JSON")


def _go_json(value: Any) -> bytes:
    """``json.Marshal(value)`` as Go would produce it (see the module docstring)."""
    out: list[str] = []
    _go_encode(value, out)
    return "".join(out).encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- input helpers


def _get(obj: Any, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, or None as soon as a level is missing."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    """A Kubernetes integer field (absent or malformed -> 0)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 10)
        except ValueError:
            return 0
    return 0


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _str_map(value: Any) -> dict[str, str] | None:
    """A ``map[string]string`` field: None (Go nil) when absent, else a copy."""
    if not isinstance(value, Mapping):
        return None
    return {str(k): v if isinstance(v, str) else str(v) for k, v in value.items()}


def _annotation(obj: Mapping[str, Any] | None, *keys: str) -> str | None:
    """Cilium's ``annotation.Get``: the value of the first key present, else None."""
    annotations = _get(obj, "metadata", "annotations")
    if not isinstance(annotations, Mapping):
        return None
    for key in keys:
        if key in annotations:
            value = annotations[key]
            return value if isinstance(value, str) else str(value)
    return None


# --------------------------------------------------------------------------- IP helpers

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_net_ip(text: Any) -> _IPAddress | None:
    """Go's ``net.ParseIP`` (no zones, no leading zeros in IPv4)."""
    if not isinstance(text, str) or not text or "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _net_ip_string(addr: _IPAddress) -> str:
    """Go's ``net.IP.String``: IPv4-mapped IPv6 addresses print as IPv4."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _net_ip_text(text: Any) -> str:
    """``net.ParseIP(text)`` marshalled: the canonical form, ``""`` if invalid."""
    addr = _parse_net_ip(text)
    return "" if addr is None else _net_ip_string(addr)


def _netip_string(text: Any) -> str | None:
    """Cilium's ``cmtypes.ParseAddrCluster(text).Addr().String()`` (netip), or None."""
    if not isinstance(text, str):
        return None
    at = text.rfind("@")
    if at >= 0:
        cluster_id = text[at + 1:]
        if not cluster_id.isascii() or not cluster_id.isdigit() or int(cluster_id) >= 1 << 32:
            return None
        text = text[:at]
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        zone = f"%{addr.scope_id}" if addr.scope_id else ""
        return f"::ffff:{addr.ipv4_mapped}{zone}"
    return str(addr)


def _parse_cidr(text: Any) -> _Struct | None:
    """Go's ``net.ParseCIDR`` network as a ``cidr.CIDR`` ({IP, Mask}), or None."""
    if not isinstance(text, str):
        return None
    addr_text, sep, prefix_text = text.partition("/")
    if not sep or not prefix_text.isascii() or not prefix_text.isdigit():
        return None
    addr = _parse_net_ip(addr_text)
    if addr is None:
        return None
    bits = 32 if isinstance(addr, ipaddress.IPv4Address) else 128
    prefix = int(prefix_text)
    if prefix > bits:
        return None
    network = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    mask = network.netmask.packed
    return _Struct(("IP", _net_ip_string(network.network_address)), ("Mask", mask))


def _cidr_is_v4(cidr: _Struct) -> bool:
    """``IP.To4() != nil``: the network address prints as IPv4 (also IPv4-mapped)."""
    return ":" not in cidr.fields[0][1]


# --------------------------------------------------------------------------- namespaces


def namespace_is_global(namespace: Mapping[str, Any] | None, *,
                        default: bool = DEFAULT_GLOBAL_NAMESPACE) -> bool:
    """Whether objects of ``namespace`` are exported to the mesh.

    ``clustermesh.cilium.io/global`` present: ``value.lower() == "true"``;
    absent: ``default``, which is Cilium's ``--clustermesh-default-global-namespace``
    (true unless configured); no Namespace object: False (``IsGlobalNamespaceByObject``).
    """
    if namespace is None:
        return False
    value = _annotation(namespace, GLOBAL_NAMESPACE_ANNOTATION)
    if value is None:
        return default
    return value.lower() == "true"


def identity_namespace(identity: Mapping[str, Any]) -> str | None:
    """The namespace Cilium files a CiliumIdentity under (its pod-namespace label).

    Newest Cilium skips identities without it and filters the others with
    :func:`namespace_is_global` (``clustermesh-apiserver/clustermesh/namespacers.go``).
    """
    labels = identity.get("security-labels")
    value = labels.get(_POD_NAMESPACE_LABEL) if isinstance(labels, Mapping) else None
    return value if isinstance(value, str) and value else None


# --------------------------------------------------------------------------- identities

_NUMERIC = re.compile(r"[0-9]+")


def _parse_label_key(key: str) -> tuple[str, str]:
    """Cilium's ``parseSource(key, ':')`` -> (source, key)."""
    if not key:
        return "", ""
    if key[0] == "$":
        return "reserved", key[1:]
    src, sep, rest = key.partition(":")
    if not sep:
        if key.startswith("reserved."):
            return "reserved", key[len("reserved."):]
        return "", key
    return src, rest


def identity_entries(identity: Mapping[str, Any]) -> dict[str, bytes]:
    """CiliumIdentity -> ``cilium/state/identities/v1/id/<ID>`` = sorted label string.

    Each security label ``[source:]key`` -> ``value`` becomes
    ``source:key=value;`` (no source -> ``unspec``, ``$key`` -> ``reserved``),
    sorted by key.  Nothing when the name is not a numeric ID or there are no
    security labels.
    """
    name = _get(identity, "metadata", "name")
    if not isinstance(name, str) or not _NUMERIC.fullmatch(name) or int(name) >= 1 << 32:
        return {}
    security_labels = identity.get("security-labels")
    if not isinstance(security_labels, Mapping) or not security_labels:
        return {}
    labels: dict[str, tuple[str, str, str]] = {}
    # Two map keys can collapse into the same label key (e.g. "k8s:a" and
    # "container:a"); Go keeps whichever it meets last in random map order.  We
    # make that deterministic: the original key that sorts last wins.
    for raw_key in sorted(str(k) for k in security_labels):
        raw_value = security_labels[raw_key]
        value = raw_value if isinstance(raw_value, str) else str(raw_value)
        source, key = _parse_label_key(raw_key)
        if not source:
            source = "unspec"
        if source == "reserved" and key == "":
            key, value = value, ""
        labels[key] = (source, key, value)
    text = "".join(f"{s}:{k}={v};" for s, k, v in (labels[k] for k in sorted(labels)))
    return {IDENTITIES.state_prefix("") + name: text.encode("utf-8", "surrogatepass")}


# --------------------------------------------------------------------------- endpoints


def _pod_uid(cep: Mapping[str, Any]) -> str:
    for owner in _list(_get(cep, "metadata", "ownerReferences")):
        if isinstance(owner, Mapping) and owner.get("kind") == "Pod":
            return _str(owner.get("uid"))
    return ""


def _ip_identity_entries(networking: Any, *, identity_id: Any, encryption_key: Any,
                         namespace: str, pod_name: str, pod_uid: str, service_account: str,
                         named_ports: Any, problems: list[str] | None) -> dict[str, bytes]:
    """One ``IPIdentityPair`` per address of one endpoint (CiliumEndpoint or CES entry)."""
    if not isinstance(networking, Mapping):
        return {}
    host_ip = _net_ip_text(networking.get("node"))
    identity = _int(identity_id) & 0xFFFFFFFF
    key = _int(encryption_key) & 0xFF
    ports = [
        _Struct(("Name", _str(p.get("name"))), ("Port", _int(p.get("port")) & 0xFFFF),
                ("Protocol", _str(p.get("protocol"))))
        for p in _list(named_ports) if isinstance(p, Mapping)
    ]
    entries: dict[str, bytes] = {}
    prefix = ENDPOINTS.state_prefix("")
    for address in _list(networking.get("addressing")):
        if not isinstance(address, Mapping):
            continue
        for raw in (address.get("ipv4"), address.get("ipv6")):
            if not raw:
                continue
            addr = _parse_net_ip(raw)
            if addr is None:
                if problems is not None:
                    problems.append(f"endpoint {pod_name}: unparsable IP {str(raw)[:64]!r} "
                                    "not exported")
                continue
            ip = _net_ip_string(addr)
            # The same IP listed twice by one owner: the later entry wins (as upstream).
            entries[prefix + ip] = _go_json(_Struct(
                ("IP", ip),
                ("Mask", None, _OMIT),
                ("HostIP", host_ip),
                ("ID", identity),
                ("Key", key),
                ("Metadata", ""),
                ("K8sNamespace", namespace, _OMIT),
                ("K8sPodName", pod_name, _OMIT),
                ("K8sPodUID", pod_uid, _OMIT),
                ("K8sServiceAccount", service_account, _OMIT),
                ("NamedPorts", ports, _OMIT),
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
        _get(status, "networking"), identity_id=_get(status, "identity", "id"),
        encryption_key=_get(status, "encryption", "key"),
        namespace=_str(_get(cep, "metadata", "namespace")),
        pod_name=_str(_get(cep, "metadata", "name")), pod_uid=_pod_uid(cep),
        service_account=_str(_get(status, "service-account")),
        named_ports=_get(status, "named-ports"), problems=problems)


def endpoint_slice_namespace(ces: Mapping[str, Any]) -> str:
    """The namespace of every endpoint of a CiliumEndpointSlice: its ``namespace`` field.

    The object itself is cluster-scoped (``metadata.namespace`` is empty).
    """
    return _str(ces.get("namespace"))


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
    for endpoint in _list(ces.get("endpoints")):
        if not isinstance(endpoint, Mapping):
            continue
        entries |= _ip_identity_entries(
            endpoint.get("networking"), identity_id=endpoint.get("id"),
            encryption_key=_get(endpoint, "encryption", "key"), namespace=namespace,
            pod_name=_str(endpoint.get("name")), pod_uid=_str(endpoint.get("pod-uid")),
            service_account=_str(endpoint.get("service-account")),
            named_ports=endpoint.get("named-ports"), problems=problems)
    return entries


# --------------------------------------------------------------------------- nodes


def node_entries(node: Mapping[str, Any], *, cluster: str, cluster_id: int) -> dict[str, bytes]:
    """CiliumNode -> ``cilium/state/nodes/v1/<cluster>/<name>`` = ``Node`` JSON.

    ``Cluster``/``ClusterID`` are the local ones, ``Source`` is
    ``custom-resource``; pod CIDRs (``spec.ipam.podCIDRs`` then the multi-pool
    ``spec.ipam.pools.allocated[].cidrs``) fill the primary then secondary
    alloc CIDR per family; invalid IPs/CIDRs are dropped as Cilium does.
    """
    name = _get(node, "metadata", "name")
    if not isinstance(name, str) or not name:
        return {}
    spec = node.get("spec")

    alloc: dict[bool, _Struct | None] = {True: None, False: None}
    secondary: dict[bool, list[_Struct] | None] = {True: None, False: None}
    pod_cidrs = list(_list(_get(spec, "ipam", "podCIDRs")))
    for pool in _list(_get(spec, "ipam", "pools", "allocated")):
        if isinstance(pool, Mapping):
            pod_cidrs.extend(_list(pool.get("cidrs")))
    for text in pod_cidrs:
        cidr = _parse_cidr(text)
        if cidr is None:
            continue
        v4 = _cidr_is_v4(cidr)
        if alloc[v4] is None:
            alloc[v4] = cidr
        else:
            secondary[v4] = [*(secondary[v4] or []), cidr]

    addresses: list[_Struct] | None = None
    for address in _list(_get(spec, "addresses")):
        if not isinstance(address, Mapping):
            continue
        addr = _parse_net_ip(address.get("ip"))
        if addr is not None:
            addresses = [*(addresses or []),
                         _Struct(("Type", _str(address.get("type"))),
                                 ("IP", _net_ip_string(addr)))]

    wireguard = _annotation(node, *_WIREGUARD_PUB_KEY) or ""
    value = _Struct(
        ("Name", name),
        ("Cluster", cluster),
        ("IPAddresses", addresses),
        ("IPv4AllocCIDR", alloc[True]),
        ("IPv4SecondaryAllocCIDRs", secondary[True]),
        ("IPv6AllocCIDR", alloc[False]),
        ("IPv6SecondaryAllocCIDRs", secondary[False]),
        ("IPv4HealthIP", _net_ip_text(_get(spec, "health", "ipv4"))),
        ("IPv6HealthIP", _net_ip_text(_get(spec, "health", "ipv6"))),
        ("IPv4IngressIP", _net_ip_text(_get(spec, "ingress", "ipv4"))),
        ("IPv6IngressIP", _net_ip_text(_get(spec, "ingress", "ipv6"))),
        ("ClusterID", cluster_id),
        ("Source", "custom-resource"),
        ("EncryptionKey", _int(_get(spec, "encryption", "key")) & 0xFF),
        ("Labels", _str_map(_get(node, "metadata", "labels"))),
        ("Annotations", _str_map(_get(node, "metadata", "annotations"))),
        ("WireguardPubKey", wireguard),
        ("BootID", _str(_get(spec, "bootid"))),
    )
    return {NODES.state_prefix(cluster) + name: _go_json(value)}


# --------------------------------------------------------------------------- services


def _is_global_service(service: Mapping[str, Any]) -> bool:
    value = _annotation(service, *_GLOBAL_SERVICE)
    return value is not None and value.lower() == "true"


def is_shared_service(service: Mapping[str, Any]) -> bool:
    """Cilium's ``annotation.GetAnnotationShared``: global and not ``shared != true``."""
    if not _is_global_service(service):
        return False
    value = _annotation(service, *_SHARED_SERVICE)
    return value is None or value.lower() == "true"


def _is_headless(service: Mapping[str, Any]) -> bool:
    labels = _get(service, "metadata", "labels")
    if isinstance(labels, Mapping) and _HEADLESS_LABEL in labels:
        return True
    return _str(_get(service, "spec", "clusterIP")).lower() == "none"


def _l4(protocol: str, port: int) -> _Struct:
    return _Struct(("Protocol", protocol), ("Port", port & 0xFFFF))


def _slice_ports(slice_: Mapping[str, Any]) -> dict[str, _Struct]:
    """The port configuration an EndpointSlice gives each of its backends."""
    ports: dict[str, _Struct] = {}
    for port in _list(slice_.get("ports")):
        if not isinstance(port, Mapping):
            continue
        protocol = port.get("protocol")
        if protocol is None:
            protocol = "TCP"
        elif protocol not in ("TCP", "UDP", "SCTP"):
            continue
        if port.get("port") is None:
            continue
        ports[_str(port.get("name"))] = _l4(protocol, _int(port.get("port")))
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
              ) -> tuple[dict[str, Any], dict[str, str], dict[str, _Struct]]:
    backends: dict[str, Any] = {}
    hostnames: dict[str, str] = {}
    zones: dict[str, _Struct] = {}
    mine = [
        s for s in slices
        if isinstance(s, Mapping)
        and _str(_get(s, "metadata", "namespace")) in ("", namespace)
        and _get(s, "metadata", "labels", _SERVICE_NAME_LABEL) == name
    ]
    # Go visits the slices of a service in no particular order; sort for determinism.
    mine.sort(key=lambda s: _str(_get(s, "metadata", "name")))
    for slice_ in mine:
        if slice_.get("addressType") not in ("IPv4", "IPv6"):
            continue
        ports = _slice_ports(slice_)
        # Within one slice a later endpoint listing the same address replaces the earlier.
        parsed: dict[str, Mapping[str, Any]] = {}
        for endpoint in _list(slice_.get("endpoints")):
            if not isinstance(endpoint, Mapping):
                continue
            for raw in _list(endpoint.get("addresses")):
                addr = _netip_string(raw)
                if addr is not None:
                    parsed[addr] = endpoint
        for addr, endpoint in parsed.items():
            ready, serving = _conditions(endpoint)
            if not ready and not serving:
                continue
            backends[addr] = dict(ports)
            hostname = _str(endpoint.get("hostname"))
            if hostname:
                hostnames[addr] = hostname
            zone = endpoint.get("zone")
            if zone is None:
                zone = _get(endpoint, "deprecatedTopology", "topology.kubernetes.io/zone")
            zone = _str(zone)
            if zone:
                for_zones = [
                    _Struct(("name", _str(hint.get("name"))))
                    for hint in _list(_get(endpoint, "hints", "forZones"))
                    if isinstance(hint, Mapping)
                ]
                zones[addr] = _Struct(("zone", zone), ("forZones", for_zones))
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
    name = _str(_get(service, "metadata", "name"))
    ns = _str(_get(service, "metadata", "namespace"))
    if not name or not ns:
        return {}
    if not is_shared_service(service):
        return {}
    frontends: dict[str, Any] = {}
    if not _is_headless(service):
        port_config: dict[str, _Struct] = {}
        for port in _list(_get(service, "spec", "ports")):
            if isinstance(port, Mapping):
                port_config[_str(port.get("name"))] = _l4(_str(port.get("protocol")),
                                                         _int(port.get("port")))
        cluster_ips = [_str(ip) for ip in _list(_get(service, "spec", "clusterIPs"))]
        if not cluster_ips:
            cluster_ips = [_str(_get(service, "spec", "clusterIP"))]
        for ip in cluster_ips:
            frontends[ip] = port_config

    backends, hostnames, zones = _backends(slices, ns, name)
    value = _Struct(
        ("cluster", cluster),
        ("namespace", ns),
        ("name", name),
        ("frontends", frontends),
        ("backends", backends),
        ("hostnames", hostnames, _OMIT),
        ("zones", zones, _OMIT),
        ("labels", _str_map(_get(service, "metadata", "labels")) or {}),
        ("selector", _str_map(_get(service, "spec", "selector")) or {}),
        ("includeExternal", True),
        ("shared", True),
        ("clusterID", cluster_id),
    )
    return {f"{SERVICES.state_prefix(cluster)}{ns}/{name}": _go_json(value)}


# --------------------------------------------------------------------------- service exports


def _go_time(value: Any) -> str | None:
    """A ``metav1.Time`` as Go marshals it: RFC 3339 in UTC, seconds; zero -> None."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def service_export_entries(export: Mapping[str, Any], service: Mapping[str, Any] | None, *,
                           cluster: str) -> dict[str, bytes]:
    """ServiceExport + Service -> ``cilium/state/serviceexports/v1/<cluster>/<ns>/<name>``.

    Value: ``MCSAPIServiceSpec`` built from the Service (ports, type
    ``Headless`` iff ``clusterIP == "None"`` else ``ClusterSetIP``, session
    affinity, IP families, traffic policies) and the export (creation
    timestamp, ``spec.exportedAnnotations``/``exportedLabels``).  Nothing
    unless both exist and the Service is not ``ExternalName`` (the caller
    checks the namespace).
    """
    if service is None:
        return {}
    name = _str(_get(export, "metadata", "name"))
    ns = _str(_get(export, "metadata", "namespace"))
    if not name or not ns:
        return {}
    if (_get(service, "metadata", "name") != name
            or _str(_get(service, "metadata", "namespace")) not in ("", ns)):
        return {}
    spec = service.get("spec")
    if not isinstance(spec, Mapping):
        spec = {}
    if spec.get("type") == "ExternalName":
        return {}

    ports = []
    for port in _list(spec.get("ports")):
        if not isinstance(port, Mapping):
            continue
        app_protocol = port.get("appProtocol")
        ports.append(_Struct(
            ("name", _str(port.get("name")), _OMIT),
            ("protocol", _str(port.get("protocol")), _OMIT),
            # A *string: omitted only when nil.
            ("appProtocol", _Present(_str(app_protocol)) if app_protocol is not None else None,
             _OMIT),
            ("port", _int(port.get("port"))),
        ))

    affinity_config = None
    timeout = _get(spec, "sessionAffinityConfig", "clientIP", "timeoutSeconds")
    if timeout is not None:
        affinity_config = _Struct(("clientIP", _Struct(("timeoutSeconds", _int(timeout), _OMIT)),
                                   _OMIT))
    internal_policy = spec.get("internalTrafficPolicy")
    distribution = spec.get("trafficDistribution")
    value = _Struct(
        ("cluster", cluster),
        ("name", name),
        ("namespace", ns),
        ("annotations", _str_map(_get(export, "spec", "exportedAnnotations")), _OMIT),
        ("labels", _str_map(_get(export, "spec", "exportedLabels")), _OMIT),
        ("exportCreationTimestamp", _go_time(_get(export, "metadata", "creationTimestamp"))),
        ("ports", ports),
        ("type", "Headless" if spec.get("clusterIP") == "None" else "ClusterSetIP"),
        ("sessionAffinity", _str(spec.get("sessionAffinity"))),
        ("sessionAffinityConfig", affinity_config, _OMIT),
        ("ipFamilies", [_str(f) for f in _list(spec.get("ipFamilies"))], _OMIT),
        ("internalTrafficPolicy",
         _Present(_str(internal_policy)) if internal_policy is not None else None, _OMIT),
        ("trafficDistribution",
         _Present(_str(distribution)) if distribution is not None else None, _OMIT),
    )
    return {f"{SERVICE_EXPORTS.state_prefix(cluster)}{ns}/{name}": _go_json(value)}
