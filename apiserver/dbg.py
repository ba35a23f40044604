"""``kvstoremesh-dbg`` and ``clustermesh-dbg``: upstream's debug subcommands (facts §8).

cilium-cli's sysdump runs them in the ``kvstoremesh`` and ``apiserver`` containers and
stores what they print, and runbooks grep that text, so the commands, flags and line
shapes are upstream's:

* ``kvstoremesh-dbg status [--verbose] [-o json|yaml|jsonpath=T] [-H HOST:PORT]`` asks
  KVStoreMesh's API (:mod:`kvstoremesh.statuscmd` renders it);
* ``kvstoremesh-dbg troubleshoot [clusters...] [--include-local] [--etcd-config FILE]
  [--clustermesh-config DIR] [--timeout 5s]`` checks every remote cluster config (and,
  with ``--include-local``, the local etcd);
* ``clustermesh-dbg troubleshoot [--etcd-config FILE] [--timeout 5s]`` checks the local
  etcd only.

Each etcd check is the "EtcdDbg" report: the configuration path; per endpoint DNS
resolution, TCP connect, TLS handshake (version, cipher suite) and a raw ``GET
/version``, which is where etcd's ``--client-cert-auth`` refuses a bad client
certificate and which tells the server version; the configured CA and client
certificates (verified with :mod:`clustermesh.cli.troubleshoot`'s certificate check);
then a real etcd client reading ``cilium/.heartbeat``, the read every user of the mesh
may do, as the authorization probe, and the cluster ID. The report is diagnostic text:
the exit status is 0 however the checks went (1 only when the config directory is
missing), as upstream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import ssl
import sys
import urllib.error
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from clustermesh.cli.troubleshoot import _cert_problems
from clustermesh.clusterconfig import validate_cluster_name
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import (
    Endpoint,
    EtcdConfig,
    is_cluster_config_file,
    load_etcd_config,
)
from clustermesh.goflags import Command, FlagSet, run_group
from clustermesh.keys import HEARTBEAT_KEY
from kvstoremesh.statuscmd import check_output, fetch, render

DEFAULT_ETCD_CONFIG = "/var/lib/cilium/etcd-config.yaml"
DEFAULT_CLUSTERMESH_CONFIG = "/var/lib/cilium/clustermesh/"
DEFAULT_HOST = "localhost:9889"
INFO = "\u2139\ufe0f"  # the "information" emoji of upstream's report (ruff: not an "i")


# ------------------------------------------------------------------ the EtcdDbg report


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
            problems = _cert_problems(config.cert_file, config.trusted_ca_file,
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


# ------------------------------------------------------------------ the commands


def _print(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def _status(argv: Sequence[str], *, path: str) -> int:
    fs = FlagSet(command=f"{path} status", short="Display the status of KVStoreMesh",
                 bind_env=False)
    fs.string("host", shorthand="H", default=DEFAULT_HOST, help="URI of the KVStoreMesh API")
    fs.boolean("verbose", help="Print the details of every cluster, not only the not-ready ones")
    fs.string("output", shorthand="o", default="",
              help="json| yaml| jsonpath='{}'")
    args = fs.parse_or_exit(argv)
    try:
        check_output(args.output)
    except ValueError as exc:
        fs.fail(f'invalid argument "{args.output}" for "-o, --output" flag: {exc}')
    host = args.host.removeprefix("http://").rstrip("/")
    try:
        models = fetch(host)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        hint = (f" (is KVStoreMesh running and serving the API on {host}?)"
                if isinstance(reason, ConnectionRefusedError) else "")
        print(f"Failed to retrieve status information: {reason}{hint}", file=sys.stderr)
        return 1
    sys.stdout.write(render(models, output=args.output, verbose=args.verbose))
    return 0


def _kvstoremesh_troubleshoot(argv: Sequence[str], *, path: str) -> int:
    fs = FlagSet(command=f"{path} troubleshoot", args_usage="[clusters...]", bind_env=False,
                 short="Troubleshoot the connectivity to the remote clusters")
    fs.string("host", shorthand="H", default=DEFAULT_HOST, help="URI of the KVStoreMesh API")
    fs.boolean("include-local", help="Also troubleshoot the connectivity to the local etcd")
    fs.string("etcd-config", default=DEFAULT_ETCD_CONFIG,
              help="Path to the local etcd configuration")
    fs.string("clustermesh-config", default=DEFAULT_CLUSTERMESH_CONFIG,
              help="Path to the ClusterMesh configuration directory")
    fs.duration("timeout", default=5.0, help="Time after which tests are considered failed")
    args = fs.parse_or_exit(argv)
    if args.include_local:
        _print(["Local etcd kvstore:",
                *asyncio.run(etcd_report(Path(args.etcd_config), timeout=args.timeout)), ""])
    directory = Path(args.clustermesh_config)
    try:
        found = sorted(p.name for p in directory.iterdir()
                       if not p.name.startswith("..") and is_cluster_config_file(p))
    except OSError as exc:
        print(f"Error: cannot read the ClusterMesh configuration directory {directory}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    lines = [f"Found {len(found)} cluster configurations"]
    selected = list(dict.fromkeys(args.positionals)) or found
    if args.positionals:
        lines.append(f"Troubleshooting filtered subset of clusters: {', '.join(selected)}")
    _print(lines)
    # Upstream reads the unprefixed CLUSTER_NAME the chart sets, only for this hint.
    local = os.environ.get("CLUSTER_NAME", "")
    for name in selected:
        lines = ["", f'Cluster "{name}":']
        if name == local:
            lines.append(f"{INFO}  This is the local cluster (CLUSTER_NAME)")
        try:
            validate_cluster_name(name)
        except ValueError as exc:
            lines.append(f"❌ Invalid cluster name: {exc}")
        if name not in found:
            lines.append("❌ Configuration not found")
        else:
            lines += asyncio.run(etcd_report(directory / name, timeout=args.timeout))
        _print(lines)
    return 0


def _clustermesh_troubleshoot(argv: Sequence[str], *, path: str) -> int:
    fs = FlagSet(command=f"{path} troubleshoot", bind_env=False,
                 short="Troubleshoot the connectivity to the local etcd")
    fs.string("etcd-config", default=DEFAULT_ETCD_CONFIG,
              help="Path to the local etcd configuration")
    fs.duration("timeout", default=5.0, help="Time after which tests are considered failed")
    args = fs.parse_or_exit(argv)
    _print(["Local etcd kvstore:",
            *asyncio.run(etcd_report(Path(args.etcd_config), timeout=args.timeout))])
    return 0


def _host_after_command(argv: Sequence[str]) -> list[str]:
    """``-H/--host`` is a persistent flag upstream (``kvstoremesh-dbg -H x status``): move
    leading occurrences behind the subcommand word, where its FlagSet parses them."""
    args, moved = list(argv), []
    while args and (args[0] in ("-H", "--host") or args[0].startswith(("-H", "--host="))):
        takes_next = args[0] in ("-H", "--host")
        moved += args[:2] if takes_next else args[:1]
        args = args[2:] if takes_next else args[1:]
    return args[:1] + moved + args[1:]


def kvstoremesh_dbg(argv: Sequence[str], *, path: str) -> int:
    argv = _host_after_command(argv)
    return run_group(argv, path=path, short="Inspect and troubleshoot KVStoreMesh", commands=(
        Command(name="status", short="Display the status of KVStoreMesh",
                run=lambda a: _status(a, path=path)),
        Command(name="troubleshoot", short="Troubleshoot the connectivity to remote clusters",
                run=lambda a: _kvstoremesh_troubleshoot(a, path=path)),
    ))


def clustermesh_dbg(argv: Sequence[str], *, path: str) -> int:
    return run_group(argv, path=path, short="Troubleshoot the ClusterMesh apiserver", commands=(
        Command(name="troubleshoot", short="Troubleshoot the connectivity to the local etcd",
                run=lambda a: _clustermesh_troubleshoot(a, path=path)),
    ))
