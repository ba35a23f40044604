"""Settings of a KVStoreMesh instance, parsed from Cilium's flags by :mod:`kvstoremesh.main`.

The defaults here are the only copy: the flags take theirs from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clustermesh.clusterconfig import DEFAULT_CLUSTER_NAME


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshOptions:
    cluster_name: str = DEFAULT_CLUSTER_NAME
    cluster_id: int = 0
    max_connected_clusters: int = 255
    config_dir: Path
    local_config: Path
    health_port: int = 9880  # upstream's default; Cilium's chart passes 9881
    prometheus_serve_addr: str = ""
    api_serve_addr: str = "localhost:9889"
    per_cluster_ready_timeout: float = 15.0
    global_ready_timeout: float = 600.0
    cache_ttl: float = 0.0
    removal_grace: float = 180.0
    heartbeat_timeout: float = 120.0
    status_check_interval: float = 30.0
    config_poll_interval: float = 1.0
    qps: float = 0.0
    bootstrap_qps: float = 0.0
    max_inflight: int = 4
    max_txn_ops: int = 128
    max_request_bytes: int = 1536 * 1024
    page_size: int = 5000
    validate_remote_data: bool = True
    # Drop-in flags of upstream's kvstoremesh that have a meaning for us.
    enable_heartbeat: bool = False  # write cilium/.heartbeat into the local etcd every minute
    disable_drain_on_disconnection: bool = False  # keep a removed remote's cached data
    max_consecutive_quorum_errors: int = 2  # local etcd status checks failing in a row
    controller_group_metrics: tuple[str, ...] = ()  # "all", or group names
    # Leader election on the local etcd (upstream's LockLeaseTTL; our identity: the pod
    # name, which is the host name in Kubernetes; "" means that).
    leader_election_lease_ttl: float = 25.0
    leader_election_identity: str = ""
    debug: bool = False
