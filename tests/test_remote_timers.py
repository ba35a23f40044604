"""The timers of a remote cluster and of the cluster-config enforcer, on a fake clock.

Real etcd processes hold the data; only time is fake (:mod:`harness.fakeclock`): a
:class:`~kvstoremesh.remote.RemoteCluster` runs outside the daemon with
``clock=fake.clock``, so a heartbeat timeout or a session backoff happens when the
test advances the clock, not after real seconds.  Between two advances a test waits
until every timer of the remote is parked on the clock again (``wait_for_sleepers``),
so each advance is seen by all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from harness.fakeclock import FakeClock
from harness.mesh import MeshEnv, sample_state
from prometheus_client import CollectorRegistry

from clustermesh.assertion import keep_asserted
from clustermesh.controllers import GROUP_CLUSTER_CONFIG, ControllerRuns
from clustermesh.syncwriter import SyncWriter
from kvstoremesh.remote import RemoteCluster

HEARTBEAT_TIMEOUT = 8.0  # the heartbeat check runs every 2 s (timeout / 4)
# Parked on the clock while a session runs: the heartbeat check, the status check and
# the cached cluster-config's refresh.
SESSION_TIMERS = 3


@contextlib.asynccontextmanager
async def running(env: MeshEnv, name: str, fake: FakeClock) -> AsyncIterator[RemoteCluster]:
    writer = SyncWriter(env.local)
    writer.start()
    options = env.options(heartbeat_timeout=HEARTBEAT_TIMEOUT, status_check_interval=30.0)
    remote = RemoteCluster(name=name, config_path=env.config_dir / name, local=env.local,
                           writer=writer, options=options, clock=fake.clock)
    task = asyncio.create_task(remote.run())
    try:
        yield remote
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await writer.stop()


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` in real time (etcd answers in real time)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


async def failed_and_backing_off(remote: RemoteCluster, fake: FakeClock, failures: int
                                 ) -> float:
    """Wait for failure number ``failures``; the delay its backoff asked the clock for."""
    await until(lambda: remote.status().failures == failures, f"failure {failures}")
    await fake.wait_for_sleepers(1)  # the session's timers are gone: the backoff is parked
    assert fake.sleepers == 1
    return fake.sleeps[-1]


async def test_no_heartbeat_for_the_timeout_ends_the_session(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1)  # one heartbeat, never another
    await c1.publish(sample_state("cluster1", 1))
    await c1.write_canaries()
    fake = FakeClock()
    async with running(mesh_env, "cluster1", fake) as remote:
        await until(lambda: remote.status().ready, "cluster1 ready")
        await fake.wait_for_sleepers(SESSION_TIMERS)
        started = fake.monotonic()
        # Just within the timeout, checked every 2 s: the session stays up.
        while fake.monotonic() - started + 2 <= HEARTBEAT_TIMEOUT:
            fake.advance(2)
            await fake.wait_for_sleepers(SESSION_TIMERS)
        status = remote.status()
        assert status.connected and status.failures == 0, status.status
        assert status.last_heartbeat == started  # the connection counted as one
        fake.advance(2)  # now 10 s without a heartbeat or data
        delay = await failed_and_backing_off(remote, fake, 1)
        status = remote.status()
        assert not status.connected and not status.ready
        assert "10s since last heartbeat update has been received (limit 8s)" in status.status
        assert status.disconnected_since == fake.monotonic()
        assert status.last_failure == fake.wall()
        assert 1.0 <= delay < 1.2  # the first retry of REMOTE_SESSION
        # The cache keeps serving the remote's data while it is disconnected.
        cached = await mesh_env.local_tree()
        assert any(k.startswith(b"cilium/cache/nodes/v1/cluster1/") for k in cached)

        # A heartbeat during the backoff: the next session stays up past the timeout.
        await c1.heartbeat()
        fake.advance(delay)
        await until(lambda: remote.status().ready, "cluster1 ready again")
        await fake.wait_for_sleepers(SESSION_TIMERS)
        for _ in range(int(HEARTBEAT_TIMEOUT)):
            await c1.heartbeat()  # received (real time) before the clock moves
            await until(lambda: (remote.status().last_heartbeat or 0) == fake.monotonic(),
                        "the heartbeat to be received")
            fake.advance(2)
            await fake.wait_for_sleepers(SESSION_TIMERS)
        status = remote.status()
        assert status.connected and status.failures == 1, status.status


async def test_session_backoff_grows_and_resets_after_a_synced_session(
        mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1)
    await c1.publish(sample_state("cluster1", 1))
    await c1.write_canaries()
    good = c1.config
    await c1.write_config(replace(good, id=200))  # our own cluster ID: refused at once
    fake = FakeClock()
    async with running(mesh_env, "cluster1", fake) as remote:
        delays = []
        for failures in (1, 2, 3, 4):
            delays.append(await failed_and_backing_off(remote, fake, failures))
            problem = remote.status().problem
            assert problem is not None and problem.kind == "own-cluster-id"
            if failures < 4:
                fake.advance(delays[-1])
        # 1, 2, 4, 8 s, each stretched by up to 20 % of jitter.
        bases = (1, 2, 4, 8)
        assert all(b <= d < b * 1.2 for d, b in zip(delays, bases, strict=True)), delays

        await c1.write_config(good)
        fake.advance(delays[-1])
        await until(lambda: remote.status().ready, "cluster1 ready with its fixed config")
        assert remote.status().problem is None
        await fake.wait_for_sleepers(SESSION_TIMERS)
        # The synced session ends (its heartbeat stops) long before the policy's own
        # 60 s reset: only the full sync makes the next delay the base one, not 16 s.
        fake.advance(HEARTBEAT_TIMEOUT + 2)
        delay = await failed_and_backing_off(remote, fake, 5)
        assert 1.0 <= delay < 1.2, delay


async def test_the_cluster_config_is_refreshed_on_the_clock(mesh_env: MeshEnv) -> None:
    """Rewritten at once when changed (the watch), re-read every ``refresh`` seconds of
    the clock (each read one controller run), never rewritten while unchanged."""
    registry = CollectorRegistry()
    runs = ControllerRuns(namespace="test", registry=registry, groups=["all"])

    def succeeded() -> float:
        return registry.get_sample_value("test_controllers_group_runs_total",
                                         {"group_name": GROUP_CLUSTER_CONFIG,
                                          "status": "success"}) or 0.0

    key, value = b"cilium/cluster-config/cluster1", b'{"id":1}'
    fake = FakeClock()
    task = asyncio.create_task(keep_asserted(mesh_env.local, key, value, refresh=300.0,
                                             runs=runs, clock=fake.clock))
    try:
        await until(lambda: succeeded() == 1, "the first check")
        written = await mesh_env.local.get(key)
        assert written is not None and written.value == value
        await fake.wait_for_sleepers(1)
        assert fake.sleeps == [300.0]

        await mesh_env.local.put(key, b"something else")
        await until(lambda: succeeded() == 2, "the change to be undone")
        current = await mesh_env.local.get(key)
        assert current is not None and current.value == value

        fake.advance(299)
        await fake.settle()
        assert succeeded() == 2
        fake.advance(1)  # the refresh: a fresh read, no write
        await until(lambda: succeeded() == 3, "the refresh")
        await fake.wait_for_sleepers(1)
        assert fake.sleeps == [300.0, 300.0]
        unchanged = await mesh_env.local.get(key)
        assert unchanged is not None and unchanged.mod_revision == current.mod_revision
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
