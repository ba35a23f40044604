"""The TLS material a configuration names: the CA, certificate and key files.

:func:`load_tls_files` reads and checks them (present, PEM, parseable, and with
``check_pair`` the key belongs to the certificate) into a :class:`TlsBytes`, whose
:attr:`~TlsBytes.fingerprint` tells a client when they changed on disk.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from .model import (
    CERT_FILE,
    KEY_FILE,
    TRUSTED_CA_FILE,
    EtcdConfig,
    EtcdConfigError,
    EtcdConfigFileMissing,
)

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY_RE = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsBytes:
    """Contents of the TLS files of a config; None for the ones not configured."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) over the three files, to notice when any of them changes."""
        digest = hashlib.sha256()
        for part in (self.ca, self.cert, self.key):
            if part is None:
                digest.update(b"\x00")
            else:
                digest.update(b"\x01" + len(part).to_bytes(8, "big") + part)
        return digest.hexdigest()


def load_tls_files(config: EtcdConfig, *, check_pair: bool = False) -> TlsBytes:
    """Read the CA, certificate and key files named by ``config``.

    Every configured file is read (as etcd does, whatever the scheme), except
    with ``insecure-transport``, where etcd reads none.  Raises
    :class:`EtcdConfigFileMissing` for a file that does not exist and
    :class:`EtcdConfigError` for one that cannot be read or does not contain
    the expected PEM block (or holds a corrupt one); both name the config file,
    the field and the path.  With ``check_pair``, also when the private key does
    not belong to the certificate (what a client about to connect wants to know).
    """
    if config.insecure_transport:
        return TlsBytes()
    tls = TlsBytes(
        ca=_read_pem(config, TRUSTED_CA_FILE, config.trusted_ca_file, private_key=False),
        cert=_read_pem(config, CERT_FILE, config.cert_file, private_key=False),
        key=_read_pem(config, KEY_FILE, config.key_file, private_key=True),
    )
    if check_pair and tls.cert is not None and tls.key is not None:
        # gRPC would only say "Failed to create security handshaker" at connect time.
        cert = x509.load_pem_x509_certificates(tls.cert)[0]
        key = serialization.load_pem_private_key(tls.key, password=None)
        if cert.public_key() != key.public_key():
            raise EtcdConfigError(
                f"the private key in {str(config.key_file)!r} does not belong to the "
                f"certificate in {str(config.cert_file)!r}", path=config.source, field=KEY_FILE)
    return tls


def _read_pem(config: EtcdConfig, name: str, path: Path | None, *,
              private_key: bool) -> bytes | None:
    if path is None:
        return None
    shown = repr(str(path))
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise EtcdConfigFileMissing(
            f"file {shown} does not exist", missing=Path(path), path=config.source, field=name
        ) from None
    except OSError as exc:
        raise EtcdConfigError(
            f"cannot read {shown}: {exc.strerror or exc}", path=config.source, field=name
        ) from None
    if not data.strip():
        raise EtcdConfigError(f"file {shown} is empty", path=config.source, field=name)
    if private_key:
        ok, wanted = _PEM_KEY_RE.search(data) is not None, "a PEM private key"
    else:
        ok, wanted = _PEM_CERT in data, "a PEM certificate"
    if not ok:
        if b"-----BEGIN" not in data:
            detail = "no '-----BEGIN' line found"
        elif private_key:
            detail = "it has PEM blocks but no PRIVATE KEY block (is it a certificate?)"
        elif _PEM_KEY_RE.search(data):
            detail = "it holds a private key, not a CERTIFICATE block"
        else:
            detail = "it has PEM blocks but no CERTIFICATE block"
        raise EtcdConfigError(
            f"file {shown} does not contain {wanted}: {detail}", path=config.source, field=name
        )
    # Parse it: a corrupt or truncated block would otherwise only fail inside gRPC, as a
    # "TLS handshake failed" that names no file.
    try:
        if private_key:
            serialization.load_pem_private_key(data, password=None)
        else:
            x509.load_pem_x509_certificates(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        reason = ("it is encrypted (use an unencrypted key)" if "encrypted" in str(exc)
                  else "the PEM data is corrupt or truncated")
        raise EtcdConfigError(f"file {shown} does not contain {wanted} that can be read: "
                              f"{reason}", path=config.source, field=name) from None
    return data
