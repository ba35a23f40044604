"""``clustermesh troubleshoot``: Cilium's Cluster Mesh troubleshooting list, run for you.

Per cluster: certificates (chain to the CA, expected CNs/SANs, not expiring within
30 days: :func:`clustermesh.pki.certificate_problems`), etcd reachable,
``cilium/cluster-config/<name>`` present and matching the name/ID/maxConnectedClusters,
the apiserver's sync canaries present, heartbeat fresh, every other cluster configured,
KVStoreMesh ready with every remote ready.
Across the mesh: no duplicate IDs, one maxConnectedClusters.  Every failure comes
with the fix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from clustermesh.clusterconfig import (
    EXPORT_ENDPOINTSLICES_ONLY,
    EXPORT_SERVICES_ONLY,
    CiliumClusterConfig,
)
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.keys import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    HEARTBEAT_KEY,
    IDENTITIES,
    NODES,
    SERVICES,
    cluster_config_key,
)
from clustermesh.pki import EXPIRY_WARNING, certificate_problems, load_certificate
from clustermesh_tools.clusters.clusterdir import ClusterDir
from clustermesh_tools.clusters.probes import fetch_status, http_ok

HEARTBEAT_MAX_AGE = dt.timedelta(minutes=2)  # Cilium: 2 x the 1-minute write interval


@dataclass
class Finding:
    ok: bool
    what: str
    fix: str = ""


@dataclass
class Report:
    sections: dict[str, list[Finding]] = field(default_factory=dict)

    def add(self, section: str, ok: bool, what: str, fix: str = "") -> None:
        self.sections.setdefault(section, []).append(Finding(ok, what, fix))

    @property
    def failures(self) -> int:
        return sum(1 for fs in self.sections.values() for f in fs if not f.ok)

    def format(self) -> str:
        lines = []
        for section, findings in self.sections.items():
            lines.append(section)
            for f in findings:
                lines.append(f"  [{'ok' if f.ok else 'FAIL'}]{' ' * (3 if f.ok else 1)}{f.what}")
                if not f.ok and f.fix:
                    lines.append(f"         fix: {f.fix}")
        n = self.failures
        lines.append(f"{n} problem{'s' if n != 1 else ''} found" if n else
                     "no problems found")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- certificates


def _san_covers(cert_file: Path, host: str) -> bool:
    try:
        sans = load_certificate(cert_file).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    try:
        ip = ipaddress.ip_address(host)
        return ip in sans.get_values_for_type(x509.IPAddress)
    except ValueError:
        pass
    for name in sans.get_values_for_type(x509.DNSName):
        if name == host or (name.startswith("*.") and host.split(".", 1)[-1] == name[2:]):
            return True
    return False


def check_certificates(report: Report, d: ClusterDir, others: dict[str, ClusterDir]) -> None:
    section = _section(d)
    now = dt.datetime.now(dt.UTC)
    fix = (f"clustermesh rotate-certs --cluster-dir {d.path} issues every leaf again from "
           "the mesh CA (the daemons pick them up without a restart); the files are in "
           f"{d.certs}")
    problems = []
    ca = load_certificate(d.ca_file)
    if ca.not_valid_after_utc < now + EXPIRY_WARNING:
        problems.append(f"the CA expires on {ca.not_valid_after_utc:%Y-%m-%d}")
        fix = (f"roll the CA over on every cluster of the mesh: clustermesh rotate-certs "
               f"--cluster-dir {d.path} ... --new-ca begin, then reissue, then finish")
    for stem, cn in (("server", None), ("admin", f"admin-{d.name}"),
                     ("local", f"local-{d.name}"), ("remote", d.remote_cn)):
        problems += certificate_problems(d.cert(stem)[0], d.ca_file, now=now, cn=cn)
    if not _san_covers(d.cert("server")[0], d.address):
        problems.append(f"server.crt has no SAN for {d.address}, the address other clusters "
                        "use")
    report.add(section, not problems,
               "TLS: server, admin, local and remote certificates chain to the CA, valid for "
               "30+ days" if not problems else "TLS: " + "; ".join(problems), fix)
    # The client certificate used for each remote must chain to *that* cluster's CA.
    for r in d.remotes:
        config_file = d.config_dir / r.name
        try:
            cfg = load_etcd_config(config_file)
        except (OSError, ValueError) as exc:
            report.add(section, False, f"remote {r.name}: config {config_file} unusable: {exc}",
                       f"clustermesh connect --source {d.path} --destination <{r.name}'s dir>")
            continue
        other = others.get(r.name)
        if other is None or cfg.cert_file is None:
            continue
        bad = certificate_problems(cfg.cert_file, other.ca_file, now=now, cn=d.remote_cn)
        if bad:
            report.add(section, False, f"remote {r.name}: " + "; ".join(bad),
                       f"clustermesh connect --source {d.path} --destination {other.path}")


# ---------------------------------------------------------------------------- etcd state


def _section(d: ClusterDir) -> str:
    return f"{d.name} (id {d.id}, etcd {d.endpoint})"


async def check_etcd(report: Report, d: ClusterDir, *, process_note: str | None) -> None:
    section = _section(d)
    try:
        client = EtcdClient(d.etcd_config("admin"), name=f"troubleshoot {d.name}",
                            dial_timeout=2.0, request_timeout=5.0, tls_reload_interval=0)
        await client.connect()
    except Exception as exc:
        fix = process_note or (
            f"make sure {d.endpoint} is reachable from here (service type "
            f"{d.service_type}: address {d.address}, port {d.port}) and that etcd runs")
        report.add(section, False, f"etcd unreachable at {d.endpoint}: {exc}", fix)
        return
    try:
        status = await client.status()
        report.add(section, True, f"etcd reachable at {d.endpoint} (etcd {status.version})")
        apiserver_fix = ("the clustermesh-apiserver writes it: check that it runs and its log"
                         + (f" ({d.path / 'logs' / 'apiserver.log'})"
                            if (d.path / "logs").is_dir() else ""))
        kv = await client.get(cluster_config_key(d.name).encode())
        mode = EXPORT_SERVICES_ONLY  # which canaries to expect follows the advertised mode
        if kv is None:
            report.add(section, False, f"cluster-config {cluster_config_key(d.name)} missing",
                       apiserver_fix)
        else:
            try:
                cfg = CiliumClusterConfig.from_json(kv.value)
                mode = cfg.endpoint_slices_export_mode
                problems = []
                if cfg.id != d.id:
                    problems.append(f"ID {cfg.id}, expected {d.id}")
                if cfg.max_connected_clusters not in (0, d.max_connected_clusters):
                    problems.append(f"maxConnectedClusters {cfg.max_connected_clusters}, "
                                    f"expected {d.max_connected_clusters}")
                report.add(section, not problems,
                           f"cluster-config present, name {d.name}, ID {cfg.id}" if not problems
                           else "cluster-config mismatch: " + ", ".join(problems),
                           "the apiserver runs with other --cluster-id/--max-connected-clusters "
                           "than cluster.yaml says: fix its flags (Helm values cluster.id, "
                           "maxConnectedClusters)")
            except ValueError as exc:
                report.add(section, False, f"cluster-config unparsable: {exc}", apiserver_fix)
        missing = []
        expected = [NODES, IDENTITIES, ENDPOINTS]
        if mode != EXPORT_ENDPOINTSLICES_ONLY:
            expected.append(SERVICES)
        if mode != EXPORT_SERVICES_ONLY:
            expected.append(ENDPOINT_SLICES)
        for r in expected:
            if await client.get(r.state_canary(d.name).encode()) is None:
                missing.append(r.state_canary(d.name))
        report.add(section, not missing,
                   f"sync canaries present ({', '.join(r.name for r in expected)})"
                   if not missing else "sync canaries missing: " + ", ".join(missing),
                   "the apiserver has not finished its initial sync: " + apiserver_fix)
        kv = await client.get(HEARTBEAT_KEY.encode())
        if kv is None:
            report.add(section, False, "heartbeat cilium/.heartbeat missing", apiserver_fix)
        else:
            try:
                beat = dt.datetime.strptime(kv.value.decode(), "%Y-%m-%dT%H:%M:%SZ").replace(
                    tzinfo=dt.UTC)
                age = dt.datetime.now(dt.UTC) - beat
                report.add(section, age <= HEARTBEAT_MAX_AGE,
                           f"heartbeat {int(age.total_seconds())}s old",
                           "remote readers reconnect when it is older than 2 minutes: "
                           + apiserver_fix)
            except (ValueError, UnicodeDecodeError):
                report.add(section, False, f"heartbeat value {kv.value[:40]!r} is not RFC3339",
                           apiserver_fix)
    except Exception as exc:
        report.add(section, False, f"etcd at {d.endpoint} answered with an error: {exc}",
                   "check that the admin-<cluster> user exists (run `clustermesh-apiserver "
                   "etcdinit`) and the etcd log")
    finally:
        await client.close()


def check_kvstoremesh(report: Report, d: ClusterDir, names: list[str], *,
                      process_note: str | None) -> None:
    section = _section(d)
    configured = {r.name for r in d.remotes}
    for other in names:
        if other != d.name and other not in configured:
            report.add(section, False, f"cluster {other} is not configured as a remote",
                       f"clustermesh connect --source {d.path} --destination <{other}'s dir>")
    if not d.kvstoremesh:
        report.add(section, True, "KVStoreMesh disabled (agents connect to remotes directly)")
        return
    if not d.kvstoremesh_api:
        report.add(section, False, "KVStoreMesh status API address unknown",
                   "record it as kvstoremeshApi in cluster.yaml, or use `kubectl exec ... "
                   "kvstoremesh status`")
        return
    models = fetch_status(d.kvstoremesh_api)
    if models is None:
        report.add(section, False, f"KVStoreMesh status API at {d.kvstoremesh_api} unreachable",
                   process_note or "check that KVStoreMesh runs (and its log)")
        return
    if d.kvstoremesh_health and not http_ok(f"http://{d.kvstoremesh_health}/readyz"):
        report.add(section, False, "KVStoreMesh /readyz: NotReady",
                   f"curl http://{d.kvstoremesh_health}/readyz?verbose shows what it waits for")
    by_name = {m["name"]: m for m in models}
    for r in sorted(configured | set(by_name)):
        m = by_name.get(r)
        if m is None:
            report.add(section, False, f"KVStoreMesh has not loaded remote {r}",
                       f"check {d.config_dir / r} and the KVStoreMesh log")
        elif not m.get("ready"):
            state = "connected" if m.get("connected") else "not connected"
            report.add(section, False,
                       f"KVStoreMesh: remote {r} {state}, not ready: {m.get('status')}",
                       f"check that {r}'s etcd is up and reachable from {d.name} "
                       f"(`clustermesh troubleshoot` section {r}), and that {d.name}'s "
                       f"config file {d.config_dir / r} names the right endpoint")
        else:
            report.add(section, True, f"KVStoreMesh: remote {r} ready "
                       f"({m.get('num-failures', 0)} failures)")


def check_mesh(report: Report, dirs: list[ClusterDir]) -> None:
    section = "mesh"
    by_id: dict[int, list[str]] = {}
    for d in dirs:
        by_id.setdefault(d.id, []).append(d.name)
    dups = {i: n for i, n in by_id.items() if len(n) > 1}
    report.add(section, not dups, "cluster IDs are unique" if not dups else
               "duplicate cluster IDs: " + "; ".join(f"{i}: {', '.join(n)}"
                                                     for i, n in dups.items()),
               "give every cluster its own --cluster-id (re-run clustermesh enable)")
    mcc = {d.max_connected_clusters for d in dirs}
    report.add(section, len(mcc) == 1,
               f"every cluster uses maxConnectedClusters {mcc.pop()}" if len(mcc) == 1 else
               "maxConnectedClusters differ: " + ", ".join(
                   f"{d.name}={d.max_connected_clusters}" for d in dirs),
               "use one value (255 or 511) on every cluster of the mesh")
    names = [d.name for d in dirs]
    report.add(section, len(set(names)) == len(names), "cluster names are unique",
               "give every cluster its own --cluster-name")


def troubleshoot(dirs: list[ClusterDir], *,
                 process_notes: Callable[[ClusterDir, str], str | None] | None = None
                 ) -> Report:
    """Run every check. ``process_notes(d, component)`` explains a dead local process."""
    report = Report()
    by_name = {d.name: d for d in dirs}
    names = [d.name for d in dirs]

    def note(d: ClusterDir, component: str) -> str | None:
        return process_notes(d, component) if process_notes else None

    for d in dirs:
        report.sections.setdefault(_section(d), [])
        etcd_note = note(d, "etcd")
        if etcd_note:
            report.add(_section(d), False, f"the etcd process of {d.name} is not running",
                       etcd_note)
        check_certificates(report, d, by_name)

    async def etcd_checks() -> None:
        for d in dirs:
            await check_etcd(report, d, process_note=note(d, "etcd"))

    asyncio.run(etcd_checks())
    for d in dirs:
        check_kvstoremesh(report, d, names, process_note=note(d, "kvstoremesh"))
    check_mesh(report, dirs)
    return report
