#!/usr/bin/env python3
"""The floor of propagation: a bare relay, run as a fresh process.

    python bench/relay.py --local URL --remote URL PREFIX [PREFIX ...] [--remote ...] \\
        [--inflight 16]

The reference of bench/latency.py.  What any mirror must do to carry a remote change
into the local etcd — and nothing else: for every ``--remote`` (one client per remote,
as the daemon has one connection per remote cluster) and each of its prefixes (one
watch each, as the daemon runs one reflector per resource), etcd's mirror pattern —
list at one revision R, then watch from R + 1 — and every watched event becomes one
``Put`` (same value) or ``Delete`` of the **same key** in the local etcd.  The remotes
of bench/latency.py publish the per-cluster *cached* layout (``cilium/cache/...``),
which is also where KVStoreMesh caches those keys, so a key maps to itself.  No
validation, no diff against the cache, no txn batching, no metrics, no HTTP.

* **The base is not copied.**  The list only fixes R: latency.py starts the relay on a
  cache the daemon synced (and earlier relay windows kept in step with the same
  values), so copying the base would only rewrite equal keys.  The list is keys-only.
* **Writes**: up to ``--inflight`` puts/deletes in flight (one per event; more than the
  daemon's 4 txns, because one key per request needs more requests in the air to keep
  up at thousands of events/s).  Two events on one key are written in order: the
  second waits for the first.  When every slot is taken the watches wait (backpressure,
  as the daemon's writer applies it).
* **"ready"** is printed on stdout once every watch stream is *established* (etcd
  answered it), not merely requested.  The client's watch does not surface etcd's
  "created" answer, so each watch starts at the newest ``mod_revision`` M <= R its list
  saw: etcd replays the event at M within its next pass over lagging watchers (every
  0.1 s), which proves the stream is up; events at or below R are already in the cache
  and are skipped.  (A prefix with no keys has no M: its watch starts at R + 1 and
  counts as up at once.)
* **Exit**: on SIGTERM or SIGINT (with ``--stop-on-eof`` also when stdin reaches EOF,
  i.e. the parent holding the pipe died), the watches are cancelled, the writes in
  flight finish, and one JSON line is printed: watches, events relayed, puts, deletes,
  write errors.  A failed write is counted and printed on stderr, not retried beyond
  what the client retries itself.

Imports only our etcd client and its config parser (like bench/copier.py), so its
start-up costs what a small program of ours costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clustermesh.etcd.client import EtcdClient, Event
from clustermesh.etcd.config import parse_etcd_config
from clustermesh.etcd.watch import PUT


def client_for(url: str) -> EtcdClient:
    # Not bench._mesh's: this process imports nothing it does not use.
    return EtcdClient(parse_etcd_config(f"endpoints:\n- {url}\n"), name=url,
                      request_timeout=120.0)


@dataclass
class Writer:
    """One put/delete per event into the local etcd, a bounded number in flight, per-key
    order kept."""

    client: EtcdClient
    inflight: int
    events: int = 0
    puts: int = 0
    deletes: int = 0
    errors: int = 0
    _slots: asyncio.Semaphore = field(init=False)
    _last: dict[bytes, asyncio.Task[None]] = field(default_factory=dict)
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.inflight)

    async def apply(self, event: Event) -> None:
        await self._slots.acquire()  # all slots busy: the watch waits (backpressure)
        key = bytes(event.kv.key)
        value = bytes(event.kv.value) if event.type == PUT else None
        self.events += 1
        task = asyncio.create_task(self._write(key, value, self._last.get(key)))
        self._last[key] = task
        self._pending.add(task)
        task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: bytes, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        self._slots.release()
        if self._last.get(key) is task:
            del self._last[key]

    async def _write(self, key: bytes, value: bytes | None,
                     before: asyncio.Task[None] | None) -> None:
        if before is not None:
            # The previous write of this key first, or the cache could end up with the
            # older value (writes in flight may complete in any order).
            await asyncio.wait([before])
        try:
            if value is None:
                await self.client.delete(key)
                self.deletes += 1
            else:
                await self.client.put(key, value)
                self.puts += 1
        except Exception as exc:  # counted and reported; the benchmark sees it missing
            self.errors += 1
            print(f"relay: writing {key!r} failed: {exc!r}", file=sys.stderr, flush=True)

    async def drain(self) -> None:
        while self._pending:
            await asyncio.wait(list(self._pending))


async def follow(client: EtcdClient, prefix: bytes, writer: Writer,
                 established: asyncio.Event) -> None:
    """List ``prefix`` at one revision R, then relay every event after R, forever."""
    listed, newest = 0, 0
    async for page, revision in client.range_pages(prefix, keys_only=True):
        listed = revision
        for kv in page:
            newest = max(newest, kv.mod_revision)
    if not newest:
        established.set()  # nothing to replay that would prove the stream is up
    async with client.watch(prefix, start_revision=newest or listed + 1,
                            progress_notify=False) as watch:
        async for batch in watch:
            established.set()
            for event in batch.events:
                if event.kv.mod_revision > listed:  # at or below R: already in the cache
                    await writer.apply(event)


async def relay(args: argparse.Namespace) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.stop_on_eof:
        # stdin is a pipe from the benchmark: its EOF means the benchmark is gone, and a
        # relay left behind would retry its watches for ever.
        loop.add_reader(sys.stdin.fileno(), functools.partial(_on_stdin, stop))

    local = client_for(args.local)
    remotes = [(client_for(url), [p.encode() for p in prefixes])
               for url, *prefixes in args.remote]
    for client in [local, *(c for c, _ in remotes)]:
        await client.connect()
    writer = Writer(local, args.inflight)
    established: list[asyncio.Event] = []
    follows: list[asyncio.Task[None]] = []
    for client, prefixes in remotes:
        for prefix in prefixes:
            established.append(asyncio.Event())
            follows.append(asyncio.create_task(follow(client, prefix, writer,
                                                      established[-1])))

    async def all_established() -> None:
        for event in established:
            await event.wait()

    stopping = asyncio.create_task(stop.wait())
    all_up = asyncio.create_task(all_established())
    try:
        # A follow that ends (it only ends by failing) must not leave us waiting.
        await asyncio.wait([all_up, stopping, *follows], return_when=asyncio.FIRST_COMPLETED)
        _raise_failures(follows)
        if not stop.is_set():
            print("ready", flush=True)
            await asyncio.wait([stopping, *follows], return_when=asyncio.FIRST_COMPLETED)
            _raise_failures(follows)
    finally:
        for task in [*follows, stopping, all_up]:
            task.cancel()
        for task in follows:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await writer.drain()
        for client in [local, *(c for c, _ in remotes)]:
            await client.close()
    return {"watches": len(follows), "events": writer.events, "puts": writer.puts,
            "deletes": writer.deletes, "errors": writer.errors}


def _on_stdin(stop: asyncio.Event) -> None:
    if not os.read(sys.stdin.fileno(), 4096):
        stop.set()


def _raise_failures(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError("a watch failed") from task.exception()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--local", required=True, help="local etcd URL")
    p.add_argument("--remote", nargs="+", action="append", required=True,
                   metavar="URL PREFIX", help="a remote etcd URL and the prefixes to relay")
    p.add_argument("--inflight", type=int, default=16, help="local writes in flight")
    p.add_argument("--stop-on-eof", action="store_true",
                   help="also stop when stdin reaches EOF (stdin: a pipe from the parent)")
    args = p.parse_args()
    if any(len(r) < 2 for r in args.remote):
        p.error("--remote takes a URL and at least one prefix")
    print(json.dumps(asyncio.run(relay(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
