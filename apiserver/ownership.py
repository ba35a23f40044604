"""Which owner's value an exported key carries when several owners claim it.

Two Kubernetes objects can claim one etcd key: a pod replaced faster than its
old CiliumEndpoint is deleted, events of two endpoints arriving out of order
under churn, a CiliumEndpoint moving between two CiliumEndpointSlices.  Cilium
before PR #45780 exported the last writer and deleted the key when *either*
claimant went away, so every other cluster lost the IP while it was still in
use (Cilium issue #44020).  :class:`Ownership` is the fixed algorithm (facts
§1.2 of ``cilium-apiserver-newest-facts.md``):

* per key a **primary** owner and a first-in-first-out queue of **pending**
  claimants; only the primary's value is exported;
* a pending claimant's updates are only remembered (its queue place is kept);
* when the primary goes (deleted, or it stops listing the key) the oldest
  pending claimant is promoted and its *latest* value exported — no delete in
  between; the key is deleted only when its last claimant goes;
* a claimant that left and comes back joins the back of the queue.

Every method returns what to do with the key: :data:`KEEP` (nothing), a value
to write, or :data:`DELETE`.  The tracker is pure bookkeeping, no I/O: the
publisher turns those answers into writes, deduplicated against what etcd
already holds.

After a restart the arrival order of the original claims is unknown, so
:meth:`Ownership.rebuild` seeds a key from what is exported already: the
claimant whose value equals the exported one stays primary (nothing flips,
nothing is written), the others queue in the order the caller gives (the
publisher uses (creationTimestamp, name), the closest thing Kubernetes has to
"who claimed first").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Final

log = logging.getLogger(__name__)


class _Delete:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DELETE"


#: Answer: leave the key as it is.
KEEP: Final = None
#: Answer: delete the key.
DELETE: Final = _Delete()

Action = bytes | _Delete | None


@dataclass(slots=True)
class _Group:
    primary: Hashable
    value: bytes
    pending: dict[Hashable, bytes] = field(default_factory=dict)  # insertion order = FIFO


class Ownership:
    """Primary owner plus pending claimants, per key (see the module docstring).

    ``on_contested(key, owners)`` is called when a key gains its second claimant
    (the start of a conflict episode), with the owners in queue order.
    """

    def __init__(self, *, on_contested: Callable[[str, list[Hashable]], None] | None = None,
                 ) -> None:
        self._groups: dict[str, _Group] = {}
        self._on_contested = on_contested
        self.promotions = 0  # pending claimants promoted to primary, ever
        self.contested = 0  # keys that currently have pending claimants

    def claim(self, key: str, owner: Hashable, value: bytes) -> Action:
        """``owner`` proposes ``value`` for ``key``: the value to export, or KEEP."""
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = _Group(owner, value)
            return value
        if group.primary == owner:
            group.value = value
            return value
        if owner in group.pending:
            group.pending[owner] = value  # newer value, same queue place
            return KEEP
        group.pending[owner] = value
        if len(group.pending) == 1:
            self._contest_started(key, group)
        return KEEP

    def release(self, key: str, owner: Hashable) -> Action:
        """``owner`` no longer claims ``key``: the promoted value, DELETE, or KEEP."""
        group = self._groups.get(key)
        if group is None:
            return KEEP
        if group.primary != owner:
            if group.pending.pop(owner, None) is not None and not group.pending:
                self.contested -= 1
            return KEEP
        if not group.pending:
            del self._groups[key]
            return DELETE
        group.primary = next(iter(group.pending))
        group.value = group.pending.pop(group.primary)
        self.promotions += 1
        if not group.pending:
            self.contested -= 1
        return group.value

    def rebuild(self, key: str, claims: Sequence[tuple[Hashable, bytes]],
                exported: Callable[[bytes], bool]) -> bytes:
        """Seed ``key`` from ``claims`` (in queue order) after a restart; return the value
        to export.  The first claim for which ``exported(value)`` is true stays primary;
        if none is, the first claim becomes primary."""
        primary = next((i for i, (_, value) in enumerate(claims) if exported(value)), 0)
        owner, value = claims[primary]
        group = _Group(owner, value)
        for i, (other, other_value) in enumerate(claims):
            if i != primary:
                group.pending[other] = other_value
        self._groups[key] = group
        if group.pending:
            self._contest_started(key, group)
        return value

    def _contest_started(self, key: str, group: _Group) -> None:
        self.contested += 1
        if self._on_contested is not None:
            self._on_contested(key, [group.primary, *group.pending])

    def primary(self, key: str) -> Hashable | None:
        group = self._groups.get(key)
        return None if group is None else group.primary

    def pending(self, key: str) -> list[Hashable]:
        group = self._groups.get(key)
        return [] if group is None else list(group.pending)

    def __len__(self) -> int:
        return len(self._groups)
