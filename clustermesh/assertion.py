"""Keep one key at one value: the cluster-config enforcer of both daemons.

Write the value if the key is missing or different, then watch the key and do it
again whenever someone changes or deletes it; every ``refresh`` seconds re-read
it anyway (Cilium re-asserts every 5 minutes).  An unchanged key is never
rewritten, so this costs no writes in the steady state.  Each check-and-write pass
counts as one run of the ``cluster-config-refresh`` controller group.  An etcd error
(the server restarting, a stream reset) is retried after a second, as an upstream
controller retries: the enforcer never ends its daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .controllers import GROUP_CLUSTER_CONFIG, ControllerRuns
from .etcd.client import EtcdClient
from .etcd.errors import EtcdCompacted, EtcdError
from .etcd.watch import PUT

log = logging.getLogger(__name__)
RETRY_DELAY = 1.0


async def keep_asserted(client: EtcdClient, key: bytes, value: bytes, *,
                        refresh: float = 300.0, lease: int = 0,
                        runs: ControllerRuns | None = None) -> None:
    while True:
        try:
            with runs.run(GROUP_CLUSTER_CONFIG) if runs else contextlib.nullcontext():
                current = await client.get(key)
                if current is None or current.value != value:
                    revision = await client.put(key, value, lease=lease)
                else:
                    revision = current.mod_revision
            # A timeout is the periodic refresh; a compaction just means "re-read".
            with contextlib.suppress(TimeoutError, EtcdCompacted):
                async with asyncio.timeout(refresh), \
                        client.watch(key, prefix=False, start_revision=revision + 1) as watch:
                    async for batch in watch:
                        if any(e.type != PUT or e.kv.value != value for e in batch.events):
                            break
        except EtcdError as exc:
            log.warning("keeping %s asserted: %s; retrying in %.0fs", key.decode(errors="replace"),
                        exc, RETRY_DELAY)
            await asyncio.sleep(RETRY_DELAY)
