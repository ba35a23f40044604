"""Reading the converters' inputs: Kubernetes fields and IP addresses, as Go reads them.

The inputs are plain dicts that may be malformed, so every accessor tolerates a
missing level or a wrong type and answers with Go's zero value (:func:`get`,
:func:`as_str`, :func:`as_int`, :func:`as_list`, :func:`as_str_map`,
:func:`annotation`).  The IP helpers parse and print addresses as Go's ``net``
(``net.ParseIP``, ``net.IP.String``, ``net.ParseCIDR``) and ``netip`` packages do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from .gojson import Struct


def get(obj: Any, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, or None as soon as a level is missing."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def as_int(value: Any) -> int:
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


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def as_str_map(value: Any) -> dict[str, str] | None:
    """A ``map[string]string`` field: None (Go nil) when absent, else a copy."""
    if not isinstance(value, Mapping):
        return None
    return {str(k): v if isinstance(v, str) else str(v) for k, v in value.items()}


def annotation(obj: Mapping[str, Any] | None, *keys: str) -> str | None:
    """Cilium's ``annotation.Get``: the value of the first key present, else None."""
    annotations = get(obj, "metadata", "annotations")
    if not isinstance(annotations, Mapping):
        return None
    for key in keys:
        if key in annotations:
            value = annotations[key]
            return value if isinstance(value, str) else str(value)
    return None


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_net_ip(text: Any) -> IPAddress | None:
    """Go's ``net.ParseIP`` (no zones, no leading zeros in IPv4)."""
    if not isinstance(text, str) or not text or "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def net_ip_string(addr: IPAddress) -> str:
    """Go's ``net.IP.String``: IPv4-mapped IPv6 addresses print as IPv4."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def net_ip_text(text: Any) -> str:
    """``net.ParseIP(text)`` marshalled: the canonical form, ``""`` if invalid."""
    addr = parse_net_ip(text)
    return "" if addr is None else net_ip_string(addr)


def netip_string(text: Any) -> str | None:
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


def parse_cidr(text: Any) -> Struct | None:
    """Go's ``net.ParseCIDR`` network as a ``cidr.CIDR`` ({IP, Mask}), or None."""
    if not isinstance(text, str):
        return None
    addr_text, sep, prefix_text = text.partition("/")
    if not sep or not prefix_text.isascii() or not prefix_text.isdigit():
        return None
    addr = parse_net_ip(addr_text)
    if addr is None:
        return None
    bits = 32 if isinstance(addr, ipaddress.IPv4Address) else 128
    prefix = int(prefix_text)
    if prefix > bits:
        return None
    network = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    mask = network.netmask.packed
    return Struct(("IP", net_ip_string(network.network_address)), ("Mask", mask))


def cidr_is_v4(cidr: Struct) -> bool:
    """``IP.To4() != nil``: the network address prints as IPv4 (also IPv4-mapped)."""
    return ":" not in cidr.fields[0][1]
