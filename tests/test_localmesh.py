"""``clustermesh local``: a real 3-cluster mesh (etcd + apiserver + KVStoreMesh each).

One module-scoped mesh, driven through the CLI in subprocesses exactly as a user
would (so its processes outlive the command that started them).  The tests run in
file order: up → status/check → kill an etcd → status/troubleshoot name it →
restart → check passes → down leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from clustermesh.etcd import auth
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcdbin import EtcdNotFound, find_etcd_binary
from clustermesh_tools.clusters.clusterdir import ClusterDir
from clustermesh_tools.localmesh import procs
from clustermesh_tools.localmesh.mesh import LocalMesh

ROOT = Path(__file__).resolve().parent.parent

try:
    find_etcd_binary()
except EtcdNotFound as exc:  # pragma: no cover - CI installs etcd
    pytest.skip(str(exc), allow_module_level=True)


def cm(*args: object, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "clustermesh_tools.cli", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def _out(r: subprocess.CompletedProcess[str]) -> str:
    return f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def _kill_leftovers(d: Path) -> None:
    if (d / "state.json").exists():
        for rec in LocalMesh.load(d).processes.values():
            procs.kill(rec)


@contextlib.contextmanager
def running_mesh(d: Path, *up_args: str) -> Iterator[Path]:
    """A local mesh started by ``local up --dir d *up_args``, stopped (directory kept for
    the logs) and its processes killed if still alive, however the test ends."""
    r = cm("local", "up", "--dir", d, *up_args)
    try:
        assert r.returncode == 0, _out(r)
        yield d
    finally:
        if (d / "state.json").exists():
            cm("local", "down", "--dir", d, "--keep")
            _kill_leftovers(d)


@pytest.fixture(scope="module")
def mesh_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with running_mesh(tmp_path_factory.mktemp("localmesh") / "mesh") as d:
        yield d


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_starts_three_ready_clusters(mesh_dir: Path) -> None:
    mesh = LocalMesh.load(mesh_dir)
    assert [c.name for c in mesh.clusters] == ["cluster1", "cluster2", "cluster3"]
    assert [c.id for c in mesh.clusters] == [1, 2, 3]
    assert len(mesh.processes) == 9
    assert all(mesh.running().values())
    for c in mesh.clusters:
        others = sorted(o.name for o in mesh.clusters if o is not c)
        configs = sorted(p.name for p in (c.dir / "clustermesh").iterdir()
                         if not p.name.startswith("common-"))
        assert configs == others
        assert (c.dir / "manifests" / "workload.yaml").exists()
        for log in ("etcd.log", "apiserver.log", "kvstoremesh.log"):
            assert (c.dir / "logs" / log).exists()

    r = cm("local", "status", "--dir", mesh_dir, "-o", "json")
    assert r.returncode == 0, _out(r)
    statuses = json.loads(r.stdout)
    assert [s["name"] for s in statuses] == ["cluster1", "cluster2", "cluster3"]
    for s in statuses:
        assert s["ready"]
        assert len(s["remotes"]) == 2
        for remote in s["remotes"]:
            assert remote["ready"] and remote["connected"]
            assert remote["num-nodes"] == 3 and remote["num-identities"] == 2
            assert remote["num-shared-services"] == 1
    r = cm("local", "status", "--dir", mesh_dir)
    assert "6/6 KVStoreMesh connections ready" in r.stdout, _out(r)
    _assert_no_failures(statuses, r.stdout)


def _assert_no_failures(statuses: list[dict], text: str) -> None:
    """Right after `up`: KVStoreMesh started only once every etcd had its users and
    cluster-config, so no connection of any remote failed (upstream's
    remote_cluster_failures, "N failures" in the text)."""
    failures = {(s["name"], remote["name"]): remote["num-failures"]
                for s in statuses for remote in s["remotes"]}
    assert failures and set(failures.values()) == {0}, failures
    assert text.count(" 0 failures") == len(failures), text


# A metric each component always exports (the apiserver's and KVStoreMesh's own
# namespace; etcd's server metrics).
METRIC_PREFIX = {"apiserver": "cilium_clustermesh_apiserver_",
                 "kvstoremesh": "cilium_kvstoremesh_", "etcd": "etcd_server_"}


def _scrape(url: str) -> str:
    """GET ``url``: 200 with Prometheus text; its body."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200, url
        assert resp.headers["Content-Type"].startswith("text/plain"), resp.headers
        return resp.read().decode()


def _metric_names(text: str) -> set[str]:
    return {line.split("{")[0].split()[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def _promtool_check(config: Path) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():  # pragma: no cover - CI installs promtool
        pytest.skip("promtool not installed")
    r = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, _out(r)


def test_metrics_endpoints_and_prometheus_config(mesh_dir: Path) -> None:
    """Every daemon serves metrics on its own loopback port, listed by `local status -o
    json`; prometheus.yml scrapes them all (one job per component, a cluster label) and
    passes promtool."""
    mesh = LocalMesh.load(mesh_dir)
    state = json.loads((mesh_dir / "state.json").read_text())
    r = cm("local", "status", "--dir", mesh_dir, "-o", "json")
    assert r.returncode == 0, _out(r)
    listed = {s["name"]: s["metrics"] for s in json.loads(r.stdout)}
    ports: list[int] = []
    for c, doc in zip(mesh.clusters, state["clusters"], strict=True):
        assert set(doc["metrics_ports"]) == {"apiserver", "kvstoremesh", "etcd"}
        assert listed[c.name] == {name: f"http://127.0.0.1:{port}/metrics"
                                  for name, port in doc["metrics_ports"].items()}
        ports += doc["metrics_ports"].values()
        for component, url in listed[c.name].items():
            names = _metric_names(_scrape(url))
            assert any(n.startswith(METRIC_PREFIX[component]) for n in names), (url, names)
    other = [p for c in mesh.clusters for p in (
        c.etcd_port, c.etcd_peer_port, c.apiserver_health_port, c.kvstoremesh_health_port,
        c.kvstoremesh_api_port)]
    assert len(set(ports)) == 9 and not set(ports) & set(other)
    # etcd's metrics are plain HTTP although its client port is TLS.
    assert mesh.processes["cluster1/etcd"].argv.count(
        f"--listen-metrics-urls=http://127.0.0.1:{mesh.cluster('cluster1').metrics_ports['etcd']}"
    ) == 1

    config = mesh_dir / "prometheus.yml"
    doc = yaml.safe_load(config.read_text())
    jobs = {j["job_name"]: j["static_configs"] for j in doc["scrape_configs"]}
    assert set(jobs) == {"clustermesh-apiserver", "kvstoremesh", "etcd"}
    job_of = {"apiserver": "clustermesh-apiserver", "kvstoremesh": "kvstoremesh",
              "etcd": "etcd"}
    for c in mesh.clusters:
        for component, port in c.metrics_ports.items():
            (static,) = [s for s in jobs[job_of[component]]
                         if s["labels"] == {"cluster": c.name}]
            assert static["targets"] == [f"127.0.0.1:{port}"]
    _promtool_check(config)
    r = cm("local", "status", "--dir", mesh_dir)
    assert f"Prometheus scrape config {config}" in r.stdout, _out(r)


def test_check_passes(mesh_dir: Path) -> None:
    r = cm("local", "check", "--dir", mesh_dir)
    assert r.returncode == 0, _out(r)
    assert "PASSED: 12/12 checks" in r.stdout
    for c in ("cluster1", "cluster2", "cluster3"):
        assert not (mesh_dir / c / "manifests" / "zz-clustermesh-check.yaml").exists()


async def test_etcd_users_and_tls(mesh_dir: Path) -> None:
    from clustermesh.etcd.errors import EtcdPermissionDenied

    d = ClusterDir.load(mesh_dir / "cluster1")
    # Agents' user: reads the cache, not the state (etcdinit's roles, facts §4.4).
    async with EtcdClient(d.etcd_config("local"), tls_reload_interval=0) as local:
        kvs, _ = await local.list_prefix(b"cilium/cache/nodes/v1/cluster2/")
        assert len(kvs) == 3
        with pytest.raises(EtcdPermissionDenied):
            await local.get(b"cilium/state/nodes/v1/cluster1/cluster1-node-0")
    troubleshoot = cm("local", "troubleshoot", "--dir", mesh_dir)
    assert troubleshoot.returncode == 0, _out(troubleshoot)
    assert "no problems found" in troubleshoot.stdout
    # authMode migration (the default): the apiserver keeps one etcd user per cluster of
    # users.yaml, while every KVStoreMesh still authenticates as remote.
    assert d.auth_mode == "migration"
    expected = {f"remote-{n}": ["remote"] for n in ("cluster1", "cluster2", "cluster3")}
    assert await _managed_users(d, expected) == expected
    assert _cn(d.config_dir / "common-etcd-client.crt") == "remote"


def _cn(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def _managed_users(d: ClusterDir, expected: dict[str, list[str]],
                         timeout: float = 15.0) -> dict[str, list[str]]:
    """The ``remote-*`` users of ``d``'s etcd once they are ``expected`` (or at timeout)."""
    async with EtcdClient(d.etcd_config("admin"), tls_reload_interval=0) as admin:
        deadline = time.monotonic() + timeout
        while True:
            users = {u: sorted(await auth.user_get(admin, u)) for u in await auth.user_list(admin)
                     if u.startswith("remote-")}
            if users == expected or time.monotonic() > deadline:
                return users
            await asyncio.sleep(0.1)


def test_up_refuses_a_running_mesh(mesh_dir: Path) -> None:
    r = cm("local", "up", "--dir", mesh_dir)
    assert r.returncode == 1
    assert "already running" in r.stderr
    assert all(LocalMesh.load(mesh_dir).running().values())


def test_killed_etcd_is_named_then_restarted(mesh_dir: Path) -> None:
    before = LocalMesh.load(mesh_dir).cluster("cluster2")
    r = cm("local", "stop", "--dir", mesh_dir, "--cluster", "cluster2", "--component", "etcd",
           "--kill")
    assert r.returncode == 0 and "killed" in r.stdout, _out(r)

    r = cm("local", "status", "--dir", mesh_dir)
    assert r.returncode == 1, _out(r)
    assert "cluster2: etcd process NOT RUNNING" in r.stdout
    # The other clusters' KVStoreMesh notice too (status checks every second).
    deadline = time.monotonic() + 20
    while True:
        r = cm("local", "status", "--dir", mesh_dir, "-o", "json")
        seen = {s["name"]: {m["name"]: m for m in s["remotes"]} for s in json.loads(r.stdout)}
        if not seen["cluster1"]["cluster2"]["connected"] and \
                not seen["cluster3"]["cluster2"]["connected"]:
            break
        assert time.monotonic() < deadline, r.stdout
        time.sleep(0.5)
    assert seen["cluster1"]["cluster3"]["ready"]
    text = cm("local", "status", "--dir", mesh_dir).stdout
    assert "cluster2: not connected as seen from cluster1" in text

    r = cm("local", "troubleshoot", "--dir", mesh_dir)
    assert r.returncode == 1, _out(r)
    assert "[FAIL] the etcd process of cluster2 is not running" in r.stdout
    assert "[FAIL] etcd unreachable at https://127.0.0.1:" in r.stdout
    assert "clustermesh local restart" in r.stdout
    assert "KVStoreMesh: remote cluster2 not connected" in r.stdout

    r = cm("local", "restart", "--dir", mesh_dir)
    assert r.returncode == 0, _out(r)
    assert "started cluster2/etcd" in r.stdout
    after = LocalMesh.load(mesh_dir)
    assert after.cluster("cluster2") == before  # same ports, same data directory
    assert all(after.running().values())
    # Its metrics are back on the same port.
    assert "etcd_server_has_leader" in _metric_names(_scrape(before.metrics["etcd"]))
    r = cm("local", "check", "--dir", mesh_dir)
    assert r.returncode == 0, _out(r)
    assert "PASSED: 12/12 checks" in r.stdout


def test_commands_on_cluster_directories(mesh_dir: Path) -> None:
    """status/check/troubleshoot outside `local`: cluster dirs or KVStoreMesh addresses."""
    dirs = [a for c in ("cluster1", "cluster2", "cluster3")
            for a in ("--cluster-dir", mesh_dir / c)]
    r = cm("status", *dirs, "--wait", "--timeout", "30s")
    assert r.returncode == 0, _out(r)
    assert "6/6 KVStoreMesh connections ready" in r.stdout
    api = LocalMesh.load(mesh_dir).cluster("cluster1").kvstoremesh_api
    r = cm("status", "--kvstoremesh-api", f"cluster1={api}")
    assert r.returncode == 0 and "cluster1: 2/2 remotes configured" in r.stdout, _out(r)
    r = cm("check", *dirs[:4])  # two of the three clusters
    assert r.returncode == 0 and "PASSED: 4/4 checks" in r.stdout, _out(r)
    r = cm("troubleshoot", *dirs)
    assert r.returncode == 0 and "no problems found" in r.stdout, _out(r)


def test_down_leaves_no_process_or_port(mesh_dir: Path) -> None:
    mesh = LocalMesh.load(mesh_dir)
    ports = [p for c in mesh.clusters for p in (
        c.etcd_port, c.etcd_peer_port, c.apiserver_health_port, c.kvstoremesh_health_port,
        c.kvstoremesh_api_port, *c.metrics_ports.values())]
    assert all(_port_open(p) for p in (c.etcd_port for c in mesh.clusters))
    r = cm("local", "down", "--dir", mesh_dir)
    assert r.returncode == 0, _out(r)
    assert not mesh_dir.exists()
    assert not any(procs.is_running(rec) for rec in mesh.processes.values())
    leftovers = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with __import__("contextlib").suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(mesh_dir).encode() in cmdline:
                    leftovers.append(pid)
    assert not leftovers
    assert not [p for p in ports if _port_open(p)]


def test_without_kvstoremesh(tmp_path: Path) -> None:
    d = tmp_path / "mesh"
    r = cm("local", "up", "--dir", d, "--names", "east,west", "--no-kvstoremesh")
    try:
        assert r.returncode == 0, _out(r)
        assert "status` and `check` need KVStoreMesh" in r.stdout
        mesh = LocalMesh.load(d)
        assert [c.name for c in mesh.clusters] == ["east", "west"]
        assert sorted(mesh.processes) == ["east/apiserver", "east/etcd", "west/apiserver",
                                          "west/etcd"]
        r = cm("local", "check", "--dir", d)
        assert r.returncode == 1 and "without KVStoreMesh" in r.stderr
        r = cm("local", "status", "--dir", d)
        assert r.returncode == 0 and "no KVStoreMesh status" in r.stdout, _out(r)
    finally:
        r = cm("local", "down", "--dir", d)
        _kill_leftovers(d)
    assert r.returncode == 0, _out(r)
    assert not d.exists()


async def test_cluster_auth_mode_mesh_converges(tmp_path: Path) -> None:
    """authMode cluster: each KVStoreMesh presents CN remote-<its cluster>, which only the
    peers' users management makes an etcd user, so a ready mesh proves it works."""
    d = tmp_path / "mesh"
    r = cm("local", "up", "--dir", d, "--clusters", "2", "--auth-mode", "cluster")
    try:
        assert r.returncode == 0, _out(r)
        assert "authMode cluster" in r.stdout
        json_status = cm("local", "status", "--dir", d, "-o", "json")
        text_status = cm("local", "status", "--dir", d)
        assert json_status.returncode == 0, _out(json_status)
        _assert_no_failures(json.loads(json_status.stdout), text_status.stdout)
        for name, peer in (("cluster1", "cluster2"), ("cluster2", "cluster1")):
            cdir = ClusterDir.load(d / name)
            assert cdir.auth_mode == "cluster"
            assert _cn(cdir.config_dir / "common-etcd-client.crt") == f"remote-{name}"
            expected = {f"remote-{n}": ["remote"] for n in (name, peer)}
            assert await _managed_users(cdir, expected) == expected
        r = cm("local", "check", "--dir", d)
        assert r.returncode == 0 and "PASSED: 4/4 checks" in r.stdout, _out(r)
        r = cm("local", "troubleshoot", "--dir", d)
        assert r.returncode == 0 and "no problems found" in r.stdout, _out(r)
    finally:
        r = cm("local", "down", "--dir", d)
        _kill_leftovers(d)
    assert r.returncode == 0, _out(r)


def test_replicas_on_a_three_member_etcd(tmp_path: Path) -> None:
    """``--etcd-members 3 --kvstoremesh-replicas 2``: each cluster's etcd is a 3-member
    cluster and two KVStoreMesh replicas share it, one leading; ``local status`` names
    the leader, and after the leader is killed the other one leads and the mesh is
    ready again."""
    d = tmp_path / "mesh"
    r = cm("local", "up", "--dir", d, "--clusters", "2", "--etcd-members", "3",
           "--kvstoremesh-replicas", "2")
    try:
        assert r.returncode == 0, _out(r)
        mesh = LocalMesh.load(d)
        assert sorted(k for k in mesh.processes if k.startswith("cluster1/")) == [
            "cluster1/apiserver", "cluster1/etcd", "cluster1/etcd-1", "cluster1/etcd-2",
            "cluster1/kvstoremesh", "cluster1/kvstoremesh-1"]
        r = cm("local", "status", "--dir", d, "-o", "json")
        assert r.returncode == 0, _out(r)
        leaders = {c["name"]: c["kvstoremeshLeader"] for c in json.loads(r.stdout)}
        assert set(leaders) == {"cluster1", "cluster2"}
        first = leaders["cluster1"]
        assert first in ("cluster1-kvstoremesh-0", "cluster1-kvstoremesh-1"), leaders
        r = cm("local", "status", "--dir", d)
        assert f"KVStoreMesh leader {first}" in r.stdout, _out(r)
        # Every replica and member serves its own metrics, and prometheus.yml lists them.
        c1_metrics = mesh.cluster("cluster1").metrics
        assert sorted(c1_metrics) == ["apiserver", "etcd", "etcd-1", "etcd-2", "kvstoremesh",
                                      "kvstoremesh-1"]
        for name, url in c1_metrics.items():
            prefix = METRIC_PREFIX[name.split("-")[0]]
            assert any(n.startswith(prefix) for n in _metric_names(_scrape(url))), url
        targets = {j["job_name"]: [t for s in j["static_configs"] for t in s["targets"]]
                   for j in yaml.safe_load((d / "prometheus.yml").read_text())[
                       "scrape_configs"]}
        assert len(targets["kvstoremesh"]) == 4 and len(targets["etcd"]) == 6, targets
        _promtool_check(d / "prometheus.yml")

        leading = "kvstoremesh" if first.endswith("-0") else "kvstoremesh-1"
        r = cm("local", "stop", "--dir", d, "--cluster", "cluster1", "--component", leading,
               "--kill")
        assert r.returncode == 0 and "killed" in r.stdout, _out(r)
        r = cm("local", "restart", "--dir", d, "--cluster", "cluster1", "--timeout", "60s")
        assert r.returncode == 0, _out(r)
        r = cm("local", "status", "--dir", d, "--wait", "--timeout", "60s", "-o", "json")
        assert r.returncode == 0, _out(r)
        (c1,) = [c for c in json.loads(r.stdout) if c["name"] == "cluster1"]
        assert c1["ready"] and c1["kvstoremeshLeader"] not in (first, "none"), c1
        # One etcd member down: the cluster keeps its quorum, the mesh stays ready.
        r = cm("local", "stop", "--dir", d, "--cluster", "cluster2", "--component", "etcd-2",
               "--kill")
        assert r.returncode == 0, _out(r)
        r = cm("local", "check", "--dir", d)
        assert r.returncode == 0, _out(r)
    finally:
        r = cm("local", "down", "--dir", d)
        _kill_leftovers(d)
    assert r.returncode == 0, _out(r)
