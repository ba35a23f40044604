#!/usr/bin/env python3
"""Memory: the daemon's RSS once synced, at several cache sizes; bytes per cached key.

    python bench/memory.py                        # 30k, 100k, 300k cached keys
    python bench/memory.py --sizes 10000,30000    # other sizes (at least two)

One remote etcd publishes one cluster per size (``mem<N>``, the per-cluster *cached*
layout so they can share the process), each with the initial-sync proportions (81 %
ipcache entries of ~300 bytes, 16 % identities, 2 % services, 1 % nodes).  For each size
a fresh local etcd and a fresh daemon configured with just that cluster are started;
once every sync canary exists and ``/readyz`` says Ready, the daemon idles for
``--settle`` seconds and its ``VmRSS`` (and peak ``VmHWM``) is read from /proc.

Figure: the least-squares slope of RSS over cached keys (bytes per key) and its
intercept (the daemon's fixed cost).  Reference, same run: the average key + value
size of the cached objects (what the payload itself would take).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench._etcd import EtcdProcess
from bench._mesh import (
    Daemon,
    Results,
    Shape,
    bench_main,
    cache_objects,
    client_for,
    count_prefix,
    etcd_info,
    local_canaries,
    log,
    publish,
    wait_keys,
    workdir,
)

BASE = Shape(endpoints=100_000, identities=20_000, services=2_000, nodes=1_000)


def least_squares(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


async def measure(remote: EtcdProcess, name: str, cid: int, total: int,
                  args: argparse.Namespace) -> dict[str, Any]:
    with EtcdProcess() as local, workdir("memory") as wd:
        daemon = Daemon(wd, local.client_url, max_txn_ops=args.txn_ops,
                        max_inflight=args.inflight)
        daemon.configure({name: remote.client_url})
        async with client_for(local.client_url) as client, aiohttp.ClientSession() as http:
            daemon.start()
            try:
                await wait_keys(client, local_canaries([name]), timeout=600, daemon=daemon)
                ready = await daemon.wait_ready(http, 60)
                synced_rss = daemon.rss_mib()
                await asyncio.sleep(args.settle)
                rss, peak = daemon.rss_mib(), daemon.peak_rss_mib()
                status = await daemon.status(http)
            finally:
                daemon.stop()
            cached = await count_prefix(client, b"cilium/cache/")
    assert cached == total, f"{name}: cache holds {cached} keys, expected {total}"
    counts = {k: v for k, v in status[0].items() if k.startswith("num-")}
    return {"cluster": name, "cached_keys": cached, "rss_mib": round(rss, 1),
            "rss_mib_at_ready": round(synced_rss, 1), "peak_rss_mib": round(peak, 1),
            "ready_s": round(ready, 2), "status_counts": counts}


async def run(args: argparse.Namespace) -> None:
    results = Results("memory" if not args.quick else "memory-quick", args, args.output)
    shapes = [(f"mem{n}", i + 1, BASE.scaled(n)) for i, n in enumerate(args.sizes)]
    payload = [len(op.key) + len(op.value)
               for op in cache_objects("mem", 1, BASE.scaled(min(args.sizes)))]
    with EtcdProcess() as remote:
        results.etcd = etcd_info(remote)
        async with client_for(remote.client_url) as client:
            t = time.monotonic()
            for name, cid, shape in shapes:
                await publish(client, name, cid, shape, cached=True)
            log(f"remote filled ({', '.join(f'{n}: {s.total}' for n, _, s in shapes)}) in "
                f"{time.monotonic() - t:.1f}s")
        points = []
        for name, cid, shape in shapes:
            point = await measure(remote, name, cid, shape.total, args)
            log(f"{name}: {point}")
            points.append(point)
    xs = [float(p["cached_keys"]) for p in points]
    slope, intercept = least_squares(xs, [p["rss_mib"] * 2**20 for p in points])
    steps = [round((b["rss_mib"] - a["rss_mib"]) * 2**20
                      / (b["cached_keys"] - a["cached_keys"])) for a, b in pairwise(points)]
    results.emit("memory_bytes_per_key", round(slope), "bytes/key",
                 intercept_mib=round(intercept / 2**20, 1), pairwise_bytes_per_key=steps,
                 reference={"payload_bytes_per_key": round(sum(payload) / len(payload)),
                            "target_bytes_per_key": 1024},
                 params={"points": points, "settle_s": args.settle,
                         "proportions": BASE.as_dict(), "layout": "cached"})
    for p in points:
        results.emit("memory_rss", p["rss_mib"], "MiB", cached_keys=p["cached_keys"],
                     peak_rss_mib=p["peak_rss_mib"])
    results.write()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",") if x],
                   default=[30_000, 100_000, 300_000], help="cached keys per point")
    p.add_argument("--settle", type=float, default=3.0, help="idle seconds before reading RSS")
    p.add_argument("--txn-ops", type=int, default=128)
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="sizes 10k, 30k")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.sizes = [10_000, 30_000]
    if len(args.sizes) < 2:
        p.error("--sizes needs at least two sizes")
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
