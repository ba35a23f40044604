"""A fake :class:`~clustermesh.clock.Clock` for timer tests: time moves only when the
test says so.

Code under test takes ``clock: Clock = REAL_CLOCK``; a test passes ``fake.clock``
instead and then drives it::

    fake = FakeClock()
    task = asyncio.create_task(backoff.wait())        # backoff built with clock=fake.clock
    await fake.wait_for_sleepers(1)                   # it is parked on the clock now
    assert fake.sleeps == [0.05]                      # what it asked for
    fake.advance(0.05)                                # wakes every sleeper due by then
    await task

* :meth:`FakeClock.monotonic` is a counter that only :meth:`FakeClock.advance` moves
  (it starts at ``start``, not 0, so "0 means unset" bugs show);
  :meth:`FakeClock.wall` is ``wall_start`` plus the same elapsed time.
* :meth:`FakeClock.sleep` parks the caller until the clock reaches its deadline; a
  delay of 0 or less only yields to the event loop (as ``asyncio.sleep(0)``).  Each
  requested delay is recorded in :attr:`FakeClock.sleeps`; :attr:`FakeClock.sleepers`
  counts the callers parked now (a cancelled sleeper leaves at once), and
  :meth:`FakeClock.next_deadline` says when the first of them is due.
* :meth:`FakeClock.advance` wakes the sleepers due, in deadline order; they run when
  the test next yields (``await`` anything, or :meth:`FakeClock.settle`).

Nothing here sleeps for real: :meth:`FakeClock.wait_for_sleepers` and
:meth:`FakeClock.wait_for_sleeps` wake up on every call of :meth:`FakeClock.sleep`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from clustermesh.clock import Clock


class FakeClock:
    def __init__(self, *, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._parked: list[tuple[float, int, asyncio.Future[None]]] = []  # a heap
        self._order = itertools.count()
        self._changed = asyncio.Event()
        self.sleeps: list[float] = []

    @property
    def clock(self) -> Clock:
        """This fake as the :class:`Clock` the code under test takes."""
        return Clock(monotonic=self.monotonic, sleep=self.sleep, wall=self.wall)

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self._changed.set()
        if delay <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._parked, (self._now + delay, next(self._order), future))
        try:
            await future
        finally:
            if not future.done():  # cancelled while parked
                future.cancel()
            self._changed.set()

    @property
    def sleepers(self) -> int:
        """How many callers are parked in :meth:`sleep` now."""
        return sum(1 for _, _, future in self._parked if not future.done())

    def next_deadline(self) -> float | None:
        """When the earliest parked sleeper is due (None: nobody is parked)."""
        pending = [deadline for deadline, _, future in self._parked if not future.done()]
        return min(pending, default=None)

    def advance(self, seconds: float) -> int:
        """Move the clock ``seconds`` ahead; wake every sleeper due by then, earliest
        first.  Returns how many were woken."""
        if seconds < 0:
            raise ValueError("time does not go back")
        self._now += seconds
        woken = 0
        while self._parked and self._parked[0][0] <= self._now:
            _, _, future = heapq.heappop(self._parked)
            if not future.done():
                future.set_result(None)
                woken += 1
        return woken

    async def settle(self, rounds: int = 10) -> None:
        """Let woken tasks run (a few turns of the event loop; no time passes)."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def wait_for_sleepers(self, count: int, *, timeout: float = 5.0) -> None:
        """Wait (in real time, at most ``timeout``) until ``count`` callers are parked."""
        await self._wait(lambda: self.sleepers >= count, timeout)

    async def wait_for_sleeps(self, count: int, *, timeout: float = 5.0) -> None:
        """Wait (in real time, at most ``timeout``) until :meth:`sleep` was called
        ``count`` times in all (``len(sleeps) >= count``)."""
        await self._wait(lambda: len(self.sleeps) >= count, timeout)

    async def _wait(self, done: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()
