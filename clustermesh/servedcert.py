"""The certificate each etcd serves the daemon, for ``role="server"`` of
``<ns>_certificate_not_after_timestamp_seconds``: a TLS handshake probe in the background.

The gRPC client does not expose the certificate its peer presented, so
:class:`ServedCertificates` opens a connection of its own to each endpoint and reads
it from the handshake (:func:`served_certificate`).  The handshake is the daemon's:
the config's ``trusted-ca-file`` (the system's CAs without one) and hostname check,
as the gRPC client verifies the server, and the config's client certificate, which an
etcd with ``--client-cert-auth`` asks for.  The connection is closed right after the
handshake; nothing is sent over it.

* **What is probed.**  ``targets()`` names the etcd configs the daemon uses now, by
  cluster (the local etcd under the daemon's own cluster name; in KVStoreMesh, each
  running remote's last session).  Only TLS configs (``https://`` endpoints): plain
  text has no certificate.  Every endpoint of a config is probed, each at most
  :data:`PROBE_TIMEOUT` (real time: it bounds the network).
* **When.**  :meth:`ServedCertificates.run` looks at ``targets()`` every
  :data:`LOOK_INTERVAL` and probes a target that is new (or whose config changed)
  at once and the others every :data:`PROBE_INTERVAL`, on the injected
  :class:`~clustermesh.clock.Clock`.  A certificate rotated on the server therefore
  shows within ten minutes.  Probes never run on the scrape path: a scrape reads
  :meth:`ServedCertificates.series`, the last results.
* **Failures.**  A failed probe of an endpoint (refused, timed out, TLS error) is
  logged once, as a warning naming the cluster and the endpoint, until it succeeds
  again; the endpoint's last successful result is kept.  An expiry alert needs the
  value most when the etcd is flaky, and the certificate a server presented ten
  minutes ago is the best knowledge of what it presents now.  So does a certificate
  that has expired (it fails verification): the last value, the expiring one, stays.
  Results are dropped only when their target goes (a removed remote: from the next
  scrape on) or its config changes (other endpoints or files: what the old one
  served says nothing about the new one).
* **Several endpoints.**  Each member of an etcd cluster may serve its own
  certificate: the series has, per (cluster, subject CN), the *earliest* not-after
  among the endpoints, the first certificate that will break a connection (members
  with different CNs have a series each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography import x509

from .certmetrics import ServedExpiry, subject_of
from .clock import REAL_CLOCK, Clock
from .etcd.config import Endpoint, EtcdConfig

log = logging.getLogger(__name__)

PROBE_INTERVAL = 600.0  # seconds between two probes of one target
PROBE_TIMEOUT = 5.0  # seconds a probe of one endpoint may take (connect and handshake)
LOOK_INTERVAL = 1.0  # seconds between two looks at the targets: a new one waits no longer

Targets = Callable[[], Mapping[str, EtcdConfig]]


def _client_context(config: EtcdConfig) -> ssl.SSLContext:
    """The TLS client side of ``config``, as the daemon's gRPC client sets it up: trust
    ``trusted-ca-file`` (the system's CAs without one), present ``cert-file``."""
    context = ssl.create_default_context(cafile=config.trusted_ca_file)
    if config.cert_file is not None and config.key_file is not None:
        context.load_cert_chain(config.cert_file, config.key_file)
    return context


async def served_certificate(config: EtcdConfig, endpoint: Endpoint, *,
                             timeout: float = PROBE_TIMEOUT) -> x509.Certificate:
    """The leaf certificate ``endpoint`` presents in a TLS handshake with ``config``'s
    files.  OSError (TimeoutError after ``timeout`` seconds, ssl.SSLError) or ValueError
    when there is none to be had."""
    # The files are read in a thread: a slow volume must not stall the event loop.
    context = await asyncio.to_thread(_client_context, config)
    async with asyncio.timeout(timeout):
        _, writer = await asyncio.open_connection(endpoint.host, endpoint.port, ssl=context,
                                                  server_hostname=endpoint.host)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        # The close_notify exchange is a courtesy: a peer that resets or stalls is ignored.
        with contextlib.suppress(OSError):
            async with asyncio.timeout(timeout):
                await writer.wait_closed()
    if der is None:
        raise ValueError("the server presented no certificate")
    return x509.load_der_x509_certificate(der)


@dataclass(slots=True)
class _Target:
    """One cluster's config as last probed, and what its endpoints served."""

    config: EtcdConfig
    probed_at: float | None = None  # clock.monotonic() when the last probe began
    # url -> (subject, not-after) of the endpoint's last successful probe
    served: dict[str, tuple[str, float]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)  # urls warned about, failing since


class ServedCertificates:
    """The certificates the etcds of ``targets()`` serve (see the module docstring)."""

    def __init__(self, targets: Targets, *, interval: float = PROBE_INTERVAL,
                 timeout: float = PROBE_TIMEOUT, look_interval: float = LOOK_INTERVAL,
                 clock: Clock = REAL_CLOCK) -> None:
        self._targets = targets
        self._interval = interval
        self._timeout = timeout
        self._look_interval = look_interval
        self._clock = clock
        self._known: dict[str, _Target] = {}

    async def run(self) -> None:
        """Probe what is due every ``look_interval`` seconds, until cancelled."""
        while True:
            await self.probe_due()
            await self._clock.sleep(self._look_interval)

    async def probe_due(self) -> None:
        """Probe each TLS target that is new, whose config changed, or whose last probe
        began ``interval`` seconds ago or more; forget the targets that are gone."""
        current = {name: config for name, config in self._targets().items()
                   if config.use_tls}
        for name in self._known.keys() - current.keys():
            del self._known[name]
        now = self._clock.monotonic()
        due = []
        for name, config in current.items():
            target = self._known.get(name)
            if target is None or target.config != config:
                target = self._known[name] = _Target(config)
            if target.probed_at is None or now - target.probed_at >= self._interval:
                target.probed_at = now
                due += [(name, target, endpoint) for endpoint in config.endpoints]
        await asyncio.gather(*(self._probe(name, target, endpoint)
                               for name, target, endpoint in due))

    async def _probe(self, name: str, target: _Target, endpoint: Endpoint) -> None:
        url = str(endpoint)
        try:
            cert = await served_certificate(target.config, endpoint, timeout=self._timeout)
        except (OSError, ValueError) as exc:  # TimeoutError and ssl.SSLError are OSErrors
            if url not in target.failing:
                target.failing.add(url)
                kept = ("its last known not-after is kept" if url in target.served
                        else "no not-after is known for it yet")
                log.warning("served certificate of cluster %s: probing %s failed (%s); %s, "
                            "the probe is retried every %gs", name, url,
                            str(exc) or type(exc).__name__, kept, self._interval)
            return
        target.failing.discard(url)
        target.served[url] = (subject_of(cert), cert.not_valid_after_utc.timestamp())

    def series(self) -> list[ServedExpiry]:
        """The earliest not-after per (cluster, subject) of the targets as they are now
        (one removed or reconfigured since its probe is left out); never blocks."""
        current = self._targets()
        earliest: dict[tuple[str, str], float] = {}
        for name, target in self._known.items():
            if current.get(name) != target.config:
                continue
            for subject, not_after in target.served.values():
                key = (name, subject)
                earliest[key] = min(not_after, earliest.get(key, not_after))
        return [ServedExpiry(name, subject, not_after)
                for (name, subject), not_after in sorted(earliest.items())]
