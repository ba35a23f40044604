"""An in-process stand-in for a Kubernetes API server (list + watch only).

No kube-apiserver can run on the machines this project is developed and tested on (no
etcd-backed control plane, no container runtime, no downloads), so the Kubernetes source
of the clustermesh-apiserver is tested against :class:`FakeKube`: a small aiohttp HTTP
server, started on a loopback port inside the test's event loop, that serves the read
side of the Kubernetes REST API for a fixed set of resources.  The client under test
reaches it exactly as it would reach a real API server: through a kubeconfig file
(:meth:`FakeKube.write_kubeconfig`) and plain HTTP with a bearer token.

It is *not* a real API server.  What it does reproduce, because the client's correctness
depends on it, are the API conventions of list and watch:

* **Paths.** ``/api/v1/<plural>`` for the core group, ``/apis/<group>/<version>/<plural>``
  for the others, cluster-wide; ``.../namespaces/<ns>/<plural>`` for one namespace of a
  namespaced resource; ``.../<plural>/<name>`` and ``.../namespaces/<ns>/<plural>/<name>``
  for a single object.  Anything else, including a resource whose CRD is not installed,
  is a 404 ``Status`` ("the server could not find the requested resource").  Only GET is
  served (405 otherwise); tests change objects through the Python helpers below.
* **resourceVersion.** One global, monotonically increasing counter (etcd's revision),
  shared by every resource and stamped into ``metadata.resourceVersion`` of every object
  it changes.  Clients must treat it as opaque; it starts at 1000 so nothing confuses it
  with an index.
* **List.** ``{"kind": "<Kind>List", "apiVersion": ..., "metadata": {"resourceVersion",
  "continue", "remainingItemCount"}, "items": [...]}``, items ordered by etcd key
  (namespace, name).  ``limit`` pages the result; the ``continue`` token (base64 JSON of the
  snapshot revision and the last key, like the real one) serves later pages *from the same
  snapshot*, so objects changed between pages do not show through.  A token whose
  snapshot is older than the retained history gets HTTP 410 ``Expired``.  As in the real
  API, items of built-in kinds carry no ``kind``/``apiVersion`` (those of custom resources
  do), while watch event objects always do.
* **Watch.** ``?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=T``
  answers 200 and streams newline-delimited JSON events ``{"type": ..., "object": ...}``
  over chunked transfer encoding: every change after ``N`` replayed from a bounded
  per-resource history, then live changes.  ``N`` older than the history start gets an
  ``ERROR`` event carrying a ``Status`` with code 410, reason ``Expired`` and message
  ``too old resource version: N (M)`` (what the watch cache sends), then the stream ends.
  With no ``resourceVersion`` (or ``0``) the stream starts with a synthetic ``ADDED`` for
  every current object.  ``BOOKMARK`` events (an object with only kind, apiVersion and
  ``metadata.resourceVersion``) are sent every :attr:`FakeKube.bookmark_interval` seconds
  when asked for, carrying the current global revision once every earlier event has been
  written.  After ``timeoutSeconds`` the server ends the stream cleanly.  A ``DELETED``
  event carries the object's last state stamped with the deletion's revision.
* **labelSelector.**  Parsed and matched by a port of apimachinery's ``labels.Parse`` and
  ``Requirement.Matches`` (:class:`LabelSelector`): ``k=v``, ``k==v``, ``k!=v``, ``k``,
  ``!k``, ``k in (a,b)``, ``k notin (a,b)``, ``k>N``, ``k<N``, comma = AND, with the
  same tokenizer, key and value validation; a negative requirement (``!=``, ``notin``,
  ``!k``) matches objects without the label.  A selector that does not parse gets 400
  ``BadRequest`` (list and watch alike, before anything is streamed).  A list returns only
  matching objects (pages are filled with matching objects; ``remainingItemCount`` is
  omitted, as the real server cannot count a filtered remainder).  A watch applies the
  watch cache's rule to every event, replayed or live, comparing the object before and
  after the change: matching both → sent as is; starting to match → ``ADDED``; ceasing to
  match → ``DELETED`` carrying the previous state stamped with the change's revision;
  matching neither → not sent.  Bookmarks are unaffected.

Test helpers: :meth:`create`, :meth:`update`, :meth:`apply`, :meth:`delete` (each emits the
matching watch event), :meth:`compact` (drop history, so older revisions get 410),
:meth:`drop_watches` (abort every watch connection, as a network failure would),
:meth:`install` / :meth:`uninstall` (a CRD appearing or disappearing), :attr:`requests`
(every request received with its query parameters, e.g. :attr:`KubeRequest.label_selector`,
for asserting what the client asked for), :attr:`bookmarks` (every bookmark sent),
:attr:`on_request` (a synchronous hook run before each request is served, to change state
at a precise point of a client's sequence) and :meth:`write_kubeconfig` (``server=``
points it elsewhere, e.g. at a closed port).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import datetime
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


@dataclass(frozen=True, slots=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    builtin: bool = False  # built-in kinds: list items carry no kind/apiVersion

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def ident(self) -> tuple[str, str]:
        return self.group, self.plural


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False, builtin=True)
SERVICES = Resource("", "v1", "services", "Service", True, builtin=True)
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True,
                           builtin=True)
CILIUM_IDENTITIES = Resource("cilium.io", "v2", "ciliumidentities", "CiliumIdentity", False)
CILIUM_ENDPOINTS = Resource("cilium.io", "v2", "ciliumendpoints", "CiliumEndpoint", True)
CILIUM_NODES = Resource("cilium.io", "v2", "ciliumnodes", "CiliumNode", False)
SERVICE_EXPORTS = Resource("multicluster.x-k8s.io", "v1alpha1", "serviceexports",
                           "ServiceExport", True)

#: What a cluster running Cilium without the MCS-API CRDs serves (for our purposes).
DEFAULT_RESOURCES: tuple[Resource, ...] = (
    NAMESPACES, SERVICES, ENDPOINT_SLICES, CILIUM_IDENTITIES, CILIUM_ENDPOINTS, CILIUM_NODES)
ALL_RESOURCES: tuple[Resource, ...] = (*DEFAULT_RESOURCES, SERVICE_EXPORTS)

FIRST_RESOURCE_VERSION = 1000


@dataclass(frozen=True, slots=True)
class KubeRequest:
    """One request as received: ``query`` holds the query parameters (last value wins)."""

    method: str
    path: str
    query: dict[str, str]
    time: float

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")

    @property
    def resource_version(self) -> str | None:
        return self.query.get("resourceVersion")

    @property
    def label_selector(self) -> str | None:
        return self.query.get("labelSelector")


@dataclass(frozen=True, slots=True)
class Bookmark:
    path: str  # the watch request's path
    resource_version: int
    time: float


@dataclass(slots=True)
class _Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj  # state after the change (the last state, for DELETED)
    prev: Obj | None  # state before the change (None for ADDED)


@dataclass(slots=True)
class _Store:
    resource: Resource
    objects: dict[Key, Obj] = field(default_factory=dict)
    history: deque[_Event] = field(default_factory=deque)
    history_start: int = 0  # watches from rv >= this can be served from history
    # The keys in etcd-key order (their _key_str), kept until the next write: pages of a
    # big list are then a bisect and a slice, not a sort of every key per page (a 100k
    # list of 500-item pages took 34 s; bench/apiserver_publish.py measures with it).
    ordered: list[Key] | None = None


# -- label selectors -----------------------------------------------------------------
#
# A port of apimachinery's pkg/labels parser (selector.go: Lexer, Parser, NewRequirement,
# Requirement.Matches), kept to the same grammar, token rules and validation, so that
# a selector the real server rejects is rejected here too and one it accepts selects the
# same objects.

_WHITESPACE = " \t\r\n"
_SPECIAL_CHARS = "=!(),<>"
#: Every operator token.  The lexer takes the longest run of special characters that is
#: one of these ("!=" rather than "!" then "="), as Go's scanSpecialSymbol does.
_OPERATORS = frozenset({"!", "=", "==", "!=", "(", ")", ",", ">", "<"})
_KEYWORDS = frozenset({"in", "notin"})
_ID, _EOS = "identifier", "end of string"
_BINARY_OPERATORS = frozenset({"in", "notin", "=", "==", "!=", ">", "<"})

_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


class SelectorError(ValueError):
    """An invalid label selector (the API server answers 400 BadRequest)."""


def _lex(text: str) -> list[tuple[str, str]]:
    """(token type, literal) pairs; the type is the operator or keyword itself, or
    ``_ID``; the last pair is ``(_EOS, "")``."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i == n:
            tokens.append((_EOS, ""))
            return tokens
        if text[i] in _SPECIAL_CHARS:
            end = i + 1  # every special character alone is an operator
            while end < n and text[i:end + 1] in _OPERATORS:
                end += 1
            tokens.append((text[i:end], text[i:end]))
            i = end
        else:
            j = i
            while j < n and text[j] not in _WHITESPACE and text[j] not in _SPECIAL_CHARS:
                j += 1
            word = text[i:j]
            tokens.append((word if word in _KEYWORDS else _ID, word))
            i = j


def _validate_key(key: str) -> None:
    """validation.IsQualifiedName: ``[prefix/]name``, the prefix a DNS subdomain."""
    parts = key.split("/")
    if len(parts) > 2:
        problem = ("a qualified name must consist of alphanumeric characters, '-', '_' or "
                   "'.', with an optional DNS subdomain prefix and '/'")
    elif len(parts) == 2 and not (0 < len(parts[0]) <= 253
                                  and _DNS1123_SUBDOMAIN_RE.fullmatch(parts[0])):
        problem = "prefix part must be a non-empty lowercase RFC 1123 subdomain"
    elif not (len(parts[-1]) <= 63 and _NAME_RE.fullmatch(parts[-1])):
        problem = ("name part must be non-empty, at most 63 characters, consist of "
                   "alphanumeric characters, '-', '_' or '.', and start and end with an "
                   "alphanumeric character")
    else:
        return
    raise SelectorError(f'key: Invalid value: "{key}": {problem}')


def _validate_value(key: str, value: str) -> None:
    if len(value) > 63 or not _VALUE_RE.fullmatch(value):
        raise SelectorError(
            f'values[0][{key}]: Invalid value: "{value}": a valid label must be an empty '
            "string or consist of at most 63 alphanumeric characters, '-', '_' or '.', and "
            "must start and end with an alphanumeric character")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # "exists", "!" or one of _BINARY_OPERATORS
    values: frozenset[str]

    @classmethod
    def new(cls, key: str, operator: str, values: frozenset[str]) -> Requirement:
        """NewRequirement's checks (the parser already gives each operator the number of
        values it takes): a valid key, valid values, integers for ">" and "<"."""
        _validate_key(key)
        for value in values:
            if operator in (">", "<") and not _is_int64(value):
                raise SelectorError(f'values[0]: Invalid value: "{value}": for \'Gt\', '
                                    "'Lt' operators, the value must be an integer")
            _validate_value(key, value)
        return cls(key, operator, values)

    def matches(self, labels: dict[str, str]) -> bool:
        op, key = self.operator, self.key
        if op in ("in", "=", "=="):
            return key in labels and labels[key] in self.values
        if op in ("notin", "!="):  # an absent label matches a negative requirement
            return key not in labels or labels[key] not in self.values
        if op == "exists":
            return key in labels
        if op == "!":
            return key not in labels
        # ">" / "<": only labels whose value is an integer can match
        if key not in labels or not _is_int64(labels[key]):
            return False
        have, want = int(labels[key]), int(next(iter(self.values)))
        return have > want if op == ">" else have < want


def _is_int64(text: str) -> bool:
    """strconv.ParseInt(text, 10, 64) succeeds."""
    return re.fullmatch(r"[+-]?[0-9]+", text) is not None and -(2**63) <= int(text) < 2**63


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.pos = 0

    def lookahead(self, values: bool = True) -> tuple[str, str]:
        """The next token; where a value or key may come, "in"/"notin" are identifiers."""
        tok, lit = self.tokens[self.pos]
        return (_ID if values and tok in _KEYWORDS else tok), lit

    def consume(self, values: bool = True) -> tuple[str, str]:
        tok, lit = self.lookahead(values)
        self.pos += 1
        return tok, lit

    def parse(self) -> tuple[Requirement, ...]:
        requirements: list[Requirement] = []
        while True:
            tok, lit = self.lookahead()
            if tok == _EOS:
                return tuple(requirements)
            if tok not in (_ID, "!"):
                raise SelectorError(f"found '{lit}', expected: !, identifier, or "
                                    "'end of string'")
            try:
                requirements.append(self.requirement())
            except SelectorError as exc:
                raise SelectorError(f"unable to parse requirement: {exc}") from None
            tok, lit = self.consume()
            if tok == _EOS:
                return tuple(requirements)
            if tok != ",":
                raise SelectorError(f"found '{lit}', expected: ',' or 'end of string'")
            tok, lit = self.lookahead()
            if tok not in (_ID, "!"):
                raise SelectorError(f"found '{lit}', expected: identifier after ','")

    def requirement(self) -> Requirement:
        operator = ""
        tok, lit = self.consume()
        if tok == "!":
            operator = "!"
            tok, lit = self.consume()
        if tok != _ID:
            raise SelectorError(f"found '{lit}', expected: identifier")
        key = lit
        _validate_key(key)
        if self.lookahead()[0] in (_EOS, ","):
            operator = operator or "exists"
        if operator:  # "!k" followed by more than "," or the end fails in parse()
            return Requirement.new(key, operator, frozenset())
        tok, lit = self.consume(values=False)
        if tok not in _BINARY_OPERATORS:
            raise SelectorError(f"found '{lit}', expected: in, notin, =, ==, !=, gt, lt")
        values = self.value_set() if tok in ("in", "notin") else self.exact_value()
        return Requirement.new(key, tok, values)

    def exact_value(self) -> frozenset[str]:
        if self.lookahead()[0] in (_EOS, ","):  # "k=" selects the empty value
            return frozenset({""})
        tok, lit = self.consume()
        if tok != _ID:
            raise SelectorError(f"found '{lit}', expected: identifier")
        return frozenset({lit})

    def value_set(self) -> frozenset[str]:
        tok, lit = self.consume()
        if tok != "(":
            raise SelectorError(f"found '{lit}', expected: '('")
        tok, lit = self.lookahead()
        if tok == ")":  # "k in ()" is the set of the empty value
            self.consume()
            return frozenset({""})
        if tok not in (_ID, ","):
            raise SelectorError(f"found '{lit}', expected: ',', ')' or identifier")
        values: set[str] = set()
        while True:  # parseIdentifiersList: an empty item (",a", "a,,b", "a,") is ""
            tok, lit = self.consume()
            if tok == _ID:
                values.add(lit)
                tok, lit = self.lookahead()
                if tok == ")":
                    self.consume()
                    return frozenset(values)
                if tok != ",":
                    raise SelectorError(f"found '{lit}', expected: ',' or ')'")
            elif tok == ",":
                if not values:
                    values.add("")
                tok, _ = self.lookahead()
                if tok == ")":
                    values.add("")
                    self.consume()
                    return frozenset(values)
                if tok == ",":
                    self.consume()
                    values.add("")
            else:
                raise SelectorError(f"found '{lit}', expected: ',', or identifier")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed ``labelSelector``: the AND of its requirements (none: everything)."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """labels.Parse; raises :class:`SelectorError` where the API server answers 400."""
        return cls(_Parser(text).parse())

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in self.requirements)

    def filter_event(self, event: _Event) -> tuple[str, Obj] | None:
        """What a watch with this selector sends for ``event`` (the watch cache's rule):
        the event as it is while the object matches before and after; ``ADDED`` when it
        starts matching; ``DELETED`` with its previous state, stamped with the event's
        revision, when it stops; nothing when it matches neither before nor after."""
        if self.empty:
            return event.type, event.obj
        now = event.type != "DELETED" and self.matches(event.obj)
        before = event.prev is not None and self.matches(event.prev)
        if now:
            return ("MODIFIED" if before else "ADDED"), event.obj
        if not before:
            return None
        if event.type == "DELETED":
            return "DELETED", event.obj  # already its last state at the deletion's revision
        gone = copy.deepcopy(event.prev)
        assert gone is not None
        gone["metadata"]["resourceVersion"] = str(event.rv)
        return "DELETED", gone


@dataclass(eq=False, slots=True)
class _Watcher:
    resource: Resource
    namespace: str | None
    selector: LabelSelector
    path: str
    request: web.Request
    queue: asyncio.Queue[_Event | None] = field(default_factory=asyncio.Queue)
    dropped: bool = False
    ended: bool = False


def _status(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _status_response(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(_status(code, reason, message), status=code)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    data = json.loads(raw)
    return int(data["rv"]), str(data["start"])


def _key_str(key: Key) -> str:
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


class FakeKube:
    """The fake API server.  ``async with FakeKube() as kube:`` starts it on 127.0.0.1."""

    def __init__(self, resources: Iterable[Resource] = DEFAULT_RESOURCES, *,
                 token: str | None = "fake-kube-token", max_history: int = 1000,
                 bookmark_interval: float = 60.0,
                 default_watch_timeout: float = 1800.0) -> None:
        self._stores: dict[tuple[str, str], _Store] = {}
        self._rv = FIRST_RESOURCE_VERSION
        self.token = token
        self.max_history = max_history
        #: Seconds between two BOOKMARK events of one watch (if it asked for them).
        self.bookmark_interval = bookmark_interval
        #: Watch duration when the client gives no ``timeoutSeconds``.
        self.default_watch_timeout = default_watch_timeout
        self.requests: list[KubeRequest] = []
        self.bookmarks: list[Bookmark] = []
        self.on_request: Callable[[KubeRequest], None] | None = None
        self._watchers: set[_Watcher] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""
        for resource in resources:
            self.install(resource)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a watch handler ends when its client goes away, like the
        # real server (whose request context is cancelled), not at its next write.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5,
                                     handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKube:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def write_kubeconfig(self, path: Path, *, token: str | None = None,
                         context: str = "fake", server: str | None = None) -> Path:
        """Write a kubeconfig for this server (``token`` defaults to the server's;
        ``server``, the URL, to this server's)."""
        user: dict[str, Any] = {}
        if token or self.token:
            user["token"] = token or self.token
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": server or self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": context,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    # -- state helpers ----------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The current global revision."""
        return self._rv

    def install(self, resource: Resource) -> None:
        """Serve ``resource`` from now on (a CRD was created)."""
        if resource.ident not in self._stores:
            self._stores[resource.ident] = _Store(resource, history_start=self._rv)

    def uninstall(self, resource: Resource | str) -> None:
        """Stop serving a resource (its CRD was deleted): its objects are gone and its
        watches end."""
        store = self._store(resource)
        del self._stores[store.resource.ident]
        for w in list(self._watchers):
            if w.resource.ident == store.resource.ident:
                w.ended = True
                w.queue.put_nowait(None)

    def objects(self, resource: Resource | str) -> list[Obj]:
        store = self._store(resource)
        return [copy.deepcopy(store.objects[k]) for k in sorted(store.objects)]

    def get(self, resource: Resource | str, name: str, namespace: str = "") -> Obj | None:
        obj = self._store(resource).objects.get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def create(self, resource: Resource | str, obj: Obj) -> Obj:
        store = self._store(resource)
        obj = self._normalize(store, obj)
        key = self._key(store, obj)
        if key in store.objects:
            raise ValueError(f"{store.resource.plural} {_key_str(key)} already exists")
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["generation"] = 1
        return self._commit(store, "ADDED", key, obj, None)

    def update(self, resource: Resource | str, obj: Obj) -> Obj:
        store = self._store(resource)
        obj = self._normalize(store, obj)
        key = self._key(store, obj)
        prev = store.objects.get(key)
        if prev is None:
            raise KeyError(f"{store.resource.plural} {_key_str(key)} not found")
        meta = obj["metadata"]
        meta["uid"] = prev["metadata"]["uid"]
        meta["creationTimestamp"] = prev["metadata"]["creationTimestamp"]
        meta["generation"] = int(prev["metadata"].get("generation", 1)) + 1
        return self._commit(store, "MODIFIED", key, obj, prev)

    def apply(self, resource: Resource | str, obj: Obj) -> Obj:
        """Create or update."""
        store = self._store(resource)
        key = self._key(store, self._normalize(store, obj))
        return (self.update if key in store.objects else self.create)(resource, obj)

    def delete(self, resource: Resource | str, name: str, namespace: str = "") -> Obj:
        store = self._store(resource)
        key = (namespace if store.resource.namespaced else "", name)
        prev = store.objects.get(key)
        if prev is None:
            raise KeyError(f"{store.resource.plural} {_key_str(key)} not found")
        return self._commit(store, "DELETED", key, copy.deepcopy(prev), prev)

    def compact(self, resource_version: int | None = None) -> None:
        """Forget history up to ``resource_version`` (default: now) for every resource:
        watches and continue tokens from older revisions get 410 Expired."""
        rv = self._rv if resource_version is None else min(resource_version, self._rv)
        for store in self._stores.values():
            while store.history and store.history[0].rv <= rv:
                store.history.popleft()
            store.history_start = max(store.history_start, rv)

    def drop_watches(self) -> int:
        """Abort every open watch connection (no clean end of the chunked body, as when
        the network or the API server fails).  Returns how many were dropped."""
        dropped = 0
        for w in list(self._watchers):
            self._watchers.discard(w)
            w.dropped = True
            transport = w.request.transport
            if transport is not None:
                transport.abort()
            w.queue.put_nowait(None)
            dropped += 1
        return dropped

    def watch_count(self, resource: Resource | str | None = None) -> int:
        """Open watch connections (of ``resource``, or all)."""
        if resource is None:
            return len(self._watchers)
        ident = self._resolve(resource).ident
        return sum(1 for w in self._watchers if w.resource.ident == ident)

    def watch_requests(self, resource: Resource | str) -> list[KubeRequest]:
        """The watch requests received for ``resource`` (cluster-wide or per namespace)."""
        res = self._resolve(resource)
        return [r for r in self.requests if r.watch and self._path_resource(r.path) == res]

    def list_requests(self, resource: Resource | str) -> list[KubeRequest]:
        res = self._resolve(resource)
        return [r for r in self.requests
                if not r.watch and self._path_resource(r.path) == res]

    # -- internals: state ------------------------------------------------------------

    def _resolve(self, resource: Resource | str) -> Resource:
        if isinstance(resource, Resource):
            return resource
        plural, _, group = resource.partition(".")
        for res in ALL_RESOURCES:
            if res.plural == plural and (not group or res.group == group):
                return res
        for store in self._stores.values():
            if store.resource.plural == plural and (not group or store.resource.group == group):
                return store.resource
        raise KeyError(f"unknown resource {resource!r}")

    def _store(self, resource: Resource | str) -> _Store:
        res = self._resolve(resource)
        try:
            return self._stores[res.ident]
        except KeyError:
            raise KeyError(f"resource {res.plural}.{res.group} is not installed") from None

    @staticmethod
    def _normalize(store: _Store, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        res = store.resource
        obj["apiVersion"] = res.api_version
        obj["kind"] = res.kind
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            raise ValueError("metadata.name is required")
        if res.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        return obj

    @staticmethod
    def _key(store: _Store, obj: Obj) -> Key:
        meta = obj["metadata"]
        return (meta.get("namespace", "") if store.resource.namespaced else "", meta["name"])

    def _commit(self, store: _Store, etype: str, key: Key, obj: Obj, prev: Obj | None) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        store.ordered = None
        if etype == "DELETED":
            del store.objects[key]
        else:
            store.objects[key] = obj
        event = _Event(self._rv, etype, obj, prev)
        store.history.append(event)
        while len(store.history) > self.max_history:
            store.history_start = store.history.popleft().rv
        for w in self._watchers:
            if w.resource.ident == store.resource.ident and (
                    w.namespace is None or w.namespace == key[0]):
                w.queue.put_nowait(event)
        return copy.deepcopy(obj)

    def _snapshot(self, store: _Store, rv: int) -> dict[Key, Obj]:
        """The objects of ``store`` as of revision ``rv`` (>= history_start)."""
        state = dict(store.objects)
        for event in reversed(store.history):
            if event.rv <= rv:
                break
            key = self._key(store, event.obj)
            if event.prev is None:
                state.pop(key, None)
            else:
                state[key] = event.prev
        return state

    # -- internals: HTTP --------------------------------------------------------------

    def _parse_path(self, path: str) -> tuple[Resource, str | None, str | None] | None:
        """(resource, namespace, name) for a path this server serves, else None."""
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace: str | None = None
        if len(rest) in (3, 4) and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) not in (1, 2):
            return None
        store = self._stores.get((group, rest[0]))
        if store is None or store.resource.version != version:
            return None
        if namespace is not None and not store.resource.namespaced:
            return None
        name = rest[1] if len(rest) == 2 else None
        if name is not None and namespace is None and store.resource.namespaced:
            return None
        return store.resource, namespace, name

    def _path_resource(self, path: str) -> Resource | None:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, rest = "", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, rest = parts[1], parts[3:]
        else:
            return None
        if len(rest) >= 3 and rest[0] == "namespaces":
            rest = rest[2:]
        for res in (*ALL_RESOURCES, *(s.resource for s in self._stores.values())):
            if rest and res.group == group and res.plural == rest[0]:
                return res
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        req = KubeRequest(request.method, request.path, dict(request.query.items()),
                          time.monotonic())
        self.requests.append(req)
        if self.on_request is not None:
            self.on_request(req)
        if self.token is not None and (
                request.headers.get("Authorization") != f"Bearer {self.token}"):
            return _status_response(401, "Unauthorized", "Unauthorized")
        parsed = self._parse_path(request.path)
        if parsed is None:
            return _status_response(404, "NotFound",
                                    "the server could not find the requested resource")
        if request.method != "GET":
            return _status_response(405, "MethodNotAllowed",
                                    f"{request.method} is not supported by this fake")
        resource, namespace, name = parsed
        store = self._stores[resource.ident]
        if name is not None:
            obj = store.objects.get((namespace or "", name))
            if obj is None:
                return _status_response(
                    404, "NotFound", f'{resource.plural}.{resource.group} "{name}" not found'
                    if resource.group else f'{resource.plural} "{name}" not found')
            return web.json_response(obj)
        try:
            selector = LabelSelector.parse(req.query.get("labelSelector", ""))
        except SelectorError as exc:
            return _status_response(400, "BadRequest", str(exc))
        if req.watch:
            return await self._watch(request, store, namespace, selector)
        return self._list(request, store, namespace, selector)

    def _list(self, request: web.Request, store: _Store, namespace: str | None,
              selector: LabelSelector) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            return _status_response(400, "BadRequest", "invalid limit")
        start = ""
        token = q.get("continue")
        if token:
            try:
                rv, start = _decode_continue(token)
            except (ValueError, KeyError):
                return _status_response(400, "BadRequest", "continue key is not valid")
            if rv < store.history_start:
                return _status_response(
                    410, "Expired",
                    "The provided continue parameter is too old to display a consistent "
                    "list result. You can start a new list without the continue parameter.")
            # Unchanged since the token's snapshot: the snapshot is the store itself.
            changed = bool(store.history) and store.history[-1].rv > rv
            state = self._snapshot(store, rv) if changed else store.objects
        else:
            rv, state = self._rv, store.objects
        if state is store.objects:
            if store.ordered is None:
                store.ordered = sorted(store.objects, key=_key_str)
            ordered = store.ordered
        else:
            ordered = sorted(state, key=_key_str)
        keys: list[Key] = []
        more = None  # the index of the first match beyond the page, if there is one
        for i in range(bisect.bisect_right(ordered, start, key=_key_str) if start else 0,
                       len(ordered)):
            k = ordered[i]
            if (namespace is None or k[0] == namespace) and selector.matches(state[k]):
                if 0 < limit == len(keys):
                    more = i
                    break
                keys.append(k)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if more is not None:
            meta["continue"] = _encode_continue(rv, _key_str(keys[-1]))
            if selector.empty:  # the real server cannot count what a selector leaves
                meta["remainingItemCount"] = (
                    len(ordered) - more if namespace is None
                    else sum(1 for k in ordered[more:] if k[0] == namespace))
        items = []
        for k in keys:
            item = copy.deepcopy(state[k])
            if store.resource.builtin:
                item.pop("apiVersion", None)
                item.pop("kind", None)
            items.append(item)
        res = store.resource
        return web.json_response({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                  "metadata": meta, "items": items})

    async def _watch(self, request: web.Request, store: _Store, namespace: str | None,
                     selector: LabelSelector) -> web.StreamResponse:
        q = request.query
        res = store.resource
        try:
            timeout = float(q["timeoutSeconds"]) if "timeoutSeconds" in q else (
                self.default_watch_timeout)
            rv_param = q.get("resourceVersion") or "0"
            rv = int(rv_param)
        except ValueError:
            return _status_response(400, "BadRequest", "invalid watch parameters")
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")

        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        async def send(etype: str, obj: Obj) -> None:
            line = json.dumps({"type": etype, "object": obj}, separators=(",", ":"))
            await resp.write(line.encode() + b"\n")

        if rv != 0 and rv < store.history_start:
            await send("ERROR", _status(
                410, "Expired", f"too old resource version: {rv} ({store.history_start + 1})"))
            await resp.write_eof()
            return resp

        # Registration and replay happen with no await in between: no event is lost
        # or delivered twice.
        watcher = _Watcher(res, namespace, selector, request.path, request)
        if rv == 0:
            for k in sorted(store.objects):
                if namespace is None or k[0] == namespace:
                    obj = store.objects[k]
                    watcher.queue.put_nowait(_Event(int(obj["metadata"]["resourceVersion"]),
                                                    "ADDED", obj, None))
        else:
            for event in store.history:
                key = self._key(store, event.obj)
                if event.rv > rv and (namespace is None or key[0] == namespace):
                    watcher.queue.put_nowait(event)
        self._watchers.add(watcher)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        try:
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                wait = deadline - now
                if bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and loop.time() >= next_bookmark and watcher.queue.empty():
                        self.bookmarks.append(Bookmark(request.path, self._rv, time.monotonic()))
                        await send("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version,
                                                "metadata": {"resourceVersion": str(self._rv)}})
                        next_bookmark = loop.time() + self.bookmark_interval
                    continue
                if event is None:  # dropped, or the resource was uninstalled
                    break
                if (sent := selector.filter_event(event)) is not None:
                    await send(*sent)
        except (ConnectionResetError, ConnectionError):
            watcher.dropped = True
        finally:
            self._watchers.discard(watcher)
        if not watcher.dropped:
            with contextlib.suppress(ConnectionError):
                await resp.write_eof()
        return resp
