""":class:`clustermesh.etcd.batch.BatchWriter` against real etcd servers.

Every txn commits at its own revision, so the number of distinct ``mod_revision`` values
among the written keys is the number of txns the *server* applied: the tests check that
against ``txns_sent`` instead of trusting the writer's own count.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from harness import EtcdServer

from clustermesh.etcd.batch import BatchWriter, Delete, Put
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import EtcdRequestTooLarge


def make_client(target: EtcdServer, tmp_path: Path, name: str = "client",
                **kwargs: Any) -> EtcdClient:
    path = target.client_config(tmp_path / f"{name}.yaml")
    kwargs.setdefault("dial_timeout", 2.0)
    kwargs.setdefault("request_timeout", 10.0)
    return EtcdClient(load_etcd_config(path), name=name, **kwargs)


async def test_ten_thousand_keys_in_fifty_txns(etcd_factory: Any, tmp_path: Path) -> None:
    server = etcd_factory(name="etcd-200", extra_args=["--max-txn-ops=200"])
    async with asyncio.timeout(60), make_client(server, tmp_path) as client:
        writer = BatchWriter(client, max_txn_ops=200)
        ops = [Put(f"bulk/{i:05d}".encode(), f"value-{i}".encode()) for i in range(10_000)]
        revision = await writer.apply(ops)
        assert writer.txns_sent == 50

        kvs, read_rev = await client.list_prefix(b"bulk/")
        assert read_rev == revision  # nothing else was written
        assert len(kvs) == 10_000
        assert {kv.key: kv.value for kv in kvs} == {op.key: op.value for op in ops}
        assert len({kv.mod_revision for kv in kvs}) == 50
        assert max(kv.mod_revision for kv in kvs) == revision
        assert all(kv.version == 1 for kv in kvs)


async def test_repeated_writes_to_one_key_keep_their_order(etcd: EtcdServer,
                                                           tmp_path: Path) -> None:
    async with asyncio.timeout(60), make_client(etcd, tmp_path) as client:
        start = (await client.status()).revision + 1
        ops: list[Put | Delete] = []
        for i in range(1, 501):
            ops.append(Put(b"order/hot", str(i).encode()))
            ops.append(Put(f"order/cold/{i:03d}".encode(), b"c"))
            if i % 3 == 0:
                ops.append(Put(b"order/warm", str(i).encode()))
        # Few ops per txn, many txns in flight: reordering would show.
        writer = BatchWriter(client, max_txn_ops=7, max_inflight=8)
        await writer.apply(ops)
        assert writer.txns_sent > 100

        hot = await client.get(b"order/hot")
        assert hot.value == b"500"
        assert hot.version == 500  # 500 separate writes, none lost or merged
        warm = await client.get(b"order/warm")
        assert (warm.value, warm.version) == (b"498", 166)

        # The full history of the hot key, in commit order: exactly 1..500.
        values: list[bytes] = []
        async with client.watch(b"order/hot", prefix=False, start_revision=start) as watch:
            async for batch in watch:
                values.extend(ev.kv.value for ev in batch.events)
                if len(values) >= 500:
                    break
        assert values == [str(i).encode() for i in range(1, 501)]


async def test_max_request_bytes_splits_and_rejects_oversized_ops(etcd: EtcdServer,
                                                                  tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        value = b"v" * 100
        ops = [Put(f"size/{i:03d}".encode(), value) for i in range(100)]
        # Each op is estimated at len(key) + len(value) + 32 = 140 bytes on top of a 1 KiB
        # request overhead: this limit fits exactly ten per txn.
        limit = 1024 + 10 * 140
        writer = BatchWriter(client, max_request_bytes=limit)
        await writer.apply(ops)
        assert writer.txns_sent == 10
        kvs, _ = await client.list_prefix(b"size/")
        assert [kv.key for kv in kvs] == [op.key for op in ops]
        assert len({kv.mod_revision for kv in kvs}) == 10
        # With the default limit the same ops are one txn.
        default_writer = BatchWriter(client)
        await default_writer.apply(ops)
        assert default_writer.txns_sent == 1

        # A single op over the limit is refused before anything is sent, naming the key.
        rev_before = (await client.status()).revision
        too_big = [Put(b"size/ok", b"small"), Put(b"size/huge-key", b"x" * limit)]
        with pytest.raises(EtcdRequestTooLarge) as info:
            await BatchWriter(client, max_request_bytes=limit).apply(too_big)
        assert "size/huge-key" in str(info.value)
        assert (await client.status()).revision == rev_before
        assert await client.get(b"size/ok") is None


async def test_prefix_delete_is_a_barrier(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        await client.put(b"bar/preexisting", b"old")
        await client.put(b"barn/outside", b"kept")
        ops: list[Put | Delete] = [Put(f"bar/{i:03d}".encode(), b"before") for i in range(60)]
        ops.append(Delete(b"bar/", prefix=True))
        ops += [Put(f"bar/{i:03d}".encode(), b"after") for i in range(0, 60, 2)]
        ops += [Put(f"bar/new-{i}".encode(), b"after") for i in range(20)]
        writer = BatchWriter(client, max_txn_ops=5, max_inflight=8)
        await writer.apply(ops)
        assert writer.txns_sent == 12 + 1 + 10

        left = await asyncio.to_thread(etcd.get_prefix, "bar/")
        expected = {f"bar/{i:03d}": "after" for i in range(0, 60, 2)}
        expected |= {f"bar/new-{i}": "after" for i in range(20)}
        assert left == expected
        assert await asyncio.to_thread(etcd.get, "barn/outside") == "kept"

        # The barrier also orders against a single-key delete of a key it re-creates.
        ops = [Put(b"bar/x", b"1"), Delete(b"bar/", prefix=True), Put(b"bar/x", b"2"),
               Delete(b"bar/x")]
        await BatchWriter(client, max_txn_ops=1, max_inflight=8).apply(ops)
        assert await client.get(b"bar/x") is None
        assert await client.get(b"bar/000") is None


async def test_server_txn_limit_is_surfaced(etcd: EtcdServer, tmp_path: Path) -> None:
    """Against etcd's default ``--max-txn-ops=128`` a writer configured for 200 is refused
    by the server, and that reaches the caller as EtcdRequestTooLarge."""
    async with asyncio.timeout(30), make_client(etcd, tmp_path) as client:
        writer = BatchWriter(client, max_txn_ops=200)
        ops = [Put(f"lim/{i:04d}".encode(), b"v") for i in range(400)]
        with pytest.raises(EtcdRequestTooLarge) as info:
            await writer.apply(ops)
        assert "too many operations in txn" in str(info.value)
        assert await asyncio.to_thread(etcd.get_prefix, "lim/") == {}
        # Within the server's limit the same ops go through.
        ok = BatchWriter(client, max_txn_ops=128)
        await ok.apply(ops)
        assert ok.txns_sent == 4
        assert len(await asyncio.to_thread(etcd.get_prefix, "lim/")) == 400
