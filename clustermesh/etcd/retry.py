"""The one retry path of an etcd client: what a failed attempt of a request means.

Unary calls (:meth:`~clustermesh.etcd.connection.EtcdConnection.call`), the lease
keepalive stream and watches all iterate
:meth:`~clustermesh.etcd.connection.EtcdConnection.attempts`, so the rules of what is
retried, how often and after which wait live here once, instead of in three copies
that drift apart.  An :class:`Attempt` hands out the channel and the token to use;
leaving it with an error either prepares the next attempt (a fresh token, a failover
after a backoff) and suppresses the error, or raises it, translated to our
:class:`~clustermesh.etcd.errors.EtcdError` types.  A watch follows the same rules,
except that it never gives up on unavailability while the client is open: the
reflector behind it would only relist everything otherwise.

This module is the connection's own policy: it reads and drives the connection's
state (channel in use, token, failover), which nothing outside the two modules does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

import grpc

from ..backoff import ETCD_REQUEST, Backoff
from .channel import Channel
from .errors import (
    EtcdAuthRevisionOld,
    EtcdError,
    EtcdInvalidToken,
    EtcdPermissionDenied,
    EtcdUnavailable,
    translate,
)

if TYPE_CHECKING:
    from .connection import EtcdConnection

# The client's logger: these are its messages.
log = logging.getLogger("clustermesh.etcd.client")

_TOKEN_REFRESHES = 2  # "invalid auth token": authentications per request (or watch stream)
_AUTH_RACES = 5  # "revision of auth store is old": resends per request (or watch stream)


class Attempt:
    """One try of a request: send it on ``channel`` with ``metadata`` inside
    ``async with attempt``; leaving the block with an error hands it to :class:`Attempts`,
    which either suppresses it (the next attempt follows) or raises it, translated."""

    __slots__ = ("_attempts", "_token", "channel", "metadata")

    def __init__(self, attempts: Attempts, channel: Channel, token: str | None) -> None:
        self._attempts = attempts
        self._token = token
        self.channel = channel
        self.metadata: tuple[tuple[str, str], ...] | None = (
            (("token", token),) if token else None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        if exc is None:
            return False
        return await self._attempts._failed(exc, self)


class Attempts:
    """The attempts of one request (or one watch), and what failing one of them means.

    Iterate it (``async for attempt in connection.attempts(): async with attempt: ...``);
    each :class:`Attempt` has the channel in use (after a failover if there is none).
    Without ``until`` the iteration ends only by the body returning or an error raised.
    After a failed attempt:

    * *invalid auth token*: authenticate again and retry, twice at most;
    * *revision of auth store is old* (a user or role changed under the request, as
      cluster users management does while daemons write; Go's client retries it too):
      authenticate again if the client has a password and retry, five times at most;
    * *unavailable* (including grpc cancelling a call because its channel was retired
      by a failover or a TLS rotation): back off (:data:`~clustermesh.backoff.ETCD_REQUEST`),
      fail over to another endpoint and retry, at most once per endpoint and once more
      (a watch: until the client is closed, also when no endpoint answers);
    * *permission denied*, for a watch only: authenticate again and retry once (etcd
      3.5.1 cancels a watch created with an expired token that way);
    * anything else, and the caller's own cancellation, propagates.

    A watch calls :meth:`succeeded` when the server accepted a stream: the limits and
    the backoff count afresh.  ``until`` (the watch is closed) ends the iteration and
    turns the failure it caused into a quiet end.
    """

    def __init__(self, connection: EtcdConnection, *, watch: bool,
                 until: Callable[[], bool] | None) -> None:
        self._connection = connection
        self._watch = watch
        self._until = until
        self._backoff = Backoff(ETCD_REQUEST, clock=connection._clock)
        self._unavailable = 0
        self._token_refreshes = 0
        self._auth_races = 0
        self._reauthenticated = False  # a watch's one retry after "permission denied"

    def succeeded(self) -> None:
        """The server accepted the request (a watch's stream): count afresh."""
        self._backoff.reset()
        self._unavailable = self._token_refreshes = self._auth_races = 0
        self._reauthenticated = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Attempt:
        connection = self._connection
        while not (self._until is not None and self._until()):
            try:
                channel = await connection._current()
            except EtcdUnavailable as exc:
                # No endpoint answers (e.g. the only member restarts): a watch waits.
                if not self._watch or connection._closed:
                    raise
                log.debug("%s: no endpoint for a watch: %s", connection.name, exc)
                await self._backoff.wait()
                continue
            return Attempt(self, channel, connection._token)
        raise StopAsyncIteration

    async def _failed(self, exc: BaseException, attempt: Attempt) -> bool:
        """True: ``exc`` is handled, try again; False: let it propagate; or raise."""
        if isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is None or task.cancelling():
                return False  # our caller is cancelled: stop
        elif not isinstance(exc, grpc.aio.AioRpcError | EtcdError):
            return False  # a bug, or a generator closed
        if self._until is not None and self._until():
            return True  # the watch was closed: the end of its stream is no failure
        url = attempt.channel.url
        if isinstance(exc, asyncio.CancelledError):
            err: EtcdError = EtcdUnavailable("request cancelled: its channel was closed",
                                             endpoint=url)
        elif isinstance(exc, grpc.aio.AioRpcError):
            err = translate(exc, endpoint=url)
        else:
            err = exc
        connection = self._connection
        if (isinstance(err, EtcdInvalidToken) and connection.uses_password
                and self._token_refreshes < _TOKEN_REFRESHES):
            self._token_refreshes += 1
            await connection._authenticate(attempt._token)
        elif isinstance(err, EtcdAuthRevisionOld) and self._auth_races < _AUTH_RACES:
            self._auth_races += 1
            if connection.uses_password:
                await connection._authenticate(attempt._token)
        elif (self._watch and isinstance(err, EtcdPermissionDenied)
              and connection.uses_password and not self._reauthenticated):
            self._reauthenticated = True
            await connection._authenticate(attempt._token)
        elif isinstance(err, EtcdUnavailable) and not connection._closed and (
                self._watch or self._unavailable <= len(connection.config.endpoints)):
            self._unavailable += 1
            log.debug("%s: %s; failing over", connection.name, err)
            await self._backoff.wait()
            try:
                await connection._failover(attempt.channel)
            except EtcdUnavailable as fail:
                if not self._watch:
                    raise
                log.debug("%s: no endpoint for a watch: %s", connection.name, fail)
        else:
            raise err from None
        return True


