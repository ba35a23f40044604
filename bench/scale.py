#!/usr/bin/env python3
"""Scale: Cilium's nightly clustermesh scale-test shape against one KVStoreMesh.

    python bench/scale.py              # 250 clusters x (100 nodes, 100 identities, 1,000
                                       # endpoints) on 5 etcd processes, then 0.2 updates/s
                                       # per cluster for 60 s
    python bench/scale.py --quick      # 25 clusters, 20 s of updates

``--clusters`` remote cluster names are served by ``--remote-etcds`` etcd processes
(names spread round-robin, 50 per process by default).  Each name has its own keys
(the per-cluster *cached* layout a remote KVStoreMesh publishes, because names that
share a process must not share keys), its own cluster-config and sync canaries; the
heartbeat key ``cilium/.heartbeat`` is one per etcd process (Cilium's key has no
cluster name in it), refreshed every 10 s.

Measured, from the daemon's spawn: seconds until ``/readyz`` answers 200 and until all
``4 x clusters`` local sync canaries exist; while it syncs and then during the update
phase, ``/metrics`` is scraped every ``--scrape-interval`` s for the peak of
``cilium_kvstoremesh_kvstore_sync_queue_size`` (summed over scopes and clusters; every
``--update-scrape-interval`` s in the update phase, as a Prometheus would), sync
errors (``..._kvstore_sync_errors_total``) and reconnects
(``..._remote_cluster_failures``); the daemon's RSS (current and peak) is read from
/proc.  The update phase issues ``--update-rate`` updates/s per cluster (mixed creates,
updates and deletes over every resource, open loop) and reports their propagation
latency (same watcher as bench/latency.py).  At the end the local cache must hold
exactly what the remotes hold.

Reference, same run: a bare ``BatchWriter`` writing the same number of cache keys into
a fresh etcd with the daemon's txn size and in-flight count (the write ceiling).
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

from bench._batch import BatchWriter
from bench._etcd import EtcdProcess
from bench._mesh import (
    CpuMeter,
    Daemon,
    Results,
    Shape,
    bench_main,
    cache_objects,
    client_for,
    count_prefix,
    etcd_info,
    etcds,
    local_canaries,
    log,
    metric_sum,
    publish,
    wait_keys,
    workdir,
)
from bench.latency import WatcherProcess, heartbeats, make_pools, match, run_load

SHAPE = Shape(endpoints=1000, identities=100, services=0, nodes=100)
QUEUE = "cilium_kvstoremesh_kvstore_sync_queue_size"
ERRORS = "cilium_kvstoremesh_kvstore_sync_errors_total"
FAILURES = "cilium_kvstoremesh_remote_cluster_failures"


class Scraper:
    """Scrapes the daemon's metrics periodically; keeps peaks and the last values."""

    def __init__(self, daemon: Daemon, http: aiohttp.ClientSession, interval: float) -> None:
        self.daemon = daemon
        self.http = http
        self.interval = interval
        self.peak_queue = 0.0
        self.peak_queue_at = 0.0
        self.errors = 0.0
        self.failures = 0.0
        self.scrapes = 0
        self.scrape_seconds: list[float] = []
        self.peak_rss_mib = 0.0

    async def scrape(self) -> None:
        t = time.monotonic()
        try:
            metrics = await self.daemon.metrics(self.http)
        except (aiohttp.ClientError, OSError):
            return
        self.scrape_seconds.append(time.monotonic() - t)
        self.scrapes += 1
        queue = metric_sum(metrics, QUEUE)
        if queue > self.peak_queue:
            self.peak_queue, self.peak_queue_at = queue, t - self.daemon.started_at
        self.errors = metric_sum(metrics, ERRORS)
        self.failures = metric_sum(metrics, FAILURES)
        self.peak_rss_mib = max(self.peak_rss_mib, self.daemon.rss_mib())

    async def run(self) -> None:
        while True:
            await self.scrape()
            await asyncio.sleep(self.interval)


async def ceiling(total_keys: int, names: list[tuple[str, int]], txn_ops: int,
                  inflight: int) -> dict[str, Any]:
    ops = [op for name, cid in names for op in cache_objects(name, cid, SHAPE)]
    assert len(ops) == total_keys
    with EtcdProcess() as local:
        async with client_for(local.client_url) as client:
            await client.status()
            t = time.monotonic()
            await BatchWriter(client, max_txn_ops=txn_ops, max_inflight=inflight).apply(ops)
            seconds = time.monotonic() - t
    return {"seconds": round(seconds, 2), "keys_per_s": round(total_keys / seconds)}


async def baseline_sync(args: argparse.Namespace, assignment: dict[str, EtcdProcess],
                        names: list[tuple[str, int]]) -> dict[str, Any]:
    """Sync only, with the daemon of another source tree (A/B), into a fresh local etcd."""
    with EtcdProcess() as local, workdir("scale-baseline") as wd:
        daemon = Daemon(wd, local.client_url, max_txn_ops=args.txn_ops,
                        max_inflight=args.inflight, repo=args.baseline_tree)
        daemon.configure({n: assignment[n].client_url for n, _ in names})
        async with client_for(local.client_url) as client, aiohttp.ClientSession() as http:
            spawn = daemon.start()
            try:
                scraper = Scraper(daemon, http, args.scrape_interval)
                task = asyncio.create_task(scraper.run())
                ready = await daemon.wait_ready(http, args.timeout)
                done = await wait_keys(client, local_canaries(n for n, _ in names),
                                       timeout=args.timeout, daemon=daemon)
                task.cancel()
                rss = daemon.rss_mib()
            finally:
                daemon.stop()
    result = {"tree": str(args.baseline_tree), "ready_s": round(ready, 2),
              "all_canaries_s": round(done - spawn, 2), "peak_queue": scraper.peak_queue,
              "rss_mib_after_sync": round(rss, 1)}
    log(f"baseline ({args.baseline_tree}): {result}")
    return result


async def run(args: argparse.Namespace) -> None:
    results = Results("scale" if not args.quick else "scale-quick", args, args.output)
    names = [(f"cluster{i}", i) for i in range(1, args.clusters + 1)]
    total = SHAPE.total * len(names)
    with etcds(args.remote_etcds) as remotes, EtcdProcess() as local, workdir("scale") as wd:
        results.etcd = etcd_info(local)
        assignment = {n: remotes[i % len(remotes)] for i, (n, _) in enumerate(names)}
        per_process = {id(r): client_for(r.client_url) for r in remotes}
        for c in per_process.values():
            await c.connect()
        clients = {n: per_process[id(assignment[n])] for n, _ in names}
        t = time.monotonic()
        sem = asyncio.Semaphore(len(remotes) * 2)

        async def pub(name: str, cid: int) -> None:
            async with sem:
                await publish(clients[name], name, cid, SHAPE, cached=True, inflight=4)

        await asyncio.gather(*(pub(n, cid) for n, cid in names))
        log(f"{len(names)} clusters x {SHAPE.total} objects ({total} keys) published on "
            f"{len(remotes)} etcd processes in {time.monotonic() - t:.1f}s")

        baseline = None
        if args.baseline_tree:
            baseline = await baseline_sync(args, assignment, names)
        daemon = Daemon(wd, local.client_url, max_txn_ops=args.txn_ops,
                        max_inflight=args.inflight, profile_output=args.profile,
                        profile_format="raw" if args.profile and args.profile.suffix == ".txt"
                        else "speedscope")
        daemon.configure({n: assignment[n].client_url for n, _ in names})
        local_client = client_for(local.client_url, name="local")
        await local_client.connect()
        background = [asyncio.create_task(heartbeats(list(per_process.values())))]
        watcher_proc = None
        try:
            async with aiohttp.ClientSession() as http:
                meter = CpuMeter({"local_etcd": local.pid,
                                  **{f"remote_etcd_{i}": r.pid for i, r in enumerate(remotes)}})
                meter.start()
                spawn = daemon.start()
                meter.pids["daemon"] = daemon.pid
                scraper = Scraper(daemon, http, args.scrape_interval)
                background.append(asyncio.create_task(scraper.run()))
                ready = await daemon.wait_ready(http, args.timeout)
                canaries_at = await wait_keys(local_client, local_canaries(n for n, _ in names),
                                              timeout=args.timeout, daemon=daemon)
                all_canaries = canaries_at - spawn
                sync_cpu = meter.stop()
                sync_cpu["daemon"] = round(daemon.cpu_seconds(), 2)
                await scraper.scrape()
                sync_peak_queue = scraper.peak_queue
                rss_synced = daemon.rss_mib()
                log(f"ready after {ready:.1f}s, all canaries after {all_canaries:.1f}s; peak "
                    f"queue {sync_peak_queue:.0f}; RSS {rss_synced:.0f} MiB")

                # Update phase: scraped like Prometheus would (a scrape of 250 clusters'
                # metrics blocks the daemon's event loop for tens of ms).
                scraper.interval = args.update_scrape_interval
                watcher_proc = WatcherProcess(local.client_url, wd / "events.json")
                rate = args.update_rate * len(names)
                pools = make_pools(names, SHAPE)
                meter.pids["watcher"] = watcher_proc.proc.pid
                meter.start()
                log(f"updates: {rate:g}/s in total for {args.seconds:g} s")
                load = await run_load(clients, pools, rate, args.seconds, 0.0, direct=False,
                                      seed=3)
                await asyncio.sleep(3.0)
                update_cpu = meter.stop()
                events = watcher_proc.finish()
                watcher_proc = None
                await scraper.scrape()
                update_stats = match(load, events)
                # Convergence: the cache holds exactly what the remotes hold.
                remote_keys = 0
                for c in per_process.values():
                    remote_keys += await count_prefix(c, b"cilium/cache/")
                cached = await count_prefix(local_client, b"cilium/cache/")
                final_rss, peak_rss = daemon.rss_mib(), daemon.peak_rss_mib()
        finally:
            for task in background:
                task.cancel()
            if watcher_proc is not None:
                watcher_proc.kill()
            daemon.stop()
            await local_client.close()
            for c in per_process.values():
                await c.close()
    ref = await ceiling(total, names, args.txn_ops, args.inflight) if args.ceiling else None
    log(f"updates: {update_stats}; cache {cached} keys, remotes {remote_keys}")
    common = {"clusters": len(names), "remote_etcd_processes": len(remotes),
              "objects_per_cluster": SHAPE.as_dict(), "total_keys": total,
              "layout": "cached (per-cluster prefixes; names share etcd processes)",
              "max_txn_ops": args.txn_ops, "max_inflight": args.inflight,
              "scrape_interval_s": [args.scrape_interval, args.update_scrape_interval]}
    results.emit("scale_time_to_ready", round(ready, 2), "s",
                 seconds_to_all_canaries=round(all_canaries, 2),
                 keys_per_s=round(total / all_canaries),
                 reference={"target_s": 30, "ceiling": ref, "baseline_tree": baseline},
                 params={**common, "cpu_s_during_sync": sync_cpu,
                         "rss_mib_after_sync": round(rss_synced, 1)})
    results.emit("scale_peak_sync_queue", round(max(sync_peak_queue, scraper.peak_queue)),
                 "keys", during_initial_sync=round(sync_peak_queue),
                 at_seconds_after_spawn=round(scraper.peak_queue_at, 1),
                 params={"scrapes": scraper.scrapes,
                         "scrape_seconds_max": round(max(scraper.scrape_seconds, default=0), 3)})
    results.emit("scale_sync_errors", scraper.errors, "errors", reference={"target": 0})
    results.emit("scale_reconnects", scraper.failures, "failures", reference={"target": 0})
    results.emit("scale_rss", round(peak_rss, 1), "MiB (peak)",
                 after_sync_mib=round(rss_synced, 1), final_mib=round(final_rss, 1),
                 bytes_per_cached_key=round(rss_synced * 2**20 / total))
    results.emit("scale_update_latency_p50", update_stats["p50_ms"], "ms",
                 p99_ms=update_stats["p99_ms"], max_ms=update_stats["max_ms"],
                 params={"updates_per_s": args.update_rate * len(names),
                         "seconds": args.seconds, "updates": update_stats,
                         "cpu_s": update_cpu, "converged": cached == remote_keys,
                         "cached_keys": cached, "remote_keys": remote_keys})
    if cached != remote_keys:
        results.note(f"cache holds {cached} keys, the remotes {remote_keys}")
    results.write()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clusters", type=int, default=250)
    p.add_argument("--remote-etcds", type=int, default=5)
    p.add_argument("--update-rate", type=float, default=0.2, help="updates/s per cluster")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the update phase")
    p.add_argument("--scrape-interval", type=float, default=1.0,
                   help="seconds between /metrics scrapes until synced")
    p.add_argument("--update-scrape-interval", type=float, default=10.0,
                   help="seconds between /metrics scrapes in the update phase")
    p.add_argument("--txn-ops", type=int, default=128, help="daemon --max-txn-ops")
    p.add_argument("--inflight", type=int, default=4, help="daemon etcd.maxInflight")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for ready")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip the bare-writer reference")
    p.add_argument("--profile", type=Path, default=None,
                   help="run the daemon under py-spy record, writing this file "
                        "(.txt: collapsed stacks, else speedscope JSON)")
    p.add_argument("--baseline-tree", type=Path, default=None,
                   help="first sync with the daemon of this source tree too (A/B)")
    p.add_argument("--quick", action="store_true", help="25 clusters, 20 s of updates")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.clusters = min(args.clusters, 25)
        args.seconds = min(args.seconds, 20.0)
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
