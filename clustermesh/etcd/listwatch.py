"""List, then watch from the list's revision: the one loop that follows a prefix.

Everything that mirrors or follows etcd keys — a KVStoreMesh reflector, a remote's
canaries, heartbeat and cluster-config, the cluster-config enforcer — iterates
:func:`list_and_watch`.  It is etcd's ``client/v3/mirror`` ("sync the base at
revision R", then "watch from R+1") with Cilium's list-done event:

1. :class:`Page` items: the keys under the prefix, one page at a time, every page
   read at the revision R of the first one (one consistent snapshot; at least one
   page, possibly empty, so a consumer always sees a list begin);
2. one :class:`Listed` item: the list is complete, at revision R;
3. :class:`Changes` items: the puts and deletes after R, in order, each batch whole
   (etcd's fragmented watch responses are reassembled by :mod:`.watch`).  Progress
   notifications only advance the revision and are not yielded.

A transient disconnect (member down, failover, token expiry, TLS rotation) is not
visible: the watch resumes on the next endpoint from the last revision seen, and
nothing is missed or repeated.  Two things make it **relist by itself** — a new
series of pages, then ``Listed(relist=True)`` — because the revision to resume from
no longer means anything:

* the remote compacted past it (:class:`~.errors.EtcdCompacted`, during the list or
  the watch);
* the watch reached an etcd cluster with another ID than the one listed
  (:class:`~.errors.EtcdClusterChanged`: a restore, endpoints re-pointed).

**The diff is the consumer's job**: after a relist, a key the consumer knows but
the new pages did not contain was deleted meanwhile, and the consumer must drop it
once it sees ``Listed``.  (A ``Page`` that follows a ``Listed`` starts a relist.)
Any other error ends the iteration.  A consumer that stops early should iterate
inside ``contextlib.aclosing(...)``: closing the iterator cancels the watch at once
rather than when the generator is collected.  This is the only module that handles
compaction.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from .client import DEFAULT_PAGE_SIZE, EtcdClient, Event, KeyValue
from .errors import EtcdClusterChanged, EtcdCompacted

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Page:
    """Keys of one list page, read at ``revision`` (the same for every page of a list)."""

    kvs: Sequence[KeyValue]
    revision: int


@dataclass(frozen=True, slots=True)
class Listed:
    """Every key under the prefix at ``revision`` was in the pages since the list began.

    ``relist`` is False for the first list; True with ``reason`` for a relist.
    """

    revision: int
    relist: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Changes:
    """Events after the list, in revision order; ``revision``: everything up to it is in."""

    events: Sequence[Event]
    revision: int


Item = Page | Listed | Changes


async def list_and_watch(client: EtcdClient, key: bytes, *, prefix: bool = True,
                         range_end: bytes = b"",
                         page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[Item]:
    """Follow ``key`` (every key under it with ``prefix``, else that key alone; every
    key of ``[key, range_end)`` with ``range_end``: several neighbouring prefixes in one
    ordered stream) until the caller stops iterating; see the module docstring."""
    reason = ""
    while True:
        try:
            revision = 0
            if prefix or range_end:
                async for kvs, revision in client.range_pages(key, page_size=page_size,
                                                              range_end=range_end):
                    yield Page(kvs, revision)
                # Not held while watching: a page of 5000 values is megabytes per prefix.
                del kvs
            else:
                resp = await client.range(key)
                revision = resp.header.revision
                yield Page(resp.kvs, revision)
                del resp
            cluster_id = client.cluster_id
            yield Listed(revision, relist=bool(reason), reason=reason)
            async with client.watch(key, prefix=prefix, start_revision=revision + 1,
                                    cluster_id=cluster_id, range_end=range_end) as watch:
                async for batch in watch:
                    if batch.events:
                        yield Changes(batch.events, batch.revision)
        except (EtcdCompacted, EtcdClusterChanged) as exc:
            reason = str(exc)
            log.info("%s: %s: %s; relisting", client.name, key.decode(errors="replace"), exc)
