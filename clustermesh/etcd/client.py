"""A thin asyncio etcd v3 client over our own generated grpc.aio stubs.

Design:

* **One channel at a time.**  The client talks to one endpoint; when a request
  fails with an "unavailable"-class error (member down, no leader, partition,
  keepalive timeout) it fails over to the next endpoint that answers a
  ``Status`` call, and retries.  Writes are retried too: everything clustermesh
  writes is a state assertion (put this value, delete this key), so sending it
  twice converges to the same state.
* **Dead paths are noticed.**  HTTP/2 keepalive pings run while calls are open,
  and ``grpc.http2.ping_timeout_ms`` bounds the wait for a reply (grpcio waits
  about a minute otherwise).  Pings are not sent on idle channels, because etcd
  answers those with a ``too_many_pings`` GOAWAY.
* **Credentials are live.**  TLS files are re-read periodically; when their
  fingerprint changes the client opens a new channel with the new certificates
  and retires the old one (watches resume on the new one).  With a user name the
  client authenticates and re-authenticates whenever etcd reports the token as
  invalid (expired ``--auth-token-ttl``, restart of a member).
* **Big reads are paginated and consistent.**  :meth:`EtcdClient.range_pages`
  reads a prefix in pages pinned to the revision of the first page, and says
  which revision the snapshot is at, so a watch can continue from ``rev + 1``.

Everything that can fail raises a subclass of :class:`EtcdError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from .config import Endpoint, EtcdConfig, EtcdConfigError, load_tls_files
from .errors import (
    EtcdAuthError,
    EtcdAuthRevisionOld,
    EtcdError,
    EtcdInvalidToken,
    EtcdPermissionDenied,
    EtcdTLSError,
    EtcdUnavailable,
    translate,
)
from .pb import auth_pb2, kv_pb2, rpc_pb2, rpc_pb2_grpc
from .watch import Watch

log = logging.getLogger(__name__)

KeyValue = kv_pb2.KeyValue
Event = kv_pb2.Event
RequestOp = rpc_pb2.RequestOp
Compare = rpc_pb2.Compare

MAX_RECEIVE_MESSAGE_LENGTH = 64 * 1024 * 1024
# Called after every unary request: (method, request, seconds, succeeded). For metrics.
Observer = Callable[[str, Any, float, bool], None]
_RETIRE_GRACE = 2.0  # seconds an old channel stays open after a failover or TLS rotation
DEFAULT_PAGE_SIZE = 5000


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


@dataclass(frozen=True, slots=True)
class Permission:
    key: bytes
    range_end: bytes
    perm: str  # "read" | "write" | "readwrite"


_PERM_TYPES = {
    "read": auth_pb2.Permission.READ,
    "write": auth_pb2.Permission.WRITE,
    "readwrite": auth_pb2.Permission.READWRITE,
}
_PERM_NAMES = {v: k for k, v in _PERM_TYPES.items()}


class _Connection:
    """A channel to one endpoint with its stubs."""

    def __init__(self, endpoint: Endpoint, channel: grpc.aio.Channel, tls_fingerprint: str) -> None:
        self.endpoint = endpoint
        self.url = str(endpoint)
        self.channel = channel
        self.tls_fingerprint = tls_fingerprint
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.watch = rpc_pb2_grpc.WatchStub(channel)
        self.lease = rpc_pb2_grpc.LeaseStub(channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        self.auth = rpc_pb2_grpc.AuthStub(channel)


class EtcdClient:
    """An etcd v3 client for one etcd cluster (several endpoints).

    Use as ``async with EtcdClient(config) as client: ...`` or call
    :meth:`connect` and :meth:`close` yourself.
    """

    def __init__(
        self,
        config: EtcdConfig,
        *,
        name: str = "etcd",
        dial_timeout: float = 5.0,
        request_timeout: float = 30.0,
        keepalive_time: float = 10.0,
        keepalive_timeout: float = 5.0,
        tls_reload_interval: float = 10.0,
        observer: Observer | None = None,
    ) -> None:
        if not config.endpoints:
            raise ValueError(f"{config.source or name}: no etcd endpoints configured")
        self.config = config
        self.name = name
        self._dial_timeout = dial_timeout
        self._request_timeout = request_timeout
        self._keepalive_time = keepalive_time
        self._keepalive_timeout = keepalive_timeout
        self._tls_reload_interval = tls_reload_interval
        self._observer = observer
        self._conn: _Connection | None = None
        self._next_endpoint = 0
        self._conn_lock = asyncio.Lock()
        self._auth_lock = asyncio.Lock()
        self._token: str | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> EtcdClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to the first endpoint that answers, and authenticate if configured."""
        await self._failover(None)
        if self._tls_task is None and self.config.use_tls and self._tls_reload_interval > 0:
            self._tls_task = asyncio.create_task(self._reload_tls_loop(), name=f"{self.name}-tls")

    async def connect_retrying(self, *, stop: asyncio.Event | None = None,
                               max_delay: float = 10.0) -> None:
        """:meth:`connect`, retried with backoff until it works (or ``stop`` is set).

        For a daemon whose etcd starts beside it (a sidecar in the same pod).
        """
        delay = 0.5
        while True:
            try:
                await self.connect()
                return
            except EtcdError as exc:
                if stop is not None and stop.is_set():
                    raise
                log.warning("%s: not reachable yet (%s); retrying in %.1fs", self.name, exc,
                            delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def reconnect(self) -> None:
        """Drop the current channel and connect to the first endpoint that answers.

        Requests fail over by themselves when they get an error; this is for a caller that
        knows the connection is bad although nothing failed, e.g. a member that hangs and
        lets requests time out (the quorum check).
        """
        await self._failover(self._conn)

    async def close(self) -> None:
        self._closed = True
        if self._tls_task is not None:
            self._tls_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tls_task
        for task in list(self._retired):
            task.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.channel.close(grace=None)

    @property
    def uses_password(self) -> bool:
        """etcd's rule: authenticate only when both a user name and a password are set."""
        return bool(self.config.username and self.config.password)

    @property
    def endpoint(self) -> str | None:
        """URL of the endpoint currently in use."""
        return self._conn.url if self._conn else None

    # ----------------------------------------------------------------- connection

    def _channel_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_LENGTH),
            ("grpc.max_send_message_length", MAX_RECEIVE_MESSAGE_LENGTH),
            ("grpc.keepalive_time_ms", int(self._keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(self._keepalive_timeout * 1000)),
            ("grpc.http2.ping_timeout_ms", int(self._keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            # Our own connection per client: two clients of one etcd stay independent.
            ("grpc.use_local_subchannel_pool", 1),
        ]

    def _open_channel(self, endpoint: Endpoint) -> _Connection:
        options = self._channel_options()
        if not self.config.use_tls:
            channel = grpc.aio.insecure_channel(endpoint.grpc_target, options=options)
            return _Connection(endpoint, channel, "")
        if self.config.insecure_skip_tls_verify and self.config.trusted_ca_file is None:
            raise EtcdConfigError(
                "skipping server certificate verification is not supported by the gRPC TLS "
                "stack this client uses; set trusted-ca-file to the server's CA instead",
                path=self.config.source, field="insecure-skip-tls-verify")
        tls = load_tls_files(self.config, check_pair=True)
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
        )
        channel = grpc.aio.secure_channel(endpoint.grpc_target, creds, options=options)
        return _Connection(endpoint, channel, tls.fingerprint)

    async def _probe(self, conn: _Connection) -> None:
        """One Status call: proves the endpoint is reachable and the TLS handshake works."""
        try:
            await conn.maintenance.Status(rpc_pb2.StatusRequest(), timeout=self._dial_timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, endpoint=conn.url) from None

    async def _failover(self, failed: _Connection | None) -> _Connection:
        """Replace ``failed`` (or nothing) with a connection to an endpoint that answers."""
        async with self._conn_lock:
            if self._closed:
                raise EtcdUnavailable(f"{self.name}: client is closed")
            if self._conn is not None and self._conn is not failed:
                return self._conn  # someone else already failed over
            if failed is not None:
                self._conn = None
                self._retire(failed)
            endpoints = self.config.endpoints
            errors: list[str] = []
            tls_error: EtcdTLSError | None = None
            for i in range(len(endpoints)):
                index = (self._next_endpoint + i) % len(endpoints)
                endpoint = endpoints[index]
                if failed is not None and len(endpoints) > 1 and endpoint == failed.endpoint:
                    continue
                conn = self._open_channel(endpoint)
                try:
                    await self._probe(conn)
                except EtcdError as exc:
                    await conn.channel.close(grace=None)
                    errors.append(str(exc))
                    if isinstance(exc, EtcdTLSError):
                        tls_error = exc
                    continue
                self._next_endpoint = (index + 1) % len(endpoints)
                self._conn = conn
                if failed is not None:
                    log.info("%s: switched to etcd endpoint %s", self.name, conn.url)
                break
            else:
                if failed is not None and len(endpoints) == 1:
                    # Single endpoint: it is the one that failed; try it again next time.
                    pass
                if tls_error is not None and len(errors) == 1:
                    raise tls_error
                raise EtcdUnavailable(
                    f"{self.name}: no etcd endpoint answered ({'; '.join(errors) or 'none tried'})"
                )
        if self.uses_password and self._token is None:
            await self._authenticate(None)
        return conn

    def _retire(self, conn: _Connection) -> None:
        # In-flight calls on the old channel get a short grace to finish; calls and
    # watches still on it are then cancelled by grpc and retried on the new channel.
        async def close_later() -> None:
            await conn.channel.close(grace=_RETIRE_GRACE)

        task = asyncio.create_task(close_later())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is None:
            conn = await self._failover(None)
        return conn

    async def _reload_tls_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tls_reload_interval)
            conn = self._conn
            if conn is None:
                continue
            try:
                fingerprint = (await asyncio.to_thread(load_tls_files, self.config,
                                                       check_pair=True)).fingerprint
            except EtcdError as exc:  # half-written rotation: keep the old channel
                log.warning("%s: cannot re-read TLS files: %s", self.name, exc)
                continue
            except ValueError as exc:
                log.warning("%s: cannot re-read TLS files: %s", self.name, exc)
                continue
            if fingerprint != conn.tls_fingerprint:
                log.info("%s: TLS files changed on disk, reconnecting with the new certificates",
                         self.name)
                with contextlib.suppress(EtcdError):
                    await self._failover(conn)

    # --------------------------------------------------------------------- auth

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("token", self._token),) if self._token else None

    async def _authenticate(self, stale_token: str | None) -> None:
        async with self._auth_lock:
            if self._token is not None and self._token != stale_token:
                return  # refreshed concurrently
            conn = await self._connection()
            request = rpc_pb2.AuthenticateRequest(
                name=self.config.username or "", password=self.config.password or ""
            )
            try:
                resp = await conn.auth.Authenticate(request, timeout=self._request_timeout)
            except grpc.aio.AioRpcError as exc:
                raise translate(exc, endpoint=conn.url) from None
            self._token = resp.token

    # ------------------------------------------------------------------ calling

    async def _call(self, service: str, method: str, request: Any, *,
                    timeout: float | None = None) -> Any:
        """Send one unary request with failover and token refresh."""
        attempts = 0
        token_refreshes = 0
        auth_races = 0
        while True:
            conn = await self._connection()
            fn = getattr(getattr(conn, service), method)
            token = self._token
            started = time.perf_counter()
            try:
                response = await fn(request, timeout=timeout or self._request_timeout,
                                    metadata=self._metadata())
            except grpc.aio.AioRpcError as exc:
                err = translate(exc, endpoint=conn.url)
                if self._observer is not None:
                    self._observer(method, request, time.perf_counter() - started, False)
            except asyncio.CancelledError:
                # Our caller being cancelled: stop. Otherwise grpc cancelled the call
                # because its channel was retired (failover, TLS rotation): retry.
                task = asyncio.current_task()
                if task is None or task.cancelling() or self._closed:
                    raise
                err = EtcdUnavailable("request cancelled: its channel was closed",
                                      endpoint=conn.url)
            else:
                if self._observer is not None:
                    self._observer(method, request, time.perf_counter() - started, True)
                return response
            if isinstance(err, EtcdInvalidToken) and self.uses_password and token_refreshes < 2:
                token_refreshes += 1
                await self._authenticate(token)
                continue
            if isinstance(err, EtcdAuthRevisionOld) and auth_races < 5:
                # A user or role changed under the request (cluster users management does
                # that while the daemons write); Go's client retries it as well.
                auth_races += 1
                if self.uses_password:
                    await self._authenticate(token)
                continue
            if isinstance(err, EtcdUnavailable) and not self._closed:
                attempts += 1
                if attempts > len(self.config.endpoints) + 1:
                    raise err
                log.debug("%s: %s; failing over", self.name, err)
                await asyncio.sleep(min(0.05 * 2**attempts, 1.0) * random.uniform(0.5, 1.0))
                await self._failover(conn)
                continue
            raise err

    # ------------------------------------------------------------------------ KV

    async def get(self, key: bytes) -> KeyValue | None:
        resp = await self._call("kv", "Range", rpc_pb2.RangeRequest(key=key))
        return resp.kvs[0] if resp.kvs else None

    async def range(self, key: bytes, range_end: bytes = b"", *, revision: int = 0,
                    limit: int = 0, keys_only: bool = False,
                    count_only: bool = False) -> rpc_pb2.RangeResponse:
        """One Range request; :class:`EtcdCompacted` if ``revision`` is compacted."""
        request = rpc_pb2.RangeRequest(key=key, range_end=range_end, revision=revision,
                                       limit=limit, keys_only=keys_only, count_only=count_only)
        return await self._call("kv", "Range", request)

    async def range_pages(
        self, prefix: bytes, *, page_size: int = DEFAULT_PAGE_SIZE, revision: int = 0,
        keys_only: bool = False,
    ) -> AsyncIterator[tuple[Sequence[KeyValue], int]]:
        """Yield ``(kvs, revision)`` pages of every key under ``prefix``.

        Every page is read at the revision of the first one (``revision`` if given),
        so together they are one consistent snapshot at that revision.  Raises
        :class:`EtcdCompacted` if that revision is compacted while paging.

        The next page is requested before this one is yielded, so the server reads
        it while the caller processes the current one.
        """
        end = prefix_range_end(prefix)
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
        resp = await self._call("kv", "Put", rpc_pb2.PutRequest(key=key, value=value, lease=lease))
        return resp.header.revision

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns how many were deleted."""
        end = prefix_range_end(key) if prefix else b""
        resp = await self._call("kv", "DeleteRange",
                                rpc_pb2.DeleteRangeRequest(key=key, range_end=end))
        return resp.deleted

    async def txn(self, *, compare: Sequence[Compare] = (), success: Sequence[RequestOp] = (),
                  failure: Sequence[RequestOp] = ()) -> rpc_pb2.TxnResponse:
        request = rpc_pb2.TxnRequest(compare=compare, success=success, failure=failure)
        return await self._call("kv", "Txn", request)

    async def txn_request(self, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        """Send a ``TxnRequest`` the caller built in place (``request.success.add()``):
        for big txns, it saves building every op twice."""
        return await self._call("kv", "Txn", request)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        await self._call("kv", "Compact",
                         rpc_pb2.CompactionRequest(revision=revision, physical=physical))

    def watch(self, key: bytes, *, prefix: bool = True, start_revision: int = 0,
              prev_kv: bool = False, progress_notify: bool = True) -> Watch:
        """A watch on ``key`` (a prefix by default) from ``start_revision`` (0: now)."""
        end = prefix_range_end(key) if prefix else b""
        return Watch(self, key=key, range_end=end, start_revision=start_revision,
                     prev_kv=prev_kv, progress_notify=progress_notify)

    # --------------------------------------------------------------------- lease

    async def lease_grant(self, ttl: int) -> int:
        resp = await self._call("lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise EtcdError(f"lease grant failed: {resp.error}", endpoint=self.endpoint)
        return resp.ID

    async def lease_revoke(self, lease_id: int) -> None:
        await self._call("lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease_id))

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False
                                 ) -> rpc_pb2.LeaseTimeToLiveResponse:
        """TTL -1 means the lease does not exist (expired or revoked)."""
        return await self._call("lease", "LeaseTimeToLive",
                                rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys))

    async def lease_keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease once; returns its new TTL (0 if it no longer exists)."""
        attempts = 0
        while True:
            conn = await self._connection()
            call = conn.lease.LeaseKeepAlive(metadata=self._metadata(),
                                             timeout=self._request_timeout)
            try:
                await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                resp = await call.read()
                await call.done_writing()
            except grpc.aio.AioRpcError as exc:
                err = translate(exc, endpoint=conn.url)
                attempts += 1
                if isinstance(err, EtcdInvalidToken) and self.uses_password and attempts < 3:
                    await self._authenticate(self._token)
                    continue
                if isinstance(err, EtcdUnavailable) and attempts <= len(self.config.endpoints):
                    await self._failover(conn)
                    continue
                raise err from None
            finally:
                call.cancel()
            if resp is grpc.aio.EOF:
                raise EtcdUnavailable("lease keepalive stream closed", endpoint=conn.url)
            return max(resp.TTL, 0)

    async def keep_lease_alive(self, lease_id: int, ttl: int) -> None:
        """Refresh ``lease_id`` every ttl/3 until it is found expired (then return).

        Run it as a task and cancel it to stop; transient errors are retried.
        """
        interval = max(ttl / 3, 0.5)
        while True:
            try:
                if await self.lease_keepalive_once(lease_id) <= 0:
                    return
            except EtcdUnavailable as exc:
                log.warning("%s: lease %x keepalive failed: %s", self.name, lease_id, exc)
                await asyncio.sleep(min(interval, 1.0))
                continue
            await asyncio.sleep(interval)

    # ------------------------------------------------------- cluster, maintenance

    async def status(self) -> EtcdStatus:
        """Status of the member in use (cluster ID, member ID, revision, leader...)."""
        resp = await self._call("maintenance", "Status", rpc_pb2.StatusRequest())
        h = resp.header
        return EtcdStatus(
            endpoint=self.endpoint or "", cluster_id=h.cluster_id, member_id=h.member_id,
            revision=h.revision, leader=resp.leader, raft_term=resp.raftTerm,
            version=resp.version, db_size=resp.dbSize, errors=tuple(resp.errors),
        )

    async def member_list(self) -> list[Member]:
        resp = await self._call("cluster", "MemberList", rpc_pb2.MemberListRequest())
        return [
            Member(id=m.ID, name=m.name, peer_urls=tuple(m.peerURLs),
                   client_urls=tuple(m.clientURLs), is_learner=m.isLearner)
            for m in resp.members
        ]

    # ---------------------------------------------------------------------- auth

    async def auth_enable(self) -> None:
        await self._call("auth", "AuthEnable", rpc_pb2.AuthEnableRequest())

    async def auth_status(self) -> bool:
        """Whether auth is enabled (etcd 3.5 asks AuthStatus; 3.4 is probed)."""
        try:
            resp = await self._call("auth", "AuthStatus", rpc_pb2.AuthStatusRequest())
            return resp.enabled
        except EtcdError as exc:
            # etcd 3.5 answers AuthStatus only to root while auth is on: anyone else gets
            # "user name is empty" (no token) or "permission denied", which means "on".
            if isinstance(exc, EtcdPermissionDenied) or "user name is empty" in str(exc):
                return True
            if "UNIMPLEMENTED" not in str(exc):
                raise
        # etcd 3.4 has no AuthStatus. Ask it to authenticate the empty user name, which
        # cannot exist: "authentication is not enabled" when off, "authentication failed"
        # when on, whoever asks (a UserList probe would succeed for root with auth on).
        try:
            await self._call("auth", "Authenticate",
                             rpc_pb2.AuthenticateRequest(name="", password=""))
        except EtcdAuthError:
            return True
        except EtcdError as exc:
            if "authentication is not enabled" in str(exc):
                return False
            raise
        raise EtcdError("etcd accepted an empty user name: cannot tell whether auth is on",
                        endpoint=self.endpoint)

    async def user_add(self, name: str, password: str | None = None) -> None:
        """Add a user; without a password it can only authenticate by client certificate."""
        request = rpc_pb2.AuthUserAddRequest(
            name=name, password=password or "",
            options=auth_pb2.UserAddOptions(no_password=password is None),
        )
        await self._call("auth", "UserAdd", request)

    async def user_get(self, name: str) -> list[str]:
        """The roles granted to ``name``."""
        resp = await self._call("auth", "UserGet", rpc_pb2.AuthUserGetRequest(name=name))
        return list(resp.roles)

    async def user_list(self) -> list[str]:
        return list((await self._call("auth", "UserList", rpc_pb2.AuthUserListRequest())).users)

    async def user_delete(self, name: str) -> None:
        await self._call("auth", "UserDelete", rpc_pb2.AuthUserDeleteRequest(name=name))

    async def user_grant_role(self, user: str, role: str) -> None:
        await self._call("auth", "UserGrantRole",
                         rpc_pb2.AuthUserGrantRoleRequest(user=user, role=role))

    async def user_revoke_role(self, user: str, role: str) -> None:
        await self._call("auth", "UserRevokeRole",
                         rpc_pb2.AuthUserRevokeRoleRequest(name=user, role=role))

    async def role_add(self, name: str) -> None:
        await self._call("auth", "RoleAdd", rpc_pb2.AuthRoleAddRequest(name=name))

    async def role_get(self, name: str) -> list[Permission]:
        resp = await self._call("auth", "RoleGet", rpc_pb2.AuthRoleGetRequest(role=name))
        return [Permission(key=p.key, range_end=p.range_end, perm=_PERM_NAMES[p.permType])
                for p in resp.perm]

    async def role_list(self) -> list[str]:
        return list((await self._call("auth", "RoleList", rpc_pb2.AuthRoleListRequest())).roles)

    async def role_delete(self, name: str) -> None:
        await self._call("auth", "RoleDelete", rpc_pb2.AuthRoleDeleteRequest(role=name))

    async def role_grant_permission(self, role: str, *, key: bytes, perm: str,
                                    prefix: bool = False, range_end: bytes = b"") -> None:
        """Grant ``perm`` ("read", "write", "readwrite") on a key, a prefix or a range."""
        if perm not in _PERM_TYPES:
            raise ValueError(f"unknown permission {perm!r}: use read, write or readwrite")
        end = prefix_range_end(key) if prefix else range_end
        permission = auth_pb2.Permission(permType=_PERM_TYPES[perm], key=key, range_end=end)
        await self._call("auth", "RoleGrantPermission",
                         rpc_pb2.AuthRoleGrantPermissionRequest(name=role, perm=permission))

