"""What ends a session: the checks that run beside a remote's reflectors.

A session of :class:`~kvstoremesh.remote.RemoteCluster` trusts its connection only
while these hold; each runs as a task of the session's TaskGroup and raises
:class:`SessionFailure` when it does not, which ends the session (a new one
reconnects, lists and diffs everything again):

* :class:`Heartbeat` — the remote's ``cilium/.heartbeat`` changed, or data arrived,
  within ``--heartbeat-timeout`` (Cilium: receipt time counts, not the value).  This
  is what notices a remote that is reachable but dead, or a blackholed link whose
  TCP connection has not failed yet.
* :func:`check_status` — every ``status_check_interval`` the remote answers a status
  request (three failures in a row end the session), still with the etcd cluster ID
  the session pinned, and no other remote has claimed the same cluster ID meanwhile.
* :func:`watch_config_change` — the remote still publishes the cluster-config the
  session was built from (a different one changes what is reflected and how).

Beside them, :class:`CanaryWatcher` follows the remote's sync canaries, which
reflectors of a remote with ``syncedCanaries`` wait for before listing.

The watches iterate :func:`~clustermesh.etcd.listwatch.list_and_watch`: a compaction
or a changed etcd cluster ID behind the endpoints relists, never fails a check.
Every wait and time read goes through the session's :class:`~clustermesh.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from clustermesh.clock import Clock
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.errors import EtcdError
from clustermesh.etcd.listwatch import Changes, Page, list_and_watch
from clustermesh.etcd.watch import PUT
from clustermesh.keys import HEARTBEAT_KEY, cluster_config_key

from .diagnostics import ClusterIds, Problem, duplicate_id_problem

STATUS_CHECK_ERRORS = 3  # status requests failing in a row that end a session


class SessionFailure(Exception):
    """A check failed (heartbeat, cluster ID, config change): reconnect."""


class ConfigRefused(SessionFailure):
    """The remote's cluster-config does not fit our mesh; ``problem`` says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class CanaryWatcher:
    """Tracks which sync canaries a remote has written (``cilium/synced/<c>/...``)."""

    def __init__(self) -> None:
        self._events: dict[bytes, asyncio.Event] = {}

    def _event(self, key: bytes) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    async def wait_for(self, key: bytes) -> None:
        await self._event(key).wait()

    async def run(self, remote: EtcdClient, prefix: bytes) -> None:
        async with contextlib.aclosing(list_and_watch(remote, prefix)) as items:
            async for item in items:
                if isinstance(item, Page):
                    for kv in item.kvs:
                        self._event(kv.key).set()
                elif isinstance(item, Changes):
                    for event in item.events:
                        # A canary never "un-syncs" a running reflector; deletes are ignored.
                        if event.type == PUT:
                            self._event(event.kv.key).set()


class Heartbeat:
    """When a remote last showed it is alive, across sessions (for the status)."""

    def __init__(self, *, timeout: float, clock: Clock) -> None:
        self._timeout = timeout
        self.last: float | None = None  # clock time the heartbeat key last changed
        self._clock = clock

    async def watch(self, remote: EtcdClient, *, data_received: Callable[[], float]) -> None:
        """Raise :class:`SessionFailure` once neither the heartbeat nor any data (the
        latest ``data_received()``, clock time) arrived for ``timeout`` seconds."""
        # Like Cilium: the connection counts as a heartbeat.
        self.last = self._clock.monotonic()
        task = asyncio.create_task(self._follow(remote))
        try:
            while True:
                await self._clock.sleep(min(self._timeout / 4, 5.0))
                if task.done():
                    task.result()  # re-raise the watch's error
                # Data arriving counts too: on a slow link the heartbeat events queue
                # behind a long initial list, which must not end the session.
                age = self._clock.monotonic() - max(self.last, data_received())
                if age > self._timeout:
                    raise SessionFailure(
                        f"{age:.0f}s since last heartbeat update has been received "
                        f"(limit {self._timeout:.0f}s)")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, EtcdError):
                await task

    async def _follow(self, remote: EtcdClient) -> None:
        async with contextlib.aclosing(list_and_watch(remote, HEARTBEAT_KEY.encode(),
                                                      prefix=False)) as items:
            async for item in items:
                # Receipt time of a change, not the value (the remote's clock is not ours);
                # the listed value is from before the session, the connection counted.
                if isinstance(item, Changes):
                    self.last = self._clock.monotonic()


async def check_status(remote: EtcdClient, *, name: str, pinned: int, interval: float,
                       clock: Clock, cluster_ids: ClusterIds, cluster_id: int,
                       report: Callable[[str], None]) -> None:
    """Every ``interval``: the remote answers with the etcd cluster ID ``pinned``, and
    no other remote claims ``cluster_id``; ``report`` gets the status line each time."""
    errors = 0
    while True:
        await clock.sleep(interval)
        try:
            status = await remote.status()
        except EtcdError as exc:
            errors += 1
            line = f"status check failed ({errors} in a row): {exc}"
            if errors >= STATUS_CHECK_ERRORS:
                raise SessionFailure(line) from None
            report(line)
            continue
        errors = 0
        if status.cluster_id != pinned:
            raise SessionFailure(
                f"etcd cluster ID changed from {pinned:x} to {status.cluster_id:x}")
        others = cluster_ids.sharing(name)
        if others:
            raise ConfigRefused(duplicate_id_problem(name, cluster_id, others))
        report(status_line(remote, status.cluster_id))


def status_line(remote: EtcdClient, cluster_id: int) -> str:
    """Upstream's status text of a connected remote."""
    return (f"etcd: 1/{len(remote.config.endpoints)} connected: {remote.endpoint}, "
            f"ID: {cluster_id:x}")


async def watch_config_change(remote: EtcdClient, *, name: str,
                              config: CiliumClusterConfig) -> None:
    """Raise :class:`SessionFailure` when the remote publishes a cluster-config other
    than ``config`` — already in the first read, as in a later change."""
    async with contextlib.aclosing(list_and_watch(remote, cluster_config_key(name).encode(),
                                                  prefix=False)) as items:
        async for item in items:
            if isinstance(item, Page):
                values = [kv.value for kv in item.kvs]
            elif isinstance(item, Changes):
                # A delete keeps the last known config, as Cilium does.
                values = [e.kv.value for e in item.events if e.type == PUT]
            else:
                continue
            for value in values:
                try:
                    new = CiliumClusterConfig.from_json(value)
                except ValueError:
                    continue  # keep the last valid config, as Cilium does
                if new != config:
                    raise SessionFailure("remote cluster configuration changed")
