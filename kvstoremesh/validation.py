"""Validate remote entries before they reach the cache — the checks agents apply.

Upstream KVStoreMesh copies remote bytes blindly and every agent filters them
(facts §3.3, §6.4).  We apply the agents' rules once, at the cache, so that a
broken or hostile remote cannot reach any agent.  :func:`check_entry` returns
``None`` for an acceptable entry and a short, stable reason otherwise (the
reason is a metric label and appears in status, so it must not contain data).

The rules, per resource, for an entry of remote cluster ``C`` with ID ``I``:

* nodes — JSON object; ``Name`` equals the key; ``Cluster`` equals ``C``;
  ``ClusterID`` equals ``I``;
* services — JSON object; ``cluster``/``namespace``/``name`` present, equal to
  ``C`` and to the ``<namespace>/<name>`` key; ``clusterID`` equals ``I``;
  frontend and backend keys are IP addresses;
* service exports — JSON object; cluster, namespace, name present and equal to
  ``C`` and the key; a non-zero export timestamp; ``type`` ClusterSetIP or
  Headless; ``sessionAffinity`` ClientIP or None;
* identities — the key is a numeric ID inside ``C``'s range for the mesh's
  ``maxConnectedClusters``; the label string carries
  ``k8s:io.cilium.k8s.policy.cluster=C``;
* endpoints (ipcache) — the key is an IP or ``IP/len`` and equals the value's
  ``IP`` (+ mask); JSON object; ``ID`` inside ``C``'s range or below 256;
* endpointslices — not JSON but a zstd-compressed protobuf
  ``ClusterEndpointSlice`` (facts: apiserver-newest §4.5), checked by
  :func:`clustermesh.endpointslice.check_value`: it decompresses within the agents'
  16 MiB cap, decodes, names ``C``, ``I`` and the ``<namespace>/<name>`` key, and
  carries IPv4/IPv6 addresses of its address type.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
from collections.abc import Callable
from typing import Any

import msgspec

from clustermesh import endpointslice
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IDENTITIES,
    NODES,
    SERVICE_EXPORTS,
    SERVICES,
    Resource,
)

CLUSTER_LABEL = "k8s:io.cilium.k8s.policy.cluster"
RESERVED_IDENTITY_MAX = 255
# msgspec reads an ipcache entry in a third of json.loads' time (bench/README.md).
_decode = msgspec.json.Decoder().decode


def identity_range(cluster_id: int, max_connected_clusters: int) -> tuple[int, int]:
    """The numeric identities cluster ``cluster_id`` may allocate (facts §6.3)."""
    shift = 24 - (max_connected_clusters + 1).bit_length() + 1
    return cluster_id << shift, ((cluster_id + 1) << shift) - 1


def _json_object(value: bytes) -> dict[str, Any] | None:
    try:
        doc = _decode(value)
    except (msgspec.DecodeError, RecursionError):
        # msgspec refuses some documents json accepts (NaN, Infinity, lone surrogates,
        # huge exponents, deep nesting, BOMs and other encodings): json decides those.
        # What msgspec accepts, it reads as json does (ints of any size, last duplicate
        # key wins), so the verdicts are json's (tests/test_validation_json.py).
        return _stdlib_json_object(value)
    return doc if isinstance(doc, dict) else None


def _stdlib_json_object(value: bytes) -> dict[str, Any] | None:
    try:
        if value[:1] == b"{" and value[1:2] != b"\x00":
            # What json.loads(bytes) does for UTF-8 (no BOM, no UTF-16/32 NULs), without
            # its encoding detection.
            doc = json.loads(value.decode("utf-8", "surrogatepass"))
        else:
            doc = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _is_ipv4(text: str) -> bool:
    """A fast yes for dotted-quad IPv4 (~0.2 us instead of ~2.7 us for ipaddress).

    glibc's inet_pton accepts a subset of what ``ipaddress`` accepts as IPv4 (four
    decimal octets up to 255, no leading zeros): a False here means "ask ipaddress".
    """
    try:
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        return False
    return True


def _is_ip(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    if _is_ipv4(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_node(key: str, doc: dict[str, Any], cluster: str, cluster_id: int) -> str | None:
    if doc.get("Name") != key:
        return "name-mismatch"
    if doc.get("Cluster") != cluster:
        return "cluster-mismatch"
    if doc.get("ClusterID") != cluster_id:
        return "cluster-id-mismatch"
    return None


def _check_namespaced(key: str, doc: dict[str, Any], cluster: str) -> str | None:
    """A service's or service export's ``cluster``, ``namespace`` and ``name`` fields:
    present, naming this cluster, and ``<namespace>/<name>`` equal to the key."""
    for field in ("cluster", "namespace", "name"):
        if not isinstance(doc.get(field), str) or not doc[field]:
            return f"missing-{field}"
    if doc["cluster"] != cluster:
        return "cluster-mismatch"
    if f"{doc['namespace']}/{doc['name']}" != key:
        return "name-mismatch"
    return None


def _check_service(key: str, doc: dict[str, Any], cluster: str, cluster_id: int
                   ) -> str | None:
    if (problem := _check_namespaced(key, doc, cluster)) is not None:
        return problem
    if doc.get("clusterID") != cluster_id:
        return "cluster-id-mismatch"
    for field in ("frontends", "backends"):
        addresses = doc.get(field) or {}
        if not isinstance(addresses, dict) or not all(_is_ip(a) for a in addresses):
            return f"invalid-{field}"
    return None


_EXPORT_TYPES = {"ClusterSetIP", "Headless"}
_AFFINITIES = {"ClientIP", "None"}


def _check_service_export(key: str, doc: dict[str, Any], cluster: str, _id: int
                          ) -> str | None:
    if (problem := _check_namespaced(key, doc, cluster)) is not None:
        return problem
    stamp = doc.get("exportCreationTimestamp")
    if not isinstance(stamp, str) or not stamp or stamp.startswith("0001-01-01"):
        return "missing-timestamp"
    if doc.get("type") not in _EXPORT_TYPES:
        return "invalid-type"
    if doc.get("sessionAffinity") not in _AFFINITIES:
        return "invalid-session-affinity"
    return None


def check_identity(key: str, value: bytes, cluster: str, bounds: tuple[int, int]
                   ) -> str | None:
    """``bounds``: the cluster's :func:`identity_range`."""
    # ASCII digits only, as Go's ParseUint (str.isdigit also takes "²" and other scripts,
    # which int() then refuses or reads as a number the agents would not).
    if not (key.isascii() and key.isdigit()):
        return "invalid-id"
    low, high = bounds
    if not low <= int(key) <= high:
        return "id-out-of-range"
    try:
        labels = value.decode()
    except UnicodeDecodeError:
        return "invalid-labels"
    if f"{CLUSTER_LABEL}={cluster}" not in labels.split(";"):
        return "cluster-label-mismatch"
    return None


def check_endpoint(key: str, value: bytes, cluster: str, bounds: tuple[int, int]
                   ) -> str | None:
    """``bounds``: the cluster's :func:`identity_range`."""
    network = None
    if "/" in key or not _is_ipv4(key):
        try:
            network = ipaddress.ip_network(key, strict=True) if "/" in key else None
            address = network.network_address if network else ipaddress.ip_address(key)
        except ValueError:
            return "invalid-key"
    doc = _json_object(value)
    if doc is None:
        return "invalid-json"
    ip = doc.get("IP")
    # The common case, a plain IP key spelled exactly like the value's IP, needs no parsing.
    if network is not None or ip != key:
        if network is None:
            address = ipaddress.ip_address(key)
        if not _is_ip(ip) or ipaddress.ip_address(ip) != address:
            return "key-mismatch"
    if network is not None:
        mask = doc.get("Mask")
        try:
            prefix = bin(int.from_bytes(base64.b64decode(mask or ""), "big")).count("1")
        except (ValueError, TypeError):
            return "key-mismatch"
        if prefix != network.prefixlen:
            return "key-mismatch"
    identity = doc.get("ID")
    if not isinstance(identity, int) or isinstance(identity, bool):
        return "invalid-id"
    low, high = bounds
    if not (0 <= identity <= RESERVED_IDENTITY_MAX or low <= identity <= high):
        return "id-out-of-range"
    return None


_JSON_CHECKS: dict[Resource, Callable[[str, dict[str, Any], str, int], str | None]] = {
    NODES: _check_node,
    SERVICES: _check_service,
    SERVICE_EXPORTS: _check_service_export,
}


Validator = Callable[[str, bytes], str | None]


def validator(resource: Resource, *, cluster: str, cluster_id: int,
              max_connected_clusters: int) -> Validator:
    """The rules of ``resource`` bound to one remote cluster: ``(key, value)`` -> why the
    entry must not be cached (None: it is fine).  What a reflector calls for every entry,
    so everything that does not depend on the entry is worked out here, once.

    ``key`` is the part of the key below the resource's prefix for ``cluster``
    (a node name, ``ns/name``, an identity ID, an IP).
    """
    if resource is IDENTITIES or resource is ENDPOINTS:
        check = check_identity if resource is IDENTITIES else check_endpoint
        bounds = identity_range(cluster_id, max_connected_clusters)

        def check_ranged(key: str, value: bytes) -> str | None:
            return check(key, value, cluster, bounds)
        return check_ranged
    if resource is ENDPOINT_SLICES:  # zstd, not JSON: never handed to the JSON parser
        def check_slice(key: str, value: bytes) -> str | None:
            return endpointslice.check_value(key, value, cluster=cluster,
                                             cluster_id=cluster_id)
        return check_slice
    rules = _JSON_CHECKS[resource]

    def check_json(key: str, value: bytes) -> str | None:
        doc = _json_object(value)
        return "invalid-json" if doc is None else rules(key, doc, cluster, cluster_id)
    return check_json


def check_entry(resource: Resource, key: str, value: bytes, *, cluster: str, cluster_id: int,
                max_connected_clusters: int) -> str | None:
    """:func:`validator`'s verdict on one entry."""
    return validator(resource, cluster=cluster, cluster_id=cluster_id,
                     max_connected_clusters=max_connected_clusters)(key, value)
