"""Reading an etcd configuration file: YAML, read the way etcd reads it.

:func:`load_etcd_config` reads a file and :func:`parse_etcd_config` parses YAML
text into an :class:`~clustermesh.etcd.config.model.EtcdConfig`: keys match
case-insensitively, null and empty strings mean "not set", integers are taken as
written where a string is expected, relative file paths are resolved against
the file's directory, and unknown or duplicate keys become warnings.
:func:`is_cluster_config_file` is Cilium's test for a cluster configuration in
the ``--clustermesh-config`` directory.
"""

from __future__ import annotations

import difflib
import os
import stat
from dataclasses import replace
from pathlib import Path

import yaml

from .endpoint import Endpoint, parse_endpoint, redact_url
from .model import (
    CA_FILE,
    CERT_FILE,
    ENDPOINTS,
    INSECURE_SKIP_TLS_VERIFY,
    INSECURE_TRANSPORT,
    KEY_FILE,
    PASSWORD,
    TRUSTED_CA_FILE,
    USERNAME,
    EtcdConfig,
    EtcdConfigError,
    EtcdConfigFileMissing,
    format_message,
)

_USED_KEYS = frozenset({
    ENDPOINTS, TRUSTED_CA_FILE, CA_FILE, CERT_FILE, KEY_FILE,
    INSECURE_TRANSPORT, INSECURE_SKIP_TLS_VERIFY, USERNAME, PASSWORD,
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

_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"


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
        self.warnings.append(format_message(reason, path=self.source, field=name, line=None))

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
                             ENDPOINTS)
        if not isinstance(root, yaml.MappingNode):
            raise self.error(
                f"the file must be a YAML mapping of etcd client options, not {_kind(root)}",
                node=root,
            )
        self._collect(root)

        insecure_transport = self._bool(INSECURE_TRANSPORT)
        endpoints = self._endpoints(insecure_transport)
        trusted_ca = self._path(TRUSTED_CA_FILE)
        ca_alias = self._path(CA_FILE)
        if ca_alias is not None:
            if trusted_ca is not None and trusted_ca != ca_alias:
                raise self.error(
                    f"names {str(ca_alias)!r} but 'trusted-ca-file' names {str(trusted_ca)!r}: "
                    "'ca-file' is a deprecated alias of 'trusted-ca-file', keep only the latter",
                    CA_FILE, self.nodes[CA_FILE],
                )
            self.warn("is deprecated: rename it to 'trusted-ca-file'", CA_FILE)
            trusted_ca = ca_alias
        username = self._str(USERNAME)
        password = self._str(PASSWORD)
        config = EtcdConfig(
            endpoints=endpoints,
            trusted_ca_file=trusted_ca,
            cert_file=self._path(CERT_FILE),
            key_file=self._path(KEY_FILE),
            insecure_transport=insecure_transport,
            insecure_skip_tls_verify=self._bool(INSECURE_SKIP_TLS_VERIFY),
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
        kind = _kind(node, secret=name == PASSWORD)
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
        node = self._node(ENDPOINTS)
        need = "must be a non-empty list of URLs"
        if node is None:
            raise self.error(f"is required: {need}", ENDPOINTS, self.nodes.get(ENDPOINTS))
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG:
            items: list[yaml.Node] = [node]  # a single URL is accepted too
        elif isinstance(node, yaml.SequenceNode):
            items = list(node.value)
        else:
            raise self.error(f"{need}, got {_kind(node)}", ENDPOINTS, node)
        if not items:
            raise self.error(f"{need}, got an empty list", ENDPOINTS, node)
        endpoints = []
        for index, item in enumerate(items, 1):
            if not (isinstance(item, yaml.ScalarNode) and item.tag == _STR_TAG):
                raise self.error(f"{need}: item {index} is {_kind(item)}", ENDPOINTS, item)
            try:
                endpoint, note = parse_endpoint(item.value, insecure_transport=insecure_transport)
            except ValueError as exc:
                raise self.error(
                    f"invalid URL {redact_url(item.value)!r}: {exc}", ENDPOINTS, item
                ) from None
            if note is not None:
                self.warn(note, ENDPOINTS)
            endpoints.append(endpoint)
        return tuple(endpoints)

    def _cross_field_warnings(self, config: EtcdConfig) -> None:
        if not config.use_tls:
            unused = [
                name for name, present in (
                    (TRUSTED_CA_FILE, config.trusted_ca_file is not None),
                    (CERT_FILE, config.cert_file is not None),
                    (KEY_FILE, config.key_file is not None),
                    (INSECURE_SKIP_TLS_VERIFY, config.insecure_skip_tls_verify),
                ) if present
            ]
            if unused:
                self.warn(
                    f"{', '.join(unused)} set but the endpoints use plain text (http:// or "
                    "insecure-transport): these TLS settings are not used"
                )
            if config.password is not None:
                self.warn("is sent in clear text: the endpoints do not use TLS", PASSWORD)
        if config.username is not None and config.password is None:
            self.warn("is set without 'password': etcd does not authenticate then", USERNAME)


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
