"""clustermesh.tasks.TaskSet: children live and die together, and a cancellation of the
parent always propagates (Python 3.11's TaskGroup can turn it into a child's error)."""

from __future__ import annotations

import asyncio

import pytest

from clustermesh.tasks import TaskSet


async def test_the_first_failure_cancels_the_others_and_is_raised() -> None:
    sleeper: asyncio.Task[None] | None = None

    async def fails() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    with pytest.raises(ExceptionGroup) as caught:
        async with TaskSet() as tasks:
            sleeper = tasks.create_task(asyncio.sleep(3600))
            tasks.create_task(fails())
    assert [str(e) for e in caught.value.exceptions] == ["boom"]
    assert sleeper is not None and sleeper.cancelled()


async def test_children_that_all_finish_end_the_block() -> None:
    async with TaskSet() as tasks:
        done = [tasks.create_task(asyncio.sleep(0)) for _ in range(3)]
    assert all(t.done() and not t.cancelled() for t in done)


async def test_a_cancellation_is_not_lost_when_a_child_fails_at_the_same_time() -> None:
    go = asyncio.Event()
    children: list[asyncio.Task[None]] = []

    async def fails() -> None:
        await go.wait()
        raise RuntimeError("the session failed")

    async def session() -> None:
        async with TaskSet() as tasks:
            children.append(tasks.create_task(fails()))
            children.append(tasks.create_task(asyncio.sleep(3600)))

    async def retrying() -> None:  # what RemoteCluster.run does with a failed session
        while True:
            try:
                await session()
            except* RuntimeError:
                pass

    parent = asyncio.create_task(retrying())
    for _ in range(3):
        await asyncio.sleep(0)  # the parent waits on the way out of the block now
    go.set()
    parent.cancel()  # in the same turn of the loop as the child's failure
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(parent, 5)
    assert all(child.done() for child in children)
