"""The connection of an etcd client: one channel at a time, failover, credentials.

:class:`EtcdConnection` is the part of :class:`~clustermesh.etcd.client.EtcdClient`
that owns the gRPC channel (the etcd API itself is in :mod:`clustermesh.etcd.client`,
the auth administration calls in :mod:`clustermesh.etcd.auth`).

* **One channel at a time.**  The client talks to one endpoint; when a request
  fails with an "unavailable"-class error (member down, no leader, partition,
  keepalive timeout) it fails over to the next endpoint that answers a
  ``Status`` call, and retries.  Writes are retried too: everything clustermesh
  writes is a state assertion (put this value, delete this key), so sending it
  twice converges to the same state.
* **Dead paths are noticed** by the channel's keepalive pings
  (:mod:`clustermesh.etcd.channel`), and are failures like any other.
* **Credentials are live.**  TLS files are re-read periodically; when their
  fingerprint changes the client opens a new channel with the new certificates
  and retires the old one (watches resume on the new one).  With a user name the
  client authenticates and re-authenticates whenever etcd reports the token as
  invalid (expired ``--auth-token-ttl``, restart of a member).
* **One retry path.**  Unary calls (:meth:`EtcdConnection.call`), the lease
  keepalive and watches all iterate :meth:`EtcdConnection.attempts`, whose rules
  (what is retried, how often, after which wait) are in :mod:`clustermesh.etcd.retry`;
  nothing else reads the channel or the token.  :meth:`EtcdConnection.connection_status`
  is the read-only view of both for status pages and tests.
* **Time comes from a clock** (``clock``): retry backoffs and the TLS reload period
  are waited for on it, so tests drive them without real sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import grpc

from ..backoff import ETCD_CONNECT, Backoff
from ..clock import REAL_CLOCK, Clock
from .channel import Channel, open_channel, probe
from .config import EtcdConfig, load_tls_files
from .errors import EtcdError, EtcdTLSError, EtcdUnavailable, translate
from .pb import rpc_pb2
from .retry import Attempts

# The client's logger: these are its messages (and its name in the logs, as before).
log = logging.getLogger("clustermesh.etcd.client")

# Called after every unary request: (method, request, seconds, succeeded). For metrics.
Observer = Callable[[str, Any, float, bool], None]
_RETIRE_GRACE = 2.0  # seconds an old channel stays open after a failover or TLS rotation
#: Seconds between two reads of the TLS files (the daemons' default; the local mesh's
#: certificate rotation waits for it).
TLS_RELOAD_INTERVAL = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStatus:
    """A snapshot of the channel in use and the credentials held (never the token)."""

    endpoint: str | None  # URL of the endpoint in use; None: not connected
    cluster_id: int  # of the etcd cluster behind it (0: not connected)
    channel: int  # generation of the channel in use: +1 for each one opened (0: none)
    tls_fingerprint: str  # of the TLS files it was opened with ("": no TLS, no channel)
    authenticated: bool  # an auth token is held
    authentications: int  # tokens obtained so far (+1 for every refresh)


class EtcdConnection:
    """A connection to one etcd cluster (several endpoints); see the module docstring.

    Not used alone: :class:`~clustermesh.etcd.client.EtcdClient` adds the etcd API.
    ``clock`` does the retry and TLS reload waits (a fake one in tests).
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
        tls_reload_interval: float = TLS_RELOAD_INTERVAL,
        observer: Observer | None = None,
        clock: Clock = REAL_CLOCK,
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
        self._clock = clock
        self._conn: Channel | None = None
        self._generations = 0  # channels that became the one in use
        self._next_endpoint = 0
        self._conn_lock = asyncio.Lock()
        self._auth_lock = asyncio.Lock()
        self._token: str | None = None
        self._authentications = 0
        self._tls_task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to the first endpoint that answers, and authenticate if configured."""
        await self._failover(None)
        if self._tls_task is None and self.config.use_tls and self._tls_reload_interval > 0:
            self._tls_task = asyncio.create_task(self._reload_tls_loop(), name=f"{self.name}-tls")

    async def connect_retrying(self, *, stop: asyncio.Event | None = None) -> None:
        """:meth:`connect`, retried with :data:`~clustermesh.backoff.ETCD_CONNECT` backoff
        until it works (or fails once ``stop`` is set).

        For a daemon whose etcd starts beside it (a sidecar in the same pod).
        """
        backoff = Backoff(ETCD_CONNECT, clock=self._clock)
        while True:
            try:
                await self.connect()
                return
            except EtcdError as exc:
                if stop is not None and stop.is_set():
                    raise
                delay = backoff.next_delay()
                log.warning("%s: not reachable yet (%s); retrying in %.1fs", self.name, exc,
                            delay)
                await self._clock.sleep(delay)

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

    @property
    def cluster_id(self) -> int:
        """ID of the etcd cluster the endpoint in use belongs to, as its last answer said
        (0: not connected)."""
        return self._conn.cluster_id if self._conn else 0

    def connection_status(self) -> ConnectionStatus:
        """What the client is connected to, with which certificates, and whether (and how
        often) it authenticated: for status pages and tests."""
        conn = self._conn
        return ConnectionStatus(
            endpoint=conn.url if conn else None, cluster_id=conn.cluster_id if conn else 0,
            channel=conn.generation if conn else 0,
            tls_fingerprint=conn.tls_fingerprint if conn else "",
            authenticated=self._token is not None, authentications=self._authentications)

    # ----------------------------------------------------------------- connection

    async def _failover(self, failed: Channel | None) -> Channel:
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
                # With one endpoint, the one that failed is tried again.
                if failed is not None and len(endpoints) > 1 and endpoint == failed.endpoint:
                    continue
                conn = open_channel(self.config, endpoint,
                                    keepalive_time=self._keepalive_time,
                                    keepalive_timeout=self._keepalive_timeout)
                try:
                    await probe(conn, timeout=self._dial_timeout)
                except EtcdError as exc:
                    await conn.channel.close(grace=None)
                    errors.append(str(exc))
                    if isinstance(exc, EtcdTLSError):
                        tls_error = exc
                    continue
                self._next_endpoint = (index + 1) % len(endpoints)
                self._generations += 1
                conn.generation = self._generations
                self._conn = conn
                if failed is not None:
                    log.info("%s: switched to etcd endpoint %s", self.name, conn.url)
                break
            else:
                if tls_error is not None and len(errors) == 1:
                    raise tls_error
                raise EtcdUnavailable(
                    f"{self.name}: no etcd endpoint answered ({'; '.join(errors) or 'none tried'})"
                )
        if self.uses_password and self._token is None:
            await self._authenticate(None)
        return conn

    def _retire(self, conn: Channel) -> None:
        # In-flight calls on the old channel get a short grace to finish; calls and
        # watches still on it are then cancelled by grpc and retried on the new channel.
        async def close_later() -> None:
            await conn.channel.close(grace=_RETIRE_GRACE)

        task = asyncio.create_task(close_later())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _current(self) -> Channel:
        """The channel in use, after connecting if there is none."""
        return self._conn or await self._failover(None)

    async def _reload_tls_loop(self) -> None:
        while True:
            await self._clock.sleep(self._tls_reload_interval)
            conn = self._conn
            if conn is None:
                continue
            try:
                fingerprint = (await asyncio.to_thread(load_tls_files, self.config,
                                                       check_pair=True)).fingerprint
            except (EtcdError, ValueError) as exc:  # half-written rotation: keep the old one
                log.warning("%s: cannot re-read TLS files: %s", self.name, exc)
                continue
            if fingerprint != conn.tls_fingerprint:
                log.info("%s: TLS files changed on disk, reconnecting with the new certificates",
                         self.name)
                with contextlib.suppress(EtcdError):
                    await self._failover(conn)

    async def _authenticate(self, stale_token: str | None) -> None:
        async with self._auth_lock:
            if self._token is not None and self._token != stale_token:
                return  # refreshed concurrently
            conn = await self._current()
            request = rpc_pb2.AuthenticateRequest(
                name=self.config.username or "", password=self.config.password or ""
            )
            try:
                resp = await conn.auth.Authenticate(request, timeout=self._request_timeout)
            except grpc.aio.AioRpcError as exc:
                raise translate(exc, endpoint=conn.url) from None
            self._token = resp.token
            self._authentications += 1

    # ------------------------------------------------------------------ calling

    def attempts(self, *, watch: bool = False, until: Callable[[], bool] | None = None
                 ) -> Attempts:
        """The attempts of one request, or of a watch (``watch``: its rules) until
        ``until()`` is true; see :class:`~clustermesh.etcd.retry.Attempts`."""
        return Attempts(self, watch=watch, until=until)

    async def call(self, service: str, method: str, request: Any, *,
                   timeout: float | None = None) -> Any:
        """Send one unary request, with failover and token refresh (:meth:`attempts`).

        ``service`` names a stub of the channel (``"kv"``, ``"lease"``, ``"auth"``...),
        ``method`` one of its RPCs (``"Range"``); ``timeout`` defaults to the client's
        request timeout.
        """
        observer = self._observer
        async for attempt in self.attempts():
            async with attempt:
                fn = getattr(getattr(attempt.channel, service), method)
                started = time.perf_counter()
                try:
                    response = await fn(request, timeout=timeout or self._request_timeout,
                                        metadata=attempt.metadata)
                except grpc.aio.AioRpcError:
                    if observer is not None:
                        observer(method, request, time.perf_counter() - started, False)
                    raise
                if observer is not None:
                    observer(method, request, time.perf_counter() - started, True)
                if found := response.header.cluster_id:
                    # What the endpoint says now, also if a new cluster answers behind
                    # the same address without the channel ever failing (a restore).
                    attempt.channel.cluster_id = found
                return response
