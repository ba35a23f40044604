"""Certificate rotation: ``clustermesh rotate-certs`` on directories, and on a running mesh.

The first tests work on directories (``enable`` + ``connect``, no process): which files
a rotation rewrites, what each CA rollover phase trusts and issues, and what is refused.

The last two run ``clustermesh local rotate-certs`` on one real 3-cluster local mesh
(3 etcd members per cluster, so that the etcd restarts of a CA rollover are failovers)
while every cluster's workload churns through its clustermesh-apiserver: every leaf of
every cluster, then a whole CA rollover.  Each must end with zero connection failures
and zero sync errors on every daemon, no TLS connection rejected by any etcd, every
daemon reconnected with the new files, and every cache exactly equal to its source;
after the rollover a certificate of the old CA is rejected.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import random
import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from harness.convergence import read_keyspace
from harness.waiting import wait_until
from test_localmesh import _out, cm, running_mesh

from apiserver.sample import workload
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.errors import EtcdError
from clustermesh.etcdbin import EtcdNotFound, find_etcd_binary
from clustermesh.keys import ENDPOINT_SLICES, ENDPOINTS, IDENTITIES, NODES, SERVICES
from clustermesh.pki import CertificateAuthority, certificate_problems, write_atomic
from clustermesh_tools.clusters.clusterdir import LEAVES, ClusterDir, ClusterDirError, enable
from clustermesh_tools.clusters.pairing import connect
from clustermesh_tools.clusters.rotation import rotate_certs

# ---------------------------------------------------------------------------- directories

NOW = dt.datetime.now(dt.UTC)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _bundle(path: Path) -> list[str]:
    """The subject CNs of the certificates of a PEM file, in order."""
    return [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(
        path.read_bytes())]


@pytest.fixture
def mesh_dirs(tmp_path: Path) -> list[ClusterDir]:
    ca_dir = tmp_path / "ca"
    dirs = [enable(tmp_path / name, name=name, cluster_id=i, ca_dir=ca_dir)
            for i, name in enumerate(("c1", "c2", "c3"), start=1)]
    for i, a in enumerate(dirs):
        for b in dirs[i + 1:]:
            connect(a, b)
    return [ClusterDir.load(d.path) for d in dirs]


def _serials(d: ClusterDir) -> dict[str, int]:
    return {stem: _cert(d.cert(stem)[0]).serial_number for stem in LEAVES}


def test_leaf_rotation_reissues_what_enable_issued(mesh_dirs: list[ClusterDir]) -> None:
    d = mesh_dirs[0]
    before = {stem: _cert(d.cert(stem)[0]) for stem in LEAVES}
    secrets_before = (d.path / "secrets.yaml").read_text()
    result = rotate_certs([d])
    assert result.reload and not result.restart_etcd and result.next_phase is None
    for stem, old in before.items():
        new = _cert(d.cert(stem)[0])
        assert new.serial_number != old.serial_number, stem
        assert new.subject == old.subject and new.issuer == old.issuer, stem
        assert not certificate_problems(d.cert(stem)[0], d.ca_file, now=NOW), stem
    sans = x509.SubjectAlternativeName
    assert (_cert(d.cert("server")[0]).extensions.get_extension_for_class(sans).value
            == before["server"].extensions.get_extension_for_class(sans).value)
    # The config directory's copy of the remote certificate and the Secrets follow.
    assert (d.config_dir / "common-etcd-client.crt").read_bytes() == \
        d.cert("remote")[0].read_bytes()
    secrets = (d.path / "secrets.yaml").read_text()
    assert secrets != secrets_before
    data = {doc["metadata"]["name"]: doc["data"] for doc in yaml.safe_load_all(secrets)}
    assert base64.b64decode(data["clustermesh-apiserver-server-cert"]["tls.crt"]) == \
        d.cert("server")[0].read_bytes()


def test_one_component_only(mesh_dirs: list[ClusterDir]) -> None:
    d = mesh_dirs[1]
    before = _serials(d)
    result = rotate_certs([d], components=["server"])
    after = _serials(d)
    assert [s for s in LEAVES if after[s] != before[s]] == ["server"]
    assert not result.reload  # etcd reads its server certificate per connection


def test_ca_rollover_phases(mesh_dirs: list[ClusterDir]) -> None:
    c1, c2, c3 = mesh_dirs
    old_ca = _cert(c1.ca_file)
    with pytest.raises(ClusterDirError, match="cluster c1 has not begun a CA rollover"):
        rotate_certs([c1], new_ca="reissue")
    # begin on c1 and c2, later on c3 given along with c1: one new CA for all three.
    begun = rotate_certs([c1, c2], new_ca="begin")
    assert begun.restart_etcd == ["c1", "c2"] and begun.next_phase == "reissue"
    rotate_certs([ClusterDir.load(c1.path), c3], new_ca="begin")
    dirs = [ClusterDir.load(d.path) for d in mesh_dirs]
    assert len({d.ca_next_key for d in dirs}) == 1
    for d in dirs:
        assert d.ca_rollover == "trusted"
        trusted = _bundle(d.ca_file)
        assert len(trusted) == 2 and trusted[0] == old_ca.subject.rfc4514_string()
        assert _bundle(d.config_dir / "common-etcd-client-ca.crt") == trusted
        # Leaves of the old CA still check out against the bundle.
        assert not certificate_problems(d.cert("admin")[0], d.ca_file, now=NOW)
    with pytest.raises(ClusterDirError, match="cluster c1 still issues from the old CA"):
        rotate_certs(dirs, new_ca="finish")

    reissued = rotate_certs(dirs, new_ca="reissue")
    assert reissued.next_phase == "finish" and reissued.reload
    new_key = Path(dirs[0].ca_next_key)
    new_ca = _cert(new_key.with_suffix(".crt"))
    for d in (ClusterDir.load(d.path) for d in mesh_dirs):
        for stem in LEAVES:
            _cert(d.cert(stem)[0]).verify_directly_issued_by(new_ca)
    # A leaf re-issued from the old CA after all (a restored backup) blocks finish.
    c2_now = ClusterDir.load(c2.path)
    CertificateAuthority.load(c2_now.ca_key_file.with_suffix(".crt"), c2_now.ca_key_file,
                              dir=c2_now.certs).issue_client("local-c2", stem="local")
    with pytest.raises(ClusterDirError, match=r"cluster c2: local\.crt not issued by the new"):
        rotate_certs([ClusterDir.load(d.path) for d in mesh_dirs], new_ca="finish")
    rotate_certs([c2_now], components=["local"])  # mid-rollover: issued by the new CA

    finished = rotate_certs([ClusterDir.load(d.path) for d in mesh_dirs], new_ca="finish")
    assert finished.restart_etcd == ["c1", "c2", "c3"]
    assert any(str(c1.ca_key_file) in note for note in finished.notes)
    for d in (ClusterDir.load(d.path) for d in mesh_dirs):
        assert d.ca_rollover == "" and d.ca_key_file == new_key
        assert _bundle(d.ca_file) == [new_ca.subject.rfc4514_string()]
        assert _bundle(d.config_dir / "common-etcd-client-ca.crt") == _bundle(d.ca_file)
        # A later leaf rotation issues from the new CA.
        rotate_certs([d], components=["admin"])
        _cert(d.cert("admin")[0]).verify_directly_issued_by(new_ca)


def test_refusals_name_the_cluster(tmp_path: Path, mesh_dirs: list[ClusterDir]) -> None:
    other = enable(tmp_path / "x", name="x", cluster_id=9)
    with pytest.raises(ClusterDirError, match="clusters c1 and x have different CAs"):
        rotate_certs([mesh_dirs[0], other], new_ca="begin")
    other.ca_key = str(tmp_path / "nowhere.key")
    other.save()
    with pytest.raises(ClusterDirError, match=r"cluster x: the CA key \(.*nowhere\.key\)"):
        rotate_certs([ClusterDir.load(other.path)])
    before = _serials(mesh_dirs[0])
    # Every key is checked before anything is written: c1 is left as it was.
    with pytest.raises(ClusterDirError, match="cluster x"):
        rotate_certs([mesh_dirs[0], ClusterDir.load(other.path)])
    assert _serials(mesh_dirs[0]) == before


def test_cli(mesh_dirs: list[ClusterDir]) -> None:
    d = mesh_dirs[0]
    r = cm("rotate-certs", "--cluster-dir", d.path, "--component", "remote")
    assert r.returncode == 0, _out(r)
    assert "c1: remote re-issued by CA 'ca'" in r.stdout
    assert "kubectl -n kube-system apply -f" in r.stdout and "no restart" in r.stdout
    r = cm("rotate-certs", "--cluster-dir", d.path, "--new-ca", "begin", "--component", "server")
    assert r.returncode == 1 and "--new-ca begin issues no certificate" in r.stderr, _out(r)
    r = cm("rotate-certs", "--cluster-dir", d.path, "--new-ca", "begin")
    assert r.returncode == 0, _out(r)
    assert "etcd reads --trusted-ca-file only at start: restart the etcd of c1" in r.stdout
    assert "--new-ca reissue" in r.stdout


# ---------------------------------------------------------------------------- a running mesh

try:
    find_etcd_binary()
    HAVE_ETCD = True
except EtcdNotFound:  # pragma: no cover - CI installs etcd
    HAVE_ETCD = False
needs_etcd = pytest.mark.skipif(not HAVE_ETCD, reason="no etcd binary")

CLUSTERS = ("cluster1", "cluster2", "cluster3")
RESOURCES = (NODES, SERVICES, IDENTITIES, ENDPOINTS, ENDPOINT_SLICES)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with running_mesh(tmp_path_factory.mktemp("rotation") / "mesh", "--etcd-members", "3") as d:
        yield d


class Churn:
    """Rewrites every cluster's workload (1-5 nodes, 1-6 pods per app) a few times a
    second, so that the apiservers publish and the KVStoreMeshes mirror all along."""

    def __init__(self, mesh: Path, seed: int) -> None:
        self.mesh, self.rng = mesh, random.Random(seed)
        self.stopped = threading.Event()
        self.writes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _write(self, index: int, nodes: int, pods: int) -> None:
        name = CLUSTERS[index]
        objects = workload(cluster=name, cluster_id=index + 1, nodes=nodes, pods_per_app=pods)
        write_atomic(self.mesh / name / "manifests" / "workload.yaml",
                     yaml.safe_dump_all(objects, sort_keys=False))

    def _run(self) -> None:
        while not self.stopped.wait(0.3):
            for i in range(len(CLUSTERS)):
                self._write(i, self.rng.randint(1, 5), self.rng.randint(1, 6))
                self.writes += 1

    def __enter__(self) -> Churn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        for i in range(len(CLUSTERS)):  # a known final state: 4 nodes, 5 pods per app
            self._write(i, 4, 5)


async def _keyspace(d: ClusterDir) -> dict[bytes, bytes]:
    async with EtcdClient(d.etcd_config("admin"), name="test read",
                          tls_reload_interval=0) as client:
        return await read_keyspace(client)


def _under(keyspace: dict[bytes, bytes], prefix: str) -> dict[bytes, bytes]:
    """The entries under ``prefix``, by the rest of their key."""
    raw = prefix.encode()
    return {k[len(raw):]: v for k, v in keyspace.items() if k.startswith(raw)}


async def _mismatches(mesh: Path) -> list[str]:
    """Where a cache differs from its source (empty: converged exactly), and where a
    source does not hold the final workload (4 nodes)."""
    keyspaces = {name: await _keyspace(ClusterDir.load(mesh / name)) for name in CLUSTERS}
    problems = []
    for src in CLUSTERS:
        nodes = _under(keyspaces[src], NODES.state_prefix(src))
        if len(nodes) != 4:
            problems.append(f"{src} publishes {len(nodes)} nodes, not the final 4")
        for resource in RESOURCES:
            state = _under(keyspaces[src], resource.state_prefix(src))
            for dst in CLUSTERS:
                if dst == src:
                    continue
                cache = _under(keyspaces[dst], resource.cache_prefix(src))
                if cache != state:
                    problems.append(f"{dst}'s cache of {src} {resource.name}: "
                                    f"{len(cache)} keys, source {len(state)}, "
                                    f"{len(cache.keys() ^ state.keys())} differ in name")
    return problems


def _log_offsets(mesh: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in mesh.glob("*/logs/*.log")}


def _logged_since(offsets: dict[Path, int]) -> dict[Path, str]:
    out = {}
    for path, offset in offsets.items():
        with path.open("rb") as f:
            f.seek(offset)
            out[path] = f.read().decode(errors="replace")
    return out


def _failures(mesh: Path) -> dict[str, int]:
    """Per (cached-in, source): connection failures (upstream's remote_cluster_failures)."""
    r = cm("local", "status", "--dir", mesh, "-o", "json")
    assert r.returncode == 0, _out(r)
    return {f"{c['name']}<-{m['name']}": m["num-failures"]
            for c in json.loads(r.stdout) for m in c["remotes"]}


def _sync_errors(mesh: Path) -> float:
    total = 0.0
    for c in json.loads((mesh / "state.json").read_text())["clusters"]:
        for name, port in c["metrics_ports"].items():
            if name.startswith("etcd"):
                continue
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            total += sum(float(v) for v in re.findall(
                r"^\w+_kvstore_sync_errors_total\{[^}]*\} (\S+)$", text, re.M))
    return total


async def _rotate_under_churn(mesh: Path, *phases: list[str], seed: int) -> dict[Path, str]:
    """Run each ``local rotate-certs`` argument list in turn while the workload churns;
    check the result as the module docstring says; the daemons' logs since the start."""
    failures = _failures(mesh)
    assert set(failures.values()) == {0}, failures
    offsets = _log_offsets(mesh)
    with Churn(mesh, seed) as churn:
        for args in phases:
            r = await asyncio.to_thread(cm, "local", "rotate-certs", "--dir", mesh, *args)
            assert r.returncode == 0, _out(r)
    assert churn.writes > 30, churn.writes
    last: list[str] = []

    async def converged() -> bool:
        nonlocal last
        last = await _mismatches(mesh)
        return not last

    await wait_until(converged, "every cache equal to its source", timeout=30)
    assert _failures(mesh) == failures
    assert _sync_errors(mesh) == 0
    logged = _logged_since(offsets)
    for path, text in logged.items():
        if path.name.startswith("etcd"):
            assert "rejected connection" not in text, f"{path}:\n{text[-3000:]}"
        else:
            bad = [line for line in text.splitlines()
                   if re.search(r" (WARNING|ERROR|CRITICAL) ", line)]
            assert not bad, f"{path}:\n" + "\n".join(bad[:20])
    return logged


def _reconnected(logged: dict[Path, str], mesh: Path) -> None:
    """Every daemon's etcd clients re-read their files: the local etcd's (both daemons)
    and, in each KVStoreMesh, each remote's."""
    for name in CLUSTERS:
        logs = mesh / name / "logs"
        assert "local etcd: TLS files changed on disk" in logged[logs / "apiserver.log"]
        kvs = logged[logs / "kvstoremesh.log"]
        assert "local etcd: TLS files changed on disk" in kvs
        for other in CLUSTERS:
            if other != name:
                assert f"remote {other}: TLS files changed on disk" in kvs, (name, other)


@needs_etcd
async def test_every_leaf_rotated_under_churn(running: Path) -> None:
    serials = {n: _serials(ClusterDir.load(running / n)) for n in CLUSTERS}
    logged = await _rotate_under_churn(running, [], seed=1)
    for n in CLUSTERS:
        after = _serials(ClusterDir.load(running / n))
        assert all(after[s] != serials[n][s] for s in LEAVES), n
    _reconnected(logged, running)


async def _handshake(d: ClusterDir, cert: Path, key: Path) -> EtcdError | None:
    """Connect to ``d``'s etcd with this client certificate: the error, or None."""
    config = dataclasses.replace(d.etcd_config("admin"), cert_file=cert, key_file=key)
    try:
        async with EtcdClient(config, name="test handshake", dial_timeout=3.0,
                              tls_reload_interval=0) as client:
            await client.status()
    except EtcdError as exc:
        return exc
    return None


@needs_etcd
async def test_ca_rollover_under_churn(running: Path, tmp_path: Path) -> None:
    old_key = ClusterDir.load(running / "cluster1").ca_key_file
    assert old_key is not None
    old_ca = CertificateAuthority.load(old_key.with_suffix(".crt"), old_key, dir=tmp_path)
    logged = await _rotate_under_churn(running, ["--new-ca", "begin"], ["--new-ca", "reissue"],
                                       ["--new-ca", "finish"], seed=2)
    _reconnected(logged, running)
    for name in CLUSTERS:
        etcd_log = "".join(text for path, text in logged.items()
                           if path.parent.parent.name == name and path.name.startswith("etcd"))
        assert etcd_log.count("serving client traffic securely") >= 6, name  # 3 members x 2
    d = ClusterDir.load(running / "cluster1")
    assert d.ca_key_file != old_key and d.ca_rollover == ""
    # A certificate of the old CA, for a user that exists: rejected; the same user's
    # certificate of the new CA: accepted.
    stale = old_ca.issue_client("admin-cluster1", stem="stale")
    error = await _handshake(d, stale.cert_file, stale.key_file)
    assert error is not None and "handshake" in str(error).lower(), error
    fresh = CertificateAuthority.load(d.ca_key_file.with_suffix(".crt"), d.ca_key_file,
                                      dir=tmp_path).issue_client("admin-cluster1", stem="fresh")
    assert await _handshake(d, fresh.cert_file, fresh.key_file) is None
    log = (running / "cluster1" / "logs" / "etcd.log").read_text()
    assert "certificate signed by unknown authority" in log
