"""Collecting snapshots in the background, as the CLI reaches the clusters.

Every ``refresh`` seconds :class:`Collector` asks each target, in parallel (one thread
each: the probes are blocking ``urllib`` calls on short timeouts), its KVStoreMesh
status API — the leader's answer of several replicas, exactly as ``clustermesh
status`` does (:func:`clustermesh_tools.clusters.probes.fetch_leader`) — then that
replica's ``/metrics`` when the target knows its URL.  One dead cluster costs its own
fetch a timeout, never the others' nor the page's: the page always reads the last
complete snapshot.  The target list is asked for again every round, so the local
mesh's process records (a process that died) show up without a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

from clustermesh_tools.clusters.probes import fetch_leader
from clustermesh_tools.clusters.targets import Target

from .promtext import fetch_metrics
from .snapshot import Observation, Snapshot, build_snapshot

__all__ = ["Collector", "observe"]


def _metrics_url(target: Target, address: str | None) -> str | None:
    """The metrics URL of the replica at ``address`` (the n-th of ``target.api`` is the
    process ``kvstoremesh`` for n = 0, else ``kvstoremesh-n``)."""
    if target.metrics is None:
        return None
    replicas = [a.strip() for a in target.api.split(",") if a.strip()]
    index = replicas.index(address) if address in replicas else 0
    return target.metrics.get("kvstoremesh" if index == 0 else f"kvstoremesh-{index}")


def observe(target: Target, *, timeout: float) -> Observation:
    """One round of ``target``: status API, then the answering replica's metrics."""
    answer = fetch_leader(target.api, timeout=timeout)
    address = answer.address if answer is not None else None
    url = _metrics_url(target, address)
    metrics = fetch_metrics(url, timeout=timeout) if url is not None else None
    return Observation(target=target, answered=address,
                       models=answer.models if answer is not None else None,
                       leadership=answer.leadership if answer is not None else None,
                       metrics_url=url, metrics=metrics)


class Collector:
    """The latest :class:`Snapshot` of ``targets()``, refreshed every ``refresh`` s."""

    def __init__(self, targets: Callable[[], list[Target]], *, refresh: float = 2.0,
                 timeout: float = 1.5) -> None:
        self.targets = targets
        self.refresh = refresh
        self.timeout = timeout
        self.snapshot: Snapshot | None = None

    async def collect_once(self) -> Snapshot:
        targets = await asyncio.to_thread(self.targets)
        observations = await asyncio.gather(*(
            asyncio.to_thread(observe, t, timeout=self.timeout) for t in targets))
        self.snapshot = build_snapshot(list(observations), now=dt.datetime.now(dt.UTC),
                                       refresh_seconds=self.refresh)
        return self.snapshot

    async def run(self) -> None:
        """Collect forever (until cancelled), one round every ``refresh`` seconds."""
        while True:
            await self.collect_once()
            await asyncio.sleep(self.refresh)
