"""Tests of :mod:`apiserver.converters` (Kubernetes objects -> Cilium etcd entries).

Golden cases live in ``tests/golden/converters/*.json``: inputs and expected
etcd values reconstructed from Cilium's own ``clustermesh-apiserver`` txtar
testdata (each file names its source).  The expected values were taken from the
txtar's pretty-printed JSON, compacted with the field order preserved, so they
do not depend on the converter's encoder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiserver import converters as conv
from apiserver.converters import (
    endpoint_entries,
    gojson,
    identity_entries,
    identity_namespace,
    namespace_is_global,
    node_entries,
    service_entries,
    service_export_entries,
)
from clustermesh.keys import ENDPOINTS, IDENTITIES, NODES, SERVICE_EXPORTS, SERVICES

GOLDEN = Path(__file__).parent / "golden" / "converters"
GOLDEN_FILES = sorted(GOLDEN.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def run_golden(doc: dict[str, Any]) -> dict[str, str]:
    func = getattr(conv, doc["function"])
    out: dict[str, str] = {}
    for call in doc["calls"]:
        kwargs = dict(call["kwargs"])
        # The namespace of a call is checked by the export rules, not by the converter.
        if "namespace" in kwargs and not namespace_is_global(
                kwargs.pop("namespace"), default=kwargs.pop("default_global", True)):
            continue
        kwargs.pop("default_global", None)
        for key, value in func(*call["args"], **kwargs).items():
            assert isinstance(value, bytes)
            out[key] = value.decode("utf-8")
    return out


def one(entries: dict[str, bytes]) -> tuple[str, dict[str, Any]]:
    assert len(entries) == 1, entries
    ((key, value),) = entries.items()
    return key, json.loads(value)


# --------------------------------------------------------------------------- golden


def test_golden_files_present() -> None:
    names = {p.stem for p in GOLDEN_FILES}
    assert {"identities", "ciliumendpoints", "ciliumnodes", "globalnamespace-services-1",
            "serviceexports"} <= names


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert run_golden(doc) == doc["expected"]


# The example values quoted in facts §2 (cilium-clustermesh-facts.md), byte for byte.
FACTS_IDENTITY = (
    "k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=bar;")
FACTS_IPCACHE = (
    '{"IP":"10.244.2.74","HostIP":"172.18.0.2","ID":199475,"Key":5,"Metadata":"",'
    '"K8sNamespace":"bar","K8sPodName":"cep-002","K8sPodUID":"cep-pod-uid",'
    '"K8sServiceAccount":"default","NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"},'
    '{"Name":"dns","Port":53,"Protocol":"UDP"}]}')
FACTS_SERVICE = (
    '{"cluster":"cluster3","namespace":"ns-alpha","name":"echo-service",'
    '"frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},'
    '"backends":{"10.244.1.10":{"http":{"Protocol":"TCP","Port":8080}}},"labels":{},'
    '"selector":{"app":"echo"},"includeExternal":true,"shared":true,"clusterID":3}')
FACTS_EXPORT = (
    '{"cluster":"cluster1","name":"basic","namespace":"default",'
    '"annotations":{"my-annotation":"foo"},"labels":{"my-label":"test"},'
    '"exportCreationTimestamp":"2026-01-01T00:00:00Z",'
    '"ports":[{"name":"my-port-1","protocol":"TCP","port":80}],"type":"ClusterSetIP",'
    '"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":42}}}')
FACTS_NODE_PARTS = (
    '{"Name":"test-node-1","Cluster":"cluster3","IPAddresses":[{"Type":"InternalIP",'
    '"IP":"172.18.0.2"},',
    '{"Type":"CiliumInternalIP","IP":"10.244.0.10"}',
    '"IPv4AllocCIDR":{"IP":"10.244.0.0","Mask":"////AA=="},',
    '"ClusterID":3,"Source":"custom-resource","EncryptionKey":0,',
)


def test_facts_examples() -> None:
    identities = run_golden(load("identities"))
    assert identities["cilium/state/identities/v1/id/196915"] == FACTS_IDENTITY
    endpoints = run_golden(load("ciliumendpoints"))
    assert endpoints["cilium/state/ip/v1/default/10.244.2.74"] == FACTS_IPCACHE
    services = run_golden(load("globalnamespace-services-1"))
    assert services["cilium/state/services/v1/cluster3/ns-alpha/echo-service"] == FACTS_SERVICE
    exports = run_golden(load("serviceexports"))
    assert exports["cilium/state/serviceexports/v1/cluster1/default/basic"] == FACTS_EXPORT
    node = run_golden(load("ciliumnodes"))["cilium/state/nodes/v1/cluster3/test-node-1"]
    for part in FACTS_NODE_PARTS:
        assert part in node


# --------------------------------------------------------------------------- fixtures


def svc(annotations: dict[str, str] | None = None, *, name: str = "echo", ns: str = "default",
        labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations is not None:
        metadata["annotations"] = annotations
    if labels is not None:
        metadata["labels"] = labels
    full_spec = {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                 "selector": {"app": "echo"}, "type": "ClusterIP"}
    full_spec.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": full_spec}


def eps(*endpoints: dict[str, Any], name: str = "echo-abc", service: str = "echo",
        ns: str = "default", address_type: str = "IPv4",
        ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "endpoints": list(endpoints),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}] if ports is None else ports,
    }


def ep(*addresses: str, **extra: Any) -> dict[str, Any]:
    return {"addresses": list(addresses), **extra}


GLOBAL = {"service.cilium.io/global": "true"}


def services(service: dict[str, Any], slices: list[dict[str, Any]] | None = None,
             **kwargs: Any) -> dict[str, bytes]:
    kwargs.setdefault("cluster", "c1")
    kwargs.setdefault("cluster_id", 1)
    return service_entries(service, slices or [], **kwargs)


def namespace(name: str = "default", value: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if value is not None:
        metadata["annotations"] = {"clustermesh.cilium.io/global": value}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def cep(*addressing: dict[str, str], name: str = "pod-a", ns: str = "default",
        **status: Any) -> dict[str, Any]:
    full_status: dict[str, Any] = {
        "identity": {"id": 65600},
        "networking": {"addressing": list(addressing), "node": "172.18.0.2"},
    }
    full_status.update(status)
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
            "metadata": {"name": name, "namespace": ns}, "status": full_status}


# --------------------------------------------------------------------------- annotations


@pytest.mark.parametrize(("annotations", "published"), [
    ({"service.cilium.io/global": "true"}, True),
    ({"service.cilium.io/global": "TRUE"}, True),
    ({"service.cilium.io/global": "True"}, True),
    ({"service.cilium.io/global": "false"}, False),
    ({"service.cilium.io/global": "yes"}, False),
    ({"service.cilium.io/global": ""}, False),
    ({}, False),
    (None, False),
    ({"io.cilium/global-service": "true"}, True),
    ({"io.cilium/global-service": "tRuE"}, True),
    ({"io.cilium/global-service": "false"}, False),
    # The primary annotation wins over the alias (annotation.Get order).
    ({"service.cilium.io/global": "false", "io.cilium/global-service": "true"}, False),
    ({"service.cilium.io/global": "true", "io.cilium/global-service": "false"}, True),
    # shared: default true, only "true" (any case) keeps it shared.
    ({"service.cilium.io/global": "true", "service.cilium.io/shared": "true"}, True),
    ({"service.cilium.io/global": "true", "service.cilium.io/shared": "TRUE"}, True),
    ({"service.cilium.io/global": "true", "service.cilium.io/shared": "false"}, False),
    ({"service.cilium.io/global": "true", "service.cilium.io/shared": "no"}, False),
    ({"service.cilium.io/global": "true", "io.cilium/shared-service": "false"}, False),
    ({"service.cilium.io/global": "true", "io.cilium/shared-service": "True"}, True),
    ({"io.cilium/global-service": "true", "io.cilium/shared-service": "false"}, False),
    ({"service.cilium.io/global": "true", "service.cilium.io/shared": "true",
      "io.cilium/shared-service": "false"}, True),
    # shared without global is ignored.
    ({"service.cilium.io/shared": "true"}, False),
    # affinity is consumed by agents only; it does not change what is stored.
    ({"service.cilium.io/global": "true", "service.cilium.io/affinity": "local"}, True),
])
def test_service_annotation_rules(annotations: dict[str, str] | None, published: bool) -> None:
    out = services(svc(annotations))
    assert bool(out) is published
    if published:
        key, value = one(out)
        assert key == "cilium/state/services/v1/c1/default/echo"
        assert value["shared"] is True and value["includeExternal"] is True


def test_affinity_not_stored() -> None:
    plain = services(svc(GLOBAL))
    local = services(svc({**GLOBAL, "service.cilium.io/affinity": "local"}))
    assert plain == local


@pytest.mark.parametrize(("ns", "default", "expected"), [
    (None, True, False),  # no Namespace object: not global, whatever the default
    (None, False, False),
    (namespace(), True, True),
    (namespace(), False, False),
    (namespace(value="true"), False, True),
    (namespace(value="TRUE"), False, True),
    (namespace(value="false"), True, False),
    (namespace(value="False"), True, False),
    (namespace(value=""), True, False),
    (namespace(value="yes"), True, False),
])
def test_namespace_is_global(ns: dict[str, Any] | None, default: bool, expected: bool) -> None:
    assert namespace_is_global(ns, default=default) is expected


def test_namespace_default_is_global() -> None:
    # IsGlobalNamespaceByObject: no Namespace object is not global; the default applies
    # to a Namespace without the annotation.
    assert namespace_is_global(None) is False
    assert namespace_is_global(namespace()) is True
    assert namespace_is_global(namespace(value="false")) is False


def test_endpoint_namespace_annotation_from_txtar() -> None:
    # ciliumendpoints.txtar: annotating namespace "foo" global=false removes its endpoints;
    # the caller checks the namespace, the converter itself is namespace-agnostic.
    foo = load("ciliumendpoints")["calls"][0]["args"][0]
    assert foo["metadata"]["namespace"] == "foo"
    assert namespace_is_global(namespace("foo", "false")) is False
    assert namespace_is_global(namespace("foo")) is True
    assert endpoint_entries(foo)


# --------------------------------------------------------------------------- identities


def identity(name: str, labels: dict[str, str] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
                           "metadata": {"name": name}}
    if labels is not None:
        obj["security-labels"] = labels
    return obj


def test_identity_label_string() -> None:
    out = identity_entries(identity("65538", {
        "k8s:zz": "1", "container:aa": "2", "unsourced": "3", "$host": "", "k8s:empty": "",
        "k8s:html": "<a&b>",
    }))
    assert out == {"cilium/state/identities/v1/id/65538": (
        b"container:aa=2;k8s:empty=;reserved:host=;k8s:html=<a&b>;unspec:unsourced=3;k8s:zz=1;"
    )}


def test_identity_sorted_by_key_not_source() -> None:
    out = identity_entries(identity("70000", {"k8s:b": "x", "cilium:a": "y"}))
    assert out[IDENTITIES.state_prefix("") + "70000"] == b"cilium:a=y;k8s:b=x;"


@pytest.mark.parametrize("name", ["abc", "", "12a", "-1", "1.5", str(1 << 32)])
def test_identity_non_numeric_name(name: str) -> None:
    assert identity_entries(identity(name, {"k8s:a": "b"})) == {}


@pytest.mark.parametrize("labels", [None, {}])
def test_identity_without_security_labels(labels: dict[str, str] | None) -> None:
    assert identity_entries(identity("65537", labels)) == {}


def test_identity_namespace() -> None:
    doc = load("identities")
    assert identity_namespace(doc["calls"][0]["args"][0]) == "bar"
    assert identity_namespace(identity("1", {"k8s:app": "x"})) is None


# --------------------------------------------------------------------------- endpoints


def test_endpoint_ipv6_only() -> None:
    key, value = one(endpoint_entries(cep({"ipv6": "fd00:10:244:1::d643"})))
    assert key == "cilium/state/ip/v1/default/fd00:10:244:1::d643"
    assert value["IP"] == "fd00:10:244:1::d643"
    assert value["HostIP"] == "172.18.0.2"
    assert "Mask" not in value


def test_endpoint_dual_stack_two_keys() -> None:
    out = endpoint_entries(cep({"ipv4": "10.0.0.5", "ipv6": "fd00::5"}))
    assert sorted(out) == ["cilium/state/ip/v1/default/10.0.0.5",
                           "cilium/state/ip/v1/default/fd00::5"]
    values = [json.loads(v) for v in out.values()]
    assert {v["ID"] for v in values} == {65600}
    assert all(list(v) == ["IP", "HostIP", "ID", "Key", "Metadata", "K8sNamespace",
                           "K8sPodName"] for v in values)


def test_endpoint_address_removal() -> None:
    both = cep({"ipv4": "10.0.0.5", "ipv6": "fd00::5"}, {"ipv4": "10.0.1.5"})
    shrunk = copy.deepcopy(both)
    shrunk["status"]["networking"]["addressing"] = [{"ipv4": "10.0.0.5"}]
    full, fewer = endpoint_entries(both), endpoint_entries(shrunk)
    assert len(full) == 3 and len(fewer) == 1
    assert set(fewer) < set(full)
    gone = set(full) - set(fewer)
    assert gone == {"cilium/state/ip/v1/default/fd00::5", "cilium/state/ip/v1/default/10.0.1.5"}
    # Same address, same value: the caller's diff sees no change for it.
    assert fewer["cilium/state/ip/v1/default/10.0.0.5"] == full[
        "cilium/state/ip/v1/default/10.0.0.5"]
    no_addresses = copy.deepcopy(both)
    no_addresses["status"]["networking"]["addressing"] = []
    assert endpoint_entries(no_addresses) == {}


def test_endpoint_txtar_v2_shrinks() -> None:
    before = run_golden(load("ciliumendpoints"))
    after = run_golden(load("ciliumendpoints-v2"))
    cep_001_before = {k for k, v in before.items() if '"K8sPodName":"cep-001"' in v}
    assert len(cep_001_before) == 2 and len(after) == 1


def test_endpoint_addresses_normalised_and_invalid_skipped() -> None:
    out = endpoint_entries(cep({"ipv4": "010.0.0.1", "ipv6": "FD00:0:0::0001"},
                               {"ipv4": "not-an-ip", "ipv6": "fe80::1%eth0"},
                               {"ipv6": "::ffff:10.1.2.3"}))
    assert sorted(out) == ["cilium/state/ip/v1/default/10.1.2.3",
                           "cilium/state/ip/v1/default/fd00::1"]
    assert json.loads(out["cilium/state/ip/v1/default/10.1.2.3"])["IP"] == "10.1.2.3"


def test_endpoint_optional_fields() -> None:
    obj = cep({"ipv4": "10.0.0.7"})
    del obj["status"]["identity"]
    obj["status"]["networking"]["node"] = "bogus"
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid"},
        {"apiVersion": "v1", "kind": "Pod", "name": "pod-a", "uid": "pod-uid"}]
    obj["status"]["encryption"] = {"key": 300}  # uint8 in Go
    obj["status"]["named-ports"] = []
    _, value = one(endpoint_entries(obj))
    assert value == {"IP": "10.0.0.7", "HostIP": "", "ID": 0, "Key": 300 & 0xFF,
                     "Metadata": "", "K8sNamespace": "default", "K8sPodName": "pod-a",
                     "K8sPodUID": "pod-uid"}


def test_endpoint_without_networking() -> None:
    obj = cep()
    del obj["status"]["networking"]
    assert endpoint_entries(obj) == {}
    assert endpoint_entries({"metadata": {"name": "x"}}) == {}


# --------------------------------------------------------------------------- nodes


def test_node_cidrs_pools_and_addresses() -> None:
    node = {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNode",
        "metadata": {"name": "n1", "annotations": {"io.cilium.network.wg-pub-key": "KEY"}},
        "spec": {
            "addresses": [{"ip": "bad", "type": "InternalIP"},
                          {"ip": "FC00::0002", "type": "ExternalIP"}],
            "ipam": {"podCIDRs": ["10.1.0.7/24", "nonsense", "10.2.0.0/16", "fd00:1::/64",
                                  "10.3.0.0/255.255.0.0"],
                     "pools": {"allocated": [{"pool": "p", "cidrs": ["10.9.0.0/28"]}]}},
            "ingress": {"ipv4": "10.1.0.200", "ipv6": ""},
            "encryption": {"key": 258},
        },
    }
    key, value = one(node_entries(node, cluster="c7", cluster_id=7))
    assert key == "cilium/state/nodes/v1/c7/n1"
    assert value["IPAddresses"] == [{"Type": "ExternalIP", "IP": "fc00::2"}]
    assert value["IPv4AllocCIDR"] == {"IP": "10.1.0.0", "Mask": "////AA=="}
    assert value["IPv4SecondaryAllocCIDRs"] == [{"IP": "10.2.0.0", "Mask": "//8AAA=="},
                                                {"IP": "10.9.0.0", "Mask": "////8A=="}]
    assert value["IPv6AllocCIDR"] == {"IP": "fd00:1::", "Mask": "//////////8AAAAAAAAAAA=="}
    assert value["IPv6SecondaryAllocCIDRs"] is None
    assert (value["IPv4IngressIP"], value["IPv6IngressIP"]) == ("10.1.0.200", "")
    assert (value["IPv4HealthIP"], value["IPv6HealthIP"]) == ("", "")
    assert value["EncryptionKey"] == 2
    assert value["Cluster"] == "c7" and value["ClusterID"] == 7
    assert value["Labels"] is None
    assert value["Annotations"] == {"io.cilium.network.wg-pub-key": "KEY"}
    assert value["WireguardPubKey"] == "KEY"
    assert value["BootID"] == ""


def test_node_forces_local_cluster() -> None:
    node = load("ciliumnodes")["calls"][0]["args"][0]
    out = node_entries(node, cluster="other", cluster_id=200)
    key, value = one(out)
    assert key == NODES.state_prefix("other") + "test-node-1"
    assert (value["Cluster"], value["ClusterID"]) == ("other", 200)


def test_node_without_name() -> None:
    assert node_entries({"metadata": {}}, cluster="c1", cluster_id=1) == {}


def test_node_empty_addresses_is_null() -> None:
    _, value = one(node_entries({"metadata": {"name": "n", "labels": {}}},
                                cluster="c1", cluster_id=1))
    assert value["IPAddresses"] is None and value["IPv4AllocCIDR"] is None
    assert value["Labels"] == {}  # present but empty: a non-nil Go map


# --------------------------------------------------------------------------- services


def test_service_headless_has_empty_frontends() -> None:
    slices = [eps(ep("10.244.1.10"))]
    for headless in (svc(GLOBAL, clusterIP="None", clusterIPs=["None"]),
                     svc(GLOBAL, clusterIP="none", clusterIPs=["none"]),
                     svc(GLOBAL, labels={"service.kubernetes.io/headless": ""})):
        _, value = one(services(headless, slices))
        assert value["frontends"] == {}
        assert value["backends"] == {"10.244.1.10": {"http": {"Protocol": "TCP", "Port": 8080}}}
    raw = next(iter(services(svc(GLOBAL, clusterIP="None"), slices).values()))
    assert b'"frontends":{},' in raw


def test_service_dual_stack_frontends() -> None:
    service = svc(GLOBAL, clusterIPs=["10.96.0.10", "fd00:96::10"],
                  ports=[{"name": "http", "port": 80, "protocol": "TCP"},
                         {"name": "dns", "port": 53, "protocol": "UDP"}])
    _, value = one(services(service))
    ports = {"http": {"Protocol": "TCP", "Port": 80}, "dns": {"Protocol": "UDP", "Port": 53}}
    assert value["frontends"] == {"10.96.0.10": ports, "fd00:96::10": ports}
    assert value["backends"] == {}
    # clusterIPs absent: falls back to clusterIP.
    _, value = one(services(svc(GLOBAL, clusterIPs=[])))
    assert list(value["frontends"]) == ["10.96.0.10"]


@pytest.mark.parametrize(("conditions", "included"), [
    ({"ready": True, "serving": True, "terminating": False}, True),
    ({}, True),  # all nil: ready
    (None, True),
    ({"ready": False, "serving": True, "terminating": True}, True),  # terminating but serving
    ({"ready": False, "serving": True}, True),  # not ready but serving
    ({"ready": False, "serving": False, "terminating": True}, False),  # terminating, not serving
    ({"ready": False, "serving": False}, False),
    # Cilium's ParseEndpointConditionsV1 treats a nil serving as serving.
    ({"ready": False}, True),
    ({"ready": True, "serving": False}, True),
])
def test_service_backend_conditions(conditions: dict[str, bool] | None, included: bool) -> None:
    endpoint = ep("10.244.1.10") if conditions is None else ep("10.244.1.10",
                                                               conditions=conditions)
    _, value = one(services(svc(GLOBAL), [eps(endpoint)]))
    assert (value["backends"] != {}) is included


def test_service_hostnames_and_zones() -> None:
    slices = [eps(
        ep("10.244.1.10", hostname="web-0", zone="zone-a",
           hints={"forZones": [{"name": "zone-a"}, {"name": "zone-b"}]}),
        ep("10.244.1.11", zone="zone-b"),
        ep("10.244.1.12", deprecatedTopology={"topology.kubernetes.io/zone": "zone-c"}),
        ep("10.244.1.13"),
    )]
    raw = next(iter(services(svc(GLOBAL), slices).values())).decode()
    value = json.loads(raw)
    assert value["hostnames"] == {"10.244.1.10": "web-0"}
    assert value["zones"] == {
        "10.244.1.10": {"zone": "zone-a", "forZones": [{"name": "zone-a"}, {"name": "zone-b"}]},
        "10.244.1.11": {"zone": "zone-b", "forZones": []},
        "10.244.1.12": {"zone": "zone-c", "forZones": []},
    }
    assert list(value) == ["cluster", "namespace", "name", "frontends", "backends", "hostnames",
                           "zones", "labels", "selector", "includeExternal", "shared",
                           "clusterID"]
    # omitempty: no hostnames/zones at all when none are known.
    raw = next(iter(services(svc(GLOBAL), [eps(ep("10.244.1.13"))]).values())).decode()
    assert '"hostnames"' not in raw and '"zones"' not in raw


def test_service_slice_ports_and_filtering() -> None:
    slices = [
        eps(ep("10.244.1.10"), ports=[
            {"name": "http", "port": 8080},  # nil protocol -> TCP
            {"name": "q", "port": 9000, "protocol": "QUIC"},  # unknown protocol -> skipped
            {"name": "noport", "protocol": "TCP"},  # nil port -> skipped
            {"port": 9090, "protocol": "UDP"},  # nil name -> ""
        ]),
        eps(ep("10.244.9.9"), name="other-svc", service="other"),  # another Service's slice
        eps(ep("10.244.8.8"), name="other-ns", ns="elsewhere"),  # another namespace
        {**eps(ep("example.com")), "addressType": "FQDN", "metadata": {
            "name": "fqdn", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "echo"}}},
        eps(ep("FD00:0:0::0010", "bad-ip"), name="v6", address_type="IPv6"),
    ]
    _, value = one(services(svc(GLOBAL), slices))
    assert value["backends"] == {
        "10.244.1.10": {"http": {"Protocol": "TCP", "Port": 8080},
                        "": {"Protocol": "UDP", "Port": 9090}},
        "fd00::10": {"http": {"Protocol": "TCP", "Port": 8080}},
    }


def test_service_duplicate_address_across_slices() -> None:
    first = eps(ep("10.244.1.10", hostname="h1"), name="a-slice")
    second = eps(ep("10.244.1.10"), name="b-slice",
                 ports=[{"name": "metrics", "port": 9100, "protocol": "TCP"}])
    for order in ([first, second], [second, first]):
        _, value = one(services(svc(GLOBAL), order))
        # Slices are visited by name; the later one replaces the port set.
        assert value["backends"] == {"10.244.1.10": {"metrics": {"Protocol": "TCP",
                                                                 "Port": 9100}}}
        assert value["hostnames"] == {"10.244.1.10": "h1"}


def test_service_labels_selector_and_html_escaping() -> None:
    service = svc(GLOBAL, labels={"team": "<a&b>", "z": "\u2028"}, selector=None)
    raw = next(iter(services(service).values()))
    assert b'"labels":{"team":"\\u003ca\\u0026b\\u003e","z":"\\u2028"}' in raw
    assert b'"selector":{}' in raw
    assert json.loads(raw)["labels"] == {"team": "<a&b>", "z": "\u2028"}


def test_service_external_name_frontend_as_cilium() -> None:
    # Cilium publishes global ExternalName services with an empty frontend address.
    service = svc(GLOBAL, type="ExternalName", externalName="example.com", clusterIP=None,
                  clusterIPs=None)
    _, value = one(services(service))
    assert list(value["frontends"]) == [""]


def test_service_without_name_or_namespace() -> None:
    service = svc(GLOBAL)
    del service["metadata"]["namespace"]
    assert services(service) == {}


# --------------------------------------------------------------------------- service exports


def export(name: str = "echo", ns: str = "default", **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": name, "namespace": ns,
                         "creationTimestamp": "2026-03-04T05:06:07Z", **metadata}}


def test_export_requires_both_and_not_external_name() -> None:
    assert service_export_entries(export(), None, cluster="c1") == {}
    external = svc(type="ExternalName", externalName="example.com")
    assert service_export_entries(export(), external, cluster="c1") == {}
    assert service_export_entries(export(), svc(), cluster="c1")
    # A Service of another name is not this export's Service.
    assert service_export_entries(export(), svc(name="other"), cluster="c1") == {}


def test_export_full_fields() -> None:
    service = svc(
        clusterIP="10.96.0.10",
        ports=[{"name": "grpc", "port": 50051, "protocol": "TCP", "appProtocol": "grpc"},
               {"port": 53, "protocol": "UDP"}],
        ipFamilies=["IPv4", "IPv6"], sessionAffinity="None",
        internalTrafficPolicy="Cluster", trafficDistribution="PreferClose",
    )
    key, _ = one(service_export_entries(export(), service, cluster="c9"))
    raw = service_export_entries(export(), service, cluster="c9")[key]
    assert key == SERVICE_EXPORTS.state_prefix("c9") + "default/echo"
    assert raw == (
        b'{"cluster":"c9","name":"echo","namespace":"default",'
        b'"exportCreationTimestamp":"2026-03-04T05:06:07Z",'
        b'"ports":[{"name":"grpc","protocol":"TCP","appProtocol":"grpc","port":50051},'
        b'{"protocol":"UDP","port":53}],"type":"ClusterSetIP","sessionAffinity":"None",'
        b'"ipFamilies":["IPv4","IPv6"],"internalTrafficPolicy":"Cluster",'
        b'"trafficDistribution":"PreferClose"}')


def test_export_timestamps() -> None:
    for stamp, expected in [("2026-01-01T02:00:00+02:00", "2026-01-01T00:00:00Z"),
                            ("2026-01-01T00:00:00.123456Z", "2026-01-01T00:00:00Z")]:
        _, value = one(service_export_entries(export(creationTimestamp=stamp), svc(),
                                              cluster="c1"))
        assert value["exportCreationTimestamp"] == expected
    missing = export()
    del missing["metadata"]["creationTimestamp"]
    _, value = one(service_export_entries(missing, svc(), cluster="c1"))
    assert value["exportCreationTimestamp"] is None  # Go's zero metav1.Time


def test_export_no_ports_and_empty_maps() -> None:
    exp = export()
    exp["spec"] = {"exportedAnnotations": {}, "exportedLabels": {}}
    raw = next(iter(service_export_entries(exp, svc(ports=[]), cluster="c1").values()))
    assert b'"ports":[]' in raw
    assert b'"annotations"' not in raw and b'"labels"' not in raw


# --------------------------------------------------------------------------- Go JSON encoder


def test_go_json_escaping() -> None:
    text = 'a"b\\c\b\f\n\r\t\x00\x1f\x7f<>&\u2028\u2029é😀'
    assert gojson.go_json(text) == (
        '"a\\"b\\\\c\\b\\f\\n\\r\\t\\u0000\\u001f\x7f\\u003c\\u003e\\u0026\\u2028\\u2029'
        'é😀"').encode()
    assert gojson.go_json("\ud800") == '"\ufffd"'.encode()


def test_go_json_structs_and_maps() -> None:
    value = gojson.Struct(("b", 0), ("a", 0, True), ("m", {"z": 1, "a": None}),
                          ("n", None), ("e", [], True), ("l", []), ("s", "", True),
                          ("f", False, True), ("t", True), ("bytes", b"\xff\xff\x00"),
                          ("p", gojson.Present(""), True), ("st", gojson.Struct(), True))
    assert gojson.go_json(value) == (
        b'{"b":0,"m":{"a":null,"z":1},"n":null,"l":[],"t":true,"bytes":"//8A",'
        b'"p":"","st":{}}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 64)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def python_as_go(value: Any) -> bytes:
    """Python's compact JSON plus the escapes Go adds (only possible inside strings)."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                     ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, esc)
    return text.encode()


@given(json_values)
def test_go_json_matches_reference(value: Any) -> None:
    encoded = gojson.go_json(value)
    assert encoded == python_as_go(value)
    assert json.loads(encoded) == value
    assert not {b"<", b">", b"&"} & {bytes([c]) for c in encoded}


# --------------------------------------------------------------------------- properties

texts = st.text(max_size=12)
string_maps = st.dictionaries(texts, texts, max_size=4)
ips = st.one_of(st.ip_addresses().map(str), texts)
maybe = st.one_of(st.none(), st.booleans())


@st.composite
def ceps(draw: st.DrawFn) -> dict[str, Any]:
    addressing = draw(st.lists(st.fixed_dictionaries({}, optional={"ipv4": ips, "ipv6": ips}),
                               max_size=3))
    return {
        "metadata": {"name": draw(texts), "namespace": draw(texts),
                     "ownerReferences": [{"kind": "Pod", "uid": draw(texts)}]},
        "status": {
            "identity": {"id": draw(st.integers(0, 2 ** 40))},
            "encryption": {"key": draw(st.integers(0, 1000))},
            "networking": {"addressing": addressing, "node": draw(ips)},
            "service-account": draw(texts),
            "named-ports": draw(st.lists(st.fixed_dictionaries(
                {"name": texts, "port": st.integers(0, 70000), "protocol": texts}), max_size=2)),
        },
    }


@given(ceps())
def test_property_endpoints(obj: dict[str, Any]) -> None:
    prefix = ENDPOINTS.state_prefix("")
    for key, value in endpoint_entries(obj).items():
        assert key.startswith(prefix)
        decoded = json.loads(value)
        assert decoded["IP"] == key[len(prefix):]
        assert decoded.get("K8sNamespace", "") == obj["metadata"]["namespace"]
        assert decoded.get("K8sServiceAccount", "") == obj["status"]["service-account"]


@st.composite
def service_inputs(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    name = draw(st.text(min_size=1, max_size=8))
    annotations = draw(st.dictionaries(
        st.sampled_from(["service.cilium.io/global", "io.cilium/global-service",
                         "service.cilium.io/shared", "io.cilium/shared-service"]),
        st.sampled_from(["true", "TRUE", "false", "", "x"]), max_size=4))
    service = svc(annotations, name=name, labels=draw(string_maps),
                  clusterIP=draw(st.sampled_from(["10.96.0.1", "None", ""])),
                  clusterIPs=draw(st.lists(ips, max_size=2)),
                  ports=draw(st.lists(st.fixed_dictionaries(
                      {"name": texts, "port": st.integers(0, 70000),
                       "protocol": st.sampled_from(["TCP", "UDP", "SCTP"])}), max_size=3)),
                  selector=draw(string_maps))
    endpoint = st.fixed_dictionaries(
        {"addresses": st.lists(ips, max_size=3)},
        optional={"conditions": st.fixed_dictionaries(
            {}, optional={"ready": maybe, "serving": maybe, "terminating": maybe}),
            "hostname": texts, "zone": texts})
    slices = [eps(*draw(st.lists(endpoint, max_size=3)), name=f"s{i}", service=name,
                  address_type=draw(st.sampled_from(["IPv4", "IPv6", "FQDN"])))
              for i in range(draw(st.integers(0, 2)))]
    return service, slices


@given(service_inputs())
@settings(max_examples=200)
def test_property_services(inputs: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    service, slices = inputs
    out = service_entries(service, slices, cluster="c1", cluster_id=1)
    for key, value in out.items():
        assert key == f"{SERVICES.state_prefix('c1')}default/{service['metadata']['name']}"
        decoded = json.loads(value)
        assert decoded["labels"] == service["metadata"]["labels"]
        assert decoded["selector"] == service["spec"]["selector"]
        assert set(decoded.get("hostnames", {})) <= set(decoded["backends"])


@given(string_maps, string_maps, texts, st.lists(ips, max_size=3),
       st.lists(st.sampled_from(["10.0.0.0/24", "fd00::/64", "x", "10.1.0.0/33"]), max_size=3))
def test_property_nodes(labels: dict[str, str], annotations: dict[str, str], name: str,
                        addresses: list[str], cidrs: list[str]) -> None:
    node = {"metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"addresses": [{"ip": a, "type": "InternalIP"} for a in addresses],
                     "ipam": {"podCIDRs": cidrs}}}
    for key, value in node_entries(node, cluster="c2", cluster_id=2).items():
        assert key == NODES.state_prefix("c2") + name
        decoded = json.loads(value)
        assert decoded["Labels"] == labels and decoded["Annotations"] == annotations


@given(string_maps, string_maps, texts, st.sampled_from(["ClusterIP", "ExternalName"]))
def test_property_exports(exported_labels: dict[str, str], exported_annotations: dict[str, str],
                          name: str, service_type: str) -> None:
    exp = export(name=name)
    exp["spec"] = {"exportedLabels": exported_labels,
                   "exportedAnnotations": exported_annotations}
    out = service_export_entries(exp, svc(name=name, type=service_type), cluster="c3")
    if service_type == "ExternalName" or not name:
        assert out == {}
    for key, value in out.items():
        assert key == f"{SERVICE_EXPORTS.state_prefix('c3')}default/{name}"
        decoded = json.loads(value)
        assert decoded.get("labels", {}) == exported_labels
        assert decoded.get("annotations", {}) == exported_annotations


@given(st.integers(0, 2 ** 33).map(str) | texts, string_maps)
def test_property_identities(name: str, labels: dict[str, str]) -> None:
    for key, value in identity_entries(identity(name, labels)).items():
        assert key == IDENTITIES.state_prefix("") + name
        text = value.decode("utf-8")
        assert text.endswith(";") and text.count(";") >= 1
