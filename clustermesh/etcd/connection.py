"""The connection of an etcd client: one channel at a time, failover, credentials.

:class:`EtcdConnection` is the part of :class:`~clustermesh.etcd.client.EtcdClient`
that owns the gRPC channel, and :meth:`EtcdConnection.call` is the one path every
unary request takes (the etcd API itself is in :mod:`clustermesh.etcd.client`, the
auth administration calls in :mod:`clustermesh.etcd.auth`).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Self

import grpc

from .config import Endpoint, EtcdConfig, EtcdConfigError, load_tls_files
from .errors import (
    EtcdAuthRevisionOld,
    EtcdError,
    EtcdInvalidToken,
    EtcdTLSError,
    EtcdUnavailable,
    translate,
)
from .pb import rpc_pb2, rpc_pb2_grpc

# The client's logger: these are its messages (and its name in the logs, as before).
log = logging.getLogger("clustermesh.etcd.client")

MAX_RECEIVE_MESSAGE_LENGTH = 64 * 1024 * 1024
# Called after every unary request: (method, request, seconds, succeeded). For metrics.
Observer = Callable[[str, Any, float, bool], None]
_RETIRE_GRACE = 2.0  # seconds an old channel stays open after a failover or TLS rotation


class _Channel:
    """A gRPC channel to one endpoint, with its stubs."""

    def __init__(self, endpoint: Endpoint, channel: grpc.aio.Channel, tls_fingerprint: str) -> None:
        self.endpoint = endpoint
        self.url = str(endpoint)
        self.channel = channel
        self.tls_fingerprint = tls_fingerprint
        self.cluster_id = 0  # of the etcd cluster the endpoint belongs to (from the probe)
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.watch = rpc_pb2_grpc.WatchStub(channel)
        self.lease = rpc_pb2_grpc.LeaseStub(channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        self.auth = rpc_pb2_grpc.AuthStub(channel)


class EtcdConnection:
    """A connection to one etcd cluster (several endpoints); see the module docstring.

    Not used alone: :class:`~clustermesh.etcd.client.EtcdClient` adds the etcd API.
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
        self._conn: _Channel | None = None
        self._next_endpoint = 0
        self._conn_lock = asyncio.Lock()
        self._auth_lock = asyncio.Lock()
        self._token: str | None = None
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

    @property
    def cluster_id(self) -> int:
        """ID of the etcd cluster the endpoint in use belongs to (0: not connected)."""
        return self._conn.cluster_id if self._conn else 0

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

    def _open_channel(self, endpoint: Endpoint) -> _Channel:
        options = self._channel_options()
        if not self.config.use_tls:
            channel = grpc.aio.insecure_channel(endpoint.grpc_target, options=options)
            return _Channel(endpoint, channel, "")
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
        return _Channel(endpoint, channel, tls.fingerprint)

    async def _probe(self, conn: _Channel) -> None:
        """One Status call: proves the endpoint is reachable and the TLS handshake works."""
        try:
            resp = await conn.maintenance.Status(rpc_pb2.StatusRequest(),
                                                 timeout=self._dial_timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, endpoint=conn.url) from None
        conn.cluster_id = resp.header.cluster_id

    async def _failover(self, failed: _Channel | None) -> _Channel:
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

    def _retire(self, conn: _Channel) -> None:
        # In-flight calls on the old channel get a short grace to finish; calls and
    # watches still on it are then cancelled by grpc and retried on the new channel.
        async def close_later() -> None:
            await conn.channel.close(grace=_RETIRE_GRACE)

        task = asyncio.create_task(close_later())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _connection(self) -> _Channel:
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

    async def call(self, service: str, method: str, request: Any, *,
                   timeout: float | None = None) -> Any:
        """Send one unary request, with failover and token refresh.

        ``service`` names a stub of the channel (``"kv"``, ``"lease"``, ``"auth"``...),
        ``method`` one of its RPCs (``"Range"``); ``timeout`` defaults to the client's
        request timeout.
        """
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
