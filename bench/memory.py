#!/usr/bin/env python3
"""Memory: the daemon's RSS once synced, at two cache sizes; bytes per cached key.

    python bench/memory.py                        # 150k and 300k cached keys, 5 rounds
    python bench/memory.py --sizes 10000,30000    # other sizes (at least two)
    python bench/memory.py --quick                # 10k and 30k, 2 rounds

One remote etcd publishes one cluster per size (``mem<N>``, the per-cluster *cached*
layout so they can share the process), each with the initial-sync proportions (81 %
ipcache entries of ~300 bytes, 16 % identities, 2 % services, 1 % nodes).  Each round,
for each size in turn, a fresh local etcd and a fresh daemon configured with just that
cluster are started; once every sync canary exists and ``/readyz`` says Ready, the daemon
idles for ``--settle`` seconds and its ``VmRSS`` (and peak ``VmHWM``) is read from /proc.

Figure (issue M): the slope of RSS over cached keys between the smallest and the largest
size (bytes per cached key), one per round; the median over rounds, min-max, against
the goal of 180 bytes per key; and the least-squares intercept (the daemon's fixed cost).
Reference, same run: the average key + value size of the cached objects (what the
payload itself would take).

RSS is read as the daemon leaves it, without a ``gc.collect()`` in the daemon: nothing
outside can ask for one, and one run with a collection at the moment the daemon became
ready read the same RSS (bench/results/m-levers/memory-gc-collect-at-ready.json, 128.2
and 152.9 MiB, against 127.2 and 152.9 without): the initial sync leaves no cyclic
garbage, and freed memory stays in CPython's arenas either way.
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
    median,
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
    rounds: list[list[dict[str, Any]]] = []
    with EtcdProcess() as remote:
        results.etcd = etcd_info(remote)
        async with client_for(remote.client_url) as client:
            t = time.monotonic()
            for name, cid, shape in shapes:
                await publish(client, name, cid, shape, cached=True)
            log(f"remote filled ({', '.join(f'{n}: {s.total}' for n, _, s in shapes)}) in "
                f"{time.monotonic() - t:.1f}s")
        for round_ in range(args.repeat):
            points = []
            for name, cid, shape in shapes:
                point = await measure(remote, name, cid, shape.total, args)
                log(f"round {round_ + 1}, {name}: {point}")
                points.append(point)
            rounds.append(points)

    def slope_of(points: list[dict[str, Any]]) -> float:
        low, high = points[0], points[-1]
        return ((high["rss_mib"] - low["rss_mib"]) * 2**20
                / (high["cached_keys"] - low["cached_keys"]))

    slopes = [slope_of(points) for points in rounds]
    xs = [float(p["cached_keys"]) for points in rounds for p in points]
    _, intercept = least_squares(xs, [p["rss_mib"] * 2**20 for points in rounds
                                      for p in points])
    per_key = round(median(slopes))
    payload_per_key = round(sum(payload) / len(payload))
    results.emit("memory_bytes_per_key", per_key, "bytes/key",
                 runs={"median": per_key, "min": round(min(slopes)),
                       "max": round(max(slopes)), "samples": [round(x) for x in slopes]},
                 intercept_mib=round(intercept / 2**20, 1),
                 reference={"name": "payload (key + value bytes)",
                            "median": payload_per_key},
                 ratio=round(per_key / payload_per_key, 2), goal="≤ 180 bytes/key",
                 met=per_key <= 180,
                 params={"sizes": args.sizes, "rounds": rounds, "settle_s": args.settle,
                         "proportions": BASE.as_dict(), "layout": "cached"})
    for i, size in enumerate(args.sizes):
        rss = [points[i]["rss_mib"] for points in rounds]
        results.emit("memory_rss", round(median(rss), 1), "MiB",
                     cached_keys=rounds[0][i]["cached_keys"],
                     runs={"median": median(rss), "min": min(rss), "max": max(rss),
                           "samples": rss},
                     peak_rss_mib=max(points[i]["peak_rss_mib"] for points in rounds),
                     size=size)
    results.write()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",") if x],
                   default=[150_000, 300_000], help="cached keys per point")
    p.add_argument("--repeat", type=int, default=5, help="rounds (every size once a round)")
    p.add_argument("--settle", type=float, default=3.0, help="idle seconds before reading RSS")
    p.add_argument("--txn-ops", type=int, default=128)
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="sizes 10k, 30k")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.sizes, args.repeat = [10_000, 30_000], 2
    if len(args.sizes) < 2:
        p.error("--sizes needs at least two sizes")
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
