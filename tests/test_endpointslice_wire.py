"""The service v2 EndpointSlice value (clustermesh/endpointslice.py) and its converter
(apiserver/endpointslices.py): pure units, no etcd.

The expected protobuf bytes below were written by hand from the gogo marshaller rules
of facts §4.5 (tag = number << 3 | wire type; ascending field numbers; non-pointer
fields always written; map entries sorted with key and value always written), not by
running the encoder; the message/field table was written from the same section.
"""

from __future__ import annotations

import importlib.util
import io
import random
import re
import shutil
import struct
import tracemalloc
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import zstandard
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from apiserver.endpointslices import InvalidEndpointSlice, endpointslice_entries
from clustermesh import endpointslice as es
from clustermesh.endpointslice_pb import discovery_pb2, endpointslice_pb2

ROOT = Path(__file__).resolve().parent.parent
GENERATE = ROOT / "proto" / "generate.py"
PB_DIR = ROOT / "clustermesh" / "endpointslice_pb"
MiB = 1 << 20


def load_generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proto_generate", GENERATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def h(text: str) -> bytes:
    """Hex with spaces (one group per field, for reading) to bytes."""
    return bytes.fromhex(text.replace(" ", ""))


# ------------------------------------------------------------------------- stubs


def test_stubs_are_not_stale() -> None:
    pytest.importorskip("grpc_tools")
    generate = load_generate()
    assert generate.stale_files(target=generate.ENDPOINTSLICE) == []
    assert generate.stale_paths() == []  # what `generate.py --check` reports: both targets


def test_stale_check_detects_changed_missing_and_extra_stubs(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generate = load_generate()
    assert {t.out_dir for t in generate.TARGETS} == {ROOT / "clustermesh" / "etcd" / "pb",
                                                     PB_DIR}
    copy = tmp_path / "pb"
    shutil.copytree(PB_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "discovery_pb2.py").open("a") as f:
        f.write("# edited by hand\n")
    (copy / "endpointslice_pb2.pyi").unlink()
    (copy / "endpointslice_pb2_grpc.py").write_text("")  # no services: must not exist
    assert generate.stale_files(copy, target=generate.ENDPOINTSLICE) == [
        "discovery_pb2.py", "endpointslice_pb2.pyi", "endpointslice_pb2_grpc.py"]


# --------------------------------------------------------------------- names, numbers

ES_PKG = "github.com.cilium.cilium.pkg.clustermesh.types.endpointslice.internal"
D_PKG = "github.com.cilium.cilium.pkg.k8s.slim.k8s.api.discovery.v1"
S, U32, I32, BOOL, MAP = "string", "uint32", "int32", "bool", "map<string,string>"
OPT, REP = "optional", "repeated"

# message -> field -> (number, type, label); a message type is its full name.
FIELDS: dict[str, dict[str, tuple[int, str, str]]] = {
    f"{ES_PKG}.ClusterEndpointSlice": {
        "cluster": (1, S, OPT), "clusterID": (2, U32, OPT), "namespace": (3, S, OPT),
        "name": (4, S, OPT), "labels": (5, MAP, REP), "annotations": (6, MAP, REP),
        "addressType": (7, S, OPT), "endpoints": (8, f"{D_PKG}.Endpoint", REP),
        "ports": (9, f"{D_PKG}.EndpointPort", REP)},
    f"{D_PKG}.Endpoint": {
        "addresses": (1, S, REP), "conditions": (2, f"{D_PKG}.EndpointConditions", OPT),
        "hostname": (3, S, OPT), "deprecatedTopology": (5, MAP, REP),
        "nodeName": (6, S, OPT), "zone": (7, S, OPT),
        "hints": (8, f"{D_PKG}.EndpointHints", OPT)},
    f"{D_PKG}.EndpointConditions": {
        "ready": (1, BOOL, OPT), "serving": (2, BOOL, OPT), "terminating": (3, BOOL, OPT)},
    f"{D_PKG}.EndpointHints": {"forZones": (1, f"{D_PKG}.ForZone", REP)},
    f"{D_PKG}.ForZone": {"name": (1, S, OPT)},
    f"{D_PKG}.EndpointPort": {
        "name": (1, S, OPT), "protocol": (2, S, OPT), "port": (3, I32, OPT)},
}
SCALARS = {FieldDescriptor.TYPE_STRING: S, FieldDescriptor.TYPE_UINT32: U32,
           FieldDescriptor.TYPE_INT32: I32, FieldDescriptor.TYPE_BOOL: BOOL}


def describe(field: FieldDescriptor) -> tuple[int, str, str]:
    label = REP if field.is_repeated else OPT
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return field.number, SCALARS.get(field.type, str(field.type)), label
    entry = field.message_type
    if entry.GetOptions().map_entry:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        assert (key.number, value.number) == (1, 2)
        return field.number, f"map<{SCALARS[key.type]},{SCALARS[value.type]}>", label
    return field.number, entry.full_name, label


def test_packages_and_messages() -> None:
    assert endpointslice_pb2.DESCRIPTOR.package == ES_PKG
    assert discovery_pb2.DESCRIPTOR.package == D_PKG
    found = {m.full_name for module in (endpointslice_pb2, discovery_pb2)
             for m in module.DESCRIPTOR.message_types_by_name.values()}
    assert found == set(FIELDS)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_field_numbers_and_types(name: str) -> None:
    message = endpointslice_pb2.DESCRIPTOR.pool.FindMessageTypeByName(name)
    assert {f.name: describe(f) for f in message.fields} == FIELDS[name]
    # proto2: every singular field has presence, which is what lets empty values be written.
    assert all(f.has_presence for f in message.fields if not f.is_repeated)
    assert not any(f.is_packed for f in message.fields)


# ------------------------------------------------------------------------ wire bytes

# Facts §4.5, the worked example (given there as one hex string).
WORKED = dict(
    cluster="c1", cluster_id=1, namespace="ns", name="s",
    labels={"kubernetes.io/service-name": "svc"}, address_type="IPv4",
    endpoints=[{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}],
    ports=[{"name": "http", "protocol": "TCP", "port": 80}])
WORKED_HEX = (
    "0a02633110011a026e732201732a210a1a6b756265726e657465732e696f2f736572766963652d6e616d65"
    "12037376633a0449507634420e0a0831302e302e302e31120208014a0d0a046874747012035443501850")

SERVICE_NAME = "0a1a 6b756265726e657465732e696f2f736572766963652d6e616d65"  # key, 26 bytes

VECTORS: dict[str, tuple[dict[str, Any], str]] = {
    # Labels inserted out of order come out sorted; "alpha" has an empty value, and the
    # entry still carries `12 00`; annotations are field 6 (tag 0x32).
    "labels-annotations": (dict(
        cluster="c", cluster_id=7, namespace="n", name="x", address_type="IPv6",
        labels={"zeta": "1", "kubernetes.io/service-name": "s", "alpha": ""},
        annotations={"note": "hi"}),
        "0a0163 1007 1a016e 220178"
        " 2a09 0a05616c706861 1200"
        f" 2a1f {SERVICE_NAME} 120173"
        " 2a09 0a047a657461 120131"
        " 320a 0a046e6f7465 12026869"
        " 3a0449507636"),
    # Every optional Endpoint field, false conditions written as `00`, topology sorted,
    # a ForZone with an empty name still written (`0a 00`).
    "full-endpoint": (dict(
        cluster="c", cluster_id=0, namespace="n", name="x", address_type="IPv6",
        endpoints=[{
            "addresses": ["fd00::1", "fd00::2"],
            "conditions": {"ready": False, "serving": True, "terminating": False},
            "hostname": "h", "deprecatedTopology": {"b": "2", "a": "1"},
            "nodeName": "node1", "zone": "z1",
            "hints": {"forZones": [{"name": "z1"}, {"name": ""}]}}]),
        "0a0163 1000 1a016e 220178 3a0449507636"
        " 4244"
        " 0a0766643030 3a3a31 0a0766643030 3a3a32"
        " 1206 0800 1001 1800"
        " 1a0168"
        " 2a06 0a0161 120131 2a06 0a0162 120132"
        " 3205 6e6f646531"
        " 3a02 7a31"
        " 420a 0a04 0a027a31 0a02 0a00"),
    # No conditions -> `12 00`; a port with only `port` (8080 = varint 90 3f); a port
    # whose name is set but empty (`0a 00`); a two-byte cluster ID (300 = ac 02).
    "port-only-and-empty-conditions": (dict(
        cluster="c", cluster_id=300, namespace="n", name="x", address_type="IPv4",
        endpoints=[{"addresses": ["1.2.3.4"]}],
        ports=[{"port": 8080}, {"name": "", "protocol": "UDP"}]),
        "0a0163 10ac02 1a016e 220178 3a0449507634"
        " 420b 0a07312e322e332e34 1200"
        " 4a03 18903f"
        " 4a07 0a00 1203554450"),
    # Everything empty: the non-pointer fields are still written; hints set but empty is
    # `42 00`; a negative int32 is a 10-byte sign-extended varint.
    "empty-values": (dict(
        cluster="", cluster_id=0, namespace="", name="", address_type="",
        endpoints=[{"addresses": [], "hints": {}}], ports=[{"port": -1}]),
        "0a00 1000 1a00 2200 3a00"
        " 4204 1200 4200"
        " 4a0b 18ffffffffffffffffff01"),
    # Map keys sort bytewise in UTF-8, like Go's sort.Strings: "Z" < "z" < "é" (c3 a9).
    "utf8-key-order": (dict(
        cluster="c", cluster_id=0, namespace="n", name="x", address_type="IPv4",
        labels={"é": "1", "z": "2", "Z": "3"}),
        "0a0163 1000 1a016e 220178"
        " 2a06 0a015a 120133 2a06 0a017a 120132 2a07 0a02c3a9 120131"
        " 3a0449507634"),
}


def test_worked_example_of_the_facts() -> None:
    assert es.marshal(**WORKED).hex() == WORKED_HEX


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_hand_written_vectors(name: str) -> None:
    fields, hex_ = VECTORS[name]
    assert es.marshal(**fields).hex() == h(hex_).hex()


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vectors_parse_back(name: str) -> None:
    fields, hex_ = VECTORS[name]
    message = endpointslice_pb2.ClusterEndpointSlice.FromString(h(hex_))
    doc = es.to_json(message)
    assert doc["endpoints"] == [{"conditions": {}, **e} for e in fields.get("endpoints", [])]
    assert doc["ports"] == fields.get("ports", [])
    assert doc.get("labels", {}) == fields.get("labels", {})


def test_ignores_what_the_slim_type_lacks() -> None:
    fields, _ = VECTORS["port-only-and-empty-conditions"]
    extra = dict(fields, endpoints=[{"addresses": ["1.2.3.4"], "targetRef": {"kind": "Pod"}}],
                 ports=[{"port": 8080, "appProtocol": "http"}, {"name": "", "protocol": "UDP"}])
    assert es.marshal(**extra) == es.marshal(**fields)


# ------------------------------------------------------------------------ zstd


def test_value_is_one_checksummed_frame_with_content_size() -> None:
    value = es.encode(**WORKED)
    params = zstandard.get_frame_parameters(value)
    assert params.has_checksum
    assert params.content_size == len(bytes.fromhex(WORKED_HEX))
    assert es.decompress(value).hex() == WORKED_HEX


def test_round_trip_through_zstd() -> None:
    doc = es.to_json(es.encode(**WORKED))
    assert doc == {
        "cluster": "c1", "clusterID": 1, "namespace": "ns", "name": "s",
        "labels": {"kubernetes.io/service-name": "svc"}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}
    assert "annotations" not in doc  # omitempty


def test_concatenated_and_skippable_frames_are_accepted() -> None:
    pb = bytes.fromhex(WORKED_HEX)
    skippable = struct.pack("<II", 0x184D2A50, 3) + b"xyz"
    for value in (es.compress(pb[:10]) + es.compress(pb[10:]), skippable + es.compress(pb)):
        assert es.check_value("ns/s", value, cluster="c1", cluster_id=1) is None


def streamed(data: bytes, **kwargs: Any) -> bytes:
    """A frame written by a streaming compressor: no content size in its header."""
    buf = io.BytesIO()
    with zstandard.ZstdCompressor(**kwargs).stream_writer(buf, closefd=False) as writer:
        writer.write(data)
    value = buf.getvalue()
    assert zstandard.get_frame_parameters(value).content_size == zstandard.CONTENTSIZE_UNKNOWN
    return value


def bomb(kind: str) -> bytes:
    """A small value that decompresses past the cap, or needs a window past it."""
    if kind == "content-size":  # the header says 17 MiB
        return es.compress(bytes(17 * MiB))
    if kind == "streamed":  # the header does not say
        return streamed(bytes(17 * MiB))
    if kind == "two-frames":  # 9 MiB each: only the sum is past the cap
        return streamed(bytes(9 * MiB)) + es.compress(bytes(9 * MiB))
    assert kind == "big-window"  # 100 bytes, but a 32 MiB window
    return streamed(b"q" * 100, compression_params=(
        zstandard.ZstdCompressionParameters.from_level(3, window_log=25)))


@pytest.mark.parametrize("kind", ["content-size", "streamed", "two-frames", "big-window"])
def test_zstd_bomb_is_refused_without_materializing_it(kind: str) -> None:
    value = bomb(kind)
    assert len(value) < 64 * 1024  # a bomb: tiny on the wire
    tracemalloc.start()
    try:
        with pytest.raises(es.DecodeError) as err:
            es.decode(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == "too-large"
    assert peak < 2 * MiB  # bounded reads: the 16 MiB are never held at once
    assert es.check_value("ns/s", value, cluster="c1", cluster_id=1) == "too-large"


def test_sixteen_mib_exactly_is_within_the_cap() -> None:
    assert len(es.decompress(streamed(bytes(es.MAX_DECOMPRESSED_SIZE)))) == 16 * MiB


def hostile_values() -> dict[str, tuple[bytes, str]]:
    good = es.encode(**WORKED)
    pb = bytes.fromhex(WORKED_HEX)
    noise = random.Random(1).randbytes(300)
    corrupt_checksum = good[:-1] + bytes([good[-1] ^ 1])
    return {
        "empty": (b"", "invalid-zstd"),
        "random-bytes": (noise, "invalid-zstd"),
        "json": (b'{"cluster":"c1"}', "invalid-zstd"),
        "truncated-frame": (good[:-3], "invalid-zstd"),
        "truncated-header": (good[:4], "invalid-zstd"),
        "truncated-stream": (streamed(pb)[:-6], "invalid-zstd"),
        "truncated-second-frame": (good + good[:-2], "invalid-zstd"),
        "trailing-garbage": (good + b"junk", "invalid-zstd"),
        "bad-checksum": (corrupt_checksum, "invalid-zstd"),
        "zstd-of-garbage": (es.compress(b"\x0a\x05ab"), "invalid-protobuf"),
        "zstd-of-noise": (es.compress(b"\xff" * 20), "invalid-protobuf"),
        "deep-groups": (es.compress(b"\x7b" * 10000 + b"\x7c" * 10000), "invalid-protobuf"),
        "zstd-of-nothing": (es.compress(b""), "missing-cluster"),
    }


@pytest.mark.parametrize("name", sorted(hostile_values()))
def test_hostile_values(name: str) -> None:
    value, reason = hostile_values()[name]
    with pytest.raises(es.DecodeError) as err:
        es.decode(value)
    assert err.value.reason == reason
    assert isinstance(err.value, ValueError)
    assert es.check_value("ns/s", value, cluster="c1", cluster_id=1) == reason


@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    for value in (data, es.compress(data)):
        reason = es.check_value("ns/s", value, cluster="c1", cluster_id=1)
        assert reason is None or re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", reason)


# ------------------------------------------------------------------------ check_value


def variant(**changes: Any) -> bytes:
    return es.encode(**{**WORKED, **changes})


CHECKS: dict[str, tuple[str, bytes, str | None]] = {
    "good": ("ns/s", variant(), None),
    "wrong-cluster": ("ns/s", variant(cluster="c2"), "cluster-mismatch"),
    "key-name-mismatch": ("ns/other", variant(), "name-mismatch"),
    "key-namespace-mismatch": ("other/s", variant(), "name-mismatch"),
    "key-with-cluster": ("c1/ns/s", variant(), "name-mismatch"),
    "wrong-cluster-id": ("ns/s", variant(cluster_id=2), "cluster-id-mismatch"),
    "missing-cluster": ("ns/s", variant(cluster=""), "missing-cluster"),
    "missing-namespace": ("ns/s", variant(namespace=""), "missing-namespace"),
    "missing-name": ("ns/s", variant(name=""), "missing-name"),
    "fqdn": ("ns/s", variant(address_type="FQDN",
                             endpoints=[{"addresses": ["example.com"]}]),
             "invalid-address-type"),
    "no-address-type": ("ns/s", variant(address_type=""), "invalid-address-type"),
    "lowercase-address-type": ("ns/s", variant(address_type="ipv4"), "invalid-address-type"),
    "ipv6-in-ipv4": ("ns/s", variant(endpoints=[{"addresses": ["10.0.0.1", "fd00::1"]}]),
                     "invalid-address"),
    "ipv4-in-ipv6": ("ns/s", variant(address_type="IPv6",
                                     endpoints=[{"addresses": ["10.0.0.1"]}]),
                     "invalid-address"),
    "ipv6-zone": ("ns/s", variant(address_type="IPv6",
                                  endpoints=[{"addresses": ["fe80::1%eth0"]}]),
                  "invalid-address"),
    "leading-zero": ("ns/s", variant(endpoints=[{"addresses": ["10.0.0.01"]}]),
                     "invalid-address"),
    "hostname-address": ("ns/s", variant(endpoints=[{"addresses": ["localhost"]}]),
                         "invalid-address"),
    "cidr-address": ("ns/s", variant(endpoints=[{"addresses": ["10.0.0.0/8"]}]),
                     "invalid-address"),
    "empty-address": ("ns/s", variant(endpoints=[{"addresses": [""]}]), "invalid-address"),
    "ipv6-ok": ("ns/s", variant(address_type="IPv6",
                                endpoints=[{"addresses": ["fd00::1", "::ffff:10.0.0.1"]}]),
                None),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_value(name: str) -> None:
    key, value, reason = CHECKS[name]
    assert es.check_value(key, value, cluster="c1", cluster_id=1) == reason


def test_invalid_utf8_is_refused() -> None:
    pb = bytes.fromhex(WORKED_HEX)
    # The address 10.0.0.1 is at the end of the endpoint; make it 4 raw bytes, which
    # ipaddress would otherwise take as a packed IPv4 address.
    raw_address = pb.replace(bytes.fromhex("0a0831302e302e302e31"), bytes.fromhex(
        "0a04ff000001")).replace(bytes.fromhex("420e"), bytes.fromhex("420a"))
    raw_label = pb.replace(b"svc", b"\xffvc")
    for data in (raw_address, raw_label):
        assert es.check_value("ns/s", es.compress(data), cluster="c1",
                              cluster_id=1) == "invalid-utf8"


# ------------------------------------------------------------------------ property

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
string_maps = st.dictionaries(names, names, max_size=4)
ipv4 = st.ip_addresses(v=4).map(str)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def drop_none(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


endpoints = st.builds(
    lambda addresses, conditions, hostname, topology, node, zone, hints: drop_none({
        "addresses": addresses, "conditions": drop_none(conditions), "hostname": hostname,
        "deprecatedTopology": topology or None, "nodeName": node, "zone": zone,
        "hints": hints}),
    st.lists(ipv4, max_size=3),
    st.fixed_dictionaries({}, optional={c: optional(st.booleans())
                                        for c in ("ready", "serving", "terminating")}),
    optional(names), string_maps, optional(names), optional(names),
    optional(st.lists(st.builds(lambda n: {"name": n}, names), max_size=2).map(
        lambda zones: {"forZones": zones} if zones else {})),
)
ports = st.builds(
    lambda name, protocol, port: drop_none({"name": name, "protocol": protocol, "port": port}),
    optional(names), optional(st.sampled_from(["TCP", "UDP", "SCTP"])),
    optional(st.integers(-(1 << 31), (1 << 31) - 1)))
slices = st.fixed_dictionaries({
    "cluster": names.filter(bool), "cluster_id": st.integers(0, (1 << 32) - 1),
    "namespace": names.filter(bool), "name": names.filter(bool),
    "labels": string_maps, "annotations": string_maps, "address_type": st.just("IPv4"),
    "endpoints": st.lists(endpoints, max_size=3), "ports": st.lists(ports, max_size=3),
})


def reversed_maps(value: Any) -> Any:
    """The same value with every dict's keys inserted in the opposite order."""
    if isinstance(value, dict):
        return {k: reversed_maps(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_maps(v) for v in value]
    return value


@settings(max_examples=300, deadline=None)
@given(slices)
def test_round_trip_and_determinism(fields: dict[str, Any]) -> None:
    value = es.encode(**fields)
    doc = es.to_json(es.decode(value))
    expected = {"cluster": fields["cluster"], "clusterID": fields["cluster_id"],
                "namespace": fields["namespace"], "name": fields["name"]}
    for key in ("labels", "annotations"):
        if fields[key]:
            expected[key] = fields[key]
    expected |= {"addressType": "IPv4", "endpoints": fields["endpoints"],
                 "ports": fields["ports"]}
    assert doc == expected
    assert es.marshal(**reversed_maps(fields)) == es.marshal(**fields)
    assert es.encode(**reversed_maps(fields)) == value


# ------------------------------------------------------------------------ converter


def k8s_slice(**changes: Any) -> dict[str, Any]:
    """A discovery.k8s.io/v1 EndpointSlice as the Kubernetes API returns it."""
    doc: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": "echo-7xk2p", "namespace": "demo", "uid": "1234", "resourceVersion": "9",
            "labels": {"kubernetes.io/service-name": "echo",
                       "endpointslice.kubernetes.io/managed-by":
                           "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time":
                            "2026-01-01T00:00:00Z"},
            "ownerReferences": [{"kind": "Service", "name": "echo"}]},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.0.1.5"],
             "conditions": {"ready": True, "serving": True, "terminating": False},
             "nodeName": "node-a", "zone": "zone-1",
             "targetRef": {"kind": "Pod", "namespace": "demo", "name": "echo-abc"},
             "hints": {"forZones": [{"name": "zone-1"}], "forNodes": [{"name": "node-a"}]}},
            {"addresses": ["10.0.2.7"], "conditions": {"ready": False}, "hostname": "echo-1"},
        ],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "appProtocol": "http"},
                  {"name": "", "protocol": "UDP", "port": 53}],
    }
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        target = doc
        for part in parents:
            target = target[part]
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return doc


def test_converter_key_and_value() -> None:
    entries = endpointslice_entries(k8s_slice(), cluster="cluster1", cluster_id=3)
    assert list(entries) == ["cilium/state/endpointslices/v1/cluster1/demo/echo-7xk2p"]
    [value] = entries.values()
    assert es.check_value("demo/echo-7xk2p", value, cluster="cluster1", cluster_id=3) is None
    source = k8s_slice()
    assert es.to_json(value) == {
        "cluster": "cluster1", "clusterID": 3, "namespace": "demo", "name": "echo-7xk2p",
        "labels": source["metadata"]["labels"],
        "annotations": source["metadata"]["annotations"],
        "addressType": "IPv4",
        "endpoints": [  # targetRef and hints.forNodes dropped; missing conditions unset
            {"addresses": ["10.0.1.5"],
             "conditions": {"ready": True, "serving": True, "terminating": False},
             "nodeName": "node-a", "zone": "zone-1",
             "hints": {"forZones": [{"name": "zone-1"}]}},
            {"addresses": ["10.0.2.7"], "conditions": {"ready": False},
             "hostname": "echo-1"}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080},  # no appProtocol
                  {"name": "", "protocol": "UDP", "port": 53}],
    }


def test_converter_bytes_match_the_worked_example() -> None:
    slice_ = {
        "metadata": {"name": "s", "namespace": "ns",
                     "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True},
                       "targetRef": {"kind": "Pod", "name": "p"}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
    }
    [value] = endpointslice_entries(slice_, cluster="c1", cluster_id=1).values()
    assert es.decompress(value).hex() == WORKED_HEX


def test_converter_absent_and_null_fields_stay_unset() -> None:
    slice_ = k8s_slice(**{"endpoints": [{"addresses": ["10.0.0.9"], "conditions": None}],
                          "ports": [{"port": 80}], "metadata.annotations": None})
    [value] = endpointslice_entries(slice_, cluster="c1", cluster_id=1).values()
    doc = es.to_json(value)
    assert "annotations" not in doc
    assert doc["endpoints"] == [{"addresses": ["10.0.0.9"], "conditions": {}}]
    assert doc["ports"] == [{"port": 80}]
    # An IPv6 slice and a slice with no endpoints or ports at all.
    v6 = k8s_slice(addressType="IPv6", endpoints=[{"addresses": ["fd00::5"]}])
    assert es.to_json(next(iter(endpointslice_entries(v6, cluster="c1",
                                                      cluster_id=1).values())))["endpoints"]
    bare = k8s_slice(endpoints=None, ports=None)
    doc = es.to_json(next(iter(endpointslice_entries(bare, cluster="c1",
                                                     cluster_id=1).values())))
    assert (doc["endpoints"], doc["ports"]) == ([], [])


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "fqdn": ({"addressType": "FQDN", "endpoints": [{"addresses": ["example.com"]}]},
             "invalid-address-type"),
    "no-address-type": ({"addressType": None}, "invalid-address-type"),
    "bogus-address-type": ({"addressType": "ipv4"}, "invalid-address-type"),
    "ipv6-in-ipv4": ({"endpoints": [{"addresses": ["fd00::1"]}]}, "invalid-address"),
    "ipv4-in-ipv6": ({"addressType": "IPv6", "endpoints": [{"addresses": ["10.0.0.1"]}]},
                     "invalid-address"),
    "ipv6-zone": ({"addressType": "IPv6", "endpoints": [{"addresses": ["fe80::1%eth0"]}]},
                  "invalid-address"),
    "garbage-address": ({"endpoints": [{"addresses": ["10.0.0.256"]}]}, "invalid-address"),
    "non-string-address": ({"endpoints": [{"addresses": [167772161]}]}, "invalid-address"),
    "no-service-label": ({"metadata.labels": {"app": "echo"}}, "missing-service-name"),
    "empty-service-label": ({"metadata.labels": {"kubernetes.io/service-name": ""}},
                            "missing-service-name"),
    "no-labels": ({"metadata.labels": None}, "missing-service-name"),
    "no-name": ({"metadata.name": None}, "missing-name"),
    "empty-name": ({"metadata.name": ""}, "missing-name"),
    "no-namespace": ({"metadata.namespace": None}, "missing-namespace"),
    "no-metadata": ({"metadata": None}, "missing-namespace"),
    "label-not-string": ({"metadata.labels": {"kubernetes.io/service-name": "echo",
                                              "version": 1}}, "invalid-labels"),
    "annotations-not-map": ({"metadata.annotations": ["a"]}, "invalid-annotations"),
    "endpoints-not-list": ({"endpoints": {"addresses": []}}, "invalid-endpoint"),
    "condition-not-bool": ({"endpoints": [{"addresses": [], "conditions": {"ready": "true"}}]},
                           "invalid-endpoint"),
    "port-not-int": ({"ports": [{"port": "80"}]}, "invalid-port"),
    "port-bool": ({"ports": [{"port": True}]}, "invalid-port"),
    "port-out-of-int32": ({"ports": [{"port": 1 << 31}]}, "invalid-port"),
    "lone-surrogate": ({"metadata.annotations": {"a": "\ud800"}}, "invalid-utf8"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_converter_refuses(name: str) -> None:
    changes, reason = INVALID[name]
    slice_ = k8s_slice(**changes)
    with pytest.raises(InvalidEndpointSlice) as err:
        endpointslice_entries(slice_, cluster="c1", cluster_id=1)
    assert err.value.reason == reason
    assert isinstance(err.value, ValueError)
    metadata = slice_.get("metadata") or {}
    obj = f"{metadata.get('namespace') or ''}/{metadata.get('name') or ''}"
    assert str(err.value) == f"EndpointSlice {obj}: {reason}"
