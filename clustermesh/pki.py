"""A small TLS PKI: the CA and the etcd server/client certificates of a mesh.

Used by ``clustermesh enable`` and the local mesh to mint certificates, and by the
tests to build throw-away PKIs. :func:`certificate_problems` is the other direction,
checking a certificate someone else issued: ``clustermesh troubleshoot`` runs it on a
cluster directory's certificates, ``clustermesh-apiserver *-dbg troubleshoot`` on the
client certificate of an etcd configuration (:mod:`clustermesh.etcdcheck`).

Design
------
* Everything is ECDSA P-256: key generation takes microseconds, so a whole PKI (CA, one
  server certificate, a handful of client certificates) is built in a few milliseconds.
* One server certificate serves both etcd's client port *and* its peer port, which is why it
  carries both the ``serverAuth`` and ``clientAuth`` extended key usages: with peer TLS an
  etcd member dials the other members presenting this very certificate as a client cert.
* Client certificates carry the user name as their subject CN. With etcd's
  ``--client-cert-auth`` and auth enabled, etcd uses the CN as the user name when the client
  sends no password token, so ``pki.client("alice")`` *is* the etcd user ``alice``.
* Every file is PEM. Private keys are unencrypted PKCS#8 written with mode 0600 (Go's
  ``tls.X509KeyPair`` reads PKCS#8 EC keys; some tools warn about world-readable keys).
* Files are written atomically (temp file + ``os.replace``) so a process that watches a
  certificate path for rotation never reads a half-written file.
* :meth:`CertificateAuthority.issue_client` can be called at any time, e.g. to rotate a
  client certificate (``stem=`` overwrites a fixed path in place; without it a fresh,
  unique path is used) or to mint a certificate with a chosen expiry for "certificate
  expires within N days" checks, including already-expired ones.
* :meth:`CertificateAuthority.load` reuses an existing CA (a CA shared by the clusters
  of a mesh), so certificates of every cluster chain to one root.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_VALIDITY",
    "EXPIRY_WARNING",
    "LEAF_VALIDITY",
    "CertificateAuthority",
    "ClientCert",
    "TlsMaterial",
    "certificate_problems",
    "load_certificate",
    "read_not_after",
    "write_atomic",
]

#: Lifetime of generated CAs.
CA_VALIDITY = dt.timedelta(days=3650)
#: Default lifetime of generated leaf (server/client) certificates.
LEAF_VALIDITY = dt.timedelta(days=365)
#: :func:`certificate_problems` warns about a certificate expiring within this.
EXPIRY_WARNING = dt.timedelta(days=30)
# Certificates start one hour in the past so small clock differences between the test
# process and etcd never make a freshly minted certificate "not yet valid".
_BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class ClientCert:
    """A client certificate and key, plus the CA bundle that goes with it.

    ``ca_file`` is the certificate of the CA that *issued* this certificate. For the main PKI
    that is also the CA that signed the server certificate, so ``ca_file`` doubles as the
    trust bundle a client needs. For a certificate from :func:`make_other_ca` it is the
    unrelated CA; use ``dataclasses.replace(cert, ca_file=...)`` to mix and match.
    """

    name: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    not_after: dt.datetime


@dataclass(frozen=True)
class TlsMaterial:
    """Server-side TLS material of an etcd member.

    ``client`` is the client certificate the *harness itself* presents when it talks to a
    server using this material (health checks, ``etcdctl`` helpers) — normally the ``root``
    certificate, so harness calls keep working once ``--client-cert-auth`` and auth are on.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    client: ClientCert | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` atomically (temp file + rename): readers never see half a file."""
    data = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _validity(
    validity: dt.timedelta | None,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
    default: dt.timedelta,
) -> tuple[dt.datetime, dt.datetime]:
    """Resolve the validity window; an explicit ``not_after`` wins over ``validity``."""
    start = not_before if not_before is not None else _now() - _BACKDATE
    if not_after is None:
        not_after = _now() + (validity if validity is not None else default)
    if not_after <= start:
        # Allow "already expired" certificates: move the start before the end.
        start = not_after - dt.timedelta(days=1)
    return start, not_after


def _builder(*, subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             start: dt.datetime, end: dt.datetime, ca: bool) -> x509.CertificateBuilder:
    """What a CA and a leaf certificate have in common; ``ca`` picks the key usages."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # Irrelevant for ECDSA, but some RSA-minded validators look for it.
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def load_certificate(cert_file: Path) -> x509.Certificate:
    """The first certificate of a PEM file (OSError, or ValueError if it holds none)."""
    return x509.load_pem_x509_certificate(Path(cert_file).read_bytes())


def read_not_after(cert_file: Path) -> dt.datetime:
    """The (timezone-aware, UTC) expiry of the first certificate in a PEM file."""
    return load_certificate(cert_file).not_valid_after_utc


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def certificate_problems(cert_file: Path, ca_file: Path, *, now: dt.datetime,
                         cn: str | None = None) -> list[str]:
    """What is wrong with ``cert_file`` as a certificate of ``ca_file``'s CA, one line each.

    Not signed by that CA (by any CA of the bundle: during a CA rollover ``ca_file``
    holds the old and the new one), expired, expiring within :data:`EXPIRY_WARNING`,
    not valid yet at ``now``, and (with ``cn``) another subject CN, which for an etcd
    client certificate is another etcd user. Empty when there is nothing to report.
    """
    try:
        cert = load_certificate(cert_file)
        cas = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
    except (OSError, ValueError) as exc:
        return [f"{cert_file}: unreadable ({exc})"]
    problems = []
    failures = []
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            break
        except Exception as exc:  # InvalidSignature (no message), ValueError, TypeError
            failures.append(f"{type(exc).__name__} {exc}".rstrip())
    else:
        problems.append(f"{cert_file.name} is not signed by {ca_file} "
                        f"({'; '.join(failures)})")
    if cert.not_valid_after_utc < now:
        problems.append(f"{cert_file.name} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    elif cert.not_valid_after_utc < now + EXPIRY_WARNING:
        problems.append(f"{cert_file.name} expires on {cert.not_valid_after_utc:%Y-%m-%d} "
                        "(within 30 days)")
    if cert.not_valid_before_utc > now:
        problems.append(f"{cert_file.name} is not valid before "
                        f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}")
    if cn is not None and _common_name(cert) != cn:
        problems.append(f"{cert_file.name} has CN {_common_name(cert)!r}, etcd needs {cn!r} "
                        "(the CN is the etcd user)")
    return problems


class CertificateAuthority:
    """A self-signed ECDSA P-256 CA that writes its certificate/key under ``dir``.

    Issued certificates land next to it. Thread-safe: the unique-name counter is locked.
    """

    def __init__(
        self,
        dir: Path,
        *,
        name: str = "ca",
        validity: dt.timedelta = CA_VALIDITY,
        organization: str = "clustermesh",
    ) -> None:
        self.dir = Path(dir)
        self.name = name
        self.organization = organization
        self.dir.mkdir(parents=True, exist_ok=True)
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        start, end = _validity(validity, None, None, CA_VALIDITY)
        self.certificate = _builder(
            subject=subject, issuer=subject, public_key=self.private_key.public_key(),
            start=start, end=end, ca=True,
        ).sign(self.private_key, hashes.SHA256())
        self.ca_file = self.dir / f"{name}.crt"
        self.key_file = self.dir / f"{name}.key"
        write_atomic(self.ca_file, _cert_pem(self.certificate))
        write_atomic(self.key_file, _key_pem(self.private_key), 0o600)
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path, *, dir: Path) -> CertificateAuthority:
        """An existing CA (PEM certificate and unencrypted key); issues into ``dir``."""
        ca = cls.__new__(cls)
        ca.dir = Path(dir)
        ca.dir.mkdir(parents=True, exist_ok=True)
        ca.certificate = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) and not hasattr(key, "sign"):
            raise ValueError(f"{key_file}: not a private key")
        ca.private_key = key  # type: ignore[assignment]
        names = ca.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ca.name = str(names[0].value) if names else "ca"
        orgs = ca.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        ca.organization = str(orgs[0].value) if orgs else "clustermesh"
        ca.ca_file = Path(cert_file)
        ca.key_file = Path(key_file)
        ca._lock = threading.Lock()
        ca._counter = itertools.count(1)
        return ca

    def _unique_stem(self, base: str) -> str:
        with self._lock:
            while True:
                stem = f"{base}-{next(self._counter)}"
                if not (self.dir / f"{stem}.crt").exists():
                    return stem

    def _issue(
        self,
        *,
        common_name: str,
        stem: str,
        eku: Sequence[x509.ObjectIdentifier],
        dns_names: Iterable[str] = (),
        ips: Iterable[str] = (),
        validity: dt.timedelta | None,
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
    ) -> tuple[Path, Path, dt.datetime]:
        key = ec.generate_private_key(ec.SECP256R1())
        start, end = _validity(validity, not_before, not_after, LEAF_VALIDITY)
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ])
        builder = (
            _builder(subject=subject, issuer=self.certificate.subject,
                     public_key=key.public_key(), start=start, end=end, ca=False)
            .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()),
                critical=False,
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if sans:
            # Go ignores the CN for hostname checks; server certificates need SANs.
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.private_key, hashes.SHA256())
        cert_file = self.dir / f"{stem}.crt"
        key_file = self.dir / f"{stem}.key"
        # Key first: a watcher that reacts to the certificate changing then finds a
        # matching key already in place.
        write_atomic(key_file, _key_pem(key), 0o600)
        write_atomic(cert_file, _cert_pem(cert))
        return cert_file, key_file, end

    def issue_server(
        self,
        name: str = "server",
        *,
        dns_names: Iterable[str] = ("localhost",),
        ips: Iterable[str] = ("127.0.0.1", "::1"),
        validity: dt.timedelta | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        stem: str | None = None,
        client: ClientCert | None = None,
    ) -> TlsMaterial:
        """Issue a server(+peer) certificate with the given SANs.

        ``stem`` fixes the file names (``<stem>.crt``/``<stem>.key``, overwritten in place);
        by default a unique stem derived from ``name`` is used. ``client`` becomes
        :attr:`TlsMaterial.client`.
        """
        cert_file, key_file, _ = self._issue(
            common_name=name,
            stem=stem or self._unique_stem(name),
            eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            dns_names=dns_names,
            ips=ips,
            validity=validity,
            not_before=not_before,
            not_after=not_after,
        )
        return TlsMaterial(
            ca_file=self.ca_file, cert_file=cert_file, key_file=key_file, client=client
        )

    def issue_client(
        self,
        name: str,
        *,
        validity: dt.timedelta | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        stem: str | None = None,
    ) -> ClientCert:
        """Issue a client certificate whose CN is ``name`` (the etcd user name).

        Expiry: ``not_after`` (absolute, may lie in the past for an expired certificate)
        wins over ``validity`` (relative to now); the default is :data:`LEAF_VALIDITY`.
        ``stem`` fixes the file names and overwrites them atomically (rotation in place);
        by default each call writes new, unique files.
        """
        cert_file, key_file, end = self._issue(
            common_name=name,
            stem=stem or self._unique_stem(f"client-{name}"),
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
            validity=validity,
            not_before=not_before,
            not_after=not_after,
        )
        return ClientCert(
            name=name, ca_file=self.ca_file, cert_file=cert_file, key_file=key_file, not_after=end
        )
