"""Entry validation: every rule with a valid and an invalid example.

Valid entries come from the converters (whose golden values are Cilium's own
testdata) and from the facts' examples: validation must never reject them.
"""

from __future__ import annotations

import json

import pytest
import zstandard

from apiserver import converters
from apiserver.endpointslices import endpointslice_entries
from apiserver.sample import workload
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
from kvstoremesh.validation import check_entry, identity_range

NODE = {"Name": "node-a", "Cluster": "cluster3", "IPAddresses": [], "ClusterID": 3}
SERVICE = {"cluster": "cluster3", "namespace": "ns-alpha", "name": "echo-service",
           "frontends": {"10.96.0.10": {"http": {"Protocol": "TCP", "Port": 80}}},
           "backends": {"10.244.1.10": {"http": {"Protocol": "TCP", "Port": 8080}}},
           "labels": {}, "selector": {"app": "echo"}, "includeExternal": True,
           "shared": True, "clusterID": 3}
EXPORT = {"cluster": "cluster3", "name": "basic", "namespace": "default",
          "exportCreationTimestamp": "2026-01-01T00:00:00Z", "ports": [],
          "type": "ClusterSetIP", "sessionAffinity": "ClientIP"}
ENDPOINT = {"IP": "10.244.2.74", "HostIP": "172.18.0.2", "ID": 199475, "Key": 5,
            "Metadata": ""}
ENDPOINT_SLICE = {"metadata": {"name": "echo-7xk2p", "namespace": "ns-alpha",
                               "labels": {"kubernetes.io/service-name": "echo-service"}},
                  "addressType": "IPv4",
                  "endpoints": [{"addresses": ["10.244.1.10"], "conditions": {"ready": True}}],
                  "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def slice_value(*, cluster: str = "cluster3", cluster_id: int = 3, **fields: object) -> bytes:
    """ENDPOINT_SLICE with ``fields`` replaced, as the apiserver encodes it."""
    (value,) = endpointslice_entries({**ENDPOINT_SLICE, **fields}, cluster=cluster,
                                     cluster_id=cluster_id).values()
    return value


def check(resource: Resource, key: str, value: bytes | dict, *, cluster: str = "cluster3",
          cluster_id: int = 3, max_connected: int = 255) -> str | None:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return check_entry(resource, key, raw, cluster=cluster, cluster_id=cluster_id,
                       max_connected_clusters=max_connected)


def test_identity_ranges() -> None:
    assert identity_range(1, 255) == (65536, 131071)
    assert identity_range(3, 255) == (196608, 262143)
    assert identity_range(1, 511) == (32768, 65535)


def test_facts_examples_are_valid() -> None:
    assert check(NODES, "node-a", NODE) is None
    assert check(SERVICES, "ns-alpha/echo-service", SERVICE) is None
    assert check(SERVICE_EXPORTS, "default/basic", EXPORT) is None
    assert check(IDENTITIES, "196915",
                 b"k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;"
                 b"k8s:io.kubernetes.pod.namespace=bar;") is None
    assert check(ENDPOINTS, "10.244.2.74", ENDPOINT) is None
    assert check(ENDPOINTS, "10.244.0.0/16", {**ENDPOINT, "IP": "10.244.0.0",
                                               "Mask": "//8AAA=="}) is None
    assert check(ENDPOINTS, "fd00::5", {**ENDPOINT, "IP": "fd00::5"}) is None
    assert check(ENDPOINTS, "10.0.0.1", {**ENDPOINT, "IP": "10.0.0.1", "ID": 2}) is None
    assert check(ENDPOINT_SLICES, "ns-alpha/echo-7xk2p", slice_value()) is None


@pytest.mark.parametrize("cluster_id", [1, 7, 255])
def test_everything_the_converters_publish_is_valid(cluster_id: int) -> None:
    cluster = f"cluster{cluster_id}"
    objects = workload(cluster=cluster, cluster_id=cluster_id)
    entries: dict[str, bytes] = {}
    for obj in objects:
        kind = obj["kind"]
        if kind == "CiliumIdentity":
            entries |= converters.identity_entries(obj)
        elif kind == "CiliumEndpoint":
            entries |= converters.endpoint_entries(obj)
        elif kind == "CiliumNode":
            entries |= converters.node_entries(obj, cluster=cluster, cluster_id=cluster_id)
        elif kind == "Service":
            slices = [o for o in objects if o["kind"] == "EndpointSlice"]
            entries |= converters.service_entries(obj, slices, cluster=cluster,
                                                  cluster_id=cluster_id)
        elif kind == "EndpointSlice":
            entries |= endpointslice_entries(obj, cluster=cluster, cluster_id=cluster_id)
    assert len(entries) > 10
    assert any(k.startswith(ENDPOINT_SLICES.state_prefix(cluster)) for k in entries)
    for key, value in entries.items():
        for resource in RESOURCES:
            prefix = resource.state_prefix(cluster)
            if key.startswith(prefix):
                assert check(resource, key[len(prefix):], value, cluster=cluster,
                             cluster_id=cluster_id) is None, key
                break
        else:
            raise AssertionError(f"unexpected key {key}")


#: (resource, key, value, reason) of entries the rules reject (also judged by the
#: convergence checker's oracle in test_oracle).
INVALID: list[tuple[Resource, str, bytes | dict, str]] = [
    (NODES, "node-a", b"{not json", "invalid-json"),
    (NODES, "node-a", b"[1,2]", "invalid-json"),
    (NODES, "node-b", NODE, "name-mismatch"),
    (NODES, "node-a", {**NODE, "Cluster": "cluster4"}, "cluster-mismatch"),
    (NODES, "node-a", {**NODE, "ClusterID": 4}, "cluster-id-mismatch"),
    (SERVICES, "ns-alpha/echo-service", {**SERVICE, "name": ""}, "missing-name"),
    (SERVICES, "ns-alpha/echo-service", {**SERVICE, "cluster": "x"}, "cluster-mismatch"),
    (SERVICES, "other/echo-service", SERVICE, "name-mismatch"),
    (SERVICES, "ns-alpha/echo-service", {**SERVICE, "clusterID": 9}, "cluster-id-mismatch"),
    (SERVICES, "ns-alpha/echo-service", {**SERVICE, "backends": {"nope": {}}},
     "invalid-backends"),
    (SERVICES, "ns-alpha/echo-service", {**SERVICE, "frontends": {"1.2.3": {}}},
     "invalid-frontends"),
    (SERVICE_EXPORTS, "default/basic", {**EXPORT, "namespace": ""}, "missing-namespace"),
    (SERVICE_EXPORTS, "default/basic", {**EXPORT, "cluster": "x"}, "cluster-mismatch"),
    (SERVICE_EXPORTS, "default/other", EXPORT, "name-mismatch"),
    (SERVICE_EXPORTS, "default/basic", {**EXPORT, "exportCreationTimestamp":
                                        "0001-01-01T00:00:00Z"}, "missing-timestamp"),
    (SERVICE_EXPORTS, "default/basic", {**EXPORT, "type": "LoadBalancer"}, "invalid-type"),
    (SERVICE_EXPORTS, "default/basic", {**EXPORT, "sessionAffinity": "Sticky"},
     "invalid-session-affinity"),
    (IDENTITIES, "abc", b"k8s:io.cilium.k8s.policy.cluster=cluster3;", "invalid-id"),
    (IDENTITIES, "65537", b"k8s:io.cilium.k8s.policy.cluster=cluster3;", "id-out-of-range"),
    (IDENTITIES, "196915", b"k8s:app=x;", "cluster-label-mismatch"),
    (IDENTITIES, "196915", b"k8s:io.cilium.k8s.policy.cluster=cluster30;",
     "cluster-label-mismatch"),
    (IDENTITIES, "196915", b"\xff\xfe", "invalid-labels"),
    (ENDPOINTS, "10.0.0.300", ENDPOINT, "invalid-key"),
    (ENDPOINTS, "10.244.2.74", b"\x00garbage", "invalid-json"),
    (ENDPOINTS, "10.244.2.75", ENDPOINT, "key-mismatch"),
    (ENDPOINTS, "10.244.0.0/16", {**ENDPOINT, "IP": "10.244.0.0", "Mask": "////AA=="},
     "key-mismatch"),
    (ENDPOINTS, "10.244.2.74", {**ENDPOINT, "ID": 65537}, "id-out-of-range"),
    (ENDPOINTS, "10.244.2.74", {**ENDPOINT, "ID": "199475"}, "invalid-id"),
]


@pytest.mark.parametrize(("resource", "key", "value", "reason"), INVALID)
def test_invalid_entries_are_rejected(resource: Resource, key: str, value: bytes | dict,
                                      reason: str) -> None:
    assert check(resource, key, value) == reason


def test_endpointslices_are_checked_as_zstd_protobuf_not_json() -> None:
    key = "ns-alpha/echo-7xk2p"
    # JSON is not a valid EndpointSlice value: never handed to the JSON rules.
    assert check(ENDPOINT_SLICES, key, {"cluster": "cluster3"}) == "invalid-zstd"
    assert check(ENDPOINT_SLICES, key, slice_value()[:-4]) == "invalid-zstd"  # truncated
    bomb = zstandard.ZstdCompressor().compress(b"\0" * ((16 << 20) + 1))
    assert len(bomb) < 4096 and check(ENDPOINT_SLICES, key, bomb) == "too-large"
    assert check(ENDPOINT_SLICES, key, slice_value(cluster="cluster4")) == "cluster-mismatch"
    assert check(ENDPOINT_SLICES, "ns-alpha/echo", slice_value()) == "name-mismatch"
    assert check(ENDPOINT_SLICES, key, slice_value(cluster_id=4)) == "cluster-id-mismatch"


def test_511_mode_ranges() -> None:
    # 65536 belongs to cluster 2 in 511-mode, cluster 1 in 255-mode.
    label = b"k8s:io.cilium.k8s.policy.cluster=cluster1;"
    assert check(IDENTITIES, "65536", label, cluster="cluster1", cluster_id=1) is None
    assert check(IDENTITIES, "65536", label, cluster="cluster1", cluster_id=1,
                 max_connected=511) == "id-out-of-range"


@pytest.mark.parametrize("key", ["\u00b2", "\u0666\u0665\u0665\u0663\u0667", "65537\u00b9"])
def test_identity_keys_take_ascii_digits_only(key: str) -> None:
    # str.isdigit() is true for these; int() raises on some: that once ended the session.
    assert check_entry(IDENTITIES, key, b"k8s:io.cilium.k8s.policy.cluster=c1;", cluster="c1",
                       cluster_id=1, max_connected_clusters=255) == "invalid-id"
