"""Removal's timers on a fake clock: the grace, the retries and their backoff.

:class:`~kvstoremesh.removal.Removals` needs three calls of a remote
(:class:`~kvstoremesh.removal.Removable`), so a scripted one stands in for it and no
etcd is needed; the removal of real cached data, in the right order, is tested against
etcd in test_kvstoremesh_lifecycle.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from harness.fakeclock import FakeClock

from clustermesh.backoff import CLUSTER_REMOVAL
from clustermesh.etcd.errors import EtcdUnavailable
from kvstoremesh.removal import REMOVAL_ATTEMPTS, Removals

GRACE = 30.0


class ScriptedRemote:
    """Records the calls; the first ``failing_drains`` drains raise an etcd error."""

    def __init__(self, name: str, *, failing_drains: int) -> None:
        self.name = name
        self.calls: list[str] = []
        self._failing = failing_drains

    async def delete_cached_config(self) -> None:
        self.calls.append("config")

    async def drain(self, resources: tuple[str, ...] | None = None) -> None:
        assert resources is None, "a removal drains everything"
        self.calls.append("drain")
        if self._failing:
            self._failing -= 1
            raise EtcdUnavailable("no leader")


async def parked(fake: FakeClock, asked: int) -> float:
    """Wait until the removal asked the clock for its sleep number ``asked`` and is
    parked on it; that sleep's delay."""
    await fake.wait_for_sleeps(asked)
    await fake.wait_for_sleepers(1)
    return fake.sleeps[asked - 1]


def backoff_delay(failure: int) -> tuple[float, float]:
    """The range of CLUSTER_REMOVAL's delay after failure number ``failure`` (1-based)."""
    p = CLUSTER_REMOVAL
    base = min(p.initial * p.factor ** (failure - 1), p.maximum)
    return base, base * (1 + p.jitter)


async def test_config_at_once_data_after_the_grace_retried_with_backoff() -> None:
    fake = FakeClock()
    removals = Removals(grace=GRACE, clock=fake.clock)
    remote = ScriptedRemote("cluster1", failing_drains=2)
    removals.start(remote)
    assert removals.in_progress() == {"cluster1"}

    assert await parked(fake, 1) == GRACE
    assert remote.calls == ["config"]  # the cluster-config went at once; the data waits
    fake.advance(GRACE - 0.001)
    await fake.settle()
    assert remote.calls == ["config"] and fake.sleepers == 1
    fake.advance(0.001)

    # The drain fails: the whole removal is retried after a backoff, without a new grace.
    for failure in (1, 2):
        delay = await parked(fake, 1 + failure)
        low, high = backoff_delay(failure)
        assert low <= delay < high, (failure, delay)
        assert remote.calls == ["config", "drain"] * failure
        fake.advance(delay)
    await removals.wait("cluster1")
    assert remote.calls == ["config", "drain"] * 3
    assert removals.in_progress() == frozenset()
    assert len(fake.sleeps) == 3 and fake.sleepers == 0


async def test_gives_up_after_the_last_attempt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kvstoremesh.removal")
    fake = FakeClock()
    removals = Removals(grace=GRACE, clock=fake.clock)
    remote = ScriptedRemote("cluster1", failing_drains=REMOVAL_ATTEMPTS)
    removals.start(remote)
    fake.advance(await parked(fake, 1))
    for failure in range(1, REMOVAL_ATTEMPTS):
        fake.advance(await parked(fake, 1 + failure))
    await removals.wait("cluster1")
    assert remote.calls == ["config", "drain"] * REMOVAL_ATTEMPTS
    # No wait after the last failure: it gives up at once.
    assert len(fake.sleeps) == REMOVAL_ATTEMPTS
    assert f"giving up removing its cached data after {REMOVAL_ATTEMPTS} attempts" in (
        caplog.text)
    assert removals.in_progress() == frozenset()


async def test_no_grace_no_wait_and_cancel_ends_every_removal() -> None:
    fake = FakeClock()
    instant = Removals(grace=0.0, clock=fake.clock)
    remote = ScriptedRemote("cluster1", failing_drains=0)
    instant.start(remote)
    await instant.wait("cluster1")
    assert remote.calls == ["config", "drain"] and fake.sleeps == []

    waiting = Removals(grace=GRACE, clock=fake.clock)
    for name in ("cluster2", "cluster3"):
        waiting.start(ScriptedRemote(name, failing_drains=0))
    await fake.wait_for_sleepers(2)
    waiter = asyncio.create_task(waiting.wait("cluster2"))
    await fake.settle()
    waiter.cancel()  # cancelling a waiter leaves the removal alone
    await fake.settle()
    assert waiting.in_progress() == {"cluster2", "cluster3"}
    await waiting.cancel()
    assert waiting.in_progress() == frozenset() and fake.sleepers == 0
