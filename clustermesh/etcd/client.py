"""A thin asyncio etcd v3 client over our own generated grpc.aio stubs.

:class:`EtcdClient` is the etcd API (KV, watch, lease, cluster, maintenance) over
an :class:`~clustermesh.etcd.connection.EtcdConnection`, which owns the channel:
failover between endpoints, TLS rotation, authentication tokens and the one
retrying path (:meth:`~clustermesh.etcd.connection.EtcdConnection.attempts`) that
unary calls, the lease keepalive stream and watches all take, so they fail over
and refresh tokens by the same rules (see :mod:`clustermesh.etcd.connection`).
Users, roles and permissions are administered with the functions of
:mod:`clustermesh.etcd.auth`.  The module also builds the ops and compares of
transactions (:func:`put_op`, :func:`compare_value`...) and says what a txn costs
beyond its keys and values (:data:`OP_OVERHEAD`, :data:`REQUEST_OVERHEAD`), for
writers that cut txns to the server's ``--max-request-bytes``.

* **Big reads are paginated and consistent.**  :meth:`EtcdClient.range_pages`
  reads a prefix in pages pinned to the revision of the first page, and says
  which revision the snapshot is at, so a watch can continue from ``rev + 1``.

Everything that can fail raises a subclass of :class:`EtcdError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import grpc

from .connection import EtcdConnection
from .errors import EtcdError, EtcdUnavailable
from .fence import Fence
from .pb import kv_pb2, rpc_pb2
from .watch import Watch

log = logging.getLogger(__name__)

KeyValue = kv_pb2.KeyValue
Event = kv_pb2.Event
RequestOp = rpc_pb2.RequestOp
Compare = rpc_pb2.Compare

DEFAULT_PAGE_SIZE = 5000
# Protobuf framing of a TxnRequest, rounded up: what len(key) + len(value) misses, per op
# and per request.
OP_OVERHEAD = 32
REQUEST_OVERHEAD = 1024


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a request cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"  # all keys >= prefix


def put_op(key: bytes, value: bytes, *, lease: int = 0) -> RequestOp:
    # Field assignment on the nested message is ~3x cheaper than keyword construction
    # (RequestOp(request_put=PutRequest(...))) with the upb runtime: this runs once per
    # key written. Touching request_put selects it in the oneof even for empty fields.
    op = RequestOp()
    put = op.request_put
    put.key = key
    put.value = value
    if lease:
        put.lease = lease
    return op


def delete_op(key: bytes, *, prefix: bool = False) -> RequestOp:
    op = RequestOp()
    delete = op.request_delete_range
    delete.key = key
    if prefix:
        delete.range_end = prefix_range_end(key)
    return op


def get_op(key: bytes) -> RequestOp:
    return RequestOp(request_range=rpc_pb2.RangeRequest(key=key))


def compare_value(key: bytes, value: bytes, *, equal: bool = True) -> Compare:
    result = Compare.EQUAL if equal else Compare.NOT_EQUAL
    return Compare(key=key, target=Compare.VALUE, result=result, value=value)


def compare_mod_revision(key: bytes, mod_revision: int) -> Compare:
    """True iff the key's mod_revision equals ``mod_revision`` (0: the key is absent)."""
    return Compare(key=key, target=Compare.MOD, result=Compare.EQUAL, mod_revision=mod_revision)


class LeaseLost(NamedTuple):
    """Why :meth:`EtcdClient.keep_lease_alive` stopped: ``gone`` when etcd said the lease
    no longer exists (nothing left to revoke)."""

    reason: str
    gone: bool


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    endpoint: str
    cluster_id: int
    member_id: int
    revision: int
    leader: int
    raft_term: int
    version: str
    db_size: int
    errors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


class EtcdClient(EtcdConnection):
    """An etcd v3 client for one etcd cluster (several endpoints).

    Use as ``async with EtcdClient(config) as client: ...`` or call
    :meth:`connect` and :meth:`close` yourself.  The constructor's options (timeouts,
    keepalive, TLS reload interval, ``observer``, ``clock``) are :class:`EtcdConnection`'s.
    The owner may set :attr:`fence`: then every write (``put``, ``delete``, ``txn``)
    goes out as a txn guarded by the fence's lock, and fails with ``EtcdFenced`` when it
    is not held (see :mod:`clustermesh.etcd.fence`).
    """

    fence: Fence | None = None

    # ------------------------------------------------------------------------ KV

    async def get(self, key: bytes) -> KeyValue | None:
        resp = await self.call("kv", "Range", rpc_pb2.RangeRequest(key=key))
        return resp.kvs[0] if resp.kvs else None

    async def range(self, key: bytes, range_end: bytes = b"", *, revision: int = 0,
                    limit: int = 0, keys_only: bool = False,
                    count_only: bool = False) -> rpc_pb2.RangeResponse:
        """One Range request; :class:`EtcdCompacted` if ``revision`` is compacted."""
        request = rpc_pb2.RangeRequest(key=key, range_end=range_end, revision=revision,
                                       limit=limit, keys_only=keys_only, count_only=count_only)
        return await self.call("kv", "Range", request)

    async def range_pages(
        self, prefix: bytes, *, page_size: int = DEFAULT_PAGE_SIZE, revision: int = 0,
        keys_only: bool = False, range_end: bytes = b"",
    ) -> AsyncIterator[tuple[Sequence[KeyValue], int]]:
        """Yield ``(kvs, revision)`` pages of every key under ``prefix`` (or, with
        ``range_end``, of every key in ``[prefix, range_end)``).

        Every page is read at the revision of the first one (``revision`` if given),
        so together they are one consistent snapshot at that revision.  Raises
        :class:`EtcdCompacted` if that revision is compacted while paging.

        The next page is requested before this one is yielded, so the server reads
        it while the caller processes the current one.
        """
        end = range_end or prefix_range_end(prefix)
        resp = await self.range(prefix, end, revision=revision, limit=page_size,
                                keys_only=keys_only)
        if revision == 0:
            revision = resp.header.revision
        pending: asyncio.Task[rpc_pb2.RangeResponse] | None = None
        try:
            while True:
                if resp.more and resp.kvs:
                    pending = asyncio.create_task(self.range(
                        resp.kvs[-1].key + b"\x00", end, revision=revision, limit=page_size,
                        keys_only=keys_only))
                yield resp.kvs, revision
                if pending is None:
                    return
                resp, pending = await pending, None
        finally:
            if pending is not None:  # the caller stopped early, or failed
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, EtcdError):
                    await pending

    async def list_prefix(self, prefix: bytes, *, page_size: int = DEFAULT_PAGE_SIZE,
                          revision: int = 0) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` as one snapshot, and the revision it was read at."""
        kvs: list[KeyValue] = []
        rev = revision
        async for page, page_revision in self.range_pages(prefix, page_size=page_size,
                                                          revision=revision):
            kvs.extend(page)
            rev = page_revision
        return kvs, rev

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the revision of the write."""
        if self.fence is not None:
            resp = await self.txn_request(rpc_pb2.TxnRequest(
                success=[put_op(key, value, lease=lease)]))
            return resp.header.revision
        resp = await self.call("kv", "Put", rpc_pb2.PutRequest(key=key, value=value, lease=lease))
        return resp.header.revision

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns how many were deleted."""
        if self.fence is not None:
            resp = await self.txn_request(rpc_pb2.TxnRequest(
                success=[delete_op(key, prefix=prefix)]))
            return resp.responses[0].response_delete_range.deleted
        end = prefix_range_end(key) if prefix else b""
        resp = await self.call("kv", "DeleteRange",
                               rpc_pb2.DeleteRangeRequest(key=key, range_end=end))
        return resp.deleted

    async def txn(self, *, compare: Sequence[Compare] = (), success: Sequence[RequestOp] = (),
                  failure: Sequence[RequestOp] = ()) -> rpc_pb2.TxnResponse:
        request = rpc_pb2.TxnRequest(compare=compare, success=success, failure=failure)
        return await self.txn_request(request)

    async def txn_request(self, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        """Send a ``TxnRequest`` the caller built in place (``request.success.add()``):
        for big txns, it saves building every op twice.  Through a fence, the request may
        have no compare of its own (a refusal would not say whose compare failed)."""
        fence = self.fence
        if fence is None:
            return await self.call("kv", "Txn", request)
        if request.compare or request.failure:
            raise ValueError("a fenced client's txn carries only the fence's compare")
        fence.guard(request)
        resp = await self.call("kv", "Txn", request)
        if not resp.succeeded:
            raise fence.refused()
        return resp

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        await self.call("kv", "Compact",
                        rpc_pb2.CompactionRequest(revision=revision, physical=physical))

    def watch(self, key: bytes, *, prefix: bool = True, start_revision: int = 0,
              prev_kv: bool = False, progress_notify: bool = True,
              cluster_id: int = 0, range_end: bytes = b"") -> Watch:
        """A watch on ``key`` (a prefix by default; ``[key, range_end)`` with
        ``range_end``) from ``start_revision`` (0: now).

        ``cluster_id``: the etcd cluster ``start_revision`` belongs to (0: whichever the
        first stream reaches); a stream resumed elsewhere raises ``EtcdClusterChanged``.
        """
        end = range_end or (prefix_range_end(key) if prefix else b"")
        return Watch(self, key=key, range_end=end, start_revision=start_revision,
                     prev_kv=prev_kv, progress_notify=progress_notify, cluster_id=cluster_id)

    # --------------------------------------------------------------------- lease

    async def lease_grant(self, ttl: int) -> int:
        resp = await self.call("lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise EtcdError(f"lease grant failed: {resp.error}", endpoint=self.endpoint)
        return resp.ID

    async def lease_revoke(self, lease_id: int) -> None:
        await self.call("lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease_id))

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False
                                 ) -> rpc_pb2.LeaseTimeToLiveResponse:
        """TTL -1 means the lease does not exist (expired or revoked)."""
        return await self.call("lease", "LeaseTimeToLive",
                               rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys))

    async def lease_keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease once; returns its new TTL (0 if it no longer exists).

        One request on a keepalive stream, retried like a unary call (an end of the
        stream without an answer too)."""
        async for attempt in self.attempts():
            async with attempt:
                call = attempt.channel.lease.LeaseKeepAlive(metadata=attempt.metadata,
                                                            timeout=self._request_timeout)
                try:
                    await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                    resp = await call.read()
                    await call.done_writing()
                finally:
                    call.cancel()
                if resp is grpc.aio.EOF:
                    raise EtcdUnavailable("lease keepalive stream closed",
                                          endpoint=attempt.channel.url)
                return max(resp.TTL, 0)

    async def keep_lease_alive(self, lease_id: int, ttl: int) -> LeaseLost:
        """Refresh ``lease_id`` every ttl/3 until it is found gone, or until none was
        answered for a whole ``ttl`` (it must then be assumed expired: a partition, or
        this process paused); returns why.

        Run it as a task and cancel it to stop; transient errors are retried every second.
        """
        interval = max(ttl / 3, 0.5)
        answered = self._clock.monotonic()
        while True:
            try:
                left = await self.lease_keepalive_once(lease_id)
            except EtcdUnavailable as exc:
                silent = self._clock.monotonic() - answered
                if silent >= ttl:
                    return LeaseLost(f"lease {lease_id:x} not refreshed for {silent:.0f}s "
                                     f"(TTL {ttl}s): {exc}", gone=False)
                log.warning("%s: lease %x keepalive failed: %s", self.name, lease_id, exc)
                await self._clock.sleep(min(interval, 1.0))
                continue
            if left <= 0:
                return LeaseLost(f"lease {lease_id:x} expired or revoked", gone=True)
            answered = self._clock.monotonic()
            await self._clock.sleep(interval)

    # ------------------------------------------------------- cluster, maintenance

    async def status(self) -> EtcdStatus:
        """Status of the member in use (cluster ID, member ID, revision, leader...)."""
        resp = await self.call("maintenance", "Status", rpc_pb2.StatusRequest())
        h = resp.header
        return EtcdStatus(
            endpoint=self.endpoint or "", cluster_id=h.cluster_id, member_id=h.member_id,
            revision=h.revision, leader=resp.leader, raft_term=resp.raftTerm,
            version=resp.version, db_size=resp.dbSize, errors=tuple(resp.errors),
        )

    async def member_list(self) -> list[Member]:
        resp = await self.call("cluster", "MemberList", rpc_pb2.MemberListRequest())
        return [
            Member(id=m.ID, name=m.name, peer_urls=tuple(m.peerURLs),
                   client_urls=tuple(m.clientURLs), is_learner=m.isLearner)
            for m in resp.members
        ]
