"""Time, in one place: a :class:`Clock` our timers take (a fake one in tests) and the
RFC 3339 timestamps we write (canaries, heartbeats).

Code that owns a timer takes ``clock: Clock = REAL_CLOCK`` and reads and waits only
through it, so tests drive it without real sleeps.  Timestamps are what Go's
``time.Now().UTC().Format(time.RFC3339)`` prints: second precision, ``Z``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from .tasks import race


class Clock(NamedTuple):
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    wall: Callable[[], float] = time.time  # seconds since the epoch, for timestamps we write


REAL_CLOCK = Clock()


async def wait_event(event: asyncio.Event, timeout: float | None, *,
                     clock: Clock = REAL_CLOCK) -> bool:
    """Wait until ``event`` is set, or ``timeout`` seconds on ``clock`` (None: no
    timeout); whether it is set."""
    if event.is_set():
        return True
    if timeout is None:
        await event.wait()
    else:
        await race(event.wait(), clock.sleep(timeout))
    return event.is_set()


def rfc3339(seconds: float) -> bytes:
    """``seconds`` since the epoch as Go's ``time.RFC3339`` renders a UTC time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)).encode()


def rfc3339_now(clock: Clock = REAL_CLOCK) -> bytes:
    return rfc3339(clock.wall())
