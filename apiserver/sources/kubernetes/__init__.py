"""List+watch of the apiserver's kinds against a kube-apiserver (client-go semantics).

The source is split along what each part is responsible for; every module's docstring
has the details:

* :mod:`.source` — :class:`KubernetesSource`, the lifecycle: one client, one rate
  limiter and one reflector task per kind, cancelled together;
* :mod:`.reflector` — the list/watch/relist loop of one kind (client-go's
  ``Reflector.ListAndWatch``: paginated lists, bookmarks, resume from the last
  ``resourceVersion``, relist on 410, the retry backoff, optional CRDs);
* :mod:`.client` — where the server and the credentials come from (kubeconfig,
  in-cluster service account, ``--k8s-api-server``);
* :mod:`.ratelimit` — the client-side rate limit (``--k8s-client-qps``/``-burst``);
* :mod:`.selectors` — Cilium's label selectors (``--k8s-service-proxy-name``, mirrored
  EndpointSlices left out).

Objects are delivered as the plain JSON dicts the API server sent, to any
:class:`~apiserver.sources.ObjectSink`.  All modules log as ``apiserver.sources.kubernetes``.
"""

from __future__ import annotations

from .client import SERVICE_ACCOUNT_DIR
from .ratelimit import DEFAULT_CLIENT_BURST, DEFAULT_CLIENT_QPS, TokenBucket
from .reflector import KindStatus
from .selectors import (
    ENDPOINTSLICE_MANAGED_BY_LABEL,
    ENDPOINTSLICE_MESH_CONTROLLER,
    ENDPOINTSLICE_SELECTOR,
    SERVICE_PROXY_NAME_LABEL,
    default_label_selectors,
    service_proxy_selector,
)
from .source import KubernetesSource

__all__ = [
    "DEFAULT_CLIENT_BURST",
    "DEFAULT_CLIENT_QPS",
    "ENDPOINTSLICE_MANAGED_BY_LABEL",
    "ENDPOINTSLICE_MESH_CONTROLLER",
    "ENDPOINTSLICE_SELECTOR",
    "SERVICE_ACCOUNT_DIR",
    "SERVICE_PROXY_NAME_LABEL",
    "KindStatus",
    "KubernetesSource",
    "TokenBucket",
    "default_label_selectors",
    "service_proxy_selector",
]
