"""The fast JSON reader of entry validation against the stdlib one it replaced.

:func:`kvstoremesh.validation._json_object` reads values with msgspec and hands every
document msgspec refuses to ``json`` (:func:`_stdlib_json_object`, the reader validation
used before).  The verdicts stay the same only if msgspec never *accepts* a document
differently from json: same types (ints of any size stay ints, not floats), same
values, same key order, last duplicate key winning, and nothing accepted that json
refuses.  These tests compare the two readers, document for document (``repr``, which
tells 1 from 1.0 and True, and shows key order), on generated JSON, on mutations of it,
on random bytes, on the hostile sets of test_hostile_input and on hand-picked edge
cases; and compare ``check_entry``'s verdicts with the fast path switched off.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_input import SUFFIX, _valid_value, values

from clustermesh.keys import RESOURCES, Resource
from kvstoremesh import validation
from kvstoremesh.validation import _json_object, _stdlib_json_object, check_entry

MANY = settings(max_examples=500, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(),  # unbounded: beyond 64 bits is where orjson, say, would read floats
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(), st.text(alphabet=st.characters(codec="utf-8")))
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30)


def same_reading(value: bytes) -> None:
    fast, stdlib = _json_object(value), _stdlib_json_object(value)
    assert repr(fast) == repr(stdlib), value[:200]


@MANY
@given(doc=DOCUMENTS, ascii_only=st.booleans())
def test_generated_documents_read_alike(doc: Any, ascii_only: bool) -> None:
    encoded = json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    same_reading(encoded)
    same_reading(json.dumps({"wrapped": doc, "ID": 1}, ensure_ascii=ascii_only)
                 .encode("utf-8", "surrogatepass"))


@MANY
@given(doc=st.dictionaries(st.text(max_size=8), DOCUMENTS, max_size=6), data=st.data())
def test_mutated_documents_read_alike(doc: dict[str, Any], data: st.DataObject) -> None:
    encoded = bytearray(json.dumps(doc).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(encoded)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.sampled_from(b'{}[]",:0123456789.eE+-\\ \t\n\x00\xff\xc3tfnul'))
        if action == "insert":
            encoded.insert(at, byte)
        elif at < len(encoded):
            if action == "delete":
                del encoded[at]
            else:
                encoded[at] = byte
    same_reading(bytes(encoded))


@MANY
@given(value=st.binary(max_size=64))
def test_random_bytes_read_alike(value: bytes) -> None:
    same_reading(value)
    same_reading(b"{" + value)


@MANY
@given(resource=st.sampled_from(RESOURCES), suffix=SUFFIX, data=st.data())
def test_hostile_values_read_alike(resource: Resource, suffix: str,
                                   data: st.DataObject) -> None:
    same_reading(data.draw(values(resource, suffix), label="value"))


EDGES = [
    b'{"a":1,"a":2}', b'{"a":1,"b":2,"a":3}', b'{"ID":18446744073709551616}',
    b'{"ID":-9223372036854775809}', b'{"ID":123456789012345678901234567890}',
    b'{"ID":1' + b"0" * 5000 + b"}", b'{"a":1e400}', b'{"a":-1e400}', b'{"a":1e-400}',
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a":"\\ud800"}',
    b'{"a":"\\uDE00\\uD83D"}', b'{"a":"\\uD83D\\uDE00"}', b'{"\xed\xa0\x80":1}',
    b'\xef\xbb\xbf{"a":1}', '{"a":1}'.encode("utf-16"), '{"a":1}'.encode("utf-32"),
    '{"a":1}'.encode("utf-16-le"), b'{"a":"x\ny"}', b'{"a":"\x7f"}', b'{"a":01}',
    b'{"a":1.}', b'{"a":.5}', b'{"a":+1}', b'\t{}\r\n', b'\x0c{}', b'{"a":"\\x41"}',
    b'{"a":1}garbage', b'{"a":1} {}', b'{"a":tru}', b'{"a":-0}', b'{"a":-0.0}',
    b'{"a":1E5}', b'{"a":1e+5}', b'{"a":0.1e1}', b'{"a":2.2250738585072011e-308}',
    b'{"a":9007199254740993}', b'{"a":1.7976931348623157e308}', b'{}', b'[]', b'1',
    b'"x"', b'null', b'', b'{', b'{"a":' * 2000, b'{"a":' * 900 + b"1" + b"}" * 900,
    b"[" * 5000 + b"]" * 5000, b'{"IP":"10.0.0.1","ID":100001}\x00',
]


@pytest.mark.parametrize("value", EDGES, ids=range(len(EDGES)))
def test_edge_cases_read_alike(value: bytes) -> None:
    same_reading(value)


def _refuse(value: bytes) -> Any:
    raise msgspec.DecodeError("fast path switched off")


@MANY
@given(resource=st.sampled_from(RESOURCES), suffix=SUFFIX, data=st.data(),
       valid=st.booleans())
def test_verdicts_equal_with_and_without_the_fast_path(
        resource: Resource, suffix: str, data: st.DataObject, valid: bool) -> None:
    value = (_valid_value(resource, "evil", 2, suffix) if valid
             else data.draw(values(resource, suffix), label="value"))

    def verdict() -> str | None:
        return check_entry(resource, suffix, value, cluster="evil", cluster_id=2,
                           max_connected_clusters=255)

    fast = verdict()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validation, "_decode", _refuse)
        assert verdict() == fast, (resource.name, suffix, value[:200])
