"""List+watch of the apiserver's kinds against a kube-apiserver (client-go reflector semantics).

Design
------
One :class:`_Reflector` task per kind runs client-go's ``Reflector.ListAndWatch`` loop
against the cluster-wide collection (``/api/v1/<plural>`` or
``/apis/<group>/<version>/<plural>``):

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
   an exponential backoff with jitter.  Only when the server says that version is gone
   (an ``ERROR`` event or an HTTP status with code 410, "too old resource version" /
   "Expired" / "Gone") do we go back to 1 and relist.  Bookmarks are what keep that rare:
   without them a watch on a quiet kind would keep resuming from a revision that etcd
   compacts away, and every reconnect would cost a full relist.

Kinds whose API is not served (a 404 for the collection: e.g. ``ServiceExport`` when the
MCS-API CRDs are not installed) are logged once, delivered as an empty ``replace`` and
marked synced, so readiness is not blocked by an optional CRD; the collection is checked
again every ``missing_recheck_interval`` seconds and picked up when it appears.  Other
failures (401/403, 5xx, timeouts, malformed responses) are logged and retried with
backoff; a kind that never lists successfully never reports synced, which is the signal
readiness needs.  The backoff is reset once a list succeeds or a watch delivers an event.
A watch that ends cleanly in under a second without any event counts as a failure, so a
misbehaving server cannot make us spin.

**Label selectors.**  ``label_selectors`` maps a kind's name to a selector string sent as
``labelSelector`` on every list page and every watch of that kind, so the API server only
ever shows us matching objects, as Cilium's ``ListOptions`` modifiers do:
:func:`default_label_selectors` gives Cilium's two, the ``--k8s-service-proxy-name`` one
on Services (:func:`service_proxy_selector`) and :data:`ENDPOINTSLICE_SELECTOR` on
EndpointSlices (slices that Cilium mirrors from other clusters are not this cluster's).
Nothing more is needed on our side: the server's watch turns an object that is relabelled
out of the selection into ``DELETED`` and one relabelled into it into ``ADDED``, and a
relist's ``replace`` drops whatever stopped matching while we were away.

**Client-side rate limit.**  Like client-go's default ``tokenBucketRateLimiter``
(``--k8s-client-qps``, ``--k8s-client-burst``; Cilium's defaults 10 and 20), one
:class:`TokenBucket` per source is shared by all its reflectors and a token is taken before
every request: each list page and each watch start, not each watch event (a watch is one
request).  It holds ``burst`` tokens, refills at ``qps`` per second, and a caller that
finds it empty reserves the next token and sleeps until it is due, so waiting callers are
served in order (``golang.org/x/time/rate``'s reservations).  It only matters when many
kinds list at once or relist together; ``qps <= 0`` disables it.

Objects are the plain JSON dicts the API server sent: the raw HTTP responses of
kubernetes_asyncio's :class:`~kubernetes_asyncio.client.ApiClient` (``_preload_content=False``)
are decoded with :func:`json.loads`, never turned into model objects, so built-in kinds and
CRDs are handled alike and no field is renamed or dropped.  One normalisation is made: the
API server omits ``apiVersion`` and ``kind`` on the items of a list of a built-in kind
(while watch events always carry them), so those two fields are filled in when missing.

The ApiClient (its aiohttp session, its authentication: bearer token, client certificates,
exec plugins and in-cluster service-account tokens, which it re-reads as they rotate) comes
from ``kubeconfig`` (``--k8s-kubeconfig-path``), or when that is None from the in-cluster
service account (``KUBERNETES_SERVICE_HOST``/``_PORT``, the ``token`` and ``ca.crt`` of
``service_account_dir``), falling back outside a cluster to ``$KUBECONFIG`` or
``~/.kube/config``.  Credentials from exec or auth-provider plugins are refreshed every
minute.  ``api_server`` (``--k8s-api-server``) replaces the server URL of whichever of
those was loaded, keeping its credentials; with no kubeconfig and no cluster it is used
alone: without credentials, unless the service account's token file exists (then with that
token, and its CA if present), and without falling back to ``~/.kube/config``.  A URL
without a scheme gets ``https://`` when a CA is configured, else ``http://`` (client-go's
``DefaultServerURL``).  Cilium's own ``createConfig`` differs in two corners: it ignores
``--k8s-api-server`` when a kubeconfig is given, and with no kubeconfig it takes an
``https://`` URL only together with the complete in-cluster config.

Cancelling :meth:`KubernetesSource.run` cancels every reflector, closes every open stream
and the session, and leaves no task behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config
from kubernetes_asyncio.config.kube_config import load_kube_config, refresh_token

from apiserver.sources import (
    ENDPOINT_SLICE,
    KINDS_BY_NAME,
    SERVICE,
    Kind,
    Obj,
    ObjectSink,
    object_key,
)
from clustermesh.clock import REAL_CLOCK, Clock

log = logging.getLogger(__name__)

USER_AGENT = "clustermesh-apiserver (python; kubernetes_asyncio)"

#: A watch that ends cleanly this soon without delivering anything is treated as a failure.
SHORT_WATCH_SECONDS = 1.0

#: Cilium's ``--k8s-client-qps`` / ``--k8s-client-burst`` defaults (cmdref of
#: ``clustermesh-apiserver clustermesh``).
DEFAULT_CLIENT_QPS = 10.0
DEFAULT_CLIENT_BURST = 20
#: A request held back longer than this by the rate limit is logged (client-go logs
#: "Waited for ... due to client-side throttling" past one second too).
LONG_THROTTLE_SECONDS = 1.0

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: How often a service-account token used without the in-cluster loader is re-read (the
#: loader's own period): kubelet rotates projected tokens well before they expire.
TOKEN_REREAD_SECONDS = 60.0

SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
ENDPOINTSLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
#: The ``managed-by`` value of the EndpointSlices Cilium mirrors from remote clusters.
ENDPOINTSLICE_MESH_CONTROLLER = "endpointslice-mesh-controller.cilium.io"
#: Cilium's EndpointSlice selector: every slice but the mirrored ones (``!=`` also
#: matches slices without the label).
ENDPOINTSLICE_SELECTOR = f"{ENDPOINTSLICE_MANAGED_BY_LABEL}!={ENDPOINTSLICE_MESH_CONTROLLER}"

_LABEL_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_NO_SELECTORS: Mapping[str, str] = MappingProxyType({})


def service_proxy_selector(proxy_name: str) -> str:
    """The Service selector of Cilium's ``--k8s-service-proxy-name``: with no name, the
    Services no other proxy claims (no ``service-proxy-name`` label); with one, only the
    Services labelled for it.  Raises ValueError for a name that is not a valid label value
    (Cilium's ``labels.NewRequirement`` refuses it at startup too)."""
    if not proxy_name:
        return f"!{SERVICE_PROXY_NAME_LABEL}"
    if len(proxy_name) > 63 or not _LABEL_VALUE_RE.fullmatch(proxy_name):
        raise ValueError(f"invalid service proxy name {proxy_name!r}: a label value is at most "
                         "63 alphanumeric characters, '-', '_' or '.', starting and ending "
                         "with an alphanumeric character")
    return f"{SERVICE_PROXY_NAME_LABEL}={proxy_name}"


def default_label_selectors(service_proxy_name: str) -> dict[str, str]:
    """Cilium's selectors per kind name: Services by proxy name, EndpointSlices not
    mirrored from other clusters."""
    return {SERVICE.name: service_proxy_selector(service_proxy_name),
            ENDPOINT_SLICE.name: ENDPOINTSLICE_SELECTOR}


class TokenBucket:
    """client-go's token bucket rate limiter (see module doc): ``burst`` tokens, refilled at
    ``qps`` per second; ``qps <= 0`` is unlimited."""

    def __init__(self, *, qps: float, burst: int, clock: Clock = REAL_CLOCK) -> None:
        if qps > 0 and burst < 1:
            raise ValueError("burst must be >= 1 when qps > 0")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)  # a new limiter starts full, allowing a burst at once
        self._last = clock.monotonic()

    async def wait(self) -> float:
        """Take one token, sleeping until it is due; returns the seconds slept."""
        if self.qps <= 0:
            return 0.0
        now = self._clock.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        # Taken now even if not yet there: a negative balance is the queue of reservations,
        # so the next caller waits behind this one instead of racing it.
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        delay = -self._tokens / self.qps
        await self._clock.sleep(delay)
        return delay


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


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter: ``initial * factor**n`` capped at ``maximum``,
    each delay then stretched by a random factor in ``[1, 1 + jitter)`` so that many
    clients failing together do not retry in lockstep.  Reset after progress."""

    initial: float = 0.8
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    _next: float = 0.0

    def reset(self) -> None:
        self._next = 0.0

    def next_delay(self) -> float:
        base = self._next or self.initial
        self._next = min(base * self.factor, self.maximum)
        return min(base, self.maximum) * (1.0 + random.random() * self.jitter)


@dataclass(slots=True)
class KindStatus:
    """What one reflector is doing, for status reporting and tests."""

    kind: Kind
    synced: bool = False
    missing: bool = False  # the API server does not serve this kind (CRD not installed)
    resource_version: str | None = None
    last_error: str | None = None


class KubernetesSource:
    """Delivers kinds from a kube-apiserver to an :class:`ObjectSink` (see module doc)."""

    def __init__(self, *, kubeconfig: Path | None = None, context: str | None = None,
                 api_server: str | None = None,
                 label_selectors: Mapping[str, str] = _NO_SELECTORS,
                 client_qps: float = DEFAULT_CLIENT_QPS,
                 client_burst: int = DEFAULT_CLIENT_BURST, clock: Clock = REAL_CLOCK,
                 service_account_dir: Path = SERVICE_ACCOUNT_DIR,
                 page_size: int = 500, watch_timeout_seconds: int = 300,
                 request_timeout: float = 60.0, backoff_initial: float = 0.8,
                 backoff_max: float = 30.0, missing_recheck_interval: float | None = 60.0,
                 ) -> None:
        if page_size < 0:
            raise ValueError("page_size must be >= 0 (0: no pagination)")
        if watch_timeout_seconds < 1:
            raise ValueError("watch_timeout_seconds must be >= 1")
        # A misspelt kind would silently go unfiltered.
        if unknown := sorted(set(label_selectors) - set(KINDS_BY_NAME)):
            raise ValueError(f"label selectors for unknown kinds {unknown}; kinds are "
                             f"{sorted(KINDS_BY_NAME)}")
        self.kubeconfig = kubeconfig
        self.context = context
        self.api_server = api_server or None  # "" (an unset flag) means none
        self.label_selectors = {k: v for k, v in label_selectors.items() if v}
        self.rate_limiter = TokenBucket(qps=client_qps, burst=client_burst, clock=clock)
        self.service_account_dir = service_account_dir
        self.page_size = page_size
        self.watch_timeout_seconds = int(watch_timeout_seconds)
        self.request_timeout = request_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.missing_recheck_interval = missing_recheck_interval
        self._status: dict[str, KindStatus] = {}

    def status(self) -> dict[str, KindStatus]:
        """Per kind name: synced, missing, current resourceVersion, counters, last error."""
        return dict(self._status)

    async def run(self, sink: ObjectSink, kinds: Sequence[Kind]) -> None:
        configuration, refresher = await self._load_configuration()
        async with ApiClient(configuration) as client:
            client.user_agent = USER_AGENT
            async with asyncio.TaskGroup() as tg:
                if refresher is not None:
                    tg.create_task(_log_failure(refresher(), "credential refresh"),
                                   name="kube-credential-refresh")
                for kind in kinds:
                    status = self._status[kind.name] = KindStatus(kind)
                    reflector = _Reflector(self, client, sink, kind, status)
                    tg.create_task(reflector.run(), name=f"kube-reflector-{kind.name}")
                await asyncio.Event().wait()  # until cancelled

    async def _load_configuration(
            self) -> tuple[Configuration, Callable[[], Awaitable[None]] | None]:
        """The client configuration, and what keeps plugin credentials fresh (if any)."""
        configuration = Configuration()
        refresher: Callable[[], Awaitable[None]] | None = None
        if self.kubeconfig is not None:
            path = str(self.kubeconfig)
            if not _kubeconfig_exists(path):
                raise ConfigException(f"kubeconfig {path} does not exist")
            refresher = await self._load_kubeconfig(path, configuration)
            origin = f"kubeconfig {path}"
        else:
            token_file = self.service_account_dir / "token"
            try:
                load_incluster_config(client_configuration=configuration,
                                      token_filename=str(token_file),
                                      cert_filename=str(self.service_account_dir / "ca.crt"))
                origin = "the in-cluster service account"
            except ConfigException as exc:
                if self.api_server is not None:
                    log.info("kubernetes: not in a cluster (%s); using --k8s-api-server %s "
                             "alone", exc, self.api_server)
                    if _use_token_file(configuration, self.service_account_dir):
                        origin = f"--k8s-api-server with the token of {token_file}"
                    else:
                        origin = "--k8s-api-server without credentials"
                else:
                    path = os.environ.get("KUBECONFIG") or "~/.kube/config"
                    log.info("kubernetes: not in a cluster (%s); using kubeconfig %s", exc, path)
                    if not _kubeconfig_exists(path):
                        raise ConfigException(
                            f"not running in a cluster ({exc}) and no kubeconfig at {path}"
                        ) from None
                    refresher = await self._load_kubeconfig(path, configuration)
                    origin = f"kubeconfig {path}"
        if self.api_server is not None:
            tls = bool(configuration.ssl_ca_cert or configuration.cert_file)
            configuration.host = _server_url(self.api_server, tls=tls)
        log.info("kubernetes: using %s (%s)", origin, configuration.host)
        return configuration, refresher

    async def _load_kubeconfig(self, path: str, configuration: Configuration,
                               ) -> Callable[[], Awaitable[None]] | None:
        """Load ``path`` into ``configuration``; what refreshes plugin credentials, if any."""
        loader = await load_kube_config(config_file=path, context=self.context,
                                        client_configuration=configuration,
                                        persist_config=False)
        user = getattr(loader, "_user", None)
        if loader.provider == "gcp" or (user is not None and "exec" in user):
            return lambda: refresh_token(loader, configuration)
        return None


def _server_url(url: str, *, tls: bool) -> str:
    """``url`` with a scheme (https if TLS is configured, as client-go defaults), no
    trailing slash."""
    if "://" not in url:
        url = ("https://" if tls else "http://") + url
    return url.rstrip("/")


def _use_token_file(configuration: Configuration, directory: Path) -> bool:
    """Authenticate with the service-account token in ``directory`` (trusting its
    ``ca.crt`` if present), re-read every :data:`TOKEN_REREAD_SECONDS` as it rotates.
    False if there is no token file."""
    token_file = directory / "token"
    if not token_file.is_file():
        return False
    ca_file = directory / "ca.crt"
    if ca_file.is_file():
        configuration.ssl_ca_cert = str(ca_file)
    read_at = -math.inf

    def refresh(conf: Configuration) -> None:  # called before each request's auth
        nonlocal read_at
        if time.monotonic() - read_at >= TOKEN_REREAD_SECONDS:
            conf.api_key["BearerToken"] = "Bearer " + token_file.read_text().strip()
            read_at = time.monotonic()

    refresh(configuration)
    configuration.refresh_api_key_hook = refresh
    return True


def _kubeconfig_exists(path: str) -> bool:
    """Whether any file of a kubeconfig path list (``$KUBECONFIG`` syntax) exists."""
    return any(os.path.exists(os.path.expanduser(p)) for p in path.split(os.pathsep) if p)


async def _log_failure(coro: Awaitable[None], what: str) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("kubernetes: %s failed; credentials will no longer be refreshed", what)


class _Reflector:
    """The list+watch loop of one kind."""

    def __init__(self, source: KubernetesSource, client: ApiClient, sink: ObjectSink,
                 kind: Kind, status: KindStatus) -> None:
        self.source = source
        self.client = client
        self.sink = sink
        self.kind = kind
        self.status = status
        if "/" in kind.api_version:
            self.path = f"/apis/{kind.api_version}/{kind.plural}"
        else:
            self.path = f"/api/{kind.api_version}/{kind.plural}"
        self.backoff = Backoff(source.backoff_initial, source.backoff_max)
        self.label_selector = source.label_selectors.get(kind.name, "")
        shown = f"?labelSelector={self.label_selector}" if self.label_selector else ""
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
        await asyncio.sleep(delay)

    async def _missing(self) -> None:
        """The collection is not served: deliver it empty, synced, and check back later."""
        if not self.status.missing:
            self.status.missing = True
            log.warning("kubernetes: %s is not served by the API server (CRD not installed?);"
                        " treating it as empty%s", self.name,
                        "" if self.source.missing_recheck_interval is None else
                        f", checking again every {self.source.missing_recheck_interval:g}s")
            self.sink.replace(self.kind, [])
            self._mark_synced()
        if self.source.missing_recheck_interval is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.source.missing_recheck_interval)

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
        waited = await self.source.rate_limiter.wait()
        if waited > LONG_THROTTLE_SECONDS:
            log.info("kubernetes: %s: waited %.1fs for the client-side rate limit "
                     "(--k8s-client-qps %g, --k8s-client-burst %d)", self.name, waited,
                     self.source.rate_limiter.qps, self.source.rate_limiter.burst)
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
        timeout = aiohttp.ClientTimeout(total=self.source.request_timeout)
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
        limit = self.source.page_size
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
        timeout_s = self.source.watch_timeout_seconds
        query = [("watch", "true"), ("resourceVersion", self.rv),
                 ("allowWatchBookmarks", "true"), ("timeoutSeconds", timeout_s)]
        # No total timeout: the server ends the stream after timeout_s.  The read timeout
        # (not one byte for longer than the server's own timeout plus a margin) catches
        # a connection that died silently.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.source.request_timeout,
                                        sock_read=timeout_s + 30)
        loop = asyncio.get_running_loop()
        started = loop.time()
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
        if events == 0 and loop.time() - started < SHORT_WATCH_SECONDS:
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


__all__ = [
    "DEFAULT_CLIENT_BURST",
    "DEFAULT_CLIENT_QPS",
    "ENDPOINTSLICE_MANAGED_BY_LABEL",
    "ENDPOINTSLICE_MESH_CONTROLLER",
    "ENDPOINTSLICE_SELECTOR",
    "SERVICE_ACCOUNT_DIR",
    "SERVICE_PROXY_NAME_LABEL",
    "Backoff",
    "KindStatus",
    "KubernetesSource",
    "TokenBucket",
    "default_label_selectors",
    "service_proxy_selector",
]
