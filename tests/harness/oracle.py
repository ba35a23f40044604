"""What a correct KVStoreMesh caches, written from the spec, not from its code.

The convergence check must not call the code it checks, or a bug there would be
expected too.  This module restates, independently of :mod:`kvstoremesh.resources`,
:mod:`kvstoremesh.validation` and :mod:`clustermesh.endpointslice`:

* :func:`expected_reflection` — per resource and remote cluster-config, whether the
  cache mirrors the remote's keys, holds only the canary, or nothing
  (facts: clustermesh §3.5, apiserver-newest §4.1, §4.2);
* :func:`cached_cluster_config` — the cluster-config KVStoreMesh publishes for a
  remote (facts §2.6), encoded here rather than by :mod:`clustermesh.clusterconfig`;
* :func:`entry_accepted` — whether one remote entry passes the checks the agents
  apply (facts: clustermesh §6.3, §6.4, and the value formats of §2), which is what
  the cache must hold of it with validation on;
* :func:`endpointslice_accepted` — the same for an EndpointSlice value
  (apiserver-newest §4.5): complete zstd frames of at most 16 MiB decompressed, a
  protobuf ``ClusterEndpointSlice`` (decoded here by a small wire-format reader, not
  the generated classes) naming the remote, its ID and the ``<namespace>/<name>``
  key, whose addresses are of its address type.

How the JSON resources are read, as the agents (Go's ``encoding/json`` into Cilium's
structs) read them: the value is UTF-8 JSON text (RFC 8259 §8.1: no byte-order mark,
no other encoding) holding an object, with no ``NaN``/``Infinity`` (not JSON); a field
the rules name that is absent or ``null`` has its Go zero value (``""``, 0, an empty
map), and one of the wrong JSON type (a number for a string, ``1.5`` or ``true`` for
an integer, an array for a map) makes the whole entry undecodable.  Not modelled:
fields the rules do not name, and Go's case-insensitive matching of field names
(Cilium writes them in their exact case).  IP addresses are read as Go's
``net.ParseIP`` does (dotted-quad IPv4 without leading zeros, IPv6 without a zone)
and printed back as ``net.IP.String`` does (IPv4-mapped addresses as IPv4; IPv6 per
RFC 5952).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
import ipaddress
import json
import math
import re
import socket
from typing import Any

import zstandard

from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IDENTITIES,
    NODES,
    SERVICE_EXPORTS,
    SERVICES,
    Resource,
)

MIRROR, CANARY_ONLY, NOTHING = "mirror", "canary only", "nothing"
MAX_DECOMPRESSED = 16 << 20  # the agents' WithDecoderMaxMemory(16 << 20)


def expected_reflection(resource: Resource, config: CiliumClusterConfig) -> str:
    """MIRROR, CANARY_ONLY or NOTHING: what the cache holds of ``resource``."""
    mode = config.endpoint_slices_export_mode
    if resource is SERVICE_EXPORTS:
        # serviceExportsEnabled absent: a peer without MCS-API; Cilium pretends synced.
        return MIRROR if config.service_exports_enabled is not None else CANARY_ONLY
    if resource is SERVICES:
        # Such a peer writes no services, but 1.18/1.19 agents wait for the canary.
        return CANARY_ONLY if mode == "endpointslices-only" else MIRROR
    if resource is ENDPOINT_SLICES:
        # 1.18/1.19 peers (no mode) write neither slices nor their canary.
        return MIRROR if mode else NOTHING
    return MIRROR


def cached_cluster_config(config: CiliumClusterConfig) -> bytes:
    """``cilium/cluster-config/<name>`` in the cache (facts §2.6): the remote's config
    with ``cached`` and ``syncedCanaries`` set, as Go's ``json.Marshal`` writes
    ``CiliumClusterConfig``: ``id`` (omitempty), then ``capabilities`` (always) with
    ``syncedCanaries``, ``cached``, ``maxConnectedClusters`` (omitempty),
    ``serviceExportsEnabled`` (a pointer: omitted only when unset) and
    ``endpointSlicesExportMode`` (omitempty), in that order; Go escapes ``<``, ``>``,
    ``&``, U+2028 and U+2029 in strings."""
    capabilities: dict[str, object] = {"syncedCanaries": True, "cached": True}
    if config.max_connected_clusters:
        capabilities["maxConnectedClusters"] = config.max_connected_clusters
    if config.service_exports_enabled is not None:
        capabilities["serviceExportsEnabled"] = config.service_exports_enabled
    if config.endpoint_slices_export_mode:
        capabilities["endpointSlicesExportMode"] = config.endpoint_slices_export_mode
    doc: dict[str, object] = {"id": config.id} if config.id else {}
    doc["capabilities"] = capabilities
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text.encode()


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of every field of one message, in wire order."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i)
            out.append((number, value))
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > len(buf):
                raise ValueError("truncated field")
            out.append((number, buf[i:i + size]))
            i += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if i + width > len(buf):
                raise ValueError("truncated field")
            i += width  # fixed-width fields: none in this message; skipped like unknowns
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("expected a length-delimited field")
    return value


def _decompress(value: bytes) -> bytes | None:
    dctx = zstandard.ZstdDecompressor()
    try:
        # The size bound first (a frame may claim any size in its header)...
        head = dctx.stream_reader(io.BytesIO(value), read_across_frames=True).read(
            MAX_DECOMPRESSED + 1)
        if len(head) > MAX_DECOMPRESSED:
            return None
        # ...then completeness: whole frames only (Go's DecodeAll takes several in a row).
        out, rest = b"", value
        while rest:
            obj = dctx.decompressobj()
            out += obj.decompress(rest)
            if not obj.eof:
                return None
            rest = obj.unused_data
    except zstandard.ZstdError:
        return None
    return out


def endpointslice_accepted(key: str, value: bytes, *, cluster: str, cluster_id: int) -> bool:
    """Whether the cache takes this ``<namespace>/<name>`` EndpointSlice of ``cluster``."""
    raw = _decompress(value)
    if raw is None:
        return False
    scalars: dict[int, int | bytes] = {}
    addresses: list[str] = []
    try:
        for number, field in _fields(raw):
            if number == 8:  # Endpoint; its field 1: addresses
                addresses += [_bytes(v).decode() for n, v in _fields(_bytes(field)) if n == 1]
            elif number in (1, 2, 3, 4, 7):
                scalars[number] = field  # proto2 optional: the last one wins
        cluster_field, namespace, slice_name, address_type = (
            _bytes(scalars.get(n, b"")).decode() for n in (1, 3, 4, 7))
    except (ValueError, UnicodeDecodeError):
        return False
    if not (cluster_field and namespace and slice_name):
        return False
    if (cluster_field != cluster or scalars.get(2, 0) != cluster_id
            or f"{namespace}/{slice_name}" != key):
        return False
    family = {"IPv4": ipaddress.IPv4Address, "IPv6": ipaddress.IPv6Address}.get(address_type)
    if family is None:
        return False
    for address in addresses:
        if "%" in address:  # Python accepts an IPv6 zone; the agents do not
            return False
        try:
            family(address)
        except ValueError:
            return False
    return True


# ------------------------------------------------------------------ JSON resources

CLUSTER_LABEL = "k8s:io.cilium.k8s.policy.cluster"  # source:key (facts §2.1, §6.4)
WELL_KNOWN_MAX = 255  # identities below 256 are reserved, not cluster-scoped (§6.3)
_UINT32_MAX = (1 << 32) - 1
_EXPORT_TYPES = ("ClusterSetIP", "Headless")
_AFFINITIES = ("ClientIP", "None")
# Kubernetes' values for the two optional Service fields an export carries (§6.4 says
# the agents refuse bad ones; the facts do not list them).
_TRAFFIC_POLICIES = ("Cluster", "Local")
_TRAFFIC_DISTRIBUTIONS = ("PreferClose", "PreferSameZone", "PreferSameNode")


class _Rejected(Exception):
    """The entry does not decode into what the agents expect."""


def identity_bounds(cluster_id: int, max_connected_clusters: int) -> tuple[int, int]:
    """The numeric identities of cluster ``cluster_id`` (§6.3): 24-bit identities,
    ``log2(maxConnected + 1)`` cluster bits on top, so the range is
    ``[c << shift, ((c + 1) << shift) - 1]`` with ``shift = 24 - bits``."""
    bits = math.log2(max_connected_clusters + 1)
    if bits != int(bits):
        raise ValueError(f"maxConnectedClusters {max_connected_clusters} is not 2^n - 1")
    shift = 24 - int(bits)
    return cluster_id << shift, ((cluster_id + 1) << shift) - 1


def _no_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not JSON")


def _document(value: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(value.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Rejected("not a JSON document") from None
    if not isinstance(doc, dict):
        raise _Rejected("not a JSON object")
    return doc


def _string(doc: dict[str, Any], field: str) -> str:
    value = doc.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Rejected(f"{field}: not a string")
    return value


def _uint32(doc: dict[str, Any], field: str) -> int:
    value = doc.get(field)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
        raise _Rejected(f"{field}: not a uint32")
    return value


def _map(doc: dict[str, Any], field: str) -> dict[str, Any]:
    value = doc.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Rejected(f"{field}: not an object")
    return value


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}\Z")
_MAPPED = bytes(10) + b"\xff\xff"


def parse_ip(text: str) -> bytes | None:
    """The 16-byte address (IPv4 mapped), or None: Go's ``net.ParseIP``."""
    if _IPV4.match(text):
        return _MAPPED + bytes(int(octet) for octet in text.split("."))
    if ":" not in text or "%" in text:
        return None
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None


def ip_text(address: bytes) -> str:
    """Go's ``net.IP.String``: IPv4 (mapped) dotted, IPv6 per RFC 5952 (the longest run
    of two or more zero groups, the first if tied, becomes ``::``; lowercase hex)."""
    if address.startswith(_MAPPED):
        return ".".join(str(octet) for octet in address[12:])
    groups = [int.from_bytes(address[i:i + 2], "big") for i in range(0, 16, 2)]
    best, best_len, i = -1, 0, 0
    while i < 8:
        j = i
        while j < 8 and groups[j] == 0:
            j += 1
        if j - i > best_len:
            best, best_len = i, j - i
        i = j + 1
    if best_len < 2:
        return ":".join(f"{g:x}" for g in groups)
    head = ":".join(f"{g:x}" for g in groups[:best])
    tail = ":".join(f"{g:x}" for g in groups[best + best_len:])
    return f"{head}::{tail}"


def _mask_ones(mask: bytes) -> int:
    """Go's ``net.IPMask.Size`` ones: the leading one bits of a canonical mask (ones,
    then only zeros), 0 for any other."""
    bits = "".join(f"{byte:08b}" for byte in mask)
    ones = len(bits) - len(bits.lstrip("1"))
    return ones if "1" not in bits[ones:] else 0


_RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
                      r"(?:\.([0-9]+))?(?:Z|([+-])([0-9]{2}):([0-9]{2}))\Z")


def _nonzero_time(text: str) -> bool:
    """A Kubernetes ``metav1.Time`` that is set: an RFC 3339 time (Go's ``time.RFC3339``
    layout, fractional seconds allowed) other than Go's zero time, 0001-01-01T00:00:00Z."""
    match = _RFC3339.match(text)
    if match is None:
        raise _Rejected("not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, sign, zone_hours, zone_minutes = match.groups()[6:]
    try:  # Go's ranges; year 0 exists in Go (a leap year, as 2000 is)
        local = dt.datetime(year or 2000, month, day, hour, minute, second)
    except ValueError:
        raise _Rejected("not a valid date and time") from None
    offset = dt.timedelta(0)
    if sign is not None:
        if int(zone_hours) > 23 or int(zone_minutes) > 59:
            raise _Rejected("time zone offset out of range")
        offset = (1 if sign == "+" else -1) * dt.timedelta(hours=int(zone_hours),
                                                           minutes=int(zone_minutes))
    if year == 0 or (fraction is not None and fraction.strip("0")):
        return True  # before year 1, or a fraction past a whole second: not the zero time
    try:
        return local - offset != dt.datetime(1, 1, 1)
    except OverflowError:  # before year 1: a time, not the zero time
        return True


def _node(key: str, doc: dict[str, Any], cluster: str, cluster_id: int) -> bool:
    return (_string(doc, "Name") == key and _string(doc, "Cluster") == cluster
            and _uint32(doc, "ClusterID") == cluster_id)


def _named(key: str, doc: dict[str, Any], cluster: str) -> bool:
    """cluster, namespace and name set, naming ``cluster`` and the ``ns/name`` key."""
    owner, namespace, name = (_string(doc, f) for f in ("cluster", "namespace", "name"))
    return (bool(owner and namespace and name) and owner == cluster
            and f"{namespace}/{name}" == key)


def _service(key: str, doc: dict[str, Any], cluster: str, cluster_id: int) -> bool:
    addresses = [*_map(doc, "frontends"), *_map(doc, "backends")]
    return (_named(key, doc, cluster) and _uint32(doc, "clusterID") == cluster_id
            and all(parse_ip(a) is not None for a in addresses))


def _service_export(key: str, doc: dict[str, Any], cluster: str) -> bool:
    if not _named(key, doc, cluster):
        return False
    stamp = doc.get("exportCreationTimestamp")
    if stamp is not None and not isinstance(stamp, str):
        raise _Rejected("exportCreationTimestamp: not a string")
    if stamp is None or not _nonzero_time(stamp):
        return False
    for field, allowed in (("internalTrafficPolicy", _TRAFFIC_POLICIES),
                           ("trafficDistribution", _TRAFFIC_DISTRIBUTIONS)):
        if doc.get(field) is not None and _string(doc, field) not in allowed:
            return False
    return (_string(doc, "type") in _EXPORT_TYPES
            and _string(doc, "sessionAffinity") in _AFFINITIES)


def _identity(key: str, value: bytes, cluster: str, cluster_id: int,
              max_connected_clusters: int) -> bool:
    # The key is the decimal ID (strconv.ParseUint: ASCII digits only).
    if not key or not all("0" <= c <= "9" for c in key):
        return False
    low, high = identity_bounds(cluster_id, max_connected_clusters)
    if not low <= int(key) <= high:
        return False
    # The value: labels "source:key=value", each followed by ";" (§2.1).
    return f"{CLUSTER_LABEL}={cluster}".encode() in value.split(b";")


def _endpoint(key: str, value: bytes, cluster_id: int, max_connected_clusters: int) -> bool:
    doc = _document(value)
    address = parse_ip(_string(doc, "IP"))
    if address is None:
        return False
    name = ip_text(address)
    mask = doc.get("Mask")
    if mask is not None:  # a prefix: the key is "IP/ones" (Go: IPIdentityPair.PrefixString)
        if not isinstance(mask, str):
            raise _Rejected("Mask: not base64 text")
        try:
            raw = base64.b64decode(mask.replace("\r", "").replace("\n", ""), validate=True)
        except (binascii.Error, ValueError):
            raise _Rejected("Mask: not base64") from None
        name = f"{name}/{_mask_ones(raw)}"
    if key != name:
        return False
    identity = _uint32(doc, "ID")
    low, high = identity_bounds(cluster_id, max_connected_clusters)
    return identity <= WELL_KNOWN_MAX or low <= identity <= high


def entry_accepted(resource: Resource, key: str, value: bytes, *, cluster: str,
                   cluster_id: int, max_connected_clusters: int) -> bool:
    """Whether the agents take this entry of remote ``cluster`` (ID ``cluster_id``);
    ``key`` is the part below the resource's prefix (node name, ``ns/name``, identity
    ID, IP or ``IP/len``)."""
    try:
        if resource is ENDPOINT_SLICES:
            return endpointslice_accepted(key, value, cluster=cluster, cluster_id=cluster_id)
        if resource is IDENTITIES:
            return _identity(key, value, cluster, cluster_id, max_connected_clusters)
        if resource is ENDPOINTS:
            return _endpoint(key, value, cluster_id, max_connected_clusters)
        doc = _document(value)
        if resource is NODES:
            return _node(key, doc, cluster, cluster_id)
        if resource is SERVICES:
            return _service(key, doc, cluster, cluster_id)
        if resource is SERVICE_EXPORTS:
            return _service_export(key, doc, cluster)
    except _Rejected:
        return False
    raise ValueError(f"no rules for {resource.name}")
