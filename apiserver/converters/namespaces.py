"""Which namespaces are global: the ``clustermesh.cilium.io/global`` annotation.

Cilium filters identities, endpoints, services, service exports and
EndpointSlices by the global status of their namespace
(``pkg/clustermesh/namespace/namespace.go``); the caller applies
:func:`namespace_is_global` to the namespace each object belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .inputs import annotation

GLOBAL_NAMESPACE_ANNOTATION = "clustermesh.cilium.io/global"

#: Cilium's ``--clustermesh-default-global-namespace`` default.
DEFAULT_GLOBAL_NAMESPACE = True


def namespace_is_global(namespace: Mapping[str, Any] | None, *,
                        default: bool = DEFAULT_GLOBAL_NAMESPACE) -> bool:
    """Whether objects of ``namespace`` are exported to the mesh.

    ``clustermesh.cilium.io/global`` present: ``value.lower() == "true"``;
    absent: ``default``, which is Cilium's ``--clustermesh-default-global-namespace``
    (true unless configured); no Namespace object: False (``IsGlobalNamespaceByObject``).
    """
    if namespace is None:
        return False
    value = annotation(namespace, GLOBAL_NAMESPACE_ANNOTATION)
    if value is None:
        return default
    return value.lower() == "true"
