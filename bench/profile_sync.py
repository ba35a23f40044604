#!/usr/bin/env python3
"""Where the initial sync's time goes: the daemon under py-spy, plus etcd's CPU.

    pip install py-spy                      # into the venv that runs the daemon
    python bench/profile_sync.py            # the initial_sync data set, max-txn-ops 128
    python bench/profile_sync.py --txn-ops 1024 --objects 300000

Runs one daemon pass of bench/initial_sync.py (one remote, 100k ipcache entries + 20k
identities + 2k services + 1k nodes into an empty local etcd) with the daemon started
under ``py-spy record --format raw`` (collapsed stacks; open them in speedscope.app or
flamegraph.pl).  Each sample is put in one category by its stack (first rule that
matches, see CATEGORIES), and the categories are scaled to the daemon's CPU seconds;
the local and remote etcd's CPU seconds over the same span complete the picture.

Writes ``bench/results/profile_sync.json`` (the table) and
``bench/results/profile_sync.collapsed.txt`` (the stacks).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._etcd import EtcdProcess
from bench._mesh import RESULTS, Results, bench_main, client_for, etcd_info, log, publish
from bench.initial_sync import CID, FULL, NAME, daemon_run

# (category, substrings any of which in the stack selects it); first match wins.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("gRPC poller thread", ("Thread.run",)),
    ("start-up (imports) and shutdown", ("!run_forever",)),
    # grpc.aio runs each unary call's _invoke (serialize, send, wait, parse) in a task of
    # its own: the stack does not say whether it was a Txn or a Range.
    ("gRPC unary calls (serialize, C core, parse)", ("UnaryUnaryCall", "grpc/_common.py")),
    ("validate entries (JSON parse, IP checks)", ("kvstoremesh/validation.py",)),
    ("local write: Txn call (our side)", ("SyncWriter._commit", "txn_request")),
    ("local write: build txn protobuf", ("SyncWriter._send_next",)),
    ("read cache on start (local range)", ("SyncStore.load",)),
    ("remote list: Range call (our side)", ("EtcdClient.range ", "range_pages")),
    ("write queue (put, take)", ("SyncWriter.put", "SyncWriter._enqueue", "SyncWriter._take")),
    ("diff: value digest and store", ("SyncStore.upsert", "SyncStore.delete")),
    ("diff: reflector loop (keys, dict)", ("Reflector._read_page", "Reflector._upsert",
                                           "Reflector._list_complete")),
    ("watches (remote events)", ("Watch._run", "Reflector._apply", "CanaryWatcher")),
    ("diagnostics (pod CIDRs)", ("kvstoremesh/diagnostics.py",)),
    ("metrics, HTTP, status", ("prometheus_client", "aiohttp", "metrics.py", "status.py")),
    ("event loop (epoll, dispatch)", ("selectors.py", "base_events.py", "events.py")),
]


def categorize(stack: str) -> str:
    for name, needles in CATEGORIES:
        for needle in needles:
            if needle.startswith("!"):
                if needle[1:] not in stack:
                    return name
            elif needle in stack:
                return name
    return "other"


def summarize(collapsed: Path) -> tuple[int, Counter[str], Counter[str]]:
    by_category: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        by_category[categorize(stack)] += n
        leaves[stack.split(";")[-1]] += n
    return total, by_category, leaves


async def run(args: argparse.Namespace) -> None:
    results = Results("profile_sync", args, args.output)
    stacks = args.stacks or RESULTS / "profile_sync.collapsed.txt"
    shape = FULL.scaled(args.objects) if args.objects else FULL
    with EtcdProcess() as remote:
        results.etcd = etcd_info(remote)
        async with client_for(remote.client_url) as client:
            t = time.monotonic()
            await publish(client, NAME, CID, shape, cached=False)
            log(f"remote filled with {shape.total} objects in {time.monotonic() - t:.1f}s")
        run_ = await daemon_run(remote, shape.total, args.txn_ops, args.inflight,
                                profile=stacks, profile_format="raw", profile_rate=args.rate)
    total, by_category, leaves = summarize(stacks)
    daemon_cpu = run_["cpu_s"]["daemon"]
    table = [{"category": name, "samples": n, "share": round(n / total, 3),
              "daemon_cpu_s": round(daemon_cpu * n / total, 2)}
             for name, n in by_category.most_common()]
    log(f"\ndaemon: {daemon_cpu:.2f} CPU-s over {run_['seconds_to_all_canaries']:.2f} s from "
        f"spawn ({total} samples); local etcd {run_['cpu_s']['local_etcd']:.2f} CPU-s, "
        f"remote etcd {run_['cpu_s']['remote_etcd']:.2f} CPU-s")
    for row in table:
        log(f"  {row['share']:6.1%}  {row['daemon_cpu_s']:5.2f}s  {row['category']}")
    log("top leaf frames:")
    for frame, n in leaves.most_common(12):
        log(f"  {n / total:6.1%}  {frame}")
    results.emit("profile_sync", run_["keys_per_s"], "keys/s",
                 seconds_to_all_canaries=run_["seconds_to_all_canaries"],
                 cpu_s=run_["cpu_s"], categories=table,
                 top_leaves=[{"frame": f, "share": round(n / total, 3)}
                             for f, n in leaves.most_common(20)],
                 params={"objects": shape.as_dict(), "max_txn_ops": args.txn_ops,
                         "max_inflight": args.inflight, "sampling_rate_hz": args.rate,
                         "stacks": str(stacks), "note": "keys/s under the profiler "
                         "(py-spy's sampling slows the daemon a little)"})
    results.write()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=0, help="default: 123000 (100k/20k/2k/1k)")
    p.add_argument("--txn-ops", type=int, default=128)
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--stacks", type=Path, default=None,
                   help="collapsed stacks file (default bench/results/profile_sync.collapsed.txt)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
