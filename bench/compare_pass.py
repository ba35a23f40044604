#!/usr/bin/env python3
"""The floor of a restart on an unchanged cache: a bare list-and-compare pass, run as a
fresh process.

    python bench/compare_pass.py --local URL \\
        --pair REMOTE_URL REMOTE_PREFIX LOCAL_PREFIX [--pair ...] [--page-size 5000]

A restarted KVStoreMesh with nothing changed while it was down cannot be ready before it
has read both sides and found them equal; this program does that — and nothing else.
For every ``--pair`` (one per reflector the daemon runs: remote cluster x resource), all
pairs at once as the daemon runs its reflectors at once:

1. a paged Range of ``LOCAL_PREFIX`` on the local etcd (what the cache holds), kept as
   ``{key: value}``;
2. a paged Range of ``REMOTE_PREFIX`` on ``REMOTE_URL``, every page at the revision of the
   first (one snapshot); each key translated to the cache prefix (the suffix after the
   remote prefix kept verbatim, as the daemon does) and its value compared byte for byte
   with the cached one;
3. a difference is a remote key missing from the cache, a value that is not byte-equal,
   or a cached key the remote no longer has.

It writes nothing (no canary, no election, no lease), validates nothing, keeps no
digests, runs no watch and serves no HTTP: the daemon's extra work over this pass is
what bench/restart.py measures.  It uses the daemon's grpc.aio client with the daemon's
page size (5000), and imports only that client and its config parser, so its Python
start-up is counted like the daemon's (bench/restart.py times it from spawn to exit).
One client per distinct etcd URL.  It prints one JSON line: ``keys`` (remote keys
compared), ``cached`` (local keys read), ``differences``, ``pairs``, ``seconds`` (from the
first request to the last comparison, start-up excluded) and up to three example keys
that differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import parse_etcd_config

EXAMPLES = 3  # differing keys shown in the output, enough to see what went wrong


def client_for(url: str) -> EtcdClient:
    # Not bench._mesh's: this process imports nothing it does not use (its start counts).
    return EtcdClient(parse_etcd_config(f"endpoints:\n- {url}\n"), name=url,
                      request_timeout=120.0)


@dataclass
class Tally:
    keys: int = 0
    cached: int = 0
    differences: int = 0
    examples: list[str] = field(default_factory=list)

    def differs(self, key: bytes) -> None:
        self.differences += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(key.decode(errors="replace"))


async def compare(local: EtcdClient, remote: EtcdClient, source: bytes, target: bytes,
                  page_size: int, tally: Tally) -> None:
    """One pair: the cache under ``target`` against the remote under ``source``."""
    cached: dict[bytes, bytes] = {}
    async for page, _ in local.range_pages(target, page_size=page_size):
        for kv in page:
            cached[kv.key] = kv.value
    tally.cached += len(cached)
    cut, pop = len(source), cached.pop
    async for page, _ in remote.range_pages(source, page_size=page_size):
        tally.keys += len(page)
        for kv in page:
            key = target + kv.key[cut:]
            # pop: what is left in ``cached`` afterwards is gone from the remote.
            if pop(key, None) != kv.value:
                tally.differs(key)
    for key in cached:
        tally.differs(key)


async def run(args: argparse.Namespace) -> dict[str, object]:
    urls = {args.local, *(url for url, _, _ in args.pair)}
    clients = {url: client_for(url) for url in urls}
    for client in clients.values():
        await client.connect()
    tally = Tally()
    t0 = time.monotonic()
    await asyncio.gather(*(
        compare(clients[args.local], clients[url], source.encode(), target.encode(),
                args.page_size, tally)
        for url, source, target in args.pair))
    seconds = time.monotonic() - t0
    for client in clients.values():
        await client.close()
    return {"keys": tally.keys, "cached": tally.cached, "differences": tally.differences,
            "pairs": len(args.pair), "seconds": round(seconds, 3),
            "examples": tally.examples}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--local", required=True, help="the local etcd (the cache)")
    p.add_argument("--pair", nargs=3, action="append", required=True,
                   metavar=("REMOTE_URL", "REMOTE_PREFIX", "LOCAL_PREFIX"),
                   help="one remote prefix and the cache prefix it is mirrored to")
    p.add_argument("--page-size", type=int, default=5000)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
