"""Our periodic loops as Cilium's "controllers": run counts per group.

Upstream counts every run of a controller in ``<ns>_controllers_group_runs_total
{group_name, status}`` (``status`` is ``success`` or ``failure``), but only for the groups
listed in ``--controller-group-metrics`` (``all`` and ``none`` are special names).  We
have no controller framework; our periodic loops (the heartbeat, the cluster-config
enforcer, the local etcd quorum check, users management, the remote-cluster sessions)
report their runs through :class:`ControllerRuns` instead::

    with runs.run(GROUP_USERS_MANAGEMENT):
        await apply_users()

A run that raises is a failure (the exception goes on); one that returns is a success.
Cancellation is neither: a loop stopped half-way did not run.  Groups not selected are
not exported at all, as upstream, so a family with nothing selected has no series.

Group names are upstream's where upstream has a controller for the same work
(``clustermesh-users-management``, ``clustermesh-remote-cluster``); our other loops are
hive jobs or plain goroutines upstream, which have no run metric, so their names are
ours, taken from the upstream job or subsystem that does the same thing.

Those loops read time and sleep only through the :class:`~clustermesh.clock.Clock` they
are given, so tests drive them with a fake one instead of waiting.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter

GROUP_HEARTBEAT = "kvstore-heartbeat"  # upstream: the kvstore-heartbeat subsystem's loop
GROUP_CLUSTER_CONFIG = "cluster-config-refresh"  # upstream: the enforcer's refresh job
GROUP_QUORUM_CHECK = "kvstore-quorum-check"  # upstream: the etcd client's status checker
GROUP_USERS_MANAGEMENT = "clustermesh-users-management"  # upstream controller group
GROUP_REMOTE_CLUSTER = "clustermesh-remote-cluster"  # upstream controller group

ALL = "all"
NONE = "none"


def selected_groups(values: Iterable[str]) -> frozenset[str] | None:
    """The groups ``--controller-group-metrics`` selects; ``None`` means every group.

    Each value may itself be a list (the flag is a string slice, and Cilium's ConfigMap
    writes it space separated), so values are split on commas and white space.
    """
    names = {name for value in values for name in re.split(r"[\s,]+", value) if name}
    if ALL in names:
        return None
    return frozenset(names - {NONE})


class ControllerRuns:
    """``<namespace>_controllers_group_runs_total`` for the selected groups."""

    def __init__(self, *, namespace: str, registry: CollectorRegistry | None,
                 groups: Iterable[str]) -> None:
        self._selected = selected_groups(groups)
        self._runs = Counter(
            f"{namespace}_controllers_group_runs",
            "Number of times that a controller process was run, labeled by controller "
            "group name", ["group_name", "status"], registry=registry)

    def exported(self, group: str) -> bool:
        return self._selected is None or group in self._selected

    def record(self, group: str, *, ok: bool) -> None:
        if self.exported(group):
            self._runs.labels(group, "success" if ok else "failure").inc()

    @contextlib.contextmanager
    def run(self, group: str) -> Iterator[None]:
        """Count the enclosed block as one run of ``group`` (see the module docstring)."""
        try:
            yield
        except Exception:
            self.record(group, ok=False)
            raise
        self.record(group, ok=True)
