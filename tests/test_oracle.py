"""The convergence checker's oracle against the daemon's own validation.

:mod:`harness.oracle` restates the agents' rules without calling
:mod:`kvstoremesh.validation`, so that the convergence check never expects what a bug
in the daemon computes.  Two restatements of one set of rules must agree, so here both
judge the same entries and their verdicts are compared:

* the hostile remote data of ``test_hostile_input`` (its hypothesis strategies: odd
  key suffixes, random, truncated, valid, huge, empty and deeply nested values, and the
  valid-or-random entries of its big transactions);
* the valid workloads the harness publishes (``sample_state``, the churn's values) and
  the facts' examples and invalid cases of ``test_validation``.

Entries where the two disagree are listed in :data:`DISAGREEMENTS`, with the rule the
agents apply; the daemon's verdict on them is an expected failure (strict: it turns
into a failure once the daemon is fixed, so that the entry can move to the agreeing
cases), the oracle's is checked like any other.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

import pytest
from harness.churn import _suffix, _value
from harness.mesh import sample_state
from harness.oracle import cached_cluster_config, entry_accepted, identity_bounds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_input import SUFFIX, _valid_value, values
from test_validation import EXPORT, INVALID, NODE, SERVICE, slice_value

from clustermesh.clusterconfig import CiliumClusterConfig
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

# The hostile mesh's evil remote, which the strategies draw values for.
EVIL, EVIL_ID = "evil", 2
MANY = settings(max_examples=400, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def verdicts(resource: Resource, key: str, value: bytes, *, cluster: str = EVIL,
             cluster_id: int = EVIL_ID, max_connected: int = 255) -> tuple[bool, bool]:
    """(the oracle accepts, the daemon accepts)."""
    oracle = entry_accepted(resource, key, value, cluster=cluster, cluster_id=cluster_id,
                            max_connected_clusters=max_connected)
    daemon = check_entry(resource, key, value, cluster=cluster, cluster_id=cluster_id,
                         max_connected_clusters=max_connected) is None
    return oracle, daemon


def _raw(value: bytes | dict[str, Any]) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


# ------------------------------------------------------------------ the hostile sets


@MANY
@given(resource=st.sampled_from(RESOURCES), suffix=SUFFIX, data=st.data())
def test_agree_on_hostile_entries(resource: Resource, suffix: str, data: st.DataObject) -> None:
    value = data.draw(values(resource, suffix), label="value")
    oracle, daemon = verdicts(resource, suffix, value)
    assert oracle == daemon, (resource.name, suffix, value[:300])


@MANY
@given(resource=st.sampled_from(RESOURCES), suffix=SUFFIX)
def test_agree_on_valid_looking_entries_for_other_clusters(resource: Resource,
                                                            suffix: str) -> None:
    """A value valid for ``evil`` judged as another cluster's, or with another ID."""
    value = _valid_value(resource, EVIL, EVIL_ID, suffix)
    for cluster, cluster_id in ((EVIL, EVIL_ID), ("evil2", EVIL_ID), (EVIL, 3), ("good", 1)):
        oracle, daemon = verdicts(resource, suffix, value, cluster=cluster,
                                  cluster_id=cluster_id)
        assert oracle == daemon, (resource.name, suffix, cluster, cluster_id)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_agree_on_the_big_transactions(seed: int) -> None:
    """The entries of test_hostile_input's "txn" action (its generator, restated)."""
    rng = random.Random(seed)
    for n in range(300):
        resource = rng.choice(RESOURCES)
        suffix = f"txn-{seed}-{n}" if resource is not ENDPOINTS else \
            f"10.99.{n // 256 % 256}.{n % 256}"
        value = (_valid_value(resource, EVIL, EVIL_ID, suffix) if rng.random() < 0.7
                 else rng.randbytes(rng.randrange(0, 40)))
        oracle, daemon = verdicts(resource, suffix, value)
        assert oracle == daemon, (resource.name, suffix, value)


# ------------------------------------------------------------------ the valid sets


@pytest.mark.parametrize("cluster_id", [1, 7, 255])
def test_agree_on_what_the_harness_publishes(cluster_id: int) -> None:
    name = f"cluster{cluster_id}"
    judged = 0
    for resource, entries in sample_state(name, cluster_id, endpoints=20).items():
        for key, value in entries.items():
            assert verdicts(resource, key, value, cluster=name,
                            cluster_id=cluster_id) == (True, True), (resource.name, key)
            judged += 1
    remote = SimpleNamespace(name=name, config=SimpleNamespace(id=cluster_id))
    rng = random.Random(cluster_id)
    for generation in range(400):
        resource = rng.choice(RESOURCES)
        key = _suffix(remote, resource, generation, base=20 << 16)  # type: ignore[arg-type]
        value = _value(rng, remote, resource, key, generation)  # type: ignore[arg-type]
        oracle, daemon = verdicts(resource, key, value, cluster=name, cluster_id=cluster_id)
        assert oracle == daemon, (resource.name, key, value[:200])
        judged += 1
    assert judged > 400


def test_agree_on_the_validation_cases() -> None:
    for resource, key, value in [(NODES, "node-a", NODE),
                                 (SERVICES, "ns-alpha/echo-service", SERVICE),
                                 (SERVICE_EXPORTS, "default/basic", EXPORT),
                                 (ENDPOINT_SLICES, "ns-alpha/echo-7xk2p", slice_value())]:
        assert verdicts(resource, key, _raw(value), cluster="cluster3",
                        cluster_id=3) == (True, True), resource.name
    for resource, key, value, reason in INVALID:
        assert verdicts(resource, key, _raw(value), cluster="cluster3",
                        cluster_id=3) == (False, False), (resource.name, key, reason)


@pytest.mark.parametrize("max_connected", [255, 511])
def test_identity_ranges_agree(max_connected: int) -> None:
    for cluster_id in (1, 2, 100, max_connected):
        assert identity_bounds(cluster_id, max_connected) == identity_range(
            cluster_id, max_connected)


@settings(max_examples=200, deadline=None)
@given(cluster_id=st.integers(0, 511), synced=st.booleans(), cached=st.booleans(),
       max_connected=st.sampled_from([0, 255, 511]),
       exports=st.sampled_from([None, False, True]),
       mode=st.sampled_from(["", "services-and-endpointslices", "endpointslices-only",
                             "odd <&> \u2028 mod\u00e9"]))
def test_cached_cluster_configs_agree(cluster_id: int, synced: bool, cached: bool,
                                      max_connected: int, exports: bool | None,
                                      mode: str) -> None:
    config = CiliumClusterConfig(id=cluster_id, synced_canaries=synced, cached=cached,
                                 max_connected_clusters=max_connected,
                                 service_exports_enabled=exports,
                                 endpoint_slices_export_mode=mode)
    assert cached_cluster_config(config) == config.as_cached().to_json()


# ------------------------------------------------------------------ disagreements

_NODE = {"Name": "n", "Cluster": "c1", "ClusterID": 1}
_EXPORT = {"cluster": "c1", "namespace": "ns", "name": "s", "type": "ClusterSetIP",
           "sessionAffinity": "None", "exportCreationTimestamp": "2026-01-01T00:00:00Z"}
_LABEL = b"k8s:io.cilium.k8s.policy.cluster=c1;"


def _ip(ip: str, **fields: object) -> bytes:
    return json.dumps({"IP": ip, **fields}).encode()


#: (id, resource, key, value, the agents accept it, what they do) for cluster c1, ID 1.
DISAGREEMENTS: list[tuple[str, Resource, str, bytes, bool, str]] = [
    ("bom", NODES, "n", b"\xef\xbb\xbf" + json.dumps(_NODE).encode(), False,
     "Go's json.Unmarshal: a byte-order mark is not JSON ('invalid character')"),
    ("utf-16", NODES, "n", json.dumps(_NODE).encode("utf-16-le"), False,
     "UTF-16 is not JSON as Go reads it (NUL bytes are invalid characters)"),
    ("nan", NODES, "n", b'{"Name":"n","Cluster":"c1","ClusterID":1,"x":NaN}', False,
     "NaN is not JSON"),
    ("bool-cluster-id", NODES, "n", b'{"Name":"n","Cluster":"c1","ClusterID":true}', False,
     "a bool does not decode into the uint32 ClusterID"),
    ("float-cluster-id", NODES, "n", b'{"Name":"n","Cluster":"c1","ClusterID":1.0}', False,
     "1.0 does not decode into the uint32 ClusterID"),
    ("frontends-array", SERVICES, "ns/s", json.dumps(
        {"cluster": "c1", "namespace": "ns", "name": "s", "clusterID": 1,
         "frontends": []}).encode(), False,
     "an array does not decode into the frontends map"),
    ("export-timestamp-garbage", SERVICE_EXPORTS, "ns/s", json.dumps(
        {**_EXPORT, "exportCreationTimestamp": "yesterday"}).encode(), False,
     "metav1.Time needs an RFC 3339 time"),
    ("export-traffic-policy", SERVICE_EXPORTS, "ns/s", json.dumps(
        {**_EXPORT, "internalTrafficPolicy": "Bogus"}).encode(), False,
     "facts §6.4: a bad internalTrafficPolicy is rejected (Kubernetes: Cluster or Local)"),
    ("identity-labels-not-utf8", IDENTITIES, "65537", _LABEL + b"\xff", True,
     "Go strings are bytes: the cluster label is there, the entry is taken"),
    ("ip-not-canonical", ENDPOINTS, "fd00:0:0::5", _ip("fd00:0:0::5", ID=65537), False,
     "the key must equal IPIdentityPair.PrefixString(), net.IP.String() = fd00::5"),
    ("ip-zone", ENDPOINTS, "fe80::1%eth0", _ip("fe80::1%eth0", ID=65537), False,
     "net.ParseIP takes no IPv6 zone"),
    ("ip-v4-mapped", ENDPOINTS, "::ffff:10.1.0.5", _ip("::ffff:10.1.0.5", ID=65537), False,
     "net.IP.String() prints a mapped address as 10.1.0.5, not the key"),
    ("ip-host-with-mask", ENDPOINTS, "10.1.0.5", _ip("10.1.0.5", Mask="/////w==", ID=65537),
     False, "with a Mask the pair is a prefix: its key is 10.1.0.5/32"),
    ("ip-prefix-host-bits", ENDPOINTS, "10.1.2.3/8", _ip("10.1.2.3", Mask="/wAAAA==",
                                                          ID=65537), True,
     "PrefixString() is IP/ones with the IP as written: 10.1.2.3/8 is its key"),
    ("ip-no-id", ENDPOINTS, "10.1.0.5", _ip("10.1.0.5"), True,
     "a missing ID decodes as 0, below 256: not skipped"),
]


@pytest.mark.parametrize(("resource", "key", "value", "agents"),
                         [pytest.param(*case[1:5], id=case[0]) for case in DISAGREEMENTS])
def test_oracle_on_the_disagreements(resource: Resource, key: str, value: bytes,
                                     agents: bool) -> None:
    assert entry_accepted(resource, key, value, cluster="c1", cluster_id=1,
                          max_connected_clusters=255) is agents


@pytest.mark.parametrize(("resource", "key", "value", "agents"), [
    pytest.param(*case[1:5], id=case[0], marks=pytest.mark.xfail(
        strict=True, reason=f"kvstoremesh.validation disagrees with the agents: {case[5]}"))
    for case in DISAGREEMENTS])
def test_daemon_on_the_disagreements(resource: Resource, key: str, value: bytes,
                                     agents: bool) -> None:
    assert (check_entry(resource, key, value, cluster="c1", cluster_id=1,
                        max_connected_clusters=255) is None) is agents
