# ruff: noqa: RUF001 - upstream's report uses the "information" emoji, not an "i"
"""``clustermesh-apiserver kvstoremesh-dbg`` and ``clustermesh-dbg``, as real commands.

* ``kvstoremesh-dbg status`` as a process against an in-process KVStoreMesh on real etcd
  (text, json, yaml, jsonpath, ``--verbose``, the persistent ``-H``) and against a closed
  port (upstream's hint, exit 1);
* ``clustermesh-dbg troubleshoot`` and ``kvstoremesh-dbg troubleshoot`` against a real
  etcd with TLS and ``--client-cert-auth`` (harness PKI): a good client certificate, none,
  a config without the CA, an invalid cluster name, a filtered subset, a missing
  directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from harness import EtcdServer, Pki, free_port
from harness.mesh import MeshEnv, sample_state

from clustermesh_tools import apiserver_binary as apiserver_main

REPO = Path(__file__).resolve().parents[1]


async def run_cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clustermesh_tools.apiserver_binary", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_kvstoremesh_dbg_status_against_a_running_daemon(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1, service_exports=True)
    await c1.publish(sample_state("cluster1", 1))
    await c1.write_canaries()
    mesh = await mesh_env.start_mesh(leader_election_identity="kvstoremesh-0")
    await mesh_env.wait_ready()
    host = f"127.0.0.1:{mesh.port('api')}"
    (code, out, err), (jcode, jout, _), (ycode, yout, _), (pcode, pout, _), \
        (vcode, vout, _) = await asyncio.gather(
            run_cli("kvstoremesh-dbg", "status", "-H", host),
            run_cli("kvstoremesh-dbg", "status", f"--host={host}", "-o", "json"),
            run_cli("kvstoremesh-dbg", "status", "-H", host, "-o", "yaml"),
            run_cli("kvstoremesh-dbg", "status", "-H", host,
                    "-o", "jsonpath={[*].name}={[0].ready}"),
            # -H is a persistent flag of kvstoremesh-dbg, as upstream.
            run_cli("kvstoremesh-dbg", "-H", host, "status", "--verbose"))
    assert (code, err) == (0, ""), err
    # Upstream's lines, then ours: the role of the replica that answered.
    assert out.splitlines()[:-1] == [
        "KVStoreMesh:\t1/1 clusters ready",
        "   cluster1: ready, 2 nodes, 4 endpoints, 1 identities, 2 services, "
        "1 MCS-API service exports, 0 reconnections (last: never), 0 endpointslices"]
    assert out.splitlines()[-1].startswith(
        "Leader election:\tleader: this replica (kvstoremesh-0, lease "), out
    assert jcode == ycode == pcode == vcode == 0
    (doc,) = json.loads(jout)
    assert (doc["name"], doc["ready"], doc["num-endpoints"]) == ("cluster1", True, 4)
    assert yaml.safe_load(yout) == json.loads(jout)
    assert pout == "cluster1=true\n"
    assert vout.splitlines()[-2] == (
        "   └  synchronization status: nodes=true, endpoints=true, identities=true, "
        "services=true, service-exports=true")


async def test_kvstoremesh_dbg_status_refused_connection_hints() -> None:
    host = f"127.0.0.1:{free_port()}"
    code, out, err = await run_cli("kvstoremesh-dbg", "status", "-H", host)
    assert (code, out) == (1, "")
    assert err.startswith("Failed to retrieve status information: ")
    assert f"is KVStoreMesh running and serving the API on {host}?" in err


# ------------------------------------------------------------------ troubleshoot


def _report(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert apiserver_main.main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_clustermesh_dbg_troubleshoot_against_a_tls_etcd(
        tmp_path: Path, etcd_tls: EtcdServer, pki: Pki,
        capsys: pytest.CaptureFixture[str]) -> None:
    good = etcd_tls.client_config(tmp_path / "good.yaml", client=pki.client("remote"))
    out = _report(capsys, ["clustermesh-dbg", "troubleshoot", f"--etcd-config={good}",
                           "--timeout=5s"])
    lines = out.splitlines()
    assert lines[:2] == ["Local etcd kvstore:", f"📄 Configuration path: {good}"]
    for expected in ("🔌 Endpoints:", f"   - {etcd_tls.endpoints[0]}",
                     "     ✅ Hostname resolved to: 127.0.0.1",
                     "🔑 Digital certificates:", "   ✅ TLS Root CA certificates:",
                     "   ✅ TLS client certificates:", "⚙️ Etcd client:",
                     "   ✅ Etcd connection successfully established",
                     f"   ℹ️  Etcd cluster ID: {etcd_tls.cluster_id():x}"):
        assert expected in lines, (expected, out)
    port = etcd_tls.endpoints[0].rsplit(":", 1)[1]
    assert f"     ✅ TLS connection successfully established to 127.0.0.1:{port}" in lines
    assert f"     ℹ️  Etcd server version: {etcd_tls.version}" in lines
    assert any("Subject:             CN=remote" in line for line in lines)
    assert "❌" not in out

    # No client certificate: etcd's --client-cert-auth refuses the session.
    bare = etcd_tls.client_config(tmp_path / "bare.yaml")
    out = _report(capsys, ["clustermesh-dbg", "troubleshoot", f"--etcd-config={bare}",
                           "--timeout=2s"])
    assert "   ℹ️  No client certificate configured" in out
    assert re.search(r"     ❌ (Cannot establish TLS connection|The server refused)", out), out
    assert "   ❌ Failed to establish connection: " in out


def test_kvstoremesh_dbg_troubleshoot_config_directory(
        tmp_path: Path, etcd_tls: EtcdServer, pki: Pki, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "clustermesh"
    cfg.mkdir()
    etcd_tls.client_config(cfg / "cluster1", client=pki.client("remote"))
    (cfg / "Bad_Name").write_text(f"endpoints:\n- {etcd_tls.endpoints[0]}\n")
    (cfg / "common-etcd-client.crt").write_text("not a config")  # not counted
    local = etcd_tls.client_config(tmp_path / "local.yaml", client=pki.client("root"))
    monkeypatch.setenv("CLUSTER_NAME", "cluster1")
    out = _report(capsys, ["kvstoremesh-dbg", "troubleshoot", "--include-local",
                           f"--etcd-config={local}", f"--clustermesh-config={cfg}"])
    head, _, clusters = out.partition("Found 2 cluster configurations\n")
    assert head.startswith(f"Local etcd kvstore:\n📄 Configuration path: {local}\n")
    assert 'Cluster "Bad_Name":\n❌ Invalid cluster name: ' in clusters
    assert f'Cluster "cluster1":\nℹ️  This is the local cluster (CLUSTER_NAME)\n'  \
           f"📄 Configuration path: {cfg / 'cluster1'}\n" in clusters
    # Local and cluster1 connect; Bad_Name, with no CA configured, fails verification.
    assert out.count("✅ Etcd connection successfully established") == 2
    bad = clusters.split('Cluster "cluster1"')[0]
    assert "❌ Cannot establish TLS connection to 127.0.0.1:" in bad
    assert "CERTIFICATE_VERIFY_FAILED" in bad and "❌ Failed to establish connection" in bad

    out = _report(capsys, ["kvstoremesh-dbg", "troubleshoot", "cluster1", "missing",
                           f"--clustermesh-config={cfg}"])
    assert out.startswith("Found 2 cluster configurations\n"
                          "Troubleshooting filtered subset of clusters: cluster1, missing\n")
    assert out.endswith('\nCluster "missing":\n❌ Configuration not found\n')
    assert "Bad_Name" not in out and "Local etcd kvstore" not in out

    assert apiserver_main.main(["kvstoremesh-dbg", "troubleshoot",
                                f"--clustermesh-config={tmp_path / 'nope'}"]) == 1
    assert "cannot read the ClusterMesh configuration directory" in capsys.readouterr().err
