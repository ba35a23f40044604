"""Tests for clustermesh.clusterconfig: name/ID rules and the Go-compatible JSON."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clustermesh.clusterconfig import (
    CLUSTER_NAME_MAX_LENGTH,
    DEFAULT_CLUSTER_NAME,
    DEFAULT_MAX_CONNECTED_CLUSTERS,
    MAX_CONNECTED_CLUSTERS_CHOICES,
    CiliumClusterConfig,
    validate_cluster_id,
    validate_cluster_name,
    validate_local_cluster,
    validate_max_connected_clusters,
)

APISERVER = CiliumClusterConfig(
    id=1, synced_canaries=True, max_connected_clusters=255, service_exports_enabled=False
)

# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    ["a", "0", "cluster1", "a-b", "1-2", "a--b", "a" * CLUSTER_NAME_MAX_LENGTH,
     "x" + "-" * 30 + "y", DEFAULT_CLUSTER_NAME],
)
def test_valid_cluster_names(name: str) -> None:
    validate_cluster_name(name)


def test_name_of_32_characters_is_allowed_33_is_not() -> None:
    assert CLUSTER_NAME_MAX_LENGTH == 32
    validate_cluster_name("c" * 32)
    with pytest.raises(ValueError, match="33 characters long, at most 32"):
        validate_cluster_name("c" * 33)


def test_empty_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        validate_cluster_name("")


@pytest.mark.parametrize(
    "name",
    ["-cluster", "cluster-", "-", "Cluster1", "CLUSTER", "cluster_1", "cluster.1", "cluster 1",
     "clüster", "cluster1\n", "\ncluster1", "cluster1 ", "\uff43luster"],
)
def test_invalid_cluster_names(name: str) -> None:
    with pytest.raises(ValueError, match="lowercase alphanumeric characters and '-'") as info:
        validate_cluster_name(name)
    assert repr(name) in str(info.value)


# ------------------------------------------------------------------------------ IDs


def test_max_connected_clusters_choices() -> None:
    assert MAX_CONNECTED_CLUSTERS_CHOICES == (255, 511)
    assert DEFAULT_MAX_CONNECTED_CLUSTERS == 255
    for value in (255, 511):
        validate_max_connected_clusters(value)
    for value in (0, 1, 254, 256, 512, 1023):
        with pytest.raises(ValueError, match=f"max-connected-clusters is {value}: .*255, 511"):
            validate_max_connected_clusters(value)


@pytest.mark.parametrize("maximum", [255, 511])
def test_cluster_id_range(maximum: int) -> None:
    with pytest.raises(ValueError, match="cluster ID 0 is reserved"):
        validate_cluster_id(0, max_connected_clusters=maximum)
    validate_cluster_id(1, max_connected_clusters=maximum)
    validate_cluster_id(maximum, max_connected_clusters=maximum)
    with pytest.raises(ValueError, match=f"cluster ID {maximum + 1} is out of range.*1 and "
                                         f"{maximum}"):
        validate_cluster_id(maximum + 1, max_connected_clusters=maximum)
    with pytest.raises(ValueError, match="out of range"):
        validate_cluster_id(-1, max_connected_clusters=maximum)


def test_id_above_255_needs_511() -> None:
    validate_cluster_id(300, max_connected_clusters=511)
    with pytest.raises(ValueError, match="max-connected-clusters=255"):
        validate_cluster_id(300, max_connected_clusters=255)


def test_cluster_id_with_bad_max_connected_clusters() -> None:
    with pytest.raises(ValueError, match="max-connected-clusters is 256"):
        validate_cluster_id(1, max_connected_clusters=256)


def test_local_cluster_valid() -> None:
    validate_local_cluster(name="cluster1", cluster_id=1, max_connected_clusters=255)
    validate_local_cluster(name="cluster1", cluster_id=511, max_connected_clusters=511)


def test_default_name_with_nonzero_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="'default' cannot be used with a non-zero cluster ID"):
        validate_local_cluster(name=DEFAULT_CLUSTER_NAME, cluster_id=7, max_connected_clusters=255)


def test_default_name_with_zero_id_is_still_rejected_because_zero_is_reserved() -> None:
    with pytest.raises(ValueError, match="reserved"):
        validate_local_cluster(name=DEFAULT_CLUSTER_NAME, cluster_id=0, max_connected_clusters=255)


def test_local_cluster_checks_name_first_then_max_then_id() -> None:
    with pytest.raises(ValueError, match="cluster name 'Bad'"):
        validate_local_cluster(name="Bad", cluster_id=0, max_connected_clusters=7)
    with pytest.raises(ValueError, match="max-connected-clusters is 7"):
        validate_local_cluster(name="ok", cluster_id=0, max_connected_clusters=7)
    with pytest.raises(ValueError, match="cluster ID 256 is out of range"):
        validate_local_cluster(name="ok", cluster_id=256, max_connected_clusters=255)


# ------------------------------------------------------------------------ encoding


def test_golden_apiserver_config() -> None:
    assert APISERVER.to_json() == (
        b'{"id":1,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,'
        b'"serviceExportsEnabled":false}}'
    )


def test_golden_cached_copy() -> None:
    cached = APISERVER.as_cached()
    assert cached.to_json() == (
        b'{"id":1,"capabilities":{"syncedCanaries":true,"cached":true,'
        b'"maxConnectedClusters":255,"serviceExportsEnabled":false}}'
    )
    assert APISERVER.cached is False  # the original is unchanged (frozen)


def test_golden_empty_config() -> None:
    assert CiliumClusterConfig().to_json() == b'{"capabilities":{}}'


def test_cached_copy_of_a_peer_without_synced_canaries() -> None:
    old = CiliumClusterConfig(id=3)
    assert old.as_cached() == CiliumClusterConfig(id=3, synced_canaries=True, cached=True)
    assert old.as_cached().to_json() == (
        b'{"id":3,"capabilities":{"syncedCanaries":true,"cached":true}}'
    )
    assert old.as_cached().as_cached() == old.as_cached()


def test_all_fields_in_go_struct_order() -> None:
    config = CiliumClusterConfig(
        id=511, synced_canaries=True, cached=True, max_connected_clusters=511,
        service_exports_enabled=True, endpoint_slices_export_mode="endpointslices-only",
    )
    assert config.to_json() == (
        b'{"id":511,"capabilities":{"syncedCanaries":true,"cached":true,'
        b'"maxConnectedClusters":511,"serviceExportsEnabled":true,'
        b'"endpointSlicesExportMode":"endpointslices-only"}}'
    )


def test_omitempty_zero_values_but_not_false_pointer() -> None:
    assert CiliumClusterConfig(service_exports_enabled=False).to_json() == (
        b'{"capabilities":{"serviceExportsEnabled":false}}'
    )
    assert CiliumClusterConfig(service_exports_enabled=None).to_json() == b'{"capabilities":{}}'
    assert CiliumClusterConfig(id=0, max_connected_clusters=0).to_json() == b'{"capabilities":{}}'


def test_strings_are_escaped_like_go() -> None:
    # Go's json.Marshal escapes <, >, & and U+2028/U+2029 (HTML safety), writes other
    # non-ASCII as UTF-8, control characters as \n, \b, \f (Go >= 1.22) or \u00XX.
    config = CiliumClusterConfig(endpoint_slices_export_mode='<a&b>"\\\n\b\f\x01\x7fé\u2028\u2029')
    assert config.to_json() == (
        b'{"capabilities":{"endpointSlicesExportMode":'
        b'"\\u003ca\\u0026b\\u003e\\"\\\\\\n\\b\\f\\u0001\x7f\xc3\xa9\\u2028\\u2029"}}'
    )
    assert CiliumClusterConfig.from_json(config.to_json()) == config


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        APISERVER.id = 2  # type: ignore[misc]


# ------------------------------------------------------------------------ decoding


def test_decode_golden() -> None:
    data = (b'{"id":1,"capabilities":{"syncedCanaries":true,"cached":true,'
            b'"maxConnectedClusters":255,"serviceExportsEnabled":false}}')
    assert CiliumClusterConfig.from_json(data) == APISERVER.as_cached()
    assert CiliumClusterConfig.from_json(data.decode()) == APISERVER.as_cached()


def test_decode_is_case_insensitive_like_go() -> None:
    data = ('{"ID":1,"CAPABILITIES":{"SyncedCanaries":true,"maxconnectedclusters":255,'
            '"ServiceExportsEnabled":false,"ENDPOINTSLICESEXPORTMODE":"x"}}')
    assert CiliumClusterConfig.from_json(data) == dataclasses.replace(
        APISERVER, endpoint_slices_export_mode="x"
    )


def test_decode_folds_long_s_like_go() -> None:
    # Go's case folding maps U+017F (long s) to 's'; Python's lower() does not.
    data = '{"capabilities":{"maxConnectedClu\u017fters":511}}'
    assert CiliumClusterConfig.from_json(data).max_connected_clusters == 511


def test_decode_last_duplicate_wins() -> None:
    assert CiliumClusterConfig.from_json('{"id":1,"ID":2}').id == 2
    assert CiliumClusterConfig.from_json('{"Id":2,"id":1}').id == 1


def test_decode_ignores_unknown_fields_and_nulls() -> None:
    data = '{"id":null,"future":{"x":[1,2]},"capabilities":{"cached":null,"newCap":true}}'
    assert CiliumClusterConfig.from_json(data) == CiliumClusterConfig()
    assert CiliumClusterConfig.from_json('{"capabilities":null}') == CiliumClusterConfig()
    assert CiliumClusterConfig.from_json("{}") == CiliumClusterConfig()


def test_decode_null_pointer_vs_false() -> None:
    assert CiliumClusterConfig.from_json(
        '{"capabilities":{"serviceExportsEnabled":null}}'
    ).service_exports_enabled is None
    assert CiliumClusterConfig.from_json(
        '{"capabilities":{"serviceExportsEnabled":false}}'
    ).service_exports_enabled is False


def test_decode_uint32_limits() -> None:
    assert CiliumClusterConfig.from_json('{"id":4294967295}').id == 2**32 - 1
    with pytest.raises(ValueError, match="'id' must be an unsigned 32-bit integer"):
        CiliumClusterConfig.from_json('{"id":4294967296}')


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ('{"id":"1"}', "id"),
        ('{"id":-1}', "id"),
        ('{"id":1.0}', "id"),
        ('{"id":1e2}', "id"),
        ('{"id":true}', "id"),
        ('{"id":[1]}', "id"),
        ('{"capabilities":{"syncedCanaries":"true"}}', "syncedCanaries"),
        ('{"capabilities":{"cached":1}}', "cached"),
        ('{"capabilities":{"maxConnectedClusters":"255"}}', "maxConnectedClusters"),
        ('{"capabilities":{"maxConnectedClusters":false}}', "maxConnectedClusters"),
        ('{"capabilities":{"serviceExportsEnabled":"no"}}', "serviceExportsEnabled"),
        ('{"capabilities":{"endpointSlicesExportMode":5}}', "endpointSlicesExportMode"),
        ('{"capabilities":[]}', "capabilities"),
        ('{"capabilities":true}', "capabilities"),
    ],
)
def test_decode_wrong_types_name_the_field(data: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"field '{field}' must be"):
        CiliumClusterConfig.from_json(data)


@pytest.mark.parametrize("data", ["[]", '"x"', "1", "null"])
def test_decode_non_object(data: str) -> None:
    with pytest.raises(ValueError, match="must be a JSON object"):
        CiliumClusterConfig.from_json(data)


@pytest.mark.parametrize(
    "data",
    ["", "{", '{"id":1}x', "{'id':1}", '{"id":NaN}', '{"x":Infinity}', '{"x":-Infinity}',
     b"\xff\xfe{", "[" * 100_000],
)
def test_decode_invalid_json(data: str | bytes) -> None:
    # Go rejects NaN/Infinity; nesting deeper than Python's recursion limit must
    # still be a ValueError (a peer must not be able to crash the reader).
    with pytest.raises(ValueError, match="cluster config is not valid JSON"):
        CiliumClusterConfig.from_json(data)


def test_decode_lone_surrogate_becomes_replacement_character_like_go() -> None:
    config = CiliumClusterConfig.from_json(
        '{"capabilities":{"endpointSlicesExportMode":"a\\ud800b\\ud83d\\ude00"}}'
    )
    assert config.endpoint_slices_export_mode == "a\ufffdb\U0001f600"
    assert config.to_json() == (
        '{"capabilities":{"endpointSlicesExportMode":"a\ufffdb\U0001f600"}}'.encode()
    )


# --------------------------------------------------------------------- properties

configs = st.builds(
    CiliumClusterConfig,
    id=st.integers(0, 2**32 - 1),
    synced_canaries=st.booleans(),
    cached=st.booleans(),
    max_connected_clusters=st.sampled_from([0, 255, 511]) | st.integers(0, 2**32 - 1),
    service_exports_enabled=st.none() | st.booleans(),
    endpoint_slices_export_mode=st.sampled_from(
        ["", "endpointslices-only", "services-and-endpointslices"]
    ) | st.text(),
)


@given(configs)
def test_round_trip(config: CiliumClusterConfig) -> None:
    data = config.to_json()
    assert CiliumClusterConfig.from_json(data) == config
    assert CiliumClusterConfig.from_json(data).to_json() == data


@given(configs)
def test_encoding_is_compact_ordered_json(config: CiliumClusterConfig) -> None:
    data = config.to_json()
    doc = json.loads(data)
    assert list(doc) == (["id"] if config.id else []) + ["capabilities"]
    order = ["syncedCanaries", "cached", "maxConnectedClusters", "serviceExportsEnabled",
             "endpointSlicesExportMode"]
    assert list(doc["capabilities"]) == [k for k in order if k in doc["capabilities"]]
    assert data == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).translate(
        {ord(c): f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"}
    ).encode()
    for char in (b"<", b">", b"&", "\u2028".encode(), "\u2029".encode()):
        assert char not in data


@given(configs)
def test_as_cached_sets_only_the_cache_flags(config: CiliumClusterConfig) -> None:
    cached = config.as_cached()
    assert cached.cached and cached.synced_canaries
    assert dataclasses.replace(cached, cached=config.cached,
                               synced_canaries=config.synced_canaries) == config
    assert cached.as_cached() == cached


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_decoding_garbage_raises_only_value_error(data: str | bytes) -> None:
    with contextlib.suppress(ValueError):
        CiliumClusterConfig.from_json(data)
