"""The heartbeat writer both daemons run: ``cilium/.heartbeat`` = the time, every minute.

Every reader of a Cilium etcd (agents, KVStoreMesh's remote clients) watches this key
and treats two minutes without an update as a dead kvstore.  The clustermesh-apiserver
always writes it into its etcd; KVStoreMesh does with ``--enable-heartbeat`` (when
there is no apiserver next to it, i.e. the etcd it caches into is external).

As upstream (``pkg/kvstore/heartbeat``): one write at start, then one every
:data:`HEARTBEAT_INTERVAL`; each write is bounded by :data:`WRITE_TIMEOUT` (Cilium's
lock lease TTL), and a failed one is only logged -- the next tick tries again, and
readers tolerate one missed beat.  The value is the wall-clock time in RFC 3339, UTC.
Unlike upstream the key carries no lease: nothing we write does (see the README), and a
stale heartbeat after we die is exactly what readers are meant to notice.
"""

from __future__ import annotations

import asyncio
import logging

from .clock import REAL_CLOCK, Clock, rfc3339
from .controllers import GROUP_HEARTBEAT, ControllerRuns
from .etcd.client import EtcdClient
from .etcd.errors import EtcdError
from .keys import HEARTBEAT_KEY

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 60.0  # upstream HeartbeatWriteInterval
WRITE_TIMEOUT = 25.0  # upstream LockLeaseTTL, the bound of each write


async def write_heartbeats(client: EtcdClient, *, runs: ControllerRuns,
                           interval: float = HEARTBEAT_INTERVAL,
                           clock: Clock = REAL_CLOCK) -> None:
    """Write the heartbeat now and every ``interval`` seconds, until cancelled."""
    log.info("writing %s every %gs", HEARTBEAT_KEY, interval)
    while True:
        try:
            with runs.run(GROUP_HEARTBEAT):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await client.put(HEARTBEAT_KEY.encode(), rfc3339(clock.wall()))
        except (EtcdError, TimeoutError) as exc:
            log.warning("heartbeat write failed (retried in %gs): %s", interval,
                        str(exc) or "timed out")
        await clock.sleep(interval)
