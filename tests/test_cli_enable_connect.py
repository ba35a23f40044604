"""``clustermesh enable``, ``connect`` and ``disconnect``: validation, certificates, files."""

from __future__ import annotations

import base64
import ipaddress
import json
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clustermesh.etcd.config import load_etcd_config
from clustermesh_tools.cli import main
from clustermesh_tools.clusters.clusterdir import ClusterDir, ClusterDirError, enable
from clustermesh_tools.clusters.pairing import connect

ROOT = Path(__file__).resolve().parent.parent


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("name", "cluster_id", "mcc", "reason"), [
    ("Cluster1", 1, 255, "lowercase alphanumeric characters and '-', and begin and end"),
    ("-c1", 1, 255, "begin and end with an alphanumeric"),
    ("c1-", 1, 255, "begin and end with an alphanumeric"),
    ("c_1", 1, 255, "lowercase alphanumeric"),
    ("a" * 33, 1, 255, "is 33 characters long, at most 32 are allowed"),
    ("default", 1, 255, "cannot be used with a non-zero cluster ID"),
    ("c1", 0, 255, "cluster ID 0 is reserved"),
    ("c1", 256, 255, "must be between 1 and 255"),
    ("c1", 512, 511, "must be between 1 and 511"),
    ("c1", 1, 300, "must be one of 255, 511"),
])
def test_enable_rejects_invalid_cluster_with_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, cluster_id: int,
        mcc: int, reason: str) -> None:
    code, _, err = _run(capsys, "enable", f"--cluster-name={name}",
                        f"--cluster-id={cluster_id}", f"--max-connected-clusters={mcc}",
                        "--output", str(tmp_path / "out"))
    assert code == 1
    assert reason in err
    assert not (tmp_path / "out").exists()


def test_enable_accepts_the_limits(tmp_path: Path) -> None:
    enable(tmp_path / "a", name="a" * 32, cluster_id=255)
    enable(tmp_path / "b", name="b", cluster_id=511, max_connected_clusters=511)
    enable(tmp_path / "c", name="0-x-9", cluster_id=1)


def test_enable_refuses_an_existing_cluster_dir(tmp_path: Path) -> None:
    enable(tmp_path / "c1", name="c1", cluster_id=1)
    with pytest.raises(ClusterDirError, match="already holds a cluster directory"):
        enable(tmp_path / "c1", name="c1", cluster_id=1)


def test_enable_kvstoremesh_flag_and_service_type(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "enable", "--cluster-name", "c1", "--cluster-id", "7",
                        "--service-type", "LoadBalancer", "--enable-kvstoremesh=false",
                        "--output", str(tmp_path / "c1"))
    assert code == 0, out
    values = yaml.safe_load((tmp_path / "c1" / "values.yaml").read_text())
    assert values["kvstoremesh"] == {"enabled": False}
    assert values["service"] == {"type": "LoadBalancer"}
    assert ClusterDir.load(tmp_path / "c1").port == 2379
    with pytest.raises(SystemExit):
        main(["enable", "--cluster-name", "c2", "--cluster-id", "2",
              "--enable-kvstoremesh=maybe", "--output", str(tmp_path / "c2")])
    with pytest.raises(SystemExit):
        main(["enable", "--cluster-name", "c2", "--cluster-id", "2",
              "--service-type", "ExternalName", "--output", str(tmp_path / "c2")])


# ---------------------------------------------------------------------------- certificates


def test_enable_certificates_chain_sans_and_cns(tmp_path: Path) -> None:
    d = enable(tmp_path / "c1", name="cluster1", cluster_id=1, address="192.0.2.10")
    ca = _cert(d.ca_file)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    expected_cn = {"admin": "admin-cluster1", "local": "local-cluster1", "remote": "remote"}
    for stem in ("server", "admin", "local", "remote"):
        cert = _cert(d.cert(stem)[0])
        cert.verify_directly_issued_by(ca)  # raises if not signed by the CA
        assert cert.issuer == ca.subject
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
        if stem in expected_cn:
            assert _cn(cert) == expected_cn[stem]
        assert (d.cert(stem)[1].stat().st_mode & 0o777) == 0o600
    server = _cert(d.cert("server")[0])
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = sans.get_values_for_type(x509.DNSName)
    ips = sans.get_values_for_type(x509.IPAddress)
    assert {"cluster1.mesh.cilium.io", "*.mesh.cilium.io", "localhost",
            "clustermesh-apiserver.kube-system.svc"} <= set(dns)
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("192.0.2.10")} <= set(ips)


def test_shared_ca_and_ca_dir(tmp_path: Path) -> None:
    a = enable(tmp_path / "a", name="a", cluster_id=1, ca_dir=tmp_path / "ca")
    b = enable(tmp_path / "b", name="b", cluster_id=2, ca_dir=tmp_path / "ca")
    assert a.ca_file.read_bytes() == b.ca_file.read_bytes() == (
        tmp_path / "ca" / "ca.crt").read_bytes()
    assert not (a.certs / "ca.key").exists()  # the key stays in the CA directory
    c = enable(tmp_path / "c", name="c", cluster_id=3, shared_ca=tmp_path / "ca" / "ca.crt")
    ca = _cert(tmp_path / "ca" / "ca.crt")
    for d in (a, b, c):
        _cert(d.cert("server")[0]).verify_directly_issued_by(ca)
        _cert(d.cert("remote")[0]).verify_directly_issued_by(ca)
    # --shared-ca with the key somewhere else
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "the.key").write_bytes((tmp_path / "ca" / "ca.key").read_bytes())
    (tmp_path / "k" / "ca.pem").write_bytes((tmp_path / "ca" / "ca.crt").read_bytes())
    with pytest.raises(ClusterDirError, match="--shared-ca-key"):
        enable(tmp_path / "d", name="d", cluster_id=4, shared_ca=tmp_path / "k" / "ca.pem")
    enable(tmp_path / "e", name="e", cluster_id=5, shared_ca=tmp_path / "k" / "ca.pem",
           shared_ca_key=tmp_path / "k" / "the.key")


# ---------------------------------------------------------------------------- files


def test_enable_writes_values_and_secrets_for_the_chart(tmp_path: Path) -> None:
    d = enable(tmp_path / "c1", name="cluster1", cluster_id=1, ca_dir=tmp_path / "ca")
    e = enable(tmp_path / "c2", name="cluster2", cluster_id=2, ca_dir=tmp_path / "ca",
               address="10.0.0.2", port=2379)
    connect(d, e)
    values = yaml.safe_load((d.path / "values.yaml").read_text())
    assert values["cluster"] == {"name": "cluster1", "id": 1}
    assert values["maxConnectedClusters"] == 255
    assert values["service"] == {"type": "NodePort", "nodePort": 32379}
    assert values["clustermesh"]["config"]["clusters"] == [
        {"name": "cluster2", "address": "10.0.0.2", "port": 2379}]
    chart = yaml.safe_load((ROOT / "helm/clustermesh/values.yaml").read_text())
    for key in ("serverSecret", "adminSecret", "remoteSecret"):
        assert key in chart["tls"]
        assert values["tls"][key] == chart["tls"][key]
    secrets = list(yaml.safe_load_all((d.path / "secrets.yaml").read_text()))
    by_name = {s["metadata"]["name"]: s for s in secrets}
    assert {values["tls"][k] for k in ("serverSecret", "adminSecret", "remoteSecret")} \
        <= set(by_name)
    assert values["tls"]["authMode"] == chart["tls"]["authMode"] == "migration"
    admin = by_name[values["tls"]["adminSecret"]]
    assert admin["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(admin["data"]["tls.crt"]))
    assert _cn(cert) == "admin-cluster1"
    assert base64.b64decode(admin["data"]["ca.crt"]) == d.ca_file.read_bytes()


def test_values_match_the_chart_schema(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    d = enable(tmp_path / "c1", name="cluster1", cluster_id=1)
    e = enable(tmp_path / "c2", name="cluster2", cluster_id=2)  # another CA: own tls
    connect(d, e)
    values = yaml.safe_load((d.path / "values.yaml").read_text())
    schema_file = ROOT / "helm/clustermesh/values.schema.json"
    if not schema_file.exists():
        pytest.skip("no chart schema")
    chart = yaml.safe_load((ROOT / "helm/clustermesh/values.yaml").read_text())
    merged = _merge(chart, values)
    jsonschema.validate(merged, json.loads(schema_file.read_text()))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(
            base.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------- connect


def test_connect_writes_both_directions(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    a = enable(tmp_path / "a", name="a", cluster_id=1, ca_dir=tmp_path / "ca",
               address="127.0.0.1", port=1111)
    b = enable(tmp_path / "b", name="b", cluster_id=2, ca_dir=tmp_path / "ca",
               address="b.example.org", port=2222)
    code, _, err = _run(capsys, "connect", "--source", str(a.path),
                          "--destination", str(b.path))
    assert code == 0, err
    cfg_ab = load_etcd_config(a.config_dir / "b")
    cfg_ba = load_etcd_config(b.config_dir / "a")
    assert [str(e) for e in cfg_ab.endpoints] == ["https://b.example.org:2222"]
    assert [str(e) for e in cfg_ba.endpoints] == ["https://127.0.0.1:1111"]
    for cfg, src in ((cfg_ab, a), (cfg_ba, b)):
        assert cfg.cert_file == src.config_dir / "common-etcd-client.crt"
        assert _cn(_cert(cfg.cert_file)) == "remote"
        assert cfg.trusted_ca_file is not None
        assert cfg.trusted_ca_file.read_bytes() == src.ca_file.read_bytes()
    assert [r.name for r in ClusterDir.load(a.path).remotes] == ["b"]
    assert [r.name for r in ClusterDir.load(b.path).remotes] == ["a"]


@pytest.mark.parametrize(("b_kwargs", "reason"), [
    ({"name": "a", "cluster_id": 2}, "both clusters are named 'a'"),
    ({"name": "b", "cluster_id": 1}, "both have cluster ID 1"),
    ({"name": "b", "cluster_id": 2, "max_connected_clusters": 511},
     "has maxConnectedClusters 255 but b has 511"),
])
def test_connect_refuses_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         b_kwargs: dict, reason: str) -> None:
    a = enable(tmp_path / "a", name="a", cluster_id=1, ca_dir=tmp_path / "ca")
    b = enable(tmp_path / "b", ca_dir=tmp_path / "ca", **b_kwargs)
    code, _, err = _run(capsys, "connect", "--source", str(a.path),
                        "--destination", str(b.path))
    assert code == 1
    assert reason in err
    assert not [p for p in a.config_dir.iterdir() if not p.name.startswith("common-")]


def test_connect_refuses_an_id_already_in_the_mesh(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    a = enable(tmp_path / "a", name="a", cluster_id=1, ca_dir=ca)
    b = enable(tmp_path / "b", name="b", cluster_id=2, ca_dir=ca)
    c = enable(tmp_path / "c", name="c", cluster_id=2, ca_dir=ca)
    connect(a, b)
    with pytest.raises(ClusterDirError, match="which b \\(already connected to a\\) uses too"):
        connect(ClusterDir.load(a.path), c)


def test_connect_with_different_cas(tmp_path: Path) -> None:
    a = enable(tmp_path / "a", name="a", cluster_id=1)  # own CA each, keys in certs/
    b = enable(tmp_path / "b", name="b", cluster_id=2)
    connect(a, b)
    cfg = load_etcd_config(a.config_dir / "b")
    assert cfg.cert_file == a.config_dir / "b.etcd-client.crt"
    _cert(cfg.cert_file).verify_directly_issued_by(_cert(b.ca_file))
    assert cfg.trusted_ca_file is not None
    assert cfg.trusted_ca_file.read_bytes() == b.ca_file.read_bytes()
    values = yaml.safe_load((a.path / "values.yaml").read_text())
    entry = values["clustermesh"]["config"]["clusters"][0]
    assert set(entry["tls"]) == {"cert", "key", "caCert"}
    # Without the other CA's key no acceptable certificate can be made.
    c = enable(tmp_path / "c", name="c", cluster_id=3)
    (c.certs / "ca.key").unlink()
    with pytest.raises(ClusterDirError, match="use different CAs"):
        connect(ClusterDir.load(a.path), ClusterDir.load(c.path))


def test_generated_values_render_with_the_chart(tmp_path: Path) -> None:
    """`helm template` with the generated values.yaml: the chart's schema accepts them and
    its KVStoreMesh config Secret names the same endpoints as our config directory."""
    import os
    import subprocess

    from harness.helm import HelmNotFound, cache_dir, find_helm

    try:
        helm = find_helm()
    except HelmNotFound as exc:
        pytest.skip(f"no helm binary: {exc}")
    ca = tmp_path / "ca"
    a = enable(tmp_path / "a", name="cluster1", cluster_id=1, ca_dir=ca)
    b = enable(tmp_path / "b", name="cluster2", cluster_id=2, ca_dir=ca,
               service_type="LoadBalancer", address="192.0.2.20")
    c = enable(tmp_path / "c", name="cluster3", cluster_id=3)  # another CA: own tls
    connect(a, b)
    connect(ClusterDir.load(a.path), c)
    home = str(cache_dir() / "helm-home")
    proc = subprocess.run(
        [str(helm), "template", "mesh", str(ROOT / "helm/clustermesh"), "--namespace",
         "kube-system", "--values", str(a.path / "values.yaml")],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home,
             "HELM_DATA_HOME": home})
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    config = next(d for d in docs if d["kind"] == "Secret"
                  and d["metadata"]["name"] == "cilium-kvstoremesh")
    data = {k: base64.b64decode(v).decode(errors="replace") for k, v in config["data"].items()}
    for remote in ("cluster2", "cluster3"):
        ours = load_etcd_config(a.config_dir / remote)
        assert str(ours.endpoints[0]) in data[remote]
    assert "common-etcd-client.crt" in data["cluster2"]
    assert "cluster3.etcd-client.crt" in data["cluster3"]
    assert data["cluster3.etcd-client.crt"] == (a.config_dir / "cluster3.etcd-client.crt"
                                                ).read_text()
    secret_names = {d["metadata"]["name"] for d in yaml.safe_load_all(
        (a.path / "secrets.yaml").read_text())}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    used = {v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
            if "secret" in v}
    assert used - {"cilium-kvstoremesh"} <= secret_names


# ---------------------------------------------------------------------------- auth modes


def _users(d: ClusterDir) -> list[str] | None:
    """The user names of d's users.yaml (None: no file), checked against its ConfigMap."""
    if not d.users_file.exists():
        assert not (d.path / "users-configmap.yaml").exists()
        return None
    text = d.users_file.read_text()
    doc = yaml.safe_load(text)
    assert all(u["role"] == "remote" for u in doc["users"])
    configmap = yaml.safe_load((d.path / "users-configmap.yaml").read_text())
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"] == {"name": "clustermesh-remote-users",
                                     "namespace": "kube-system",
                                     "labels": {"app.kubernetes.io/part-of": "clustermesh",
                                                "clustermesh.io/cluster": d.name}}
    assert configmap["data"] == {"users.yaml": text}
    return [u["name"] for u in doc["users"]]


@pytest.mark.parametrize(("mode", "cn", "users"), [
    ("legacy", "remote", None),
    ("migration", "remote", ["remote-c1"]),
    ("cluster", "remote-c1", ["remote-c1"]),
])
def test_enable_auth_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str,
                          cn: str, users: list[str] | None) -> None:
    code, out, err = _run(capsys, "enable", "--cluster-name", "c1", "--cluster-id", "1",
                          "--auth-mode", mode, "--output", str(tmp_path / "c1"))
    assert code == 0, err
    assert f"authMode {mode}" in out
    d = ClusterDir.load(tmp_path / "c1")
    assert d.auth_mode == mode
    assert _cn(_cert(d.cert("remote")[0])) == cn
    # What KVStoreMesh presents to every remote with the same CA.
    assert _cn(_cert(d.config_dir / "common-etcd-client.crt")) == cn
    assert (d.config_dir / "common-etcd-client.key").read_bytes() == d.cert("remote")[1] \
        .read_bytes()
    assert _users(d) == users
    assert yaml.safe_load((d.path / "values.yaml").read_text())["tls"]["authMode"] == mode
    kinds = {doc["kind"] for doc in yaml.safe_load_all((d.path / "secrets.yaml").read_text())}
    assert kinds == {"Secret"}  # the ConfigMap is the chart's to render
    remote = next(s for s in yaml.safe_load_all((d.path / "secrets.yaml").read_text())
                  if s["metadata"]["name"] == "clustermesh-apiserver-remote-cert")
    assert _cn(x509.load_pem_x509_certificate(base64.b64decode(remote["data"]["tls.crt"]))) \
        == cn


def test_enable_default_auth_mode_is_migration_and_bad_mode_refused(tmp_path: Path) -> None:
    assert enable(tmp_path / "c1", name="c1", cluster_id=1).auth_mode == "migration"
    with pytest.raises(SystemExit):
        main(["enable", "--cluster-name", "c2", "--cluster-id", "2", "--auth-mode", "strict",
              "--output", str(tmp_path / "c2")])
    with pytest.raises(ValueError, match="auth mode 'strict' is not one of legacy, "
                                         "migration, cluster"):
        enable(tmp_path / "c3", name="c3", cluster_id=3, auth_mode="strict")


def test_connect_in_cluster_mode_users_and_certificates(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    a = enable(tmp_path / "a", name="a", cluster_id=1, ca_dir=ca, auth_mode="cluster")
    b = enable(tmp_path / "b", name="b", cluster_id=2, ca_dir=ca, auth_mode="cluster",
               kvstoremesh=False)
    c = enable(tmp_path / "c", name="c", cluster_id=3, auth_mode="cluster")  # its own CA
    connect(a, b)
    connect(ClusterDir.load(a.path), c)
    connect(ClusterDir.load(b.path), ClusterDir.load(c.path))
    a, b, c = (ClusterDir.load(d.path) for d in (a, b, c))
    assert _users(a) == ["remote-a", "remote-b", "remote-c"]
    assert _users(b) == ["remote-a", "remote-c"]  # no KVStoreMesh: no remote-b
    assert _users(c) == ["remote-c", "remote-a", "remote-b"]
    for src, dst in ((a, b), (a, c), (b, a), (c, a), (c, b)):
        cfg = load_etcd_config(src.config_dir / dst.name)
        assert cfg.cert_file is not None
        cert = _cert(cfg.cert_file)
        assert _cn(cert) == f"remote-{src.name}", (src.name, dst.name)
        cert.verify_directly_issued_by(_cert(dst.ca_file))  # the CA dst's etcd trusts
    assert load_etcd_config(a.config_dir / "c").cert_file == a.config_dir / "c.etcd-client.crt"
    assert [(r.name, r.auth_mode) for r in a.remotes] == [("b", "cluster"), ("c", "cluster")]


def test_connect_refuses_cluster_mode_towards_legacy(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    a = enable(tmp_path / "a", name="a", cluster_id=1, ca_dir=ca, auth_mode="cluster")
    b = enable(tmp_path / "b", name="b", cluster_id=2, ca_dir=ca, auth_mode="legacy")
    code, _, err = _run(capsys, "connect", "--source", str(b.path), "--destination",
                        str(a.path))
    assert code == 1
    assert ("cannot connect b and a: a (authMode cluster) authenticates as remote-a, but b "
            "uses authMode legacy, whose etcd has no per-cluster users") in err
    assert not (a.config_dir / "b").exists() and not (b.config_dir / "a").exists()
    # legacy -> migration is always fine: remote exists in every etcd.
    enable(tmp_path / "c", name="c", cluster_id=3, ca_dir=ca, auth_mode="migration")
    connect(ClusterDir.load(b.path), ClusterDir.load(tmp_path / "c"))


def test_migrating_a_mesh_through_connect(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    dirs = {n: enable(tmp_path / n, name=n, cluster_id=i, ca_dir=ca, auth_mode="legacy")
            for i, n in enumerate("abc", start=1)}

    def load(n: str) -> ClusterDir:
        return ClusterDir.load(dirs[n].path)

    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        connect(load(x), load(y))
    assert all(_users(load(n)) is None for n in "abc")
    # Straight to cluster: a's other remote c is legacy and would lock a out.
    with pytest.raises(ClusterDirError, match="a \\(authMode cluster\\) authenticates as "
                                              "remote-a, but c uses authMode legacy"):
        connect(load("a"), load("b"), auth_mode="cluster")
    assert load("a").auth_mode == "legacy"
    assert _cn(_cert(load("a").cert("remote")[0])) == "remote"
    # Every cluster to migration (users, same certificates), then to cluster.
    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        code, out, err = _run(capsys, "connect", "--source", str(dirs[x].path),
                              "--destination", str(dirs[y].path), "--auth-mode", "migration")
        assert code == 0, err
        assert f"{x}: authMode migration, authenticates as remote;" in out
    assert _users(load("a")) == ["remote-a", "remote-b", "remote-c"]
    assert _cn(_cert(load("a").config_dir / "common-etcd-client.crt")) == "remote"
    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        connect(load(x), load(y), auth_mode="cluster")
    for n in "abc":
        d = load(n)
        assert d.auth_mode == "cluster"
        assert _cn(_cert(d.config_dir / "common-etcd-client.crt")) == f"remote-{n}"
        _cert(d.config_dir / "common-etcd-client.crt").verify_directly_issued_by(
            _cert(d.ca_file))
        assert yaml.safe_load((d.path / "values.yaml").read_text())["tls"]["authMode"] \
            == "cluster"
    # And back to legacy would lock out the other cluster-mode remotes.
    with pytest.raises(ClusterDirError, match="b \\(authMode cluster\\) authenticates as "
                                              "remote-b, but a uses authMode legacy"):
        connect(load("a"), load("c"), auth_mode="legacy")


def test_mode_switch_needs_the_ca_key_and_same_ca_remotes(tmp_path: Path) -> None:
    a = enable(tmp_path / "a", name="a", cluster_id=1)  # own CA each, keys in certs/
    b = enable(tmp_path / "b", name="b", cluster_id=2)
    c = enable(tmp_path / "c", name="c", cluster_id=3)
    connect(a, b)
    # a's certificate for b comes from b's CA: only a connect with b can re-issue it.
    with pytest.raises(ClusterDirError, match="a reaches b with a certificate of b's CA"):
        connect(ClusterDir.load(a.path), c, auth_mode="cluster")
    (c.certs / "ca.key").unlink()
    with pytest.raises(ClusterDirError, match="the remote certificate of c must be re-issued "
                                              "with CN remote-c, but its CA key"):
        connect(ClusterDir.load(b.path), ClusterDir.load(c.path), auth_mode="cluster")


def test_cluster_yaml_with_a_bad_auth_mode_names_the_file(tmp_path: Path) -> None:
    d = enable(tmp_path / "c1", name="c1", cluster_id=1)
    file = d.path / "cluster.yaml"
    file.write_text(file.read_text().replace("authMode: migration", "authMode: open"))
    with pytest.raises(ClusterDirError, match=f"{file}: authMode: auth mode 'open' is not "
                                              "one of legacy, migration, cluster"):
        ClusterDir.load(d.path)
    # Written before auth modes existed: legacy (no users.yaml was ever generated).
    file.write_text(file.read_text().replace("authMode: open\n", ""))
    assert ClusterDir.load(d.path).auth_mode == "legacy"


def test_disconnect_undoes_connect_both_directions(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    a = enable(tmp_path / "a", name="a", cluster_id=1, ca_dir=ca, auth_mode="cluster")
    b = enable(tmp_path / "b", name="b", cluster_id=2, ca_dir=ca, auth_mode="cluster")
    c = enable(tmp_path / "c", name="c", cluster_id=3, auth_mode="cluster")  # its own CA
    for x, y in ((a, b), (a, c), (b, c)):
        connect(ClusterDir.load(x.path), ClusterDir.load(y.path))
    untouched = {p.name: p.read_bytes() for p in b.path.rglob("*") if p.is_file()}
    for x, y in ((a, c), (c, a)):  # the other CA's certificate, both ways
        assert (x.config_dir / f"{y.name}.etcd-client.crt").exists()

    code, out, err = _run(capsys, "disconnect", "--source", str(a.path),
                          "--destination", str(c.path))
    assert code == 0, err
    assert out == (f"disconnected a <-> c: {a.config_dir / 'c'} and {c.config_dir / 'a'} "
                   "removed, values.yaml, users.yaml and secrets.yaml of both updated\n")
    a, c = ClusterDir.load(a.path), ClusterDir.load(c.path)
    assert [r.name for r in a.remotes] == ["b"]
    assert [r.name for r in c.remotes] == ["b"]
    # Only b's config file (and the common certificate) is left in a's config directory.
    assert sorted(p.name for p in a.config_dir.iterdir()) == [
        "b", "common-etcd-client-ca.crt", "common-etcd-client.crt", "common-etcd-client.key"]
    assert sorted(p.name for p in c.config_dir.iterdir()) == [
        "b", "b.etcd-client-ca.crt", "b.etcd-client.crt", "b.etcd-client.key",
        "common-etcd-client-ca.crt", "common-etcd-client.crt", "common-etcd-client.key"]
    assert _users(a) == ["remote-a", "remote-b"]
    assert _users(c) == ["remote-c", "remote-b"]
    for d, peer in ((a, "b"), (c, "b")):
        values = yaml.safe_load((d.path / "values.yaml").read_text())
        assert [e["name"] for e in values["clustermesh"]["config"]["clusters"]] == [peer]
    # b, connected to both, is not touched.
    assert {p.name: p.read_bytes() for p in b.path.rglob("*") if p.is_file()} == untouched

    code, out, err = _run(capsys, "disconnect", "--source", str(c.path),
                          "--destination", str(a.path))
    assert (code, out, err) == (0, "c and a are not connected: nothing to do\n", "")
    code, _, err = _run(capsys, "disconnect", "--source", str(a.path),
                        "--destination", str(a.path))
    assert code == 1
    assert "a cluster is never connected to itself" in err
    # Connecting again works as the first time.
    connect(a, c)
    assert [r.name for r in ClusterDir.load(c.path).remotes] == ["a", "b"]
