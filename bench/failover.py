#!/usr/bin/env python3
"""Failover: two KVStoreMesh replicas on a 3-member etcd holding 300k cached keys.

    python bench/failover.py            # 3 clusters x 100k objects = 300k cached keys
    python bench/failover.py --quick    # 3 x 10k, 1 round

One remote etcd serves ``--clusters`` clusters of ``--objects`` objects (the cached
layout of bench/restart.py); the destination is a 3-member etcd cluster, and two
replicas (``--leader-election-lease-ttl``, default 5s) run on it.  Replica A syncs the
cache cold; replica B starts and becomes a warm standby.  Then, ``--rounds`` times each,
alternating which replica leads:

* **graceful**: SIGTERM the leader (a rolling update); the standby takes over;
* **crash**: ``kill -9`` the leader; the standby takes over once the lease expires;

and the stopped replica is started again as the next standby.  Each takeover is timed
from the signal to *leading* (the lock's owner in etcd is the standby) and to *ready*
(its status API says every remote ready), and an agent-like watcher on ``cilium/cache/``
counts the events an agent would receive; the writes of the new leader are counted by a
watch of the whole keyspace but the election's own keys.

References, in the same run:

* **restart**: with the standby stopped, ``kill -9`` the leader and start it again (what
  bench/restart.py measures): the issue's bound for ready after a takeover is 1.2x it;
* **upstream**: the takeover of upstream's KVStoreMesh, emulated: an in-process copier
  lists every remote cluster and rewrites every cached key, canary and
  cluster-config under a new lease (upstream's new leader starts from empty memory and
  rewrites what it mirrors), timed from the same crash to the last write, with the
  same agent-like watcher counting the events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench._batch import BatchWriter, Put
from bench._etcd import EtcdCluster, EtcdProcess
from bench._mesh import (
    Daemon,
    Results,
    Shape,
    bench_main,
    client_for,
    count_prefix,
    local_canaries,
    log,
    median,
    publish,
    wait_keys,
    workdir,
)
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.election import lock_holder
from clustermesh.etcd.client import EtcdClient, prefix_range_end
from clustermesh.etcd.watch import Watch
from clustermesh.keys import (
    KVSTOREMESH_LOCK,
    KVSTOREMESH_REPLICAS,
    RESOURCES,
    cluster_config_key,
)

BASE = Shape(endpoints=100_000, identities=20_000, services=2_000, nodes=1_000)
LOCK = (KVSTOREMESH_LOCK + "/").encode()
ELECTION = (LOCK, (KVSTOREMESH_REPLICAS + "/").encode())
CACHE = b"cilium/cache/"


class Events:
    """Events on ``prefix`` of the destination (all keys with ``prefix=b""``), the
    election's own keys aside, from when it starts until :meth:`count` is called."""

    def __init__(self, client: EtcdClient, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self.seen = 0
        self.last_revision = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Events:
        start = (await self.client.range(b"\x00", b"\x00", count_only=True)).header.revision
        end = prefix_range_end(self.prefix) if self.prefix else b"\x00"
        watch = Watch(self.client, key=self.prefix or b"\x00", range_end=end,
                      start_revision=start + 1, prev_kv=False, progress_notify=False)

        async def run() -> None:
            async with watch:
                async for batch in watch:
                    self.seen += sum(1 for e in batch.events
                                     if not bytes(e.kv.key).startswith(ELECTION))
                    self.last_revision = batch.revision

        self._task = asyncio.create_task(run())
        return self

    async def count(self, *, settle: float) -> int:
        """The events seen, once ``settle`` s passed without one."""
        while True:
            before = self.seen
            await asyncio.sleep(settle)
            if self.seen == before:
                break
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.seen


async def until(check: Any, what: str, timeout: float = 300.0) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.02)
    return time.monotonic()


async def all_ready(daemon: Daemon, http: aiohttp.ClientSession, count: int) -> bool:
    daemon.check_alive()
    try:
        models = await daemon.status(http)
    except (aiohttp.ClientError, OSError, ValueError):
        return False
    return len(models) == count and all(m.get("ready") for m in models)


async def standby_ready(daemon: Daemon, http: aiohttp.ClientSession) -> bool:
    daemon.check_alive()
    return await daemon.ready(http)


class Replicas:
    def __init__(self, wd: Path, dest: EtcdCluster, remote_url: str, names: list[str],
                 args: argparse.Namespace) -> None:
        self.names = names
        self.daemons: dict[str, Daemon] = {}
        for identity in ("a", "b"):
            daemon = Daemon(wd / identity, dest.client_urls[0], max_txn_ops=args.txn_ops,
                            max_inflight=args.inflight, extra_args=[
                                "--leader-election-identity", identity,
                                "--leader-election-lease-ttl", f"{args.lease_ttl}s"])
            # Every member, as a Kubernetes etcd client config would list them.
            (daemon.workdir / "local.yaml").write_text(
                "endpoints:\n" + "".join(f"- {u}\n" for u in dest.client_urls))
            daemon.configure({n: remote_url for n in names})
            self.daemons[identity] = daemon

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()


async def takeover(kind: str, replicas: Replicas, leader: str, client: EtcdClient,
                   http: aiohttp.ClientSession, settle: float) -> dict[str, Any]:
    standby = "b" if leader == "a" else "a"
    old, new = replicas.daemons[leader], replicas.daemons[standby]
    agent = await Events(client, CACHE).start()
    writes = await Events(client, b"").start()
    t0 = time.monotonic()
    if kind == "crash":
        old.kill9()
    else:
        old.stop()

    async def leading() -> bool:
        new.check_alive()
        holder = await lock_holder(client)
        return holder is not None and holder.identity == standby

    t_leading = await until(leading, f"{standby} leading")
    t_ready = await until(lambda: all_ready(new, http, len(replicas.names)), f"{standby} ready")
    record = {"kind": kind, "new_leader": standby,
              "to_leading_s": round(t_leading - t0, 3), "to_ready_s": round(t_ready - t0, 3),
              "agent_events": await agent.count(settle=settle),
              "writes": await writes.count(settle=0.0)}
    log(f"{kind} takeover by {standby}: leading after {record['to_leading_s']}s, ready after "
        f"{record['to_ready_s']}s, {record['writes']} writes, {record['agent_events']} "
        "events on cilium/cache/")
    old.start()
    await until(lambda: standby_ready(old, http), f"{leader} back as a standby")
    return record


async def upstream_takeover(client: EtcdClient, remote: EtcdClient, names: list[str],
                            lease_ttl: int, settle: float) -> dict[str, Any]:
    """What upstream's new leader does: start from empty memory, list every remote and
    write everything it mirrors under its own lease."""
    agent = await Events(client, CACHE).start()
    t0 = time.monotonic()
    lease = await client.lease_grant(lease_ttl)
    keepalive = asyncio.create_task(client.keep_lease_alive(lease, lease_ttl))
    writer = BatchWriter(client, max_inflight=4)
    written = 0
    for name in names:
        config = CiliumClusterConfig(id=names.index(name) + 1, synced_canaries=True,
                                     max_connected_clusters=255, cached=True)
        ops: list[Put] = [Put(cluster_config_key(name).encode(),
                              config.as_cached().to_json(), lease)]
        for resource in RESOURCES:
            source = resource.cache_prefix(name).encode()
            async for page, _ in remote.range_pages(source):
                ops.extend(Put(kv.key, kv.value, lease) for kv in page)
            ops.append(Put(resource.cache_canary(name).encode(), b"2026-12-02T00:00:00Z",
                           lease))
        await writer.apply(ops)
        written += len(ops)
    done = time.monotonic()
    keepalive.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keepalive
    record = {"kind": "upstream (rewrite everything)", "to_ready_s": round(done - t0, 3),
              "writes": written, "agent_events": await agent.count(settle=settle)}
    log(f"upstream-style takeover: all written after {record['to_ready_s']}s, "
        f"{written} writes, {record['agent_events']} events on cilium/cache/")
    await client.lease_revoke(lease)  # its keys go with it: the cache is ours again
    return record


@contextlib.asynccontextmanager
async def clients(dest: EtcdCluster, remote: EtcdProcess) -> AsyncIterator[
        tuple[EtcdClient, EtcdClient, aiohttp.ClientSession]]:
    async with client_for(remote.client_url) as rc, client_for(dest.client_urls[0]) as dc, \
            aiohttp.ClientSession() as http:
        yield rc, dc, http


async def run(args: argparse.Namespace) -> None:
    results = Results("failover" if not args.quick else "failover-quick", args, args.output)
    shape = BASE.scaled(args.objects)
    names = [f"cluster{i}" for i in range(1, args.clusters + 1)]
    total = shape.total * len(names)
    with EtcdProcess() as remote, EtcdCluster(3) as dest, workdir("failover") as wd:
        results.etcd = {"version": dest.version, "members": 3}
        async with clients(dest, remote) as (rc, client, http):
            for i, name in enumerate(names, start=1):
                await publish(rc, name, i, shape, cached=True)
            replicas = Replicas(wd, dest, remote.client_url, names, args)
            a, b = replicas.daemons["a"], replicas.daemons["b"]
            try:
                a.start()
                await until(lambda: all_ready(a, http, len(names)), "a: cold sync")
                await wait_keys(client, local_canaries(names), timeout=120, daemon=a)
                cached = await count_prefix(client, CACHE)
                assert cached == total, f"cache holds {cached}, expected {total}"
                log(f"cold sync of {cached} keys done")

                # Reference: a restart of the one replica, nothing changed (no standby).
                restarts = []
                for _ in range(args.rounds):
                    a.kill9()
                    t0 = time.monotonic()
                    a.start()
                    restarts.append(round(await until(
                        lambda: all_ready(a, http, len(names)), "a: restart") - t0, 3))
                log(f"restart (kill -9, start again) to ready: {restarts}")

                b.start()
                await until(lambda: standby_ready(b, http), "b: standby ready")
                leader = "a"
                rounds = []
                for _ in range(args.rounds):
                    for kind in ("graceful", "crash"):
                        record = await takeover(kind, replicas, leader, client, http,
                                                args.settle)
                        rounds.append(record)
                        leader = record["new_leader"]
                replicas.stop()
                upstream = [await upstream_takeover(client, rc, names, args.lease_ttl,
                                                    args.settle)
                            for _ in range(args.rounds)]
            finally:
                replicas.stop()
    restart = median(restarts)
    for kind in ("graceful", "crash"):
        mine = [r for r in rounds if r["kind"] == kind]
        ready = median([r["to_ready_s"] for r in mine])
        results.emit(f"failover_{kind}_to_leading", median([r["to_leading_s"] for r in mine]),
                     "s", runs=[r["to_leading_s"] for r in mine],
                     reference={"lease_ttl_s": args.lease_ttl})
        # The bound: from leading to ready, against the restart pass.
        sync = median([r["to_ready_s"] - r["to_leading_s"] for r in mine])
        results.emit(f"failover_{kind}_to_ready", ready, "s",
                     runs=[r["to_ready_s"] for r in mine],
                     leading_to_ready_s=round(sync, 3),
                     reference={"restart_to_ready_s": restart, "restart_runs": restarts,
                                "leading_to_ready_over_restart": round(sync / restart, 2),
                                "upstream_rewrite_s": median(
                                    [u["to_ready_s"] for u in upstream])})
        results.emit(f"failover_{kind}_writes", max(r["writes"] for r in mine), "keys",
                     runs=[r["writes"] for r in mine],
                     agent_events=[r["agent_events"] for r in mine],
                     reference={"upstream_writes": [u["writes"] for u in upstream],
                                "upstream_agent_events": [u["agent_events"]
                                                          for u in upstream]})
    results.emit("failover_params", total, "cached keys",
                 params={"clusters": len(names), "objects_per_cluster": shape.as_dict(),
                         "lease_ttl_s": args.lease_ttl, "rounds": rounds,
                         "upstream": upstream, "restarts": restarts,
                         "destination": "3-member etcd cluster"})
    results.write()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clusters", type=int, default=3)
    p.add_argument("--objects", type=int, default=100_000, help="objects per cluster")
    p.add_argument("--rounds", type=int, default=3, help="takeovers of each kind")
    p.add_argument("--lease-ttl", type=int, default=5, help="--leader-election-lease-ttl")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds without a cache event before the events are counted")
    p.add_argument("--txn-ops", type=int, default=128)
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="3 x 10k objects, 1 round")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    if args.quick:
        args.objects, args.rounds = 10_000, 1
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
