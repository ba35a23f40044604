"""The export rules (apiserver.exports) as pure units: which owners a change affects and
what each owner publishes — global namespaces, CiliumEndpointSlices, service v2 modes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness.k8s_objects import (
    GLOBAL,
    cep,
    ces_of,
    endpoint_slice,
    export_obj,
    identity,
    ns,
    service,
)

from apiserver.exports import ExportOptions, Exports
from apiserver.sources import (
    CILIUM_ENDPOINT,
    CILIUM_ENDPOINT_SLICE,
    CILIUM_IDENTITY,
    CILIUM_NODE,
    ENDPOINT_SLICE,
    NAMESPACE,
    SERVICE,
    SERVICE_EXPORT,
)
from clustermesh.clusterconfig import (
    EXPORT_ENDPOINTSLICES_ONLY,
    EXPORT_SERVICES_AND_ENDPOINTSLICES,
)
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IDENTITIES,
    NODES,
    SERVICE_EXPORTS,
    SERVICES,
)


def published(exports: Exports) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for resource in exports.owner_kind:
        for owner in exports.owners(resource):
            out |= exports.desired(owner)[0]
    return out


def make(*objects: dict[str, Any], **options: Any) -> Exports:
    options.setdefault("cluster", "c1")
    options.setdefault("cluster_id", 1)
    exports = Exports(ExportOptions(**options))
    kinds = {k.name: k for k in exports.kinds}
    for obj in objects:
        exports.upsert(kinds[obj["kind"]], obj)
    return exports


# ------------------------------------------------------------------ options


def test_inputs_per_mode() -> None:
    default = ExportOptions(cluster="c1", cluster_id=1)
    assert default.endpoint_slices_export_mode == EXPORT_SERVICES_AND_ENDPOINTSLICES
    inputs = default.inputs()
    assert inputs[ENDPOINTS] == (CILIUM_ENDPOINT, NAMESPACE)
    assert inputs[NODES] == (CILIUM_NODE,)
    assert inputs[SERVICES] == (SERVICE, ENDPOINT_SLICE, NAMESPACE)
    assert inputs[ENDPOINT_SLICES] == (ENDPOINT_SLICE, SERVICE, NAMESPACE)
    assert inputs[SERVICE_EXPORTS] == ()  # MCS-API off: canary only
    assert inputs[IDENTITIES] == (CILIUM_IDENTITY, NAMESPACE)
    ces = ExportOptions(cluster="c1", cluster_id=1, cilium_endpoint_slices=True, mcs_api=True)
    assert ces.inputs()[ENDPOINTS] == (CILIUM_ENDPOINT_SLICE, NAMESPACE)
    assert ces.inputs()[SERVICE_EXPORTS] == (SERVICE_EXPORT, SERVICE, NAMESPACE)
    assert CILIUM_ENDPOINT not in Exports(ces).kinds  # exactly one ipcache source
    only = ExportOptions(cluster="c1", cluster_id=1, service_v2="only-endpointslice")
    assert SERVICES not in only.inputs()
    assert only.endpoint_slices_export_mode == EXPORT_ENDPOINTSLICES_ONLY
    prefer = ExportOptions(cluster="c1", cluster_id=1, service_v2="prefer-endpointslice")
    assert SERVICES in prefer.inputs() and ENDPOINT_SLICES in prefer.inputs()
    with pytest.raises(ValueError, match="--clustermesh-service-v2 'bogus'"):
        ExportOptions(cluster="c1", cluster_id=1, service_v2="bogus")


# ------------------------------------------------------------------ global namespaces


def test_each_owner_is_filtered_by_its_namespace_nodes_never() -> None:
    node = {"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "n1"},
            "spec": {}}
    objects = [ns("local", "false"), node, identity(65537, "local"),
               cep("p", "local", "10.0.0.1"), service("svc", "local"),
               endpoint_slice("svc-1", "local", "svc", "10.0.0.1"), export_obj("svc", "local")]
    exports = make(*objects, mcs_api=True)
    assert list(published(exports)) == ["cilium/state/nodes/v1/c1/n1"]
    # Annotated global: everything is exported.
    owners = exports.upsert(NAMESPACE, ns("local", "TRUE"))
    assert {o[0] for o in owners} == {IDENTITIES, ENDPOINTS, SERVICES, SERVICE_EXPORTS,
                                      ENDPOINT_SLICES}
    assert sorted(published(exports)) == [
        "cilium/state/endpointslices/v1/c1/local/svc-1",
        "cilium/state/identities/v1/id/65537",
        "cilium/state/ip/v1/default/10.0.0.1",
        "cilium/state/nodes/v1/c1/n1",
        "cilium/state/serviceexports/v1/c1/local/svc",
        "cilium/state/services/v1/c1/local/svc",
    ]


@pytest.mark.parametrize(("value", "default", "exported"), [
    (None, True, True), (None, False, False), ("true", False, True), ("True", False, True),
    ("false", True, False), ("FALSE", True, False), ("", True, False), ("yes", True, False),
])
def test_annotation_and_default(value: str | None, default: bool, exported: bool) -> None:
    exports = make(ns("app", value), cep("p", "app", "10.0.0.1"), service("svc", "app"),
                   export_obj("svc", "app"), mcs_api=True, default_global_namespace=default)
    keys = published(exports)
    assert ("cilium/state/ip/v1/default/10.0.0.1" in keys) is exported
    assert ("cilium/state/services/v1/c1/app/svc" in keys) is exported
    assert ("cilium/state/serviceexports/v1/c1/app/svc" in keys) is exported


def test_namespace_that_does_not_exist_yet() -> None:
    exports = make(cep("p", "late", "10.0.0.1"), service("svc", "late"))
    owner = (ENDPOINTS, "late", "p")
    assert exports.desired(owner) == ({}, ["namespace late does not exist (yet)"])
    # The Namespace appearing recomputes its owners without a new version of them.
    assert exports.upsert(NAMESPACE, ns("late")) == {owner, (SERVICES, "late", "svc")}
    assert exports.desired(owner)[0]
    # ... and its deletion takes them back.
    assert owner in exports.delete(NAMESPACE, "", "late")
    assert exports.desired(owner)[0] == {}


def test_identity_by_pod_namespace_label() -> None:
    exports = make(ns("a"), ns("b", "false"), identity(65537, "a"), identity(65538, "b"),
                   identity(65539, None))
    assert list(published(exports)) == ["cilium/state/identities/v1/id/65537"]
    assert exports.desired((IDENTITIES, "", "65539")) == (
        {}, ["no k8s:io.kubernetes.pod.namespace security label"])
    assert exports.upsert(NAMESPACE, ns("b")) == {(IDENTITIES, "", "65538")}


def test_ces_follows_its_namespace_field_at_once() -> None:
    # Upstream indexes CES by their (empty) metadata namespace and misses this.
    slice_ = ces_of("ces-1", "app", cep("p", "app", "10.0.0.1"))
    exports = make(ns("app"), slice_, cilium_endpoint_slices=True)
    owner = (ENDPOINTS, "", "ces-1")
    assert list(published(exports)) == ["cilium/state/ip/v1/default/10.0.0.1"]
    assert exports.upsert(NAMESPACE, ns("app", "false")) == {owner}
    assert published(exports) == {}
    assert exports.upsert(NAMESPACE, ns("app", "true")) == {owner}
    assert published(exports)
    # A slice whose namespace field changes is re-filed under the new namespace.
    exports.upsert(CILIUM_ENDPOINT_SLICE, ces_of("ces-1", "other", cep("p", "other",
                                                                       "10.0.0.1")))
    assert exports.upsert(NAMESPACE, ns("app", "false")) == set()
    assert exports.upsert(NAMESPACE, ns("other")) == {owner}


# ------------------------------------------------------------------ CiliumEndpointSlices


def test_one_pod_exports_the_same_bytes_from_its_cep_and_its_ces() -> None:
    pod = cep("p", "app", "10.0.0.1", ipv6="fd00::1")
    from_cep = published(make(ns("app"), pod))
    from_ces = published(make(ns("app"), ces_of("ces-x", "app", pod),
                              cilium_endpoint_slices=True))
    assert from_cep == from_ces
    assert json.loads(from_ces["cilium/state/ip/v1/default/fd00::1"]) == {
        "IP": "fd00::1", "HostIP": "172.18.0.2", "ID": 65537, "Key": 3, "Metadata": "",
        "K8sNamespace": "app", "K8sPodName": "p", "K8sPodUID": "uid-p",
        "K8sServiceAccount": "default",
        "NamedPorts": [{"Name": "http", "Port": 8080, "Protocol": "TCP"}]}


def test_ces_with_an_unparsable_ip_exports_the_rest() -> None:
    slice_ = ces_of("ces-1", "app", cep("good", "app", "10.0.0.1"),
                    cep("bad", "app", "10.0.0.999"))
    exports = make(ns("app"), slice_, cilium_endpoint_slices=True)
    keys, problems = exports.desired((ENDPOINTS, "", "ces-1"))
    assert list(keys) == ["cilium/state/ip/v1/default/10.0.0.1"]
    assert problems == ["endpoint bad: unparsable IP '10.0.0.999' not exported"]


def test_one_owner_listing_an_ip_twice_later_wins() -> None:
    slice_ = ces_of("ces-1", "app", cep("first", "app", "10.0.0.1"),
                    cep("second", "app", "10.0.0.1"))
    keys, _ = make(ns("app"), slice_, cilium_endpoint_slices=True).desired(
        (ENDPOINTS, "", "ces-1"))
    assert json.loads(keys["cilium/state/ip/v1/default/10.0.0.1"])["K8sPodName"] == "second"


# ------------------------------------------------------------------ services and slices


def test_services_need_global_shared_and_global_namespace() -> None:
    exports = make(ns("app"), ns("local", "false"), service("a", "app"),
                   service("b", "app", {}), service("c", "local"),
                   service("d", "app", {**GLOBAL, "service.cilium.io/shared": "false"}))
    assert list(published(exports)) == ["cilium/state/services/v1/c1/app/a"]


def test_endpointslices_of_shared_global_services_only() -> None:
    exports = make(ns("app"), service("a", "app"), service("b", "app", {}),
                   endpoint_slice("a-1", "app", "a", "10.0.0.1"),
                   endpoint_slice("b-1", "app", "b", "10.0.0.2"))
    slices = sorted(k for k in published(exports) if k.startswith("cilium/state/endpointslices"))
    assert slices == ["cilium/state/endpointslices/v1/c1/app/a-1"]
    # The Service event re-evaluates its slices; slices of other services are untouched.
    # (No service export owner: MCS-API is off.)
    assert exports.upsert(SERVICE, service("b", "app")) == {
        (SERVICES, "app", "b"), (ENDPOINT_SLICES, "app", "b-1")}
    assert "cilium/state/endpointslices/v1/c1/app/b-1" in published(exports)
    assert exports.delete(SERVICE, "app", "a") >= {(ENDPOINT_SLICES, "app", "a-1")}
    assert "cilium/state/endpointslices/v1/c1/app/a-1" not in published(exports)


@pytest.mark.parametrize(("slice_", "reason"), [
    (endpoint_slice("s-1", "app", None, "10.0.0.1"), "missing-service-name"),
    (endpoint_slice("s-1", "app", "a", "10.0.0.x"), "invalid-address"),
    (endpoint_slice("s-1", "app", "a", "fd00::1"), "invalid-address"),
    (endpoint_slice("s-1", "app", "a", "x.example", address_type="FQDN"),
     "invalid-address-type"),
])
def test_invalid_endpointslice_exports_nothing_and_says_why(slice_: dict[str, Any],
                                                             reason: str) -> None:
    exports = make(ns("app"), service("a", "app"), endpoint_slice("ok", "app", "a", "10.0.0.9"),
                   slice_)
    keys, problems = exports.desired((ENDPOINT_SLICES, "app", "s-1"))
    assert keys == {}
    assert len(problems) == 1 and reason in problems[0] and "app/s-1" in problems[0]
    # A later valid version is exported; the other slice never changed.
    exports.upsert(ENDPOINT_SLICE, endpoint_slice("s-1", "app", "a", "10.0.0.1"))
    keys, problems = exports.desired((ENDPOINT_SLICES, "app", "s-1"))
    assert list(keys) == ["cilium/state/endpointslices/v1/c1/app/s-1"] and problems == []
    assert exports.desired((ENDPOINT_SLICES, "app", "ok"))[0]


def test_only_endpointslice_mode_publishes_no_legacy_services() -> None:
    exports = make(ns("app"), service("a", "app"), endpoint_slice("a-1", "app", "a", "10.0.0.1"),
                   service_v2="only-endpointslice")
    assert list(published(exports)) == ["cilium/state/endpointslices/v1/c1/app/a-1"]
