"""What KVStoreMesh reports about itself: readiness, the status model, its text form.

* :class:`Readiness` — Cilium's sync waiter.  The daemon is ready once every
  remote cluster known at start-up has all its resources synced locally.  A
  remote that has not connected within ``per_cluster_ready_timeout`` is dropped
  from the wait; after ``global_ready_timeout`` the daemon is ready regardless.
  Once ready it stays ready (readiness gates agents' first connection; a later
  remote failure is reported per cluster, not by flapping the pod).
* :func:`remote_cluster_model` — Cilium's ``RemoteCluster`` REST model
  (``GET /v1/cluster``), field names as in ``api/v1/openapi.yaml``; plus, ours
  (Cilium main's spelling is unverified), ``num-endpointslices``,
  ``synced.endpointslices`` and ``config.endpointslices-export-mode``.
* :func:`format_status` — the text of ``kvstoremesh-dbg status``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IDENTITIES,
    NODES,
    SERVICE_EXPORTS,
    SERVICES,
    Resource,
)

from .resources import Reflection, reflection

if TYPE_CHECKING:
    from .mesh import KVStoreMesh
    from .remote import RemoteCluster


class Readiness:
    def __init__(self, mesh: KVStoreMesh) -> None:
        self.mesh = mesh
        self._ready_since: float | None = None

    def check(self) -> tuple[bool, list[str]]:
        """(ready, what is being waited for — or why it is ready)."""
        mesh = self.mesh
        options = mesh.options
        if self._ready_since is not None:
            return True, [f"ready since {self._ready_since - mesh.started_at:.1f}s after start"]
        elapsed = time.monotonic() - mesh.started_at
        waiting: list[str] = []
        notes: list[str] = []
        if not mesh.local_connected:
            waiting.append("local etcd: not connected")
        elif not mesh.config_ready.is_set():
            waiting.append("config directory: not read yet")
        for name in sorted(mesh.initial_clusters):
            remote = mesh.remotes.get(name)
            if remote is None or remote.ready:
                continue
            if not remote.state.ever_connected and elapsed > options.per_cluster_ready_timeout:
                notes.append(f"{name}: not waited for (no connection within "
                             f"{options.per_cluster_ready_timeout:g}s)")
                continue
            waiting.append(f"{name}: {waiting_for(remote)}")
        if not waiting:
            self._ready_since = time.monotonic()
            return True, notes
        if elapsed > options.global_ready_timeout and mesh.config_ready.is_set():
            self._ready_since = time.monotonic()
            return True, [f"global ready timeout ({options.global_ready_timeout:g}s) elapsed",
                          *waiting]
        return False, waiting + notes


def waiting_for(remote: RemoteCluster) -> str:
    s = remote.state
    if not s.connected:
        return f"not connected ({s.status})"
    if not s.config_retrieved:
        return f"cluster configuration not retrieved ({s.status})"
    if not s.registered:
        return "reflectors not started"
    pending = [name for name, r in remote.reflectors.items() if not r.synced.is_set()]
    return "waiting for " + ", ".join(pending) + " to sync" if pending else "ready"


def _rfc3339_millis(unix: float) -> str:
    """go-openapi strfmt.DateTime encoding."""
    moment = datetime.fromtimestamp(unix, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# Resources whose "synced" entry is null when they are not mirrored from the remote
# (or its config is not known yet), as Cilium's nullable "service-exports"; the others
# are plain booleans in Cilium's model: true once their cache canary is written.
_NULLABLE_SYNCED = (SERVICE_EXPORTS, ENDPOINT_SLICES)
# The keys of the model's "synced" object, in Cilium's order.
_SYNCED_KEYS: dict[Resource, str] = {
    NODES: "nodes", SERVICES: "services", SERVICE_EXPORTS: "service-exports",
    IDENTITIES: "identities", ENDPOINTS: "endpoints", ENDPOINT_SLICES: "endpointslices"}


def _synced(remote: RemoteCluster, resource: Resource) -> bool | None:
    config = remote.state.config
    if resource in _NULLABLE_SYNCED and (
            config is None or reflection(resource, config) is not Reflection.RUN):
        return None
    return remote.synced(resource.name)


def remote_cluster_model(remote: RemoteCluster) -> dict[str, Any]:
    s = remote.state
    config = s.config
    counts = {name: r.cached_keys for name, r in remote.reflectors.items()}
    model: dict[str, Any] = {
        "name": remote.name,
        "ready": remote.ready,
        "connected": s.connected,
        "status": s.status,
        "num-nodes": counts.get(NODES.name, 0),
        "num-shared-services": counts.get(SERVICES.name, 0),
        "num-service-exports": counts.get(SERVICE_EXPORTS.name, 0),
        "num-identities": counts.get(IDENTITIES.name, 0),
        "num-endpoints": counts.get(ENDPOINTS.name, 0),
        "num-endpointslices": counts.get(ENDPOINT_SLICES.name, 0),
        "num-failures": s.failures,
        "synced": {key: _synced(remote, r) for r, key in _SYNCED_KEYS.items()},
        "config": {
            "required": True,
            "retrieved": s.config_retrieved,
            "cluster-id": config.id if config is not None else 0,
            "kvstoremesh": config.cached if config is not None else False,
            "sync-canaries": config.synced_canaries if config is not None else False,
            "service-exports-enabled": (config.service_exports_enabled
                                        if config is not None else None),
            "endpointslices-export-mode": (config.endpoint_slices_export_mode
                                           if config is not None else ""),
        },
    }
    if s.last_failure is not None:
        model["last-failure"] = _rfc3339_millis(s.last_failure)
    if remote.rejections.total:
        # Ours, not Cilium's: what validation kept out of the cache, and recent examples.
        model["rejected-entries"] = {
            "total": remote.rejections.total,
            "latest": [{"resource": r.resource, "key": r.key, "reason": r.reason}
                       for r in remote.rejections.latest],
        }
    return model


def status_models(mesh: KVStoreMesh) -> list[dict[str, Any]]:
    models = [remote_cluster_model(r) for _, r in sorted(mesh.remotes.items())]
    by_cluster: dict[str, list[str]] = {}
    for problem in mesh.problems():
        by_cluster.setdefault(problem.cluster, []).append(problem.message)
    for model in models:
        if model["name"] in by_cluster:
            # Ours, not Cilium's: mesh misconfigurations this cluster is part of.
            model["problems"] = by_cluster[model["name"]]
    return models


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


def format_status(models: list[dict[str, Any]], *, verbose: bool = False,
                  now: datetime | None = None) -> str:
    """Cilium's ``kvstoremesh-dbg status`` text for a list of RemoteCluster models."""
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
        for key in ("service-exports", "endpointslices"):
            if synced.get(key) is not None:
                sync += f", {key}={_b(synced[key])}"
        lines.append(sync)
        rejected = m.get("rejected-entries")
        if rejected:
            examples = ", ".join(f"{r['resource']} {r['key']!r}: {r['reason']}"
                                 for r in rejected["latest"])
            lines.append(f"   └  rejected entries: {rejected['total']} (latest: {examples})")
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
