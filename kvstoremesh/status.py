"""What KVStoreMesh reports about itself: readiness, the status model, its text form.

Everything here reads frozen snapshots (:class:`~kvstoremesh.snapshot.RemoteStatus`),
never a live remote: each entry point takes one snapshot per remote per call, so what
one answer says of a remote is consistent, and this module imports neither the mesh
nor the remotes (no import cycle; unit tests feed it made-up snapshots).  What it needs
of the mesh is declared here, as the Protocols :class:`ReadinessSource` and
:class:`StatusSource`, which :class:`~kvstoremesh.mesh.KVStoreMesh` satisfies.

* :class:`Readiness` — Cilium's sync waiter.  The daemon is ready once every
  remote cluster known at start-up has all its resources synced locally.  A
  remote that has not connected within ``per_cluster_timeout`` is dropped
  from the wait; after ``global_timeout`` the daemon is ready regardless.
  Once ready it stays ready (readiness gates agents' first connection; a later
  remote failure is reported per cluster, not by flapping the pod).  Its timers
  read the mesh's :class:`~clustermesh.clock.Clock`.
* :func:`remote_cluster_model` — Cilium's ``RemoteCluster`` REST model
  (``GET /v1/cluster``), field names as in ``api/v1/openapi.yaml``; plus, ours
  (Cilium main's spelling is unverified), ``num-endpointslices``,
  ``synced.endpointslices`` and ``config.endpointslices-export-mode``.  Its
  per-resource keys are :data:`~kvstoremesh.resources.RULES`' ``count_name`` and
  ``status_name``, in that order (Cilium's).
* :func:`standby_readiness` — when a replica that does not lead is ready.
* :func:`format_status` — the text of ``kvstoremesh-dbg status``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from clustermesh.clock import REAL_CLOCK, Clock

from .diagnostics import Problem
from .resources import RULES, Reflection, ResourceRules
from .snapshot import Leadership, RemoteStatus


class ReadinessSource(Protocol):
    """The mesh as :class:`Readiness` sees it."""

    @property
    def started_at(self) -> float:
        """Clock time the daemon started (the ready timeouts count from it)."""
        ...

    @property
    def local_connected(self) -> bool: ...

    @property
    def config_ready(self) -> asyncio.Event:
        """Set once the config directory has been read a first time."""
        ...

    @property
    def initial_clusters(self) -> Collection[str]:
        """The remotes named by that first read: the ones readiness waits for."""
        ...


class StatusSource(Protocol):
    """The mesh as the status API (:func:`status_models`) sees it."""

    def remotes_status(self) -> Mapping[str, RemoteStatus]:
        """One snapshot of every running remote, by name, in name order."""
        ...

    def problems(self, remotes: Mapping[str, RemoteStatus]) -> list[Problem]:
        """The mesh's misconfigurations, as of the snapshots ``remotes``."""
        ...


class Readiness:
    def __init__(self, source: ReadinessSource, *, per_cluster_timeout: float,
                 global_timeout: float, clock: Clock = REAL_CLOCK) -> None:
        self.source = source
        self.per_cluster_timeout = per_cluster_timeout
        self.global_timeout = global_timeout
        self._clock = clock
        self._ready_since: float | None = None

    @property
    def ready_since(self) -> float | None:
        """Clock time of the first check that found the mesh ready (it stays ready)."""
        return self._ready_since

    def check(self, remotes: Mapping[str, RemoteStatus]) -> tuple[bool, list[str]]:
        """(ready, what is being waited for — or why it is ready), given one snapshot of
        each running remote (by name; the caller's, so that what it reports beside, e.g.
        problems, agrees with it)."""
        source = self.source
        if self._ready_since is not None:
            return True, [f"ready since {self._ready_since - source.started_at:.1f}s after start"]
        now = self._clock.monotonic()
        elapsed = now - source.started_at
        config_read = source.config_ready.is_set()
        waiting: list[str] = []
        notes: list[str] = []
        if not source.local_connected:
            waiting.append("local etcd: not connected")
        elif not config_read:
            waiting.append("config directory: not read yet")
        for name in sorted(source.initial_clusters):
            status = remotes.get(name)
            if status is None or status.ready:
                continue
            if not status.ever_connected and elapsed > self.per_cluster_timeout:
                notes.append(f"{name}: not waited for (no connection within "
                             f"{self.per_cluster_timeout:g}s)")
                continue
            waiting.append(f"{name}: {waiting_for(status)}")
        if not waiting:
            self._ready_since = now
            return True, notes
        if elapsed > self.global_timeout and config_read:
            self._ready_since = now
            return True, [f"global ready timeout ({self.global_timeout:g}s) elapsed",
                          *waiting]
        return False, waiting + notes

    def next_timeout(self) -> float | None:
        """Seconds until a ready timeout next runs out — a little past it, as each
        counts only once *more* than its time has elapsed — or None when both have (the
        verdict then changes only with the remotes)."""
        elapsed = self._clock.monotonic() - self.source.started_at
        ahead = [t for t in (self.per_cluster_timeout, self.global_timeout) if t >= elapsed]
        return min(ahead) - elapsed + _PAST_TIMEOUT if ahead else None


def standby_readiness(leadership: Leadership, *, listed: bool) -> tuple[bool, list[str]]:
    """(ready, why not) of a replica that does not lead: ready once it has ``listed`` the
    cache *behind another leader*.  One about to take a free lock (a lone replica
    starting, or its own lock key already in place) is not: it is ready once it has
    synced, as a leader, as upstream's."""
    behind = leadership.leader is not None and leadership.leader_lease != leadership.lease
    if not listed:
        return False, ["local etcd: not listed yet"]
    if not behind:
        return False, ["no other replica leads: taking the lock"]
    return True, []


# How far past a ready timeout the readiness watcher looks again.
_PAST_TIMEOUT = 0.01


def waiting_for(status: RemoteStatus) -> str:
    if not status.connected:
        return f"not connected ({status.status})"
    if not status.config_retrieved:
        return f"cluster configuration not retrieved ({status.status})"
    if not status.registered:
        return "reflectors not started"
    pending = status.pending()
    return "waiting for " + ", ".join(pending) + " to sync" if pending else "ready"


def _rfc3339_millis(unix: float) -> str:
    """go-openapi strfmt.DateTime encoding."""
    moment = datetime.fromtimestamp(unix, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _synced(status: RemoteStatus, rules: ResourceRules) -> bool | None:
    """A resource's entry of the model's ``synced``: true once its cache canary is
    written; null for a nullable one not mirrored from the remote (or while its config
    is not known), as Cilium's ``service-exports``."""
    if rules.nullable_synced and (status.config is None
                                  or rules.reflection(status.config) is not Reflection.RUN):
        return None
    reflector = status.reflector(rules.resource)
    return reflector is not None and reflector.synced


def remote_cluster_model(status: RemoteStatus) -> dict[str, Any]:
    config = status.config
    model: dict[str, Any] = {
        "name": status.name,
        "ready": status.ready,
        "connected": status.connected,
        "status": status.status,
    }
    for rules in RULES:
        reflector = status.reflector(rules.resource)
        model[rules.count_name] = reflector.cached_keys if reflector is not None else 0
    model["num-failures"] = status.failures
    model["synced"] = {rules.status_name: _synced(status, rules) for rules in RULES}
    model["config"] = {
        "required": True,
        "retrieved": status.config_retrieved,
        "cluster-id": config.id if config is not None else 0,
        "kvstoremesh": config.cached if config is not None else False,
        "sync-canaries": config.synced_canaries if config is not None else False,
        "service-exports-enabled": (config.service_exports_enabled
                                    if config is not None else None),
        "endpointslices-export-mode": (config.endpoint_slices_export_mode
                                       if config is not None else ""),
    }
    if status.last_failure is not None:
        model["last-failure"] = _rfc3339_millis(status.last_failure)
    if status.rejected_total:
        # Ours, not Cilium's: what validation kept out of the cache, and recent examples.
        model["rejected-entries"] = {
            "total": status.rejected_total,
            "latest": [{"resource": r.resource, "key": r.key, "reason": r.reason}
                       for r in status.rejected_latest],
        }
    return model


def status_models(source: StatusSource) -> list[dict[str, Any]]:
    """``GET /v1/cluster``: one model per remote, in name order, from one snapshot each."""
    remotes = source.remotes_status()
    models = [remote_cluster_model(remotes[name]) for name in sorted(remotes)]
    by_cluster: dict[str, list[str]] = {}
    for problem in source.problems(remotes):
        by_cluster.setdefault(problem.cluster, []).append(problem.message)
    for model in models:
        if model["name"] in by_cluster:
            # Ours, not Cilium's: mesh misconfigurations this cluster is part of.
            model["problems"] = by_cluster[model["name"]]
    return models


# The "synced" entries shown only when not null, in the model's order.
_NULLABLE_KEYS = tuple(rules.status_name for rules in RULES if rules.nullable_synced)


def _since(last_failure: str | None, now: datetime) -> str:
    if not last_failure:
        return "never"
    moment = datetime.strptime(last_failure, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s ago"
    return f"{seconds // 3600}h{seconds % 3600 // 60}m ago"


# The response header of ``/v1/cluster`` with this replica's Leadership.model() as JSON.
LEADERSHIP_HEADER = "Kvstoremesh-Leader-Election"


def format_status(models: list[dict[str, Any]], *, verbose: bool = False,
                  now: datetime | None = None, leadership: Leadership | None = None) -> str:
    """Cilium's ``kvstoremesh-dbg status`` text for a list of RemoteCluster models; then,
    ours, a ``Leader election:`` line when the daemon said its role."""
    now = now or datetime.now(UTC)
    ready = sum(1 for m in models if m.get("ready"))
    lines = [f"KVStoreMesh:\t{ready}/{len(models)} clusters ready"]
    for m in models:
        state = "ready" if m.get("ready") else "not-ready"
        lines.append(
            f"   {m['name']}: {state}, {m['num-nodes']} nodes, {m['num-endpoints']} endpoints, "
            f"{m['num-identities']} identities, {m['num-shared-services']} services, "
            f"{m['num-service-exports']} MCS-API service exports, "
            f"{m['num-failures']} reconnections (last: {_since(m.get('last-failure'), now)}), "
            # Last, so that what matched Cilium's line still matches; .get: older daemons.
            f"{m.get('num-endpointslices', 0)} endpointslices")
        for problem in m.get("problems", ()):
            lines.append(f"   └  problem: {problem}")
        if m.get("ready") and not verbose:
            continue
        lines.append(f"   └  {m['status']}")
        lines.append(f"   └  remote configuration: {_config_text(m.get('config'))}")
        synced = m["synced"]
        sync = (f"   └  synchronization status: nodes={_b(synced['nodes'])}, "
                f"endpoints={_b(synced['endpoints'])}, identities={_b(synced['identities'])}, "
                f"services={_b(synced['services'])}")
        # As Cilium: only the resources this remote has (None: not mirrored from it).
        for key in _NULLABLE_KEYS:
            if synced.get(key) is not None:
                sync += f", {key}={_b(synced[key])}"
        lines.append(sync)
        rejected = m.get("rejected-entries")
        if rejected:
            examples = ", ".join(f"{r['resource']} {r['key']!r}: {r['reason']}"
                                 for r in rejected["latest"])
            lines.append(f"   └  rejected entries: {rejected['total']} (latest: {examples})")
    if leadership is not None:
        lines.append(f"Leader election:\t{leadership.describe()}")
    return "\n".join(lines) + "\n"


def _config_text(config: dict[str, Any] | None) -> str:
    """Cilium's "remote configuration" text: the details only once the config is retrieved."""
    if config is None:
        return "expected=unknown, retrieved=unknown"
    text = f"expected={_b(config['required'])}, retrieved={_b(config['retrieved'])}"
    if config["retrieved"]:
        exports = config.get("service-exports-enabled")
        exports_text = "unsupported" if exports is None else (
            "enabled" if exports else "disabled")
        text += (f", cluster-id={config['cluster-id']}, kvstoremesh={_b(config['kvstoremesh'])}, "
                 f"sync-canaries={_b(config['sync-canaries'])}, service-exports={exports_text}")
    return text


def _b(value: object) -> str:
    return "true" if value else "false"
