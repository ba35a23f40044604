"""A small, realistic workload of one cluster as Kubernetes objects.

Used by the local mesh (each cluster's manifests directory starts with it) and
by the tests: a few CiliumNodes with IPv4 and IPv6 pod CIDRs, a namespace, the
identities of two apps, their CiliumEndpoints (dual-stack), and one global
service with its EndpointSlice.  Addresses derive from the cluster ID so that
clusters never overlap: pods in ``10.<id>.0.0/16`` and ``fd00:10:<id>::/48``,
nodes in ``172.18.<id>.0/24``, identities in the cluster's range (facts §6.3).
"""

from __future__ import annotations

from typing import Any

GLOBAL_SERVICE = "echo"
NAMESPACE = "demo"


def identity_id(cluster_id: int, index: int, *, max_connected_clusters: int = 255) -> int:
    shift = 16 if max_connected_clusters == 255 else 15
    return (cluster_id << shift) + 1 + index


def workload(*, cluster: str, cluster_id: int, nodes: int = 3, pods_per_app: int = 2,
             max_connected_clusters: int = 255) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE},
    }]
    for n in range(nodes):
        objects.append({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNode",
            "metadata": {"name": f"{cluster}-node-{n}",
                         "labels": {"kubernetes.io/hostname": f"{cluster}-node-{n}"}},
            "spec": {
                "addresses": [{"type": "InternalIP", "ip": f"172.18.{cluster_id}.{n + 2}"},
                              {"type": "CiliumInternalIP", "ip": f"10.{cluster_id}.{n}.1"}],
                "ipam": {"podCIDRs": [f"10.{cluster_id}.{n}.0/24",
                                      f"fd00:10:{cluster_id}:{n}::/64"]},
                "health": {"ipv4": f"10.{cluster_id}.{n}.2"},
                "encryption": {"key": 0},
            },
        })
    for a, app in enumerate(("echo", "client")):
        ident = identity_id(cluster_id, a, max_connected_clusters=max_connected_clusters)
        objects.append({
            "apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
            "metadata": {"name": str(ident)},
            "security-labels": {
                "k8s:app": app,
                "k8s:io.cilium.k8s.policy.cluster": cluster,
                "k8s:io.kubernetes.pod.namespace": NAMESPACE,
            },
        })
        for p in range(pods_per_app):
            node = p % nodes
            host = 10 + a * 50 + p
            objects.append({
                "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
                "metadata": {"name": f"{app}-{p}", "namespace": NAMESPACE},
                "status": {
                    "identity": {"id": ident},
                    "networking": {
                        "addressing": [{"ipv4": f"10.{cluster_id}.{node}.{host}",
                                        "ipv6": f"fd00:10:{cluster_id}:{node}::{host:x}"}],
                        "node": f"172.18.{cluster_id}.{node + 2}",
                    },
                    "encryption": {"key": 0},
                    "service-account": "default",
                    "named-ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
                    if app == "echo" else [],
                },
            })
    objects.append({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": GLOBAL_SERVICE, "namespace": NAMESPACE,
                     "annotations": {"service.cilium.io/global": "true"}},
        "spec": {"type": "ClusterIP", "clusterIP": f"10.96.{cluster_id}.10",
                 "clusterIPs": [f"10.96.{cluster_id}.10"], "selector": {"app": "echo"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                            "targetPort": 8080}]},
    })
    objects.append({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{GLOBAL_SERVICE}-abcde", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": GLOBAL_SERVICE}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [f"10.{cluster_id}.{p % nodes}.{10 + p}"],
                       "conditions": {"ready": True, "serving": True, "terminating": False}}
                      for p in range(pods_per_app)],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
    return objects
