"""CiliumIdentity -> ``cilium/state/identities/v1/id/<ID>`` (the sorted label string).

``clustermesh-apiserver/clustermesh/converters.go``, ``pkg/labels/labels.go``
Map2Labels/SortedList; the namespace an identity is filed under comes from its
pod-namespace label (``namespacers.go``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from clustermesh.keys import IDENTITIES

from .inputs import get

_POD_NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
_NUMERIC = re.compile(r"[0-9]+")


def identity_namespace(identity: Mapping[str, Any]) -> str | None:
    """The namespace Cilium files a CiliumIdentity under (its pod-namespace label).

    Newest Cilium skips identities without it and filters the others with
    :func:`namespace_is_global` (``clustermesh-apiserver/clustermesh/namespacers.go``).
    """
    labels = identity.get("security-labels")
    value = labels.get(_POD_NAMESPACE_LABEL) if isinstance(labels, Mapping) else None
    return value if isinstance(value, str) and value else None


def _parse_label_key(key: str) -> tuple[str, str]:
    """Cilium's ``parseSource(key, ':')`` -> (source, key)."""
    if not key:
        return "", ""
    if key[0] == "$":
        return "reserved", key[1:]
    src, sep, rest = key.partition(":")
    if not sep:
        if key.startswith("reserved."):
            return "reserved", key[len("reserved."):]
        return "", key
    return src, rest


def identity_entries(identity: Mapping[str, Any]) -> dict[str, bytes]:
    """CiliumIdentity -> ``cilium/state/identities/v1/id/<ID>`` = sorted label string.

    Each security label ``[source:]key`` -> ``value`` becomes
    ``source:key=value;`` (no source -> ``unspec``, ``$key`` -> ``reserved``),
    sorted by key.  Nothing when the name is not a numeric ID or there are no
    security labels.
    """
    name = get(identity, "metadata", "name")
    if not isinstance(name, str) or not _NUMERIC.fullmatch(name) or int(name) >= 1 << 32:
        return {}
    security_labels = identity.get("security-labels")
    if not isinstance(security_labels, Mapping) or not security_labels:
        return {}
    labels: dict[str, tuple[str, str, str]] = {}
    # Two map keys can collapse into the same label key (e.g. "k8s:a" and
    # "container:a"); Go keeps whichever it meets last in random map order.  We
    # make that deterministic: the original key that sorts last wins.
    for raw_key in sorted(str(k) for k in security_labels):
        raw_value = security_labels[raw_key]
        value = raw_value if isinstance(raw_value, str) else str(raw_value)
        source, key = _parse_label_key(raw_key)
        if not source:
            source = "unspec"
        if source == "reserved" and key == "":
            key, value = value, ""
        labels[key] = (source, key, value)
    text = "".join(f"{s}:{k}={v};" for s, k, v in (labels[k] for k in sorted(labels)))
    return {IDENTITIES.state_prefix("") + name: text.encode("utf-8", "surrogatepass")}
