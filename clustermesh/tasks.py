"""Tasks that live and die together, without losing a cancellation on Python 3.11.

:func:`race` runs awaitables until the first is done (a wait raced against a stop
event, a watch against a refresh timer) and cancels the rest.

:class:`TaskSet` is ``asyncio.TaskGroup`` for a loop that retries a failed group (a
remote's session): the first child to fail cancels the others
and the block raises an ``ExceptionGroup`` of the failures.  The difference is what
happens when the *parent* is cancelled while a child fails: Python 3.11's TaskGroup then
raises the child's error instead of ``CancelledError`` (fixed in 3.12), so a retry loop
around it never stops — a step-down or a shutdown would wait for it forever — and it
leaves the parent's ``cancelling()`` count raised for every failed group, so that count
cannot tell either.  Here a cancellation of the parent always propagates as
``CancelledError``, after the children are cancelled and awaited.

Unlike TaskGroup, a failing child does not interrupt the body of the ``async with``:
the body only starts the children, and the waiting is done on the way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, Self


async def race(*aws: Awaitable[Any]) -> asyncio.Future[Any]:
    """Run ``aws`` until one is done, then cancel and await the others; the one done
    first (its result or exception for the caller to read).  If we are cancelled, all of
    them are, and the cancellation propagates."""
    futures = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            future.cancel()
        await asyncio.gather(*futures, return_exceptions=True)
    return next(f for f in futures if not f.cancelled())


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failed = asyncio.Event()

    def create_task(self, coro: Coroutine[Any, Any, Any], *,
                    name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failed.set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            if exc_type is None:
                # Until every child is done, or the first one fails.
                while not self._failed.is_set() and any(not t.done() for t in self._tasks):
                    await asyncio.wait({failed, *(t for t in self._tasks if not t.done())},
                                       return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when we are cancelled: no child outlives the block
            failed.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(failed, *self._tasks, return_exceptions=True)
        errors = [t.exception() for t in self._tasks
                  if not t.cancelled() and t.exception() is not None]
        if errors:
            raise BaseExceptionGroup("tasks failed", errors)
