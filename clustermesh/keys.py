"""The etcd key layout of Cilium Cluster Mesh, in one place.

Constants follow Cilium's ``pkg/kvstore`` (facts §1).  Resources are data:
:data:`RESOURCES` lists, for each kind of object a cluster publishes, where a
clustermesh-apiserver writes it (``state``) and where a KVStoreMesh caches a
remote cluster's copy of it (``cache``).  Every prefix handed to a watch or a
prefix delete ends in ``/``, so ``cluster1`` never matches ``cluster10``.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE = "cilium"
STATE_PREFIX = "cilium/state"
CACHE_PREFIX = "cilium/cache"
CLUSTER_CONFIG_PREFIX = "cilium/cluster-config"
SYNCED_PREFIX = "cilium/synced"
HEARTBEAT_KEY = "cilium/.heartbeat"
# KVStoreMesh's leader lock (upstream's name; etcd's Go concurrency.Mutex layout below
# it: one empty key per candidate, named after its lease in hex) and, ours, one key per
# replica saying who holds each of those leases.
KVSTOREMESH_LOCK = "cilium/kvstoremesh-lock"
KVSTOREMESH_REPLICAS = "cilium/kvstoremesh-replicas"


def state_to_cache_prefix(prefix: str) -> str:
    """Cilium's ``StateToCachePrefix``: ``cilium/state...`` becomes ``cilium/cache...``."""
    if prefix.startswith(STATE_PREFIX):
        return CACHE_PREFIX + prefix[len(STATE_PREFIX):]
    return prefix


def cluster_config_key(cluster: str) -> str:
    return f"{CLUSTER_CONFIG_PREFIX}/{cluster}"


def synced_prefix(cluster: str) -> str:
    """Prefix of every sync canary of ``cluster`` (with the trailing slash)."""
    return f"{SYNCED_PREFIX}/{cluster}/"


@dataclass(frozen=True, slots=True)
class Resource:
    """One kind of object, e.g. nodes.

    ``base`` is the version root (``cilium/state/nodes/v1``): canaries are named
    after it.  ``per_cluster`` says whether the cluster name is a path segment
    under the base in the *state* layout; identities and the ipcache are not
    (``identities/v1/id/<ID>``, ``ip/v1/default/<IP>``) and get the cluster
    segment only in the cache layout.
    """

    name: str  # the reflector name Cilium uses (metrics, logs, status)
    base: str
    state_subpath: str  # below base, in the state layout; "{cluster}" is substituted
    cache_subpath: str  # below the cache base, in the cache layout

    def state_prefix(self, cluster: str) -> str:
        """Where the owning cluster's apiserver writes (ends in ``/``)."""
        return f"{self.base}/{self.state_subpath.format(cluster=cluster)}/"

    @property
    def cache_base(self) -> str:
        return state_to_cache_prefix(self.base)

    def cache_prefix(self, cluster: str) -> str:
        """Where a KVStoreMesh caches ``cluster``'s objects (ends in ``/``)."""
        return f"{self.cache_base}/{self.cache_subpath.format(cluster=cluster)}/"

    def remote_prefix(self, cluster: str, *, cached: bool) -> str:
        """What to watch on a remote: its state, or its cache if it is a KVStoreMesh."""
        return self.cache_prefix(cluster) if cached else self.state_prefix(cluster)

    def remote_canary(self, cluster: str, *, cached: bool) -> str:
        """The canary a remote writes when its copy of this resource is complete."""
        return f"{SYNCED_PREFIX}/{cluster}/{self.cache_base if cached else self.base}"

    def state_canary(self, cluster: str) -> str:
        return self.remote_canary(cluster, cached=False)

    def cache_canary(self, cluster: str) -> str:
        """The canary a KVStoreMesh writes once its cache of ``cluster`` is complete."""
        return self.remote_canary(cluster, cached=True)


NODES = Resource("nodes", "cilium/state/nodes/v1", "{cluster}", "{cluster}")
SERVICES = Resource("services", "cilium/state/services/v1", "{cluster}", "{cluster}")
SERVICE_EXPORTS = Resource("service exports", "cilium/state/serviceexports/v1", "{cluster}",
                           "{cluster}")
IDENTITIES = Resource("identities", "cilium/state/identities/v1", "id", "{cluster}/id")
ENDPOINTS = Resource("endpoints", "cilium/state/ip/v1", "default", "{cluster}")
# "Service v2" (Cilium main): one zstd-compressed protobuf value per Kubernetes EndpointSlice.
ENDPOINT_SLICES = Resource("endpointslices", "cilium/state/endpointslices/v1", "{cluster}",
                           "{cluster}")

# Cilium's drain order is alphabetical by reflector name; we keep that order.  Not every
# remote exports every resource: kvstoremesh.resources decides, from its cluster-config.
RESOURCES: tuple[Resource, ...] = (ENDPOINTS, ENDPOINT_SLICES, IDENTITIES, NODES,
                                   SERVICE_EXPORTS, SERVICES)


def metrics_scope(key: str) -> str:
    """The ``scope`` label Cilium gives a key in its kvstore metrics (facts §5).

    ``cilium/{state,cache}/<res>/<ver>/...`` -> ``<res>/<ver>``;
    ``cilium/synced/<cluster>/<key>`` -> ``synced/<scope of key>`` (or ``synced``);
    any other ``cilium/<name>...`` -> ``<name>`` without a leading dot; else ``other``.
    """
    parts = key.split("/")
    if len(parts) < 2 or parts[0] != BASE or not parts[1]:
        return "other"
    if parts[1] in ("state", "cache"):
        return "/".join(parts[2:4]) if len(parts) >= 4 else "other"
    if parts[1] == "synced":
        inner = "/".join(parts[3:])
        inner_scope = metrics_scope(inner) if inner else "other"
        return f"synced/{inner_scope}" if inner_scope != "other" else "synced"
    return parts[1].lstrip(".")


def cluster_of(key: str) -> str | None:
    """The cluster a cache, canary or cluster-config key belongs to (None for others)."""
    parts = key.split("/")
    if len(parts) >= 5 and parts[:2] == [BASE, "cache"]:
        return parts[4]
    if len(parts) >= 3 and parts[0] == BASE and parts[1] in ("synced", "cluster-config"):
        return parts[2]
    return None


QueueLabels = tuple[str, str | None]


def queue_labels(key: bytes) -> QueueLabels:
    """``(metrics_scope, cluster_of)`` of a key, as the sync-queue gauge counts it."""
    text = key.decode(errors="replace")
    return metrics_scope(text), cluster_of(text)


def prefix_queue_labels(prefix: bytes) -> QueueLabels | None:
    """The :func:`queue_labels` of every key under ``prefix``, if they are all the same:
    under ``cilium/state/<res>/<ver>/`` and ``cilium/cache/<res>/<ver>/<cluster>/`` (the
    labels use no later segment); None for a shorter prefix."""
    parts = prefix.decode(errors="replace").split("/")
    if parts[-1] != "" or parts[0] != BASE or len(parts) < 5:
        return None
    if parts[1] == "state" or (parts[1] == "cache" and len(parts) >= 6):
        return queue_labels(prefix + b"_")
    return None
