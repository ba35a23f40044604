"""Keep one key at one value: the cluster-config enforcer of both daemons.

The enforcer follows the key with :func:`~clustermesh.etcd.listwatch.list_and_watch`:
its value when the enforcer starts (or relists), then every change; whenever the key
is missing, holds something else or is bound to another lease, the value is written
again.  Every ``refresh`` seconds it starts over from a fresh read anyway (Cilium
re-asserts every 5 minutes): the refresh is a sleep on the
:class:`~clustermesh.clock.Clock` raced against the watch, so a fake clock drives it in
tests.  An unchanged key is never rewritten, so
this costs no writes in the steady state.

Each pass that checks the key — the read, or a change that needs a write — counts as
one run of the ``cluster-config-refresh`` controller group, and an etcd error as a
failed one.  The error (the server restarting, a stream reset) is retried after
:data:`RETRY_DELAY`, as an upstream controller retries: the enforcer never ends its
daemon.
"""

from __future__ import annotations

import contextlib
import logging

from .clock import REAL_CLOCK, Clock
from .controllers import GROUP_CLUSTER_CONFIG, ControllerRuns
from .etcd.client import EtcdClient
from .etcd.errors import EtcdError
from .etcd.listwatch import Changes, Page, list_and_watch
from .etcd.watch import PUT
from .tasks import race

log = logging.getLogger(__name__)
RETRY_DELAY = 1.0


async def keep_asserted(client: EtcdClient, key: bytes, value: bytes, *,
                        refresh: float = 300.0, lease: int = 0,
                        runs: ControllerRuns | None = None,
                        clock: Clock = REAL_CLOCK) -> None:
    while True:
        # The watch raced against the refresh timer (``race``, not a TaskGroup: on 3.11 a
        # cancellation that meets the follower's failure would be lost to the retry).
        first = await race(_assert_on_change(client, key, value, lease=lease, runs=runs),
                           clock.sleep(refresh))
        failed = first.exception()
        if failed is None:
            continue  # the periodic refresh: assert again
        if not isinstance(failed, EtcdError):
            raise failed
        if runs is not None:
            runs.record(GROUP_CLUSTER_CONFIG, ok=False)
        log.warning("keeping %s asserted: %s; retrying in %.0fs", key.decode(errors="replace"),
                    failed, RETRY_DELAY)
        await clock.sleep(RETRY_DELAY)


async def _assert_on_change(client: EtcdClient, key: bytes, value: bytes, *, lease: int,
                            runs: ControllerRuns | None) -> None:
    async with contextlib.aclosing(list_and_watch(client, key, prefix=False)) as items:
        async for item in items:
            # A key on another lease than ours counts as missing (upstream's KVStoreMesh
            # wrote it on its session lease: it would vanish with it).
            if isinstance(item, Page):
                kv = item.kvs[0] if item.kvs else None
                current = kv.value if kv is not None and kv.lease == lease else None
            elif isinstance(item, Changes):
                last = item.events[-1]  # the key's value now
                current = (last.kv.value if last.type == PUT and last.kv.lease == lease
                           else None)
                if current == value:
                    continue  # our own write coming back, or put back by someone
            else:
                continue
            if current != value:
                await client.put(key, value, lease=lease)
            if runs is not None:
                runs.record(GROUP_CLUSTER_CONFIG, ok=True)
