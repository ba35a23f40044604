"""Leader election (:mod:`clustermesh.election`) and fencing (:mod:`clustermesh.etcd.fence`)
against a real etcd.

Interoperability with upstream is checked against etcd's own Go ``concurrency.Mutex``:
``etcdctl lock`` takes exactly that mutex, so an ``etcdctl lock cilium/kvstoremesh-lock``
is what an upstream 1.19 replica holds (same lock name, same layout).  The keepalive's
timing runs on a fake clock; the lease expiry itself is etcd's.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from harness import EtcdServer
from harness.fakeclock import FakeClock
from harness.procs import Child

from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.election import LeaderElection, SessionLost, lock_key, registration_key
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.fence import EtcdFenced, Fence
from clustermesh.keys import KVSTOREMESH_LOCK

LOCK = KVSTOREMESH_LOCK.encode() + b"/"


@contextlib.asynccontextmanager
async def client_of(etcd: EtcdServer, tmp_path: Path, name: str,
                    clock: Clock = REAL_CLOCK) -> AsyncIterator[EtcdClient]:
    path = etcd.client_config(tmp_path / f"{name}.yaml")
    async with EtcdClient(load_etcd_config(path), name=name, clock=clock) as client:
        yield client


@contextlib.contextmanager
def etcdctl_lock(etcd: EtcdServer) -> Iterator[Child]:
    """``etcdctl lock cilium/kvstoremesh-lock``: Go's concurrency.Mutex, held until
    SIGINT; it prints the key it holds once it has the lock."""
    child = Child.spawn([str(etcd.etcdctl_binary), f"--endpoints={etcd.client_url}",
                         "lock", KVSTOREMESH_LOCK], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env={"ETCDCTL_API": "3"})
    try:
        yield child
    finally:
        child.signal(signal.SIGKILL)
        child.wait(10)


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_lock_layout_and_handover(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(60), client_of(etcd, tmp_path, "a") as a, \
            client_of(etcd, tmp_path, "b") as b:
        first = LeaderElection(a, identity="replica-a", ttl=5)
        second = LeaderElection(b, identity="replica-b", ttl=5)
        term = await first.campaign()
        # Go's layout: <lock>/<lease hex>, empty value, on the session's lease.
        assert term.key == lock_key(KVSTOREMESH_LOCK, first.lease)
        assert term.key == LOCK + f"{first.lease:x}".encode()
        held = await a.get(term.key)
        assert held is not None and held.value == b"" and held.lease == first.lease
        assert held.create_revision == term.revision == term.since
        who = await a.get(registration_key(first.lease))
        assert who is not None and who.value == b"replica-a" and who.lease == first.lease

        waiting = asyncio.create_task(second.campaign())
        await wait_for(lambda: second.lease != 0)
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the lock is held
        await first.resign()  # the lease goes, with the key: the waiter gets it at once
        assert await a.get(term.key) is None
        taken = await asyncio.wait_for(waiting, 5)
        assert taken.revision > term.revision
        assert taken.since > taken.revision  # from the deletion of the first key on
        await second.resign()


async def test_excludes_and_is_excluded_by_go_mutex(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(60), client_of(etcd, tmp_path, "ours") as client:
        ours = LeaderElection(client, identity="ours", ttl=5)
        # An upstream replica (Go's mutex) holds the lock: we wait.
        with etcdctl_lock(etcd) as upstream:
            held = await asyncio.to_thread(upstream.popen.stdout.readline)
            assert held.startswith(KVSTOREMESH_LOCK + "/")
            campaign = asyncio.create_task(ours.campaign())
            await wait_for(lambda: ours.lease != 0)
            await asyncio.sleep(0.5)
            assert not campaign.done()
            upstream.signal(signal.SIGINT)  # Go unlocks on interrupt
            term = await asyncio.wait_for(campaign, 10)
        # We hold it: an upstream replica waits until we resign.
        with etcdctl_lock(etcd) as upstream:
            line = asyncio.create_task(asyncio.to_thread(upstream.popen.stdout.readline))
            await asyncio.sleep(1.0)
            assert not line.done()
            assert (await client.get(term.key)) is not None
            await ours.resign()
            assert (await asyncio.wait_for(line, 10)).startswith(KVSTOREMESH_LOCK + "/")


async def test_fenced_writes_stop_when_the_lock_is_lost(etcd: EtcdServer,
                                                        tmp_path: Path) -> None:
    async with asyncio.timeout(60), client_of(etcd, tmp_path, "leader") as client, \
            client_of(etcd, tmp_path, "admin") as admin:
        election = LeaderElection(client, identity="leader", ttl=5)
        term = await election.campaign()
        lost: list[str] = []
        writes = client.fence = Fence(on_lost=lost.append)
        assert not writes.held
        with pytest.raises(EtcdFenced, match="not the leader"):
            await client.put(b"cilium/cache/x", b"1")  # before the term: nothing goes out
        writes.hold(term.key, term.revision)
        await client.put(b"cilium/cache/x", b"1")
        assert await client.delete(b"cilium/cache/", prefix=True) == 1
        # The lease ends under the leader (revoked here: as if it expired during a pause);
        # the leader has not noticed, but etcd refuses its next write.
        await admin.lease_revoke(term.lease)
        with pytest.raises(EtcdFenced, match="no longer held"):
            await client.put(b"cilium/cache/y", b"2")
        assert await admin.get(b"cilium/cache/y") is None
        assert len(lost) == 1 and not writes.held
        with pytest.raises(EtcdFenced, match="not the leader any more"):
            await client.delete(b"cilium/cache/", prefix=True)
        assert len(lost) == 1  # refused locally: nothing sent, nothing reported twice
        # A lock key of the same name created later (another session) is not ours either.
        writes.hold(term.key, term.revision)
        await admin.put(term.key, b"")
        with pytest.raises(EtcdFenced):
            await client.put(b"cilium/cache/z", b"3")
        assert await admin.get(b"cilium/cache/z") is None
        client.fence = None
        await election.resign()


async def test_restart_revokes_its_own_earlier_run(etcd: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(60), client_of(etcd, tmp_path, "r") as client:
        # What a killed run leaves: its registration and lock key on a lease still alive.
        earlier = await client.lease_grant(60)
        await client.put(registration_key(earlier), b"replica-0", lease=earlier)
        await client.put(lock_key(KVSTOREMESH_LOCK, earlier), b"", lease=earlier)
        other = await client.lease_grant(60)  # another replica's, waiting behind it
        await client.put(registration_key(other), b"replica-1", lease=other)
        await client.put(lock_key(KVSTOREMESH_LOCK, other), b"", lease=other)

        election = LeaderElection(client, identity="replica-0", ttl=5)
        campaign = asyncio.create_task(election.campaign())
        await wait_for(lambda: election.lease != 0)
        # The earlier run's lease is revoked at once (not after its 60 s), but the lock is
        # still replica-1's: it was waiting before us.
        await wait_for_async(lambda: lease_gone(client, earlier))
        await asyncio.sleep(0.3)
        assert not campaign.done()
        await client.lease_revoke(other)
        term = await asyncio.wait_for(campaign, 10)
        assert term.lease == election.lease
        await election.resign()


async def lease_gone(client: EtcdClient, lease: int) -> bool:
    return (await client.lease_time_to_live(lease)).TTL == -1


async def wait_for_async(predicate: Callable[[], Awaitable[bool]], *,
                         timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def test_session_ends_when_the_lease_is_found_gone(etcd: EtcdServer,
                                                          tmp_path: Path) -> None:
    fake = FakeClock()
    async with asyncio.timeout(60), client_of(etcd, tmp_path, "k", fake.clock) as client:
        election = LeaderElection(client, identity="k", ttl=6)
        await election.campaign()
        await fake.wait_for_sleepers(1, timeout=10)
        assert fake.sleeps[-1] == 2.0  # keepalive every ttl/3
        fake.advance(2.0)
        await fake.wait_for_sleeps(2, timeout=10)
        assert not election.lost.is_set()  # refreshed
        await client.lease_revoke(election.lease)  # gone under it
        fake.advance(2.0)
        await asyncio.wait_for(election.lost.wait(), 10)
        assert "expired or revoked" in election.lost_reason
        # A new campaign opens a new session; losing it while waiting for the lock says so.
        first = election.lease
        blocker = await client.lease_grant(60)
        await client.put(lock_key(KVSTOREMESH_LOCK, blocker), b"", lease=blocker)
        campaign = asyncio.create_task(election.campaign())
        await wait_for(lambda: election.lease not in (0, first))
        await fake.wait_for_sleeps(3, timeout=10)
        await client.lease_revoke(election.lease)
        fake.advance(2.0)
        with pytest.raises(SessionLost, match="expired or revoked"):
            await asyncio.wait_for(campaign, 10)
        await election.resign()
