"""Tests for clustermesh.etcd.config: the etcd client YAML files Cilium uses."""

from __future__ import annotations

import datetime
import os
import re
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from clustermesh.etcd.config import (
    Endpoint,
    EtcdConfig,
    EtcdConfigError,
    EtcdConfigFileMissing,
    TlsBytes,
    is_cluster_config_file,
    load_etcd_config,
    load_tls_files,
    parse_etcd_config,
)
from clustermesh.flags import go_map
from clustermesh.goflags import FlagError, FlagSet

EXAMPLE = """\
endpoints:
- https://cluster1.mesh.cilium.io:2379
trusted-ca-file: /var/lib/cilium/clustermesh/cluster1-ca.crt
cert-file: /var/lib/cilium/clustermesh/cluster1.crt
key-file: /var/lib/cilium/clustermesh/cluster1.key
"""

SRC = Path("/etc/mesh/cluster1")


def parse(text: str) -> EtcdConfig:
    return parse_etcd_config(text, source=SRC)


def parse_error(text: str) -> EtcdConfigError:
    with pytest.raises(EtcdConfigError) as info:
        parse(text)
    assert str(info.value).startswith(f"{SRC}: "), str(info.value)
    return info.value


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def _make_pem() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "remote")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture(scope="module")
def pems() -> tuple[bytes, bytes]:
    return _make_pem()


# ----------------------------------------------------------------------- valid shapes


def test_example_config() -> None:
    config = parse(EXAMPLE)
    assert config.endpoints == (
        Endpoint(scheme="https", host="cluster1.mesh.cilium.io", port=2379),
    )
    assert config.trusted_ca_file == Path("/var/lib/cilium/clustermesh/cluster1-ca.crt")
    assert config.cert_file == Path("/var/lib/cilium/clustermesh/cluster1.crt")
    assert config.key_file == Path("/var/lib/cilium/clustermesh/cluster1.key")
    assert config.use_tls
    assert not config.insecure_transport and not config.insecure_skip_tls_verify
    assert config.username is None and config.password is None
    assert config.source == SRC
    assert config.warnings == ()


def test_several_endpoints_of_every_host_kind() -> None:
    config = parse(
        "endpoints:\n"
        "- https://etcd-0.example.com:2379\n"
        "- https://10.0.0.1:32379\n"
        "- https://[fd00::1]:2379\n"
        "- HTTPS://Etcd.Example.COM.:2379/\n"
    )
    assert [str(e) for e in config.endpoints] == [
        "https://etcd-0.example.com:2379",
        "https://10.0.0.1:32379",
        "https://[fd00::1]:2379",
        "https://Etcd.Example.COM.:2379",
    ]
    assert [e.grpc_target for e in config.endpoints] == [
        "etcd-0.example.com:2379", "10.0.0.1:32379", "[fd00::1]:2379", "Etcd.Example.COM.:2379",
    ]
    assert config.warnings == ()


def test_ipv6_endpoint() -> None:
    (endpoint,) = parse("endpoints: ['https://[::1]:2379']").endpoints
    assert endpoint == Endpoint(scheme="https", host="::1", port=2379)
    assert endpoint.grpc_target == "[::1]:2379"
    assert str(endpoint) == "https://[::1]:2379"


def test_ipv6_endpoint_with_zone() -> None:
    (endpoint,) = parse("endpoints: ['https://[fe80::1%25eth0]:2379']").endpoints
    assert endpoint.host == "fe80::1%eth0"
    assert endpoint.grpc_target == "[fe80::1%eth0]:2379"
    assert str(endpoint) == "https://[fe80::1%25eth0]:2379"


def test_single_string_endpoint() -> None:
    config = parse("endpoints: http://127.0.0.1:2379\n")
    assert config.endpoints == (Endpoint(scheme="http", host="127.0.0.1", port=2379),)
    assert not config.use_tls


def test_flow_style_and_quoted_values() -> None:
    config = parse('{"endpoints": ["https://a:1"], "username": "root", "password": "p: w"}')
    assert config.endpoints[0].port == 1
    assert config.password == "p: w"


def test_scheme_less_endpoint_follows_etcd() -> None:
    # etcd dials a bare host:port with TLS unless insecure-transport is set.
    assert parse("endpoints: [etcd:2379]").endpoints[0].scheme == "https"
    config = parse("endpoints: [etcd:2379]\ninsecure-transport: true")
    assert config.endpoints[0] == Endpoint(scheme="http", host="etcd", port=2379)
    assert not config.use_tls
    assert parse("endpoints: ['[::1]:2379']").endpoints[0].grpc_target == "[::1]:2379"


def test_http_endpoints_are_plain_text() -> None:
    config = parse("endpoints: [http://a:2379, http://b:2379]")
    assert not config.use_tls
    assert config.warnings == ()


def test_relative_paths_are_resolved_against_the_config_directory(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mesh" / "cluster1",
        "endpoints: [https://a:2379]\n"
        "trusted-ca-file: ca.crt\n"
        "cert-file: ./certs/tls.crt\n"
        "key-file: ../secret/tls.key\n",
    )
    config = load_etcd_config(path)
    assert config.trusted_ca_file == tmp_path / "mesh" / "ca.crt"
    assert config.cert_file == tmp_path / "mesh" / "certs" / "tls.crt"
    assert config.key_file == tmp_path / "mesh" / ".." / "secret" / "tls.key"
    assert config.source == path


def test_absolute_paths_are_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path / "cluster1", EXAMPLE)
    config = load_etcd_config(str(path))
    assert config.trusted_ca_file == Path("/var/lib/cilium/clustermesh/cluster1-ca.crt")
    assert config.source == path


def test_relative_paths_without_source_stay_relative() -> None:
    config = parse_etcd_config("endpoints: [https://a:1]\ntrusted-ca-file: ca.crt")
    assert config.trusted_ca_file == Path("ca.crt")
    assert config.source is None


def test_deprecated_ca_file_alias() -> None:
    config = parse("endpoints: [https://a:2379]\nca-file: /pki/ca.crt\n")
    assert config.trusted_ca_file == Path("/pki/ca.crt")
    assert config.warnings == (
        f"{SRC}: field 'ca-file': is deprecated: rename it to 'trusted-ca-file'",
    )


def test_ca_file_alias_agreeing_with_trusted_ca_file() -> None:
    config = parse(
        "endpoints: [https://a:2379]\nca-file: /etc/mesh/ca.crt\ntrusted-ca-file: ca.crt\n"
    )
    assert config.trusted_ca_file == Path("/etc/mesh/ca.crt")
    assert len(config.warnings) == 1 and "deprecated" in config.warnings[0]


def test_username_and_password() -> None:
    config = parse(
        "endpoints: [https://a:2379]\nusername: remote-cluster1\npassword: s3cr3t-Passw0rd\n"
    )
    assert config.username == "remote-cluster1"
    assert config.password == "s3cr3t-Passw0rd"
    assert "s3cr3t-Passw0rd" not in repr(config)
    assert "s3cr3t-Passw0rd" not in str(config)
    assert "remote-cluster1" in repr(config)
    assert config.redacted()["password"] == "<redacted>"
    assert "s3cr3t-Passw0rd" not in str(config.redacted())
    assert config.warnings == ()


def test_numeric_password_is_taken_as_written() -> None:
    assert parse("endpoints: [https://a:1]\nusername: 42\npassword: 0123").password == "0123"
    assert parse("endpoints: [https://a:1]\nusername: u\npassword: 123456").password == "123456"
    assert parse("endpoints: [https://a:1]\nusername: 42\npassword: x").username == "42"


def test_keys_match_case_insensitively_like_etcd() -> None:
    config = parse(
        "Endpoints: [https://a:2379]\nTrusted-CA-File: /ca\nINSECURE-SKIP-TLS-VERIFY: true"
    )
    assert config.trusted_ca_file == Path("/ca")
    assert config.insecure_skip_tls_verify
    assert config.warnings == ()


def test_known_etcd_options_are_accepted_and_ignored() -> None:
    config = parse(
        "endpoints: [https://a:2379]\n"
        "dial-timeout: 5000000000\n"
        "dial-keep-alive-time: 1s\n"
        "dial-keep-alive-timeout: 1s\n"
        "auto-sync-interval: 0\n"
        "max-call-send-msg-size: 10\n"
        "max-call-recv-msg-size: 10\n"
        "MaxCallSendMsgSize: 10\n"
        "reject-old-cluster: true\n"
        "permit-without-stream: false\n"
    )
    assert config.warnings == ()


def test_unknown_keys_are_warnings_not_errors() -> None:
    config = parse("endpoints: [https://a:2379]\ntrusted-ca-fle: /ca\nfoo: {bar: 1}\n")
    assert config.trusted_ca_file is None
    assert config.warnings == (
        f"{SRC}: unknown key 'trusted-ca-fle' at line 2 is ignored "
        "(did you mean 'trusted-ca-file'?)",
        f"{SRC}: unknown key 'foo' at line 3 is ignored",
    )


def test_duplicate_keys_warn_and_last_wins() -> None:
    config = parse("endpoints: [https://a:1]\nendpoints: [https://b:2]\n")
    assert config.endpoints[0].host == "b"
    assert config.warnings == (
        f"{SRC}: field 'endpoints': is given more than once (again at line 2): "
        "the last one is used",
    )


def test_anchors_and_merge_keys() -> None:
    config = parse(
        "base: &base {username: u, password: p}\n"
        "<<: *base\n"
        "endpoints: [https://a:1]\n"
    )
    assert (config.username, config.password) == ("u", "p")


def test_null_and_empty_values_mean_unset() -> None:
    config = parse(
        "endpoints: [https://a:1]\ncert-file:\nkey-file: ~\ntrusted-ca-file: ''\n"
        "insecure-transport:\nusername: ''\n"
    )
    assert config.cert_file is config.key_file is config.trusted_ca_file is None
    assert config.insecure_transport is False
    assert config.username is None


def test_yaml_11_booleans() -> None:
    config = parse("endpoints: [https://a:1]\ninsecure-skip-tls-verify: yes\n")
    assert config.insecure_skip_tls_verify is True


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "c1", b"\xef\xbb\xbfendpoints:\r\n- https://a:2379\r\n")
    assert load_etcd_config(path).endpoints[0].host == "a"


def test_url_path_is_ignored_with_a_warning() -> None:
    config = parse("endpoints: ['https://a:2379/v3?x=1']")
    assert config.endpoints[0] == Endpoint(scheme="https", host="a", port=2379)
    assert config.warnings == (
        f"{SRC}: field 'endpoints': endpoint 'https://a:2379/v3?x=1': "
        "'/v3?x=1' after the port is ignored",
    )


def test_tls_settings_with_http_endpoints_are_unused_and_reported() -> None:
    config = parse(
        "endpoints: [http://a:2379]\ntrusted-ca-file: /ca\ncert-file: /c\nkey-file: /k\n"
        "username: u\npassword: p\n"
    )
    assert not config.use_tls
    assert config.warnings == (
        f"{SRC}: trusted-ca-file, cert-file, key-file set but the endpoints use plain text "
        "(http:// or insecure-transport): these TLS settings are not used",
        f"{SRC}: field 'password': is sent in clear text: the endpoints do not use TLS",
    )


def test_username_without_password_warns() -> None:
    config = parse("endpoints: [https://a:2379]\nusername: u\n")
    assert config.username == "u"
    assert config.warnings == (
        f"{SRC}: field 'username': is set without 'password': etcd does not authenticate then",
    )


def test_redacted_summary() -> None:
    config = parse(EXAMPLE + "username: u\npassword: hunter2\n")
    assert config.redacted() == {
        "source": str(SRC),
        "endpoints": ["https://cluster1.mesh.cilium.io:2379"],
        "use-tls": True,
        "trusted-ca-file": "/var/lib/cilium/clustermesh/cluster1-ca.crt",
        "cert-file": "/var/lib/cilium/clustermesh/cluster1.crt",
        "key-file": "/var/lib/cilium/clustermesh/cluster1.key",
        "insecure-transport": False,
        "insecure-skip-tls-verify": False,
        "username": "u",
        "password": "<redacted>",
        "warnings": [],
    }
    assert parse(EXAMPLE).redacted()["password"] is None


def test_config_is_frozen_and_hashable() -> None:
    config = parse(EXAMPLE)
    with pytest.raises(AttributeError):
        config.username = "x"  # type: ignore[misc]
    assert hash(config) == hash(parse(EXAMPLE))


# ------------------------------------------------------------------------------ errors


def test_error_attributes_and_message_format() -> None:
    err = parse_error("endpoints: []\n")
    assert isinstance(err, ValueError)
    assert err.path == SRC
    assert err.field == "endpoints"
    assert err.line == 1
    assert str(err) == (
        f"{SRC}: field 'endpoints': must be a non-empty list of URLs, got an empty list (line 1)"
    )


def test_error_without_source_omits_the_path() -> None:
    with pytest.raises(EtcdConfigError) as info:
        parse_etcd_config("endpoints: []")
    assert str(info.value).startswith("field 'endpoints': ")
    assert info.value.path is None


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster9"
    with pytest.raises(EtcdConfigFileMissing) as info:
        load_etcd_config(path)
    assert str(info.value) == f"{path}: the file does not exist"
    assert info.value.missing == path and info.value.path == path


def test_dangling_symlink_counts_as_missing(tmp_path: Path) -> None:
    (tmp_path / "cluster1").symlink_to("..data/cluster1")
    with pytest.raises(EtcdConfigFileMissing):
        load_etcd_config(tmp_path / "cluster1")


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(EtcdConfigError, match="is a directory") as info:
        load_etcd_config(tmp_path)
    assert not isinstance(info.value, EtcdConfigFileMissing)
    assert str(info.value).startswith(f"{tmp_path}: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without permission")
def test_unreadable_file_permission(tmp_path: Path) -> None:
    path = write(tmp_path / "cluster1", EXAMPLE)
    path.chmod(0)
    with pytest.raises(EtcdConfigError, match=re.escape(f"{path}: cannot read the file")):
        load_etcd_config(path)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_unreadable_file_io_error() -> None:
    # A regular file whose read fails (EIO), even for root.
    with pytest.raises(EtcdConfigError, match="/proc/self/mem: cannot read the file: "):
        load_etcd_config("/proc/self/mem")


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "c", b"endpoints: [https://a:1]\nusername: \xff\n")
    with pytest.raises(EtcdConfigError, match=r"not valid UTF-8 \(byte offset 35\)"):
        load_etcd_config(path)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("endpoints: [https://a:1\nusername: u\n", "line 2, column 9"),
        ("endpoints:\n- a\n b: c\n", "line 3, column 3"),
        ("endpoints: *nope\n", "line 1, column 12"),
        ("a: b\n---\nc: d\n", "line 2, column 1"),
        ("\tendpoints: []\n", "line 1, column 1"),
    ],
)
def test_invalid_yaml_names_the_line(text: str, where: str) -> None:
    err = parse_error(text)
    assert f"invalid YAML at {where}: " in str(err)
    assert err.field is None


def test_invalid_yaml_characters_and_nesting() -> None:
    assert "invalid YAML: special characters are not allowed (character #x0000" in str(
        parse_error("endpoints: [\x00]")
    )
    assert str(parse_error("[" * 50_000)) == f"{SRC}: invalid YAML: nested too deeply"


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file(text: str) -> None:
    err = parse_error(text)
    assert err.field == "endpoints"
    assert "is required" in str(err) and "the file is empty" in str(err)


@pytest.mark.parametrize(("text", "kind"), [("- a\n", "a list"), ("hello\n", "a string")])
def test_top_level_must_be_a_mapping(text: str, kind: str) -> None:
    assert f"must be a YAML mapping of etcd client options, not {kind}" in str(parse_error(text))


def test_keys_must_be_strings() -> None:
    assert "keys must be strings, found a list (line 2)" in str(
        parse_error("endpoints: [https://a:1]\n[a]: b\n")
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("username: u\n", "is required: must be a non-empty list of URLs"),
        ("endpoints:\n", "is required: must be a non-empty list of URLs (line 1)"),
        ("endpoints: []\n", "must be a non-empty list of URLs, got an empty list (line 1)"),
        ("endpoints: {a: b}\n", "must be a non-empty list of URLs, got a mapping (line 1)"),
        ("endpoints: 2379\n", "must be a non-empty list of URLs, got a number ('2379')"),
        ("endpoints:\n- https://a:1\n- 2379\n", "item 2 is a number ('2379') (line 3)"),
        ("endpoints:\n- [https://a:1]\n", "item 1 is a list (line 2)"),
        ("endpoints: [~]\n", "item 1 is nothing"),
    ],
)
def test_bad_endpoints_field(text: str, message: str) -> None:
    err = parse_error(text)
    assert err.field == "endpoints"
    assert str(err).startswith(f"{SRC}: field 'endpoints': ")
    assert message in str(err)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://a:2379", "the scheme must be http or https, not 'ftp'"),
        ("unix:///run/etcd.sock", "(unix sockets are not supported)"),
        ("https://etcd.example.com", "the port is missing (etcd has no default port): "
                                     "write it explicitly, e.g. https://etcd.example.com:2379"),
        ("https://[::1]", "e.g. https://[::1]:2379"),
        ("https://a:", "the port is missing"),
        ("https://a:0", "the port '0' is not a number between 1 and 65535"),
        ("https://a:65536", "the port '65536' is not"),
        ("https://a:http", "the port 'http' is not"),
        ("https://a:-1", "the port '-1' is not"),
        ("https://:2379", "the host is empty"),
        ("https://::1:2379", "an IPv6 address must be written in brackets"),
        ("https://[::1:2379", "the IPv6 address has no closing ']'"),
        ("https://[1.2.3.4]:2379", "'1.2.3.4' in brackets is not an IPv6 address"),
        ("https://[::g]:2379", "'::g' is not a valid IPv6 address"),
        ("https://[::1]x:2379", "unexpected 'x:2379' after the IPv6 address"),
        ("https://[fe80::1%eth0]:2379", "an IPv6 zone must be written as %25zone"),
        ("https://256.1.1.1:2379", "'256.1.1.1' is not a valid IPv4 address"),
        ("https://1.2.3:2379", "'1.2.3' is not a valid IPv4 address"),
        ("https://bad!host:2379", "'bad!host' is not a valid DNS name"),
        ("https://-a.example:2379", "'-a.example' is not a valid DNS name"),
        ("https://a..b:2379", "'a..b' is not a valid DNS name"),
        ("https://" + "a" * 64 + ":2379", "is not a valid DNS name"),
        ("https://a b:2379", "the URL contains whitespace"),
        ("etcd:2379/x", "expected a URL such as https://host:2379"),
    ],
)
def test_bad_urls_are_named(url: str, reason: str) -> None:
    err = parse_error(f"endpoints:\n- https://good:2379\n- '{url}'\n")
    assert err.field == "endpoints"
    assert err.line == 3
    assert f"field 'endpoints': invalid URL {url!r}: " in str(err)
    assert reason in str(err)


def test_credentials_in_url_are_rejected_and_redacted() -> None:
    err = parse_error("endpoints: ['https://root:hunter2@a:2379']")
    assert "hunter2" not in str(err)
    assert "invalid URL 'https://<redacted>@a:2379': credentials in the URL are not " \
           "supported: use the 'username' and 'password' fields" in str(err)


def test_empty_url() -> None:
    assert "invalid URL '': the URL is empty" in str(parse_error("endpoints: ['']"))


def test_mixed_schemes_are_rejected() -> None:
    err = parse_error("endpoints: [https://a:1, http://b:1]")
    assert str(err) == (
        f"{SRC}: field 'endpoints': all endpoints must use the same scheme, "
        "found both http:// and https://"
    )


def test_ca_file_and_trusted_ca_file_must_agree() -> None:
    err = parse_error("endpoints: [https://a:1]\ntrusted-ca-file: /a.crt\nca-file: /b.crt\n")
    assert err.field == "ca-file"
    assert str(err) == (
        f"{SRC}: field 'ca-file': names '/b.crt' but 'trusted-ca-file' names '/a.crt': "
        "'ca-file' is a deprecated alias of 'trusted-ca-file', keep only the latter (line 3)"
    )


def test_cert_without_key_and_key_without_cert() -> None:
    err = parse_error("endpoints: [https://a:1]\ncert-file: /c.crt\n")
    assert str(err) == (
        f"{SRC}: field 'key-file': is required when 'cert-file' is set (they go together)"
    )
    err = parse_error("endpoints: [https://a:1]\nkey-file: /c.key\n")
    assert str(err) == (
        f"{SRC}: field 'cert-file': is required when 'key-file' is set (they go together)"
    )


def test_password_requires_username() -> None:
    err = parse_error("endpoints: [https://a:1]\npassword: hunter2\n")
    assert err.field == "password"
    assert "is set but 'username' is not" in str(err)
    assert "hunter2" not in str(err)


def test_insecure_transport_contradicts_https() -> None:
    err = parse_error("endpoints: [https://a:1]\ninsecure-transport: true\n")
    assert err.field == "insecure-transport"
    assert "is true but the endpoints are https:// URLs" in str(err)


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("insecure-transport: 'true'", "insecure-transport",
         "must be true or false, got a string ('true') (line 2)"),
        ("insecure-skip-tls-verify: 1", "insecure-skip-tls-verify",
         "must be true or false, got a number ('1')"),
        ("insecure-transport: [true]", "insecure-transport", "must be true or false, got a list"),
        ("cert-file: true\nkey-file: /k", "cert-file",
         "must be a string, got a boolean ('true') (quote the value) (line 2)"),
        ("trusted-ca-file: {a: b}", "trusted-ca-file", "must be a string, got a mapping"),
        ("username: [a]", "username", "must be a string, got a list"),
        ("username: 2024-01-01", "username", "must be a string, got a date ('2024-01-01')"),
        ("username: u\npassword: 1.5", "password",
         "must be a string, got a number (quote the value) (line 3)"),
        ("username: u\npassword: !!binary aGVsbG8=", "password", "must be a string, got binary"),
    ],
)
def test_wrong_types_name_the_field(text: str, field: str, message: str) -> None:
    err = parse_error(f"endpoints: [https://a:1]\n{text}\n")
    assert err.field == field
    assert str(err).startswith(f"{SRC}: field '{field}': ")
    assert message in str(err)
    if field == "password":
        assert "1.5" not in str(err) and "aGVsbG8" not in str(err)


def test_hand_built_config_is_validated() -> None:
    with pytest.raises(EtcdConfigError, match="field 'endpoints': must be a non-empty list"):
        EtcdConfig(endpoints=())
    with pytest.raises(EtcdConfigError, match=r"^/x: field 'password'"):
        EtcdConfig(endpoints=(Endpoint(scheme="https", host="a", port=1),), password="p",
                   source=Path("/x"))
    config = EtcdConfig(endpoints=[Endpoint(scheme="https", host="a", port=1)])  # type: ignore[arg-type]
    assert config.endpoints == (Endpoint(scheme="https", host="a", port=1),)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scheme": "grpc", "host": "a", "port": 1},
        {"scheme": "https", "host": "", "port": 1},
        {"scheme": "https", "host": "a b", "port": 1},
        {"scheme": "https", "host": "a", "port": 0},
        {"scheme": "https", "host": "a", "port": 70000},
        {"scheme": "https", "host": "a", "port": True},
    ],
)
def test_hand_built_endpoint_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Endpoint(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- properties

hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True)
    .filter(lambda h: not h.replace(".", "").isdigit()),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
endpoints = st.builds(
    Endpoint, scheme=st.sampled_from(["http", "https"]), host=hosts, port=st.integers(1, 65535)
)


@given(st.lists(endpoints, min_size=1, max_size=4), st.booleans())
def test_rendered_configs_round_trip(eps: list[Endpoint], with_tls: bool) -> None:
    scheme = eps[0].scheme
    eps = [Endpoint(scheme=scheme, host=e.host, port=e.port) for e in eps]
    doc: dict[str, object] = {"endpoints": [str(e) for e in eps]}
    if with_tls:
        doc.update({"trusted-ca-file": "ca.crt", "cert-file": "/c", "key-file": "/k"})
    config = parse(yaml.safe_dump(doc))
    assert list(config.endpoints) == eps
    assert config.use_tls == (scheme == "https")
    if with_tls:
        assert config.trusted_ca_file == SRC.parent / "ca.crt"


@given(st.text(max_size=300))
def test_parsing_anything_raises_only_etcd_config_error(text: str) -> None:
    try:
        config = parse(text)
    except EtcdConfigError as err:
        assert str(err).startswith(f"{SRC}: ")
    else:
        assert config.endpoints


# ---------------------------------------------------------------------------- TLS files


def tls_config(tmp_path: Path, pems: tuple[bytes, bytes]) -> EtcdConfig:
    cert, key = pems
    write(tmp_path / "ca.crt", cert)
    write(tmp_path / "tls.crt", cert)
    write(tmp_path / "tls.key", key)
    return load_etcd_config(write(
        tmp_path / "cluster1",
        "endpoints: [https://a:2379]\ntrusted-ca-file: ca.crt\ncert-file: tls.crt\n"
        "key-file: tls.key\n",
    ))


def test_load_tls_files(tmp_path: Path, pems: tuple[bytes, bytes]) -> None:
    tls = load_tls_files(tls_config(tmp_path, pems))
    assert tls.ca == pems[0] and tls.cert == pems[0] and tls.key == pems[1]
    assert len(tls.fingerprint) == 64
    assert "PRIVATE" not in repr(tls) and "key=" not in repr(tls)


def test_fingerprint_changes_with_any_file(tmp_path: Path, pems: tuple[bytes, bytes]) -> None:
    config = tls_config(tmp_path, pems)
    before = load_tls_files(config).fingerprint
    assert load_tls_files(config).fingerprint == before
    other_cert, other_key = _make_pem()
    for name, data in [("ca.crt", other_cert), ("tls.crt", other_cert), ("tls.key", other_key)]:
        original = (tmp_path / name).read_bytes()
        write(tmp_path / name, data)
        assert load_tls_files(config).fingerprint != before, name
        write(tmp_path / name, original)
    assert load_tls_files(config).fingerprint == before


def test_fingerprint_is_not_ambiguous() -> None:
    a, b = b"-----BEGIN A", b"-----BEGIN B"
    assert TlsBytes(ca=a, cert=b).fingerprint != TlsBytes(ca=a + b).fingerprint
    assert TlsBytes(ca=a).fingerprint != TlsBytes(cert=a).fingerprint
    assert TlsBytes(ca=b"").fingerprint != TlsBytes().fingerprint


def test_no_tls_files_configured() -> None:
    assert load_tls_files(parse("endpoints: [https://a:1]")) == TlsBytes()


def test_insecure_transport_reads_no_files() -> None:
    config = parse("endpoints: [http://a:1]\ninsecure-transport: true\ncert-file: /nope\n"
                   "key-file: /nope\n")
    assert load_tls_files(config) == TlsBytes()


def test_missing_tls_file_is_a_distinct_error(tmp_path: Path, pems: tuple[bytes, bytes]) -> None:
    config = tls_config(tmp_path, pems)
    (tmp_path / "tls.key").unlink()
    with pytest.raises(EtcdConfigFileMissing) as info:
        load_tls_files(config)
    err = info.value
    assert isinstance(err, EtcdConfigError)
    assert err.missing == tmp_path / "tls.key"
    assert err.field == "key-file"
    assert str(err) == (
        f"{tmp_path / 'cluster1'}: field 'key-file': file '{tmp_path / 'tls.key'}' does not exist"
    )


def test_tls_file_not_pem(tmp_path: Path, pems: tuple[bytes, bytes]) -> None:
    config = tls_config(tmp_path, pems)
    write(tmp_path / "ca.crt", b"not a certificate at all: secret-bytes")
    with pytest.raises(EtcdConfigError) as info:
        load_tls_files(config)
    assert not isinstance(info.value, EtcdConfigFileMissing)
    assert str(info.value) == (
        f"{tmp_path / 'cluster1'}: field 'trusted-ca-file': file '{tmp_path / 'ca.crt'}' does "
        "not contain a PEM certificate: no '-----BEGIN' line found"
    )
    assert "secret-bytes" not in str(info.value)


def test_tls_files_swapped(tmp_path: Path, pems: tuple[bytes, bytes]) -> None:
    config = tls_config(tmp_path, pems)
    write(tmp_path / "tls.crt", pems[1])
    write(tmp_path / "tls.key", pems[0])
    with pytest.raises(EtcdConfigError, match=r"field 'cert-file': .* holds a private key"):
        load_tls_files(config)
    write(tmp_path / "tls.crt", pems[0])
    with pytest.raises(EtcdConfigError, match=r"field 'key-file': .* no PRIVATE KEY block"):
        load_tls_files(config)


def test_tls_file_empty_or_unreadable(tmp_path: Path, pems: tuple[bytes, bytes]) -> None:
    config = tls_config(tmp_path, pems)
    write(tmp_path / "tls.crt", b"\n")
    with pytest.raises(EtcdConfigError, match=r"field 'cert-file': file '.*tls.crt' is empty"):
        load_tls_files(config)
    (tmp_path / "tls.crt").unlink()
    (tmp_path / "tls.crt").mkdir()
    with pytest.raises(EtcdConfigError, match=r"field 'cert-file': cannot read '.*tls.crt': ") \
            as info:
        load_tls_files(config)
    assert not isinstance(info.value, EtcdConfigFileMissing)


# ------------------------------------------------------------------- directory scanning


def secret_volume(root: Path, version: str, files: dict[str, str]) -> None:
    """Lay out files the way the kubelet's atomic writer does, or swap to a new version."""
    data_dir = root / f"..{version}"
    for name, text in files.items():
        write(data_dir / name, text)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(data_dir.name)
    os.replace(tmp_link, root / "..data")
    for name in files:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def test_is_cluster_config_file_regular(tmp_path: Path) -> None:
    assert is_cluster_config_file(write(tmp_path / "cluster1", EXAMPLE))
    assert is_cluster_config_file(write(tmp_path / "weird", "# endpoints: later\n"))
    assert not is_cluster_config_file(write(tmp_path / "ca.crt", "-----BEGIN CERTIFICATE-----"))
    assert not is_cluster_config_file(write(tmp_path / "empty", ""))
    assert not is_cluster_config_file(write(tmp_path / "spaced", "endpoints :\n- x\n"))


def test_is_cluster_config_file_secret_volume_swap(tmp_path: Path) -> None:
    secret_volume(tmp_path, "2024_01_01_00_00_00.1", {
        "cluster1": EXAMPLE, "cluster1.crt": "-----BEGIN CERTIFICATE-----\n",
    })
    assert is_cluster_config_file(tmp_path / "cluster1")
    assert not is_cluster_config_file(tmp_path / "cluster1.crt")
    assert not is_cluster_config_file(tmp_path / "..data")
    assert not is_cluster_config_file(tmp_path / "..2024_01_01_00_00_00.1")
    assert load_etcd_config(tmp_path / "cluster1").endpoints[0].port == 2379

    secret_volume(tmp_path, "2024_01_02_00_00_00.2", {
        "cluster1": EXAMPLE.replace(":2379", ":32379"),
        "cluster1.crt": "-----BEGIN CERTIFICATE-----\n",
    })
    (tmp_path / "..2024_01_01_00_00_00.1" / "cluster1").unlink()
    (tmp_path / "..2024_01_01_00_00_00.1" / "cluster1.crt").unlink()
    (tmp_path / "..2024_01_01_00_00_00.1").rmdir()
    assert is_cluster_config_file(tmp_path / "cluster1")
    config = load_etcd_config(tmp_path / "cluster1")
    assert config.endpoints[0].port == 32379
    assert config.source == tmp_path / "cluster1"  # paths resolve next to the symlink

    # Mid-swap: the data directory is gone, the symlinks dangle.
    (tmp_path / "..data").unlink()
    assert not is_cluster_config_file(tmp_path / "cluster1")


def test_is_cluster_config_file_not_a_readable_regular_file(tmp_path: Path) -> None:
    assert not is_cluster_config_file(tmp_path)
    (tmp_path / "dir").mkdir()
    write(tmp_path / "dir" / "x", "endpoints:")
    assert not is_cluster_config_file(tmp_path / "dir")
    assert not is_cluster_config_file(tmp_path / "missing")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert not is_cluster_config_file(fifo)  # and does not block


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without permission")
def test_is_cluster_config_file_unreadable_permission(tmp_path: Path) -> None:
    path = write(tmp_path / "cluster1", EXAMPLE)
    path.chmod(0)
    assert not is_cluster_config_file(path)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_is_cluster_config_file_unreadable_io_error() -> None:
    assert not is_cluster_config_file(Path("/proc/self/mem"))


# ---------------------------------------------------------------------- --kvstore-opt


def parse_kvstore_opts(items: list[str]) -> dict[str, str]:
    """Repeated ``--kvstore-opt`` values, read by the daemons' own flag parser."""
    fs = FlagSet(command="test", bind_env=False)
    fs.string_map("kvstore-opt", help="kvstore options")
    argv = [a for item in items for a in ("--kvstore-opt", item)]
    return fs.parse(argv, env={}).kvstore_opt


def test_parse_kvstore_opts() -> None:
    assert parse_kvstore_opts([]) == {}
    assert parse_kvstore_opts(["etcd.config=/var/lib/etcd-config/etcd.config"]) == {
        "etcd.config": "/var/lib/etcd-config/etcd.config"
    }
    assert parse_kvstore_opts(["etcd.config=/a", "etcd.qps=100,etcd.bootstrapQps=10000"]) == {
        "etcd.config": "/a", "etcd.qps": "100", "etcd.bootstrapQps": "10000",
    }


def test_parse_kvstore_opts_later_wins() -> None:
    assert parse_kvstore_opts(["a=1", "b=2", "a=3"]) == {"a": "3", "b": "2"}
    assert parse_kvstore_opts(["a=1,a=2"]) == {"a": "2"}


def test_parse_kvstore_opts_pflag_quirks() -> None:
    # A single '=' makes one pair, commas included (pflag's stringToString).
    assert parse_kvstore_opts(["etcd.address=a:2379,b:2379"]) == {"etcd.address": "a:2379,b:2379"}
    assert parse_kvstore_opts(['"k=v"']) == {"k": "v"}
    # Several '=' are split like a CSV record, quotes protect commas; '=' in values is fine.
    assert parse_kvstore_opts(['"a=1,2",b=3']) == {"a": "1,2", "b": "3"}
    assert parse_kvstore_opts(["k=a=b"]) == {"k": "a=b"}
    assert parse_kvstore_opts(["a=1, b=2"]) == {"a": "1", "b": "2"}
    assert parse_kvstore_opts(["k="]) == {"k": ""}
    assert go_map("k=v") == {"k": "v"}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("etcd.config", 'for "--kvstore-opt" flag: etcd.config must be formatted as key=value'),
        ("", 'for "--kvstore-opt" flag:  must be formatted as key=value'),
        ("=v", 'for "--kvstore-opt" flag: =v must be formatted as key=value'),
        ("a=1,b=2,bad", 'for "--kvstore-opt" flag: bad must be formatted as key=value'),
        ("a=1,=2", "=2 must be formatted as key=value"),
    ],
)
def test_parse_kvstore_opts_errors(item: str, message: str) -> None:
    with pytest.raises(FlagError) as info:
        parse_kvstore_opts(["ok=1", item])
    assert message in str(info.value)
