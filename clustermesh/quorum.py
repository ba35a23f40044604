"""The quorum check of a daemon's own etcd (``--kvstore-max-consecutive-quorum-errors``).

Upstream's etcd client checks its kvstore periodically; each failure counts in
``<ns>_kvstore_quorum_errors_total{error}``, and once more than
``--kvstore-max-consecutive-quorum-errors`` (default 2) have failed in a row its status
turns to an error and the connection is recreated.  :class:`QuorumCheck` does the same
for the local etcd of both daemons:

* the check is a linearizable read of ``cilium/.heartbeat``: etcd answers it only
  through the leader's read index, so it fails when the member has lost quorum, has no
  leader, or is hung (a stopped process keeps its socket open and answers nothing), and
  every Cilium role may read that key.  Each check is bounded by a timeout no longer
  than the interval, so a hung member costs one interval, not one request timeout;
* between checks it waits the status check interval (30 s upstream), 5 s while
  failing, so a recovery is seen soon;
* while the threshold is exceeded, :attr:`QuorumCheck.problem` says why (the daemons
  report it on ``/healthz`` and ``/readyz``), and every failing check opens a new
  connection: our client fails over by itself when a request gets an error, but a
  member that hangs only makes requests time out, and those are the caller's;
* the first successful check clears it all.

The ``error`` label is a short stable class (``timeout``, ``unavailable``, ``tls``,
``auth``, ``other``) where upstream puts the whole error message, which makes one series
per message text.
"""

from __future__ import annotations

import asyncio
import logging

from .clock import REAL_CLOCK, Clock
from .controllers import GROUP_QUORUM_CHECK
from .etcd.client import EtcdClient
from .etcd.errors import (
    EtcdAuthError,
    EtcdError,
    EtcdInvalidToken,
    EtcdPermissionDenied,
    EtcdTLSError,
    EtcdUnavailable,
)
from .keys import HEARTBEAT_KEY
from .metrics import KVStoreMetrics

log = logging.getLogger(__name__)

STATUS_CHECK_INTERVAL = 30.0  # upstream, while the kvstore is healthy
FAILING_INTERVAL = 5.0  # upstream, while status checks fail
CHECK_TIMEOUT = 10.0


def error_class(exc: Exception) -> str:
    """The ``error`` label of a failed check."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, EtcdTLSError):  # before EtcdUnavailable, its base class
        return "tls"
    if isinstance(exc, EtcdUnavailable):
        return "unavailable"
    if isinstance(exc, EtcdAuthError | EtcdPermissionDenied | EtcdInvalidToken):
        return "auth"
    return "other"


class QuorumCheck:
    def __init__(self, client: EtcdClient, *, metrics: KVStoreMetrics, max_errors: int,
                 interval: float = STATUS_CHECK_INTERVAL, clock: Clock = REAL_CLOCK) -> None:
        if max_errors < 0:
            raise ValueError(f"max consecutive quorum errors must be >= 0, got {max_errors}")
        self.client = client
        self.metrics = metrics
        self.max_errors = max_errors
        self.interval = interval
        self.timeout = min(CHECK_TIMEOUT, interval)
        self.clock = clock
        self.consecutive = 0  # failed checks in a row
        self.last_error = ""
        self.reconnects = 0  # connections recreated because of the threshold

    @property
    def problem(self) -> str | None:
        """Why the etcd is considered broken, or None."""
        if self.consecutive <= self.max_errors:
            return None
        return (f"{self.client.name}: {self.consecutive} consecutive quorum check failures "
                f"(more than --kvstore-max-consecutive-quorum-errors={self.max_errors}); "
                f"last: {self.last_error}")

    async def run(self) -> None:
        """Check until cancelled."""
        while True:
            ok = await self.check_once()
            await self.clock.sleep(self.interval if ok else min(self.interval, FAILING_INTERVAL))

    async def check_once(self) -> bool:
        try:
            with self.metrics.controllers.run(GROUP_QUORUM_CHECK):
                async with asyncio.timeout(self.timeout):
                    await self.client.get(HEARTBEAT_KEY.encode())
        except (EtcdError, TimeoutError) as exc:
            await self._failed(exc)
            return False
        if self.consecutive:
            log.info("%s: quorum check succeeded again after %d failures", self.client.name,
                     self.consecutive)
        self.consecutive = 0
        self.last_error = ""
        return True

    async def _failed(self, exc: Exception) -> None:
        kind = error_class(exc)
        self.metrics.quorum_errors.labels(kind).inc()
        self.consecutive += 1
        self.last_error = str(exc) or f"no answer within {self.timeout:g}s"
        problem = self.problem
        if problem is None:
            log.warning("%s: quorum check failed (%d/%d allowed in a row): %s",
                        self.client.name, self.consecutive, self.max_errors, self.last_error)
            return
        # Loud once, when the threshold is crossed; the following failures are the same story.
        level = logging.ERROR if self.consecutive == self.max_errors + 1 else logging.WARNING
        log.log(level, "%s; recreating the etcd connection", problem)
        self.reconnects += 1
        try:
            # Bounded by the client's dial timeout per endpoint; cancelling it half-way
            # would leave the channel being probed open.
            await self.client.reconnect()
        except EtcdError as err:
            log.warning("%s: reconnecting failed: %s", self.client.name, err)
