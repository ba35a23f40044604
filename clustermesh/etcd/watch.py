"""A resumable etcd watch.

One watcher runs on one gRPC stream.  The watch remembers the next revision it
needs (one past the last event, or past the last progress notification) and,
when the stream breaks for a transient reason (member down, failover, token
expiry, a TLS rotation retiring its channel), opens a new stream from that
revision: the consumer sees every event exactly once, in order, across reconnects.
What is transient, and how long to wait before the next stream, is not decided
here: the streams are the attempts of the client's one retry path
(:meth:`~clustermesh.etcd.connection.EtcdConnection.attempts` with a watch's rules:
unavailability is retried until the client closes; the limits count afresh once the
server accepted a stream).

etcd splits a response above its ``--max-request-bytes`` into fragments when asked
to (we always ask: a catch-up of a big backlog could otherwise exceed our receive
limit); the fragments are put together again, so a batch is always one whole
revision range, e.g. every event of one big txn.

These things end a watch with an error instead:

* :class:`EtcdCompacted` — the revision we need is gone; the consumer must
  relist (:mod:`clustermesh.etcd.listwatch` does) and start a new watch;
* :class:`EtcdClusterChanged` — the stream was resumed on a different etcd cluster
  than ``cluster_id`` (or than the first stream's): its revisions are not ours;
* any non-transient error (permission denied, cancelled by the server for
  another reason), and the client being closed.

Leaving the ``async with`` block (or breaking out of ``async for``) cancels the
stream.
"""

from __future__ import annotations

import logging
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
    """Iterate with ``async for batch in watch`` inside ``async with watch``.

    ``reconnects`` counts the streams opened again after one broke.
    """

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
        attempts = self._client.attempts(watch=True, until=lambda: self._closed)
        resumed = False
        async for attempt in attempts:
            if resumed:
                self.reconnects += 1
                log.debug("%s: resuming the watch on %r from revision %d", self._client.name,
                          self._key, self._next_revision)
            resumed = True
            url = attempt.channel.url
            async with attempt:
                self._call = call = attempt.channel.watch.Watch(metadata=attempt.metadata)
                try:
                    await call.write(self._create_request())
                    fragments: list[kv_pb2.Event] = []
                    async for resp in call:
                        if resp.canceled:
                            raise self._cancel_error(resp, url)
                        if resp.created:
                            self._created(resp, url)
                            attempts.succeeded()
                        elif resp.fragment:
                            fragments.extend(resp.events)
                        else:
                            events: Sequence[kv_pb2.Event] = resp.events
                            if fragments:
                                fragments.extend(resp.events)
                                events, fragments = fragments, []
                            if events:
                                self._next_revision = events[-1].kv.mod_revision + 1
                            elif resp.header.revision >= self._next_revision:
                                self._next_revision = resp.header.revision + 1
                            yield WatchBatch(events, self._next_revision - 1)
                    raise EtcdUnavailable("watch stream ended", endpoint=url)
                finally:
                    call.cancel()

    def _create_request(self) -> rpc_pb2.WatchRequest:
        return rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=self._key, range_end=self._range_end, start_revision=self._next_revision,
            prev_kv=self._prev_kv, progress_notify=self._progress_notify, fragment=True))

    def _created(self, resp: rpc_pb2.WatchResponse, url: str) -> None:
        """The server accepted the stream: check (or pin) its cluster and revision."""
        found = resp.header.cluster_id
        if not self._cluster_id:
            self._cluster_id = found
        elif found and found != self._cluster_id:
            raise EtcdClusterChanged(self._cluster_id, found, endpoint=url)
        if self._next_revision == 0:
            # Watching "from now": pin it so a resume misses nothing.
            self._next_revision = resp.header.revision + 1

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
