"""Mesh misconfigurations we can see from the cache, said before an agent trips on them.

* :class:`ClusterIds` — which remote claims which cluster ID.  Two remotes with
  one ID, or a remote with our own ID, are refused: their identities would
  collide in every agent.
* :func:`config_problem` — a remote cluster-config we must not use (ID out of
  range, our own ID, a different ``maxConnectedClusters``).
* :func:`pod_cidrs` / :func:`overlapping_pod_cidrs` — the Cluster Mesh guide
  requires non-conflicting PodCIDRs and nothing checks it: we read them from the
  cached nodes' ``IPv4AllocCIDR`` / ``IPv6AllocCIDR``.  :class:`PodCidrOverlaps`
  keeps that check cheap enough for every ``/readyz`` of a mesh of 511 clusters.
* :func:`expiring_certificates` — a client certificate or CA of a remote's
  config that expires within 30 days.

Each finding is a :class:`Problem`: a kind (a stable metric label), the cluster it
concerns and a sentence naming the clusters and what to fix.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.config import EtcdConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
EXPIRY_WARNING = timedelta(days=30)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # e.g. "duplicate-cluster-id", "pod-cidr-overlap"
    cluster: str
    message: str


class ClusterIds:
    """Cluster ID claims of the remotes whose cluster-config we have read."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def claim(self, name: str, cluster_id: int) -> None:
        self._ids[name] = cluster_id

    def release(self, name: str) -> None:
        self._ids.pop(name, None)

    def sharing(self, name: str) -> list[str]:
        """Other remotes claiming the same cluster ID as ``name``."""
        mine = self._ids.get(name)
        return sorted(n for n, i in self._ids.items() if i == mine and n != name)


def config_problem(config: CiliumClusterConfig, *, remote: str, local_id: int,
                   max_connected_clusters: int) -> Problem | None:
    """Why ``remote``'s cluster-config cannot be used in our mesh (None if it can)."""
    if not 0 < config.id <= max_connected_clusters:
        return Problem("invalid-cluster-id", remote,
                       f"remote cluster {remote} has cluster ID {config.id}, outside 1.."
                       f"{max_connected_clusters}: give it a valid, unique cluster ID")
    if config.id == local_id:
        return Problem("own-cluster-id", remote,
                       f"remote cluster {remote} uses our own cluster ID {local_id}: every "
                       "cluster in a mesh needs a unique ID")
    theirs = config.max_connected_clusters
    if theirs and theirs != max_connected_clusters:
        return Problem("max-connected-clusters", remote,
                       f"remote cluster {remote} is configured for maxConnectedClusters="
                       f"{theirs}, we are for {max_connected_clusters}: identity ranges "
                       "differ, use the same value in every cluster")
    return None


def duplicate_id_problem(remote: str, cluster_id: int, others: list[str]) -> Problem:
    return Problem("duplicate-cluster-id", remote,
                   f"remote cluster {remote} has cluster ID {cluster_id}, like "
                   f"{', '.join(others)}: both are refused until each has a unique ID")


def _cidr(value: object) -> Network | None:
    if not isinstance(value, Mapping):
        return None
    ip, mask = value.get("IP"), value.get("Mask")
    if not isinstance(ip, str) or not isinstance(mask, str):
        return None
    try:
        prefix = bin(int.from_bytes(base64.b64decode(mask), "big")).count("1")
        return ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    except ValueError:
        return None


def pod_cidrs(node_value: bytes) -> list[Network]:
    """The pod CIDRs (primary and secondary) of one cached node entry."""
    try:
        doc = json.loads(node_value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    if not isinstance(doc, dict):
        return []
    cidrs = [doc.get("IPv4AllocCIDR"), doc.get("IPv6AllocCIDR")]
    for field in ("IPv4SecondaryAllocCIDRs", "IPv6SecondaryAllocCIDRs"):
        extra = doc.get(field)
        if isinstance(extra, list):
            cidrs.extend(extra)
    return [n for n in map(_cidr, cidrs) if n is not None]


def overlapping_pod_cidrs(cidrs: Mapping[str, Iterable[Network]]) -> list[Problem]:
    """One problem per pair of clusters whose pod CIDRs overlap.

    Sorts every network by start address and sweeps, comparing each with the
    networks of *other* clusters still open: O(n log n) for the whole mesh.
    """
    entries = sorted(
        ((net.version, int(net.network_address), int(net.broadcast_address), cluster, net)
         for cluster, nets in cidrs.items() for net in set(nets)),
        key=lambda e: e[:4])  # by start; ties in a fixed order, whatever the input's
    found: dict[tuple[str, str], Problem] = {}
    for cluster, net, other, o_net in _meetings(entries):
        pair = (min(cluster, other), max(cluster, other))
        found.setdefault(pair, Problem(
            "pod-cidr-overlap", pair[0],
            f"pod CIDR {o_net} of cluster {other} overlaps {net} of cluster "
            f"{cluster}: PodCIDRs must not conflict across a mesh"))
    return [found[pair] for pair in sorted(found)]


def _meetings(entries: Iterable[tuple[int, int, int, str, T]]
              ) -> Iterator[tuple[str, T, str, T]]:
    """The sweep of both overlap checks: ``(ip version, start, end, cluster, item)``
    sorted by start; yields ``(cluster, item, other cluster, its item)`` whenever an
    entry starts inside the open entry (the one reaching furthest) of another cluster."""
    open_by_cluster: dict[str, tuple[int, int, T]] = {}  # cluster -> (version, end, item)
    for version, start, end, cluster, item in entries:
        for other, (o_version, o_end, o_item) in list(open_by_cluster.items()):
            if o_version != version or o_end < start:
                del open_by_cluster[other]
            elif other != cluster:
                yield cluster, item, other, o_item
        current = open_by_cluster.get(cluster)
        if current is None or current[0] != version or current[1] < end:
            open_by_cluster[cluster] = (version, end, item)


class PodCidrOverlaps:
    """:func:`overlapping_pod_cidrs` of a whole mesh, asked again whenever a cluster's
    CIDRs may have changed (every ``/readyz`` during an initial sync).

    Each cluster's networks are merged into disjoint address ranges once per version of
    them — a few ranges for a hundred nodes' CIDRs carved from one block — and a check
    sweeps only those ranges; just the pairs of clusters whose ranges meet are swept
    network by network, for the message.  Same problems, same order, as one
    :func:`overlapping_pod_cidrs` of every network.
    """

    def __init__(self) -> None:
        # cluster -> (version, its networks, its merged (ip version, start, end) ranges)
        self._clusters: dict[str, tuple[Hashable, list[Network], list[tuple[int, int, int]]]]
        self._clusters = {}
        self._found: tuple[object, list[Problem]] = (None, [])

    def check(self, versions: Mapping[str, Hashable],
              networks: Callable[[str], Iterable[Network]]) -> list[Problem]:
        """The overlaps between the clusters named by ``versions``; ``networks(name)``
        is read only for a cluster whose version differs from the last check's."""
        key = tuple(sorted(versions.items()))
        if self._found[0] == key:
            return self._found[1]
        for name in [n for n in self._clusters if n not in versions]:
            del self._clusters[name]
        for name, version in versions.items():
            cached = self._clusters.get(name)
            if cached is None or cached[0] != version:
                nets = list(set(networks(name)))
                self._clusters[name] = (version, nets, _merged_ranges(nets))
        ranges = sorted((ip, start, end, name) for name, (_, _, merged) in self._clusters.items()
                        for ip, start, end in merged)
        problems: list[Problem] = []
        for pair in _meeting_pairs(ranges):
            problems.extend(overlapping_pod_cidrs({name: self._clusters[name][1]
                                                   for name in pair}))
        self._found = (key, problems)
        return problems


def _merged_ranges(nets: Iterable[Network]) -> list[tuple[int, int, int]]:
    """The (ip version, first, last address) ranges the networks cover, disjoint."""
    merged: list[tuple[int, int, int]] = []
    for ip, start, end in sorted((net.version, int(net.network_address),
                                  int(net.broadcast_address)) for net in nets):
        if merged and merged[-1][0] == ip and start <= merged[-1][2] + 1:
            if end > merged[-1][2]:
                merged[-1] = (ip, merged[-1][1], end)
        else:
            merged.append((ip, start, end))
    return merged


def _meeting_pairs(ranges: list[tuple[int, int, int, str]]) -> list[tuple[str, str]]:
    """Pairs of clusters (in name order, sorted) with a range each that overlap, from
    ranges sorted by start; each cluster's own ranges are disjoint."""
    return sorted({(min(cluster, other), max(cluster, other)) for cluster, _, other, _
                   in _meetings((*r, None) for r in ranges)})


def expiring_certificates(config: EtcdConfig, *, remote: str, now: datetime,
                          within: timedelta = EXPIRY_WARNING) -> list[Problem]:
    """Each certificate of ``config`` expired at ``now`` or expiring within ``within``."""
    problems: list[Problem] = []
    for field, path in (("cert-file", config.cert_file), ("trusted-ca-file",
                                                           config.trusted_ca_file)):
        if path is None:
            continue
        try:
            certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError):
            continue  # unreadable files are reported by the connection itself
        expiry = certificate.not_valid_after_utc
        if expiry <= now:
            problems.append(Problem("certificate-expiry", remote,
                                    f"cluster {remote}: {field} {path} expired on "
                                    f"{expiry:%Y-%m-%d}: renew it"))
        elif expiry - now <= within:
            problems.append(Problem("certificate-expiry", remote,
                                    f"cluster {remote}: {field} {path} expires on "
                                    f"{expiry:%Y-%m-%d} (in {(expiry - now).days} days): "
                                    "renew it before then"))
    return problems
