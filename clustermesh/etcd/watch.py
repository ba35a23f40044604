"""A resumable etcd watch.

One watcher runs on one gRPC stream.  The watch remembers the next revision it
needs (one past the last event, or past the last progress notification) and,
when the stream breaks for a transient reason (member down, failover, token
expiry), opens a new stream from that revision: the consumer sees every event
exactly once, in order, across reconnects.

Two things end a watch with an error instead:

* :class:`EtcdCompacted` — the revision we need is gone; the consumer must
  relist (the reflector's "too old" path) and start a new watch;
* :class:`EtcdClusterChanged` — the stream was resumed on a different etcd cluster
  than ``cluster_id`` (or than the first stream's): its revisions are not ours.
* any non-transient error (permission denied, cancelled by the server for
  another reason).

Leaving the ``async with`` block (or breaking out of ``async for``) cancels the
stream.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from .errors import (
    EtcdClusterChanged,
    EtcdCompacted,
    EtcdError,
    EtcdInvalidToken,
    EtcdPermissionDenied,
    EtcdUnavailable,
    translate,
)
from .pb import kv_pb2, rpc_pb2

if TYPE_CHECKING:
    from .client import EtcdClient

log = logging.getLogger(__name__)

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events of one watch response (possibly empty: a progress notification).

    ``revision`` is the store revision up to which this watch has delivered
    everything; a new watch from ``revision + 1`` misses nothing.
    """

    events: Sequence[kv_pb2.Event]
    revision: int


class Watch:
    """Iterate with ``async for batch in watch`` inside ``async with watch``."""

    def __init__(self, client: EtcdClient, *, key: bytes, range_end: bytes,
                 start_revision: int, prev_kv: bool, progress_notify: bool,
                 cluster_id: int = 0) -> None:
        self._client = client
        self._key = key
        self._range_end = range_end
        self._next_revision = start_revision
        self._prev_kv = prev_kv
        self._progress_notify = progress_notify
        self._cluster_id = cluster_id  # 0: pinned by the first stream the server accepts
        self._call: grpc.aio.StreamStreamCall | None = None
        self._closed = False
        self.reconnects = 0

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    def cancel(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    @property
    def next_revision(self) -> int:
        return self._next_revision

    def __aiter__(self) -> AsyncIterator[WatchBatch]:
        return self._run()

    async def _run(self) -> AsyncIterator[WatchBatch]:
        failures = 0
        reauthenticated = False  # since the last watch the server accepted
        while not self._closed:
            try:
                conn = await self._client._connection()
            except EtcdUnavailable as exc:
                # No endpoint answers yet (e.g. the only member is restarting): keep
                # waiting like after any other transient error, unless the client closed.
                if self._client._closed:
                    raise
                failures += 1
                log.debug("%s: no endpoint for watch: %s", self._client.name, exc)
                await asyncio.sleep(min(0.1 * 2**failures, 2.0) * random.uniform(0.5, 1.0))
                continue
            self._call = call = conn.watch.Watch(metadata=self._client._metadata())
            token = self._client._token
            try:
                await call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
                    key=self._key, range_end=self._range_end,
                    start_revision=self._next_revision,
                    prev_kv=self._prev_kv, progress_notify=self._progress_notify,
                    # Let etcd split responses above its request limit instead of one
                    # message that could exceed our receive limit (catch-up of a big backlog).
                    fragment=True,
                )))
                fragments: list[kv_pb2.Event] = []
                async for resp in call:
                    if resp.canceled:
                        raise self._cancel_error(resp, conn.url)
                    if resp.created:
                        found = resp.header.cluster_id
                        if not self._cluster_id:
                            self._cluster_id = found
                        elif found and found != self._cluster_id:
                            raise EtcdClusterChanged(self._cluster_id, found, endpoint=conn.url)
                        if self._next_revision == 0:
                            # Watching "from now": pin it so a resume misses nothing.
                            self._next_revision = resp.header.revision + 1
                        failures = 0
                        reauthenticated = False
                        continue
                    if resp.fragment:
                        fragments.extend(resp.events)
                        continue
                    events: Sequence[kv_pb2.Event] = resp.events
                    if fragments:
                        fragments.extend(resp.events)
                        events, fragments = fragments, []
                    if events:
                        self._next_revision = events[-1].kv.mod_revision + 1
                    elif resp.header.revision >= self._next_revision:
                        self._next_revision = resp.header.revision + 1
                    yield WatchBatch(events, self._next_revision - 1)
                if self._closed:
                    return
                raise EtcdUnavailable("watch stream ended", endpoint=conn.url)
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    return
                err: EtcdError = translate(exc, endpoint=conn.url)
            except EtcdError as exc:
                err = exc
            except asyncio.CancelledError:
                # A cancelled consumer task, or our own cancel(): stop.  Otherwise grpc
                # cancelled the call because its channel was closed (retired after a
                # failover or a TLS rotation): resume on the current channel.
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                if self._closed:
                    return
                err = EtcdUnavailable("watch stream cancelled: its channel was closed",
                                      endpoint=conn.url)
            finally:
                call.cancel()
            if isinstance(err, EtcdInvalidToken) and self._client.uses_password:
                await self._client._authenticate(token)
                continue
            if (isinstance(err, EtcdPermissionDenied) and self._client.uses_password
                    and not reauthenticated):
                # etcd 3.5.1 cancels a watch created with an expired token (e.g. resuming
                # on another member) as "permission denied": retry once with a fresh token.
                reauthenticated = True
                await self._client._authenticate(token)
                continue
            if not isinstance(err, EtcdUnavailable):
                raise err
            failures += 1
            self.reconnects += 1
            log.debug("%s: watch on %r broke (%s), resuming from revision %d",
                      self._client.name, self._key, err, self._next_revision)
            await asyncio.sleep(min(0.1 * 2**failures, 2.0) * random.uniform(0.5, 1.0))
            try:
                await self._client._failover(conn)
            except EtcdUnavailable as fail:
                log.debug("%s: no endpoint for watch: %s", self._client.name, fail)

    @staticmethod
    def _cancel_error(resp: rpc_pb2.WatchResponse, url: str) -> EtcdError:
        if resp.compact_revision:
            return EtcdCompacted(resp.compact_revision, endpoint=url)
        reason = resp.cancel_reason or "watch canceled by the server"
        if "invalid auth token" in reason:
            return EtcdInvalidToken(reason, endpoint=url)
        if "permission denied" in reason:
            return EtcdPermissionDenied(reason, endpoint=url)
        return EtcdError(reason, endpoint=url)
