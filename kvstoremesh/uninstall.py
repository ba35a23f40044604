"""``kvstoremesh uninstall``: remove everything KVStoreMesh cached from the etcd it cached into.

With ``kvstoreMode: external`` the cache lives in the agents' etcd, so deleting the
chart's objects would leave every remote cluster's data there, and agents would go on
seeing clusters nobody keeps up to date.  The chart runs this command as a post-delete
hook, with the daemon's own flags:

1. it takes the leader lock (so it waits for a replica still stopping, and any write of
   one that is not is fenced off), like a replica, under the identity ``uninstall``;
2. it removes every cluster the cache holds but the local one, in upstream's drain
   order (cluster-config first, then canaries and cache prefixes), with no grace: the
   mesh itself is going away; through the same fenced writes as the daemon;
3. it releases the lock and exits 0 (1 if a removal failed: the hook is retried).

The local cluster's own keys (``cilium/state/``, its cluster-config, its canaries) and the
heartbeat are left alone.
"""

from __future__ import annotations

import asyncio
import logging

from clustermesh.election import LeaderElection
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import EtcdError
from clustermesh.etcd.fence import Fence
from clustermesh.syncwriter import SyncWriter

from .options import MeshOptions
from .remote import RemoteCluster
from .removal import orphaned_clusters

log = logging.getLogger(__name__)


async def uninstall(options: MeshOptions) -> int:
    config = load_etcd_config(options.local_config)
    async with EtcdClient(config, name="local etcd") as local, \
            EtcdClient(config, name="local etcd (leader election)") as lock_client:
        election = LeaderElection(lock_client, identity="uninstall",
                                  ttl=int(options.leader_election_lease_ttl))
        log.info("taking the leader lock (waits for replicas still stopping)")
        term = await election.campaign()
        fence = Fence(on_lost=election.end_session)
        fence.hold(term.key, term.revision)
        local.fence = fence
        writer = SyncWriter(local, max_txn_ops=options.max_txn_ops,
                            max_request_bytes=options.max_request_bytes)
        writer.start()
        failed = 0
        try:
            names = await orphaned_clusters(local, keep={options.cluster_name})
            for name in names:
                remote = RemoteCluster(name=name, config_path=options.config_dir / name,
                                       local=local, writer=writer, options=options)
                try:
                    await remote.delete_cached_config()
                    await remote.drain()
                    log.info("cluster %s: cached data removed", name)
                except EtcdError as exc:
                    failed += 1
                    log.error("cluster %s: removing its cached data failed: %s", name, exc)
        finally:
            await writer.stop()
            await election.resign()
        log.info("removed %d of %d cached clusters", len(names) - failed, len(names))
        return 1 if failed else 0


def run(options: MeshOptions) -> int:
    return asyncio.run(uninstall(options))
