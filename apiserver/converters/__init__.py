"""Kubernetes objects -> the etcd entries Cilium's clustermesh-apiserver publishes.

Pure functions, no I/O.  Every converter takes Kubernetes objects as plain dicts
(the JSON the Kubernetes API returns, or a manifest loaded with
``yaml.safe_load``) and returns ``{full etcd key: value bytes}``; an empty dict
means "this object publishes nothing".  The caller diffs successive results of
the same owner to find the keys to delete.

The values must be byte-identical to what Cilium writes, because real Cilium
agents in other clusters decode them.  JSON values are therefore produced by
:func:`~apiserver.converters.gojson.go_json`, a small re-implementation of Go's
``encoding/json`` ``Marshal`` (:mod:`apiserver.converters.gojson` says what it
reproduces).

The package: :mod:`.gojson` (the Go JSON encoder), :mod:`.inputs` (reading
Kubernetes fields and IP addresses as Go does), :mod:`.namespaces` (global
namespaces), and one module per kind group: :mod:`.identities`,
:mod:`.ipcache` (CiliumEndpoint and CiliumEndpointSlice), :mod:`.nodes`,
:mod:`.services`, :mod:`.service_exports`.  Import the public names from the
package itself (``from apiserver.converters import node_entries``).

Mapping (Cilium sources in parentheses; facts §2, §4):

``identity_entries``
    CiliumIdentity ``<ID>`` -> ``cilium/state/identities/v1/id/<ID>`` = the
    security labels as ``source:key=value;`` sorted by key, not JSON
    (``clustermesh-apiserver/clustermesh/converters.go``,
    ``pkg/labels/labels.go`` Map2Labels/SortedList).
``endpoint_entries``
    CiliumEndpoint -> one ``cilium/state/ip/v1/default/<IP>`` per IPv4/IPv6
    address = ``IPIdentityPair`` JSON (``pkg/identity/identity.go``;
    ``converters.go`` ciliumEndpointMapper).
``cilium_endpoint_slice_entries``
    CiliumEndpointSlice -> the same entries for each endpoint it packs, with
    its ``namespace`` field as the namespace (``converters.go``
    ciliumEndpointSliceMapper).
``node_entries``
    CiliumNode -> ``cilium/state/nodes/v1/<cluster>/<name>`` = ``Node`` JSON with
    the local cluster name/ID forced (``pkg/node/types/node.go``
    ParseCiliumNode).
``service_entries``
    Service + its EndpointSlices -> ``cilium/state/services/v1/<cluster>/<ns>/<name>``
    = ``ClusterService`` JSON, only for global *and* shared services
    (``clustermesh-apiserver/clustermesh/service_sync.go``, ``pkg/annotation``,
    ``pkg/k8s/endpoints.go`` ParseEndpointSliceV1, ``pkg/clustermesh/store/store.go``).
``service_export_entries``
    ServiceExport + Service -> ``cilium/state/serviceexports/v1/<cluster>/<ns>/<name>``
    = ``MCSAPIServiceSpec`` JSON unless the Service is missing or ExternalName
    (``pkg/clustermesh/mcsapi/types/mcsapiservicespec.go``,
    ``clustermesh-apiserver/clustermesh/serviceexport_sync.go``).
``is_shared_service``
    Whether a Service is global and shared (``pkg/annotation``
    GetAnnotationShared): the condition for ``service_entries`` to publish it.
``namespace_is_global``
    The ``clustermesh.cilium.io/global`` namespace annotation: present ->
    ``value.lower() == "true"``; absent -> the ``--clustermesh-default-global-namespace``
    default, ``True`` (``pkg/clustermesh/namespace/namespace.go``).

Cilium filters identities, endpoints, services, service exports and
EndpointSlices by the global status of their namespace.  The converters are
namespace-agnostic: the caller (:mod:`apiserver.exports`) applies
:func:`namespace_is_global` to the namespace each object belongs to
(:func:`identity_namespace` for an identity, :func:`endpoint_slice_namespace`
for a CiliumEndpointSlice, ``metadata.namespace`` otherwise).

No API-server defaulting is applied to the inputs (e.g. a Service port without
``protocol`` stays ``""``, as it does in Cilium's own tests with a fake
client); objects read from a real API server always carry the defaults.
"""

from __future__ import annotations

from .identities import identity_entries, identity_namespace
from .ipcache import cilium_endpoint_slice_entries, endpoint_entries, endpoint_slice_namespace
from .namespaces import DEFAULT_GLOBAL_NAMESPACE, GLOBAL_NAMESPACE_ANNOTATION, namespace_is_global
from .nodes import node_entries
from .service_exports import service_export_entries
from .services import is_shared_service, service_entries

__all__ = [
    "DEFAULT_GLOBAL_NAMESPACE",
    "GLOBAL_NAMESPACE_ANNOTATION",
    "cilium_endpoint_slice_entries",
    "endpoint_entries",
    "endpoint_slice_namespace",
    "identity_entries",
    "identity_namespace",
    "is_shared_service",
    "namespace_is_global",
    "node_entries",
    "service_entries",
    "service_export_entries",
]
