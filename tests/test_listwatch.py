""":func:`clustermesh.etcd.listwatch.list_and_watch` against real etcd processes.

What is proven here: the pages of a list are one snapshot at one revision, followed by
``Listed`` and then the changes after it, in order (a prefix, or a single key); a
compaction past the revision to resume from — before the watch starts, or while the
client is cut off — relists by itself (pages, ``Listed(relist=True)``) with the keys
deleted meanwhile gone; so does an etcd cluster with another ID behind the same address
(a wiped member), also when it is found only when the watch starts; a kill -9 and
restart of the member is invisible (no duplicate, no gap, no relist); progress
notifications yield nothing; a txn whose events are too big for one watch message (etcd
sends them in fragments) arrives as one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from harness import EtcdFactory, EtcdServer
from harness.tcpproxy import TcpProxy
from test_etcd_watch import wait_for_watchers

from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import EtcdClusterChanged
from clustermesh.etcd.listwatch import Changes, Item, Listed, Page, list_and_watch
from clustermesh.etcd.pb import rpc_pb2
from clustermesh.etcd.watch import DELETE, PUT


def make_client(target: EtcdServer, tmp_path: Path, name: str = "client",
                endpoints: list[str] | None = None, **kwargs: Any) -> EtcdClient:
    path = target.client_config(tmp_path / f"{name}.yaml", endpoints=endpoints)
    kwargs.setdefault("dial_timeout", 2.0)
    kwargs.setdefault("request_timeout", 10.0)
    return EtcdClient(load_etcd_config(path), name=name, **kwargs)


async def next_item(items: AsyncIterator[Item], timeout: float = 15.0) -> Item:
    async with asyncio.timeout(timeout):
        return await anext(items)


def event_list(items: list[Item]) -> list[tuple[int, bytes, int]]:
    """(type, key, mod_revision) of every event in ``items``' changes."""
    return [(ev.type, ev.kv.key, ev.kv.mod_revision)
            for item in items if isinstance(item, Changes) for ev in item.events]


class Mirror:
    """What a consumer of ``list_and_watch`` holds, following the module's contract: a
    list replaces the state once its ``Listed`` arrives (keys not in it were deleted),
    changes apply on top.  ``items`` is everything seen, ``lists`` the ``Listed`` items."""

    def __init__(self) -> None:
        self.state: dict[bytes, bytes] = {}
        self.items: list[Item] = []
        self.lists: list[Listed] = []
        self._listing: dict[bytes, bytes] | None = None

    def apply(self, item: Item) -> None:
        self.items.append(item)
        if isinstance(item, Page):
            self._listing = (self._listing or {}) | {kv.key: kv.value for kv in item.kvs}
        elif isinstance(item, Listed):
            self.state, self._listing = self._listing or {}, None
            self.lists.append(item)
        else:
            assert self._listing is None, "changes in the middle of a list"
            for ev in item.events:
                if ev.type == PUT:
                    self.state[ev.kv.key] = ev.kv.value
                else:
                    self.state.pop(ev.kv.key, None)

    async def follow(self, items: AsyncIterator[Item], until: Callable[[Mirror], bool], *,
                     timeout: float = 20.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not until(self):
                    self.apply(await anext(items))
        except TimeoutError:
            pytest.fail(f"after {timeout}s: state {self.state}, lists {self.lists}")


async def test_pages_at_one_revision_then_listed_then_changes(etcd: EtcdServer,
                                                              tmp_path: Path) -> None:
    async with asyncio.timeout(60), make_client(etcd, tmp_path) as client:
        for i in range(25):
            await client.put(f"lw/{i:02d}".encode(), b"v0")
        await client.put(b"lw0", b"not under the prefix")
        async with contextlib.aclosing(list_and_watch(client, b"lw/", page_size=10)) as items:
            first = await next_item(items)
            assert isinstance(first, Page) and len(first.kvs) == 10
            # Written while the consumer holds the first page: not in the list (it is a
            # snapshot), but the first changes after it.
            put_rev = await client.put(b"lw/99", b"new")
            assert await client.delete(b"lw/20") == 1
            delete_rev = (await client.status()).revision
            pages = [first, await next_item(items), await next_item(items)]
            assert all(isinstance(p, Page) for p in pages), pages
            assert {p.revision for p in pages} == {put_rev - 1}
            assert [kv.key for p in pages for kv in p.kvs] == [  # type: ignore[union-attr]
                f"lw/{i:02d}".encode() for i in range(25)]
            assert await next_item(items) == Listed(put_rev - 1)

            seen: list[Item] = []
            while len(event_list(seen)) < 2:
                seen.append(await next_item(items))
            assert event_list(seen) == [(PUT, b"lw/99", put_rev), (DELETE, b"lw/20", delete_rev)]
            assert all(isinstance(item, Changes) and item.events for item in seen)
            assert seen[-1].revision == delete_rev  # type: ignore[union-attr]

            later = await client.put(b"lw/later", b"x")
            await client.put(b"lw0", b"still not under the prefix")
            changes = await next_item(items)
            assert isinstance(changes, Changes) and changes.revision == later
            assert event_list([changes]) == [(PUT, b"lw/later", later)]


async def test_single_key(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(60), make_client(etcd, tmp_path) as client:
        rev = await client.put(b"one/key", b"1")
        await client.put(b"one/key2", b"longer name")
        async with contextlib.aclosing(list_and_watch(client, b"one/key", prefix=False)
                                       ) as items:
            page = await next_item(items)
            assert isinstance(page, Page) and page.revision == rev + 1
            assert [(kv.key, kv.value) for kv in page.kvs] == [(b"one/key", b"1")]
            assert await next_item(items) == Listed(rev + 1)
            await client.put(b"one/key2", b"again")
            await client.put(b"one/keyx", b"x")
            updated = await client.put(b"one/key", b"2")
            await client.delete(b"one/key")
            seen: list[Item] = []
            while len(event_list(seen)) < 2:
                seen.append(await next_item(items))
            assert event_list(seen) == [(PUT, b"one/key", updated),
                                        (DELETE, b"one/key", updated + 1)]

        # A key that does not exist lists as one empty page.
        async with contextlib.aclosing(list_and_watch(client, b"one/none", prefix=False)
                                       ) as items:
            page = await next_item(items)
            assert isinstance(page, Page) and list(page.kvs) == []
            assert await next_item(items) == Listed(page.revision)


async def test_relist_after_compaction_before_the_watch_starts(etcd: EtcdServer,
                                                               tmp_path: Path) -> None:
    """The consumer is still busy with the list (the watch is not open yet) when keys
    change and the remote compacts past the list's revision."""
    async with asyncio.timeout(60), make_client(etcd, tmp_path) as client:
        for i in range(5):
            await client.put(f"cmp/{i}".encode(), b"v")
        async with contextlib.aclosing(list_and_watch(client, b"cmp/")) as items:
            mirror = Mirror()
            await mirror.follow(items, lambda m: len(m.lists) == 1)
            assert mirror.lists == [Listed(mirror.lists[0].revision)]
            await client.delete(b"cmp/0")
            rev = await client.put(b"cmp/new", b"x")
            await client.compact(rev)

            page = await next_item(items)
            assert isinstance(page, Page) and page.revision == rev
            mirror.apply(page)
            relisted = await next_item(items)
            assert isinstance(relisted, Listed) and relisted.relist
            assert relisted.revision == rev and "compacted" in relisted.reason
            mirror.apply(relisted)
            assert mirror.state == {b"cmp/1": b"v", b"cmp/2": b"v", b"cmp/3": b"v",
                                    b"cmp/4": b"v", b"cmp/new": b"x"}
            later = await client.put(b"cmp/later", b"y")
            changes = await next_item(items)
            assert isinstance(changes, Changes) and changes.revision == later
            assert event_list([changes]) == [(PUT, b"cmp/later", later)]


async def test_relist_after_compaction_while_cut_off(etcd: EtcdServer, tmp_path: Path) -> None:
    """The watch is open when the connection is cut; meanwhile keys change and etcd is
    compacted; once the connection is back, the resumed watch finds its revision gone."""
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(asyncio.timeout(60))
        proxy = await stack.enter_async_context(TcpProxy.to_url(etcd.client_url))
        admin = await stack.enter_async_context(make_client(etcd, tmp_path, "admin"))
        client = await stack.enter_async_context(
            make_client(etcd, tmp_path, "proxied", endpoints=[proxy.url], dial_timeout=1.0))
        for i in range(5):
            await admin.put(f"cut/{i}".encode(), b"v")
        items = await stack.enter_async_context(
            contextlib.aclosing(list_and_watch(client, b"cut/")))
        mirror = Mirror()
        await mirror.follow(items, lambda m: len(m.lists) == 1)
        await admin.put(b"cut/live", b"w")
        await mirror.follow(items, lambda m: b"cut/live" in m.state)  # the watch is open

        proxy.refuse()
        await admin.delete(b"cut/0")
        await admin.put(b"cut/1", b"changed")
        await admin.compact(await admin.put(b"cut/new", b"x"))
        proxy.forward()

        expected = {b"cut/1": b"changed", b"cut/2": b"v", b"cut/3": b"v", b"cut/4": b"v",
                    b"cut/live": b"w", b"cut/new": b"x"}
        await mirror.follow(items, lambda m: len(m.lists) == 2)
        assert mirror.state == expected
        assert mirror.lists[1].relist and "compacted" in mirror.lists[1].reason
        later = await admin.put(b"cut/later", b"y")
        await mirror.follow(items, lambda m: b"cut/later" in m.state)
        assert mirror.items[-1] == Changes(mirror.items[-1].events, later)  # type: ignore[union-attr]
        assert len(mirror.lists) == 2


async def test_member_restart_is_invisible(etcd: EtcdServer, tmp_path: Path) -> None:
    """kill -9 and restart (same data dir) while the watch is open: every event once, in
    order, and no relist."""
    async with asyncio.timeout(90), make_client(etcd, tmp_path) as client:
        await client.put(b"rs/initial", b"x")
        async with contextlib.aclosing(list_and_watch(client, b"rs/")) as items:
            mirror = Mirror()
            await mirror.follow(items, lambda m: len(m.lists) == 1)
            written = []
            for i in range(5):
                written.append(await client.put(f"rs/before-{i}".encode(), b"x"))
            # Consumed in a task, so that the kill hits a stream a consumer waits on.
            follower = asyncio.create_task(mirror.follow(
                items, lambda m: len(event_list(m.items)) >= 15, timeout=60))
            for i in range(3):
                written.append(await client.put(f"rs/unread-{i}".encode(), b"x"))
            await asyncio.to_thread(etcd.kill)
            await asyncio.to_thread(etcd.start)
            await asyncio.to_thread(etcd.put, "rs/after-ctl", "x")
            written.append((await client.status()).revision)
            for i in range(6):
                written.append(await client.put(f"rs/after-{i}".encode(), b"x"))
            await follower

    keys = [key for _, key, _ in event_list(mirror.items)]
    assert keys == ([f"rs/before-{i}".encode() for i in range(5)]
                    + [f"rs/unread-{i}".encode() for i in range(3)] + [b"rs/after-ctl"]
                    + [f"rs/after-{i}".encode() for i in range(6)])
    assert [rev for _, _, rev in event_list(mirror.items)] == written
    assert len(mirror.lists) == 1
    assert sum(isinstance(item, Page) for item in mirror.items) == 1


async def test_progress_notifications_yield_nothing(etcd_factory: EtcdFactory,
                                                     tmp_path: Path) -> None:
    server = etcd_factory(name="etcd-progress",
                          extra_args=["--experimental-watch-progress-notify-interval=100ms"])
    async with asyncio.timeout(60), make_client(server, tmp_path) as client:
        await client.put(b"pn/a", b"1")
        async with contextlib.aclosing(list_and_watch(client, b"pn/")) as items:
            mirror = Mirror()
            await mirror.follow(items, lambda m: len(m.lists) == 1)
            pending = asyncio.create_task(next_item(items, timeout=30))
            await wait_for_watchers(server, 1)  # list_and_watch's watch is open
            # Meanwhile a plain watch of the same prefix gets progress notifications
            # (empty batches) while other keys move the revision on.
            async with client.watch(b"pn/", start_revision=mirror.lists[0].revision + 1
                                    ) as plain:
                progress = []
                async for batch in plain:
                    assert not batch.events
                    progress.append(batch.revision)
                    if len(progress) == 3:
                        break
                    await client.put(b"elsewhere", b"x")
            assert progress == sorted(progress) and progress[-1] > progress[0]
            assert not pending.done()
            rev = await client.put(b"pn/b", b"2")
            changes = await pending
            assert isinstance(changes, Changes) and changes.revision == rev
            assert event_list([changes]) == [(PUT, b"pn/b", rev)]


async def test_relist_when_another_cluster_answers(etcd: EtcdServer, tmp_path: Path) -> None:
    """The member is replaced by a new, empty etcd cluster on the same address (wiped and
    started again) while the watch is open: its revisions mean nothing for ours, so the
    consumer relists, and drops the keys of the old cluster."""
    async with asyncio.timeout(60), make_client(etcd, tmp_path) as client:
        await client.put(b"cid/a", b"old")
        await client.put(b"cid/b", b"old")
        old_cluster = client.cluster_id
        async with contextlib.aclosing(list_and_watch(client, b"cid/")) as items:
            mirror = Mirror()
            await mirror.follow(items, lambda m: len(m.lists) == 1)
            await client.put(b"cid/c", b"old")
            await mirror.follow(items, lambda m: b"cid/c" in m.state)  # the watch is open
            await asyncio.to_thread(etcd.stop)
            etcd.wipe()
            await asyncio.to_thread(etcd.start)
            await asyncio.to_thread(etcd.put, "cid/b", "new")
            await asyncio.to_thread(etcd.put, "cid/x", "new")
            await mirror.follow(items, lambda m: len(m.lists) == 2
                                and m.state == {b"cid/b": b"new", b"cid/x": b"new"})
            assert client.cluster_id not in (0, old_cluster)
            assert mirror.lists[1].relist
            assert "cluster ID changed" in mirror.lists[1].reason, mirror.lists[1]
            rev = await client.put(b"cid/later", b"new")
            await mirror.follow(items, lambda m: b"cid/later" in m.state)
            assert mirror.items[-1] == Changes(mirror.items[-1].events, rev)  # type: ignore[union-attr]
            assert len(mirror.lists) == 2


async def test_relist_when_another_cluster_answers_before_the_watch_starts(
        etcd: EtcdServer, tmp_path: Path) -> None:
    """The same, while the consumer is still busy with the list: no request of the client
    failed, so only the answers themselves say that the cluster behind the address
    changed — the relist must follow the new one, not relist again and again."""
    async with asyncio.timeout(60), make_client(etcd, tmp_path) as client:
        await client.put(b"gap/a", b"old")
        async with contextlib.aclosing(list_and_watch(client, b"gap/")) as items:
            mirror = Mirror()
            await mirror.follow(items, lambda m: len(m.lists) == 1)
            await asyncio.to_thread(etcd.stop)
            etcd.wipe()
            await asyncio.to_thread(etcd.start)
            await asyncio.to_thread(etcd.put, "gap/b", "new")
            await mirror.follow(items, lambda m: len(m.lists) == 2)
            assert mirror.state == {b"gap/b": b"new"}
            assert "cluster ID changed" in mirror.lists[1].reason, mirror.lists[1]
            rev = await client.put(b"gap/later", b"new")
            await mirror.follow(items, lambda m: b"gap/later" in m.state)
            assert mirror.items[-1] == Changes(mirror.items[-1].events, rev)  # type: ignore[union-attr]
            assert len(mirror.lists) == 2


async def test_a_watch_on_another_cluster_raises(etcd: EtcdServer, tmp_path: Path) -> None:
    """What makes ``list_and_watch`` relist: a watch pinned to another cluster ID."""
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        wrong = client.cluster_id ^ 0x5A5A
        with pytest.raises(EtcdClusterChanged) as info:
            async with client.watch(b"any/", cluster_id=wrong) as watch:
                async for _ in watch:
                    pytest.fail("a watch on another cluster delivered something")
        assert (info.value.expected, info.value.found) == (wrong, client.cluster_id)


async def test_a_txn_bigger_than_the_request_limit_arrives_whole(etcd_factory: EtcdFactory,
                                                                 tmp_path: Path) -> None:
    """One txn re-puts 200 keys of 5 kB each with ``ignore_value``: a small request, but
    1 MB of events, more than etcd sends in one watch message (``--max-request-bytes``
    plus its 512 KiB allowance for gRPC overhead), so etcd sends them in fragments: the
    consumer still gets one batch with all of them."""
    limit = 64 * 1024
    server = etcd_factory(name="etcd-small", extra_args=[f"--max-request-bytes={limit}",
                                                         "--max-txn-ops=1000"])
    keys = [f"frag/{i:03d}".encode() for i in range(200)]
    async with (asyncio.timeout(60), make_client(server, tmp_path) as client,
                contextlib.aclosing(list_and_watch(client, b"frag/")) as items):
        for i, key in enumerate(keys):
            await client.put(key, bytes([65 + i % 26]) * 5000)
        mirror = Mirror()
        await mirror.follow(items, lambda m: len(m.lists) == 1)
        assert set(mirror.state) == set(keys)
        request = rpc_pb2.TxnRequest()
        for key in keys:
            put = request.success.add().request_put
            put.key, put.ignore_value = key, True
        assert request.ByteSize() < limit // 8
        rev = (await client.txn_request(request)).header.revision
        changes = await next_item(items)
        assert isinstance(changes, Changes) and changes.revision == rev
        assert [(ev.kv.key, ev.kv.value, ev.kv.mod_revision) for ev in changes.events] == [
            (key, mirror.state[key], rev) for key in keys]
        whole = rpc_pb2.WatchResponse(header=rpc_pb2.ResponseHeader(revision=rev),
                                      events=changes.events)
        assert whole.ByteSize() > 1.5 * (limit + 512 * 1024)  # etcd had to fragment it
