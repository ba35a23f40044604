"""Where the apiserver's Kubernetes objects come from.

A source delivers objects of the kinds in :data:`KINDS` to an
:class:`ObjectSink`: every object once when first listed, then each change, and
``synced(kind)`` once the first complete list of a kind has been delivered.  Two
sources exist and feed the same sink and converters:

* :mod:`apiserver.sources.kubernetes` — list+watch against a kube-apiserver;
* :mod:`apiserver.sources.manifests` — YAML files in a directory, watched live
  (the local mesh and non-Kubernetes environments).

Objects are plain dicts in the Kubernetes API's JSON form.  A relist (watch
expired, source restarted) is delivered as ``replace(kind, objects)``: the sink
diffs it against what it holds, so deletions missed while away are not lost.

Bad input is seen again and again (a manifest polled every second, an object
recomputed at every namespace event); :class:`ReportedOnce` is how the sources and
their sink say each problem once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

Obj = Mapping[str, Any]
Subject = TypeVar("Subject", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Kind:
    name: str  # the Kubernetes kind, e.g. "CiliumEndpoint"
    api_version: str  # "group/version" or "v1"
    plural: str


CILIUM_IDENTITY = Kind("CiliumIdentity", "cilium.io/v2", "ciliumidentities")
CILIUM_ENDPOINT = Kind("CiliumEndpoint", "cilium.io/v2", "ciliumendpoints")
CILIUM_NODE = Kind("CiliumNode", "cilium.io/v2", "ciliumnodes")
# Cluster-scoped: the namespace of the endpoints it packs is its `namespace` field.
CILIUM_ENDPOINT_SLICE = Kind("CiliumEndpointSlice", "cilium.io/v2alpha1", "ciliumendpointslices")
SERVICE = Kind("Service", "v1", "services")
ENDPOINT_SLICE = Kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices")
NAMESPACE = Kind("Namespace", "v1", "namespaces")
SERVICE_EXPORT = Kind("ServiceExport", "multicluster.x-k8s.io/v1alpha1", "serviceexports")

KINDS: tuple[Kind, ...] = (CILIUM_IDENTITY, CILIUM_ENDPOINT, CILIUM_ENDPOINT_SLICE, CILIUM_NODE,
                           SERVICE, ENDPOINT_SLICE, NAMESPACE, SERVICE_EXPORT)
KINDS_BY_NAME = {k.name: k for k in KINDS}


def object_key(obj: Obj) -> tuple[str, str]:
    """(namespace, name) of an object; namespace is "" for cluster-scoped kinds."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class ObjectSink(Protocol):
    def upsert(self, kind: Kind, obj: Obj) -> None: ...
    def delete(self, kind: Kind, namespace: str, name: str) -> None: ...

    def replace(self, kind: Kind, objects: Sequence[Obj]) -> None:
        """The complete current set of ``kind`` (first list or relist)."""

    def synced(self, kind: Kind) -> None:
        """The first complete list of ``kind`` has been delivered."""


class Source(Protocol):
    async def run(self, sink: ObjectSink, kinds: Sequence[Kind]) -> None:
        """Deliver ``kinds`` to ``sink`` until cancelled."""


class ReportedOnce(Generic[Subject]):
    """Log a subject's problem once: again only when it changes, or returns after
    :meth:`resolved`.  ``emit`` is the logging call (``log.warning``, ``log.error``).

    What was last reported is remembered per subject (a manifest file, a published
    owner), so a problem that persists costs one comparison per pass and no log line.
    """

    def __init__(self, emit: Callable[..., None]) -> None:
        self._emit = emit
        self._last: dict[Subject, Hashable] = {}

    def report(self, subject: Subject, problem: Hashable, message: str, *args: object) -> None:
        """``subject`` has ``problem``: log ``message % args`` unless it was the last said."""
        if self._last.get(subject) != problem:
            self._last[subject] = problem
            self._emit(message, *args)

    def resolved(self, subject: Subject) -> None:
        """``subject`` is fine: its next problem is logged, even the same one again."""
        self._last.pop(subject, None)
