"""The "EtcdDbg" report: can an etcd client configuration reach its etcd, and if not, why.

Upstream's two debug commands print it, ``clustermesh-apiserver kvstoremesh-dbg
troubleshoot`` (:mod:`kvstoremesh.dbg`: every remote cluster config, and the local etcd)
and ``clustermesh-apiserver clustermesh-dbg troubleshoot`` (:mod:`apiserver.dbg`: the
local etcd), so it lives in the core both daemons share. cilium-cli's sysdump stores the
text and runbooks grep it, so the lines are upstream's:

* the configuration path;
* per endpoint: DNS resolution, TCP connect, TLS handshake (version, cipher suite) and a
  raw ``GET /version``, which is where etcd's ``--client-cert-auth`` refuses a bad client
  certificate and which tells the server version;
* the configured CA and client certificates, the client certificate verified against
  the CA (:func:`clustermesh.pki.certificate_problems`);
* then a real etcd client reading ``cilium/.heartbeat``, the read every user of the mesh
  may do, as the authorization probe, and the cluster ID.

The report is diagnostic text: whatever fails is a line of it, nothing is raised.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import Endpoint, EtcdConfig, load_etcd_config
from clustermesh.goflags import FlagSet
from clustermesh.keys import HEARTBEAT_KEY
from clustermesh.pki import certificate_problems

__all__ = ["DEFAULT_ETCD_CONFIG", "INFO", "add_report_flags", "etcd_report", "print_lines"]

#: Upstream's path of the local etcd client configuration (the image's, and the chart's).
DEFAULT_ETCD_CONFIG = "/var/lib/cilium/etcd-config.yaml"
#: The "information" emoji of upstream's report (escaped, ruff: it is not an "i").
INFO = "\u2139\ufe0f"


def add_report_flags(fs: FlagSet) -> None:
    """``--etcd-config`` and ``--timeout``, the flags of both troubleshoot commands."""
    fs.string("etcd-config", default=DEFAULT_ETCD_CONFIG,
              help="Path to the local etcd configuration")
    fs.duration("timeout", default=5.0, help="Time after which tests are considered failed")


def print_lines(lines: Sequence[str]) -> None:
    """Write report lines to stdout now (a report is printed section by section)."""
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def _tls_context(config: EtcdConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.insecure_skip_tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif config.trusted_ca_file is not None:
        ctx.load_verify_locations(cafile=str(config.trusted_ca_file))
    else:
        ctx.load_default_certs()
    if config.cert_file is not None and config.key_file is not None:
        ctx.load_cert_chain(str(config.cert_file), str(config.key_file))
    return ctx


def _go_tls_version(name: str | None) -> str:
    return (name or "unknown").replace("TLSv", "TLS ")  # Go's spelling: "TLS 1.3"


def _get_version(sock: socket.socket, host: str) -> str:
    """``GET /version`` on a connected (TLS or plain) socket: etcd's server version."""
    sock.sendall(f"GET /version HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in f"{status} ":
        raise ValueError(f"unexpected answer {status!r}")
    return str(json.loads(body)["etcdserver"])


def _endpoint_checks(endpoint: Endpoint, ctx: ssl.SSLContext | None, timeout: float
                     ) -> list[str]:
    """Blocking (run in a thread): DNS, TCP, TLS and version checks of one endpoint."""
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return [f"❌ Cannot resolve hostname: {exc}"]
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    lines = [f"✅ Hostname resolved to: {', '.join(addresses)}"]
    address = addresses[0]
    target = f"[{address}]:{endpoint.port}" if ":" in address else f"{address}:{endpoint.port}"
    try:
        sock = socket.create_connection((address, endpoint.port), timeout=timeout)
    except OSError as exc:
        return [*lines, f"❌ Cannot establish TCP connection to {target}: {exc}"]
    with sock:
        lines.append(f"✅ TCP connection successfully established to {target}")
        conn: socket.socket = sock
        if ctx is not None:
            try:
                conn = ctx.wrap_socket(sock, server_hostname=endpoint.host)
            except (ssl.SSLError, OSError) as exc:
                return [*lines, f"❌ Cannot establish TLS connection to {target}: {exc}"]
            lines.append(f"✅ TLS connection successfully established to {target}")
            lines.append(f"{INFO}  Negotiated TLS version: {_go_tls_version(conn.version())}, "
                         f"ciphersuite {(conn.cipher() or ('unknown',))[0]}")
        try:
            lines.append(f"{INFO}  Etcd server version: {_get_version(conn, endpoint.host)}")
        except ssl.SSLError as exc:
            # TLS 1.3 reports a refused client certificate only on the first read.
            lines.append(f"❌ The server refused the TLS session: {exc}")
            lines.append(f"{INFO}  etcd runs with --client-cert-auth: cert-file/key-file must be a "
                         "client certificate signed by the server's CA")
        except (OSError, ValueError, KeyError) as exc:
            lines.append(f"❌ Cannot retrieve the etcd server version: {exc}")
    return lines


def _cert_block(path: Path) -> list[str]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        return [f"   ❌ Cannot read {path}: {exc}"]
    lines = []
    for cert in certs:
        digits = f"{cert.serial_number:x}"
        digits = digits.zfill(len(digits) + len(digits) % 2)
        serial = ":".join(digits[i:i + 2] for i in range(0, len(digits), 2))
        lines += [f"      - Serial number:       {serial}",
                  f"        Subject:             {cert.subject.rfc4514_string()}",
                  f"        Issuer:              {cert.issuer.rfc4514_string()}",
                  "        Validity:",
                  f"          Not before:  {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S %z}",
                  f"          Not after:   {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S %z}"]
    return lines


def _certificates(config: EtcdConfig) -> list[str]:
    if not config.use_tls:
        return [f"   {INFO}  TLS is not enabled"]
    lines: list[str] = []
    if config.trusted_ca_file is None:
        lines.append(f"   {INFO}  No root CA configured: the system's root CAs are used")
    else:
        lines += ["   ✅ TLS Root CA certificates:", *_cert_block(config.trusted_ca_file)]
    if config.cert_file is None:
        lines.append(f"   {INFO}  No client certificate configured")
    else:
        lines += ["   ✅ TLS client certificates:", *_cert_block(config.cert_file)]
        if config.trusted_ca_file is not None:
            problems = certificate_problems(config.cert_file, config.trusted_ca_file,
                                            now=dt.datetime.now(dt.UTC))
            lines += [f"   ⚠️  {problem}" for problem in problems]
    if config.username:
        lines.append(f"   {INFO}  Username: {config.username}")
    return lines


async def _client_probe(config: EtcdConfig, timeout: float) -> list[str]:
    client = EtcdClient(config, name="troubleshoot", dial_timeout=min(1.0, timeout),
                        request_timeout=timeout, tls_reload_interval=0)
    try:
        async with asyncio.timeout(timeout):
            await client.connect()
            await client.get(HEARTBEAT_KEY.encode())
            status = await client.status()
    # A diagnostic: whatever went wrong is the finding, printed, never raised.
    except Exception as exc:
        return [f"   ❌ Failed to establish connection: {exc or type(exc).__name__}"]
    finally:
        await client.close()
    return ["   ✅ Etcd connection successfully established",
            f"   {INFO}  Etcd cluster ID: {status.cluster_id:x}"]


async def etcd_report(path: Path, *, timeout: float) -> list[str]:
    """The EtcdDbg report of the etcd client configuration at ``path``."""
    lines = [f"📄 Configuration path: {path}"]
    try:
        config = load_etcd_config(path)
    except (OSError, ValueError) as exc:
        return [*lines, f"❌ Cannot parse the etcd configuration: {exc}"]
    ctx = None
    if config.use_tls:
        try:
            ctx = _tls_context(config)
        except (OSError, ssl.SSLError) as exc:
            return [*lines, f"❌ Cannot load the TLS files of the configuration: {exc}"]
    lines += ["", "🔌 Endpoints:"]
    for endpoint in config.endpoints:
        lines.append(f"   - {endpoint}")
        checks = await asyncio.to_thread(_endpoint_checks, endpoint, ctx, timeout)
        lines += [f"     {line}" for line in checks]
    lines += ["", "🔑 Digital certificates:", *_certificates(config)]
    lines += ["", "⚙️ Etcd client:", *await _client_probe(config, timeout)]
    return lines
