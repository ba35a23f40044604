#!/usr/bin/env python3
"""The floor of an initial sync: a bare copier, run as a fresh process.

    python bench/copier.py --source URL --dest URL --prefix P --dest-prefix Q \\
        [--canary KEY] [--decode] [--txn-ops 128] [--inflight 4]

It does what an initial sync cannot do without — and nothing else: a paged Range of
``--prefix`` at one revision on the source, each key translated to ``--dest-prefix``,
and 128-op Txns with 4 in flight into the destination, over the same grpc.aio client
the daemon uses; then ``--canary`` (the sync canary), once everything is committed.  No
validation, no diff against the destination, no watch, no metrics.  ``--decode`` also
parses every value as JSON (the cost of reading a value, without judging it), the second
reference of bench/floor_sync.py.  It prints one JSON line: keys copied and seconds from
its first request to its canary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._txnpipe import TxnPipe
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import parse_etcd_config


def client_for(url: str) -> EtcdClient:
    # Not bench._mesh's: this process imports nothing it does not use (its start counts).
    return EtcdClient(parse_etcd_config(f"endpoints:\n- {url}\n"), name=url,
                      request_timeout=120.0)


async def copy(args: argparse.Namespace) -> dict[str, object]:
    source, dest = client_for(args.source), client_for(args.dest)
    await source.connect()
    await dest.connect()
    prefix, target = args.prefix.encode(), args.dest_prefix.encode()
    cut = len(prefix)
    pipe = TxnPipe(dest, txn_ops=args.txn_ops, inflight=args.inflight)
    copied = 0
    t0 = time.monotonic()
    async for page, _ in source.range_pages(prefix):
        for kv in page:
            if args.decode:
                json.loads(kv.value)
            copied += 1
            if pipe.add(target + kv.key[cut:], kv.value):
                await pipe.send()
    await pipe.close()
    if args.canary:
        await dest.put(args.canary.encode(), b"2026-12-02T00:00:00Z")
    seconds = time.monotonic() - t0
    await source.close()
    await dest.close()
    return {"keys": copied, "seconds": round(seconds, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--dest-prefix", required=True)
    p.add_argument("--canary", default="")
    p.add_argument("--decode", action="store_true", help="also JSON-decode every value")
    p.add_argument("--txn-ops", type=int, default=128)
    p.add_argument("--inflight", type=int, default=4)
    args = p.parse_args()
    print(json.dumps(asyncio.run(copy(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
