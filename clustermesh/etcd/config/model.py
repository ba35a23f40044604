"""The validated etcd client configuration and its errors.

:class:`EtcdConfig` is immutable and checks its own invariants (one scheme for
all endpoints, ``cert-file`` with ``key-file``, ``password`` with ``username``, no
``insecure-transport`` with ``https://`` endpoints), so a hand-built config cannot
be inconsistent either.  :class:`EtcdConfigError` (and
:class:`EtcdConfigFileMissing`) name the file, the YAML field and the line.  The
field-name constants are the YAML keys of etcd's ``client/v3/yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .endpoint import REDACTED, Endpoint

# The YAML keys this package interprets.
ENDPOINTS = "endpoints"
TRUSTED_CA_FILE = "trusted-ca-file"
CA_FILE = "ca-file"
CERT_FILE = "cert-file"
KEY_FILE = "key-file"
INSECURE_TRANSPORT = "insecure-transport"
INSECURE_SKIP_TLS_VERIFY = "insecure-skip-tls-verify"
USERNAME = "username"
PASSWORD = "password"


def format_message(reason: str, *, path: Path | None, field: str | None, line: int | None) -> str:
    """``path: field 'name': reason (line n)``, the parts that are known: errors and warnings."""
    parts = [str(path)] if path is not None else []
    if field is not None:
        parts.append(f"field {field!r}")
    parts.append(reason)
    message = ": ".join(parts)
    return f"{message} (line {line})" if line is not None else message


class EtcdConfigError(ValueError):
    """An etcd configuration file (or a file it names) is unusable.

    ``str(exc)`` is complete and meant for humans:
    ``"/x/cluster1: field 'endpoints': must be a non-empty list of URLs"``.
    ``path`` is the YAML file (None when parsing text without a source),
    ``field`` the YAML key at fault (None when the whole file is at fault),
    ``line`` the 1-based YAML line when known, ``reason`` the bare explanation.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: Path | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(format_message(reason, path=path, field=field, line=line))
        self.reason = reason
        self.path = path
        self.field = field
        self.line = line


class EtcdConfigFileMissing(EtcdConfigError):
    """A file does not exist (yet): the YAML file itself, or a TLS file it names.

    ``missing`` is the path that was not found.  Daemons retry on this error
    instead of failing, because Secret volumes are populated asynchronously.
    """

    def __init__(
        self,
        reason: str,
        *,
        missing: Path,
        path: Path | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(reason, path=path, field=field)
        self.missing = missing


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdConfig:
    """A validated etcd client configuration.  See :mod:`clustermesh.etcd.config`."""

    endpoints: tuple[Endpoint, ...]
    trusted_ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_transport: bool = False
    insecure_skip_tls_verify: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    source: Path | None = None
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Invariants, so that a hand-built config cannot be inconsistent either.
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        object.__setattr__(self, "warnings", tuple(self.warnings))

        def fail(name: str | None, reason: str) -> EtcdConfigError:
            return EtcdConfigError(reason, path=self.source, field=name)

        if not self.endpoints or not all(isinstance(e, Endpoint) for e in self.endpoints):
            raise fail(ENDPOINTS, "must be a non-empty list of URLs")
        schemes = sorted({e.scheme for e in self.endpoints})
        if len(schemes) > 1:
            raise fail(
                ENDPOINTS,
                "all endpoints must use the same scheme, found both http:// and https://",
            )
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = (
                (CERT_FILE, KEY_FILE) if self.key_file is None else (KEY_FILE, CERT_FILE)
            )
            raise fail(missing, f"is required when {given!r} is set (they go together)")
        if self.password is not None and self.username is None:
            raise fail(PASSWORD, "is set but 'username' is not: etcd authentication needs both")
        if self.insecure_transport and schemes == ["https"]:
            raise fail(
                INSECURE_TRANSPORT,
                "is true but the endpoints are https:// URLs, which etcd always dials with "
                "TLS (ignoring the configured certificates): use http:// endpoints for "
                "plain text, or remove insecure-transport",
            )

    @property
    def use_tls(self) -> bool:
        """True when connections use TLS: the endpoints are ``https://`` URLs.

        (Scheme-less endpoints were given ``https`` unless ``insecure-transport``
        is set; ``insecure-transport`` with ``https://`` endpoints is rejected.)
        """
        return self.endpoints[0].scheme == "https" and not self.insecure_transport

    def redacted(self) -> dict[str, Any]:
        """A JSON-ready summary for status and diagnostics; the password is never shown."""

        def text(path: Path | None) -> str | None:
            return None if path is None else str(path)

        return {
            "source": text(self.source),
            "endpoints": [str(e) for e in self.endpoints],
            "use-tls": self.use_tls,
            "trusted-ca-file": text(self.trusted_ca_file),
            "cert-file": text(self.cert_file),
            "key-file": text(self.key_file),
            "insecure-transport": self.insecure_transport,
            "insecure-skip-tls-verify": self.insecure_skip_tls_verify,
            "username": self.username,
            "password": None if self.password is None else REDACTED,
            "warnings": list(self.warnings),
        }
