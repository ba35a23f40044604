"""The one writer per local etcd: coalesce, batch, rate-limit, retry.

Producers (reflectors, the apiserver's converters) call :meth:`SyncWriter.put`
and :meth:`SyncWriter.delete`; both return at once.  A single loop drains the
queue in batches through :class:`~clustermesh.etcd.batch.BatchWriter`, so many
txns are in flight while per-key order holds:

* **Coalescing.**  The queue is a dict keyed by etcd key: a key updated ten
  times before it is written is written once, with its latest value (or
  deleted, if that was the latest word).  A re-queued key moves to the back,
  so the dict's first entry is always the oldest outstanding request.
* **Order.**  Batches are applied one after another; a key updated while its
  previous value is in flight is written again in a later batch.
* **Flush.**  :meth:`flush` waits until everything queued before the call is
  committed — what a reflector needs before writing its sync canary.
* **Errors.**  A failed batch is put back in front of the queue (unless newer
  updates of the same keys arrived meanwhile) and retried with exponential
  backoff; the queue never drops a write.
* **Rate.**  ``qps`` limits txns per second once ``bootstrap_done()`` has been
  called; before that ``bootstrap_qps`` applies (Cilium's ``etcd.qps`` and
  ``etcd.bootstrapQps``).  0 means unlimited.

Deduplication against what the cache already holds is the producers' job:
each reflector knows the digests of the values it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .etcd.batch import BatchWriter, Delete, Op, Put
from .etcd.client import EtcdClient
from .etcd.errors import EtcdError

log = logging.getLogger(__name__)

_DELETE = None  # queue value meaning "delete this key"
_Entry = tuple[bytes | None, int, float | None]


@dataclass(frozen=True, slots=True)
class WriterStats:
    queued: int
    committed_ops: int
    txns: int
    errors: int
    last_error: str | None


class RateLimiter:
    """Token bucket over txns; ``rate`` 0 means unlimited."""

    def __init__(self, rate: float, *, burst: int | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1, int(rate))
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self.rate)


class SyncWriter:
    def __init__(self, client: EtcdClient, *, max_txn_ops: int = 128,
                 max_request_bytes: int = 1536 * 1024, max_inflight: int = 4,
                 qps: float = 0, bootstrap_qps: float = 0,
                 on_commit: Callable[[list[tuple[bytes, float]]], None] | None = None,
                 on_error: Callable[[list[bytes]], None] | None = None) -> None:
        self._limiter = RateLimiter(bootstrap_qps)
        self._qps = qps
        self._batch = BatchWriter(client, max_txn_ops=max_txn_ops,
                                  max_request_bytes=max_request_bytes,
                                  max_inflight=max_inflight, before_txn=self._limiter.acquire)
        self._batch_ops = max_txn_ops * max_inflight * 4
        # key -> (value or _DELETE, sequence number, time the change was observed or None)
        self._queue: dict[bytes, _Entry] = {}
        self._seq = 0
        self._wakeup = asyncio.Event()
        self._flushers: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._on_commit = on_commit
        self._on_error = on_error
        self.committed_ops = 0
        self.errors = 0
        self.last_error: str | None = None

    # -------------------------------------------------------------- producers

    def put(self, key: bytes, value: bytes, *, observed: float | None = None) -> None:
        """Queue a write. ``observed`` (``time.monotonic()`` when the change was seen at
        its source) makes the commit report the propagation lag of this key."""
        self._enqueue(key, value, observed)

    def delete(self, key: bytes, *, observed: float | None = None) -> None:
        self._enqueue(key, _DELETE, observed)

    def _enqueue(self, key: bytes, value: bytes | None, observed: float | None) -> None:
        self._seq += 1
        self._queue.pop(key, None)  # re-queued keys go to the back: first entry = oldest
        self._queue[key] = (value, self._seq, observed)
        self._wakeup.set()

    def queued_keys(self) -> list[bytes]:
        """A snapshot of the keys waiting to be written (for per-scope metrics)."""
        return list(self._queue)

    async def flush(self) -> None:
        """Wait until every write queued before this call is committed."""
        marker = self._seq
        if self._oldest_outstanding() > marker:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushers.append((marker, future))
        await future

    def bootstrap_done(self) -> None:
        """Switch from ``bootstrap_qps`` to ``qps``."""
        self._limiter.rate = self._qps
        self._limiter.burst = max(1, int(self._qps))

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    def stats(self) -> WriterStats:
        return WriterStats(queued=len(self._queue), committed_ops=self.committed_ops,
                           txns=self._batch.txns_sent, errors=self.errors,
                           last_error=self.last_error)

    # --------------------------------------------------------------- the loop

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sync-writer")

    async def stop(self, *, drain_timeout: float = 0) -> None:
        """Stop the loop, first trying to commit what is queued for ``drain_timeout`` s."""
        if self._task is None:
            return
        if drain_timeout > 0 and self._queue:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await self.flush()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    _inflight_low = math.inf

    def _oldest_outstanding(self) -> float:
        oldest = self._inflight_low
        if self._queue:
            oldest = min(oldest, next(iter(self._queue.values()))[1])
        return oldest

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take()
            self._inflight_low = min(seq for _, seq, _ in batch.values())
            ops: list[Op] = [Put(k, v) if v is not None else Delete(k)
                             for k, (v, _, _) in batch.items()]
            try:
                await self._batch.apply(ops)
            except (EtcdError, OSError) as exc:
                failures += 1
                self.errors += 1
                self.last_error = str(exc)
                if self._on_error is not None:
                    self._on_error(list(batch))
                log.warning("local etcd write of %d keys failed (attempt %d): %s",
                            len(ops), failures, exc)
                self._requeue(batch)
                self._inflight_low = math.inf
                await asyncio.sleep(min(0.1 * 2 ** min(failures, 10), 10.0)
                                    * random.uniform(0.5, 1.0))
                continue
            failures = 0
            self._inflight_low = math.inf
            self.committed_ops += len(ops)
            if self._on_commit is not None:
                now = time.monotonic()
                self._on_commit([(k, now - t) for k, (_, _, t) in batch.items() if t is not None])
            self._release_flushers()

    def _take(self) -> dict[bytes, _Entry]:
        batch: dict[bytes, _Entry] = {}
        queue = self._queue
        for _ in range(min(self._batch_ops, len(queue))):
            key = next(iter(queue))
            batch[key] = queue.pop(key)
        return batch

    def _requeue(self, batch: dict[bytes, _Entry]) -> None:
        # Back in front, except keys that were updated meanwhile (the newer word wins).
        stale = {k: v for k, v in batch.items() if k not in self._queue}
        self._queue = {**stale, **self._queue}

    def _release_flushers(self) -> None:
        if not self._flushers:
            return
        oldest = self._oldest_outstanding()
        keep = []
        for marker, future in self._flushers:
            if marker < oldest:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((marker, future))
        self._flushers = keep
