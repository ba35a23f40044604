"""What a command asks about a running mesh: one :class:`Target` per cluster.

A target names a cluster's KVStoreMesh status API (several replicas' comma separated)
and, when known, what else says something about it: the remotes its configuration
lists, notes on its processes (the local mesh's records) and the metrics URL of each
of its processes.  ``clustermesh status`` and the live view (``clustermesh dashboard``)
both read targets, which is why they live here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .clusterdir import ClusterDir

__all__ = ["Target", "targets_from_dirs"]


@dataclass
class Target:
    name: str
    api: str  # HOST:PORT of the KVStoreMesh status API
    cluster_id: int | None = None
    configured: list[str] | None = None  # remote names from the config, when known
    notes: list[str] = field(default_factory=list)  # e.g. "etcd not running"
    metrics: dict[str, str] | None = None  # process name -> metrics URL, when known


def targets_from_dirs(dirs: list[ClusterDir]) -> list[Target]:
    targets = []
    for d in dirs:
        if not d.kvstoremesh_api:
            raise ValueError(f"{d.path}: cluster {d.name} records no KVStoreMesh status API "
                             "address (kvstoremeshApi in cluster.yaml); pass "
                             f"--kvstoremesh-api {d.name}=HOST:PORT instead")
        targets.append(Target(name=d.name, api=d.kvstoremesh_api, cluster_id=d.id,
                              configured=[r.name for r in d.remotes]))
    return targets
