"""etcd client configuration files, in the format of etcd's ``client/v3/yaml``.

Cilium describes every etcd it talks to with one small YAML file: the local etcd
(``--kvstore-opt etcd.config=FILE``) and each remote cluster (one file per
cluster in the ``--clustermesh-config`` directory, the file name being the
cluster name)::

    endpoints:
    - https://cluster1.mesh.cilium.io:2379
    trusted-ca-file: /var/lib/cilium/clustermesh/cluster1-ca.crt
    cert-file: /var/lib/cilium/clustermesh/cluster1.crt
    key-file: /var/lib/cilium/clustermesh/cluster1.key

This module turns such a file into an immutable :class:`EtcdConfig`, and reads
the TLS files it names into a :class:`TlsBytes`.  Nothing here opens a
connection.

Design
------

* **Same reading as etcd.**  etcd converts the YAML to JSON and decodes it with
  Go's ``encoding/json``, so keys match case-insensitively, a null value
  (``key:`` with nothing after it) means "not set", an empty string means "not
  set" too, and a plain integer given where a string is expected
  (``password: 123456``) is taken as written.  Booleans must be YAML booleans.
* **Which transport** is decided exactly as etcd's client decides it: an
  ``https://`` endpoint uses TLS, an ``http://`` endpoint plain text.  An
  endpoint written without a scheme (``host:2379``, which etcd accepts) uses TLS
  unless ``insecure-transport`` is true.  ``insecure-transport`` means what it
  means in etcd's YAML loader: "do not set up TLS from this file".  Because etcd
  would still speak TLS to an ``https://`` endpoint (without the configured
  certificates), ``insecure-transport: true`` together with ``https://``
  endpoints is rejected as contradictory.  TLS files configured for ``http://``
  endpoints are not used (as in etcd) and produce a warning.
* **Ports are required.**  etcd has no default port (gRPC would silently dial
  443), so ``https://host`` is an error that suggests ``https://host:2379``.
  Every configuration accepted here therefore means the same thing to Cilium.
* **Relative file paths** (``trusted-ca-file``, ``ca-file``, ``cert-file``,
  ``key-file``) are resolved against the directory that contains the YAML file,
  so a Secret volume holding the config and its certificates works wherever it
  is mounted.  Absolute paths are kept unchanged; ``~`` is not expanded.  For
  :func:`parse_etcd_config` without ``source``, relative paths stay relative.
* **Stricter than etcd where etcd silently ignores mistakes**: ``cert-file``
  without ``key-file`` (or the reverse), ``password`` without ``username``,
  ``ca-file`` and ``trusted-ca-file`` naming different files, endpoints with
  different schemes, URLs with credentials in them.  Unknown keys, duplicate
  keys, the deprecated ``ca-file`` alias, a ``username`` without ``password``
  (etcd then does not authenticate) and a password sent over plain text are
  reported in :attr:`EtcdConfig.warnings`; this module does not log, the caller
  logs the warnings (once per load).
* **Errors name the place.**  :class:`EtcdConfigError` is a ``ValueError``
  whose message names the file, the field and, where known, the YAML line:
  ``/x/cluster1: field 'endpoints': must be a non-empty list of URLs (line 2)``.
  A missing file (the YAML file itself or a TLS file it names) raises the
  subclass :class:`EtcdConfigFileMissing`, which the daemons treat as "not
  there yet, retry" (certificates in a Secret can appear after the config).
* **Secrets stay secret.**  The password is excluded from ``repr`` and from
  :meth:`EtcdConfig.redacted`; the private key is excluded from ``repr`` of
  :class:`TlsBytes`; error messages never quote file contents.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

__all__ = [
    "Endpoint",
    "EtcdConfig",
    "EtcdConfigError",
    "EtcdConfigFileMissing",
    "TlsBytes",
    "is_cluster_config_file",
    "load_etcd_config",
    "load_tls_files",
    "parse_etcd_config",
    "parse_kvstore_opts",
]

# Keys this module interprets.
_ENDPOINTS = "endpoints"
_TRUSTED_CA_FILE = "trusted-ca-file"
_CA_FILE = "ca-file"
_CERT_FILE = "cert-file"
_KEY_FILE = "key-file"
_INSECURE_TRANSPORT = "insecure-transport"
_INSECURE_SKIP_TLS_VERIFY = "insecure-skip-tls-verify"
_USERNAME = "username"
_PASSWORD = "password"
_USED_KEYS = frozenset({
    _ENDPOINTS, _TRUSTED_CA_FILE, _CA_FILE, _CERT_FILE, _KEY_FILE,
    _INSECURE_TRANSPORT, _INSECURE_SKIP_TLS_VERIFY, _USERNAME, _PASSWORD,
})
# Other options etcd's clientv3.Config understands: accepted, not used here.
# (MaxCallSendMsgSize/MaxCallRecvMsgSize have no JSON tag in etcd, so etcd
# matches them by field name; the dashed spellings are accepted as well.)
_IGNORED_KEYS = frozenset({
    "dial-timeout", "dial-keep-alive-time", "dial-keep-alive-timeout",
    "auto-sync-interval", "max-call-send-msg-size", "max-call-recv-msg-size",
    "maxcallsendmsgsize", "maxcallrecvmsgsize", "reject-old-cluster",
    "permit-without-stream", "max-unary-retries", "backoff-wait-between",
    "backoff-jitter-fraction",
})
_KNOWN_KEYS = _USED_KEYS | _IGNORED_KEYS

_SCHEMES = ("http", "https")
_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_USERINFO_RE = re.compile(r"(://)[^/?#]*@")
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY_RE = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
REDACTED = "<redacted>"


# ----------------------------------------------------------------------------- errors


def _format(reason: str, *, path: Path | None, field: str | None, line: int | None) -> str:
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
        super().__init__(_format(reason, path=path, field=field, line=line))
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


# ----------------------------------------------------------------------------- endpoints


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


def _redact_url(url: str) -> str:
    return _USERINFO_RE.sub(rf"\1{REDACTED}@", url)


def _parse_endpoint(raw: str, *, insecure_transport: bool) -> tuple[Endpoint, str | None]:
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
            note = f"endpoint {_redact_url(raw)!r}: {tail!r} after the port is ignored"
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


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdConfig:
    """A validated etcd client configuration.  See the module docstring."""

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
            raise fail(_ENDPOINTS, "must be a non-empty list of URLs")
        schemes = sorted({e.scheme for e in self.endpoints})
        if len(schemes) > 1:
            raise fail(
                _ENDPOINTS,
                "all endpoints must use the same scheme, found both http:// and https://",
            )
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = (
                (_CERT_FILE, _KEY_FILE) if self.key_file is None else (_KEY_FILE, _CERT_FILE)
            )
            raise fail(missing, f"is required when {given!r} is set (they go together)")
        if self.password is not None and self.username is None:
            raise fail(_PASSWORD, "is set but 'username' is not: etcd authentication needs both")
        if self.insecure_transport and schemes == ["https"]:
            raise fail(
                _INSECURE_TRANSPORT,
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


def load_etcd_config(path: Path | str) -> EtcdConfig:
    """Read and parse an etcd configuration file (see :func:`parse_etcd_config`).

    Raises :class:`EtcdConfigFileMissing` when the file does not exist (a
    dangling symlink counts as missing) and :class:`EtcdConfigError` for every
    other problem.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EtcdConfigFileMissing("the file does not exist", missing=path, path=path) from None
    except IsADirectoryError:
        raise EtcdConfigError("is a directory, not an etcd configuration file", path=path) from None
    except OSError as exc:
        raise EtcdConfigError(f"cannot read the file: {exc.strerror or exc}", path=path) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EtcdConfigError(
            f"the file is not valid UTF-8 (byte offset {exc.start})", path=path
        ) from None
    return parse_etcd_config(text, source=path)


def parse_etcd_config(text: str, *, source: Path | None = None) -> EtcdConfig:
    """Parse the YAML ``text`` of an etcd configuration.

    ``source`` is the file the text came from: it is named in errors and
    warnings, and relative file paths are resolved against its directory.
    """
    source = Path(source) if source is not None else None
    return _Parser(text, source).parse()


class _Parser:
    def __init__(self, text: str, source: Path | None) -> None:
        self.text = text
        self.source = source
        self.warnings: list[str] = []
        self.nodes: dict[str, yaml.Node] = {}

    def error(self, reason: str, name: str | None = None,
              node: yaml.Node | None = None) -> EtcdConfigError:
        line = node.start_mark.line + 1 if node is not None and node.start_mark else None
        return EtcdConfigError(reason, path=self.source, field=name, line=line)

    def warn(self, reason: str, name: str | None = None) -> None:
        self.warnings.append(_format(reason, path=self.source, field=name, line=None))

    def parse(self) -> EtcdConfig:
        try:
            loader = yaml.SafeLoader(self.text)
            try:
                root = loader.get_single_node()
                if isinstance(root, yaml.MappingNode):
                    loader.flatten_mapping(root)  # resolve "<<" merge keys
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            raise self._yaml_error(exc) from None
        except RecursionError:
            raise self.error("invalid YAML: nested too deeply") from None
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL_TAG):
            raise self.error("is required: must be a non-empty list of URLs (the file is empty)",
                             _ENDPOINTS)
        if not isinstance(root, yaml.MappingNode):
            raise self.error(
                f"the file must be a YAML mapping of etcd client options, not {_kind(root)}",
                node=root,
            )
        self._collect(root)

        insecure_transport = self._bool(_INSECURE_TRANSPORT)
        endpoints = self._endpoints(insecure_transport)
        trusted_ca = self._path(_TRUSTED_CA_FILE)
        ca_alias = self._path(_CA_FILE)
        if ca_alias is not None:
            if trusted_ca is not None and trusted_ca != ca_alias:
                raise self.error(
                    f"names {str(ca_alias)!r} but 'trusted-ca-file' names {str(trusted_ca)!r}: "
                    "'ca-file' is a deprecated alias of 'trusted-ca-file', keep only the latter",
                    _CA_FILE, self.nodes[_CA_FILE],
                )
            self.warn("is deprecated: rename it to 'trusted-ca-file'", _CA_FILE)
            trusted_ca = ca_alias
        username = self._str(_USERNAME)
        password = self._str(_PASSWORD)
        config = EtcdConfig(
            endpoints=endpoints,
            trusted_ca_file=trusted_ca,
            cert_file=self._path(_CERT_FILE),
            key_file=self._path(_KEY_FILE),
            insecure_transport=insecure_transport,
            insecure_skip_tls_verify=self._bool(_INSECURE_SKIP_TLS_VERIFY),
            username=username,
            password=password,
            source=self.source,
        )
        self._cross_field_warnings(config)
        return replace(config, warnings=tuple(self.warnings))

    def _yaml_error(self, exc: yaml.YAMLError) -> EtcdConfigError:
        if isinstance(exc, yaml.reader.ReaderError):
            char = exc.character
            shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
            return EtcdConfigError(
                f"invalid YAML: {exc.reason} (character {shown} at offset {exc.position})",
                path=self.source,
            )
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        if context:
            problem = f"{context}, {problem}"
        if mark is not None:
            return EtcdConfigError(
                f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}",
                path=self.source,
            )
        return EtcdConfigError(f"invalid YAML: {problem}", path=self.source)

    def _collect(self, root: yaml.MappingNode) -> None:
        for key_node, value_node in root.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(f"keys must be strings, found {_kind(key_node)}", node=key_node)
            written = key_node.value
            name = written.lower()  # etcd (Go's encoding/json) ignores case
            line = key_node.start_mark.line + 1
            if name not in _KNOWN_KEYS:
                close = difflib.get_close_matches(name, sorted(_KNOWN_KEYS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.warn(f"unknown key {written!r} at line {line} is ignored{hint}")
                continue
            if name in self.nodes:
                self.warn(f"is given more than once (again at line {line}): the last one is used",
                          name)
            self.nodes[name] = value_node

    def _node(self, name: str) -> yaml.Node | None:
        node = self.nodes.get(name)
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            return None
        return node

    def _str(self, name: str) -> str | None:
        node = self._node(name)
        if node is None:
            return None
        if isinstance(node, yaml.ScalarNode) and (
            node.tag == _STR_TAG or (node.tag == _INT_TAG and node.style is None)
        ):
            # Integers are taken as written, as etcd does for string fields.
            return node.value or None
        kind = _kind(node, secret=name == _PASSWORD)
        raise self.error(f"must be a string, got {kind} (quote the value)", name, node)

    def _bool(self, name: str) -> bool:
        node = self._node(name)
        if node is None:
            return False
        if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL_TAG:
            return yaml.constructor.SafeConstructor.bool_values[node.value.lower()]
        raise self.error(f"must be true or false, got {_kind(node)}", name, node)

    def _path(self, name: str) -> Path | None:
        value = self._str(name)
        if value is None:
            return None
        path = Path(value)
        if not path.is_absolute() and self.source is not None:
            path = self.source.parent / path
        return path

    def _endpoints(self, insecure_transport: bool) -> tuple[Endpoint, ...]:
        node = self._node(_ENDPOINTS)
        need = "must be a non-empty list of URLs"
        if node is None:
            raise self.error(f"is required: {need}", _ENDPOINTS, self.nodes.get(_ENDPOINTS))
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG:
            items: list[yaml.Node] = [node]  # a single URL is accepted too
        elif isinstance(node, yaml.SequenceNode):
            items = list(node.value)
        else:
            raise self.error(f"{need}, got {_kind(node)}", _ENDPOINTS, node)
        if not items:
            raise self.error(f"{need}, got an empty list", _ENDPOINTS, node)
        endpoints = []
        for index, item in enumerate(items, 1):
            if not (isinstance(item, yaml.ScalarNode) and item.tag == _STR_TAG):
                raise self.error(f"{need}: item {index} is {_kind(item)}", _ENDPOINTS, item)
            try:
                endpoint, note = _parse_endpoint(item.value, insecure_transport=insecure_transport)
            except ValueError as exc:
                raise self.error(
                    f"invalid URL {_redact_url(item.value)!r}: {exc}", _ENDPOINTS, item
                ) from None
            if note is not None:
                self.warn(note, _ENDPOINTS)
            endpoints.append(endpoint)
        return tuple(endpoints)

    def _cross_field_warnings(self, config: EtcdConfig) -> None:
        if not config.use_tls:
            unused = [
                name for name, present in (
                    (_TRUSTED_CA_FILE, config.trusted_ca_file is not None),
                    (_CERT_FILE, config.cert_file is not None),
                    (_KEY_FILE, config.key_file is not None),
                    (_INSECURE_SKIP_TLS_VERIFY, config.insecure_skip_tls_verify),
                ) if present
            ]
            if unused:
                self.warn(
                    f"{', '.join(unused)} set but the endpoints use plain text (http:// or "
                    "insecure-transport): these TLS settings are not used"
                )
            if config.password is not None:
                self.warn("is sent in clear text: the endpoints do not use TLS", _PASSWORD)
        if config.username is not None and config.password is None:
            self.warn("is set without 'password': etcd does not authenticate then", _USERNAME)


def _kind(node: yaml.Node, *, secret: bool = False) -> str:
    """How a YAML value is described in errors; ``secret`` values are not quoted."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = node.tag.rsplit(":", 1)[-1]
    names = {"str": "a string", "int": "a number", "float": "a number", "bool": "a boolean",
             "null": "nothing", "timestamp": "a date"}
    if kind == "null" or secret:
        return names.get(kind, kind)
    return f"{names.get(kind, kind)} ({node.value!r})"


# ----------------------------------------------------------------------------- TLS files


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
        ca=_read_pem(config, _TRUSTED_CA_FILE, config.trusted_ca_file, private_key=False),
        cert=_read_pem(config, _CERT_FILE, config.cert_file, private_key=False),
        key=_read_pem(config, _KEY_FILE, config.key_file, private_key=True),
    )
    if check_pair and tls.cert is not None and tls.key is not None:
        # gRPC would only say "Failed to create security handshaker" at connect time.
        cert = x509.load_pem_x509_certificates(tls.cert)[0]
        key = serialization.load_pem_private_key(tls.key, password=None)
        if cert.public_key() != key.public_key():
            raise EtcdConfigError(
                f"the private key in {str(config.key_file)!r} does not belong to the "
                f"certificate in {str(config.cert_file)!r}", path=config.source, field=_KEY_FILE)
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


# ----------------------------------------------------------------------------- discovery


def is_cluster_config_file(path: Path) -> bool:
    """Cilium's test for a cluster configuration in the ``--clustermesh-config`` directory.

    True for a readable regular file (symlinks followed, as Secret volumes
    consist of symlinks into ``..data``) whose content contains ``endpoints:``.
    Never raises, and never blocks on a FIFO.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return False
    finally:
        os.close(fd)
    return b"endpoints:" in b"".join(chunks)


def parse_kvstore_opts(opts: Iterable[str]) -> dict[str, str]:
    """Parse repeated ``--kvstore-opt`` values into one mapping (later keys win).

    Each value is ``key=value`` or a comma-separated ``k1=v1,k2=v2`` list, as
    the pflag string-to-string flag reads it: a value with a single ``=`` is one
    pair even if it contains commas (``etcd.address=a,b``); with several ``=``
    it is split like a CSV record (quote a pair to keep a comma in it).
    Surrounding whitespace of keys is dropped.  ValueError names the bad item.
    """
    if isinstance(opts, str):
        opts = [opts]
    result: dict[str, str] = {}
    for item in opts:
        count = item.count("=")
        if count == 0:
            raise ValueError(f"--kvstore-opt {item!r}: must be formatted as key=value")
        if count == 1:
            pairs = [item.strip('"')]
        else:
            try:
                pairs = next(csv.reader([item], strict=True))
            except (csv.Error, StopIteration) as exc:
                raise ValueError(f"--kvstore-opt {item!r}: {exc}") from None
        for pair in pairs:
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(
                    f"--kvstore-opt {item!r}: {pair!r} must be formatted as key=value"
                )
            result[key] = value
    return result
