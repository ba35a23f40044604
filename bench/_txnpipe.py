"""The write side of the bare reference programs (copier.py, bare_publisher.py).

Puts built in place into a ``TxnRequest`` of at most ``txn_ops`` ops, each full one sent
at once with at most ``inflight`` in flight over our grpc.aio client: the least a writer
of many keys has to do.  It imports nothing but the client's protobufs, because the
references' start-up counts in their figures.
"""

from __future__ import annotations

import asyncio

from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.pb import rpc_pb2


class TxnPipe:
    def __init__(self, client: EtcdClient, *, txn_ops: int = 128, inflight: int = 4) -> None:
        self._client = client
        self._txn_ops = txn_ops
        self._slots = asyncio.Semaphore(inflight)
        self._pending: set[asyncio.Task[object]] = set()
        self._request = rpc_pb2.TxnRequest()

    def add(self, key: bytes, value: bytes) -> bool:
        """Queue a put; True when the txn is full (the caller then awaits :meth:`send`)."""
        put = self._request.success.add().request_put
        put.key = key
        put.value = value
        return len(self._request.success) == self._txn_ops

    async def send(self) -> None:
        """Send the txn built so far once a slot is free (without waiting for it)."""
        if not len(self._request.success):
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._client.txn_request(self._request))
        self._pending.add(task)
        task.add_done_callback(lambda t: (self._pending.discard(t), self._slots.release()))
        self._request = rpc_pb2.TxnRequest()

    async def close(self) -> None:
        """Send the last txn and wait until every txn is committed."""
        await self.send()
        for task in list(self._pending):
            await task
