""":class:`clustermesh.backoff.Backoff` on a fake clock: the delays grow by the factor up
to the maximum, jitter stretches each by a factor in ``[1, 1 + jitter)``, ``reset()`` and
a healthy period start over, ``wait()`` sleeps on the clock; invalid policies are refused
and the module's table of named policies says what the constants are.
"""

from __future__ import annotations

import asyncio
import random
import re

import pytest
from harness.fakeclock import FakeClock

from clustermesh import backoff
from clustermesh.backoff import Backoff, BackoffPolicy

STEADY = BackoffPolicy(initial=0.1, maximum=2.0, factor=3.0, jitter=0.0, reset_after=None)


def test_delays_grow_by_the_factor_up_to_the_maximum() -> None:
    b = Backoff(STEADY, clock=FakeClock().clock)
    delays = [b.next_delay() for _ in range(7)]
    assert delays == pytest.approx([0.1, 0.3, 0.9, 2.0, 2.0, 2.0, 2.0])
    assert b.failures == 7


def test_a_huge_number_of_failures_stays_at_the_maximum() -> None:
    b = Backoff(BackoffPolicy(initial=1.0, maximum=5.0, jitter=0.0), clock=FakeClock().clock)
    b.failures = 10_000  # factor ** failures would overflow a float
    assert b.next_delay() == 5.0


def test_jitter_stretches_within_bounds_and_is_reproducible() -> None:
    policy = BackoffPolicy(initial=0.1, maximum=1.0, factor=2.0, jitter=0.5)
    clock = FakeClock().clock
    first = Backoff(policy, clock=clock, rng=random.Random(7))
    again = Backoff(policy, clock=clock, rng=random.Random(7))
    delays = [first.next_delay() for _ in range(200)]
    assert delays == [again.next_delay() for _ in range(200)]
    bases = [min(0.1 * 2**n, 1.0) for n in range(200)]
    assert all(base <= d < base * 1.5 for base, d in zip(bases, delays, strict=True))
    # Jitter really spreads the delays (at the maximum they would all be equal otherwise).
    assert len({round(d, 9) for d in delays[10:]}) > 100
    assert max(d / base for base, d in zip(bases, delays, strict=True)) > 1.4
    assert min(d / base for base, d in zip(bases, delays, strict=True)) < 1.1


def test_reset_starts_over() -> None:
    b = Backoff(STEADY, clock=FakeClock().clock)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.failures == 0
    assert b.next_delay() == pytest.approx(0.1)
    assert b.next_delay() == pytest.approx(0.3)


def test_a_healthy_period_starts_over() -> None:
    """``reset_after`` counts from the end of the last delay: an attempt that ran that long
    before failing again was healthy."""
    fake = FakeClock()
    policy = BackoffPolicy(initial=0.1, maximum=2.0, factor=3.0, jitter=0.0, reset_after=10.0)
    b = Backoff(policy, clock=fake.clock)
    assert [b.next_delay() for _ in range(3)] == pytest.approx([0.1, 0.3, 0.9])
    fake.advance(0.9 + 9.9)  # the delay, then an attempt 0.1 s short of healthy
    assert b.next_delay() == pytest.approx(2.0)
    fake.advance(2.0 + 10.0)
    assert b.next_delay() == pytest.approx(0.1)
    assert b.failures == 1
    # Without reset_after, no period is long enough.
    never = Backoff(STEADY, clock=fake.clock)
    never.next_delay()
    fake.advance(1e9)
    assert never.next_delay() == pytest.approx(0.3)


async def test_wait_sleeps_on_the_clock() -> None:
    fake = FakeClock()
    b = Backoff(STEADY, clock=fake.clock)
    task = asyncio.create_task(b.wait())
    await fake.wait_for_sleepers(1)
    assert fake.sleeps == pytest.approx([0.1])
    assert fake.advance(0.09) == 0
    await fake.settle()
    assert not task.done()
    assert fake.advance(0.01) == 1
    await task
    # The next wait asks for the next delay.
    task = asyncio.create_task(b.wait())
    await fake.wait_for_sleepers(1)
    assert fake.sleeps == pytest.approx([0.1, 0.3])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.sleepers == 0


@pytest.mark.parametrize("kwargs", [
    {"initial": 0.0, "maximum": 1.0},
    {"initial": -1.0, "maximum": 1.0},
    {"initial": 2.0, "maximum": 1.0},
    {"initial": 0.1, "maximum": 1.0, "factor": 0.5},
    {"initial": 0.1, "maximum": 1.0, "jitter": -0.1},
])
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid backoff policy"):
        BackoffPolicy(**kwargs)


def test_the_docstring_table_is_true() -> None:
    """Every named policy is in the module docstring's table, with its real values."""
    seconds = r"([\d.]+) s"
    row = re.compile(rf":data:`(\w+)`\s+{seconds}\s+{seconds}\s+([\d.]+)\s+([\d.]+)\s+"
                     rf"(?:{seconds}|(never))")
    table = {m[1]: m.groups()[1:] for m in row.finditer(backoff.__doc__ or "")}
    named = {name: value for name, value in vars(backoff).items()
             if isinstance(value, BackoffPolicy)}
    assert set(table) == set(named)
    for name, (initial, maximum, factor, jitter, reset, never) in table.items():
        policy = named[name]
        assert (policy.initial, policy.maximum, policy.factor, policy.jitter) == (
            float(initial), float(maximum), float(factor), float(jitter)), name
        assert policy.reset_after == (None if never else float(reset)), name
