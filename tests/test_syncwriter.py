"""The timers of :class:`clustermesh.syncwriter.SyncWriter` on a fake clock: a failed txn
is retried after a :data:`~clustermesh.backoff.LOCAL_WRITE` backoff that grows while the
local etcd keeps failing and starts over once a txn commits; the rate limiter's token
bucket refills and waits on the clock.  The etcd is real (behind a proxy that refuses
connections while it is "down"); only the writer's time is fake.  Also: the queue sizes
the writer keeps for the sync-queue gauge follow the queue through coalescing, failed
txns and commits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness import EtcdServer
from harness.fakeclock import FakeClock
from harness.tcpproxy import TcpProxy
from hypothesis import given
from hypothesis import strategies as st

from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.keys import (
    RESOURCES,
    Resource,
    cluster_of,
    metrics_scope,
    prefix_queue_labels,
    queue_labels,
)
from clustermesh.syncwriter import RateLimiter, SyncWriter


@contextlib.asynccontextmanager
async def proxied_writer(etcd: EtcdServer, tmp_path: Path, **options: Any
                         ) -> AsyncIterator[tuple[TcpProxy, SyncWriter]]:
    """A writer (not started) on a client that reaches ``etcd`` through a proxy; stopped
    on the way out.  The whole block has 60 s."""
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(asyncio.timeout(60))
        proxy = await stack.enter_async_context(TcpProxy.to_url(etcd.client_url))
        path = etcd.client_config(tmp_path / "local.yaml", endpoints=[proxy.url])
        client = await stack.enter_async_context(
            EtcdClient(load_etcd_config(path), name="local", dial_timeout=1.0))
        writer = SyncWriter(client, **options)
        stack.push_async_callback(writer.stop)
        yield proxy, writer


async def parked(fake: FakeClock, sleeps: int) -> float:
    """The delay of the writer's ``sleeps``-th sleep, parked on the clock now."""
    await fake.wait_for_sleeps(sleeps, timeout=10)
    assert (len(fake.sleeps), fake.sleepers) == (sleeps, 1)
    return fake.sleeps[-1]


async def test_failed_txns_back_off_on_the_clock_and_start_over_after_a_commit(
        etcd: EtcdServer, tmp_path: Path) -> None:
    fake = FakeClock()
    failed: list[list[bytes]] = []
    async with proxied_writer(etcd, tmp_path, clock=fake.clock,
                              on_error=failed.append) as (proxy, writer):
        writer.start()

        proxy.refuse()
        writer.put(b"sw/a", b"1")
        first = await parked(fake, 1)
        assert 0.1 <= first < 0.15  # LOCAL_WRITE: 0.1 s, jitter 0.5
        assert failed == [[b"sw/a"]]
        fake.advance(first)
        second = await parked(fake, 2)
        assert 0.2 <= second < 0.3
        assert failed == [[b"sw/a"], [b"sw/a"]]

        proxy.forward()
        flushed = asyncio.create_task(writer.flush())
        await fake.settle()
        assert not flushed.done()  # nothing is sent before the backoff is over
        fake.advance(second)
        await flushed
        assert await asyncio.to_thread(etcd.get, "sw/a") == "1"

        # The commit reset the backoff: the next failure waits the initial delay again.
        proxy.refuse()
        writer.put(b"sw/b", b"2")
        again = await parked(fake, 3)
        assert 0.1 <= again < 0.15
        proxy.forward()
        fake.advance(again)
        await writer.flush()
        assert await asyncio.to_thread(etcd.get, "sw/b") == "2"
        assert len(failed) == 3


async def test_rate_limiter_refills_and_waits_on_the_clock() -> None:
    fake = FakeClock()
    limiter = RateLimiter(2.0, clock=fake.clock)  # 2 txns/s, a burst of 2
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()
    fake.advance(0.5)  # one token more
    assert limiter.try_acquire()
    assert not limiter.try_acquire()

    task = asyncio.create_task(limiter.acquire())
    await fake.wait_for_sleepers(1)
    assert fake.sleeps == pytest.approx([0.5])
    fake.advance(0.25)
    await fake.settle()
    assert not task.done()
    fake.advance(0.25)
    await asyncio.wait_for(task, 5)
    assert not limiter.try_acquire()

    unlimited = RateLimiter(0, clock=fake.clock)
    assert all(unlimited.try_acquire() for _ in range(1000))


async def test_queue_sizes_follow_coalescing_failures_and_commits(
        etcd: EtcdServer, tmp_path: Path) -> None:
    fake = FakeClock()
    failed: list[list[bytes]] = []
    async with proxied_writer(etcd, tmp_path, max_txn_ops=2, max_inflight=1,
                              clock=fake.clock, on_error=failed.append) as (proxy, writer):
        proxy.refuse()
        writer.put(b"cilium/cache/nodes/v1/c1/n1", b"1")
        writer.put(b"cilium/cache/nodes/v1/c1/n2", b"1")
        writer.put(b"cilium/cache/nodes/v1/c1/n1", b"2")  # coalesced: still one key
        writer.delete(b"cilium/cache/identities/v1/c2/id/7")
        writer.put(b"cilium/synced/c1/cilium/cache/nodes/v1", b"now")
        writer.put(b"cilium/.heartbeat", b"now")
        queued = {("nodes/v1", "c1"): 2, ("identities/v1", "c2"): 1,
                  ("synced/nodes/v1", "c1"): 1, ("heartbeat", None): 1}
        assert writer.queue_sizes() == queued

        writer.start()  # the first txn (two keys) fails and is put back
        await parked(fake, 1)
        assert failed == [[b"cilium/cache/nodes/v1/c1/n2", b"cilium/cache/nodes/v1/c1/n1"]]
        assert writer.queue_sizes() == queued

        proxy.forward()
        fake.advance(fake.sleeps[-1])
        await writer.flush()
        # Drained label sets stay, at 0: the gauge's series do not vanish when idle.
        assert writer.queue_sizes() == dict.fromkeys(queued, 0)
        assert await asyncio.to_thread(etcd.get, "cilium/cache/nodes/v1/c1/n1") == "2"


@given(st.lists(st.sampled_from(["cilium", "state", "cache", "synced", "cluster-config",
                                 ".heartbeat", "nodes", "v1", "c1", "", "x"]),
                max_size=9))
def test_queue_labels_are_the_scope_and_cluster_of_the_key(parts: list[str]) -> None:
    key = "/".join(parts)
    assert queue_labels(key.encode()) == (metrics_scope(key), cluster_of(key))


@given(st.sampled_from(RESOURCES), st.sampled_from(["c1", "cluster-7"]),
       st.text(st.sampled_from("ab/._"), min_size=1, max_size=8))
def test_a_store_prefix_gives_every_key_under_it_the_same_labels(
        resource: Resource, cluster: str, suffix: str) -> None:
    for prefix in (resource.state_prefix(cluster), resource.cache_prefix(cluster)):
        key = (prefix + suffix).encode()
        assert prefix_queue_labels(prefix.encode()) == queue_labels(key), key


def test_a_prefix_too_short_to_fix_the_labels_has_none() -> None:
    for prefix in (b"cilium/", b"cilium/state/", b"cilium/state/ip/", b"cilium/cache/ip/v1/",
                   b"cilium/synced/c1/", b"cilium/state/ip/v1"):
        assert prefix_queue_labels(prefix) is None, prefix
