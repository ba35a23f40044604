"""Keep one key at one value: the cluster-config enforcer of both daemons.

Write the value if the key is missing or different, then watch the key and do it
again whenever someone changes or deletes it; every ``refresh`` seconds re-read
it anyway (Cilium re-asserts every 5 minutes).  An unchanged key is never
rewritten, so this costs no writes in the steady state.
"""

from __future__ import annotations

import asyncio
import contextlib

from .etcd.client import EtcdClient
from .etcd.errors import EtcdCompacted
from .etcd.watch import PUT


async def keep_asserted(client: EtcdClient, key: bytes, value: bytes, *,
                        refresh: float = 300.0, lease: int = 0) -> None:
    while True:
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
