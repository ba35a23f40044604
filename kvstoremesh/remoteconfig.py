"""A remote's cluster-config: read it at the start of a session, and judge it.

``cilium/cluster-config/<name>`` is required (Cilium's ``clusterConfigRequired``):
:func:`read_cluster_config` waits for it, retrying with
:data:`~clustermesh.backoff.WAIT_FOR_DATA` while it is missing or unreadable — a
remote whose apiserver is still starting is waited for, not counted as failing.
While it waits it says why, and names the cluster-configs the remote does publish
when there are any: a config file named after the wrong cluster is the usual cause.

:func:`refusal` decides whether the config fits our mesh (the cluster ID is valid,
not ours, not claimed by another remote; the same ``maxConnectedClusters``).  A
refused remote is not reflected: the session fails with
:class:`~kvstoremesh.liveness.ConfigRefused`, whose problem the status shows.

Once a session runs, :func:`~kvstoremesh.liveness.watch_config_change` ends it if
the config changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from clustermesh.backoff import WAIT_FOR_DATA, Backoff
from clustermesh.clock import Clock
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.client import EtcdClient, prefix_range_end
from clustermesh.etcd.errors import EtcdPermissionDenied
from clustermesh.keys import CLUSTER_CONFIG_PREFIX, cluster_config_key

from .diagnostics import ClusterIds, Problem, config_problem, duplicate_id_problem

log = logging.getLogger(__name__)


async def read_cluster_config(remote: EtcdClient, *, name: str, config_path: Path,
                              clock: Clock, report: Callable[[str, Problem | None], None]
                              ) -> CiliumClusterConfig:
    """The cluster-config ``remote`` publishes for ``name``, once there is a valid one.

    Meanwhile ``report(status line, problem or None)`` says what is waited for.
    """
    key = cluster_config_key(name).encode()
    backoff = Backoff(WAIT_FOR_DATA, clock=clock)
    while True:
        resp = await remote.range(key)
        problem = None
        if resp.kvs:
            try:
                return CiliumClusterConfig.from_json(resp.kvs[0].value)
            except ValueError as exc:
                status = f"invalid cluster configuration at {key.decode()}: {exc}"
        else:
            status = f"waiting for the remote cluster configuration ({key.decode()} is missing)"
            others = await _published_config_names(remote)
            if others:
                problem = Problem(
                    "cluster-config-name", name,
                    f"the etcd configured in {config_path} publishes the cluster-config of "
                    f"{', '.join(others)}, not of {name}: name the file after the cluster "
                    "it points to")
                status += f"; {problem.message}"
        log.warning("cluster %s: %s", name, status)
        report(status, problem)
        await backoff.wait()


async def _published_config_names(remote: EtcdClient) -> list[str]:
    """Which cluster-configs the remote publishes (a diagnostic for a misnamed file).

    Cilium's ``remote`` role may read only its own cluster's key: a permission error
    here means "cannot tell", not a failed connection.
    """
    prefix = (CLUSTER_CONFIG_PREFIX + "/").encode()
    try:
        resp = await remote.range(prefix, prefix_range_end(prefix), keys_only=True, limit=10)
    except EtcdPermissionDenied:
        return []
    return [kv.key[len(prefix):].decode(errors="replace") for kv in resp.kvs]


def refusal(config: CiliumClusterConfig, *, name: str, local_id: int,
            max_connected_clusters: int, cluster_ids: ClusterIds) -> Problem | None:
    """Why remote ``name`` publishing ``config`` must not be reflected (None: it may).

    A config that is valid on its own claims its cluster ID in ``cluster_ids``, so
    that two remotes with one ID are both refused.
    """
    problem = config_problem(config, remote=name, local_id=local_id,
                             max_connected_clusters=max_connected_clusters)
    if problem is not None:
        return problem
    cluster_ids.claim(name, config.id)
    others = cluster_ids.sharing(name)
    return duplicate_id_problem(name, config.id, others) if others else None
