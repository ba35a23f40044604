"""One etcd endpoint URL: what etcd's client accepts, and the stricter rules we add.

:func:`parse_endpoint` reads one entry of the YAML ``endpoints`` list into an
:class:`Endpoint`: the scheme decides the transport (a scheme-less ``host:port``
gets ``https`` unless ``insecure-transport``), the port is required (etcd has no
default port), IPv6 addresses go in brackets with zones written ``%25zone``, and
credentials in the URL are refused.  :func:`redact_url` hides such credentials
when a URL is quoted in an error.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_SCHEMES = ("http", "https")
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_USERINFO_RE = re.compile(r"(://)[^/?#]*@")
REDACTED = "<redacted>"


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One etcd endpoint: ``https://host:2379``.  ``host`` has no IPv6 brackets."""

    scheme: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.scheme not in _SCHEMES:
            raise ValueError(f"endpoint scheme {self.scheme!r} is not one of http, https")
        problem = _host_problem(self.host)
        if problem is not None:
            raise ValueError(f"endpoint host {self.host!r}: {problem}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
            0 < self.port < 65536
        ):
            raise ValueError(f"endpoint port {self.port!r} is not between 1 and 65535")

    @property
    def grpc_target(self) -> str:
        """``host:port`` for gRPC; IPv6 addresses in brackets (``[::1]:2379``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host.replace('%', '%25')}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _host_problem(host: str) -> str | None:
    """Why ``host`` (unbracketed) is not a DNS name or IP address, or None if it is."""
    if not host:
        return "the host is empty"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not a valid IPv6 address"
        return None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not a valid IPv4 address"
        return None
    name = host.removesuffix(".")
    if len(name) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in name.split(".")):
        return f"{host!r} is not a valid DNS name"
    return None


def redact_url(url: str) -> str:
    return _USERINFO_RE.sub(rf"\1{REDACTED}@", url)


def parse_endpoint(raw: str, *, insecure_transport: bool) -> tuple[Endpoint, str | None]:
    """Parse one endpoint URL; returns it and an optional warning.  ValueError says why not."""
    if not raw:
        raise ValueError("the URL is empty")
    if any(c.isspace() for c in raw):
        raise ValueError("the URL contains whitespace")
    note = None
    if "://" in raw:
        scheme, rest = raw.split("://", 1)
        scheme = scheme.lower()
        if scheme not in _SCHEMES:
            extra = " (unix sockets are not supported)" if scheme in ("unix", "unixs") else ""
            raise ValueError(f"the scheme must be http or https, not {scheme!r}{extra}")
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        authority, tail = rest[:cut], rest[cut:]
        if tail not in ("", "/"):
            note = f"endpoint {redact_url(raw)!r}: {tail!r} after the port is ignored"
    else:
        # etcd accepts a bare "host:port"; it then uses TLS unless insecure-transport.
        if any(c in raw for c in "/?#"):
            raise ValueError("expected a URL such as https://host:2379")
        scheme = "http" if insecure_transport else "https"
        authority = raw
    if "@" in authority:
        raise ValueError(
            "credentials in the URL are not supported: use the 'username' and 'password' fields"
        )
    port_text: str | None
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError("the IPv6 address has no closing ']'")
        inner, after = authority[1:end], authority[end + 1:]
        address, has_zone, zone = inner.partition("%25")
        if "%" in address or (has_zone and not zone):
            raise ValueError("an IPv6 zone must be written as %25zone, e.g. [fe80::1%25eth0]")
        host = f"{address}%{zone}" if has_zone else address
        if ":" not in host:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address")
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected {after!r} after the IPv6 address")
        port_text = after[1:] if after else None
    else:
        if authority.count(":") > 1:
            raise ValueError("an IPv6 address must be written in brackets, e.g. https://[::1]:2379")
        host, colon, port = authority.partition(":")
        port_text = port if colon else None
    problem = _host_problem(host)
    if problem is not None:
        raise ValueError(problem)
    if not port_text:
        shown = f"[{host}]" if ":" in host else host
        raise ValueError(
            "the port is missing (etcd has no default port): "
            f"write it explicitly, e.g. {scheme}://{shown}:2379"
        )
    if not _PORT_RE.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise ValueError(f"the port {port_text!r} is not a number between 1 and 65535")
    return Endpoint(scheme=scheme, host=host, port=int(port_text)), note
