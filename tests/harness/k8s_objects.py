"""Kubernetes objects for apiserver tests, built by hand (no Cilium test data copied)."""

from __future__ import annotations

from typing import Any

from apiserver.exports import ExportOptions, Exports
from apiserver.sources import KINDS_BY_NAME

GLOBAL = {"service.cilium.io/global": "true"}


def ns(name: str, value: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if value is not None:
        meta["annotations"] = {"clustermesh.cilium.io/global": value}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def cep(name: str, namespace: str, ip: str, *, ident: int = 65537,
        ipv6: str | None = None, created: str | None = None) -> dict[str, Any]:
    addressing: dict[str, str] = {"ipv4": ip}
    if ipv6:
        addressing["ipv6"] = ipv6
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "ownerReferences": [{"kind": "Pod", "uid": f"uid-{name}"}]}
    if created is not None:
        meta["creationTimestamp"] = created
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint", "metadata": meta,
            "status": {"identity": {"id": ident},
                       "networking": {"addressing": [addressing], "node": "172.18.0.2"},
                       "encryption": {"key": 3}, "service-account": "default",
                       "named-ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}}


def ces_of(name: str, namespace: str, *ceps: dict[str, Any],
           created: str | None = None) -> dict[str, Any]:
    """The CiliumEndpointSlice form of CiliumEndpoints (what Cilium's operator packs)."""
    meta: dict[str, Any] = {"name": name}
    if created is not None:
        meta["creationTimestamp"] = created
    return {"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumEndpointSlice",
            "metadata": meta, "namespace": namespace,
            "endpoints": [{
                "name": c["metadata"]["name"], "id": c["status"]["identity"]["id"],
                "networking": c["status"]["networking"],
                "encryption": c["status"]["encryption"],
                "named-ports": c["status"]["named-ports"],
                "service-account": c["status"]["service-account"],
                "pod-uid": c["metadata"]["ownerReferences"][0]["uid"],
            } for c in ceps]}


def identity(ident: int, namespace: str | None) -> dict[str, Any]:
    labels = {"k8s:app": "x", "k8s:io.cilium.k8s.policy.cluster": "c1"}
    if namespace is not None:
        labels["k8s:io.kubernetes.pod.namespace"] = namespace
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
            "metadata": {"name": str(ident)}, "security-labels": labels}


def service(name: str, namespace: str, annotations: dict[str, str] | None = None,
            ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": dict(GLOBAL if annotations is None else annotations)},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80,
                                                           "protocol": "TCP"}]}}


def endpoint_slice(name: str, namespace: str, svc: str | None, *addresses: str,
                   address_type: str = "IPv4") -> dict[str, Any]:
    labels = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    if svc is not None:
        labels["kubernetes.io/service-name"] = svc
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "addressType": address_type,
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def export_obj(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": name, "namespace": namespace,
                         "creationTimestamp": "2026-01-01T00:00:00Z"}}


def expected_state(objects: list[dict[str, Any]], *, cluster: str, cluster_id: int,
                   **options: Any) -> dict[bytes, bytes]:
    """What the export rules publish for ``objects``; where two objects claim one key,
    the one later in ``objects`` wins (the caller orders them by the expected owner)."""
    exports = Exports(ExportOptions(cluster=cluster, cluster_id=cluster_id, **options))
    out: dict[bytes, bytes] = {}
    for obj in objects:
        exports.upsert(KINDS_BY_NAME[obj["kind"]], obj)
    for obj in objects:
        for resource, kind in exports.owner_kind.items():
            if kind.name == obj["kind"]:
                meta = obj["metadata"]
                owner = (resource, meta.get("namespace") or "", meta["name"])
                out |= {k.encode(): v for k, v in exports.desired(owner)[0].items()}
    return out
