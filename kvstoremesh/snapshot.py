"""Immutable snapshots of what a remote cluster and its reflectors are doing.

:meth:`~kvstoremesh.reflector.Reflector.status` and
:meth:`~kvstoremesh.remote.RemoteCluster.status` return these; readiness, the status
API, the metrics and the tests read nothing else of a remote (Cilium's ``Status()``
snapshots).  A snapshot is taken in one go between two awaits, so its fields agree
with each other, and holding one never keeps a session's objects alive.

They are ``NamedTuple`` records, not frozen dataclasses, on a measurement: a frozen
dataclass costs about 4x as much to build (1.55 against 0.4 µs for a
:class:`ReflectorStatus`), and every ``/readyz``, scrape and status request builds one
:class:`RemoteStatus` and six :class:`ReflectorStatus` per remote — at 250 remotes
polled as the scale benchmark does, frozen dataclasses took 13 % of the daemon's CPU
during the initial sync.  Fields are read by name; :meth:`~typing.NamedTuple._replace`
makes a changed copy.

Times: ``*_since``, ``last_heartbeat`` and ``last_received`` are the mesh clock's
monotonic time; ``last_failure`` is wall time (it is shown and exported as a date).
"""

from __future__ import annotations

import json
from typing import NamedTuple

from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.keys import Resource

from .diagnostics import Problem
from .rejections import Rejection


class ReflectorStatus(NamedTuple):
    resource: Resource
    listed: bool  # the current session has read the remote's initial list
    synced: bool  # the cache canary is written (stays set across sessions)
    cached_keys: int
    relists: int  # relists after a compaction or a changed etcd cluster ID
    last_received: float  # when data last arrived from the remote (0: never)


class RemoteStatus(NamedTuple):
    name: str
    ready: bool  # connected, config retrieved, reflectors registered, all synced
    connected: bool
    config_retrieved: bool
    config: CiliumClusterConfig | None
    registered: bool  # the reflectors of the current session are started
    status: str  # upstream's one-line status text
    failures: int
    last_failure: float | None  # wall time
    ever_connected: bool
    disconnected_since: float | None  # None while connected
    etcd_cluster_id: int | None
    last_heartbeat: float | None  # when the heartbeat key last changed
    ready_after: float | None  # seconds from the remote's start to its first ready
    problem: Problem | None  # why its configuration is refused
    certificate_problems: tuple[Problem, ...]
    # The resources reflected from it (mirrored, or synced empty), in RESOURCES order;
    # one the remote does not export and nobody waits for is absent.
    reflectors: tuple[ReflectorStatus, ...]
    rejected_total: int
    rejected_latest: tuple[Rejection, ...]
    pod_cidrs_version: int  # changes whenever the pod CIDRs of its nodes do

    def reflector(self, resource: Resource) -> ReflectorStatus | None:
        return next((r for r in self.reflectors if r.resource is resource), None)

    def pending(self) -> list[str]:
        """Names of the reflected resources not synced yet."""
        return [r.resource.name for r in self.reflectors if not r.synced]


LEADER = "leader"
STANDBY = "standby"


class Leadership(NamedTuple):
    """This replica's role and the holder of the leader lock (see ``kvstoremesh.mesh``)."""

    role: str  # LEADER or STANDBY
    identity: str  # this replica's
    lease: int  # of this replica's election session (0: none yet)
    leader: str | None  # the holder's identity ("" if it registered none); None: no holder
    leader_lease: int

    def describe(self) -> str:
        """One line for /readyz?verbose and ``kvstoremesh-dbg status``."""
        if self.role == LEADER:
            return f"leader: this replica ({self.identity}, lease {self.lease:x})"
        if self.leader is None:
            return f"standby ({self.identity}): no leader holds the lock"
        who = self.leader or ("an unregistered replica (upstream's KVStoreMesh?)")
        return f"standby ({self.identity}): the leader is {who} (lease {self.leader_lease:x})"

    def model(self) -> dict[str, object]:
        """Its JSON form: the ``Kvstoremesh-Leader-Election`` header of ``/v1/cluster``."""
        return {"role": self.role, "identity": self.identity, "lease": f"{self.lease:x}",
                "leader": self.leader, "leader-lease": f"{self.leader_lease:x}"}

    @classmethod
    def from_header(cls, header: str | None) -> Leadership | None:
        """The JSON of :meth:`model` read back from a response header; None when absent
        or not that (a daemon that does not say: upstream's, or an older one)."""
        if not header:
            return None
        try:
            model = json.loads(header)
            leader = model["leader"]
            return cls(str(model["role"]), str(model["identity"]),
                       int(str(model["lease"]), 16), None if leader is None else str(leader),
                       int(str(model["leader-lease"]), 16))
        except (ValueError, KeyError, TypeError):
            return None
