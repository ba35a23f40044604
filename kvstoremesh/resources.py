"""KVStoreMesh's rules per resource, declared once: :data:`RULES`, one per ``RESOURCES``.

Each :class:`ResourceRules` says, for one resource of :data:`clustermesh.keys.RESOURCES`:

* how it is reflected from a remote with a given cluster-config
  (:meth:`ResourceRules.reflection`, below);
* whether ``--clustermesh-cache-ttl`` revokes it (``revoked_on_ttl``: every resource
  that carries service backends — Cilium drains services and service exports;
  EndpointSlices are the same backends, "v2");
* whether its values are observed for diagnostics (``observed``: nodes, whose pod
  CIDRs the overlap check reads);
* its names in the status model (``status_name``: the key of Cilium's ``synced``
  object; ``count_name``: the ``num-*`` field) and whether its ``synced`` entry is
  null when it is not mirrored (``nullable_synced``, as Cilium's ``service-exports``).

The session, readiness, the metrics, the status API and the cache-TTL loop all ask
these declarations, so they can never disagree.

Not every remote exports every resource, and what we do about one it does not
export depends on who waits for its canary.  :func:`reflection` returns one of:

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
from dataclasses import dataclass

from clustermesh.clusterconfig import (
    EXPORT_ENDPOINTSLICES_ONLY,
    EXPORT_SERVICES_ONLY,
    CiliumClusterConfig,
)
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IDENTITIES,
    NODES,
    RESOURCES,
    SERVICE_EXPORTS,
    SERVICES,
    Resource,
)


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


@dataclass(frozen=True, slots=True)
class ResourceRules:
    resource: Resource
    status_name: str  # its key in the status model's "synced" object
    count_name: str  # its "num-*" field in the status model
    nullable_synced: bool = False  # "synced" is null when not mirrored from the remote
    revoked_on_ttl: bool = False  # drained by --clustermesh-cache-ttl
    observed: bool = False  # values read for diagnostics (pod CIDRs of nodes)

    def reflection(self, config: CiliumClusterConfig | None) -> Reflection:
        """How it is reflected from a remote publishing ``config``; RUN while the config
        is not known yet (a remote never connected has every resource pending)."""
        return Reflection.RUN if config is None else reflection(self.resource, config)


# In the order of Cilium's status model ("synced" keys): nodes, services, service
# exports, identities, endpoints, then ours.
RULES: tuple[ResourceRules, ...] = (
    ResourceRules(NODES, "nodes", "num-nodes", observed=True),
    ResourceRules(SERVICES, "services", "num-shared-services", revoked_on_ttl=True),
    ResourceRules(SERVICE_EXPORTS, "service-exports", "num-service-exports",
                  nullable_synced=True, revoked_on_ttl=True),
    ResourceRules(IDENTITIES, "identities", "num-identities"),
    ResourceRules(ENDPOINTS, "endpoints", "num-endpoints"),
    ResourceRules(ENDPOINT_SLICES, "endpointslices", "num-endpointslices",
                  nullable_synced=True, revoked_on_ttl=True),
)
_BY_RESOURCE = {rules.resource: rules for rules in RULES}
assert set(_BY_RESOURCE) == set(RESOURCES), "every resource declares its rules"


def rules_of(resource: Resource) -> ResourceRules:
    return _BY_RESOURCE[resource]


REVOKED_ON_TTL: tuple[Resource, ...] = tuple(r for r in RESOURCES
                                             if _BY_RESOURCE[r].revoked_on_ttl)
