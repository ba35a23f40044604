"""Every vector selector of the Grafana dashboard and the alert rules matches a real series.

A real Prometheus scrapes a running 3-cluster local mesh through the ``prometheus.yml``
``clustermesh local up`` writes (its ``cluster`` target label is what the rules and
panels name clusters by).  Before the check, what makes the conditional series appear
is injected: an invalid ipcache entry in cluster1's etcd (rejected by the other
clusters' KVStoreMesh: ``rejected_entries_total``), a cluster-ID clash (cluster3's
cluster-config, with its apiserver stopped, claiming cluster2's ID: ``mesh_problems``),
and cluster2's etcd killed (failures, not-ready remotes).  The sync queue gauges and
error counters exist from the first write, at 0.  After two scrapes, each selector of
each expression, with the dashboard's variables replaced by "everything", must match at
least one series: a typo'd metric or a label that does not exist fails here instead of
showing "no data".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness.prometheus import PrometheusNotFound, PrometheusServer, find_prometheus_binary
from harness.promql import selectors
from test_localmesh import _kill_leftovers, _out, cm

from clustermesh.etcd.client import EtcdClient
from clustermesh.etcdbin import EtcdNotFound, find_etcd_binary
from clustermesh.keys import ENDPOINTS
from clustermesh_tools.clusters.clusterdir import ClusterDir

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "helm" / "clustermesh" / "dashboards" / "clustermesh.json"
# The chart's Prometheus rule files (its PrometheusRule renders them).
RULES = sorted(p for p in (ROOT / "helm" / "clustermesh" / "files").glob("*.yaml")
               if "groups" in (yaml.safe_load(p.read_text()) or {}))

try:
    find_etcd_binary()
except EtcdNotFound as exc:  # pragma: no cover - CI installs etcd
    pytest.skip(str(exc), allow_module_level=True)
try:
    find_prometheus_binary()
except PrometheusNotFound as exc:  # pragma: no cover - CI installs prometheus
    pytest.skip(str(exc), allow_module_level=True)


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expression) of every panel target, variables replaced by "everything"."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$cluster", ".*").replace("$job", ".*")
            out.append((f"{DASHBOARD.name}: {panel['title']}", expr))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    out = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((f"{path.name}: {rule.get('alert') or rule.get('record')}",
                            rule["expr"]))
    return out


async def _inject(mesh_dir: Path) -> None:
    one = ClusterDir.load(mesh_dir / "cluster1")
    async with EtcdClient(one.etcd_config("admin"), tls_reload_interval=0) as etcd:
        prefix = ENDPOINTS.state_prefix("cluster1").encode()
        await etcd.put(prefix + b"10.250.0.1", b"{not json")
        # A valid change, seen by the others' watches: propagation lag observed.
        await etcd.put(prefix + b"10.250.0.2", json.dumps(
            {"IP": "10.250.0.2", "Mask": None, "HostIP": "10.0.0.1", "ID": 2, "Key": 0,
             "Metadata": "", "K8sNamespace": "", "K8sPodName": ""}).encode())
    three = ClusterDir.load(mesh_dir / "cluster3")
    async with EtcdClient(three.etcd_config("admin"), tls_reload_interval=0) as etcd:
        config = await etcd.get(b"cilium/cluster-config/cluster3")
        assert config is not None
        doc = json.loads(config.value)
        doc["id"] = 2  # cluster2's
        await etcd.put(b"cilium/cluster-config/cluster3", json.dumps(doc).encode())


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A local mesh with the injections made, scraped by a real Prometheus."""
    base = tmp_path_factory.mktemp("observability")
    mesh_dir = base / "mesh"
    r = cm("local", "up", "--dir", mesh_dir)
    try:
        assert r.returncode == 0, _out(r)
        # cluster3's apiserver would put its own cluster-config back: the clash has to
        # come from a cluster whose apiserver is down (or misconfigured).
        r = cm("local", "stop", "--dir", mesh_dir, "--cluster", "cluster3", "--component",
               "apiserver")
        assert r.returncode == 0, _out(r)
        asyncio.run(_inject(mesh_dir))
        r = cm("local", "stop", "--dir", mesh_dir, "--cluster", "cluster2", "--component",
               "etcd", "--kill")
        assert r.returncode == 0, _out(r)
        config = yaml.safe_load((mesh_dir / "prometheus.yml").read_text())
        config["rule_files"] = [str(p) for p in RULES]
        with PrometheusServer(base / "prometheus", config=config) as server:
            deadline = time.monotonic() + 90
            # Two scrapes of every target: each has a second sample.
            while len(server.query("count_over_time(up[1m]) >= 2")) < len(
                    server.targets_health()) or not server.targets_health():
                assert server.is_running, server.log_tail()
                assert time.monotonic() < deadline, "not every target scraped twice"
                time.sleep(1)
            # The slowest injection: cluster1's KVStoreMesh sees cluster3's new config
            # after its session ends and it reconnects (a backoff later).
            while not server.series(
                    'cilium_kvstoremesh_mesh_problems{kind="duplicate-cluster-id"}'):
                assert time.monotonic() < deadline, "the cluster-ID clash was not reported"
                time.sleep(1)
            yield server
    finally:
        if (mesh_dir / "state.json").exists():
            cm("local", "down", "--dir", mesh_dir, "--keep")
            _kill_leftovers(mesh_dir)


def _missing(prometheus: PrometheusServer) -> list[str]:
    return [f"{where}: {selector}"
            for where, expr in dashboard_expressions() + rule_expressions()
            for selector in selectors(expr)
            if not prometheus.series(selector)]


def test_every_selector_matches_a_series(prometheus: PrometheusServer) -> None:
    assert len(dashboard_expressions() + rule_expressions()) >= 15
    missing = _missing(prometheus)
    assert not missing, "selectors matching no series:\n" + "\n".join(missing)
