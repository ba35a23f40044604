"""ServiceExport + Service -> ``cilium/state/serviceexports/v1/<cluster>/<ns>/<name>``.

``MCSAPIServiceSpec`` JSON (``pkg/clustermesh/mcsapi/types/mcsapiservicespec.go``,
``clustermesh-apiserver/clustermesh/serviceexport_sync.go``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clustermesh.keys import SERVICE_EXPORTS

from .gojson import OMIT, Present, Struct, go_json, go_time
from .inputs import as_int, as_list, as_str, as_str_map, get


def service_export_entries(export: Mapping[str, Any], service: Mapping[str, Any] | None, *,
                           cluster: str) -> dict[str, bytes]:
    """ServiceExport + Service -> ``cilium/state/serviceexports/v1/<cluster>/<ns>/<name>``.

    Value: ``MCSAPIServiceSpec`` built from the Service (ports, type
    ``Headless`` iff ``clusterIP == "None"`` else ``ClusterSetIP``, session
    affinity, IP families, traffic policies) and the export (creation
    timestamp, ``spec.exportedAnnotations``/``exportedLabels``).  Nothing
    unless both exist and the Service is not ``ExternalName`` (the caller
    checks the namespace).
    """
    if service is None:
        return {}
    name = as_str(get(export, "metadata", "name"))
    ns = as_str(get(export, "metadata", "namespace"))
    if not name or not ns:
        return {}
    if (get(service, "metadata", "name") != name
            or as_str(get(service, "metadata", "namespace")) not in ("", ns)):
        return {}
    spec = service.get("spec")
    if not isinstance(spec, Mapping):
        spec = {}
    if spec.get("type") == "ExternalName":
        return {}

    ports = []
    for port in as_list(spec.get("ports")):
        if not isinstance(port, Mapping):
            continue
        app_protocol = port.get("appProtocol")
        ports.append(Struct(
            ("name", as_str(port.get("name")), OMIT),
            ("protocol", as_str(port.get("protocol")), OMIT),
            # A *string: omitted only when nil.
            ("appProtocol", Present(as_str(app_protocol)) if app_protocol is not None else None,
             OMIT),
            ("port", as_int(port.get("port"))),
        ))

    affinity_config = None
    timeout = get(spec, "sessionAffinityConfig", "clientIP", "timeoutSeconds")
    if timeout is not None:
        affinity_config = Struct(("clientIP", Struct(("timeoutSeconds", as_int(timeout), OMIT)),
                                   OMIT))
    internal_policy = spec.get("internalTrafficPolicy")
    distribution = spec.get("trafficDistribution")
    value = Struct(
        ("cluster", cluster),
        ("name", name),
        ("namespace", ns),
        ("annotations", as_str_map(get(export, "spec", "exportedAnnotations")), OMIT),
        ("labels", as_str_map(get(export, "spec", "exportedLabels")), OMIT),
        ("exportCreationTimestamp", go_time(get(export, "metadata", "creationTimestamp"))),
        ("ports", ports),
        ("type", "Headless" if spec.get("clusterIP") == "None" else "ClusterSetIP"),
        ("sessionAffinity", as_str(spec.get("sessionAffinity"))),
        ("sessionAffinityConfig", affinity_config, OMIT),
        ("ipFamilies", [as_str(f) for f in as_list(spec.get("ipFamilies"))], OMIT),
        ("internalTrafficPolicy",
         Present(as_str(internal_policy)) if internal_policy is not None else None, OMIT),
        ("trafficDistribution",
         Present(as_str(distribution)) if distribution is not None else None, OMIT),
    )
    return {f"{SERVICE_EXPORTS.state_prefix(cluster)}{ns}/{name}": go_json(value)}
