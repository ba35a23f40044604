"""The "service v2" value: one zstd-compressed protobuf ``ClusterEndpointSlice`` per
Kubernetes EndpointSlice, under ``cilium/state/endpointslices/v1/<cluster>/<ns>/<name>``
(facts §4.3-§4.5).  Shared by the apiserver (writes) and KVStoreMesh (validates); it
imports neither.

Encoding (:func:`marshal`, :func:`encode`)
    The protobuf bytes must be those of Cilium's gogo-generated marshaller, so that a
    value we write is byte-for-byte what Cilium writes for the same slice.  gogo writes
    fields in ascending number; non-pointer Go fields (``cluster``, ``clusterID``,
    ``namespace``, ``name``, ``addressType``, ``Endpoint.conditions``, ``ForZone.name``)
    always, even when empty; pointer fields (``hostname``, ``nodeName``, ``zone``,
    ``hints``, each condition, each port field) only when set; map entries sorted by key
    with key and value both always written; repeated fields in input order, unpacked.

    We let upb produce these bytes rather than hand-encoding them: the ``.proto`` files
    are proto2, so every singular field has explicit presence, and assigning a field
    (even ``""``, ``0`` or an empty ``conditions`` via ``SetInParent``) makes upb write
    it, exactly like gogo's non-pointer fields; unassigned fields are not written, like
    nil pointers.  upb writes known fields in field-number order, writes both key and
    value of every map entry (even ``""``), and ``deterministic=True`` sorts map keys
    bytewise, which is Go's ``sort.Strings`` order.  This was checked against the worked
    example of facts §4.5 and against hand-written vectors
    (``tests/test_endpointslice_wire.py``), which would catch a runtime that behaves
    differently.

    The plain values :func:`marshal` takes are Kubernetes-shaped: ``endpoints`` and
    ``ports`` are dicts with the camelCase keys of a ``discovery.k8s.io/v1`` object
    (:class:`Endpoint`, :class:`EndpointPort`), where an absent key or ``None`` means a
    nil Go pointer.  Keys the slim type lacks (``targetRef``, ``forNodes``,
    ``appProtocol``) are ignored.  :func:`to_json` returns the same shape.

Compression
    One zstd frame per value, level 3 (≈ klauspost's ``SpeedDefault``), content checksum
    on, content size in the header.  Cilium's Go encoder emits different bytes; that does
    not matter because every consumer only decompresses.

Decoding (:func:`decode`, :func:`check_value`)
    Values come from remote clusters and may be hostile.  Decompression is capped at
    16 MiB of output, like Cilium's ``WithDecoderMaxMemory(16 << 20)``, which also caps
    the window.  ``zstandard`` has no single call that both bounds its output and reports
    a truncated frame (``decompress`` trusts the header's content size, or allocates the
    whole cap when there is none; the stream reader silently stops at a truncated frame;
    ``decompressobj`` has no output limit).  So a value is decompressed twice: a stream
    reader counts the output in bounded reads and refuses anything past the cap, then,
    with the size known to be bounded, ``decompressobj`` produces the bytes frame by frame
    and its ``eof`` tells a complete frame from a truncated one.  Concatenated (and
    skippable) frames are accepted, as klauspost's ``DecodeAll`` does (library knowledge,
    not in the facts); nobody writes them.  The parse then applies Cilium's
    ``Unmarshal`` checks; :func:`check_value` adds the reader validators (cluster name,
    ``<namespace>/<name>`` against the key, cluster ID).  Failures are
    :class:`DecodeError` with a short stable :attr:`~DecodeError.reason`, used as a metric
    label.

    One deliberate difference from Go: a string that is not valid UTF-8 is refused
    (``invalid-utf8``).  gogo does not check, but Cilium only writes strings that came
    through Kubernetes' JSON, which are always valid, so such a value can only be corrupt
    or hostile; refusing it also means a decoded message only ever holds ``str``.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NotRequired, TypedDict

import zstandard
from google.protobuf.message import DecodeError as ProtobufDecodeError

from clustermesh.endpointslice_pb import discovery_pb2, endpointslice_pb2

__all__ = [
    "ADDRESS_TYPES",
    "MAX_DECOMPRESSED_SIZE",
    "ClusterEndpointSlice",
    "DecodeError",
    "Endpoint",
    "EndpointConditions",
    "EndpointHints",
    "EndpointPort",
    "ForZone",
    "check_value",
    "compress",
    "decode",
    "decompress",
    "encode",
    "is_valid_address",
    "marshal",
    "to_json",
]

ClusterEndpointSlice = endpointslice_pb2.ClusterEndpointSlice

#: The address types a consumer accepts; FQDN slices are refused (facts §4.5).
ADDRESS_TYPES = ("IPv4", "IPv6")
#: Cilium's decoder limit, ``WithDecoderMaxMemory(16 << 20)``.
MAX_DECOMPRESSED_SIZE = 16 << 20
_ZSTD_LEVEL = 3
_READ_CHUNK = 256 << 10


# --------------------------------------------------------------------------- plain values


class EndpointConditions(TypedDict, total=False):
    ready: bool | None
    serving: bool | None
    terminating: bool | None


class ForZone(TypedDict):
    name: str


class EndpointHints(TypedDict, total=False):
    forZones: Sequence[ForZone]


class Endpoint(TypedDict):
    addresses: Sequence[str]
    conditions: NotRequired[EndpointConditions | None]
    hostname: NotRequired[str | None]
    deprecatedTopology: NotRequired[Mapping[str, str] | None]
    nodeName: NotRequired[str | None]
    zone: NotRequired[str | None]
    hints: NotRequired[EndpointHints | None]


class EndpointPort(TypedDict, total=False):
    name: str | None
    protocol: str | None
    port: int | None


_CONDITIONS = ("ready", "serving", "terminating")
_OPTIONAL_STRINGS = ("hostname", "nodeName", "zone")
_PORT_FIELDS = ("name", "protocol", "port")


# --------------------------------------------------------------------------- encoding


def _endpoint_message(endpoint: Endpoint, out: discovery_pb2.Endpoint) -> None:
    out.addresses.extend(endpoint.get("addresses") or ())
    # Non-pointer in Go: always written, as `12 00` when no condition is set.
    out.conditions.SetInParent()
    conditions = endpoint.get("conditions") or {}
    for field in _CONDITIONS:
        value = conditions.get(field)
        if value is not None:
            setattr(out.conditions, field, value)
    for field in _OPTIONAL_STRINGS:
        value = endpoint.get(field)
        if value is not None:
            setattr(out, field, value)
    out.deprecatedTopology.update(endpoint.get("deprecatedTopology") or {})
    hints = endpoint.get("hints")
    if hints is not None:
        out.hints.SetInParent()  # a set pointer is written even when it holds no zone
        for zone in hints.get("forZones") or ():
            out.hints.forZones.add(name=zone.get("name") or "")


def marshal(*, cluster: str, cluster_id: int, namespace: str, name: str, address_type: str,
            labels: Mapping[str, str] | None = None,
            annotations: Mapping[str, str] | None = None,
            endpoints: Iterable[Endpoint] = (),
            ports: Iterable[EndpointPort] = ()) -> bytes:
    """The protobuf bytes gogo writes for this ``ClusterEndpointSlice`` (not compressed).

    Raises TypeError/ValueError (from protobuf) for values of the wrong type or range.
    """
    # Assigning in the constructor gives these fields presence: written even when empty.
    message = ClusterEndpointSlice(cluster=cluster, clusterID=cluster_id, namespace=namespace,
                                   name=name, addressType=address_type)
    message.labels.update(labels or {})
    message.annotations.update(annotations or {})
    for endpoint in endpoints:
        _endpoint_message(endpoint, message.endpoints.add())
    for port in ports:
        out = message.ports.add()
        for field in _PORT_FIELDS:
            value = port.get(field)
            if value is not None:
                setattr(out, field, value)
    return message.SerializeToString(deterministic=True)


_local = threading.local()  # zstd contexts are reusable but not thread-safe


def _compressor() -> zstandard.ZstdCompressor:
    try:
        return _local.compressor
    except AttributeError:
        _local.compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True)
        return _local.compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    try:
        return _local.decompressor
    except AttributeError:
        _local.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_DECOMPRESSED_SIZE)
        return _local.decompressor


def compress(data: bytes) -> bytes:
    """One zstd frame, with content size and checksum."""
    return _compressor().compress(data)


def encode(*, cluster: str, cluster_id: int, namespace: str, name: str, address_type: str,
           labels: Mapping[str, str] | None = None,
           annotations: Mapping[str, str] | None = None,
           endpoints: Iterable[Endpoint] = (),
           ports: Iterable[EndpointPort] = ()) -> bytes:
    """The kvstore value: ``compress(marshal(...))``."""
    return compress(marshal(cluster=cluster, cluster_id=cluster_id, namespace=namespace,
                            name=name, address_type=address_type, labels=labels,
                            annotations=annotations, endpoints=endpoints, ports=ports))


# --------------------------------------------------------------------------- decoding


class DecodeError(ValueError):
    """A value that must not be used; :attr:`reason` is short, stable and data-free."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decompress(value: bytes) -> bytes:
    """The decompressed bytes of ``value``; never holds more than the 16 MiB cap."""
    dctx = _decompressor()
    try:
        header = zstandard.get_frame_parameters(value)
        # Refuse early what the first frame's header already says is too big.
        if header.window_size > MAX_DECOMPRESSED_SIZE or (
                header.content_size != zstandard.CONTENTSIZE_UNKNOWN
                and header.content_size > MAX_DECOMPRESSED_SIZE):
            raise DecodeError("too-large")
        # Pass 1: count the output in bounded reads (memory: one chunk).
        reader = dctx.stream_reader(value, read_across_frames=True)
        total = 0
        while chunk := reader.read(_READ_CHUNK):
            total += len(chunk)
            if total > MAX_DECOMPRESSED_SIZE:
                raise DecodeError("too-large")
        # Pass 2: the output is now known to fit; eof tells whether each frame is whole.
        out: list[bytes] = []
        rest = value
        while rest:
            frame = dctx.decompressobj()
            out.append(frame.decompress(rest))
            if not frame.eof:
                raise DecodeError("invalid-zstd")  # truncated
            rest = frame.unused_data
    except zstandard.ZstdError:
        raise DecodeError("invalid-zstd") from None
    return b"".join(out)


def _strings(message: ClusterEndpointSlice) -> Iterable[Any]:
    """Every string field (upb returns ``bytes`` for a proto2 string that is not UTF-8)."""
    yield message.cluster, message.namespace, message.name, message.addressType
    for mapping in (message.labels, message.annotations):
        yield mapping.keys()
        yield mapping.values()
    for endpoint in message.endpoints:
        yield endpoint.addresses
        yield endpoint.hostname, endpoint.nodeName, endpoint.zone
        yield endpoint.deprecatedTopology.keys()
        yield endpoint.deprecatedTopology.values()
        yield (zone.name for zone in endpoint.hints.forZones)
    for port in message.ports:
        yield port.name, port.protocol


def _is_ipv4(text: str) -> bool:
    # inet_pton is ~10x faster than ipaddress and accepts a subset of it (strict dotted
    # quad), so a False only means "ask ipaddress".
    try:
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        pass
    else:
        return True
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def is_valid_address(address: Any, address_type: str) -> bool:
    """Whether ``address`` is an address of ``address_type`` (IPv4, or IPv6 with no zone)."""
    # ipaddress would also take 4/16 raw bytes as a packed address: insist on text.
    if not isinstance(address, str):
        return False
    if address_type == "IPv4":
        return _is_ipv4(address)
    if address_type == "IPv6":
        try:
            return ipaddress.IPv6Address(address).scope_id is None
        except ValueError:
            return False
    return False


def decode(value: bytes) -> ClusterEndpointSlice:
    """Decompress, parse and apply Cilium's ``Unmarshal`` checks; raises DecodeError."""
    data = decompress(value)
    try:
        message = ClusterEndpointSlice.FromString(data)
    except ProtobufDecodeError:  # also what upb raises past its nesting limit
        raise DecodeError("invalid-protobuf") from None
    if not all(type(s) is str for group in _strings(message) for s in group):
        raise DecodeError("invalid-utf8")
    for field in ("cluster", "namespace", "name"):
        if not getattr(message, field):
            raise DecodeError(f"missing-{field}")
    address_type = message.addressType
    if address_type not in ADDRESS_TYPES:
        raise DecodeError("invalid-address-type")
    for endpoint in message.endpoints:
        for address in endpoint.addresses:
            if not is_valid_address(address, address_type):
                raise DecodeError("invalid-address")
    return message


def check_value(key: str, value: bytes, *, cluster: str, cluster_id: int) -> str | None:
    """Why a remote ``endpointslices/v1`` entry must not be used (None: it is fine).

    ``key`` is the part below ``cilium/state/endpointslices/v1/<cluster>/``, i.e.
    ``<namespace>/<name>``; ``cluster``/``cluster_id`` are the remote's name and ID.
    """
    try:
        message = decode(value)
    except DecodeError as err:
        return err.reason
    if message.cluster != cluster:
        return "cluster-mismatch"
    if f"{message.namespace}/{message.name}" != key:
        return "name-mismatch"
    if message.clusterID != cluster_id:
        return "cluster-id-mismatch"
    return None


# --------------------------------------------------------------------------- JSON


def _endpoint_json(endpoint: discovery_pb2.Endpoint) -> dict[str, Any]:
    conditions = endpoint.conditions
    doc: dict[str, Any] = {
        "addresses": list(endpoint.addresses),
        "conditions": {f: getattr(conditions, f) for f in _CONDITIONS
                       if conditions.HasField(f)},
    }
    for field in _OPTIONAL_STRINGS:
        if endpoint.HasField(field):
            doc[field] = getattr(endpoint, field)
    if endpoint.deprecatedTopology:
        doc["deprecatedTopology"] = dict(sorted(endpoint.deprecatedTopology.items()))
    if endpoint.HasField("hints"):
        zones = [{"name": zone.name} for zone in endpoint.hints.forZones]
        doc["hints"] = {"forZones": zones} if zones else {}
    return doc


def to_json(value: bytes | ClusterEndpointSlice) -> dict[str, Any]:
    """A JSON-able dict for humans (CLI, debug), with the keys of Cilium's JSON form.

    ``endpoints`` and ``ports`` have the shape :func:`marshal` takes.  A ``bytes`` value
    is decoded first (and may raise DecodeError).
    """
    message = decode(value) if isinstance(value, bytes) else value
    doc: dict[str, Any] = {"cluster": message.cluster, "clusterID": message.clusterID,
                           "namespace": message.namespace, "name": message.name}
    if message.labels:
        doc["labels"] = dict(sorted(message.labels.items()))
    if message.annotations:
        doc["annotations"] = dict(sorted(message.annotations.items()))
    doc["addressType"] = message.addressType
    doc["endpoints"] = [_endpoint_json(e) for e in message.endpoints]
    doc["ports"] = [{f: getattr(p, f) for f in _PORT_FIELDS if p.HasField(f)}
                    for p in message.ports]
    return doc
