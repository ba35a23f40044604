"""The live view's model: one :class:`Snapshot` of the mesh, built from observations.

:func:`build_snapshot` is pure: it turns what was read from each cluster (an
:class:`Observation`: its KVStoreMesh's ``GET /v1/cluster`` answer and, when a metrics
URL is known, one scrape of that replica's ``/metrics``) into the matrix the page
draws.  Rows are **source** clusters (the remote being cached), columns the
**cached-in** clusters (the KVStoreMesh doing the caching):

* cell (source S, cached in C), S ≠ C: C's KVStoreMesh model for remote S — ready,
  counts, its status line; the lag, rejections and heartbeat age of S in C's metrics.
  When C itself is unreachable the whole column is: its cache cannot be read.
* the diagonal (C, C): the cluster itself.  ``unreachable`` when its status API does
  not answer, or when it answers but is not ready and no replica leads (the leader
  lock lives in its own etcd) or its process records say a process is down (the local
  mesh); ``not-ready`` when it is not ready otherwise; else ``ready``.

Cell states: ``ready``, ``not-ready``, ``unreachable``, ``none`` (S is not configured
in C).  Every cell and column says where its data came from (``sources``).  Only
names, states, counts, lag numbers, certificate subjects and not-after times are kept:
never a key, a certificate or a file path.  :meth:`Snapshot.to_json` is the document
``GET /api/v1/mesh`` serves (its schema: :mod:`clustermesh_tools.webview`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from clustermesh.pki import EXPIRY_WARNING
from clustermesh_tools.clusters.targets import Target
from kvstoremesh.snapshot import LEADER, Leadership

from .promtext import Lag, MetricsReading

__all__ = ["SCHEMA", "Cell", "Column", "Observation", "Snapshot", "build_snapshot"]

SCHEMA = "clustermesh-webview/v1"
READY, NOT_READY, UNREACHABLE, NONE = "ready", "not-ready", "unreachable", "none"
_COUNTS = {"nodes": "num-nodes", "endpoints": "num-endpoints",
           "identities": "num-identities", "services": "num-shared-services",
           "endpointslices": "num-endpointslices", "failures": "num-failures"}


@dataclass(frozen=True, slots=True)
class Observation:
    """What was read from one cluster in one round."""

    target: Target
    answered: str | None  # the replica address that answered /v1/cluster; None: none did
    models: list[dict[str, Any]] | None
    leadership: Leadership | None
    metrics_url: str | None  # the answering replica's, when the target knows it
    metrics: MetricsReading | None  # None: no URL known, or the scrape failed


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    api: str
    state: str
    detail: str
    sources: tuple[str, ...]
    metrics_url: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "api": self.api, "state": self.state,
                "detail": self.detail, "metrics": self.metrics_url,
                "sources": list(self.sources)}


@dataclass(frozen=True, slots=True)
class Cell:
    source: str
    cached_in: str
    state: str
    detail: str
    sources: tuple[str, ...]
    counts: dict[str, int] | None = None
    lag: Lag | None = None
    rejections: dict[str, int] | None = None  # by reason; None: no metrics
    heartbeat_age: float | None = None

    def to_json(self) -> dict[str, Any]:
        lag = None if self.lag is None else {
            "count": self.lag.count, "meanSeconds": self.lag.mean_seconds,
            "p99Seconds": self.lag.p99_seconds}
        return {"source": self.source, "cachedIn": self.cached_in, "state": self.state,
                "detail": self.detail, "counts": self.counts, "lag": lag,
                "rejections": self.rejections, "heartbeatAgeSeconds": self.heartbeat_age,
                "sources": list(self.sources)}


@dataclass(frozen=True, slots=True)
class Snapshot:
    generated_at: dt.datetime
    refresh_seconds: float
    rows: tuple[str, ...]
    columns: tuple[Column, ...]
    cells: tuple[Cell, ...]
    problems: tuple[tuple[str, str], ...]  # (cluster, text)
    certificates: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA,
                "generatedAt": self.generated_at.isoformat(timespec="seconds"),
                "refreshSeconds": self.refresh_seconds,
                "rows": list(self.rows),
                "columns": [c.to_json() for c in self.columns],
                "cells": [c.to_json() for c in self.cells],
                "problems": [{"cluster": c, "text": t} for c, t in self.problems],
                "certificates": list(self.certificates)}


def _api_source(o: Observation) -> str:
    where = o.answered or o.target.api
    return f"{o.target.name}'s KVStoreMesh status API {where}, GET /v1/cluster"


def _metrics_source(o: Observation) -> str:
    if o.metrics_url is None:
        return (f"no metrics URL known for {o.target.name}'s KVStoreMesh "
                "(a cluster directory records only its status API): lag, rejections "
                "and certificates not shown")
    if o.metrics is None:
        return f"metrics {o.metrics_url} unreachable"
    return f"metrics {o.metrics_url}"


def _column(o: Observation) -> Column:
    t = o.target
    sources = [_api_source(o), _metrics_source(o)]
    if t.notes:
        sources.append("the local mesh's process records (state.json)")
    notes = "; ".join(t.notes)
    if o.models is None:
        detail = f"KVStoreMesh status API at {t.api} unreachable"
        return Column(t.name, t.api, UNREACHABLE, f"{detail}; {notes}" if notes else detail,
                      tuple(sources), o.metrics_url)
    leads = o.leadership is None or o.leadership.role == LEADER
    nobody_leads = o.leadership is not None and not leads and o.leadership.leader is None
    if o.metrics is not None and o.metrics.ready is not None:
        ready = o.metrics.ready
    else:
        ready = leads and all(m.get("ready") for m in o.models)
    why = [] if o.leadership is None else [o.leadership.describe()]
    if ready and not notes:
        return Column(t.name, t.api, READY, "; ".join(["ready", *why]), tuple(sources),
                      o.metrics_url)
    if nobody_leads:
        why.append("no replica leads: the leader lock is in its own etcd, out of reach")
    state = UNREACHABLE if (not ready and (nobody_leads or notes)) else NOT_READY
    detail = "; ".join(["KVStoreMesh not ready" if not ready else "KVStoreMesh ready", *why,
                        *t.notes])
    return Column(t.name, t.api, state, detail, tuple(sources), o.metrics_url)


def _cell(source: str, o: Observation, col: Column) -> Cell:
    if source == o.target.name:
        return Cell(source, source, col.state, col.detail, col.sources)
    model = next((m for m in o.models or [] if m.get("name") == source), None)
    configured = o.target.configured is not None and source in o.target.configured
    m = o.metrics
    sources = (f"{_api_source(o)}: the model of {source}", _metrics_source(o))
    extra: dict[str, Any] = {}
    if m is not None:
        extra = {"lag": m.lag.get(source), "rejections": m.rejections.get(source, {}),
                 "heartbeat_age": m.heartbeat_age.get(source)}
    counts = None if model is None else {k: int(model.get(v, 0)) for k, v in _COUNTS.items()}
    if col.state == UNREACHABLE:
        return Cell(source, o.target.name, UNREACHABLE,
                    f"cached in {o.target.name}, which is unreachable: {col.detail}",
                    sources, counts, **extra)
    if model is None:
        if configured:
            return Cell(source, o.target.name, NOT_READY,
                        f"configured, not loaded by {o.target.name}'s KVStoreMesh",
                        sources, None, **extra)
        return Cell(source, o.target.name, NONE, f"not configured in {o.target.name}",
                    sources, None, **extra)
    if model.get("ready"):
        return Cell(source, o.target.name, READY, str(model.get("status", "ready")),
                    sources, counts, **extra)
    prefix = "connected, not ready" if model.get("connected") else "not connected"
    return Cell(source, o.target.name, NOT_READY, f"{prefix}: {model.get('status', '')}",
                sources, counts, **extra)


def _certificates(observations: list[Observation], now: dt.datetime) -> list[dict[str, Any]]:
    out = []
    for o in observations:
        for c in (o.metrics.certificates if o.metrics is not None else []):
            not_after = dt.datetime.fromtimestamp(c.not_after, dt.UTC)
            left = not_after - now
            out.append({"seenBy": o.target.name, "cluster": c.cluster, "role": c.role,
                        "subject": c.subject,
                        "notAfter": not_after.isoformat(timespec="seconds"),
                        "daysLeft": round(left.total_seconds() / 86400, 1),
                        "expiring": left < EXPIRY_WARNING})
    return sorted(out, key=lambda c: (c["notAfter"], c["seenBy"], c["cluster"]))


def _problems(observations: list[Observation], columns: list[Column],
              cells: list[Cell]) -> list[tuple[str, str]]:
    out = [(c.name, f"{c.name}: {c.state}: {c.detail}")
           for c in columns if c.state != READY]
    unreachable = {c.name for c in columns if c.state == UNREACHABLE}
    out += [(c.source, f"{c.source} cached in {c.cached_in}: {c.state}: {c.detail}")
            for c in cells
            if c.source != c.cached_in and c.state == NOT_READY]
    for o in observations:
        if o.metrics_url is not None and o.metrics is None and o.models is not None:
            out.append((o.target.name, f"{o.target.name}: metrics {o.metrics_url} unreachable"))
        if o.metrics is None or o.target.name in unreachable:
            continue
        out += [(o.target.name, f"{o.target.name}'s KVStoreMesh: mesh problem {kind} ({n})"
                 + (f" ({cluster})" if cluster else "")) for cluster, kind, n in o.metrics.problems]
    return out


def build_snapshot(observations: list[Observation], *, now: dt.datetime,
                   refresh_seconds: float) -> Snapshot:
    """The matrix, problems and certificates of one round of ``observations``."""
    names = [o.target.name for o in observations]
    rows = list(names)
    for o in observations:
        for name in [*(o.target.configured or []), *(m.get("name") for m in o.models or [])]:
            if isinstance(name, str) and name not in rows:
                rows.append(name)
    columns = [_column(o) for o in observations]
    cells = [_cell(source, o, col) for source in rows
             for o, col in zip(observations, columns, strict=True)]
    certificates = _certificates(observations, now)
    problems = _problems(observations, columns, cells)
    problems += [(c["cluster"], f"certificate {c['subject']} ({c['role']}, {c['cluster']}) "
                  f"seen by {c['seenBy']} expires {c['notAfter']}")
                 for c in certificates if c["expiring"]]
    return Snapshot(now, refresh_seconds, tuple(rows), tuple(columns), tuple(cells),
                    tuple(problems), tuple(certificates))
