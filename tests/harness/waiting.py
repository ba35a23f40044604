"""Polling a condition in async tests: one helper instead of one per test module."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def wait_until(check: Callable[[], Any], what: str, timeout: float = 10.0,
                     interval: float = 0.05) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy; return it.
    An AssertionError naming ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return result
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
