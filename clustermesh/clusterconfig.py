"""Cluster identity: name and ID rules, and the ``CiliumClusterConfig`` value.

Every cluster in a mesh publishes ``cilium/cluster-config/<name>`` with a JSON
``CiliumClusterConfig`` (Cilium ``pkg/clustermesh/types/types.go``).  Real Cilium
agents parse it with Go's ``encoding/json``, so we encode exactly as Go does:
compact, fields in struct order, ``omitempty`` fields left out when zero, and the
``capabilities`` object always present.  Decoding follows Go's rules too: field
names match case-insensitively and unknown fields are ignored.

The validation functions raise :class:`ValueError` with the exact reason, so the
daemons and the CLI can print it unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

CLUSTER_NAME_MAX_LENGTH = 32
_CLUSTER_NAME_RE = re.compile(r"^([a-z0-9][-a-z0-9]*)?[a-z0-9]$")
DEFAULT_CLUSTER_NAME = "default"
MAX_CONNECTED_CLUSTERS_CHOICES = (255, 511)
DEFAULT_MAX_CONNECTED_CLUSTERS = 255

# ``capabilities.endpointSlicesExportMode`` (Cilium main, "service v2").  A main
# clustermesh-apiserver always advertises one of the two non-empty values; the field
# absent (``""``, ServicesOnly) is a 1.18/1.19 peer, which exports legacy services only.
EXPORT_SERVICES_ONLY = ""
EXPORT_SERVICES_AND_ENDPOINTSLICES = "services-and-endpointslices"
EXPORT_ENDPOINTSLICES_ONLY = "endpointslices-only"


def validate_cluster_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a valid Cilium cluster name."""
    if not name:
        raise ValueError("cluster name must not be empty")
    if len(name) > CLUSTER_NAME_MAX_LENGTH:
        raise ValueError(
            f"cluster name {name!r} is {len(name)} characters long, "
            f"at most {CLUSTER_NAME_MAX_LENGTH} are allowed"
        )
    if not _CLUSTER_NAME_RE.fullmatch(name):  # match() would accept a trailing "\n"
        raise ValueError(
            f"cluster name {name!r} is invalid: it must consist of lowercase "
            "alphanumeric characters and '-', and begin and end with an alphanumeric character"
        )


def validate_max_connected_clusters(value: int) -> None:
    if value not in MAX_CONNECTED_CLUSTERS_CHOICES:
        raise ValueError(
            f"max-connected-clusters is {value}: it must be one of "
            f"{', '.join(map(str, MAX_CONNECTED_CLUSTERS_CHOICES))}"
        )


def validate_cluster_id(cluster_id: int, *, max_connected_clusters: int) -> None:
    """Raise ValueError unless ``cluster_id`` is usable by a cluster in a mesh."""
    validate_max_connected_clusters(max_connected_clusters)
    if cluster_id == 0:
        raise ValueError("cluster ID 0 is reserved: choose an ID from 1 to "
                         f"{max_connected_clusters}")
    if not 0 < cluster_id <= max_connected_clusters:
        raise ValueError(
            f"cluster ID {cluster_id} is out of range: it must be between 1 and "
            f"{max_connected_clusters} (max-connected-clusters={max_connected_clusters})"
        )


def validate_local_cluster(*, name: str, cluster_id: int, max_connected_clusters: int) -> None:
    """Validate a daemon's own ``--cluster-name``/``--cluster-id``/``--max-connected-clusters``."""
    validate_cluster_name(name)
    validate_max_connected_clusters(max_connected_clusters)
    if name == DEFAULT_CLUSTER_NAME and cluster_id != 0:
        raise ValueError(
            f"cluster name {DEFAULT_CLUSTER_NAME!r} cannot be used with a non-zero "
            f"cluster ID ({cluster_id}): give the cluster a unique name"
        )
    validate_cluster_id(cluster_id, max_connected_clusters=max_connected_clusters)


@dataclass(frozen=True, slots=True, kw_only=True)
class CiliumClusterConfig:
    """``types.CiliumClusterConfig`` with its ``capabilities`` flattened."""

    id: int = 0
    synced_canaries: bool = False
    cached: bool = False
    max_connected_clusters: int = 0
    # None means "the peer predates MCS-API support" (Go: *bool, nil).
    service_exports_enabled: bool | None = None
    endpoint_slices_export_mode: str = ""

    def to_json(self) -> bytes:
        """Encode exactly as Go's ``json.Marshal`` does."""
        caps: dict[str, Any] = {}
        if self.synced_canaries:
            caps["syncedCanaries"] = True
        if self.cached:
            caps["cached"] = True
        if self.max_connected_clusters:
            caps["maxConnectedClusters"] = self.max_connected_clusters
        if self.service_exports_enabled is not None:
            caps["serviceExportsEnabled"] = self.service_exports_enabled
        if self.endpoint_slices_export_mode:
            caps["endpointSlicesExportMode"] = self.endpoint_slices_export_mode
        doc: dict[str, Any] = {}
        if self.id:
            doc["id"] = self.id
        doc["capabilities"] = caps
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        return text.translate(_GO_HTML_ESCAPES).encode()

    def as_cached(self) -> CiliumClusterConfig:
        """The copy a KVStoreMesh publishes for agents reading its cache."""
        return replace(self, cached=True, synced_canaries=True)

    @classmethod
    def from_json(cls, data: bytes | str) -> CiliumClusterConfig:
        """Decode like Go's ``json.Unmarshal``; ValueError names what is wrong."""
        try:
            doc = json.loads(data, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"cluster config is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("cluster config must be a JSON object")
        doc = _fold(doc)
        caps = doc.get("capabilities")
        if caps is None:
            caps = {}
        if not isinstance(caps, dict):
            raise ValueError("cluster config field 'capabilities' must be an object")
        caps = _fold(caps)
        sse = caps.get("serviceexportsenabled")
        return cls(
            id=_uint32(doc.get("id"), "id"),
            synced_canaries=_bool(caps.get("syncedcanaries"), "syncedCanaries"),
            cached=_bool(caps.get("cached"), "cached"),
            max_connected_clusters=_uint32(
                caps.get("maxconnectedclusters"), "maxConnectedClusters"
            ),
            service_exports_enabled=None if sse is None else _bool(sse, "serviceExportsEnabled"),
            endpoint_slices_export_mode=_str(
                caps.get("endpointslicesexportmode"), "endpointSlicesExportMode"
            ),
        )


def _fold(doc: dict[str, Any]) -> dict[str, Any]:
    # Go matches JSON keys to struct fields case-insensitively; the last one wins.
    # (Go also folds U+017F LATIN SMALL LETTER LONG S to "s"; str.lower() does not.)
    return {str(k).lower().replace("\u017f", "s"): v for k, v in doc.items()}


def _uint32(value: Any, field: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ValueError(f"cluster config field {field!r} must be an unsigned 32-bit integer, "
                         f"got {value!r}")
    return value


def _bool(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"cluster config field {field!r} must be a boolean, got {value!r}")
    return value


def _str(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"cluster config field {field!r} must be a string, got {value!r}")
    # Go decodes a lone surrogate escape ("\ud800") as U+FFFD.
    return _LONE_SURROGATE_RE.sub("\ufffd", value)


# Go's json.Marshal escapes these too (HTML safety); they only occur inside strings.
_GO_HTML_ESCAPES = {ord(c): f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"}
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
