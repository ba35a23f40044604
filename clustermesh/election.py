"""Leader election on an etcd lock, in exactly the layout of etcd's Go ``concurrency.Mutex``.

KVStoreMesh replicas writing into one etcd elect a leader on upstream's lock
``cilium/kvstoremesh-lock`` (facts §7), so that an upstream 1.19 replica and ours
exclude each other.  The layout is the Go mutex's, key for key:

* each candidate holds a *session*: a lease of ``ttl`` seconds, kept alive every
  ttl/3, and puts the empty key ``<lock>/<lease id in lower-case hex>`` bound to it,
  in a txn ``If(CreateRevision(key) == 0) Then(Put, Get(first created)) Else(Get(key),
  Get(first created))``;
* the candidate whose key has the lowest create revision holds the lock; the others
  wait for the deletion of the key created just before theirs (``waitDeletes``: the
  last key created below their own revision, until none is left), then check their own
  key still exists (the session did not expire meanwhile);
* ownership is ``CreateRevision(key) == revision`` (``Mutex.IsOwner``): the
  :class:`~clustermesh.etcd.fence.Fence` the leader's writes carry.

Ours, beside it: each candidate puts ``cilium/kvstoremesh-replicas/<lease hex>`` = its
identity (the pod name), on the same lease, so the status can say *who* leads — the
lock key's owner is only a lease.  A candidate that finds the lock held by a lease
registered under its own identity revokes that lease: it is this replica's previous
run, killed without releasing (a container restart), and a restart need not wait out
the TTL.  Identities must therefore be unique among replicas (two live replicas with
one identity would take the lock from each other; each such take is logged).

A session ends — :attr:`LeaderElection.lost` is set with the reason — when a keepalive
finds the lease gone, when no keepalive was answered for a whole TTL (the lease must be
assumed expired: a partition, or this process paused), or when the owner reports that
etcd refused a fenced write.  :meth:`LeaderElection.resign` revokes the lease at once
(a graceful stop: a standby takes over immediately instead of after the TTL).

The keepalive is the client's (:meth:`~clustermesh.etcd.client.EtcdClient.keep_lease_alive`,
on its :class:`~clustermesh.clock.Clock`); etcd's own lease expiry is etcd's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import NamedTuple

from .etcd.client import EtcdClient, get_op, prefix_range_end, put_op
from .etcd.errors import EtcdError, EtcdUnavailable
from .etcd.pb import rpc_pb2
from .etcd.watch import DELETE
from .keys import KVSTOREMESH_LOCK, KVSTOREMESH_REPLICAS
from .tasks import race

log = logging.getLogger(__name__)

RESIGN_TIMEOUT = 2.0  # upstream's unlock timeout at stop: the etcd may be gone already


class SessionLost(Exception):
    """The candidate's session ended before it got the lock."""


@dataclass(frozen=True, slots=True)
class Term:
    """The lock held: ``key`` created at ``revision`` (the fence) on ``lease``.
    ``since``: the etcd revision from which nobody else can hold it — our key's creation,
    or the deletion of the last key created before it, whichever came later."""

    key: bytes
    revision: int
    lease: int
    since: int


class LockHolder(NamedTuple):
    """The owner of the leader lock: its lock key, lease and registered identity."""

    key: str
    lease: int
    identity: str | None  # None: no registration (an upstream replica, say)


async def lock_holder(client: EtcdClient, *, prefix: str = KVSTOREMESH_LOCK
                      ) -> LockHolder | None:
    """Who holds the lock now, read from etcd (None: nobody): the key created first
    below it, and the identity registered for its lease."""
    owner = await client.call("kv", "Range", _owner_request((prefix + "/").encode()))
    if not owner.kvs:
        return None
    kv = owner.kvs[0]
    registered = await client.get(registration_key(kv.lease))
    return LockHolder(kv.key.decode(errors="replace"), kv.lease,
                      registered.value.decode(errors="replace") if registered else None)


def _owner_request(pfx: bytes, *, last: bool = False, max_create_revision: int = 0
                   ) -> rpc_pb2.RangeRequest:
    """The key created first below ``pfx`` (Go's ``WithFirstCreate``), or with ``last``
    the one created last at or before ``max_create_revision`` (``WithLastCreate``)."""
    order = rpc_pb2.RangeRequest.DESCEND if last else rpc_pb2.RangeRequest.ASCEND
    return rpc_pb2.RangeRequest(key=pfx, range_end=prefix_range_end(pfx), sort_order=order,
                                sort_target=rpc_pb2.RangeRequest.CREATE, limit=1,
                                max_create_revision=max_create_revision)


def lock_key(prefix: str, lease: int) -> bytes:
    """The Go mutex's key of a session: ``<prefix>/<lease in hex>``."""
    return f"{prefix}/{lease:x}".encode()


def registration_key(lease: int) -> bytes:
    return f"{KVSTOREMESH_REPLICAS}/{lease:x}".encode()


class LeaderElection:
    """One candidate (see the module docstring); one session at a time."""

    def __init__(self, client: EtcdClient, *, identity: str, ttl: int,
                 prefix: str = KVSTOREMESH_LOCK) -> None:
        if ttl < 1:
            raise ValueError(f"leader election lease TTL must be at least 1s, not {ttl}")
        self.identity = identity
        self.ttl = ttl
        self._client = client
        self._prefix = prefix
        self._pfx = (prefix + "/").encode()
        self.lease = 0  # of the current session (0: none)
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._keepalive: asyncio.Task[None] | None = None
        self._lease_gone = False  # the keepalive found the lease expired: nothing to revoke

    # ------------------------------------------------------------ the campaign

    async def campaign(self) -> Term:
        """Open a session and wait for the lock; :class:`SessionLost` if the session
        ends first (the caller opens the next), etcd errors as they come."""
        await self._open_session()
        first = await race(self._acquire(self.lease), self.lost.wait())
        if self.lost.is_set():
            raise SessionLost(self.lost_reason)
        return first.result()

    def end_session(self, reason: str) -> None:
        """The session must be given up (etcd refused a fenced write, say)."""
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def resign(self) -> None:
        """Revoke the session's lease (our lock key goes with it) and stop keeping it."""
        lease = self.lease
        await self._stop_keepalive()
        self.lease = 0
        if not lease or self._lease_gone:
            return
        try:
            async with asyncio.timeout(RESIGN_TIMEOUT):
                await self._client.lease_revoke(lease)
            log.info("leader election: lease %x revoked", lease)
        except (EtcdError, TimeoutError) as exc:
            log.warning("leader election: revoking lease %x failed (it expires within %ds): "
                        "%s", lease, self.ttl, str(exc) or "timed out")

    async def _open_session(self) -> None:
        await self._stop_keepalive()
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._lease_gone = False
        self.lease = await self._client.lease_grant(self.ttl)
        self._keepalive = asyncio.create_task(self._keep_alive(self.lease),
                                              name="leader-election-keepalive")
        await self._client.put(registration_key(self.lease), self.identity.encode(),
                               lease=self.lease)
        await self._revoke_earlier_runs()

    async def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None

    async def _revoke_earlier_runs(self) -> None:
        """Revoke the leases of lock keys registered under our identity but not ours."""
        client = self._client
        registrations, _ = await client.list_prefix((KVSTOREMESH_REPLICAS + "/").encode())
        registered = {kv.lease: kv.value.decode(errors="replace") for kv in registrations}
        locks, _ = await client.list_prefix(self._pfx)
        for kv in locks:
            if kv.lease and kv.lease != self.lease and registered.get(kv.lease) == self.identity:
                log.warning("leader election: lock key %s belongs to an earlier run of "
                            "%r (lease %x); revoking it", kv.key.decode(errors="replace"),
                            self.identity, kv.lease)
                with contextlib.suppress(EtcdError):
                    await client.lease_revoke(kv.lease)

    async def _acquire(self, lease: int) -> Term:
        """Go's ``Mutex.Lock`` (see the module docstring)."""
        client = self._client
        key = lock_key(self._prefix, lease)
        first = _owner_request(self._pfx)
        absent = rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.CREATE,
                                 result=rpc_pb2.Compare.EQUAL, create_revision=0)
        resp = await client.txn(
            compare=[absent],
            success=[put_op(key, b"", lease=lease), rpc_pb2.RequestOp(request_range=first)],
            failure=[get_op(key), rpc_pb2.RequestOp(request_range=first)])
        if resp.succeeded:
            revision = resp.header.revision
        else:
            revision = resp.responses[0].response_range.kvs[0].create_revision
        owner = resp.responses[1].response_range.kvs
        since = revision
        if owner and owner[0].create_revision != revision:
            log.info("leader election: waiting for %s (held by lease %x)",
                     owner[0].key.decode(errors="replace"), owner[0].lease)
            since = max(since, await self._wait_deletes(revision - 1))
            if await client.get(key) is None:
                raise SessionLost(f"lock key {key.decode()} gone while waiting (lease "
                                  "expired)")
        return Term(key=key, revision=revision, lease=lease, since=since)

    async def _wait_deletes(self, max_create_revision: int) -> int:
        """Until no key created at or before ``max_create_revision`` is left; the
        revision of the last deletion seen (0 if none was waited for)."""
        deleted = 0
        while True:
            resp = await self._client.call("kv", "Range", _owner_request(
                self._pfx, last=True, max_create_revision=max_create_revision))
            if not resp.kvs:
                return deleted
            deleted = max(deleted, await self._wait_delete(resp.kvs[0].key,
                                                           resp.header.revision))

    async def _wait_delete(self, key: bytes, revision: int) -> int:
        async with self._client.watch(key, prefix=False, start_revision=revision + 1) as watch:
            async for batch in watch:
                for event in batch.events:
                    if event.type == DELETE:
                        return event.kv.mod_revision
        raise EtcdUnavailable(f"watch of {key.decode(errors='replace')} ended")

    # ------------------------------------------------------------ the session

    async def _keep_alive(self, lease: int) -> None:
        """The session lasts as long as its lease is kept alive (``keep_lease_alive``:
        until found gone, or unanswered for a whole TTL)."""
        try:
            lost = await self._client.keep_lease_alive(lease, self.ttl)
        except EtcdError as exc:
            self.end_session(f"lease {lease:x} keepalive failed: {exc}")
            return
        self._lease_gone = lost.gone
        self.end_session(lost.reason)
