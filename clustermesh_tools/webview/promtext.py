"""What the live view reads from one KVStoreMesh's ``/metrics`` (Prometheus text).

Only numbers and labels are kept, never a file: per remote (label ``target_cluster``)
the propagation lag histogram (``cilium_kvstoremesh_propagation_lag_seconds``), the
rejected entries by reason (``cilium_kvstoremesh_rejected_entries_total``) and the
heartbeat age (``cilium_kvstoremesh_remote_heartbeat_age_seconds``); the mesh
problems by kind (``cilium_kvstoremesh_mesh_problems``); readiness
(``cilium_kvstoremesh_ready``); and the subject and not-after of each certificate it
uses (``cilium_kvstoremesh_certificate_not_after_timestamp_seconds``).  The lag and
rejection series count from the process's start, like any Prometheus counter.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["CertificateExpiry", "Lag", "MetricsReading", "fetch_metrics", "parse_metrics"]

NS = "cilium_kvstoremesh"
LAG = f"{NS}_propagation_lag_seconds"
REJECTED = f"{NS}_rejected_entries"
HEARTBEAT = f"{NS}_remote_heartbeat_age_seconds"
PROBLEMS = f"{NS}_mesh_problems"
READY = f"{NS}_ready"
NOT_AFTER = f"{NS}_certificate_not_after_timestamp_seconds"


@dataclass(frozen=True, slots=True)
class Lag:
    """Propagation lag of one remote's changes: how many, their mean, and the upper
    bound of the histogram bucket holding the 99th percentile (None: +Inf)."""

    count: int
    mean_seconds: float | None
    p99_seconds: float | None


@dataclass(frozen=True, slots=True)
class CertificateExpiry:
    role: str  # "client" or "ca"
    cluster: str  # the cluster whose etcd it is used for
    subject: str
    not_after: float  # Unix seconds


@dataclass(slots=True)
class MetricsReading:
    ready: bool | None = None
    lag: dict[str, Lag] = field(default_factory=dict)
    rejections: dict[str, dict[str, int]] = field(default_factory=dict)
    heartbeat_age: dict[str, float] = field(default_factory=dict)
    problems: list[tuple[str, str, int]] = field(default_factory=list)  # cluster, kind, n
    certificates: list[CertificateExpiry] = field(default_factory=list)


def _lag(buckets: list[tuple[float, float]], total: float, count: float) -> Lag:
    p99: float | None = None
    for le, cumulative in sorted(buckets):
        if count and cumulative >= 0.99 * count:
            p99 = None if math.isinf(le) else le
            break
    return Lag(count=int(count), mean_seconds=total / count if count else None,
               p99_seconds=p99)


def parse_metrics(text: str) -> MetricsReading:
    """The series above out of one scrape; anything else is ignored."""
    out = MetricsReading()
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            cluster = s.labels.get("target_cluster", "")
            if family.name == LAG:
                if s.name.endswith("_bucket"):
                    buckets.setdefault(cluster, []).append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_sum"):
                    sums[cluster] = s.value
                elif s.name.endswith("_count"):
                    counts[cluster] = s.value
            elif family.name in (REJECTED, f"{REJECTED}_total") and s.name.endswith("_total"):
                by_reason = out.rejections.setdefault(cluster, {})
                reason = s.labels.get("reason", "")
                by_reason[reason] = by_reason.get(reason, 0) + int(s.value)
            elif family.name == HEARTBEAT:
                out.heartbeat_age[cluster] = s.value
            elif family.name == PROBLEMS and s.value:
                out.problems.append((cluster, s.labels.get("kind", ""), int(s.value)))
            elif family.name == READY:
                out.ready = s.value == 1
            elif family.name == NOT_AFTER:
                out.certificates.append(CertificateExpiry(
                    role=s.labels.get("role", ""), cluster=cluster,
                    subject=s.labels.get("subject", ""), not_after=s.value))
    for cluster, count in counts.items():
        out.lag[cluster] = _lag(buckets.get(cluster, []), sums.get(cluster, 0.0), count)
    return out


# Metrics endpoints are asked directly, never through a proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_metrics(url: str, *, timeout: float) -> MetricsReading | None:
    """One scrape of ``url``; None if it cannot be reached or read."""
    try:
        with _opener.open(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", errors="replace")
        return parse_metrics(text)
    except (urllib.error.URLError, OSError, ValueError):
        return None
