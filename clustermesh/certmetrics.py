"""Scrape-time gauges both daemons export: readiness and certificate expiry.

* ``<ns>_ready`` is 1 when ``/readyz`` would answer ready: the collector calls the very
  function the health server calls (:class:`ReadinessCollector`), no copy of its logic.
* ``<ns>_certificate_not_after_timestamp_seconds{role, target_cluster, subject}`` is the
  not-after (Unix seconds) of each certificate the daemon's etcd configurations name
  (:class:`CertificateCollector`): ``role="client"`` the client certificate presented to
  that etcd (the first certificate of ``cert-file``), ``role="ca"`` every certificate of
  ``trusted-ca-file``; and ``role="server"`` the certificate that etcd serves, as the
  last background probe of :mod:`clustermesh.servedcert` saw it (the collector only
  reads its results); ``target_cluster`` the cluster that etcd belongs to; ``subject``
  the subject CN, or the whole RFC 4514 subject when there is none.

The files are read when a scrape asks for them, and parsed again only when their stat
(mtime, size, inode: a Secret volume's ``..data`` symlink swap changes all three)
changes, so a rotated certificate shows on the next scrape.  A file that cannot be read
or parsed is left out, with one warning naming it (until it is readable again); a
scrape never fails on one.  Two certificates with the same labels (a CA bundle holding
the old and the new CA under one name while it rotates) give one series, the later
not-after: the bundle trusts until the last of them expires.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import NameOID
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .etcd.config import EtcdConfig

log = logging.getLogger(__name__)

CLIENT = "client"
CA = "ca"
SERVER = "server"

Check = Callable[[], tuple[bool, list[str]]]


@dataclass(frozen=True, slots=True)
class CertificateFile:
    """A PEM file to export: ``bundle`` exports every certificate in it (a trust
    bundle), else only the first (a leaf, possibly followed by its chain)."""

    role: str
    cluster: str
    path: Path
    bundle: bool = False


def etcd_certificate_files(configs: Mapping[str, EtcdConfig]) -> list[CertificateFile]:
    """The client certificate and trusted CAs each config names, by the cluster of its
    etcd (none with ``insecure-transport``, where etcd reads no TLS file either)."""
    files = []
    for cluster, config in configs.items():
        if config.insecure_transport:
            continue
        if config.cert_file is not None:
            files.append(CertificateFile(CLIENT, cluster, Path(config.cert_file)))
        if config.trusted_ca_file is not None:
            files.append(CertificateFile(CA, cluster, Path(config.trusted_ca_file),
                                         bundle=True))
    return files


def subject_of(cert: x509.Certificate) -> str:
    """The subject CN, or the whole subject (RFC 4514) when it has none."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        return value if isinstance(value, str) else value.decode(errors="replace")
    return cert.subject.rfc4514_string()


class ServedExpiry(NamedTuple):
    """The not-after (Unix seconds) of a certificate the etcd of ``cluster`` serves."""

    cluster: str
    subject: str
    not_after: float


# (subject, not-after in Unix seconds) of each certificate of a file.
Expiries = tuple[tuple[str, float], ...]
_Stat = tuple[int, int, int, int]


class CertificateFiles:
    """The certificates of PEM files, parsed again only when a file's stat changes."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[_Stat, Expiries]] = {}
        self._failed: set[Path] = set()  # warned about, not readable since

    def expiries(self, path: Path) -> Expiries | None:
        """``path``'s certificates, or None (logged once) if it cannot be read or parsed."""
        try:
            st = os.stat(path)
            stat = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
            cached = self._cache.get(path)
            if cached is not None and cached[0] == stat:
                return cached[1]
            certs = x509.load_pem_x509_certificates(path.read_bytes())
            expiries = tuple((subject_of(c), c.not_valid_after_utc.timestamp()) for c in certs)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            self._cache.pop(path, None)
            if path not in self._failed:
                self._failed.add(path)
                log.warning("certificate expiry metric: cannot read the certificates of %s "
                            "(%s); left out until it can", path,
                            exc.strerror if isinstance(exc, OSError) and exc.strerror
                            else exc)
            return None
        self._failed.discard(path)
        self._cache[path] = (stat, expiries)
        return expiries

    def forget_others(self, keep: set[Path]) -> None:
        """Drop what is cached of files no longer exported."""
        for path in set(self._cache) - keep:
            del self._cache[path]
        self._failed &= keep


class CertificateCollector(Collector):
    """``<namespace>_certificate_not_after_timestamp_seconds`` of the files ``files()``
    names at scrape time, and of the served certificates ``served()`` returns (what the
    probe saw last: reading it never waits for the network)."""

    def __init__(self, namespace: str, files: Callable[[], Iterable[CertificateFile]], *,
                 served: Callable[[], Iterable[ServedExpiry]] = tuple) -> None:
        self.name = f"{namespace}_certificate_not_after_timestamp_seconds"
        self.files = files
        self.served = served
        self.cache = CertificateFiles()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            self.name, "Expiry (not after, Unix seconds) of a certificate the daemon uses "
            "(role: client, ca or server, of the etcd of target_cluster)",
            labels=["role", "target_cluster", "subject"])
        values: dict[tuple[str, str, str], float] = {}
        seen: set[Path] = set()
        for file in self.files():
            seen.add(file.path)
            expiries = self.cache.expiries(file.path)
            for subject, not_after in (expiries or ())[:None if file.bundle else 1]:
                labels = (file.role, file.cluster, subject)
                values[labels] = max(not_after, values.get(labels, not_after))
        self.cache.forget_others(seen)
        # One per (cluster, subject) already: no other role shares these labels.
        for cluster, subject, not_after in self.served():
            values[(SERVER, cluster, subject)] = not_after
        for labels, value in sorted(values.items()):
            family.add_metric(list(labels), value)
        yield family


class ReadinessCollector(Collector):
    """``<namespace>_ready``: 1 when ``ready()`` (what ``/readyz`` calls) says ready."""

    def __init__(self, namespace: str, ready: Check) -> None:
        self.name = f"{namespace}_ready"
        self.ready = ready

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ok, _ = self.ready()
        yield GaugeMetricFamily(self.name, "Whether the daemon is ready (what /readyz "
                                "answers: 1 ready, 0 not)", value=1 if ok else 0)
