#!/usr/bin/env python3
"""Restart cost: kill -9 the daemon on a full, synced cache and start it again.

    python bench/restart.py            # 3 clusters x 100k objects = 300k cached keys
    python bench/restart.py --quick    # 3 x 10k

``--clusters`` clusters of ``--objects`` objects each (initial-sync proportions: 81 %
ipcache entries, 16 % identities, 2 % services, 1 % nodes; the per-cluster *cached*
layout, all served by one remote etcd) are synced into a fresh local etcd (the cold
start: the reference, same run).  Then, twice:

1. **unchanged**: ``kill -9`` the daemon, start it again, and time it until ``/readyz``
   says Ready (every reflector has listed its remote, diffed it against the local cache
   and found its canary).  ``--grace`` seconds later the local etcd revision is read:
   for unchanged data it must not have moved (0 local writes);
2. **changed while down**: ``kill -9``, then ``--changes`` of the remote objects are
   updated and a tenth as many deleted, then the daemon is started again.  The local
   writes are counted exactly (a watch from the revision before the restart counts
   every key put or deleted) and must equal the changes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench._batch import BatchWriter, Delete, Put
from bench._etcd import EtcdProcess
from bench._mesh import (
    ENDPOINTS,
    CpuMeter,
    Daemon,
    Results,
    Shape,
    bench_main,
    client_for,
    count_prefix,
    etcd_info,
    local_canaries,
    log,
    object_key,
    object_value,
    publish,
    wait_keys,
    workdir,
)
from clustermesh.etcd.client import EtcdClient
from clustermesh.keys import KVSTOREMESH_LOCK, KVSTOREMESH_REPLICAS

BASE = Shape(endpoints=100_000, identities=20_000, services=2_000, nodes=1_000)


# The leader election's own keys (the lock and the replicas' registrations): taken anew at
# every start, they are not writes of the cache.
ELECTION = (f"{KVSTOREMESH_LOCK}/".encode(), f"{KVSTOREMESH_REPLICAS}/".encode())


async def local_writes(client: EtcdClient, since: int) -> tuple[int, int]:
    """(revisions, keys written or deleted) in the local etcd after revision ``since``,
    the election's keys aside (revisions that touched only them are not counted)."""
    now = (await client.status()).revision
    if now == since:
        return 0, 0
    keys = 0
    revisions: set[int] = set()
    async with client.watch(b"", prefix=True, start_revision=since + 1,
                            progress_notify=False) as watch:
        async for batch in watch:
            for event in batch.events:
                if not bytes(event.kv.key).startswith(ELECTION):
                    keys += 1
                    revisions.add(event.kv.mod_revision)
            if batch.revision >= now:
                break
    return len(revisions), keys


async def restart(daemon: Daemon, local: EtcdProcess, remote: EtcdProcess,
                  client: EtcdClient, http: aiohttp.ClientSession, names: list[str],
                  grace: float, before: int) -> dict[str, Any]:
    meter = CpuMeter({"local_etcd": local.pid, "remote_etcd": remote.pid})
    meter.start()
    spawn = daemon.start()
    meter.pids["daemon"] = daemon.pid
    ready = await daemon.wait_ready(http, 300)
    cpu = meter.stop()
    cpu["daemon"] = round(daemon.cpu_seconds(), 2)
    await wait_keys(client, local_canaries(names), timeout=60, daemon=daemon)
    await asyncio.sleep(grace)
    revisions, keys = await local_writes(client, before)
    return {"ready_s": round(ready, 2), "revisions": revisions, "keys_written": keys,
            "cpu_s": cpu, "rss_mib": round(daemon.rss_mib(), 1),
            "spawn_to_ready_wall_s": round(time.monotonic() - spawn - grace, 2)}


async def run(args: argparse.Namespace) -> None:
    results = Results("restart" if not args.quick else "restart-quick", args, args.output)
    shape = BASE.scaled(args.objects)
    names = [(f"cluster{i}", i) for i in range(1, args.clusters + 1)]
    total = shape.total * len(names)
    with EtcdProcess() as remote, EtcdProcess() as local, workdir("restart") as wd:
        results.etcd = etcd_info(local)
        async with client_for(remote.client_url) as rc, client_for(local.client_url) as client, \
                aiohttp.ClientSession() as http:
            t = time.monotonic()
            for name, cid in names:
                await publish(rc, name, cid, shape, cached=True)
            log(f"remote: {len(names)} clusters x {shape.total} objects in "
                f"{time.monotonic() - t:.1f}s")
            daemon = Daemon(wd, local.client_url, max_txn_ops=args.txn_ops,
                            max_inflight=args.inflight)
            daemon.configure({n: remote.client_url for n, _ in names})
            only = [n for n, _ in names]
            try:
                base = (await client.status()).revision
                cold = await restart(daemon, local, remote, client, http, only, args.grace, base)
                cached = await count_prefix(client, b"cilium/cache/")
                assert cached == total, f"cache holds {cached} keys, expected {total}"
                log(f"cold sync of {total} keys: ready after {cold['ready_s']}s "
                    f"({cold['keys_written']} keys in {cold['revisions']} revisions)")

                daemon.kill9()
                before = (await client.status()).revision
                warm = await restart(daemon, local, remote, client, http, only, args.grace,
                                     before)
                log(f"restart on {cached} unchanged keys: ready after {warm['ready_s']}s, "
                    f"{warm['keys_written']} keys written, revision +{warm['revisions']}")

                daemon.kill9()
                name, cid = names[0]
                updated, deleted = args.changes, args.changes // 10
                ops: list[Put | Delete] = [
                    Put(object_key(ENDPOINTS, name, cid, i, cached=True),
                        object_value(ENDPOINTS, name, cid, i, "-changed"))
                    for i in range(updated)]
                ops += [Delete(object_key(ENDPOINTS, name, cid, shape.endpoints - 1 - i,
                                          cached=True)) for i in range(deleted)]
                await BatchWriter(rc, max_inflight=4).apply(ops)
                before = (await client.status()).revision
                changed = await restart(daemon, local, remote, client, http, only, args.grace,
                                        before)
                log(f"restart after {updated} updates + {deleted} deletes: ready after "
                    f"{changed['ready_s']}s, {changed['keys_written']} keys written")
                cached_after = await count_prefix(client, b"cilium/cache/")
            finally:
                daemon.stop()
    results.emit("restart_time_to_ready", warm["ready_s"], "s",
                 reference={"cold_sync_ready_s": cold["ready_s"], "target_s": 10},
                 params={"cached_keys": cached, "clusters": len(names),
                         "objects_per_cluster": shape.as_dict(), "layout": "cached",
                         "grace_s": args.grace, "cold": cold, "unchanged": warm,
                         "max_txn_ops": args.txn_ops, "max_inflight": args.inflight})
    results.emit("restart_local_writes", warm["keys_written"], "keys",
                 revisions=warm["revisions"],
                 reference={"cold_sync_keys_written": cold["keys_written"], "expected": 0})
    results.emit("restart_after_changes_local_writes", changed["keys_written"], "keys",
                 ready_s=changed["ready_s"],
                 reference={"expected": updated + deleted, "updated": updated,
                            "deleted": deleted},
                 params={"changed": changed, "cached_keys_after": cached_after})
    if warm["keys_written"] != 0:
        results.note(f"restart on unchanged data wrote {warm['keys_written']} keys")
    if changed["keys_written"] != updated + deleted:
        results.note(f"restart after changes wrote {changed['keys_written']} keys, expected "
                     f"{updated + deleted}")
    results.write()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clusters", type=int, default=3)
    p.add_argument("--objects", type=int, default=100_000, help="objects per cluster")
    p.add_argument("--changes", type=int, default=1000,
                   help="remote objects updated while the daemon is down (and a tenth deleted)")
    p.add_argument("--grace", type=float, default=3.0,
                   help="seconds after ready before the local revision is read")
    p.add_argument("--txn-ops", type=int, default=128)
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="3 x 10k objects")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.objects = min(args.objects, 10_000)
        args.changes = min(args.changes, 100)
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
