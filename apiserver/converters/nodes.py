"""CiliumNode -> ``cilium/state/nodes/v1/<cluster>/<name>`` (``Node`` JSON).

``pkg/node/types/node.go`` ParseCiliumNode, with the local cluster name and ID.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clustermesh.keys import NODES

from .gojson import Struct, go_json
from .inputs import (
    annotation,
    as_int,
    as_list,
    as_str,
    as_str_map,
    cidr_is_v4,
    get,
    net_ip_string,
    net_ip_text,
    parse_cidr,
    parse_net_ip,
)

_WIREGUARD_PUB_KEY = ("network.cilium.io/wg-pub-key", "io.cilium.network.wg-pub-key")


def node_entries(node: Mapping[str, Any], *, cluster: str, cluster_id: int) -> dict[str, bytes]:
    """CiliumNode -> ``cilium/state/nodes/v1/<cluster>/<name>`` = ``Node`` JSON.

    ``Cluster``/``ClusterID`` are the local ones, ``Source`` is
    ``custom-resource``; pod CIDRs (``spec.ipam.podCIDRs`` then the multi-pool
    ``spec.ipam.pools.allocated[].cidrs``) fill the primary then secondary
    alloc CIDR per family; invalid IPs/CIDRs are dropped as Cilium does.
    """
    name = get(node, "metadata", "name")
    if not isinstance(name, str) or not name:
        return {}
    spec = node.get("spec")

    alloc: dict[bool, Struct | None] = {True: None, False: None}
    secondary: dict[bool, list[Struct] | None] = {True: None, False: None}
    pod_cidrs = list(as_list(get(spec, "ipam", "podCIDRs")))
    for pool in as_list(get(spec, "ipam", "pools", "allocated")):
        if isinstance(pool, Mapping):
            pod_cidrs.extend(as_list(pool.get("cidrs")))
    for text in pod_cidrs:
        cidr = parse_cidr(text)
        if cidr is None:
            continue
        v4 = cidr_is_v4(cidr)
        if alloc[v4] is None:
            alloc[v4] = cidr
        else:
            secondary[v4] = [*(secondary[v4] or []), cidr]

    addresses: list[Struct] | None = None
    for address in as_list(get(spec, "addresses")):
        if not isinstance(address, Mapping):
            continue
        addr = parse_net_ip(address.get("ip"))
        if addr is not None:
            addresses = [*(addresses or []),
                         Struct(("Type", as_str(address.get("type"))),
                                 ("IP", net_ip_string(addr)))]

    wireguard = annotation(node, *_WIREGUARD_PUB_KEY) or ""
    value = Struct(
        ("Name", name),
        ("Cluster", cluster),
        ("IPAddresses", addresses),
        ("IPv4AllocCIDR", alloc[True]),
        ("IPv4SecondaryAllocCIDRs", secondary[True]),
        ("IPv6AllocCIDR", alloc[False]),
        ("IPv6SecondaryAllocCIDRs", secondary[False]),
        ("IPv4HealthIP", net_ip_text(get(spec, "health", "ipv4"))),
        ("IPv6HealthIP", net_ip_text(get(spec, "health", "ipv6"))),
        ("IPv4IngressIP", net_ip_text(get(spec, "ingress", "ipv4"))),
        ("IPv6IngressIP", net_ip_text(get(spec, "ingress", "ipv6"))),
        ("ClusterID", cluster_id),
        ("Source", "custom-resource"),
        ("EncryptionKey", as_int(get(spec, "encryption", "key")) & 0xFF),
        ("Labels", as_str_map(get(node, "metadata", "labels"))),
        ("Annotations", as_str_map(get(node, "metadata", "annotations"))),
        ("WireguardPubKey", wireguard),
        ("BootID", as_str(get(spec, "bootid"))),
    )
    return {NODES.state_prefix(cluster) + name: go_json(value)}
