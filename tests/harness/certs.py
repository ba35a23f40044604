"""Throw-away TLS PKIs for tests that run real etcd servers.

The certificate machinery is the product's own (:mod:`clustermesh.pki`); this module
only assembles test PKIs from it: :func:`make_pki` (CA, one server certificate, named
client certificates, session-scoped in ``conftest.py``) and :func:`make_other_ca`, an
unrelated CA for "wrong CA" tests: a client certificate from it is refused by a server
trusting the main CA, and a client trusting only it refuses the main server's
certificate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clustermesh.pki import (
    CA_VALIDITY,
    LEAF_VALIDITY,
    CertificateAuthority,
    ClientCert,
    TlsMaterial,
    read_not_after,
)

__all__ = [
    "CA_VALIDITY",
    "LEAF_VALIDITY",
    "CertificateAuthority",
    "ClientCert",
    "Pki",
    "TlsMaterial",
    "make_other_ca",
    "make_pki",
    "read_not_after",
]


@dataclass(frozen=True)
class Pki:
    """A CA, one server certificate and named client certificates, all under ``dir``."""

    dir: Path
    ca: CertificateAuthority
    server: TlsMaterial
    clients: dict[str, ClientCert] = field(default_factory=dict)

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_file

    def client(self, name: str) -> ClientCert:
        """The client certificate made for ``name`` by :func:`make_pki`."""
        try:
            return self.clients[name]
        except KeyError:
            raise KeyError(
                f"no client certificate {name!r}; have {sorted(self.clients)} "
                "(use issue_client() for more)"
            ) from None

    def issue_client(
        self,
        name: str,
        *,
        validity: dt.timedelta | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        stem: str | None = None,
    ) -> ClientCert:
        """Issue another client certificate from this PKI's CA (see
        :meth:`CertificateAuthority.issue_client`). It is not added to :attr:`clients`."""
        return self.ca.issue_client(
            name, validity=validity, not_before=not_before, not_after=not_after, stem=stem
        )

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
    ) -> TlsMaterial:
        """Issue another server certificate from this PKI's CA, keeping the harness client
        certificate of :attr:`server` (e.g. for server certificate rotation tests)."""
        return self.ca.issue_server(
            name,
            dns_names=dns_names,
            ips=ips,
            validity=validity,
            not_before=not_before,
            not_after=not_after,
            stem=stem,
            client=self.server.client,
        )


def make_pki(
    dir: Path,
    *,
    server_names: Sequence[str] = ("localhost",),
    server_ips: Sequence[str] = ("127.0.0.1", "::1"),
    clients: Sequence[str] = ("root",),
    admin: str = "root",
) -> Pki:
    """Create a CA, a server certificate and one client certificate per name in ``clients``.

    ``admin`` names the client certificate that :attr:`Pki.server` carries as its harness
    client (``TlsMaterial.client``); it is added to ``clients`` if missing, because without
    it the harness cannot health-check a server running with ``--client-cert-auth``.
    """
    dir = Path(dir)
    ca = CertificateAuthority(dir, name="ca", organization="clustermesh-tests")
    names = list(dict.fromkeys([*clients, admin]))
    issued = {name: ca.issue_client(name, stem=f"client-{name}") for name in names}
    server = ca.issue_server(
        "server", dns_names=server_names, ips=server_ips, stem="server", client=issued[admin]
    )
    return Pki(dir=dir, ca=ca, server=server, clients=issued)


def make_other_ca(dir: Path, *, name: str = "other-ca") -> CertificateAuthority:
    """An unrelated CA (own key, own subject) for "wrong CA" tests."""
    return CertificateAuthority(Path(dir), name=name, organization="clustermesh-tests")
