"""KV, lease, status and failover behaviour of :class:`clustermesh.etcd.client.EtcdClient`
against real etcd processes (no mocks). Results are cross-checked with ``etcdctl`` (the
harness's ``get``/``revision``) where the client's own answer could hide a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import EtcdCluster, EtcdFactory, EtcdServer
from harness.fakeclock import FakeClock

from clustermesh.etcd.client import (
    EtcdClient,
    compare_mod_revision,
    compare_value,
    get_op,
    prefix_range_end,
    put_op,
)
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import (
    EtcdCompacted,
    EtcdError,
    EtcdRequestTooLarge,
    EtcdUnavailable,
    translate,
)
from clustermesh.etcd.watch import PUT


def make_client(target: EtcdServer | EtcdCluster, tmp_path: Path, name: str = "client",
                **kwargs: Any) -> EtcdClient:
    path = target.client_config(tmp_path / f"{name}.yaml")
    kwargs.setdefault("dial_timeout", 2.0)
    kwargs.setdefault("request_timeout", 10.0)
    return EtcdClient(load_etcd_config(path), name=name, **kwargs)


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"cluster1/") == b"cluster10"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\x00"


async def test_put_get_delete(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        assert client.endpoint == etcd.client_url
        r1 = await client.put(b"kv/a", b"1")
        r2 = await client.put(b"kv/a", b"2")
        assert r2 == r1 + 1
        kv = await client.get(b"kv/a")
        assert kv is not None
        assert (kv.key, kv.value, kv.version) == (b"kv/a", b"2", 2)
        assert (kv.create_revision, kv.mod_revision) == (r1, r2)
        assert await asyncio.to_thread(etcd.get, "kv/a") == "2"  # etcdctl agrees
        assert await client.get(b"kv/missing") is None

        # Single-key delete; deleting again deletes nothing.
        assert await client.delete(b"kv/a") == 1
        assert await client.delete(b"kv/a") == 0
        assert await client.get(b"kv/a") is None

        # Prefix delete removes exactly the keys under the prefix.
        for key in (b"kv/p/1", b"kv/p/2", b"kv/p/3/deep", b"kv/p", b"kv/pq", b"kv/o"):
            await client.put(key, b"v")
        assert await client.delete(b"kv/p/", prefix=True) == 3
        left = await asyncio.to_thread(etcd.get_prefix, "kv/")
        assert sorted(left) == ["kv/o", "kv/p", "kv/pq"]

        # Binary keys and values round-trip unchanged.
        await client.put(b"kv/\x00\xff", b"\xff\x00\x01")
        assert (await client.get(b"kv/\x00\xff")).value == b"\xff\x00\x01"


async def test_txn_compare_success_and_failure(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        await client.put(b"txn/k", b"v1")
        resp = await client.txn(
            compare=[compare_value(b"txn/k", b"v1")],
            success=[put_op(b"txn/k", b"v2"), put_op(b"txn/other", b"o")],
            failure=[get_op(b"txn/k")],
        )
        assert resp.succeeded
        assert len(resp.responses) == 2
        assert resp.responses[0].WhichOneof("response") == "response_put"
        assert await asyncio.to_thread(etcd.get, "txn/k") == "v2"
        assert await asyncio.to_thread(etcd.get, "txn/other") == "o"

        # Same compare again: now false, the failure branch runs (a read), nothing written.
        rev_before = (await client.status()).revision
        resp = await client.txn(
            compare=[compare_value(b"txn/k", b"v1")],
            success=[put_op(b"txn/k", b"v3")],
            failure=[get_op(b"txn/k")],
        )
        assert not resp.succeeded
        assert [kv.value for kv in resp.responses[0].response_range.kvs] == [b"v2"]
        assert (await client.get(b"txn/k")).value == b"v2"
        assert (await client.status()).revision == rev_before

        # compare NOT_EQUAL, and mod_revision == 0 as "create only if absent".
        resp = await client.txn(compare=[compare_value(b"txn/k", b"v1", equal=False)],
                                success=[put_op(b"txn/k", b"v4")])
        assert resp.succeeded
        create = [put_op(b"txn/new", b"first")]
        assert (await client.txn(compare=[compare_mod_revision(b"txn/new", 0)],
                                 success=create)).succeeded
        assert not (await client.txn(compare=[compare_mod_revision(b"txn/new", 0)],
                                     success=[put_op(b"txn/new", b"second")])).succeeded
        kv = await client.get(b"txn/new")
        assert kv.value == b"first"
        assert (await client.txn(compare=[compare_mod_revision(b"txn/new", kv.mod_revision)],
                                 success=[put_op(b"txn/new", b"second")])).succeeded
        assert await asyncio.to_thread(etcd.get, "txn/new") == "second"


async def test_server_limits_are_surfaced(etcd: EtcdServer, tmp_path: Path) -> None:
    """A txn over etcd's default ``--max-txn-ops=128`` and a put over its default
    ``--max-request-bytes`` (1.5 MiB) are refused by the server: the caller gets
    EtcdRequestTooLarge (not retried) and nothing is written."""
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        ops = [put_op(f"lim/{i:04d}".encode(), b"v") for i in range(200)]
        with pytest.raises(EtcdRequestTooLarge) as info:
            await client.txn(success=ops)
        assert "too many operations in txn" in str(info.value)
        with pytest.raises(EtcdRequestTooLarge):
            await client.put(b"lim/huge", b"x" * (1600 * 1024))
        assert await asyncio.to_thread(etcd.get_prefix, "lim/") == {}
        await client.txn(success=ops[:128])  # within the limit the same ops go through
        assert len(await asyncio.to_thread(etcd.get_prefix, "lim/")) == 128


async def test_range_pages_is_one_snapshot(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        keys = [f"pages/k{i:03d}".encode() for i in range(50)]
        for key in keys:
            await client.put(key, b"orig")
        await client.put(b"pagesX", b"outside the prefix")
        await client.put(b"pages", b"the prefix itself is not under it")
        snapshot_rev = (await client.status()).revision

        seen: list[bytes] = []
        page_revisions: list[int] = []
        page_sizes: list[int] = []
        async for page, revision in client.range_pages(b"pages/", page_size=7):
            seen.extend(kv.key for kv in page)
            assert all(kv.value == b"orig" for kv in page)
            page_revisions.append(revision)
            page_sizes.append(len(page))
            # Writes between pages: new keys after and between the unread ones, updates and
            # deletes of unread keys. None of it may show up in this snapshot.
            n = len(page_revisions)
            await client.put(f"pages/k{100 + n:03d}".encode(), b"new")
            await client.put(f"pages/k{7 * n + 3:03d}-inserted".encode(), b"new")
            if 7 * n + 5 < 50:
                await client.put(keys[7 * n + 5], b"changed")
            if 7 * n + 6 < 50:
                await client.delete(keys[7 * n + 6])

        assert seen == keys  # every key exactly once, in order, nothing written later
        assert page_sizes == [7] * 7 + [1]
        assert page_revisions == [snapshot_rev] * 8
        current = (await client.status()).revision
        assert current > snapshot_rev

        # list_prefix: everything now, and the revision it was read at.
        kvs, revision = await client.list_prefix(b"pages/", page_size=7)
        assert revision == current
        names = [kv.key for kv in kvs]
        assert len(names) == len(set(names))
        assert names == [k.encode() for k in sorted(
            await asyncio.to_thread(etcd.get_prefix, "pages/"))]
        # Page n (from 1) added k(100+n) and k(7n+3)-inserted, changed k(7n+5), deleted
        # k(7n+6): the later writes are all there now.
        assert b"pages/k101" in names and b"pages/k108" in names
        assert b"pages/k010-inserted" in names and b"pages/k013" not in names
        values = {kv.key: kv.value for kv in kvs}
        assert values[b"pages/k012"] == b"changed" and values[b"pages/k011"] == b"orig"
        assert len(names) == 50 + 8 + 8 - 6  # 6 of the deletes hit existing keys

        # list_prefix at an explicit old revision is the old snapshot.
        old, old_rev = await client.list_prefix(b"pages/", revision=snapshot_rev, page_size=9)
        assert old_rev == snapshot_rev
        assert [kv.key for kv in old] == keys


async def test_prefix_reads_do_not_match_longer_names(etcd: EtcdServer,
                                                      tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        for key in (b"cluster1/a", b"cluster10/x", b"cluster1", b"cluster2/b", b"cluster1/b"):
            await client.put(key, b"v")
        kvs, _ = await client.list_prefix(b"cluster1/")
        assert [kv.key for kv in kvs] == [b"cluster1/a", b"cluster1/b"]
        assert await client.delete(b"cluster1/", prefix=True) == 2
        assert await client.get(b"cluster10/x") is not None


async def test_reading_a_compacted_revision_raises(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        old = await client.put(b"cmp/a", b"1")
        await client.put(b"cmp/a", b"2")
        mid = await client.put(b"cmp/b", b"1")
        await client.put(b"cmp/a", b"3")
        # Before compaction the history is readable.
        resp = await client.range(b"cmp/a", revision=old)
        assert [kv.value for kv in resp.kvs] == [b"1"]

        await client.compact(mid, physical=True)  # through the client
        with pytest.raises(EtcdCompacted):
            await client.range(b"cmp/a", revision=old)
        with pytest.raises(EtcdCompacted):
            await client.list_prefix(b"cmp/", revision=old)
        # The compact revision itself is still readable.
        resp = await client.range(b"cmp/", prefix_range_end(b"cmp/"), revision=mid)
        assert [(kv.key, kv.value) for kv in resp.kvs] == [(b"cmp/a", b"2"), (b"cmp/b", b"1")]

        latest = await asyncio.to_thread(etcd.compact)  # and through etcdctl
        with pytest.raises(EtcdCompacted):
            await client.range(b"cmp/a", revision=mid)
        # Compacting below the compact revision is refused as well.
        with pytest.raises(EtcdCompacted):
            await client.compact(mid)
        assert (await client.get(b"cmp/a")).mod_revision == latest


async def test_leases(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        lease = await client.lease_grant(30)
        assert lease > 0
        await client.put(b"lease/a", b"1", lease=lease)
        kv = await client.get(b"lease/a")
        assert kv.lease == lease
        ttl = await client.lease_time_to_live(lease, keys=True)
        assert (ttl.ID, ttl.grantedTTL) == (lease, 30)
        assert 0 < ttl.TTL <= 30
        assert list(ttl.keys) == [b"lease/a"]
        assert await client.lease_keepalive_once(lease) == 30

        await client.lease_revoke(lease)
        assert await client.get(b"lease/a") is None
        assert await asyncio.to_thread(etcd.get, "lease/a") is None
        assert (await client.lease_time_to_live(lease)).TTL == -1
        assert await client.lease_keepalive_once(lease) == 0
        with pytest.raises(EtcdError):
            await client.put(b"lease/b", b"1", lease=lease)  # lease not found


async def test_keep_lease_alive(etcd: EtcdServer, tmp_path: Path) -> None:
    """A 2-second lease kept alive for 5 s survives; an identical one left alone (the
    control, proving etcd does expire such leases here) is gone."""
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        kept = await client.lease_grant(2)
        control = await client.lease_grant(2)
        await client.put(b"ka/kept", b"1", lease=kept)
        await client.put(b"ka/control", b"1", lease=control)
        task = asyncio.create_task(client.keep_lease_alive(kept, 2))
        try:
            await asyncio.sleep(5)
            assert not task.done(), "keep_lease_alive stopped on its own"
            assert (await client.get(b"ka/kept")) is not None
            assert (await client.lease_time_to_live(kept)).TTL > 0
            assert await client.get(b"ka/control") is None
            assert (await client.lease_time_to_live(control)).TTL == -1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert task.cancelled()

        # keep_lease_alive returns by itself once the lease is gone.
        await client.lease_revoke(kept)
        await asyncio.wait_for(client.keep_lease_alive(kept, 2), timeout=5)


async def test_status_and_members(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        first = await client.status()
        assert first.endpoint == etcd.client_url
        assert first.cluster_id == await asyncio.to_thread(etcd.cluster_id)
        assert first.member_id == await asyncio.to_thread(etcd.member_id)
        assert first.leader == first.member_id  # a single node leads itself
        assert first.version.startswith("3.")
        rev = await client.put(b"status/a", b"1")
        second = await client.status()
        assert second.revision == rev > first.revision
        assert second.cluster_id == first.cluster_id
        members = await client.member_list()
        assert [m.id for m in members] == [first.member_id]
        assert members[0].name == etcd.name
        assert members[0].client_urls == (etcd.client_url,)
        assert not members[0].is_learner


async def test_connect_retrying_backs_off_on_the_clock(etcd_factory: EtcdFactory,
                                                       tmp_path: Path) -> None:
    """An etcd that starts after its daemon (a sidecar): connect_retrying waits the
    ETCD_CONNECT backoff (0.5 s, doubling, jitter 0.2) on the client's clock between tries,
    and connects once etcd is up; with ``stop`` set a failure is raised instead."""
    server = etcd_factory(name="late", start=False)
    fake = FakeClock()
    async with asyncio.timeout(60):
        client = make_client(server, tmp_path, dial_timeout=0.5, clock=fake.clock)
        task = asyncio.create_task(client.connect_retrying())
        await fake.wait_for_sleepers(1)
        assert 0.5 <= fake.sleeps[0] < 0.6
        fake.advance(fake.sleeps[0])
        await fake.wait_for_sleeps(2)
        assert 1.0 <= fake.sleeps[1] < 1.2 and fake.sleepers == 1
        await asyncio.to_thread(server.start)
        assert not task.done()
        fake.advance(fake.sleeps[1])
        await task
        assert client.endpoint == server.client_url
        assert len(fake.sleeps) == 2
        await client.put(b"late/k", b"v")
        await client.close()

        await asyncio.to_thread(server.stop)
        stop = asyncio.Event()
        stop.set()
        other = make_client(server, tmp_path, "other", dial_timeout=0.5, clock=fake.clock)
        with pytest.raises(EtcdUnavailable):
            await other.connect_retrying(stop=stop)
        assert len(fake.sleeps) == 2
        await other.close()


async def test_failover_to_another_member(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    # request_timeout: a proposal forwarded to a leader that just died is failed by etcd
    # only after 5 s + 2 election timeouts; the client's own deadline retries sooner.
    async with asyncio.timeout(60), make_client(etcd_cluster, tmp_path,
                                                request_timeout=2.0) as client:
        status = await client.status()
        members = await client.member_list()
        assert len(members) == 3
        assert status.member_id in {m.id for m in members}
        urls = {url for m in members for url in m.client_urls}
        assert urls == set(etcd_cluster.endpoints)
        assert status.cluster_id == await asyncio.to_thread(etcd_cluster.cluster_id)

        await client.put(b"fo/a", b"1")
        used = client.endpoint
        assert used in etcd_cluster.endpoints
        victim = next(m for m in etcd_cluster.members if m.client_url == used)
        victim.kill()

        rev = await client.put(b"fo/b", b"2")
        assert client.endpoint in etcd_cluster.endpoints and client.endpoint != used
        assert (await client.get(b"fo/a")).value == b"1"
        assert (await client.get(b"fo/b")).mod_revision == rev
        kvs, _ = await client.list_prefix(b"fo/")
        assert [kv.key for kv in kvs] == [b"fo/a", b"fo/b"]
        after = await client.status()
        assert after.cluster_id == status.cluster_id
        assert after.member_id != victim_id(members, used)
        assert await asyncio.to_thread(etcd_cluster.get, "fo/b") == "2"


def victim_id(members: list[Any], url: str) -> int:
    return next(m.id for m in members if url in m.client_urls)


async def test_etcd35_smoke(etcd35: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd35, tmp_path) as client:
        status = await client.status()
        assert status.version.startswith("3.5.")
        start = status.revision + 1
        async with client.watch(b"s35/", start_revision=start, prev_kv=True) as watch:
            await client.put(b"s35/a", b"1")
            await client.put(b"s35/a", b"2")
            await client.put(b"s35/b", b"1")
            events: list[Any] = []
            async for batch in watch:
                events.extend(batch.events)
                if len(events) >= 3:
                    break
        assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
            (PUT, b"s35/a", b"1"), (PUT, b"s35/a", b"2"), (PUT, b"s35/b", b"1")]
        assert events[1].prev_kv.value == b"1"
        assert (await client.get(b"s35/a")).value == b"2"
        kvs, revision = await client.list_prefix(b"s35/", page_size=1)
        assert [kv.key for kv in kvs] == [b"s35/a", b"s35/b"]
        assert revision == start + 2
        resp = await client.txn(compare=[compare_value(b"s35/a", b"2")],
                                success=[put_op(b"s35/c", b"3")])
        assert resp.succeeded
        assert await client.delete(b"s35/", prefix=True) == 3
        assert await asyncio.to_thread(etcd35.get_prefix, "s35/") == {}


@pytest.mark.parametrize(("code", "details", "unavailable"), [
    # What a member stopped with SIGTERM does to the streams in flight: a failover.
    (grpc.StatusCode.INTERNAL, "Stream removed (Data frame with END_STREAM flag received) "
     "(RST_STREAM (Received RST_STREAM with error code 0))", True),
    (grpc.StatusCode.INTERNAL, "etcdserver: unexpected error", False),
    (grpc.StatusCode.UNAVAILABLE, "connection refused", True),
])
def test_translate_stream_reset(code: grpc.StatusCode, details: str, unavailable: bool) -> None:
    exc = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    assert isinstance(translate(exc, endpoint="https://e:2379"), EtcdUnavailable) is unavailable
