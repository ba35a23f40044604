"""What a correct KVStoreMesh caches, written from the spec, not from its code.

The convergence check must not call the code it checks, or a bug there would be
expected too.  This module restates, independently of :mod:`kvstoremesh.gating`
and :mod:`clustermesh.endpointslice`:

* :func:`expected_reflection` — per resource and remote cluster-config, whether the
  cache mirrors the remote's keys, holds only the canary, or nothing
  (facts: clustermesh §3.5, apiserver-newest §4.1, §4.2);
* :func:`endpointslice_accepted` — whether an EndpointSlice value passes the
  agents' checks (apiserver-newest §4.5): complete zstd frames of at most
  16 MiB decompressed, a protobuf ``ClusterEndpointSlice`` (decoded here by a
  small wire-format reader, not the generated classes) naming the remote, its
  ID and the ``<namespace>/<name>`` key, whose addresses are of its address type.
"""

from __future__ import annotations

import io
import ipaddress

import zstandard

from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.keys import ENDPOINT_SLICES, SERVICE_EXPORTS, SERVICES, Resource

MIRROR, CANARY_ONLY, NOTHING = "mirror", "canary only", "nothing"
MAX_DECOMPRESSED = 16 << 20  # the agents' WithDecoderMaxMemory(16 << 20)


def expected_reflection(resource: Resource, config: CiliumClusterConfig) -> str:
    """MIRROR, CANARY_ONLY or NOTHING: what the cache holds of ``resource``."""
    mode = config.endpoint_slices_export_mode
    if resource is SERVICE_EXPORTS:
        # serviceExportsEnabled absent: a peer without MCS-API; Cilium pretends synced.
        return MIRROR if config.service_exports_enabled is not None else CANARY_ONLY
    if resource is SERVICES:
        # Such a peer writes no services, but 1.18/1.19 agents wait for the canary.
        return CANARY_ONLY if mode == "endpointslices-only" else MIRROR
    if resource is ENDPOINT_SLICES:
        # 1.18/1.19 peers (no mode) write neither slices nor their canary.
        return MIRROR if mode else NOTHING
    return MIRROR


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of every field of one message, in wire order."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i)
            out.append((number, value))
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > len(buf):
                raise ValueError("truncated field")
            out.append((number, buf[i:i + size]))
            i += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if i + width > len(buf):
                raise ValueError("truncated field")
            i += width  # fixed-width fields: none in this message; skipped like unknowns
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("expected a length-delimited field")
    return value


def _decompress(value: bytes) -> bytes | None:
    dctx = zstandard.ZstdDecompressor()
    try:
        # The size bound first (a frame may claim any size in its header)...
        head = dctx.stream_reader(io.BytesIO(value), read_across_frames=True).read(
            MAX_DECOMPRESSED + 1)
        if len(head) > MAX_DECOMPRESSED:
            return None
        # ...then completeness: whole frames only (Go's DecodeAll takes several in a row).
        out, rest = b"", value
        while rest:
            obj = dctx.decompressobj()
            out += obj.decompress(rest)
            if not obj.eof:
                return None
            rest = obj.unused_data
    except zstandard.ZstdError:
        return None
    return out


def endpointslice_accepted(key: str, value: bytes, *, cluster: str, cluster_id: int) -> bool:
    """Whether the cache takes this ``<namespace>/<name>`` EndpointSlice of ``cluster``."""
    raw = _decompress(value)
    if raw is None:
        return False
    scalars: dict[int, int | bytes] = {}
    addresses: list[str] = []
    try:
        for number, field in _fields(raw):
            if number == 8:  # Endpoint; its field 1: addresses
                addresses += [_bytes(v).decode() for n, v in _fields(_bytes(field)) if n == 1]
            elif number in (1, 2, 3, 4, 7):
                scalars[number] = field  # proto2 optional: the last one wins
        cluster_field, namespace, slice_name, address_type = (
            _bytes(scalars.get(n, b"")).decode() for n in (1, 3, 4, 7))
    except (ValueError, UnicodeDecodeError):
        return False
    if not (cluster_field and namespace and slice_name):
        return False
    if (cluster_field != cluster or scalars.get(2, 0) != cluster_id
            or f"{namespace}/{slice_name}" != key):
        return False
    family = {"IPv4": ipaddress.IPv4Address, "IPv6": ipaddress.IPv6Address}.get(address_type)
    if family is None:
        return False
    for address in addresses:
        if "%" in address:  # Python accepts an IPv6 zone; the agents do not
            return False
        try:
            family(address)
        except ValueError:
            return False
    return True
