#!/usr/bin/env python3
"""Initial sync against its floor: KVStoreMesh and two bare copiers, alternating, one run.

    python bench/floor_sync.py               # 100k and 300k ipcache entries, 5 rounds
    python bench/floor_sync.py --quick       # 20k, 2 rounds

One remote etcd holds ``cluster1``'s ipcache (``--sizes`` entries, nothing else but its
cluster-config and canaries). Each round, in turn, each of three programs is started as a
fresh process against a fresh local etcd, and timed from its spawn to the ipcache sync
canary in the local etcd:

* **kvstoremesh** — the daemon with default flags (validation on), as bench/initial_sync.py
  runs it;
* **bare copier** — ``bench/copier.py``: a paged Range at one revision and 128-op Txns with
  4 in flight over the same grpc.aio client, no validation, no diff, then the canary;
* **decoding copier** — the same, JSON-decoding every value;
* with ``--baseline TREE``, also **baseline**: the daemon run from another source tree
  (a ``git worktree`` of an older commit), for the A/B of one change.

Figures: the median keys/s (entries / seconds from spawn to canary), min-max, and ours
over each copier's (issue M's goal: at least 0.95x the bare copier with validation on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._etcd import EtcdProcess
from bench._mesh import (
    REPO,
    Daemon,
    Results,
    Shape,
    bench_main,
    client_for,
    count_prefix,
    etcd_info,
    log,
    median,
    publish,
    workdir,
)
from clustermesh.keys import ENDPOINTS

NAME, CID = "cluster1", 1
CANARY = ENDPOINTS.cache_canary(NAME).encode()


async def until_canary(url: str, proc_alive: Any, timeout: float = 600.0) -> float:
    """Clock time the canary appears in the local etcd at ``url``."""
    async with client_for(url) as client:
        deadline = time.monotonic() + timeout
        while await client.get(CANARY) is None:
            proc_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("no canary")
            await asyncio.sleep(0.01)
        return time.monotonic()


async def kvstoremesh_run(remote: EtcdProcess, size: int, repo: Path = REPO) -> float:
    with EtcdProcess() as local, workdir("floor") as wd:
        daemon = Daemon(wd, local.client_url, repo=repo)
        daemon.configure({NAME: remote.client_url})
        try:
            spawn = daemon.start()
            done = await until_canary(local.client_url, daemon.check_alive)
        finally:
            daemon.stop()
        async with client_for(local.client_url) as client:
            cached = await count_prefix(client, ENDPOINTS.cache_prefix(NAME).encode())
    assert cached == size, f"cached {cached}, expected {size}"
    return done - spawn


async def copier_run(remote: EtcdProcess, size: int, *, decode: bool) -> float:
    with EtcdProcess() as local:
        argv = [sys.executable, str(REPO / "bench" / "copier.py"),
                "--source", remote.client_url, "--dest", local.client_url,
                "--prefix", ENDPOINTS.state_prefix(NAME),
                "--dest-prefix", ENDPOINTS.cache_prefix(NAME), "--canary", CANARY.decode(),
                *(["--decode"] if decode else [])]
        spawn = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stdin=asyncio.subprocess.DEVNULL)

        def alive() -> None:
            if proc.returncode not in (None, 0):
                raise RuntimeError(f"copier exited with {proc.returncode}")

        try:
            done = await until_canary(local.client_url, alive)
        finally:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        copied = json.loads(out)["keys"]
    assert copied == size, f"copied {copied}, expected {size}"
    return done - spawn


def summary(size: int, seconds: list[float]) -> dict[str, Any]:
    rates = [size / s for s in seconds]
    return {"median": round(median(rates)), "min": round(min(rates)),
            "max": round(max(rates)), "samples": [round(r) for r in rates],
            "seconds": [round(s, 3) for s in seconds]}


async def run(args: argparse.Namespace) -> None:
    results = Results("floor_sync" if not args.quick else "floor_sync-quick", args,
                      args.output)
    for size in args.sizes:
        runs: dict[str, list[float]] = {"kvstoremesh": [], "bare": [], "decoding": []}
        if args.baseline:
            runs["baseline"] = []
        with EtcdProcess() as remote:
            results.etcd = etcd_info(remote)
            async with client_for(remote.client_url) as rc:
                await publish(rc, NAME, CID, Shape(endpoints=size), cached=False)
            for round_ in range(args.repeat):
                runs["kvstoremesh"].append(await kvstoremesh_run(remote, size))
                runs["bare"].append(await copier_run(remote, size, decode=False))
                runs["decoding"].append(await copier_run(remote, size, decode=True))
                if args.baseline:
                    runs["baseline"].append(await kvstoremesh_run(remote, size,
                                                                  args.baseline))
                log(f"{size} entries, round {round_ + 1}: " + ", ".join(
                    f"{k} {v[-1]:.2f}s" for k, v in runs.items()))
        ours, bare, decoding = (summary(size, runs[k]) for k in ("kvstoremesh", "bare",
                                                                   "decoding"))
        if args.baseline:
            base = summary(size, runs["baseline"])
            results.emit("floor_initial_sync_baseline", base["median"], "keys/s",
                         entries=size, tree=str(args.baseline), runs=base,
                         over_baseline=round(ours["median"] / base["median"], 3))
        ratio = ours["median"] / bare["median"]
        results.emit("floor_initial_sync", ours["median"], "keys/s", entries=size,
                     runs=ours, reference={"name": "bare copier", **bare},
                     decoding_copier=decoding,
                     over_decoding=round(ours["median"] / decoding["median"], 2),
                     ratio=round(ratio, 2), goal="≥ 0.95x", met=ratio >= 0.95)
    results.write()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")],
                   default=[100_000, 300_000], help="ipcache entries, comma separated")
    p.add_argument("--repeat", type=int, default=5, help="rounds (each program once a round)")
    p.add_argument("--quick", action="store_true", help="20k entries, 2 rounds")
    p.add_argument("--baseline", type=Path, default=None,
                   help="also run the daemon from this source tree (an A/B baseline)")
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    if args.quick:
        args.sizes, args.repeat = [20_000], 2
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
