#!/usr/bin/env python3
"""Scale floor: KVStoreMesh at Cilium's scale-test shape, judged against same-run references.

    python bench/scale_floor.py --mode churn       # 250 remotes x 1.2k objects on 5 etcds,
                                                   # 60 s of churn at the generator's ceiling
    python bench/scale_floor.py --mode bootstrap   # 510 remotes (+ the local cluster = 511)
                                                   # x 1.2k objects, --max-connected-clusters 511
    python bench/scale_floor.py --mode churn --clusters 20 --seconds 10 --repeat 2   # smoke

Both modes publish ``--clusters`` remote cluster names on ``--remote-etcds`` etcd
processes (round-robin) in the per-cluster *cached* layout, 1,200 objects each
(1,000 endpoints, 100 identities, 100 nodes: bench/scale.py's shape).

**churn** — the aim is 10,000 updates/s in total (``--rate``).  The load generator
batches: every ``--tick-ms`` it puts the ops that came due into one multi-op txn per
remote etcd process (at most ``--load-txn-ops`` ops, distinct keys), with up to
``--load-inflight`` txns in flight per process.  First, before the daemon starts, it
runs closed-loop for ``--calibrate-seconds`` against the remotes: the ops/s it
sustains there is reported, and the run rate is ``min(--rate, --headroom x that)``
(rounded down to 100/s).  Ops are latency.py's mix (ipcache 70 %, identities 15 %,
nodes 5 %, renormalised: the shape has no services): create an absent key, delete a
present one with probability 0.25, else update it.  Then the daemon syncs once, and
``--repeat`` windows of each program alternate (ours, reference, ours, ...), each
``--warmup`` s (not counted) + ``--seconds / --repeat`` s measured + 2 s of tail:

* **ours**: the load goes to the remote etcds; the daemon mirrors it into the local etcd;
* **reference**: the same load, same generator, written straight into the local etcd
  under ``cilium/cache/floor/`` (the daemon is running but idle: nothing changes on the
  remotes).

A separate watcher process (bench/latency.py's) watches ``cilium/cache/`` on the local
etcd; latency = the txn carrying the op returned -> its event seen (matched by
bench/latency.py's ``match``).  ``/metrics`` is scraped every ``--scrape-interval`` s in
ours windows: backlog = the peak of ``cilium_kvstoremesh_kvstore_sync_queue_size``
(summed over every series), errors = ``..._kvstore_sync_errors_total``, reconnects =
``..._remote_cluster_failures``.  The backlog's reference is the peak number of ops the
direct writer had issued and not yet had acknowledged.  Goals: p99 <= 50 ms,
backlog <= 1,000 keys (medians over the windows), 0 errors, 0 reconnects.

**bootstrap** — ``--max-connected-clusters 511``: the local cluster takes ID 511, so
at most 510 remote names (IDs 1..510, identities in each ID's 511-mode range); with
1,200 objects each that is 612k cached keys.  ``--repeat`` repetitions, alternating:

* **ours**: a fresh local etcd and a fresh daemon; time from spawn until ``/readyz``
  answers 200 *and* every local sync canary exists (so every key is cached);
* **reference**: bench/_batch.py's ``BatchWriter`` with the daemon's txn size and
  in-flight count writing the same cache keys (list built beforehand) into a fresh etcd.

Goal: ready <= 2x the bare writer's time (medians), 0 errors and 0 reconnects in every
repetition; the cache must hold every key.

Results: bench/results/scale_churn.json, bench/results/scale_bootstrap.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench._batch import BatchWriter, Put
from bench._etcd import EtcdProcess
from bench._mesh import (
    CANARIED,
    ENDPOINTS,
    HEARTBEAT_VALUE,
    IDENTITIES,
    MIRRORED,
    NODES,
    CpuMeter,
    Daemon,
    Results,
    bench_main,
    client_for,
    count_prefix,
    endpoint_value,
    etcd_info,
    etcds,
    identity_value,
    local_canaries,
    log,
    median,
    metric_sum,
    node_suffix,
    node_value,
    object_key,
    object_value,
    publish,
    service_suffix,
    service_value,
    wait_keys,
    workdir,
)
from bench.latency import (
    FLOOR_PREFIX,
    MIX,
    Load,
    Op,
    Pool,
    WatcherProcess,
    heartbeats,
    make_pools,
    match,
)
from bench.scale import SHAPE, Scraper
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.client import EtcdClient, delete_op, put_op
from clustermesh.keys import HEARTBEAT_KEY, SERVICES, Resource, cluster_config_key

REJECTED = "cilium_kvstoremesh_rejected_entries"
CHURN_REFERENCE = "same churn written straight into the local etcd"
BOOTSTRAP_REFERENCE = "bare BatchWriter"
GOAL_P99_MS = 50.0
GOAL_BACKLOG = 1000
GOAL_BOOTSTRAP_RATIO = 2.0
TAIL_S = 2.0
_SEEDS = itertools.count(5000)


def stats(samples: list[float]) -> dict[str, Any]:
    return {"median": round(median(samples), 3), "min": round(min(samples, default=0), 3),
            "max": round(max(samples, default=0), 3), "samples": samples}


def ratio(ours: float, ref: float) -> float | None:
    return round(ours / ref, 2) if ref else None


# ----------------------------------------------------------------------------- churn load


class BatchedLoad:
    """latency.py's churn, batched: one multi-op txn per target etcd per tick, several in
    flight per target.  ``rate=None``: closed loop (as fast as the targets answer)."""

    def __init__(self, targets: list[EtcdClient], route: dict[str, int],
                 pools: dict[str, dict[Resource, Pool]], *, direct: bool, txn_ops: int,
                 inflight: int, tick: float) -> None:
        self.targets = targets
        self.route = route
        self.pools = pools
        self.direct = direct
        self.txn_ops = txn_ops
        self.inflight = inflight
        self.tick = tick
        mix = [(r, w) for r, w in MIX if r is not SERVICES]  # the shape has no services
        self.resources = [r for r, _ in mix]
        self.weights = [w for _, w in mix]
        self.names = list(pools)
        self.rng = random.Random(0)
        self.outstanding = 0
        self.peak_outstanding = 0
        self.txns = 0

    def make(self, name: str, seed: int, seq: int, counted: bool
             ) -> tuple[bytes, bytes | None, Op]:
        pool = self.pools[name][self.rng.choices(self.resources, self.weights)[0]]
        idx = pool.cursor
        pool.cursor = (pool.cursor + 1) % pool.size
        if self.direct:
            key = f"{FLOOR_PREFIX}{name}/{pool.resource.name}/{idx}".encode()
        else:
            key = object_key(pool.resource, name, pool.cid, idx, cached=True)
        if pool.present[idx] and self.rng.random() < 0.25:
            value = None
            pool.present[idx] = False
        else:
            value = object_value(pool.resource, name, pool.cid, idx, f"-{seed}.{seq}")
            pool.present[idx] = True
        op = Op(key.decode(), value is not None, zlib.crc32(value) if value else 0,
                time.monotonic(), counted=counted)
        return key, value, op

    async def send(self, load: Load, target: int, batch: list[tuple[bytes, bytes | None, Op]],
                   slots: asyncio.Semaphore) -> None:
        async with slots:
            ops = [put_op(k, v) if v is not None else delete_op(k) for k, v, _ in batch]
            try:
                await self.targets[target].txn(success=ops)
            except Exception as exc:  # counted, reported
                load.errors += len(batch)
                for _, _, op in batch:
                    op.counted = False
                log(f"txn of {len(batch)} ops failed: {exc}")
            else:
                now = time.monotonic()
                for _, _, op in batch:
                    op.returned = now
            finally:
                self.outstanding -= len(batch)
                self.txns += 1

    async def run(self, rate: float | None, seconds: float, warmup: float, seed: int) -> Load:
        load = Load()
        slots = [asyncio.Semaphore(self.inflight) for _ in self.targets]
        buffers: list[list[tuple[bytes, bytes | None, Op]]] = [[] for _ in self.targets]
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        end = t0 + warmup + seconds
        i = seq = 0
        n = len(self.names)
        capacity = len(self.targets) * self.inflight * self.txn_ops
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if rate is None:  # closed loop: keep every slot busy with full txns
                room = capacity - self.outstanding
                if room < self.txn_ops * len(self.targets):
                    await asyncio.sleep(0.0005)
                    continue
                due = i + room
            else:
                due = int((now - t0) * rate)
            counted = now - t0 >= warmup
            while i < due:
                name = self.names[i % n]
                seq += 1
                item = self.make(name, seed, seq, counted)
                load.ops.append(item[2])
                buffers[self.route[name]].append(item)
                i += 1
            for target, buffer in enumerate(buffers):
                keep: list[tuple[bytes, bytes | None, Op]] = []
                batch: list[tuple[bytes, bytes | None, Op]] = []
                keys: set[bytes] = set()
                for item in buffer:
                    if item[0] in keys:  # a txn may not touch a key twice: next tick
                        keep.append(item)
                        continue
                    keys.add(item[0])
                    batch.append(item)
                    if len(batch) >= self.txn_ops:
                        self._spawn(load, target, batch, slots[target], tasks)
                        batch, keys = [], set()
                if batch:
                    self._spawn(load, target, batch, slots[target], tasks)
                buffers[target] = keep
            if rate is not None:
                await asyncio.sleep(max(0.0, t0 + (int((now - t0) / self.tick) + 1) * self.tick
                                        - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)
        return load

    def _spawn(self, load: Load, target: int, batch: list[tuple[bytes, bytes | None, Op]],
               slots: asyncio.Semaphore, tasks: set[asyncio.Task[None]]) -> None:
        self.outstanding += len(batch)
        self.peak_outstanding = max(self.peak_outstanding, self.outstanding)
        task = asyncio.create_task(self.send(load, target, batch, slots))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def sustained(load: Load) -> dict[str, Any]:
    """Ops/s acknowledged over the counted part of a load."""
    done = [op for op in load.ops if op.counted and op.returned > 0]
    if not done:
        return {"ops": 0, "ops_per_s": 0.0}
    span = max(op.returned for op in done) - min(op.issued for op in done)
    return {"ops": len(done), "ops_per_s": round(len(done) / span) if span else 0.0,
            "issue_to_return_max_ms": round(max(op.returned - op.issued for op in done)
                                            * 1000, 1)}


async def churn_window(gen: BatchedLoad, local_url: str, wd: Path, rate: float,
                       seconds: float, warmup: float, scraper: Scraper | None
                       ) -> dict[str, Any]:
    watcher = WatcherProcess(local_url, wd / "events.json")
    scrape_task = None
    try:
        if scraper is not None:
            await scraper.scrape()
            scraper.peak_queue = 0.0
            errors0, failures0 = scraper.errors, scraper.failures
            scrape_task = asyncio.create_task(scraper.run())
        gen.peak_outstanding = 0
        seed = next(_SEEDS)
        load = await gen.run(rate, seconds, warmup, seed)
        await asyncio.sleep(TAIL_S)
        if scrape_task is not None and scraper is not None:
            scrape_task.cancel()
            await scraper.scrape()
        events = watcher.finish()
    except BaseException:
        watcher.kill()
        if scrape_task is not None:
            scrape_task.cancel()
        raise
    result: dict[str, Any] = {"stats": match(load, events), "sent": sustained(load),
                              "generator_peak_outstanding": gen.peak_outstanding}
    if scraper is not None:
        result.update(peak_queue=scraper.peak_queue, errors=scraper.errors - errors0,
                      reconnects=scraper.failures - failures0)
    return result


async def run_churn(args: argparse.Namespace) -> None:
    results = Results("scale_churn", args, args.output)
    names = [(f"cluster{i}", i) for i in range(1, args.clusters + 1)]
    total = SHAPE.total * len(names)
    per_window = args.seconds / args.repeat
    ours: list[dict[str, Any]] = []
    ref: list[dict[str, Any]] = []
    with etcds(args.remote_etcds) as remotes, EtcdProcess() as local, \
            workdir("scale-churn") as wd:
        results.etcd = etcd_info(local)
        index = {n: i % len(remotes) for i, (n, _) in enumerate(names)}
        targets = [client_for(r.client_url) for r in remotes]
        local_client = client_for(local.client_url, name="local")
        for c in [*targets, local_client]:
            await c.connect()
        t = time.monotonic()
        sem = asyncio.Semaphore(len(remotes) * 2)

        async def pub(name: str, cid: int) -> None:
            async with sem:
                await publish(targets[index[name]], name, cid, SHAPE, cached=True, inflight=4)

        await asyncio.gather(*(pub(n, cid) for n, cid in names))
        log(f"{len(names)} clusters x {SHAPE.total} objects ({total} keys) published on "
            f"{len(remotes)} etcd processes in {time.monotonic() - t:.1f}s")
        remote_gen = BatchedLoad(targets, index, make_pools(names, SHAPE), direct=False,
                                 txn_ops=args.load_txn_ops, inflight=args.load_inflight,
                                 tick=args.tick_ms / 1000)
        local_gen = BatchedLoad([local_client], dict.fromkeys(index, 0),
                                make_pools(names, SHAPE, present=False), direct=True,
                                txn_ops=args.load_txn_ops, inflight=args.load_inflight,
                                tick=args.tick_ms / 1000)
        calibration: dict[str, Any] = {}
        rate = args.rate
        if args.calibrate_seconds > 0:
            meter = CpuMeter({f"remote_etcd_{i}": r.pid for i, r in enumerate(remotes)})
            meter.start()
            load = await remote_gen.run(None, args.calibrate_seconds, 0.5, next(_SEEDS))
            calibration = {**sustained(load), "seconds": args.calibrate_seconds,
                           "errors": load.errors, "cpu_s": meter.stop()}
            ceiling = calibration["ops_per_s"]
            rate = min(args.rate, max(100.0, (ceiling * args.headroom) // 100 * 100))
            log(f"generator ceiling on {len(remotes)} remote etcds (closed loop, no daemon): "
                f"{ceiling} ops/s; run rate {rate:g} ops/s (aim {args.rate:g})")
        daemon = Daemon(wd, local.client_url, max_txn_ops=args.txn_ops,
                        max_inflight=args.inflight)
        daemon.configure({n: remotes[index[n]].client_url for n, _ in names})
        background = [asyncio.create_task(heartbeats(targets))]
        try:
            async with aiohttp.ClientSession() as http:
                spawn = daemon.start()
                ready = await daemon.wait_ready(http, args.timeout)
                done = await wait_keys(local_client, local_canaries(n for n, _ in names),
                                       timeout=args.timeout, daemon=daemon)
                log(f"initial sync: ready {ready:.1f}s, all canaries {done - spawn:.1f}s")
                scraper = Scraper(daemon, http, args.scrape_interval)
                await scraper.scrape()
                errors_start, failures_start = scraper.errors, scraper.failures
                meter = CpuMeter({"daemon": daemon.pid, "local_etcd": local.pid,
                                  **{f"remote_etcd_{i}": r.pid for i, r in enumerate(remotes)}})
                for i in range(args.repeat):
                    for program, windows in (("ours", ours), ("reference", ref)):
                        log(f"{rate:g} ops/s, {program} window {i + 1}/{args.repeat}: "
                            f"{args.warmup:g}+{per_window:g} s")
                        meter.start()
                        w = await churn_window(
                            remote_gen if program == "ours" else local_gen, local.client_url,
                            wd, rate, per_window, args.warmup,
                            scraper if program == "ours" else None)
                        w["cpu_s"] = meter.stop()
                        daemon.check_alive()
                        windows.append(w)
                        s = w["stats"]
                        log(f"  p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} "
                            f"ms ({s['matched']}/{s['ops']} seen, {s['missing']} missing, "
                            f"{s['mismatched']} mismatched, {s['errors']} errors); sent "
                            f"{w['sent']['ops_per_s']} ops/s"
                            + (f"; peak queue {w['peak_queue']:.0f}" if "peak_queue" in w
                               else f"; peak in flight {w['generator_peak_outstanding']}"))
                await scraper.scrape()
                errors = int(scraper.errors - errors_start)
                reconnects = int(scraper.failures - failures_start)
                rejected = metric_sum(await daemon.metrics(http), REJECTED)
                remote_keys = sum([await count_prefix(c, b"cilium/cache/") for c in targets])
                cached = (await count_prefix(local_client, b"cilium/cache/")
                          - await count_prefix(local_client, FLOOR_PREFIX.encode()))
        finally:
            for task in background:
                task.cancel()
            daemon.stop()
            for c in [*targets, local_client]:
                await c.close()
    params = {"clusters": len(names), "remote_etcd_processes": args.remote_etcds,
              "objects_per_cluster": SHAPE.as_dict(), "total_keys": total,
              "rate_ops_per_s": rate, "rate_aim_ops_per_s": args.rate,
              "seconds": args.seconds, "repeat": args.repeat,
              "seconds_per_window": round(per_window, 3), "warmup_s_per_window": args.warmup,
              "load_txn_ops": args.load_txn_ops, "load_inflight_per_etcd": args.load_inflight,
              "tick_ms": args.tick_ms, "scrape_interval_s": args.scrape_interval,
              "max_txn_ops": args.txn_ops, "max_inflight": args.inflight,
              "initial_sync_ready_s": round(ready, 2),
              "layout": "cached (per-cluster prefixes; names share etcd processes)"}
    window_errors = sum(w["stats"]["errors"] + w["stats"]["missing"] + w["stats"]["mismatched"]
                        for w in ours)
    clean = errors == 0 and reconnects == 0
    p99 = [w["stats"]["p99_ms"] for w in ours]
    p99_ref = [w["stats"]["p99_ms"] for w in ref]
    mine, theirs = stats(p99), stats(p99_ref)
    results.emit("churn_latency_p99", mine["median"], "ms", runs=mine,
                 reference={"name": CHURN_REFERENCE, **theirs, "prefix": FLOOR_PREFIX},
                 ratio=ratio(mine["median"], theirs["median"]), goal=f"≤ {GOAL_P99_MS:g} ms",
                 met=bool(mine["median"] <= GOAL_P99_MS and clean and window_errors == 0),
                 judged_on="median over windows; and 0 errors, 0 reconnects, every op seen",
                 p50_ms=stats([w["stats"]["p50_ms"] for w in ours]),
                 max_ms=stats([w["stats"]["max_ms"] for w in ours]),
                 params={**params, "windows": {"ours": ours, "reference": ref}})
    backlog = stats([w["peak_queue"] for w in ours])
    backlog_ref = stats([w["generator_peak_outstanding"] for w in ref])
    results.emit("churn_backlog_peak", backlog["median"], "keys", runs=backlog,
                 reference={"name": CHURN_REFERENCE, **backlog_ref,
                            "what": "peak ops issued by the direct writer, not yet "
                                    "acknowledged"},
                 ratio=ratio(backlog["median"], backlog_ref["median"]),
                 goal=f"≤ {GOAL_BACKLOG} keys",
                 met=bool(backlog["median"] <= GOAL_BACKLOG and clean),
                 judged_on="median over windows of each window's peak; and 0 errors, "
                           "0 reconnects", params=params)
    results.emit("churn_sync_errors", errors, "errors", goal="0", met=errors == 0,
                 per_window=[w["errors"] for w in ours], rejected_entries=rejected)
    results.emit("churn_reconnects", reconnects, "failures", goal="0", met=reconnects == 0,
                 per_window=[w["reconnects"] for w in ours])
    results.emit("churn_sustained_rate", rate, "ops/s", aim=args.rate,
                 generator_ceiling=calibration or None,
                 sent_ops_per_s={"ours": stats([w["sent"]["ops_per_s"] for w in ours]),
                                 "reference": stats([w["sent"]["ops_per_s"] for w in ref])},
                 params={"remote_etcd_processes": args.remote_etcds,
                         "headroom": args.headroom})
    if cached != remote_keys:
        results.note(f"cache holds {cached} keys, the remotes {remote_keys}")
    for program, windows in (("ours", ours), ("reference", ref)):
        for i, w in enumerate(windows):
            s = w["stats"]
            if s["missing"] or s["mismatched"] or s["errors"]:
                results.note(f"{program} window {i + 1}: not every op was seen exactly "
                             f"once: missing {s['missing']}, mismatched {s['mismatched']}, "
                             f"errors {s['errors']}")
    if rate < args.rate:
        results.note(f"the generator sustained {calibration.get('ops_per_s')} ops/s on "
                     f"{args.remote_etcds} remote etcds: ran at {rate:g}, not {args.rate:g}")
    results.write()


# ----------------------------------------------------------------------------- bootstrap


def id_shift(max_connected_clusters: int) -> int:
    return 24 - (max_connected_clusters + 1).bit_length() + 1


def bootstrap_objects(name: str, cid: int, shift: int, *, cache: bool) -> Iterator[Put]:
    """SHAPE's objects of one cluster, identities in its ``shift``-wide range; remote keys
    (cached layout) or where KVStoreMesh caches them."""
    for resource in MIRRORED:
        prefix = resource.cache_prefix(name) if cache else resource.remote_prefix(
            name, cached=True)
        for i in range(SHAPE.count(resource)):
            if resource is ENDPOINTS:
                suffix = endpoint_suffix_of(i)
                value = endpoint_value(name, cid, i).replace(
                    f'"ID":{(cid << 16) + i % 60000},'.encode(),
                    f'"ID":{(cid << shift) + 256 + i % SHAPE.identities},'.encode())
            elif resource is IDENTITIES:
                suffix, value = str((cid << shift) + 256 + i), identity_value(name, cid, i)
            elif resource is NODES:
                suffix, value = node_suffix(cid, i), node_value(name, cid, i)
            else:
                suffix, value = service_suffix(cid, i), service_value(name, cid, i)
            yield Put(f"{prefix}{suffix}".encode(), value)


def endpoint_suffix_of(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


async def publish_bootstrap(client: EtcdClient, name: str, cid: int, max_cc: int) -> None:
    config = CiliumClusterConfig(id=cid, synced_canaries=True, cached=True,
                                 max_connected_clusters=max_cc)
    await client.put(cluster_config_key(name).encode(), config.to_json())
    await client.put(HEARTBEAT_KEY.encode(), HEARTBEAT_VALUE)
    await BatchWriter(client, max_inflight=4).apply(
        bootstrap_objects(name, cid, id_shift(max_cc), cache=False))
    for resource in CANARIED:
        await client.put(resource.remote_canary(name, cached=True).encode(), HEARTBEAT_VALUE)


async def bootstrap_ours(args: argparse.Namespace, urls: dict[str, str], names: list[str],
                         total: int) -> dict[str, Any]:
    with EtcdProcess() as local, workdir("scale-bootstrap") as wd:
        daemon = Daemon(wd, local.client_url, max_txn_ops=args.txn_ops,
                        max_inflight=args.inflight,
                        extra_args=["--max-connected-clusters", str(args.max_connected_clusters),
                                    "--cluster-id", str(args.max_connected_clusters)])
        daemon.configure(urls)
        async with client_for(local.client_url, name="local") as client, \
                aiohttp.ClientSession() as http:
            await client.status()
            spawn = daemon.start()
            try:
                scraper = Scraper(daemon, http, args.scrape_interval)
                task = asyncio.create_task(scraper.run())
                ready = await daemon.wait_ready(http, args.timeout)
                done = await wait_keys(client, local_canaries(names), timeout=args.timeout,
                                       daemon=daemon)
                task.cancel()
                await scraper.scrape()
                rejected = metric_sum(await daemon.metrics(http), REJECTED)
                cached = await count_prefix(client, b"cilium/cache/")
                rss = daemon.peak_rss_mib()
            finally:
                daemon.stop()
    return {"ready_s": round(ready, 3), "all_canaries_s": round(done - spawn, 3),
            "time_s": round(max(ready, done - spawn), 3), "peak_queue": scraper.peak_queue,
            "errors": scraper.errors, "reconnects": scraper.failures,
            "rejected_entries": rejected, "cached_keys": cached, "expected_keys": total,
            "peak_rss_mib": round(rss, 1)}


async def bootstrap_reference(args: argparse.Namespace, names: list[tuple[str, int]],
                              total: int) -> dict[str, Any]:
    shift = id_shift(args.max_connected_clusters)
    ops = [op for n, cid in names for op in bootstrap_objects(n, cid, shift, cache=True)]
    assert len(ops) == total
    with EtcdProcess() as local:
        async with client_for(local.client_url) as client:
            await client.status()
            t = time.monotonic()
            await BatchWriter(client, max_txn_ops=args.txn_ops,
                              max_inflight=args.inflight).apply(ops)
            seconds = time.monotonic() - t
            written = await count_prefix(client, b"cilium/cache/")
    return {"time_s": round(seconds, 3), "keys_per_s": round(total / seconds),
            "written_keys": written}


async def run_bootstrap(args: argparse.Namespace) -> None:
    results = Results("scale_bootstrap", args, args.output)
    if args.clusters >= args.max_connected_clusters:
        raise SystemExit(f"--clusters {args.clusters}: at most "
                         f"{args.max_connected_clusters - 1} remotes (the local cluster takes "
                         f"ID {args.max_connected_clusters})")
    names = [(f"cluster{i}", i) for i in range(1, args.clusters + 1)]
    total = SHAPE.total * len(names)
    ours: list[dict[str, Any]] = []
    ref: list[dict[str, Any]] = []
    t_start = time.monotonic()
    with etcds(args.remote_etcds) as remotes:
        results.etcd = etcd_info(remotes[0])
        index = {n: i % len(remotes) for i, (n, _) in enumerate(names)}
        targets = [client_for(r.client_url) for r in remotes]
        for c in targets:
            await c.connect()
        try:
            t = time.monotonic()
            sem = asyncio.Semaphore(len(remotes) * 2)

            async def pub(name: str, cid: int) -> None:
                async with sem:
                    await publish_bootstrap(targets[index[name]], name, cid,
                                            args.max_connected_clusters)

            await asyncio.gather(*(pub(n, cid) for n, cid in names))
            log(f"{len(names)} clusters x {SHAPE.total} objects ({total} keys) published on "
                f"{len(remotes)} etcd processes in {time.monotonic() - t:.1f}s")
            urls = {n: remotes[index[n]].client_url for n, _ in names}
            for i in range(args.repeat):
                o = await bootstrap_ours(args, urls, [n for n, _ in names], total)
                ours.append(o)
                log(f"rep {i + 1}/{args.repeat} ours: ready {o['ready_s']}s, canaries "
                    f"{o['all_canaries_s']}s, errors {o['errors']:g}, reconnects "
                    f"{o['reconnects']:g}, cached {o['cached_keys']}/{total}")
                r = await bootstrap_reference(args, names, total)
                ref.append(r)
                log(f"rep {i + 1}/{args.repeat} {BOOTSTRAP_REFERENCE}: {r['time_s']}s "
                    f"({r['keys_per_s']} keys/s)")
        finally:
            for c in targets:
                await c.close()
    mine = stats([o["time_s"] for o in ours])
    theirs = stats([r["time_s"] for r in ref])
    errors = int(max(o["errors"] for o in ours))
    reconnects = int(max(o["reconnects"] for o in ours))
    complete = all(o["cached_keys"] == total for o in ours)
    r_ = ratio(mine["median"], theirs["median"])
    params = {"clusters": len(names), "local_cluster_id": args.max_connected_clusters,
              "max_connected_clusters": args.max_connected_clusters,
              "remote_etcd_processes": args.remote_etcds, "objects_per_cluster": SHAPE.as_dict(),
              "total_keys": total, "repeat": args.repeat, "max_txn_ops": args.txn_ops,
              "max_inflight": args.inflight, "scrape_interval_s": args.scrape_interval,
              "wall_s": round(time.monotonic() - t_start, 1),
              "layout": "cached (per-cluster prefixes; names share etcd processes)"}
    results.emit("bootstrap_time_to_ready", mine["median"], "s", runs=mine,
                 reference={"name": BOOTSTRAP_REFERENCE, **theirs, "program": "bench/_batch.py",
                            "runs": ref},
                 ratio=r_, goal=f"≤ {GOAL_BOOTSTRAP_RATIO:g}x",
                 met=bool(r_ is not None and r_ <= GOAL_BOOTSTRAP_RATIO and errors == 0
                          and reconnects == 0 and complete),
                 judged_on="medians; and 0 errors, 0 reconnects in every repetition, every "
                           "key cached",
                 ready_s=stats([o["ready_s"] for o in ours]),
                 all_canaries_s=stats([o["all_canaries_s"] for o in ours]),
                 params={**params, "repetitions": ours})
    results.emit("bootstrap_sync_errors", errors, "errors (most in one repetition)", goal="0",
                 met=errors == 0, per_repetition=[o["errors"] for o in ours])
    results.emit("bootstrap_reconnects", reconnects, "failures (most in one repetition)",
                 goal="0", met=reconnects == 0, per_repetition=[o["reconnects"] for o in ours])
    if not complete:
        results.note(f"cached keys per repetition {[o['cached_keys'] for o in ours]}, "
                     f"expected {total}")
    results.write()


# ----------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> None:
    await (run_churn(args) if args.mode == "churn" else run_bootstrap(args))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("churn", "bootstrap"), required=True)
    p.add_argument("--clusters", type=int, default=None,
                   help="remote cluster names (churn: 250; bootstrap: 510)")
    p.add_argument("--remote-etcds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=5,
                   help="windows (churn) or repetitions (bootstrap) per program, alternating")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="churn: measured seconds per program, split over the windows")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="churn: seconds of load not counted at the start of each window")
    p.add_argument("--rate", type=float, default=10000.0,
                   help="churn: aimed updates/s in total (capped by the calibration)")
    p.add_argument("--calibrate-seconds", type=float, default=8.0,
                   help="churn: closed-loop generator run on the remotes first (0: skip, run "
                        "at --rate)")
    p.add_argument("--headroom", type=float, default=0.9,
                   help="churn: run rate = min(--rate, headroom x calibrated ceiling)")
    p.add_argument("--load-txn-ops", type=int, default=128,
                   help="churn: most ops per generator txn")
    p.add_argument("--load-inflight", type=int, default=4,
                   help="churn: generator txns in flight per etcd process")
    p.add_argument("--tick-ms", type=float, default=10.0,
                   help="churn: the generator batches the ops due every this many ms")
    p.add_argument("--scrape-interval", type=float, default=None,
                   help="seconds between /metrics scrapes (churn: 5; bootstrap: 1)")
    p.add_argument("--max-connected-clusters", type=int, default=511,
                   help="bootstrap: the daemon's and the remotes' setting")
    p.add_argument("--txn-ops", type=int, default=128, help="daemon --max-txn-ops")
    p.add_argument("--inflight", type=int, default=4, help="daemon etcd.maxInflight")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for sync")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    if args.clusters is None:
        args.clusters = 250 if args.mode == "churn" else 510
    if args.scrape_interval is None:
        args.scrape_interval = 5.0 if args.mode == "churn" else 1.0
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
