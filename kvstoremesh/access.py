"""The least-privilege etcd role of a KVStoreMesh replica on the etcd it caches into.

With ``kvstoreMode: external`` the replicas write into the etcd the agents already use,
next to the agents' own state (``cilium/state/``), so they should not run as root there.
What a replica reads and writes, and nothing else:

==================================================  =========  ==========================
keys                                                access     what for
==================================================  =========  ==========================
``cilium/cache/`` … end of ``cilium/kvstoremesh-``  read       the standby's one watch
``replicas/`` (a range)                                        (:mod:`kvstoremesh.standby`)
``cilium/cache/``                                   readwrite  the cached remote state
``cilium/synced/``                                  readwrite  sync canaries
``cilium/cluster-config/``                          readwrite  cached cluster-configs
``cilium/.heartbeat`` (one key)                     readwrite  ``--enable-heartbeat``,
                                                               the quorum check's read
``cilium/kvstoremesh-lock/``                        readwrite  the leader lock
``cilium/kvstoremesh-replicas/``                    readwrite  who holds which lease
==================================================  =========  ==========================

Leases (the election's session) need no permission in etcd.  :data:`REPLICA_PERMISSIONS`
is that table as data; :func:`etcdctl_commands` prints it as the commands that create the
role (the chart's README shows their output), and the tests grant exactly these to a
replica on an etcd with auth on.
"""

from __future__ import annotations

from typing import NamedTuple

from clustermesh.etcd.client import prefix_range_end
from clustermesh.keys import (
    CACHE_PREFIX,
    CLUSTER_CONFIG_PREFIX,
    HEARTBEAT_KEY,
    KVSTOREMESH_LOCK,
    KVSTOREMESH_REPLICAS,
    SYNCED_PREFIX,
)

ROLE = "kvstoremesh"


class Permission(NamedTuple):
    access: str  # "read" or "readwrite", as etcdctl spells them
    key: str
    range_end: str  # "" for the key alone


def _prefix(key: str) -> Permission:
    return Permission("readwrite", key + "/", prefix_range_end((key + "/").encode()).decode())


REPLICA_PERMISSIONS: tuple[Permission, ...] = (
    Permission("read", CACHE_PREFIX + "/",
               prefix_range_end((KVSTOREMESH_REPLICAS + "/").encode()).decode()),
    _prefix(CACHE_PREFIX),
    _prefix(SYNCED_PREFIX),
    _prefix(CLUSTER_CONFIG_PREFIX),
    Permission("readwrite", HEARTBEAT_KEY, ""),
    _prefix(KVSTOREMESH_LOCK),
    _prefix(KVSTOREMESH_REPLICAS),
)


def etcdctl_commands(*, role: str = ROLE) -> list[str]:
    """``etcdctl role add``/``grant-permission`` lines creating the role."""
    lines = [f"etcdctl role add {role}"]
    for p in REPLICA_PERMISSIONS:
        end = f" {p.range_end}" if p.range_end else ""
        lines.append(f"etcdctl role grant-permission {role} {p.access} {p.key}{end}")
    return lines
