"""``clustermesh status``: the mesh as every KVStoreMesh sees it.

For each cluster: which remotes are configured (files in its config directory,
when known), connected and ready, with their counts — from its KVStoreMesh's
status API (``GET /v1/cluster``, the ``RemoteCluster`` model).  A summary names
every cluster that is unreachable or not ready, and from where.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clustermesh_tools.clusters.probes import fetch_leader
from clustermesh_tools.clusters.targets import Target


@dataclass
class ClusterStatus:
    target: Target
    models: list[dict[str, Any]] | None  # None: API unreachable
    leader: str | None = None  # with several replicas: the identity of the one leading

    @property
    def remotes(self) -> list[str]:
        names = set(self.target.configured or [])
        names |= {m["name"] for m in self.models or []}
        return sorted(names)

    def model(self, name: str) -> dict[str, Any] | None:
        for m in self.models or []:
            if m.get("name") == name:
                return m
        return None

    @property
    def ready(self) -> bool:
        if self.models is None or self.target.notes:
            return False
        return all((m := self.model(r)) is not None and m.get("ready") for r in self.remotes)


def collect(targets: list[Target]) -> list[ClusterStatus]:
    statuses = []
    for t in targets:
        answer = fetch_leader(t.api)
        leader = None
        if answer is not None and "," in t.api and answer.leadership is not None:
            leader = answer.leadership.leader or "none"
        statuses.append(ClusterStatus(t, answer.models if answer is not None else None,
                                      leader))
    return statuses


def wait(targets: list[Target], *, timeout: float,
         refresh: Callable[[], list[Target]] | None = None) -> list[ClusterStatus]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = collect(targets if refresh is None else refresh())
        if all(s.ready for s in statuses) or time.monotonic() > deadline:
            return statuses
        time.sleep(1.0)


def _frac(n: int, total: int) -> str:
    return f"{n}/{total}"


def format_statuses(statuses: list[ClusterStatus]) -> str:
    lines: list[str] = []
    problems: list[str] = []
    total = sum(len(s.remotes) for s in statuses)
    ready_links = sum(1 for s in statuses for r in s.remotes
                      if (m := s.model(r)) is not None and m.get("ready"))
    lines.append(f"Cluster Mesh: {len(statuses)} clusters, "
                 f"{ready_links}/{total} KVStoreMesh connections ready")
    for s in statuses:
        t = s.target
        ident = f" (id {t.cluster_id})" if t.cluster_id is not None else ""
        for note in t.notes:
            problems.append(f"{t.name}: {note}")
        if s.models is None:
            lines.append(f"{t.name}{ident}: KVStoreMesh status API at {t.api} unreachable"
                         + (f" [{'; '.join(t.notes)}]" if t.notes else ""))
            problems.append(f"{t.name}: KVStoreMesh status API at {t.api} unreachable")
            continue
        remotes = s.remotes
        configured = len(t.configured) if t.configured is not None else len(s.models)
        connected = sum(1 for r in remotes if (m := s.model(r)) and m.get("connected"))
        ready = sum(1 for r in remotes if (m := s.model(r)) and m.get("ready"))
        lines.append(
            f"{t.name}{ident}: {_frac(configured, len(remotes))} remotes configured, "
            f"{_frac(connected, len(remotes))} connected, {_frac(ready, len(remotes))} ready"
            + (f", KVStoreMesh leader {s.leader}" if s.leader is not None else "")
            + (f" [{'; '.join(t.notes)}]" if t.notes else ""))
        for r in remotes:
            m = s.model(r)
            if m is None:
                lines.append(f"   {r}: configured, not loaded by KVStoreMesh yet")
                problems.append(f"{r}: not loaded by {t.name}'s KVStoreMesh")
                continue
            state = "ready" if m.get("ready") else (
                "connected, not ready" if m.get("connected") else "NOT CONNECTED")
            lines.append(
                f"   {r}: {state}, {m.get('num-nodes', 0)} nodes, "
                f"{m.get('num-endpoints', 0)} endpoints, {m.get('num-identities', 0)} "
                f"identities, {m.get('num-shared-services', 0)} services, "
                f"{m.get('num-failures', 0)} failures, "
                # Last, so that what matched the line before still matches.
                f"{m.get('num-endpointslices', 0)} endpointslices")
            if not m.get("ready"):
                lines.append(f"   └  {m.get('status', '')}")
                problems.append(f"{r}: {state.lower()} as seen from {t.name}")
    if problems:
        lines.append("Problems:")
        lines.extend(f"  - {p}" for p in problems)
    else:
        lines.append("All clusters are connected to all clusters and ready.")
    return "\n".join(lines) + "\n"


def statuses_json(statuses: list[ClusterStatus]) -> list[dict[str, Any]]:
    return [{"name": s.target.name, "api": s.target.api, "reachable": s.models is not None,
             "ready": s.ready, "notes": s.target.notes, "remotes": s.models or [],
             **({"kvstoremeshLeader": s.leader} if s.leader is not None else {}),
             **({"metrics": s.target.metrics} if s.target.metrics is not None else {})}
            for s in statuses]


def print_statuses(statuses: list[ClusterStatus], output: str) -> int:
    """Print ``statuses`` as ``output`` (text or json); 0 when every cluster is ready, else 1."""
    if output == "json":
        print(json.dumps(statuses_json(statuses), indent=2))
    else:
        sys.stdout.write(format_statuses(statuses))
    return 0 if all(s.ready for s in statuses) else 1
