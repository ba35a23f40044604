"""Watches of :class:`clustermesh.etcd.client.EtcdClient` against real etcd processes.

What is proven here: events arrive in order with ``prev_kv``; a start revision in the past
replays history; a compacted start revision ends the watch with ``EtcdCompacted`` carrying
the compact revision; a watch survives a ``kill -9`` + restart of its only server, and a
kill of the cluster member it reads from, delivering every event exactly once; a prefix
watch on ``cluster1/`` never sees ``cluster10/``; leaving the ``async with`` (or cancelling
the consuming task) closes the stream on the server and leaves no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
from pathlib import Path
from typing import Any

import pytest
from harness import EtcdCluster, EtcdServer

from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import EtcdCompacted
from clustermesh.etcd.watch import DELETE, PUT, Watch, WatchBatch


def make_client(target: EtcdServer | EtcdCluster, tmp_path: Path, name: str = "client",
                **kwargs: Any) -> EtcdClient:
    path = target.client_config(tmp_path / f"{name}.yaml")
    kwargs.setdefault("dial_timeout", 2.0)
    kwargs.setdefault("request_timeout", 10.0)
    return EtcdClient(load_etcd_config(path), name=name, **kwargs)


async def collect(watch: Watch, count: int, *, timeout: float = 15.0,
                  batches: list[WatchBatch] | None = None) -> list[Any]:
    """The next ``count`` events of ``watch`` (fails on a timeout instead of hanging)."""
    events: list[Any] = []
    async with asyncio.timeout(timeout):
        async for batch in watch:
            if batches is not None:
                batches.append(batch)
            events.extend(batch.events)
            if len(events) >= count:
                break
    return events


def keys_of(events: list[Any]) -> list[bytes]:
    return [ev.kv.key for ev in events]


class Consumer:
    """Iterates one watch in a background task (one ``async for`` for the whole test), so
    that server failures hit the stream while a consumer is waiting in it."""

    def __init__(self, watch: Watch) -> None:
        self.events: list[Any] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(watch))

    async def _run(self, watch: Watch) -> None:
        try:
            async for batch in watch:
                self.events.extend(batch.events)
                self._changed.set()
        finally:
            self._changed.set()

    async def wait_for(self, count: int, *, timeout: float = 15.0) -> list[Any]:
        """All events so far once there are at least ``count`` (the watch's error if it
        ended, a test failure after ``timeout``)."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.events) < count:
                    if self._task.done():
                        self._task.result()  # raises the watch's error
                        pytest.fail(f"watch ended after {len(self.events)} events")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"only {len(self.events)} of {count} events after {timeout}s: "
                        f"{keys_of(self.events)}")
        return list(self.events)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def watcher_gauges(server: EtcdServer) -> dict[str, float]:
    """etcd's own gauges of open watch streams and watchers (from ``/metrics``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.client_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    found = {}
    for name in ("etcd_debugging_mvcc_watch_stream_total", "etcd_debugging_mvcc_watcher_total"):
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} missing from /metrics"
        found[name] = float(match.group(1))
    return found


async def wait_for_watchers(server: EtcdServer, expected: float, timeout: float = 5.0) -> None:
    """Wait until etcd reports exactly ``expected`` watchers (and as many streams)."""
    gauges: dict[str, float] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                gauges = await asyncio.to_thread(watcher_gauges, server)
                if set(gauges.values()) == {expected}:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"etcd never reported {expected} watchers/streams: {gauges}")


async def test_events_in_order_with_prev_kv(etcd: EtcdServer, tmp_path: Path) -> None:
    async with make_client(etcd, tmp_path) as client:
        start = (await client.status()).revision + 1
        watch = client.watch(b"w/", start_revision=start, prev_kv=True)
        async with watch:
            r1 = await client.put(b"w/a", b"1")
            r2 = await client.put(b"w/a", b"2")
            await client.put(b"other/x", b"not watched")
            assert await client.delete(b"w/a") == 1
            r4 = await client.put(b"w/b", b"1")
            batches: list[WatchBatch] = []
            events = await collect(watch, 4, batches=batches)

    assert [(ev.type, ev.kv.key, ev.kv.value) for ev in events] == [
        (PUT, b"w/a", b"1"),
        (PUT, b"w/a", b"2"),
        (DELETE, b"w/a", b""),
        (PUT, b"w/b", b"1"),
    ]
    revisions = [ev.kv.mod_revision for ev in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == 4
    assert revisions[0] == r1 and revisions[1] == r2 and revisions[3] == r4
    # prev_kv: none for the create, the old value for the update and the delete.
    assert not events[0].HasField("prev_kv")
    assert events[1].prev_kv.value == b"1"
    assert events[2].prev_kv.value == b"2"
    assert events[2].prev_kv.version == 2
    assert not events[3].HasField("prev_kv")
    # The last batch says the watch has delivered everything up to the last event.
    assert batches[-1].revision == r4
    assert watch.next_revision == r4 + 1


async def test_start_revision_in_the_past_replays(etcd: EtcdServer, tmp_path: Path) -> None:
    async with make_client(etcd, tmp_path) as client:
        revs = [await client.put(f"hist/{i}".encode(), str(i).encode()) for i in range(6)]
        # Live events after the replay come after it, in order.
        async with client.watch(b"hist/", start_revision=revs[2]) as watch:
            replayed = await collect(watch, 4)
            late = await client.put(b"hist/late", b"x")
            live = await collect(watch, 1)

    assert keys_of(replayed) == [f"hist/{i}".encode() for i in range(2, 6)]
    assert [ev.kv.mod_revision for ev in replayed] == revs[2:]
    assert keys_of(live) == [b"hist/late"]
    assert live[0].kv.mod_revision == late


async def test_watch_from_compacted_revision_raises(etcd: EtcdServer, tmp_path: Path) -> None:
    async with make_client(etcd, tmp_path) as client:
        first = await client.put(b"c/a", b"1")
        for i in range(5):
            await client.put(b"c/a", str(i).encode())
        compacted = await asyncio.to_thread(etcd.compact)
        assert compacted > first
        watch = client.watch(b"c/", start_revision=first)
        with pytest.raises(EtcdCompacted) as info:
            async with asyncio.timeout(10), watch:
                async for _ in watch:
                    pytest.fail("a watch from a compacted revision delivered events")
        assert info.value.compact_revision == compacted
        assert str(compacted) in str(info.value)

        # From the compact revision on, watching works and replays the history still there.
        async with client.watch(b"c/", start_revision=compacted) as watch:
            events = await collect(watch, 1)
        assert events[0].kv.mod_revision == compacted


async def test_watch_survives_server_restart(etcd: EtcdServer, tmp_path: Path) -> None:
    """kill -9 + restart on the same data dir while a consumer is inside ``async for``:
    the one stream resumes by itself and delivers every event exactly once, in order."""
    async with make_client(etcd, tmp_path) as client:
        start = (await client.status()).revision + 1
        async with client.watch(b"r/", start_revision=start) as watch:
            consumer = Consumer(watch)
            for i in range(5):
                await client.put(f"r/before-{i}".encode(), b"x")
            await consumer.wait_for(5)
            # Written but (most likely) not yet consumed when the server dies.
            for i in range(3):
                await client.put(f"r/unread-{i}".encode(), b"x")
            etcd.kill()
            await asyncio.sleep(0.5)  # the consumer sees the broken stream and retries
            await asyncio.to_thread(etcd.start)
            # Written after the restart, by someone else and by this client.
            await asyncio.to_thread(etcd.put, "r/after-ctl", "x")
            for i in range(5):
                async with asyncio.timeout(15):
                    await client.put(f"r/after-{i}".encode(), b"x")
            await consumer.wait_for(14, timeout=20)
            # Nothing more is pending: the next event is the next write.
            await client.put(b"r/sentinel", b"x")
            seen = await consumer.wait_for(15)
            await consumer.stop()

    expected = (
        [f"r/before-{i}".encode() for i in range(5)]
        + [f"r/unread-{i}".encode() for i in range(3)]
        + [b"r/after-ctl"]
        + [f"r/after-{i}".encode() for i in range(5)]
        + [b"r/sentinel"]
    )
    assert keys_of(seen) == expected
    revisions = [ev.kv.mod_revision for ev in seen]
    assert revisions == sorted(set(revisions))
    assert watch.reconnects >= 1


async def test_prefix_does_not_match_longer_cluster_names(etcd: EtcdServer,
                                                          tmp_path: Path) -> None:
    async with make_client(etcd, tmp_path) as client:
        start = (await client.status()).revision + 1
        async with client.watch(b"cluster1/", start_revision=start) as watch:
            await client.put(b"cluster10/x", b"no")
            await client.put(b"cluster1/a", b"yes")
            await client.put(b"cluster10/y", b"no")
            await client.put(b"cluster1", b"no: the prefix itself is not under it")
            await client.put(b"cluster2/b", b"no")
            await client.put(b"cluster1/b", b"yes")
            events = await collect(watch, 2)
        assert keys_of(events) == [b"cluster1/a", b"cluster1/b"]

        # A single-key watch (prefix=False) sees only that key.
        start = (await client.status()).revision + 1
        async with client.watch(b"cluster1/a", prefix=False, start_revision=start) as watch:
            await client.put(b"cluster1/ab", b"no")
            await client.put(b"cluster1/a", b"again")
            events = await collect(watch, 1)
        assert [(ev.kv.key, ev.kv.value) for ev in events] == [(b"cluster1/a", b"again")]


async def test_cancellation_is_clean(etcd: EtcdServer, tmp_path: Path) -> None:
    """Leaving ``async with`` mid-stream closes the server-side watch and leaks no task;
    so does cancelling a task blocked in ``async for``; the client keeps working."""
    before = asyncio.all_tasks()
    async with make_client(etcd, tmp_path) as client:
        await wait_for_watchers(etcd, 0)
        start = (await client.status()).revision + 1
        for i in range(20):
            await client.put(f"x/{i:02d}".encode(), b"v")
        async with client.watch(b"x/", start_revision=start) as watch:
            async for batch in watch:
                assert batch.events
                await wait_for_watchers(etcd, 1)
                break  # mid-stream: more events may be pending
        await wait_for_watchers(etcd, 0)

        # A consumer task blocked in `async for` (nothing to read) is cancelled.
        entered = asyncio.Event()

        async def consume() -> None:
            async with client.watch(b"idle/") as idle:
                entered.set()
                async for batch in idle:
                    if batch.events:
                        pytest.fail("unexpected event")

        task = asyncio.create_task(consume())
        async with asyncio.timeout(5):
            await entered.wait()
        await wait_for_watchers(etcd, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for_watchers(etcd, 0)

        # The client still works: plain requests and a new watch.
        rev = await client.put(b"x/after", b"ok")
        assert (await client.get(b"x/after")).value == b"ok"
        async with client.watch(b"x/after", prefix=False, start_revision=rev) as watch:
            events = await collect(watch, 1)
        assert events[0].kv.value == b"ok"
    await wait_for_watchers(etcd, 0)
    await asyncio.sleep(0.1)
    leaked = asyncio.all_tasks() - before
    assert not leaked, f"tasks left behind: {leaked}"


async def test_watch_keeps_delivering_across_member_kill(etcd_cluster: EtcdCluster,
                                                         tmp_path: Path) -> None:
    # A proposal forwarded to a leader that just died is only failed by etcd after its own
    # request timeout (5 s + 2 election timeouts); a short client deadline retries sooner.
    async with make_client(etcd_cluster, tmp_path, request_timeout=2.0) as client:
        assert client.endpoint in etcd_cluster.endpoints
        start = (await client.status()).revision + 1
        async with client.watch(b"fo/", start_revision=start) as watch:
            consumer = Consumer(watch)
            for i in range(5):
                await client.put(f"fo/before-{i}".encode(), b"x")
            await consumer.wait_for(5)
            used = client.endpoint
            victim = next(m for m in etcd_cluster.members if m.client_url == used)
            victim.kill()
            for i in range(5):
                async with asyncio.timeout(20):
                    await client.put(f"fo/after-{i}".encode(), b"x")
            await consumer.wait_for(10, timeout=20)
            assert client.endpoint not in (None, used)
            await client.put(b"fo/sentinel", b"x")
            seen = await consumer.wait_for(11)
            await consumer.stop()

    expected = (
        [f"fo/before-{i}".encode() for i in range(5)]
        + [f"fo/after-{i}".encode() for i in range(5)]
        + [b"fo/sentinel"]
    )
    assert keys_of(seen) == expected
    assert watch.reconnects >= 1
