#!/usr/bin/env python3
"""Propagation latency: remote put returns -> key visible in the local etcd.

    python bench/latency.py                     # 10 remotes, 2,000 updates/s, 60 s measured
    python bench/latency.py --quick             # 10 remotes, 500 updates/s, 10 s

Ten remote cluster names (``cluster1`` .. ``cluster10``) are served by ``--remote-etcds``
etcd processes (default 2, five names each, to save CPU on a small machine).  Names
that share a process need separate keys, so the remotes publish the per-cluster
*cached* layout (``cilium/cache/<resource>/v1/<cluster>/...``, cluster-config with
``cached: true``), exactly what a remote KVStoreMesh publishes; the daemon mirrors it
the same way as the state layout (same reflector code, other prefixes).  Each cluster
starts with ``--objects`` objects (ipcache-heavy: 80 % endpoints, 16 % identities,
2 % services, 2 % nodes) and the daemon is synced before the load starts.

The load is open-loop: op *i* is issued at ``t0 + i / rate`` whatever the previous ops
are doing, round-robin over the clusters; each op picks a resource (70 % ipcache,
15 % identities, 10 % services, 5 % nodes) and the next key of that resource's pool
(the published objects plus 25 % absent ones): an absent key is created, a present
one deleted with probability 0.25, else updated with a new value.  Every op changes
the key, and a key comes back only after many seconds, so every op produces exactly
one event in the local cache.

A separate watcher process (no CPU shared with the load generator's event loop)
watches ``cilium/cache/`` on the local etcd and records when each event arrives; the
i-th op on a key is matched with the i-th event on its cache key (puts are checked by
value).  Latency = event seen - remote put returned.  The first ``--warmup`` seconds of
load are not counted.

Reference, same run: ``--floor-seconds`` of the same load written *directly* into the
local etcd (under ``cilium/cache/floor/``), seen by the same watcher: what etcd's own
watch and this measurement add without KVStoreMesh in between.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench._etcd import EtcdProcess
from bench._mesh import (
    ENDPOINTS,
    HEARTBEAT_VALUE,
    IDENTITIES,
    NODES,
    REPO,
    SERVICES,
    CpuMeter,
    Daemon,
    Results,
    Shape,
    bench_main,
    client_for,
    etcd_info,
    etcds,
    local_canaries,
    log,
    metric_sum,
    object_key,
    object_value,
    percentile,
    publish,
    wait_keys,
    workdir,
)
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.watch import PUT
from clustermesh.keys import HEARTBEAT_KEY, Resource

MIX = ((ENDPOINTS, 0.70), (IDENTITIES, 0.15), (SERVICES, 0.10), (NODES, 0.05))
SHAPE_SPLIT = {"endpoints": 0.80, "identities": 0.16, "services": 0.02, "nodes": 0.02}
FLOOR_PREFIX = "cilium/cache/floor/"
# One per load phase on the remotes: the seed is part of every value written, so a phase
# never rewrites a key with a value it already had (no change: KVStoreMesh writes nothing).
_PHASE_SEEDS = itertools.count(1000)


# ------------------------------------------------------------------------- watcher process


async def watcher(url: str) -> list[tuple[int, str, int, float]]:
    """Record (type, key, crc32 of value, monotonic time) of every event under cilium/cache/."""
    records: list[tuple[int, str, int, float]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with client_for(url, name="watcher") as client:
        start = (await client.status()).revision + 1
        print("ready", flush=True)

        async def consume() -> None:
            async with client.watch(b"cilium/cache/", start_revision=start) as watch:
                async for batch in watch:
                    now = time.monotonic()
                    for e in batch.events:
                        records.append((1 if e.type == PUT else 0, e.kv.key.decode(),
                                        zlib.crc32(e.kv.value) if e.type == PUT else 0, now))

        task = asyncio.create_task(consume())
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return records


class WatcherProcess:
    def __init__(self, url: str, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--watcher", url, str(out)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"watcher did not start: {line!r}")

    def finish(self) -> list[tuple[int, str, int, float]]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        return [tuple(r) for r in json.loads(self.out.read_text())]  # type: ignore[misc]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------- load


@dataclass
class Pool:
    """Keys of one resource of one cluster: index -> present?"""

    resource: Resource
    name: str
    cid: int
    size: int
    present: list[bool]
    cursor: int = 0


@dataclass
class Op:
    key: str  # local cache key the op must show up at
    put: bool
    crc: int
    issued: float
    returned: float = 0.0
    counted: bool = True


@dataclass
class Load:
    ops: list[Op] = field(default_factory=list)
    errors: int = 0
    late_starts: int = 0  # ops issued more than 10 ms behind schedule


def make_pools(names: list[tuple[str, int]], shape: Shape, *, present: bool = True
               ) -> dict[str, dict[Resource, Pool]]:
    """Key pools per cluster and resource; ``present``: the published objects exist."""
    pools: dict[str, dict[Resource, Pool]] = {}
    for name, cid in names:
        pools[name] = {}
        for resource, _ in MIX:
            n = shape.count(resource)
            extra = max(4, n // 4)
            pools[name][resource] = Pool(resource, name, cid, n + extra,
                                         [present] * n + [False] * extra)
    return pools


async def run_load(clients: dict[str, EtcdClient], pools: dict[str, dict[Resource, Pool]],
                   rate: float, seconds: float, warmup: float, *, direct: bool,
                   seed: int) -> Load:
    """Open-loop load: ``rate`` ops/s for ``warmup + seconds``."""
    rng = random.Random(seed)
    names = list(pools)
    load = Load()
    tasks: set[asyncio.Task[None]] = set()
    resources = [r for r, _ in MIX]
    weights = [w for _, w in MIX]
    total = int(rate * (warmup + seconds))
    seq = 0

    async def do(client: EtcdClient, remote_key: bytes, value: bytes | None, op: Op) -> None:
        try:
            if value is None:
                await client.delete(remote_key)
            else:
                await client.put(remote_key, value)
        except Exception as exc:  # counted, reported
            load.errors += 1
            op.counted = False
            log(f"op failed: {exc}")
            return
        op.returned = time.monotonic()

    t0 = time.monotonic()
    i = 0
    while i < total:
        now = time.monotonic()
        due = min(total, int((now - t0) * rate) + 1)
        while i < due:
            name = names[i % len(names)]
            pool = pools[name][rng.choices(resources, weights)[0]]
            idx = pool.cursor
            pool.cursor = (pool.cursor + 1) % pool.size
            seq += 1
            tag = f"-{seed}.{seq}"  # unique across phases: an equal value is no change
            if direct:
                remote_key = f"{FLOOR_PREFIX}{name}/{pool.resource.name}/{idx}".encode()
                cache = remote_key.decode()
            else:
                remote_key = object_key(pool.resource, name, pool.cid, idx, cached=True)
                cache = remote_key.decode()  # cached layout: the same key in the local cache
            if pool.present[idx] and rng.random() < 0.25:
                value = None
                pool.present[idx] = False
            else:
                value = object_value(pool.resource, name, pool.cid, idx, tag)
                pool.present[idx] = True
            scheduled = t0 + i / rate
            if now - scheduled > 0.010:
                load.late_starts += 1
            op = Op(cache, value is not None, zlib.crc32(value) if value else 0, now,
                    counted=(now - t0) >= warmup)
            load.ops.append(op)
            task = asyncio.create_task(do(clients[name], remote_key, value, op))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(0.001)
    if tasks:
        await asyncio.gather(*tasks)
    return load


def match(load: Load, events: list[tuple[int, str, int, float]]) -> dict[str, Any]:
    by_key: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for is_put, key, crc, seen in events:
        by_key[key].append((is_put, crc, seen))
    ops_by_key: dict[str, list[Op]] = defaultdict(list)
    for op in load.ops:
        ops_by_key[op.key].append(op)
    lat: list[float] = []
    lat_issue: list[float] = []
    missing = mismatched = 0
    examples: list[dict[str, Any]] = []
    for key, ops in ops_by_key.items():
        evs = by_key.get(key, [])
        bad = False
        for n, op in enumerate(ops):
            if n >= len(evs):
                missing += op.counted and op.returned > 0
                bad = True
                continue
            is_put, crc, seen = evs[n]
            if bool(is_put) != op.put or (op.put and crc != op.crc):
                mismatched += 1
                bad = True
                continue
            if op.counted and op.returned > 0:
                lat.append(seen - op.returned)
                lat_issue.append(seen - op.issued)
        if bad and len(examples) < 5:
            t0 = ops[0].issued
            examples.append({"key": key,
                             "ops": [("put" if o.put else "del", round(o.issued - t0, 3),
                                      round(o.returned - t0, 3)) for o in ops],
                             "events": [("put" if e[0] else "del", round(e[2] - t0, 3))
                                        for e in evs]})
    ms = 1000.0
    return {
        "ops": sum(1 for op in load.ops if op.counted),
        "matched": len(lat),
        "missing": missing,
        "mismatched": mismatched,
        "errors": load.errors,
        "p50_ms": round(percentile(lat, 0.50) * ms, 2),
        "p90_ms": round(percentile(lat, 0.90) * ms, 2),
        "p99_ms": round(percentile(lat, 0.99) * ms, 2),
        "max_ms": round(max(lat, default=0.0) * ms, 2),
        "p50_from_issue_ms": round(percentile(lat_issue, 0.50) * ms, 2),
        "p99_from_issue_ms": round(percentile(lat_issue, 0.99) * ms, 2),
        "late_starts": load.late_starts,
        **({"examples": examples} if examples else {}),
    }


def histogram_quantiles(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str,
                        qs: tuple[float, ...] = (0.5, 0.99)) -> dict[str, float | None]:
    """Upper bucket bounds (ms) of quantiles of a Prometheus histogram summed over labels."""
    buckets: dict[float, float] = defaultdict(float)
    for labels, value in metrics.get(f"{name}_bucket", []):
        buckets[float(labels["le"])] += value
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0
    out: dict[str, float | None] = {"count": total}
    for q in qs:
        bound = next((le for le, c in ordered if total and c >= q * total), None)
        out[f"p{int(q * 100)}_le_ms"] = None if bound is None else round(bound * 1000, 2)
    return out


async def heartbeats(clients: list[EtcdClient], interval: float = 10.0) -> None:
    while True:
        await asyncio.sleep(interval)
        for c in clients:
            await c.put(HEARTBEAT_KEY.encode(), HEARTBEAT_VALUE)


async def measure(daemon: Daemon, http: aiohttp.ClientSession, local: EtcdProcess,
                  remotes: list[EtcdProcess], clients: dict[str, EtcdClient],
                  local_client: EtcdClient, pools: dict[str, dict[Resource, Pool]],
                  names: list[tuple[str, int]], shape: Shape, rate: float,
                  args: argparse.Namespace, wd: Path) -> dict[str, Any]:
    """One load phase at ``rate`` (and the floor phase if asked); returns the figures."""
    watcher_proc = WatcherProcess(local.client_url, wd / f"events-{rate:g}.json")
    try:
        meter = CpuMeter({"daemon": daemon.pid, "local_etcd": local.pid,
                          "watcher": watcher_proc.proc.pid,
                          **{f"remote_etcd_{i}": r.pid for i, r in enumerate(remotes)}})
        before = await daemon.metrics(http)
        meter.start()
        log(f"load: {rate:g} ops/s for {args.warmup:g}+{args.seconds:g} s")
        load = await run_load(clients, pools, rate, args.seconds, args.warmup, direct=False,
                              seed=next(_PHASE_SEEDS))
        await asyncio.sleep(2.0)  # let the tail arrive
        cpu = meter.stop()
        after = await daemon.metrics(http)
        floor_load = None
        if args.floor_seconds > 0:
            floor_pools = make_pools(names, shape, present=False)
            floor_load = await run_load(dict.fromkeys(clients, local_client), floor_pools, rate,
                                        args.floor_seconds, 1.0, direct=True, seed=2)
            await asyncio.sleep(1.0)
        events = watcher_proc.finish()
    finally:
        watcher_proc.kill()
    stats = match(load, [e for e in events if not e[1].startswith(FLOOR_PREFIX)])
    floor = (match(floor_load, [e for e in events if e[1].startswith(FLOOR_PREFIX)])
             if floor_load is not None else None)

    def txns(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> float:
        return sum(v for labels, v in metrics.get(
            "cilium_kvstoremesh_kvstore_operations_duration_seconds_count", [])
            if labels.get("action") == "Txn")

    failures = (metric_sum(after, "cilium_kvstoremesh_remote_cluster_failures")
                - metric_sum(before, "cilium_kvstoremesh_remote_cluster_failures"))
    log(f"kvstoremesh at {rate:g} ops/s: {stats}")
    if floor:
        log(f"floor (straight into the local etcd) at {rate:g} ops/s: {floor}")
    return {"rate": rate, "mesh": stats, "floor": floor, "cpu_s": cpu,
            "local_txns": txns(after) - txns(before), "reconnects": failures,
            "daemon_reported_lag": histogram_quantiles(
                after, "cilium_kvstoremesh_propagation_lag_seconds"),
            "daemon_rss_mib": round(daemon.rss_mib(), 1)}


async def run(args: argparse.Namespace) -> None:
    results = Results("latency" if not args.quick else "latency-quick", args, args.output)
    names = [(f"cluster{i}", i) for i in range(1, args.remotes + 1)]
    shape = Shape(*(max(1, round(args.objects * SHAPE_SPLIT[k])) for k in
                    ("endpoints", "identities", "services", "nodes")))
    phases = []
    with etcds(args.remote_etcds) as remotes, EtcdProcess() as local, \
            workdir("latency") as wd:
        results.etcd = etcd_info(local)
        assignment = {name: remotes[i % len(remotes)] for i, (name, _) in enumerate(names)}
        clients = {name: client_for(assignment[name].client_url, name=name)
                   for name, _ in names}
        local_client = client_for(local.client_url, name="local")
        for c in [*clients.values(), local_client]:
            await c.connect()
        t = time.monotonic()
        await asyncio.gather(*(publish(clients[n], n, cid, shape, cached=True)
                               for n, cid in names))
        log(f"{len(names)} clusters x {shape.total} objects published on {len(remotes)} etcd "
            f"processes in {time.monotonic() - t:.1f}s")
        daemon = Daemon(wd, local.client_url, max_txn_ops=args.txn_ops,
                        max_inflight=args.inflight, profile_output=args.profile,
                        profile_format="raw" if args.profile and args.profile.suffix == ".txt"
                        else "speedscope")
        daemon.configure({n: assignment[n].client_url for n, _ in names})
        background = [asyncio.create_task(heartbeats(
            [clients[next(n for n, _ in names if assignment[n] is r)] for r in remotes]))]
        try:
            async with aiohttp.ClientSession() as http:
                daemon.start()
                await daemon.wait_ready(http, 120)
                await wait_keys(local_client, local_canaries(n for n, _ in names), timeout=60,
                                daemon=daemon)
                pools = make_pools(names, shape)  # shared by the phases: key state carries on
                for rate in args.rate:
                    phases.append(await measure(daemon, http, local, remotes, clients,
                                                local_client, pools, names, shape, rate, args,
                                                wd))
        finally:
            for task in background:
                task.cancel()
            daemon.stop()
            for c in [*clients.values(), local_client]:
                await c.close()
    params = {"remotes": len(names), "remote_etcd_processes": len(remotes),
              "seconds": args.seconds, "warmup_s": args.warmup,
              "objects_per_cluster": shape.as_dict(),
              "layout": "cached (per-cluster prefixes; names share etcd processes)",
              "max_txn_ops": args.txn_ops, "max_inflight": args.inflight}
    for phase in phases:
        stats, floor = phase["mesh"], phase["floor"]
        for q in ("p50", "p99", "max"):
            results.emit(f"propagation_latency_{q}", stats[f"{q}_ms"], "ms",
                         rate_ops_per_s=phase["rate"],
                         reference={"floor_ms": floor[f"{q}_ms"] if floor else None},
                         **({"params": {**params, **phase}} if q == "p50" else {}))
        if stats["missing"] or stats["mismatched"] or stats["errors"]:
            results.note(f"at {phase['rate']:g} ops/s not every op was seen exactly once: "
                         f"{stats}")
    results.write()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--watcher":
        records = asyncio.run(watcher(sys.argv[2]))
        Path(sys.argv[3]).write_text(json.dumps(records))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--remotes", type=int, default=10, help="remote cluster names")
    p.add_argument("--remote-etcds", type=int, default=2,
                   help="etcd processes serving them (names are spread round-robin)")
    p.add_argument("--objects", type=int, default=5000, help="objects per cluster at start")
    p.add_argument("--rate", type=lambda t: [float(x) for x in t.split(",") if x],
                   default=[2000.0], help="ops/s in total; a comma list runs one phase each "
                   "(same daemon, one after the other)")
    p.add_argument("--seconds", type=float, default=60.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load not counted")
    p.add_argument("--floor-seconds", type=float, default=10.0,
                   help="seconds of the reference load straight into the local etcd (0: skip)")
    p.add_argument("--txn-ops", type=int, default=128, help="daemon --max-txn-ops")
    p.add_argument("--inflight", type=int, default=4, help="daemon etcd.maxInflight")
    p.add_argument("--profile", type=Path, default=None,
                   help="run the daemon under py-spy record, writing this file "
                        "(.txt: collapsed stacks, else speedscope JSON)")
    p.add_argument("--quick", action="store_true", help="500 ops/s, 10 s, 2 s warm-up")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.rate, args.seconds, args.warmup = [min(r, 500.0) for r in args.rate], 10.0, 2.0
        args.floor_seconds = min(args.floor_seconds, 3.0)
        args.objects = min(args.objects, 1000)
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
