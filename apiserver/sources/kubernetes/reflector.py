"""The list+watch loop of one kind: client-go's ``Reflector.ListAndWatch``.

One :class:`Reflector` task per kind runs against the cluster-wide collection
(``/api/v1/<plural>`` or ``/apis/<group>/<version>/<plural>``):

1. **List**, paginated with ``limit``/``continue`` and no ``resourceVersion`` (a consistent,
   most-recent read; every page comes from the snapshot of the first, which is what the
   ``continue`` token encodes).  The whole list is delivered as
   ``sink.replace(kind, items)``: the sink diffs it against what it holds, so deletions
   that happened while we were not watching are not lost.  After the first successful list
   of a kind, ``sink.synced(kind)`` is called once.  If a ``continue`` token expires (410
   mid-list, the snapshot was compacted) the list is redone in one unpaginated request,
   as client-go's pager does.
2. **Watch** from the list's ``metadata.resourceVersion`` with ``allowWatchBookmarks=true``
   and a server-side ``timeoutSeconds``.  ``ADDED``/``MODIFIED`` → ``sink.upsert``,
   ``DELETED`` → ``sink.delete``; every event, and every ``BOOKMARK`` (which carries
   nothing else), advances the remembered ``resourceVersion``.
3. **Resume.**  A watch that the server ends normally (its timeout) is re-established at
   once from the last ``resourceVersion``; so is one broken by a connection error, after
   a backoff.  Only when the server says that version is gone (an ``ERROR`` event or an
   HTTP status with code 410, "too old resource version" / "Expired" / "Gone") do we go
   back to 1 and relist.  Bookmarks are what keep that rare: without them a watch on a
   quiet kind would keep resuming from a revision that etcd compacts away, and every
   reconnect would cost a full relist.

Kinds whose API is not served (a 404 for the collection: e.g. ``ServiceExport`` when the
MCS-API CRDs are not installed) are logged once, delivered as an empty ``replace`` and
marked synced, so readiness is not blocked by an optional CRD; the collection is checked
again every ``missing_recheck_interval`` seconds and picked up when it appears.  Other
failures (401/403, 5xx, timeouts, malformed responses) are logged and retried after a
delay of the :class:`~clustermesh.backoff.Backoff` (policy
:data:`~clustermesh.backoff.KUBERNETES` unless the source is given another); a kind that
never lists successfully never reports synced, which is the signal readiness needs.  The
backoff is reset once a list succeeds or a watch delivers an event.  A watch that ends
cleanly in under :data:`SHORT_WATCH_SECONDS` without any event counts as a failure, so a
misbehaving server cannot make us spin.  The backoff, the recheck and that measurement
run on the injected :class:`~clustermesh.clock.Clock`; the HTTP timeouts (``request_timeout``
per list page, the watch's read timeout) are aiohttp's own, on the event loop's time.

Objects are the plain JSON dicts the API server sent: the raw HTTP responses of
kubernetes_asyncio's :class:`~kubernetes_asyncio.client.ApiClient` (``_preload_content=False``)
are decoded with :func:`json.loads`, never turned into model objects, so built-in kinds and
CRDs are handled alike and no field is renamed or dropped.  One normalisation is made: the
API server omits ``apiVersion`` and ``kind`` on the items of a list of a built-in kind
(while watch events always carry them), so those two fields are filled in when missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient

from apiserver.sources import Kind, Obj, ObjectSink, object_key
from clustermesh.backoff import KUBERNETES, Backoff, BackoffPolicy
from clustermesh.clock import Clock

from .ratelimit import LONG_THROTTLE_SECONDS, TokenBucket

log = logging.getLogger(__package__)

#: A watch that ends cleanly this soon without delivering anything is treated as a failure.
SHORT_WATCH_SECONDS = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ListWatchSettings:
    """How every reflector of a source lists, watches and retries."""

    page_size: int = 500  # 0: no pagination
    watch_timeout_seconds: int = 300  # the server ends each watch after this long
    request_timeout: float = 60.0  # of a list page, and of a watch's connect
    backoff: BackoffPolicy = KUBERNETES
    missing_recheck_interval: float | None = 60.0  # None: a missing kind stays missing

    def __post_init__(self) -> None:
        if self.page_size < 0:
            raise ValueError("page_size must be >= 0 (0: no pagination)")
        if self.watch_timeout_seconds < 1:
            raise ValueError("watch_timeout_seconds must be >= 1")


@dataclass(slots=True)
class KindStatus:
    """What one reflector is doing, for status reporting and tests."""

    kind: Kind
    synced: bool = False
    missing: bool = False  # the API server does not serve this kind (CRD not installed)
    resource_version: str | None = None
    last_error: str | None = None


class _ApiError(Exception):
    """A non-2xx answer, or a watch ERROR event: ``code`` is the HTTP/Status code."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}" if reason else f"{code}: {message}")
        self.code = code
        self.reason = reason
        self.message = message

    @classmethod
    def from_status(cls, status: Any, fallback_code: int = 0) -> _ApiError:
        if isinstance(status, dict):
            return cls(int(status.get("code") or fallback_code),
                       str(status.get("reason") or ""), str(status.get("message") or ""))
        return cls(fallback_code, "", str(status)[:200])

    @property
    def expired(self) -> bool:  # "too old resource version" / expired continue token
        return self.code == 410

    @property
    def not_found(self) -> bool:
        return self.code == 404


class _ShortWatch(Exception):
    """The server ended a watch at once without sending anything."""


class Reflector:
    """The list+watch loop of one kind (see the module docstring)."""

    def __init__(self, *, client: ApiClient, sink: ObjectSink, kind: Kind,
                 status: KindStatus, settings: ListWatchSettings, label_selector: str,
                 rate_limiter: TokenBucket, clock: Clock) -> None:
        self.client = client
        self.sink = sink
        self.kind = kind
        self.status = status
        self.settings = settings
        self.label_selector = label_selector
        self.rate_limiter = rate_limiter
        self.clock = clock
        if "/" in kind.api_version:
            self.path = f"/apis/{kind.api_version}/{kind.plural}"
        else:
            self.path = f"/api/{kind.api_version}/{kind.plural}"
        self.backoff = Backoff(settings.backoff, clock=clock)
        shown = f"?labelSelector={label_selector}" if label_selector else ""
        self.name = f"{kind.name} ({self.path}{shown})"
        #: Where the next watch starts; None: (re)list first.
        self.rv: str | None = None
        #: Set by a list, cleared by the next watch: that watch is the list's first.
        self.fresh_list = False
        #: The current watch started from a list's resourceVersion.
        self.first_watch = False

    def _set_rv(self, rv: str | None) -> None:
        self.rv = rv
        self.status.resource_version = rv

    async def run(self) -> None:
        while True:
            listing = self.rv is None
            try:
                if self.rv is None:
                    await self._list_and_replace()
                    self.backoff.reset()
                await self._watch()
            except asyncio.CancelledError:
                raise
            except _ApiError as exc:
                self.status.last_error = str(exc)
                if exc.not_found:
                    self._set_rv(None)
                    await self._missing()
                elif exc.expired:
                    log.info("kubernetes: %s: resourceVersion %s expired (%s); relisting",
                             self.name, self.rv, exc.message)
                    self._set_rv(None)
                    if listing or self.first_watch:  # even a fresh list expired: don't spin
                        await self._sleep_backoff(exc)
                else:
                    log.warning("kubernetes: %s: %s", self.name, exc)
                    await self._sleep_backoff(exc)
            except _ShortWatch as exc:
                await self._sleep_backoff(exc)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                # ValueError covers malformed JSON (json.JSONDecodeError).
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                if self.rv is None:
                    log.warning("kubernetes: %s: list failed: %s", self.name,
                                self.status.last_error)
                else:
                    log.warning("kubernetes: %s: watch failed: %s; resuming from "
                                "resourceVersion %s", self.name, self.status.last_error,
                                self.rv)
                await self._sleep_backoff(exc)
            except Exception as exc:  # a bug (ours or the sink's): start over from a list
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("kubernetes: %s: unexpected error; relisting", self.name)
                self._set_rv(None)
                await self._sleep_backoff(exc)

    async def _sleep_backoff(self, exc: BaseException) -> None:
        delay = self.backoff.next_delay()
        log.debug("kubernetes: %s: retrying in %.2fs after %r", self.name, delay, exc)
        await self.clock.sleep(delay)

    async def _missing(self) -> None:
        """The collection is not served: deliver it empty, synced, and check back later."""
        interval = self.settings.missing_recheck_interval
        if not self.status.missing:
            self.status.missing = True
            log.warning("kubernetes: %s is not served by the API server (CRD not installed?);"
                        " treating it as empty%s", self.name,
                        "" if interval is None else f", checking again every {interval:g}s")
            self.sink.replace(self.kind, [])
            self._mark_synced()
        if interval is None:
            await asyncio.Event().wait()
        else:
            await self.clock.sleep(interval)

    def _mark_synced(self) -> None:
        if not self.status.synced:
            self.status.synced = True
            self.sink.synced(self.kind)

    # -- HTTP ---------------------------------------------------------------------

    async def _get(self, query: list[tuple[str, Any]], timeout: aiohttp.ClientTimeout,
                   ) -> aiohttp.ClientResponse:
        """GET the collection; the raw, unread response (status 200), else _ApiError."""
        if self.label_selector:
            query = [*query, ("labelSelector", self.label_selector)]
        waited = await self.rate_limiter.wait()
        if waited > LONG_THROTTLE_SECONDS:
            log.info("kubernetes: %s: waited %.1fs for the client-side rate limit "
                     "(--k8s-client-qps %g, --k8s-client-burst %d)", self.name, waited,
                     self.rate_limiter.qps, self.rate_limiter.burst)
        resp: aiohttp.ClientResponse = await self.client.call_api(
            self.path, "GET", query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False,
            _request_timeout=timeout)
        if resp.status == 200:
            return resp
        try:
            body = await resp.read()
        finally:
            resp.release()
        try:
            status = json.loads(body)
        except ValueError:
            status = body.decode(errors="replace")
        err = _ApiError.from_status(status, resp.status)
        err.code = resp.status  # the HTTP status is authoritative
        raise err

    async def _list_page(self, limit: int, cont: str | None) -> dict[str, Any]:
        query: list[tuple[str, Any]] = []
        if limit:
            query.append(("limit", limit))
        if cont:
            query.append(("continue", cont))
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
        resp = await self._get(query, timeout)
        try:
            data = json.loads(await resp.read())
        finally:
            resp.release()
        if not isinstance(data, dict) or not isinstance(data.get("items", []), list):
            raise ValueError(f"malformed list response: {str(data)[:200]}")
        return data

    async def _list(self) -> tuple[list[Obj], str]:
        """All objects and the list's resourceVersion (paginated; see module doc)."""
        limit = self.settings.page_size
        items: list[Obj] = []
        cont: str | None = None
        while True:
            try:
                data = await self._list_page(limit, cont)
            except _ApiError as exc:
                if not (exc.expired and cont):
                    raise
                log.info("kubernetes: %s: continue token expired mid-list (%s); listing "
                         "again without pagination", self.name, exc.message)
                items, cont, limit = [], None, 0
                continue
            items.extend(data.get("items") or [])
            meta = data.get("metadata") or {}
            cont = meta.get("continue") or None
            if cont is None:
                rv = str(meta.get("resourceVersion") or "")
                if not rv:
                    raise ValueError("list response without metadata.resourceVersion")
                return items, rv

    async def _list_and_replace(self) -> None:
        items, rv = await self._list()
        for item in items:
            item.setdefault("apiVersion", self.kind.api_version)
            item.setdefault("kind", self.kind.name)
        if self.status.missing:
            log.info("kubernetes: %s is now served", self.name)
            self.status.missing = False
        self.status.last_error = None
        log.debug("kubernetes: %s: listed %d objects at resourceVersion %s",
                  self.name, len(items), rv)
        self.sink.replace(self.kind, items)
        self._set_rv(rv)
        self.fresh_list = True
        self._mark_synced()

    async def _watch(self) -> None:
        """One watch call from ``self.rv``, which every event advances.  Returns when the
        server ends the stream normally; raises on errors."""
        assert self.rv is not None
        timeout_s = self.settings.watch_timeout_seconds
        query = [("watch", "true"), ("resourceVersion", self.rv),
                 ("allowWatchBookmarks", "true"), ("timeoutSeconds", timeout_s)]
        # No total timeout: the server ends the stream after timeout_s.  The read timeout
        # (not one byte for longer than the server's own timeout plus a margin) catches
        # a connection that died silently.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.request_timeout,
                                        sock_read=timeout_s + 30)
        started = self.clock.monotonic()
        self.first_watch, self.fresh_list = self.fresh_list, False
        resp = await self._get(query, timeout)
        events = 0
        try:
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while (nl := buffer.find(b"\n")) >= 0:
                    line, buffer = buffer[:nl].strip(), buffer[nl + 1:]
                    if line:
                        self._event(json.loads(line))
                        events += 1
            if buffer.strip():
                self._event(json.loads(buffer))
                events += 1
        finally:
            resp.close()  # an unfinished stream must not go back to the pool
        if events == 0 and self.clock.monotonic() - started < SHORT_WATCH_SECONDS:
            raise _ShortWatch(f"watch of {self.name} ended at once")

    def _event(self, event: Any) -> None:
        """Deliver one watch event and advance the resourceVersion."""
        if not isinstance(event, dict):
            raise ValueError(f"malformed watch event: {str(event)[:200]}")
        etype = event.get("type")
        obj = event.get("object")
        if etype == "ERROR":
            raise _ApiError.from_status(obj)
        if not isinstance(obj, dict):
            raise ValueError(f"malformed watch event: {str(event)[:200]}")
        if etype in ("ADDED", "MODIFIED"):
            self.sink.upsert(self.kind, obj)
        elif etype == "DELETED":
            namespace, name = object_key(obj)
            self.sink.delete(self.kind, namespace, name)
        elif etype != "BOOKMARK":
            log.warning("kubernetes: %s: ignoring watch event of type %r", self.name, etype)
            return
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self._set_rv(str(rv))
        self.backoff.reset()
