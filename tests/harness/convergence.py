"""The convergence check every reliability test ends with, as a report.

:func:`convergence_report` compares the *whole* local etcd keyspace (not only
``cilium/``) with the exact tree a correct KVStoreMesh must hold for the remotes
configured now (:meth:`harness.mesh.MeshEnv.expected`: cache keys with
byte-identical values, one sync canary per resource the remote's cluster-config
calls for — :mod:`harness.oracle` — and the cached cluster-config) and returns a
:class:`ConvergenceReport`:

* ``missing`` / ``extra`` / ``different`` — keys expected but absent, present but
  not expected, present with another value;
* ``outside`` — keys outside every prefix the daemon may write for the configured
  clusters (its leader lock and replica registrations, :data:`DAEMON_KEYS`, aside):
  ``cilium/cache/<resource>/v1/<cluster>/`` (any resource: one the remote
  does not export is then ``extra``), ``cilium/synced/<cluster>/``
  and ``cilium/cluster-config/<cluster>`` (anything else, ``cilium/state/``
  included, is a key the daemon had no business writing);
* counts, per cluster too, and :meth:`ConvergenceReport.summary` showing the first
  N offending keys with both values (shortened).

:func:`wait_converged` polls until the report is clean (raising with the summary
otherwise) and fails fast if the daemon died.  :class:`WriteAudit` watches the
local keyspace while a test runs and records every write outside the allowed
prefixes, so a key written and deleted again between two checks is caught too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from clustermesh.etcd.client import EtcdClient, Event
from clustermesh.etcd.errors import EtcdError
from clustermesh.etcd.watch import DELETE, Watch
from clustermesh.keys import RESOURCES, cluster_config_key, synced_prefix
from clustermesh.tasks import race

from .mesh import CANARY, DAEMON_KEYS, MeshEnv, value_matches

ALL_KEYS = (b"\x00", b"\x00")  # etcd's "every key" range
_BARRIER = b"harness/write-log-barrier"  # WriteLog's end marker (put, then deleted)


def allowed_prefixes(cluster: str) -> tuple[tuple[bytes, ...], bytes]:
    """``(prefixes, exact key)`` the daemon may write for remote cluster ``cluster``."""
    prefixes = tuple(r.cache_prefix(cluster).encode() for r in RESOURCES)
    return (*prefixes, synced_prefix(cluster).encode()), cluster_config_key(cluster).encode()


def owner(key: bytes, clusters: Iterable[str]) -> str | None:
    """The configured cluster whose allowed prefixes contain ``key`` (None: outside all)."""
    for name in clusters:
        prefixes, exact = allowed_prefixes(name)
        if key == exact or key.startswith(prefixes):
            return name
    return None


async def read_keyspace(client: EtcdClient, page: int = 5000) -> dict[bytes, bytes]:
    """Every key of an etcd (one consistent snapshot)."""
    out: dict[bytes, bytes] = {}
    start, revision = ALL_KEYS[0], 0
    while True:
        resp = await client.range(start, ALL_KEYS[1], revision=revision, limit=page)
        revision = revision or resp.header.revision
        out.update((kv.key, kv.value) for kv in resp.kvs)
        if not resp.more or not resp.kvs:
            return out
        start = resp.kvs[-1].key + b"\x00"


def _short(value: bytes | None, limit: int = 80) -> str:
    if value is None:
        return "<absent>"
    if value == CANARY:
        return "<any RFC3339 time>"
    shown = repr(value[:limit])
    return shown + (f"... ({len(value)} bytes)" if len(value) > limit else "")


@dataclass
class ConvergenceReport:
    clusters: list[str]
    expected: int = 0
    actual: int = 0
    missing: list[bytes] = field(default_factory=list)
    extra: list[bytes] = field(default_factory=list)
    different: list[bytes] = field(default_factory=list)
    outside: list[bytes] = field(default_factory=list)
    per_cluster: dict[str, int] = field(default_factory=dict)
    _expected_values: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    _actual_values: dict[bytes, bytes] = field(default_factory=dict, repr=False)

    @property
    def mismatches(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.different) + len(self.outside)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    @property
    def checked(self) -> int:
        """Keys compared: the union of expected and actual."""
        return len(self._expected_values.keys() | self._actual_values.keys())

    def summary(self, first: int = 10) -> str:
        lines = [f"expected {self.expected} keys, local has {self.actual}: "
                 f"{len(self.missing)} missing, {len(self.extra)} extra, "
                 f"{len(self.different)} different, {len(self.outside)} outside the allowed "
                 f"prefixes of {self.clusters}; per cluster {self.per_cluster}"]
        for what, keys in (("missing", self.missing), ("extra", self.extra),
                           ("different", self.different), ("outside", self.outside)):
            for key in keys[:first]:
                lines.append(f"  {what}: {key!r}: expected "
                             f"{_short(self._expected_values.get(key))}, local has "
                             f"{_short(self._actual_values.get(key))}")
            if len(keys) > first:
                lines.append(f"  ... and {len(keys) - first} more {what}")
        return "\n".join(lines)


async def convergence_report(env: MeshEnv, *,
                             unstorable: Callable[[bytes, bytes], bool] | None = None,
                             tolerate: tuple[bytes, ...] = ()) -> ConvergenceReport:
    """Compare the local keyspace with what the configured remotes hold now.

    ``unstorable(key, value)`` marks expected cache entries the local etcd cannot hold
    (bigger than its request limit): they are expected *absent*.  Local keys starting
    with a prefix in ``tolerate`` (written by the test itself) are ignored.
    """
    clusters = sorted(env.remotes)
    expected = await env.expected()
    if unstorable is not None:
        expected = {k: v for k, v in expected.items() if not unstorable(k, v)}
    ignored = (*DAEMON_KEYS, *tolerate)
    actual = {k: v for k, v in (await read_keyspace(env.local)).items()
              if not k.startswith(ignored)}
    report = ConvergenceReport(clusters=clusters, expected=len(expected), actual=len(actual),
                               _expected_values=expected, _actual_values=actual)
    report.missing = sorted(expected.keys() - actual.keys())
    report.extra = sorted(k for k in actual.keys() - expected.keys()
                          if owner(k, clusters) is not None)
    report.outside = sorted(k for k in actual if owner(k, clusters) is None)
    report.different = sorted(k for k in expected.keys() & actual.keys()
                              if not value_matches(expected[k], actual[k]))
    for key in expected:
        name = owner(key, clusters) or "?"
        report.per_cluster[name] = report.per_cluster.get(name, 0) + 1
    return report


async def wait_converged(env: MeshEnv, timeout: float = 20.0, *,
                         alive: Callable[[], None] | None = None,
                         unstorable: Callable[[bytes, bytes], bool] | None = None,
                         tolerate: tuple[bytes, ...] = (),
                         interval: float = 0.1) -> ConvergenceReport:
    """Poll :func:`convergence_report` until clean; ``AssertionError`` with the summary
    otherwise.  ``alive()`` raises if the daemon died (default: the in-process task)."""
    deadline = time.monotonic() + timeout
    report: ConvergenceReport | None = None
    while True:
        if alive is not None:
            alive()
        else:
            env.check_running()
        try:
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                report = await convergence_report(env, unstorable=unstorable, tolerate=tolerate)
        except (EtcdError, TimeoutError) as exc:  # an etcd restarting under the check
            if time.monotonic() > deadline:
                raise AssertionError(f"no convergence check possible: {exc}") from exc
            await asyncio.sleep(interval)
            continue
        if report.ok:
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged within {timeout}s:\n{report.summary()}")
        await asyncio.sleep(interval)


async def watch_keyspace(client: EtcdClient, on_event: Callable[[Event], None]
                         ) -> asyncio.Task[None]:
    """A task calling ``on_event`` for every event on any key from now on (it ends only
    with an error)."""
    revision = (await client.range(*ALL_KEYS, count_only=True)).header.revision

    async def run() -> None:
        async with Watch(client, key=ALL_KEYS[0], range_end=ALL_KEYS[1],
                         start_revision=revision + 1, prev_kv=False,
                         progress_notify=False) as watch:
            async for batch in watch:
                for event in batch.events:
                    on_event(event)

    return asyncio.create_task(run())


class WriteAudit:
    """Records every PUT on the local etcd outside the allowed prefixes of ``clusters``.

    ``audit = await WriteAudit(env.local, lambda: env.remotes).start()``; after the
    test, ``await audit.stop()`` and ``assert not audit.violations``.  The cluster
    names are read at each event (``clusters`` is a callable), so adding a remote
    while the audit runs is fine.
    """

    def __init__(self, client: EtcdClient, clusters: Callable[[], Iterable[str]], *,
                 tolerate: tuple[bytes, ...] = ()) -> None:
        self.client = client
        self.clusters = clusters
        self.tolerate = tolerate
        self.violations: list[bytes] = []
        self.events = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> WriteAudit:
        self._task = await watch_keyspace(self.client, self._event)
        return self

    def _event(self, event: Event) -> None:
        self.events += 1
        key = bytes(event.kv.key)
        if key.startswith(DAEMON_KEYS) or (self.tolerate and key.startswith(self.tolerate)):
            return
        if owner(key, list(self.clusters())) is None:
            self.violations.append(key)

    @property
    def running(self) -> bool:
        """Whether the audit's watch is still on (it ends only with an error)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> list[bytes]:
        if self._task is not None:
            if self._task.done():
                self._task.result()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.violations


class WriteLog:
    """Every write (put or delete) to an etcd while the block runs, the election's own
    keys (:data:`DAEMON_KEYS`) aside: ``async with WriteLog(client) as writes: ...``, then
    ``writes.keys`` (in order) or ``writes.events`` ((revision, key, type) each).  What
    "a restart writes nothing" is checked with: a global revision would count the leader
    lock taken at every start."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.events: list[tuple[int, bytes, int]] = []
        self._barrier_passed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def keys(self) -> list[bytes]:
        return [key for _, key, _ in self.events]

    def after(self, revision: int) -> list[bytes]:
        """Keys written at a revision above ``revision``."""
        return [key for rev, key, _ in self.events if rev > revision]

    async def __aenter__(self) -> WriteLog:
        self._task = await watch_keyspace(self.client, self._event)
        return self

    def _event(self, event: Event) -> None:
        key = bytes(event.kv.key)
        if key == _BARRIER:
            if event.type == DELETE:
                self._barrier_passed.set()
        elif not key.startswith(DAEMON_KEYS):
            self.events.append((event.kv.mod_revision, key, event.type))

    async def __aexit__(self, *exc: object) -> None:
        """Not before every write committed until now has come through the watch: a put
        and delete of a barrier key (left out of the log) mark the end."""
        assert self._task is not None
        self._barrier_passed.clear()
        await self.client.put(_BARRIER, b"")
        await self.client.delete(_BARRIER)
        async with asyncio.timeout(10):
            first = await race(self._task, self._barrier_passed.wait())
        if first is self._task:
            first.result()  # the watch ended before the barrier: its error
