"""``clustermesh check``: the connectivity test.

For every cluster, a probe — one identity, one endpoint and one global service,
tagged with a per-run nonce — is published through the cluster's own source (the
clustermesh-apiserver's manifests directory: a file ``zz-clustermesh-check.yaml``).
The test then reads every *other* cluster's etcd with that cluster's
``local-<cluster>`` certificate (what its Cilium agents use) and waits until the
KVStoreMesh cache there holds the probe's three keys with exactly the values
Cilium's apiserver produces (computed here with :mod:`apiserver.converters`).
Then the probe files are removed and the removal must propagate the same way.

Output: a pass/fail matrix (rows: source cluster, columns: where it was seen) with
the propagation latency of each pair, for publication and removal.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apiserver.exports import ExportOptions, Exports
from apiserver.sample import identity_id
from apiserver.sources import KINDS_BY_NAME
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import EtcdConfig
from clustermesh.keys import RESOURCES
from clustermesh_tools.clusters.clusterdir import ClusterDir, write_atomic

PROBE_FILE = "zz-clustermesh-check.yaml"
PROBE_NAMESPACE = "clustermesh-check"
PROBE_NAME = "probe"
PROBE_INDEX = 30000  # identity index inside the cluster's range (fits 255 and 511 modes)


@dataclass
class CheckTarget:
    name: str
    id: int
    max_connected_clusters: int
    manifests_dir: Path
    admin: EtcdConfig
    local: EtcdConfig

    @classmethod
    def from_dir(cls, d: ClusterDir) -> CheckTarget:
        if not d.manifests_dir:
            raise ValueError(
                f"{d.path}: cluster {d.name} has no manifests directory (manifestsDir in "
                "cluster.yaml): `check` publishes its probe through the clustermesh-apiserver's "
                "manifests source; a Kubernetes source would need kubectl, which this tool "
                "does not drive")
        manifests = Path(d.manifests_dir)
        if not manifests.is_absolute():
            manifests = d.path / manifests
        return cls(name=d.name, id=d.id, max_connected_clusters=d.max_connected_clusters,
                   manifests_dir=manifests, admin=d.etcd_config("admin"),
                   local=d.etcd_config("local"))


def _probe_ip(cluster_id: int) -> str:
    return f"100.{64 + cluster_id // 256}.{cluster_id % 256}.250"


def probe_objects(t: CheckTarget, nonce: str) -> list[dict[str, Any]]:
    ident = identity_id(t.id, PROBE_INDEX, max_connected_clusters=t.max_connected_clusters)
    ip = _probe_ip(t.id)
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PROBE_NAMESPACE}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
         "metadata": {"name": str(ident)},
         "security-labels": {"k8s:app": "clustermesh-check", "k8s:check-run": nonce,
                             "k8s:io.cilium.k8s.policy.cluster": t.name,
                             "k8s:io.kubernetes.pod.namespace": PROBE_NAMESPACE}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
         "metadata": {"name": f"{PROBE_NAME}-{nonce}", "namespace": PROBE_NAMESPACE},
         "status": {"identity": {"id": ident},
                    "networking": {"addressing": [{"ipv4": ip}],
                                   "node": f"172.18.{t.id % 256}.2"},
                    "encryption": {"key": 0}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": PROBE_NAME, "namespace": PROBE_NAMESPACE,
                      "labels": {"check-run": nonce},
                      "annotations": {"service.cilium.io/global": "true"}},
         "spec": {"type": "ClusterIP", "clusterIP": f"10.255.{t.id // 256}.{t.id % 256}",
                  "selector": {"app": "clustermesh-check"},
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{PROBE_NAME}-check", "namespace": PROBE_NAMESPACE,
                      "labels": {"kubernetes.io/service-name": PROBE_NAME}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    ]


def expected_state(t: CheckTarget, objects: list[dict[str, Any]]) -> dict[str, bytes]:
    """The state keys the probe's apiserver publishes (its export rules, default flags)."""
    exports = Exports(ExportOptions(cluster=t.name, cluster_id=t.id))
    for obj in objects:
        exports.upsert(KINDS_BY_NAME[obj["kind"]], obj)
    out: dict[str, bytes] = {}
    for resource in exports.owner_kind:
        for owner in exports.owners(resource):
            out.update(exports.desired(owner)[0])
    return out


def cache_key(state_key: str, cluster: str) -> str:
    for r in RESOURCES:
        prefix = r.state_prefix(cluster)
        if state_key.startswith(prefix):
            return r.cache_prefix(cluster) + state_key[len(prefix):]
    raise ValueError(f"not a state key of {cluster}: {state_key}")


@dataclass
class PairResult:
    ok: bool = False
    latency: float | None = None
    detail: str = ""


@dataclass
class CheckResult:
    clusters: list[str]
    publish: dict[tuple[str, str], PairResult] = field(default_factory=dict)
    removal: dict[tuple[str, str], PairResult] = field(default_factory=dict)
    published_at_source: dict[str, float | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.errors and all(r.ok for r in self.publish.values())
                and all(r.ok for r in self.removal.values()))


async def _get(client: EtcdClient, key: str) -> bytes | None:
    try:
        kv = await client.get(key.encode())
    except Exception:
        return None
    return None if kv is None else kv.value


async def run_check(targets: list[CheckTarget], *, timeout: float = 30.0) -> CheckResult:
    if len(targets) < 2:
        raise ValueError("the check needs at least two clusters")
    result = CheckResult(clusters=[t.name for t in targets])
    nonce = secrets.token_hex(4)
    clients: dict[str, tuple[EtcdClient, EtcdClient]] = {}
    expected: dict[str, dict[str, bytes]] = {}
    try:
        for t in targets:
            admin = EtcdClient(t.admin, name=f"check {t.name} admin", dial_timeout=3.0,
                               request_timeout=5.0, tls_reload_interval=0)
            local = EtcdClient(t.local, name=f"check {t.name} local", dial_timeout=3.0,
                               request_timeout=5.0, tls_reload_interval=0)
            clients[t.name] = (admin, local)
            for c, who in ((admin, f"admin-{t.name}"), (local, f"local-{t.name}")):
                try:
                    await c.connect()
                except Exception as exc:
                    result.errors.append(f"{t.name}: cannot connect to etcd as {who}: {exc}")
        for t in targets:
            objects = probe_objects(t, nonce)
            expected[t.name] = expected_state(t, objects)
        if result.errors:
            return result
        # Publish.
        started: dict[str, float] = {}
        for t in targets:
            objects = probe_objects(t, nonce)
            write_atomic(t.manifests_dir / PROBE_FILE,
                         "# clustermesh check probe (removed when the check ends)\n"
                         + yaml.safe_dump_all(objects, sort_keys=False))
            started[t.name] = time.monotonic()
        await _wait_pairs(targets, clients, expected, started, result.publish,
                          present=True, timeout=timeout, source_seen=result.published_at_source)
    finally:
        # Remove (always, even after a failure).
        removed_at: dict[str, float] = {}
        for t in targets:
            with contextlib.suppress(OSError):
                (t.manifests_dir / PROBE_FILE).unlink(missing_ok=True)
            removed_at[t.name] = time.monotonic()
        if clients and not result.errors:
            await _wait_pairs(targets, clients, expected, removed_at, result.removal,
                              present=False, timeout=timeout)
        for admin, local in clients.values():
            await admin.close()
            await local.close()
    return result


async def _wait_pairs(targets: list[CheckTarget],
                      clients: dict[str, tuple[EtcdClient, EtcdClient]],
                      expected: dict[str, dict[str, bytes]], started: dict[str, float],
                      results: dict[tuple[str, str], PairResult], *, present: bool,
                      timeout: float, source_seen: dict[str, float | None] | None = None
                      ) -> None:
    pending = {(s.name, d.name) for s in targets for d in targets if s is not d}
    for pair in pending:
        results[pair] = PairResult()
    deadline = time.monotonic() + timeout
    last_detail: dict[tuple[str, str], str] = {}
    while pending:
        for src, dst in sorted(pending):
            _, local = clients[dst]
            problems = []
            for state_key, value in expected[src].items():
                key = cache_key(state_key, src)
                got = await _get(local, key)
                if present and got != value:
                    problems.append(f"{key} {'missing' if got is None else 'has a wrong value'}")
                elif not present and got is not None:
                    problems.append(f"{key} still present")
            if not problems:
                results[(src, dst)] = PairResult(ok=True,
                                                 latency=time.monotonic() - started[src])
                pending.discard((src, dst))
            else:
                last_detail[(src, dst)] = "; ".join(problems)
        if source_seen is not None:
            for t in targets:
                if source_seen.get(t.name) is None:
                    admin, _ = clients[t.name]
                    values = [await _get(admin, k) for k in expected[t.name]]
                    if values == list(expected[t.name].values()):
                        source_seen[t.name] = time.monotonic() - started[t.name]
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    for pair in pending:
        detail = last_detail.get(pair, "")
        if present and source_seen is not None and source_seen.get(pair[0]) is None:
            detail = (f"the probe was never published in {pair[0]}'s own etcd (is its "
                      f"clustermesh-apiserver running?); {detail}")
        results[pair] = PairResult(ok=False, detail=detail)


def _cell(r: PairResult | None) -> str:
    if r is None:
        return "-"
    return f"ok {r.latency:.2f}s" if r.ok and r.latency is not None else "FAIL"


def check_and_print(targets: list[CheckTarget], *, timeout: float) -> int:
    """Run the check, printing what it does and the result; 0 when it passed, else 1."""
    names = ", ".join(t.name for t in targets)
    print(f"publishing a probe identity, endpoint and global service in {names} ...",
          flush=True)
    result = asyncio.run(run_check(targets, timeout=timeout))
    sys.stdout.write(format_result(result, timeout=timeout))
    return 0 if result.ok else 1


def format_result(result: CheckResult, *, timeout: float) -> str:
    lines = []
    if result.errors:
        lines.append("Connectivity check could not run:")
        lines.extend(f"  - {e}" for e in result.errors)
        return "\n".join(lines) + "\n"
    names = result.clusters
    width = max(12, *(len(n) + 4 for n in names))
    published = "publish (identity + endpoint + global service + EndpointSlice)"
    for title, table in ((published, result.publish), ("removal", result.removal)):
        lines.append(f"{title}: source cluster (row) -> seen in the KVStoreMesh cache of "
                     "(column)")
        lines.append("".ljust(width) + "".join(f"{n:>{width}}" for n in names))
        for src in names:
            cells = [_cell(table.get((src, dst))) if src != dst else "-" for dst in names]
            lines.append(f"{src:<{width}}" + "".join(f"{c:>{width}}" for c in cells))
        lines.append("")
    failures = [(kind, pair, r) for kind, table in (("publish", result.publish),
                                                   ("removal", result.removal))
                for pair, r in sorted(table.items()) if not r.ok]
    total = len(result.publish) + len(result.removal)
    if failures:
        lines.append(f"FAILED: {len(failures)}/{total} checks (timeout {timeout:g}s):")
        for kind, (src, dst), r in failures:
            lines.append(f"  - {kind} {src} -> {dst}: {r.detail}")
    else:
        lats = [r.latency for r in (*result.publish.values(), *result.removal.values())
                if r.latency is not None]
        lines.append(f"PASSED: {total}/{total} checks; propagation latency min/avg/max "
                     f"{min(lats):.2f}/{sum(lats) / len(lats):.2f}/{max(lats):.2f}s")
    return "\n".join(lines) + "\n"
