"""The one writer per local etcd: coalesce, batch, rate-limit, retry.

Producers (reflectors, the apiserver's converters) call :meth:`SyncWriter.put`
and :meth:`SyncWriter.delete`; both return at once.  A single loop drains the
queue into txns of up to ``max_txn_ops`` operations (and ``max_request_bytes``)
and keeps ``max_inflight`` of them in flight at all times: as soon as one
commits, the next is cut from the queue, so the local etcd never waits for the
slowest txn of a batch.  Per-key order holds:

* **Coalescing.**  The queue is a dict keyed by etcd key: a key updated ten
  times before it is written is written once, with its latest value (or
  deleted, if that was the latest word).  A re-queued key moves to the back,
  so the dict's first entry is always the oldest outstanding request.
* **Order.**  A key is in at most one txn in flight: a key updated while its
  previous value is in flight stays queued (later keys go ahead of it) and is
  written again once that txn has committed or failed.  Different keys are
  independent, so their txns may commit in any order.
* **Flush.**  :meth:`flush` waits until everything queued before the call is
  committed — what a reflector needs before writing its sync canary.
* **Errors.**  A failed txn's writes are put back into the queue in their
  original order (unless newer updates of the same keys arrived meanwhile) and
  retried after a :data:`~clustermesh.backoff.LOCAL_WRITE` backoff, which starts
  over once a txn commits; the queue never drops a write.
* **Rate.**  ``qps`` limits txns per second once ``bootstrap_done()`` has been
  called; before that ``bootstrap_qps`` applies (Cilium's ``etcd.qps`` and
  ``etcd.bootstrapQps``).  0 means unlimited.

Deduplication against what the cache already holds is the producers' job:
each reflector knows the digests of the values it wrote.

Time is read and waited for on ``clock`` (a fake one in tests: backoff and rate
limits without real sleeps).  Txn sizes are estimated as the client's
:data:`~clustermesh.etcd.client.OP_OVERHEAD` and
:data:`~clustermesh.etcd.client.REQUEST_OVERHEAD` say.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping

from .backoff import LOCAL_WRITE, Backoff
from .clock import REAL_CLOCK, Clock
from .etcd.client import OP_OVERHEAD, REQUEST_OVERHEAD, EtcdClient
from .etcd.errors import EtcdError
from .etcd.pb import rpc_pb2
from .keys import QueueLabels, queue_labels

log = logging.getLogger(__name__)

_DELETE = None  # queue value meaning "delete this key"
# (value or _DELETE, sequence number, time the change was observed or None, its
# queue_labels: computed once, when the key enters the queue)
_Entry = tuple[bytes | None, int, float | None, QueueLabels]


class RateLimiter:
    """Token bucket over txns; ``rate`` 0 means unlimited."""

    def __init__(self, rate: float, *, burst: int | None = None,
                 clock: Clock = REAL_CLOCK) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1, int(rate))
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock.monotonic()

    def try_acquire(self) -> bool:
        """Take a token if one is available now."""
        if self.rate <= 0:
            return True
        now = self._clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    async def acquire(self) -> None:
        while True:
            if self.try_acquire():
                return
            await self._clock.sleep((1 - self._tokens) / self.rate)


class SyncWriter:
    def __init__(self, client: EtcdClient, *, max_txn_ops: int = 128,
                 max_request_bytes: int = 1536 * 1024, max_inflight: int = 4,
                 qps: float = 0, bootstrap_qps: float = 0,
                 on_commit: Callable[[list[tuple[bytes, float]]], None] | None = None,
                 on_error: Callable[[list[bytes]], None] | None = None,
                 clock: Clock = REAL_CLOCK) -> None:
        if max_txn_ops < 1 or max_inflight < 1:
            raise ValueError("max_txn_ops and max_inflight must be at least 1")
        self._client = client
        self._clock = clock
        self._limiter = RateLimiter(bootstrap_qps, clock=clock)
        self._qps = qps
        self._max_txn_ops = max_txn_ops
        self._max_request_bytes = max_request_bytes
        #: The most bytes of key + value one put can carry: a longer one never fits.
        self.max_entry_bytes = max_request_bytes - OP_OVERHEAD - REQUEST_OVERHEAD
        self._max_inflight = max_inflight
        self._queue: dict[bytes, _Entry] = {}  # key -> its pending write
        self._holes = 0  # entries popped from the front of _queue since it was built
        # len(_queue) by queue_labels(key), kept as keys come and go: a scrape reads it in
        # O(labels); counting the queue itself took 0.4 s at 150k keys, on the event loop.
        # (A plain dict: Counter's += costs a put 0.3 µs more.)
        self._sizes: dict[QueueLabels, int] = {}
        # Every label set ever queued: the gauge keeps exporting it at 0 once drained, as
        # upstream's per-store gauge does, so a panel or alert on it has a series to read.
        self._labels_seen: set[QueueLabels] = set()
        self._seq = 0
        self._busy: set[bytes] = set()  # keys of the txns in flight
        self._inflight: dict[int, int] = {}  # txn number -> lowest sequence number in it
        self._partial: set[int] = set()  # txns in flight with fewer than max_txn_ops ops
        self._take_was_full = False
        self._txn_tasks: set[asyncio.Task[None]] = set()
        self._next_txn = 0
        self._backoff = Backoff(LOCAL_WRITE, clock=clock)  # failed txns since one committed
        self._retry_at = 0.0  # clock time before which no txn is sent (backoff)
        self._crashed: BaseException | None = None
        self._stopping = False
        self._wakeup = asyncio.Event()
        # pace(): producers wait at high water until the queue is back at low water.
        self._high_water = max(65536, max_txn_ops * max_inflight * 16)
        self._room = asyncio.Event()
        # (marker, future) of each flush() waiting, in marker order (markers only grow).
        self._flushers: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._on_commit = on_commit
        self._on_error = on_error

    # -------------------------------------------------------------- producers

    def fits(self, key: bytes, value: bytes) -> bool:
        """Whether one put of ``key`` can ever be committed (``max_request_bytes``)."""
        return len(key) + len(value) <= self.max_entry_bytes

    def put(self, key: bytes, value: bytes, *, observed: float | None = None,
            labels: QueueLabels | None = None) -> None:
        """Queue a write. ``observed`` (the writer's ``clock.monotonic()`` when the change
        was seen at its source) makes the commit report the propagation lag of this key.
        ``labels``: the key's :func:`~clustermesh.keys.queue_labels`, from a caller that
        knows them (a store, for every key of its prefix); else they are worked out.

        ValueError for a write that can never fit a request (check :meth:`fits`):
        retrying it forever would stall every flush behind it.
        """
        if len(key) + len(value) > self.max_entry_bytes:  # fits(), inline: a put per key
            raise ValueError(f"key {key!r}: a {len(value)}-byte value exceeds the etcd "
                             f"request limit of {self._max_request_bytes} bytes")
        self._enqueue(key, value, observed, labels)

    def delete(self, key: bytes, *, observed: float | None = None,
               labels: QueueLabels | None = None) -> None:
        self._enqueue(key, _DELETE, observed, labels)

    def _enqueue(self, key: bytes, value: bytes | None, observed: float | None,
                 labels: QueueLabels | None) -> None:
        self._seq += 1
        # Re-queued keys go to the back: the first entry is always the oldest.
        queued = self._queue.pop(key, None)
        if queued is None:
            if labels is None:
                labels = queue_labels(key)
            sizes = self._sizes
            if labels not in sizes:
                self._labels_seen.add(labels)
                sizes[labels] = 1
            else:
                sizes[labels] += 1
        else:
            labels = queued[3]
        self._queue[key] = (value, self._seq, observed, labels)
        self._wakeup.set()

    async def pace(self) -> None:
        """Yield to the event loop; if the queue is long, wait until it is half drained.

        For producers that can pace themselves, like a reflector's initial list: they
        call this every few hundred keys, so the writer gets the event loop as soon as a
        txn commits (the local etcd is kept busy) and the queue stays bounded.
        """
        if len(self._queue) < self._high_water:
            await asyncio.sleep(0)
            return
        self._room.clear()
        await self._room.wait()

    def queue_sizes(self) -> Mapping[QueueLabels, int]:
        """How many keys wait to be written, by :func:`~clustermesh.keys.queue_labels`:
        every label set ever queued, 0 once its keys are written."""
        sizes = self._sizes
        return {labels: sizes.get(labels, 0) for labels in self._labels_seen}

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

    # --------------------------------------------------------------- the loop

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._crashed = None
            self._task = asyncio.create_task(self._run(), name="sync-writer")

    async def stop(self, *, drain_timeout: float = 0) -> None:
        """Stop the loop, first trying to commit what is queued for ``drain_timeout`` s."""
        if self._task is None:
            return
        if drain_timeout > 0 and (self._queue or self._inflight):
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

    def _oldest_outstanding(self) -> float:
        oldest = min(self._inflight.values(), default=math.inf)
        if self._queue:
            oldest = min(oldest, next(iter(self._queue.values()))[1])
        return oldest

    async def _run(self) -> None:
        try:
            while True:
                if self._crashed is not None:
                    raise self._crashed
                delay = self._retry_at - self._clock.monotonic()
                if delay > 0:
                    await self._clock.sleep(delay)
                    continue
                if self._may_send():
                    if not self._limiter.try_acquire():
                        await self._limiter.acquire()
                    if self._send_next():
                        continue
                # Nothing to send, no free slot, or every queued key is in flight already.
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            self._stopping = True
            tasks = list(self._txn_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _may_send(self) -> bool:
        """A free slot, and a full txn's worth queued or no partial txn in flight.

        Group commit: while a partial txn is in flight, the updates that trickle in
        wait for it and then leave together, instead of one txn (and ~0.2 ms of
        client CPU) each.  Alone, an update is sent at once.
        """
        return (bool(self._queue) and len(self._inflight) < self._max_inflight
                and (not self._partial or len(self._queue) >= self._max_txn_ops))

    def _send_next(self) -> bool:
        """Cut the next txn from the queue and start it; False if nothing could be taken."""
        batch = self._take()
        if not batch:
            return False
        txn = self._next_txn
        self._next_txn += 1
        if not self._take_was_full:
            self._partial.add(txn)
        self._inflight[txn] = min(entry[1] for entry in batch.values())
        self._busy.update(batch)
        request = rpc_pb2.TxnRequest()
        add = request.success.add  # built in place: ~2x cheaper than RequestOp objects
        for key, (value, _, _, _) in batch.items():
            if value is not None:
                put = add().request_put
                put.key = key
                put.value = value
            else:
                add().request_delete_range.key = key
        task = asyncio.create_task(self._commit(txn, batch, request), name=f"sync-txn-{txn}")
        self._txn_tasks.add(task)
        task.add_done_callback(self._txn_done)
        return True

    def _take(self) -> dict[bytes, _Entry]:
        """The oldest queued writes that fit one txn, skipping keys already in flight."""
        queue = self._queue
        busy = self._busy
        limit = self._max_txn_ops
        budget = self._max_request_bytes - REQUEST_OVERHEAD
        keys: list[bytes] = []
        self._take_was_full = True
        # One pass over the front of the queue. (Popping ``next(iter(queue))`` once per key
        # is quadratic: a dict keeps the slots of popped entries until it is rebuilt, and
        # every iteration starts by skipping them.)  Busy keys are at most len(busy).
        for key, (value, _, _, _) in itertools.islice(queue.items(), limit + len(busy)):
            if key in busy:
                continue
            size = len(key) + (len(value) if value is not None else len(key)) + OP_OVERHEAD
            if size > budget and keys:
                break
            budget -= size
            keys.append(key)  # an op alone too big for a request is sent (and fails) alone
            if len(keys) >= limit or budget <= 0:
                break
        else:
            self._take_was_full = False
        if not keys:
            return {}
        if len(keys) == len(queue):
            self._queue = {}
            self._holes = 0
            self._sizes.clear()
            self._room.set()
            return queue
        batch = {key: queue.pop(key) for key in keys}
        self._tally(batch.values(), -1)
        self._holes += len(keys)
        if self._holes > len(queue):  # more holes than entries: rebuild it compactly
            self._queue = dict(queue)
            self._holes = 0
        if len(self._queue) <= self._high_water // 2:
            self._room.set()
        return batch

    async def _commit(self, txn: int, batch: dict[bytes, _Entry],
                      request: rpc_pb2.TxnRequest) -> None:
        try:
            await self._client.txn_request(request)
        except (EtcdError, OSError) as exc:
            if self._on_error is not None:
                self._on_error(list(batch))
            log.warning("local etcd write of %d keys failed (attempt %d): %s",
                        len(batch), self._backoff.failures + 1, exc)
            self._requeue(batch)
            delay = self._backoff.next_delay()
            self._retry_at = max(self._retry_at, self._clock.monotonic() + delay)
        except asyncio.CancelledError:
            self._requeue(batch)  # stopping: keep the writes (a later flush still sees them)
            raise
        else:
            self._backoff.reset()
            if self._on_commit is not None:
                now = self._clock.monotonic()
                self._on_commit([(k, now - entry[2]) for k, entry in batch.items()
                                 if entry[2] is not None])
        finally:
            del self._inflight[txn]
            self._partial.discard(txn)
            self._busy.difference_update(batch)
            self._release_flushers()
            self._wakeup.set()
        # Start the next txn right away rather than when the loop gets its turn: while a
        # producer keeps the event loop busy, every hop adds to the local etcd's idle time.
        if (not self._stopping and self._crashed is None
                and self._clock.monotonic() >= self._retry_at):
            while self._may_send() and self._limiter.try_acquire() and self._send_next():
                pass

    def _txn_done(self, task: asyncio.Task[None]) -> None:
        self._txn_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug (not an etcd error): stop the writer loop; liveness reports it.
            self._crashed = task.exception()
            self._wakeup.set()

    def _tally(self, entries: Iterable[_Entry], sign: int) -> None:
        sizes = self._sizes
        for labels, n in Counter([entry[3] for entry in entries]).items():
            left = sizes.get(labels, 0) + sign * n
            if left:
                sizes[labels] = left
            else:
                del sizes[labels]

    def _requeue(self, batch: dict[bytes, _Entry]) -> None:
        # Back in order of sequence, except keys that were updated meanwhile (the newer
        # word wins), so the first entry is still the oldest outstanding write.
        stale = [(k, v) for k, v in batch.items() if k not in self._queue]
        if stale:
            self._tally([entry for _, entry in stale], +1)
            merged = sorted([*stale, *self._queue.items()], key=lambda item: item[1][1])
            self._queue = dict(merged)
            self._holes = 0

    def _release_flushers(self) -> None:
        if not self._flushers:
            return
        oldest = self._oldest_outstanding()
        flushers = self._flushers
        # Only the front can be released: once per commit, scanning every waiting flush
        # (one per syncing reflector: thousands) cost more than the commit's own work.
        while flushers and flushers[0][0] < oldest:
            _, future = flushers.popleft()
            if not future.done():
                future.set_result(None)
