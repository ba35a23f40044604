"""Which objects the API server shows us: Cilium's label selectors per kind.

``KubernetesSource(label_selectors=...)`` maps a kind's name to a selector string sent
as ``labelSelector`` on every list page and every watch of that kind, so the API server
only ever shows us matching objects, as Cilium's ``ListOptions`` modifiers do.
:func:`default_label_selectors` gives Cilium's two: the ``--k8s-service-proxy-name`` one
on Services (:func:`service_proxy_selector`) and :data:`ENDPOINTSLICE_SELECTOR` on
EndpointSlices (slices that Cilium mirrors from other clusters are not this cluster's).

Nothing more is needed on our side, so nothing here parses a selector: the server's
watch turns an object that is relabelled out of the selection into ``DELETED`` and one
relabelled into it into ``ADDED``, and a relist's ``replace`` drops whatever stopped
matching while we were away.  The one check made locally is Cilium's own at startup:
a proxy name must be a valid label value.
"""

from __future__ import annotations

import re

from apiserver.sources import ENDPOINT_SLICE, SERVICE

SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
ENDPOINTSLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
#: The ``managed-by`` value of the EndpointSlices Cilium mirrors from remote clusters.
ENDPOINTSLICE_MESH_CONTROLLER = "endpointslice-mesh-controller.cilium.io"
#: Cilium's EndpointSlice selector: every slice but the mirrored ones (``!=`` also
#: matches slices without the label).
ENDPOINTSLICE_SELECTOR = f"{ENDPOINTSLICE_MANAGED_BY_LABEL}!={ENDPOINTSLICE_MESH_CONTROLLER}"

_LABEL_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def service_proxy_selector(proxy_name: str) -> str:
    """The Service selector of Cilium's ``--k8s-service-proxy-name``: with no name, the
    Services no other proxy claims (no ``service-proxy-name`` label); with one, only the
    Services labelled for it.  Raises ValueError for a name that is not a valid label value
    (Cilium's ``labels.NewRequirement`` refuses it at startup too)."""
    if not proxy_name:
        return f"!{SERVICE_PROXY_NAME_LABEL}"
    if len(proxy_name) > 63 or not _LABEL_VALUE_RE.fullmatch(proxy_name):
        raise ValueError(f"invalid service proxy name {proxy_name!r}: a label value is at most "
                         "63 alphanumeric characters, '-', '_' or '.', starting and ending "
                         "with an alphanumeric character")
    return f"{SERVICE_PROXY_NAME_LABEL}={proxy_name}"


def default_label_selectors(service_proxy_name: str) -> dict[str, str]:
    """Cilium's selectors per kind name: Services by proxy name, EndpointSlices not
    mirrored from other clusters."""
    return {SERVICE.name: service_proxy_selector(service_proxy_name),
            ENDPOINT_SLICE.name: ENDPOINTSLICE_SELECTOR}
