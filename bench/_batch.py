"""For benchmarks: write many keys fast, splitting puts and deletes into transactions
within the server's limits and keeping several of them in flight.

The benchmarks seed remote etcds with it (and measure raw write throughput as a
reference); the daemons write through :class:`clustermesh.syncwriter.SyncWriter`,
which coalesces a live queue instead of planning a known list of operations.

etcd refuses a txn with more than ``--max-txn-ops`` operations (default 128) or a
request larger than ``--max-request-bytes`` (default 1.5 MiB), and a txn may not
touch the same key twice.  :class:`BatchWriter` plans the operations into
chunks that respect all three, then sends up to ``max_inflight`` chunks at a
time.  Order is preserved where it matters: if a key appears again in a later
chunk, that chunk waits until every earlier chunk touching the key has
committed, so two writes of one key are never reordered.  A prefix delete is a
barrier: it waits for everything before it and everything after waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from clustermesh.etcd.client import (
    OP_OVERHEAD,
    REQUEST_OVERHEAD,
    EtcdClient,
    delete_op,
    put_op,
)
from clustermesh.etcd.errors import EtcdRequestTooLarge
from clustermesh.etcd.pb import rpc_pb2

DEFAULT_MAX_TXN_OPS = 128
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
DEFAULT_MAX_INFLIGHT = 4


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    prefix: bool = False


Op = Put | Delete


@dataclass(slots=True)
class _Chunk:
    ops: list[rpc_pb2.RequestOp] = field(default_factory=list)
    keys: set[bytes] = field(default_factory=set)
    size: int = REQUEST_OVERHEAD
    deps: set[int] = field(default_factory=set)
    barrier: bool = False


def op_size(op: Op) -> int:
    """Approximate encoded size of ``op`` inside a TxnRequest."""
    if isinstance(op, Put):
        return len(op.key) + len(op.value) + OP_OVERHEAD
    return 2 * len(op.key) + OP_OVERHEAD


class BatchWriter:
    """Applies sequences of :class:`Put` / :class:`Delete` with bounded, ordered txns."""

    def __init__(self, client: EtcdClient, *, max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 before_txn: Callable[[], Awaitable[None]] | None = None) -> None:
        if max_txn_ops < 1 or max_inflight < 1:
            raise ValueError("max_txn_ops and max_inflight must be at least 1")
        if max_request_bytes <= REQUEST_OVERHEAD + OP_OVERHEAD:
            raise ValueError(f"max_request_bytes must exceed {REQUEST_OVERHEAD + OP_OVERHEAD}")
        self.client = client
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        self.max_inflight = max_inflight
        self.before_txn = before_txn  # e.g. a rate limiter's acquire()
        self.txns_sent = 0

    def plan(self, ops: Iterable[Op]) -> list[_Chunk]:
        """Split ``ops`` into chunks; each lists the earlier chunks it must wait for."""
        chunks: list[_Chunk] = []
        last_chunk_of_key: dict[bytes, int] = {}
        last_barrier = -1
        current: _Chunk | None = None

        def close() -> None:
            nonlocal current
            current = None

        for op in ops:
            size = op_size(op)
            if size + REQUEST_OVERHEAD > self.max_request_bytes:
                raise EtcdRequestTooLarge(
                    f"key {op.key!r}: a single write of {size} bytes exceeds the "
                    f"max request size of {self.max_request_bytes} bytes"
                )
            if isinstance(op, Delete) and op.prefix:
                barrier = _Chunk(ops=[delete_op(op.key, prefix=True)], barrier=True,
                                 deps=set(range(len(chunks))))
                chunks.append(barrier)
                last_barrier = len(chunks) - 1
                close()
                continue
            if (current is None or op.key in current.keys
                    or len(current.ops) >= self.max_txn_ops
                    or current.size + size > self.max_request_bytes):
                current = _Chunk()
                if last_barrier >= 0:
                    current.deps.add(last_barrier)
                chunks.append(current)
            index = len(chunks) - 1
            previous = last_chunk_of_key.get(op.key)
            if previous is not None and previous != index:
                current.deps.add(previous)
            last_chunk_of_key[op.key] = index
            current.keys.add(op.key)
            current.size += size
            if isinstance(op, Put):
                current.ops.append(put_op(op.key, op.value, lease=op.lease))
            else:
                current.ops.append(delete_op(op.key))
        return chunks

    async def apply(self, ops: Sequence[Op] | Iterable[Op]) -> int:
        """Write ``ops``; returns the highest revision committed (0 if nothing was sent).

        On error the first failure is raised and chunks not yet sent are dropped;
        chunks already committed stay committed (each txn is atomic, the whole
        batch is not), so callers retry with the same ops, which converges.
        """
        chunks = self.plan(ops)
        if not chunks:
            return 0
        done = [asyncio.Event() for _ in chunks]
        slots = asyncio.Semaphore(self.max_inflight)
        revision = 0

        async def send(i: int, chunk: _Chunk) -> None:
            nonlocal revision
            for dep in chunk.deps:
                await done[dep].wait()
            async with slots:
                if self.before_txn is not None:
                    await self.before_txn()
                resp = await self.client.txn(success=chunk.ops)
            self.txns_sent += 1
            revision = max(revision, resp.header.revision)
            done[i].set()

        try:
            async with asyncio.TaskGroup() as group:
                for i, chunk in enumerate(chunks):
                    group.create_task(send(i, chunk))
        except ExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        return revision
