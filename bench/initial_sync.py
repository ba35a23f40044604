#!/usr/bin/env python3
"""Initial sync: one remote cluster into an empty local cache, against its ceiling.

    python bench/initial_sync.py                 # 100k ipcache + 20k identities + 2k services
                                                 # + 1k nodes; max-txn-ops 128 and 1024
    python bench/initial_sync.py --quick         # 12.3k objects, 1 run each, short mirror

One remote etcd holds what a clustermesh-apiserver publishes for ``cluster1`` (state
layout, cluster-config, heartbeat, sync canaries).  For each ``--txn-ops`` value N
(the local etcd is started with ``--max-txn-ops=N``) and each of ``--repeat`` rounds:

* **ceiling** — a fresh local etcd; a bare ``BatchWriter(max_txn_ops=N,
  max_inflight=--inflight)`` in this process writes exactly the cache keys and values
  the daemon would write (built beforehand): no remote read, no watch, no diff;
* **daemon** — a fresh local etcd; ``python -m kvstoremesh.main --max-txn-ops N
  --kvstore-opt etcd.maxInflight=<inflight>`` is started; the local etcd is polled
  (``Status`` and the ``cilium/synced/`` prefix, every 20 ms) for the first write and
  for the last sync canary.  ``keys/s`` is objects / (last canary - first local write);
  ``seconds_to_all_canaries`` counts from the daemon's spawn (Python start-up included).

Then, once, the other reference: ``etcdctl make-mirror`` (Debian etcd-client), one
process per mirrored prefix (ipcache, identities, services, nodes, each with its
``--dest-prefix`` in the cache layout) into a fresh local etcd, timed until the cache
holds every object (or ``--mirror-timeout``, then the rate so far is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench._batch import BatchWriter, Put
from bench._etcd import EtcdProcess
from bench._mesh import (
    MIRRORED,
    CpuMeter,
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
    workdir,
)

NAME, CID = "cluster1", 1
FULL = Shape(endpoints=100_000, identities=20_000, services=2_000, nodes=1_000)


def local_etcd(txn_ops: int) -> EtcdProcess:
    return EtcdProcess(extra_args=[f"--max-txn-ops={txn_ops}"] if txn_ops != 128 else [])


async def ceiling_run(ops: list[Put], txn_ops: int, inflight: int) -> dict[str, Any]:
    with local_etcd(txn_ops) as local:
        async with client_for(local.client_url) as client:
            await client.status()
            meter = CpuMeter({"local_etcd": local.pid})
            meter.start()
            t = time.monotonic()
            await BatchWriter(client, max_txn_ops=txn_ops, max_inflight=inflight).apply(ops)
            seconds = time.monotonic() - t
            cpu = meter.stop()
            count = await count_prefix(client, b"cilium/cache/")
    assert count == len(ops), f"ceiling wrote {count} keys, expected {len(ops)}"
    return {"seconds": round(seconds, 3), "keys_per_s": round(len(ops) / seconds), "cpu_s": cpu}


async def daemon_run(remote: EtcdProcess, total: int, txn_ops: int, inflight: int,
                     *, profile: Path | None = None, profile_format: str = "speedscope",
                     profile_rate: int = 100,
                     repo: Path | None = None, extra_args: tuple[str, ...] = (),
                     timeout: float = 600.0) -> dict[str, Any]:
    wanted = local_canaries([NAME])
    with local_etcd(txn_ops) as local, workdir("initial-sync") as wd:
        daemon = Daemon(wd, local.client_url, max_txn_ops=txn_ops, max_inflight=inflight,
                        profile_output=profile, profile_format=profile_format,
                        profile_rate=profile_rate,
                        extra_args=extra_args, **({"repo": repo} if repo else {}))
        daemon.configure({NAME: remote.client_url})
        async with client_for(local.client_url) as client, aiohttp.ClientSession() as http:
            base = (await client.status()).revision
            spawn = daemon.start()
            try:
                meter = CpuMeter({"daemon": None, "local_etcd": local.pid,
                                  "remote_etcd": remote.pid})
                meter.start()
                first_write = None
                deadline = spawn + timeout
                while True:
                    daemon.check_alive()
                    if meter.pids["daemon"] is None and daemon.pid is not None:
                        meter.pids["daemon"] = daemon.pid  # CPU counted from its start
                    if first_write is None and (await client.status()).revision > base:
                        first_write = time.monotonic()
                    if first_write is not None:
                        kvs, _ = await client.list_prefix(b"cilium/synced/")
                        if wanted <= {kv.key for kv in kvs}:
                            done = time.monotonic()
                            break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not synced after {timeout}s:\n{daemon.log_tail()}")
                    await asyncio.sleep(0.02)
                cpu = meter.stop()
                cpu["daemon"] = round(daemon.cpu_seconds(), 2)  # whole life, start-up included
                ready = await daemon.wait_ready(http, 60)
                rss, peak = daemon.rss_mib(), daemon.peak_rss_mib()
            finally:
                daemon.stop()
            cached = await count_prefix(client, b"cilium/cache/")
    assert cached == total, f"daemon cached {cached} keys, expected {total}"
    sync = done - first_write
    return {"seconds_to_all_canaries": round(done - spawn, 3),
            "startup_s": round(first_write - spawn, 3), "sync_s": round(sync, 3),
            "keys_per_s": round(total / sync), "ready_s": round(ready, 3),
            "rss_mib": round(rss, 1), "peak_rss_mib": round(peak, 1), "cpu_s": cpu}


def etcdctl_version(etcdctl: str) -> str:
    return subprocess.run([etcdctl, "version"], capture_output=True, text=True,
                          check=False).stdout.split("\n")[0]


def spawn_mirror(etcdctl: str, source: str, dest: str, prefix: str, dest_prefix: str,
                 log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as logfile:
        return subprocess.Popen(
            [etcdctl, f"--endpoints={source}", "make-mirror", f"--prefix={prefix}",
             f"--dest-prefix={dest_prefix}", dest],
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})


async def mirror_run(remote: EtcdProcess, total: int, timeout: float) -> dict[str, Any]:
    etcdctl = shutil.which("etcdctl", path="/usr/bin") or shutil.which("etcdctl")
    if etcdctl is None:
        raise SystemExit("etcdctl not found (apt-get install etcd-client)")
    version = etcdctl_version(etcdctl)
    with local_etcd(128) as local, workdir("make-mirror") as wd:
        async with client_for(local.client_url) as client:
            procs = []
            meter = CpuMeter({"local_etcd": local.pid, "remote_etcd": remote.pid})
            t = time.monotonic()
            try:
                for resource in MIRRORED:
                    procs.append(spawn_mirror(
                        etcdctl, remote.client_url, local.client_url, resource.state_prefix(NAME),
                        resource.cache_prefix(NAME), wd / f"mirror-{resource.name}.log"))
                meter.pids.update({f"etcdctl_{i}": p.pid for i, p in enumerate(procs)})
                meter.start()
                count = 0
                while time.monotonic() - t < timeout:
                    await asyncio.sleep(0.25)
                    count = await count_prefix(client, b"cilium/cache/")
                    if count >= total:
                        break
                seconds = time.monotonic() - t
                cpu = meter.stop()
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    etcdctl_cpu = sum(v for k, v in cpu.items() if k.startswith("etcdctl_"))
    return {"etcdctl": f"{etcdctl} ({version})", "processes": len(procs),
            "keys_mirrored": count, "complete": count >= total, "seconds": round(seconds, 2),
            "keys_per_s": round(count / seconds),
            "cpu_s": {"etcdctl": round(etcdctl_cpu, 2), "local_etcd": cpu["local_etcd"],
                      "remote_etcd": cpu["remote_etcd"], "bench": cpu["bench"]}}


async def run(args: argparse.Namespace) -> None:
    results = Results("initial_sync" if not args.quick else "initial_sync-quick", args,
                      args.output)
    shape = FULL.scaled(args.objects) if args.objects else FULL
    total = shape.total
    ops = list(cache_objects(NAME, CID, shape))
    with EtcdProcess() as remote:
        results.etcd = etcd_info(remote)
        async with client_for(remote.client_url) as client:
            t = time.monotonic()
            await publish(client, NAME, CID, shape, cached=False)
            log(f"remote filled with {total} objects in {time.monotonic() - t:.1f}s "
                f"({shape.as_dict()})")
        for txn_ops in args.txn_ops:
            ceilings, daemons, baselines, variants = [], [], [], []
            for rnd in range(args.repeat):
                c = await ceiling_run(ops, txn_ops, args.inflight)
                log(f"[txn_ops={txn_ops} round {rnd + 1}] ceiling: {c['keys_per_s']:,} keys/s "
                    f"({c['seconds']}s, cpu {c['cpu_s']})")
                d = await daemon_run(remote, total, txn_ops, args.inflight)
                log(f"[txn_ops={txn_ops} round {rnd + 1}] daemon: {d['keys_per_s']:,} keys/s "
                    f"(sync {d['sync_s']}s, {d['seconds_to_all_canaries']}s from spawn, "
                    f"cpu {d['cpu_s']})")
                ceilings.append(c)
                daemons.append(d)
                if args.baseline_tree:
                    b = await daemon_run(remote, total, txn_ops, args.inflight,
                                         repo=args.baseline_tree)
                    log(f"[txn_ops={txn_ops} round {rnd + 1}] baseline daemon "
                        f"({args.baseline_tree}): {b['keys_per_s']:,} keys/s (sync {b['sync_s']}s,"
                        f" cpu {b['cpu_s']})")
                    baselines.append(b)
                if args.variant:
                    v = await daemon_run(remote, total, txn_ops, args.inflight,
                                         extra_args=tuple(args.variant.split()))
                    log(f"[txn_ops={txn_ops} round {rnd + 1}] variant daemon ({args.variant}): "
                        f"{v['keys_per_s']:,} keys/s (sync {v['sync_s']}s, cpu {v['cpu_s']})")
                    variants.append(v)
            value = median([d["keys_per_s"] for d in daemons])
            ceiling = median([c["keys_per_s"] for c in ceilings])
            results.emit(
                "initial_sync", round(value), "keys/s",
                percent_of_ceiling=round(100 * value / ceiling, 1),
                seconds_to_all_canaries=median([d["seconds_to_all_canaries"] for d in daemons]),
                sync_seconds=median([d["sync_s"] for d in daemons]),
                reference={"ceiling_keys_per_s": round(ceiling),
                           "ceiling_seconds": median([c["seconds"] for c in ceilings])},
                params={"objects": shape.as_dict(), "max_txn_ops": txn_ops,
                        "max_inflight": args.inflight, "runs": args.repeat,
                        "daemon": daemons, "ceiling": ceilings})
            if variants:
                var = median([v["keys_per_s"] for v in variants])
                results.emit(
                    "initial_sync_variant", round(var), "keys/s",
                    percent_of_ceiling=round(100 * var / ceiling, 1),
                    reference={"daemon_keys_per_s": round(value),
                               "ceiling_keys_per_s": round(ceiling)},
                    params={"daemon_args": args.variant, "max_txn_ops": txn_ops,
                            "max_inflight": args.inflight, "runs": args.repeat,
                            "daemon": variants})
            if baselines:
                base = median([b["keys_per_s"] for b in baselines])
                results.emit(
                    "initial_sync_baseline", round(base), "keys/s",
                    percent_of_ceiling=round(100 * base / ceiling, 1),
                    speedup=round(value / base, 2),
                    seconds_to_all_canaries=median([b["seconds_to_all_canaries"]
                                                    for b in baselines]),
                    reference={"daemon_keys_per_s": round(value),
                               "ceiling_keys_per_s": round(ceiling)},
                    params={"tree": str(args.baseline_tree), "max_txn_ops": txn_ops,
                            "max_inflight": args.inflight, "runs": args.repeat,
                            "daemon": baselines})
        if args.mirror_timeout > 0:
            log(f"etcdctl make-mirror of {total} objects (timeout {args.mirror_timeout}s)")
            m = await mirror_run(remote, total, args.mirror_timeout)
            daemon_128 = next((f for f in results.figures
                               if f["params"]["max_txn_ops"] == args.txn_ops[0]), None)
            ratio = round(daemon_128["value"] / m["keys_per_s"], 1) if daemon_128 else None
            results.emit("make_mirror", m["keys_per_s"], "keys/s",
                         daemon_speedup=ratio,
                         reference={"daemon_keys_per_s": daemon_128["value"] if daemon_128
                                    else None, "daemon_max_txn_ops": args.txn_ops[0]},
                         params={"objects": shape.as_dict(), **m})
    results.write()


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=0,
                   help="total objects, same proportions (default 123000: 100k/20k/2k/1k)")
    p.add_argument("--txn-ops", type=int_list, default=[128, 1024],
                   help="max txn ops values (local etcd and daemon), comma separated")
    p.add_argument("--inflight", type=int, default=4,
                   help="txns in flight (daemon etcd.maxInflight, ceiling max_inflight)")
    p.add_argument("--repeat", type=int, default=3, help="rounds per setting (median)")
    p.add_argument("--mirror-timeout", type=float, default=240.0,
                   help="seconds to let etcdctl make-mirror run (0: skip it)")
    p.add_argument("--baseline-tree", type=Path, default=None,
                   help="also run the daemon from this source tree each round (A/B)")
    p.add_argument("--variant", default="",
                   help="also run the daemon with these extra flags each round, e.g. "
                        "'--validate-remote-data=false'")
    p.add_argument("--quick", action="store_true", help="12.3k objects, 1 round, 30 s mirror")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.objects = args.objects or 12_300
        args.repeat = 1
        args.mirror_timeout = min(args.mirror_timeout, 30.0)
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
