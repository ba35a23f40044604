"""Fencing: a client whose every write holds only while its owner holds a lock.

A leader elected on an etcd lock (:mod:`clustermesh.election`) can be paused past its
lease (a GC pause, CPU starvation, a partition) and go on writing, not knowing that a
new leader took over.  A :class:`Fence` given to an
:class:`~clustermesh.etcd.client.EtcdClient` turns every write of that client — ``put``,
``delete``, ``txn`` — into a txn guarded by ``Compare(CreateRevision(lock key) ==
mine)``, as Go's ``concurrency.Mutex.IsOwner``: etcd applies it only while the lock key
the owner created still exists, atomically with the check.  So a deposed leader cannot
write a single key, even before it notices.

The fence is *held* (:meth:`Fence.hold`) for one term, with the lock key and its create
revision; otherwise a write fails at once, locally, with :class:`EtcdFenced`.  The first
write etcd refuses drops the fence (nothing else goes out under the old term) and calls
``on_lost``, which is how the owner learns it must step down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .errors import EtcdError
from .pb import rpc_pb2

log = logging.getLogger(__name__)


class EtcdFenced(EtcdError):
    """A write refused because its client does not hold the lock (any more)."""


class Fence:
    def __init__(self, *, on_lost: Callable[[str], None] | None = None) -> None:
        self._on_lost = on_lost
        self._key = b""
        self._revision = 0
        self._compare: rpc_pb2.Compare | None = None

    @property
    def held(self) -> bool:
        return self._compare is not None

    def hold(self, key: bytes, revision: int) -> None:
        """Writes go out from now on, guarded by ``key``'s create revision == ``revision``."""
        self._key, self._revision = key, revision
        self._compare = rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.CREATE,
                                        result=rpc_pb2.Compare.EQUAL,
                                        create_revision=revision)

    def drop(self) -> None:
        """No write goes out any more (stepping down, or the lock found lost)."""
        self._compare = None

    def guard(self, request: rpc_pb2.TxnRequest) -> None:
        """Add the lock's compare to ``request`` (which has none of its own), or raise
        :class:`EtcdFenced` if the fence is not held."""
        if self._compare is None:
            raise EtcdFenced(self._not_held())
        request.compare.append(self._compare)

    def refused(self) -> EtcdFenced:
        """etcd refused a guarded write: drop the fence, tell the owner; the error to raise."""
        lost = self._compare is not None
        self.drop()
        reason = (f"lock {self._key.decode(errors='replace')} (create revision "
                  f"{self._revision}) no longer held: write refused")
        if lost:
            log.warning("%s", reason)
            if self._on_lost is not None:
                self._on_lost(reason)
        return EtcdFenced(reason)

    def _not_held(self) -> str:
        if not self._key:
            return "not the leader: writes are fenced until the leader lock is held"
        return (f"not the leader any more (lock {self._key.decode(errors='replace')}, "
                f"create revision {self._revision}): writes are fenced")
