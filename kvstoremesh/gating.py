"""Which resources KVStoreMesh reflects from a remote: one rule, from its cluster-config.

Not every remote exports every resource of :data:`clustermesh.keys.RESOURCES`, and
what we do about one it does not export depends on who waits for its canary.  The
session (what to start), readiness, the metrics and the status API all read
:func:`reflection`, so that they can never disagree.  It returns one of:

* :attr:`Reflection.RUN` — mirror it: wait for the remote's canary (with
  ``syncedCanaries``), list, watch; write the cache canary after the first
  complete sync.  Readiness waits for it.
* :attr:`Reflection.SYNCED_EMPTY` — the remote exports none, but agents reading our
  cache wait for its canary: drain what we cached of it and write the cache canary
  anyway (Cilium's "pretend synced").  Counts as synced at once; never read, so no
  ``read`` initial-sync series.
* :attr:`Reflection.OFF` — the remote exports none and no reader waits for it: no
  reflector, not part of readiness; what we cached of it is drained and its cache
  canary deleted (none is written).

The rules, by the remote's capabilities (``endpointSlicesExportMode`` is copied
verbatim into the cached cluster-config, so agents see the same mode we did):

* service exports — RUN when ``serviceExportsEnabled`` is set (true or false),
  SYNCED_EMPTY when it is absent (a peer older than MCS-API support);
* services — SYNCED_EMPTY for mode ``endpointslices-only``, RUN otherwise;
* endpointslices — RUN for any non-empty mode (``services-and-endpointslices``,
  ``endpointslices-only``), OFF for ``""`` (a 1.18/1.19 peer);
* nodes, identities, endpoints — RUN.

Why the services canary is written for an ``endpointslices-only`` remote, which never
writes its own: 1.18/1.19 agents do not know the export mode, watch ``services/v1``
of every remote, and — our cached config always says ``syncedCanaries`` — wait for
``cilium/synced/<c>/cilium/cache/services/v1`` before calling that remote synced.
Without the canary they would wait forever; with it they see, correctly, no legacy
services of that cluster.

Why no endpointslices canary for a remote with no mode (1.18/1.19): it never writes
one, so waiting for it would hold readiness forever, and the agents that read
EndpointSlices (main) skip them for a remote whose mode is ServicesOnly, so no reader
waits for ours.  A canary would claim a sync that never happened; leftovers (a remote
that was downgraded) are deleted so the cache says exactly what the remote exports.
"""

from __future__ import annotations

import enum

from clustermesh.clusterconfig import (
    EXPORT_ENDPOINTSLICES_ONLY,
    EXPORT_SERVICES_ONLY,
    CiliumClusterConfig,
)
from clustermesh.keys import ENDPOINT_SLICES, SERVICE_EXPORTS, SERVICES, Resource


class Reflection(enum.Enum):
    RUN = "run"
    SYNCED_EMPTY = "synced-empty"
    OFF = "off"


def reflection(resource: Resource, config: CiliumClusterConfig) -> Reflection:
    """What KVStoreMesh does with ``resource`` of a remote that publishes ``config``."""
    mode = config.endpoint_slices_export_mode
    if resource is SERVICE_EXPORTS and config.service_exports_enabled is None:
        return Reflection.SYNCED_EMPTY
    if resource is SERVICES and mode == EXPORT_ENDPOINTSLICES_ONLY:
        return Reflection.SYNCED_EMPTY
    if resource is ENDPOINT_SLICES and mode == EXPORT_SERVICES_ONLY:
        return Reflection.OFF
    return Reflection.RUN
