"""Reliability of KVStoreMesh replicas: faults of the leader, on a real 3-member etcd.

Two replica processes (``python -m kvstoremesh.main``) share one destination: a
3-member etcd cluster.  Churn runs on the remotes before, during and after each fault;
each scenario ends with the exact convergence check of :mod:`harness.convergence` (no
stale key of the old leader, none lost) and exactly one leader.  The writes counted are
the destination's during the fault (the churn flowing through, mostly), the election's
own keys aside.  The lease TTL is 3 s,
so a crashed leader is replaced within seconds.

Who leads is read from etcd, as any tool would: the lock key created first below
``cilium/kvstoremesh-lock/`` and the identity registered for its lease.  Each scenario
prints its record (time to the new leader, to ready, writes issued, stale/lost keys);
``pytest -s`` shows them.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness import EtcdCluster, EtcdFactory
from harness.churn import DaemonProcess, Rig
from harness.convergence import ConvergenceReport, WriteLog, wait_converged
from harness.mesh import MeshEnv
from harness.tcpproxy import BLACKHOLE, FORWARD, TcpProxy

from clustermesh.election import lock_holder
from clustermesh.etcd.client import EtcdClient
from clustermesh.keys import HEARTBEAT_KEY

TTL = "3s"


class Ha:
    def __init__(self, env: MeshEnv, rig: Rig, cluster: EtcdCluster, tmp: Path) -> None:
        self.env = env
        self.rig = rig
        self.cluster = cluster
        self.tmp = tmp
        self.replicas: dict[str, DaemonProcess] = {}

    def replica(self, identity: str, *, local_config: Path | None = None) -> DaemonProcess:
        daemon = DaemonProcess(self.env, self.tmp / f"{identity}.log",
                               "--leader-election-identity", identity,
                               "--leader-election-lease-ttl", TTL,
                               "--heartbeat-timeout", "3s", "--status-check-interval", "1s",
                               "--cluster-removal-grace", "0s", "--enable-heartbeat",
                               local_config=local_config)
        self.replicas[identity] = daemon
        return daemon

    async def leader(self) -> str | None:
        """The identity registered for the lock owner's lease (None: no owner)."""
        holder = await lock_holder(self.env.local)
        return None if holder is None else holder.identity or ""

    async def wait_leader(self, identity: str, timeout: float = 20.0) -> float:
        """Seconds until ``identity`` holds the lock."""
        start = time.monotonic()
        async with asyncio.timeout(timeout):
            while await self.leader() != identity:
                for daemon in self.replicas.values():
                    if daemon.proc is not None and daemon.proc.returncode not in (None,
                                                                                  -9, 0):
                        daemon.alive()
                await asyncio.sleep(0.05)
        return time.monotonic() - start

    async def wait_role(self, identity: str, role: str, timeout: float = 20.0) -> None:
        """Until the replica says it is ``role`` (``leader`` or ``standby``) and ready."""
        daemon = self.replicas[identity]
        want = "leader: this replica" if role == "leader" else f"standby ({identity})"
        async with asyncio.timeout(timeout):
            while True:
                daemon.alive()
                status, body = await daemon.readyz()
                if status == 200 and want in body:
                    return
                await asyncio.sleep(0.05)

    async def wait_synced(self, identity: str, timeout: float = 30.0) -> float:
        """Seconds until the leader ``identity`` is ready with every remote synced."""
        start = time.monotonic()
        daemon = self.replicas[identity]
        async with asyncio.timeout(timeout):
            while True:
                daemon.alive()
                status, body = await daemon.readyz()
                if status == 200 and "leader: this replica" in body and "syncing" not in body:
                    return time.monotonic() - start
                await asyncio.sleep(0.05)

    async def converged(self, *identities: str, timeout: float = 30.0) -> ConvergenceReport:
        """The exact convergence check, the replicas named alive (the heartbeat the
        leader writes, ``--enable-heartbeat``, aside)."""
        return await wait_converged(self.env, timeout=timeout, alive=self.alive(*identities),
                                    tolerate=(HEARTBEAT_KEY.encode(),))

    def alive(self, *identities: str) -> Any:
        def check() -> None:
            for identity in identities:
                self.replicas[identity].alive()
        return check

    async def close(self) -> None:
        for daemon in self.replicas.values():
            if daemon.running:
                await daemon.kill()


@pytest.fixture
async def ha(tmp_path: Path, etcd_factory: EtcdFactory) -> AsyncIterator[Ha]:
    cluster = etcd_factory.cluster(name_prefix="dest")
    env = await MeshEnv.create(tmp_path / "mesh", etcd_factory, local_server=cluster)
    rig = Rig(env, seed=7)
    setup = Ha(env, rig, cluster, tmp_path)
    try:
        await rig.add("cluster1", 1, keys=300, proxied=False)
        await rig.add("cluster2", 2, keys=300, proxied=False)
        yield setup
    finally:
        await setup.close()
        await rig.close()
        await env.close()
        gc.collect()


async def revision_now(client: EtcdClient) -> int:
    return (await client.range(b"\x00", b"\x00", count_only=True)).header.revision


async def leader_and_standby(ha: Ha, *, local_config: Path | None = None
                             ) -> tuple[DaemonProcess, DaemonProcess]:
    """r1 leading and synced (through ``local_config``'s endpoints if given), r2 its
    ready standby."""
    first = await ha.replica("r1", local_config=local_config).start()
    await ha.wait_leader("r1")
    await ha.wait_synced("r1")
    second = await ha.replica("r2").start()
    await ha.wait_role("r2", "standby")
    return first, second


def record(what: str, report: ConvergenceReport, **figures: object) -> None:
    """One line per scenario (``pytest -s`` shows them): its figures, the keys the final
    check compared and how many were stale or lost (0, or the check failed)."""
    shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
    shown |= {"keys_checked": report.checked, "stale_or_lost": report.mismatches}
    print(f"[{what}] " + ", ".join(f"{k}={v}" for k, v in shown.items()))


async def test_leader_killed(ha: Ha) -> None:
    first, _second = await leader_and_standby(ha)
    ha.rig.start_churn()
    await asyncio.sleep(0.5)  # churn flowing through the leader
    async with WriteLog(ha.env.local) as writes:
        assert await first.kill() == -signal.SIGKILL
        to_leader = await ha.wait_leader("r2")
        to_ready = to_leader + await ha.wait_synced("r2")
        await asyncio.sleep(0.5)
        await ha.rig.stop_churn()
        report = await ha.converged("r2", timeout=30)
    record("kill -9", report, to_leader_s=to_leader, to_ready_s=to_ready,
           writes=len(writes.keys))
    await first.start()  # back as a standby: its old lease is gone, r2 keeps leading
    await ha.wait_role("r1", "standby")
    assert await ha.leader() == "r2"


async def test_leader_paused_past_its_lease_cannot_write(ha: Ha) -> None:
    """SIGSTOP the leader for longer than its lease, let the standby take over and
    converge, then SIGCONT: the old leader writes nothing (every write of it is fenced)
    and steps down to standby."""
    first, _second = await leader_and_standby(ha)
    ha.rig.start_churn()
    await asyncio.sleep(0.5)
    async with WriteLog(ha.env.local) as writes:
        first.signal(signal.SIGSTOP)
        try:
            to_leader = await ha.wait_leader("r2")
            to_ready = to_leader + await ha.wait_synced("r2")
            await asyncio.sleep(0.5)
            await ha.rig.stop_churn()
            await ha.converged("r2", timeout=30)
            quiet = await revision_now(ha.env.local)  # nothing writes now but the old leader
        finally:
            first.signal(signal.SIGCONT)
        await ha.wait_role("r1", "standby")
        from_old = writes.after(quiet)
    assert from_old == [], f"the paused leader wrote after waking: {from_old[:5]}"
    log = first.log_file.read_text()
    assert "stepping down to standby" in log
    report = await ha.converged("r1", "r2", timeout=30)
    record("SIGSTOP", report, to_leader_s=to_leader, to_ready_s=to_ready,
           writes=len(writes.keys), writes_after_wake=len(from_old))


async def test_leader_cut_off_from_etcd_then_healed(ha: Ha) -> None:
    proxy = await TcpProxy.to_url(ha.cluster.endpoints[0], name="r1-local").start()
    try:
        config = ha.cluster.client_config(ha.tmp / "r1-local.yaml", endpoints=[proxy.url])
        first, _ = await leader_and_standby(ha, local_config=config)
        ha.rig.start_churn()
        await asyncio.sleep(0.5)
        async with WriteLog(ha.env.local) as writes:
            proxy.set_mode(BLACKHOLE)
            to_leader = await ha.wait_leader("r2")
            to_ready = to_leader + await ha.wait_synced("r2")
            proxy.set_mode(FORWARD)
            await ha.wait_role("r1", "standby", timeout=40)
            await ha.rig.stop_churn()
            report = await ha.converged("r1", "r2", timeout=30)
        assert await ha.leader() == "r2"
        assert "stepping down to standby" in first.log_file.read_text()
        record("blackhole", report, to_leader_s=to_leader, to_ready_s=to_ready,
               writes=len(writes.keys))
    finally:
        await proxy.close()


@pytest.mark.parametrize("which", ["follower", "raft-leader"])
async def test_the_etcd_member_the_leader_uses_is_killed(ha: Ha, which: str) -> None:
    member = ha.cluster.leader() if which == "raft-leader" else ha.cluster.followers()[0]
    others = [m for m in ha.cluster.members if m is not member]
    config = ha.cluster.client_config(
        ha.tmp / "r1-local.yaml",
        endpoints=[member.client_url, *[m.client_url for m in others]])
    await leader_and_standby(ha, local_config=config)
    ha.rig.start_churn()
    await asyncio.sleep(0.5)
    async with WriteLog(ha.env.local) as writes:
        await asyncio.to_thread(member.kill)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(member.start)
        await ha.rig.stop_churn()
        report = await ha.converged("r1", "r2", timeout=40)
    leader = await ha.leader()
    assert leader in ("r1", "r2")
    standby = "r2" if leader == "r1" else "r1"
    await ha.wait_role(standby, "standby")
    record(f"etcd {which} killed", report, leader=leader, writes=len(writes.keys))


async def test_two_replicas_started_at_the_same_instant(ha: Ha) -> None:
    first, second = ha.replica("r1"), ha.replica("r2")
    ha.rig.start_churn()
    await asyncio.gather(first.start(), second.start())
    async with asyncio.timeout(20):
        while (leader := await ha.leader()) not in ("r1", "r2"):
            await asyncio.sleep(0.05)
    to_ready = await ha.wait_synced(leader)
    await ha.wait_role("r2" if leader == "r1" else "r1", "standby")
    await ha.rig.stop_churn()
    report = await ha.converged("r1", "r2", timeout=30)
    record("simultaneous start", report, leader=leader, to_ready_s=to_ready)


async def test_all_replicas_restarted_with_a_full_cache_write_nothing(ha: Ha) -> None:
    first, second = await leader_and_standby(ha)
    await ha.converged("r1", "r2", timeout=30)
    assert await asyncio.gather(first.stop(), second.stop()) == [0, 0]
    async with WriteLog(ha.env.local) as writes:
        await asyncio.gather(first.start(), second.start())
        async with asyncio.timeout(20):
            while (leader := await ha.leader()) not in ("r1", "r2"):
                await asyncio.sleep(0.05)
        to_ready = await ha.wait_synced(leader)
        sentinel = await mirror_sentinel(ha)
    cache_writes = [key for key in writes.keys if key != HEARTBEAT_KEY.encode()]
    assert cache_writes == [sentinel]  # the leader's heartbeat aside, only the sentinel
    report = await ha.converged("r1", "r2", timeout=30)
    record("restart all", report, to_ready_s=to_ready, writes=len(cache_writes) - 1)


async def mirror_sentinel(ha: Ha) -> bytes:
    """A new remote key, cached by whoever leads: a barrier after which earlier writes of
    the leader (there should be none) would have been seen."""
    return await ha.env.mirror_sentinel(ha.env.remotes["cluster1"], timeout=20)


async def test_config_directory_changed_during_a_failover(ha: Ha) -> None:
    first, _second = await leader_and_standby(ha)
    ha.rig.start_churn()
    assert await first.kill() == -signal.SIGKILL
    # While nobody leads: cluster2 is removed and cluster3 added.
    await ha.rig.stop_churn()
    ha.env.remove_remote_file("cluster2")
    await ha.rig.add("cluster3", 3, keys=100, proxied=False)
    to_leader = await ha.wait_leader("r2")
    to_ready = to_leader + await ha.wait_synced("r2")
    report = await ha.converged("r2", timeout=40)
    record("config change during failover", report, to_leader_s=to_leader,
           to_ready_s=to_ready)
