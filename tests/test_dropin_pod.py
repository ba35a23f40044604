"""Our image inside Cilium's chart: the chart's pod specs, run as written.

``fixtures/pod-clustermesh-apiserver.yaml`` (kvstoremesh on, kvstoreMode internal,
``tls.authMode: migration``, metrics on) and ``fixtures/pod-kvstoremesh-external.yaml``
(kvstoreMode external) are transcriptions of the chart's output (facts §2).
:class:`harness.podrunner.PodRunner` runs them as the kubelet would: uid 65532, the
Secrets and ConfigMaps as 0400 files (0440 with fsGroup) in the kubelet's symlink layout,
``$(VAR)`` expanded, ``/usr/bin/clustermesh-apiserver`` = our console script, every
container PID 1 of its own PID namespace in the pod's network namespace.

The remote cluster ``cluster2`` is an etcd of its own in the same network namespace
(https://127.0.0.1:12379, client certificates required), filled the way a remote
clustermesh-apiserver fills it (harness.mesh's ``sample_state`` and ``Remote``), reached
by KVStoreMesh through the ``cilium-kvstoremesh`` Secret with the ``remote`` certificate.
The test talks to the pod's etcd with the certificates the chart hands out (facts §5
CNs), from inside the pod, with our own etcd client.

The internal pod runs once for the module and the checks go in order: etcd-init, etcd's
access control, KVStoreMesh, the apiserver without Kubernetes and then with the in-pod
Kubernetes stand-in, users.yaml live, the sysdump commands, SIGTERM.  The external pod
runs in one test of its own.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness.certs import CertificateAuthority, ClientCert
from harness.etcd import write_client_config
from harness.podrunner import PodRunner, unavailable_reason

from apiserver.sample import workload
from clustermesh.keys import ENDPOINTS, IDENTITIES, NODES, SERVICES, cluster_config_key

FIXTURES = Path(__file__).parent / "fixtures"
CLUSTER, CLUSTER_ID = "cluster1", 1
REMOTE, REMOTE_ID = "cluster2", 2
REMOTE_PORT = 12379
AGENTS_ETCD_PORT = 22379
ETCD_BIN = "/usr/bin/etcd"
CLI = "/usr/bin/clustermesh-apiserver"  # what sysdump execs (facts §8.3)
USERS = "users:\n- name: remote-cluster1\n  role: remote\n- name: remote-cluster2\n  role: remote\n"

#: Run in the pod: connect with an etcd client config, run ops, print the results as JSON
#: (values as latin-1 strings, errors as "error: <class>").
ETCD_PROBE = """
import asyncio, json, sys
from clustermesh.etcd import auth
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config

async def run(config, ops):
    client = EtcdClient(load_etcd_config(config), name="probe")
    try:
        await asyncio.wait_for(client.connect(), 10)
    except Exception as exc:
        return f"connect error: {type(exc).__name__}: {exc}"
    out = []
    try:
        for op, *args in ops:
            try:
                if op == "put":
                    await client.put(args[0].encode(), args[1].encode())
                    out.append("ok")
                elif op == "get":
                    kv = await client.get(args[0].encode())
                    out.append(None if kv is None else kv.value.decode("latin-1"))
                elif op == "list":
                    kvs, _ = await client.list_prefix(args[0].encode())
                    out.append({kv.key.decode(): kv.value.decode("latin-1") for kv in kvs})
                elif op == "users":
                    out.append({u: await auth.user_get(client, u)
                                for u in await auth.user_list(client)})
            except Exception as exc:
                out.append(f"error: {type(exc).__name__}")
    finally:
        await client.close()
    return out

print(json.dumps(asyncio.run(run(sys.argv[1], json.loads(sys.argv[2])))))
"""

#: Run in the pod: publish cluster2 as its clustermesh-apiserver would (sample objects,
#: cluster-config of a 1.18/1.19 cluster, heartbeat, sync canaries).
SEED_REMOTE = """
import asyncio, sys
from pathlib import Path
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from harness.mesh import Remote, sample_state

async def main(config, name, cluster_id):
    client = EtcdClient(load_etcd_config(config), name="seed")
    for _ in range(100):
        try:
            await client.connect()
            break
        except Exception:
            await asyncio.sleep(0.1)
    remote = Remote(name=name, server=None, client=client, config_file=Path(config),
                    config=CiliumClusterConfig(id=cluster_id, synced_canaries=True,
                                               max_connected_clusters=255))
    await remote.write_config()
    await remote.heartbeat()
    await remote.publish(sample_state(name, cluster_id))
    await remote.write_canaries()
    await client.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@dataclass
class Pki:
    dir: Path
    ca: CertificateAuthority
    certs: dict[str, tuple[Path, Path]]  # name -> (cert, key)

    def secret(self, name: str) -> dict[str, bytes]:
        cert, key = self.certs[name]
        return {"ca.crt": self.ca.ca_file.read_bytes(), "tls.crt": cert.read_bytes(),
                "tls.key": key.read_bytes()}

    def client_config(self, name: str | None, port: int = 2379) -> Path:
        """An etcd client config for the pod's etcd as ``name`` (None: no certificate)."""
        cert, key = self.certs[name] if name else (None, None)
        return write_client_config(self.dir / f"etcd-{name or 'anonymous'}-{port}.yaml",
                                   endpoints=[f"https://127.0.0.1:{port}"],
                                   ca_file=self.ca.ca_file, cert_file=cert, key_file=key)


def make_pki(dir: Path) -> Pki:
    """One CA for the mesh; certificates with the chart's CNs (facts §5)."""
    ca = CertificateAuthority(dir, name="clustermesh-ca", organization="dropin-test")
    certs: dict[str, tuple[Path, Path]] = {}
    server = ca.issue_server("clustermesh-apiserver.cilium.io", stem="server",
                             dns_names=("clustermesh-apiserver.cilium.io", "*.mesh.cilium.io",
                                        "clustermesh-apiserver.kube-system.svc"),
                             ips=("127.0.0.1", "::1"))
    certs["server"] = (server.cert_file, server.key_file)
    remote_server = ca.issue_server(f"{REMOTE}.mesh.cilium.io", stem="remote-server",
                                    dns_names=(f"{REMOTE}.mesh.cilium.io",), ips=("127.0.0.1",))
    certs["remote-server"] = (remote_server.cert_file, remote_server.key_file)
    for cn in (f"admin-{CLUSTER}", f"local-{CLUSTER}", "remote"):
        client: ClientCert = ca.issue_client(cn, stem=f"client-{cn}")
        certs[cn] = (client.cert_file, client.key_file)
    return Pki(dir=dir, ca=ca, certs=certs)


def kvstoremesh_secret() -> dict[str, str]:
    """``cilium-kvstoremesh``: one remote cluster, with the common (remote) certificate."""
    return {REMOTE: (
        f"endpoints:\n- https://127.0.0.1:{REMOTE_PORT}\n"
        "trusted-ca-file: /var/lib/cilium/clustermesh/common-etcd-client-ca.crt\n"
        "key-file: /var/lib/cilium/clustermesh/common-etcd-client.key\n"
        "cert-file: /var/lib/cilium/clustermesh/common-etcd-client.crt\n")}


def etcd_argv(name: str, data_dir: Path, port: int, *, pki: Pki | None) -> list[str]:
    """A single-member etcd on 127.0.0.1:port (peer port+1), TLS with client
    certificates when ``pki`` is given."""
    scheme = "https" if pki else "http"
    argv = [ETCD_BIN, f"--name={name}", f"--data-dir={data_dir}",
            f"--listen-client-urls={scheme}://127.0.0.1:{port}",
            f"--advertise-client-urls={scheme}://127.0.0.1:{port}",
            f"--listen-peer-urls=http://127.0.0.1:{port + 1}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{port + 1}",
            f"--initial-cluster={name}=http://127.0.0.1:{port + 1}",
            "--logger=zap", "--log-level=warn"]
    if pki:
        cert, key = pki.certs["remote-server"]
        argv += ["--client-cert-auth", f"--trusted-ca-file={pki.ca.ca_file}",
                 f"--cert-file={cert}", f"--key-file={key}"]
    return argv


def start_remote(pod: PodRunner, pki: Pki, workdir: Path) -> None:
    pod.spawn("cluster2-etcd", etcd_argv(REMOTE, workdir / "cluster2-etcd", REMOTE_PORT,
                                         pki=pki))
    seed = pod.python(SEED_REMOTE, str(pki.client_config("remote", REMOTE_PORT)), REMOTE,
                      str(REMOTE_ID), timeout=60)
    assert seed.returncode == 0, f"seeding cluster2 failed:\n{seed.stderr}\n{pod.report()}"


def etcd(pod: PodRunner, config: Path, *ops: list[str]) -> Any:
    out = pod.python(ETCD_PROBE, str(config), json.dumps(ops), timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(what: str, check: Callable[[], Any], pod: PodRunner, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})\n"
                         f"{pod.report()}")


MIRRORED = (NODES, IDENTITIES, ENDPOINTS, SERVICES)  # what a 1.18/1.19 remote exports
PROBE_KEY = "cilium/state/dropin-probe/v1/x"  # readable by `remote`, owned by no publisher


@dataclass
class MeshPod:
    pod: PodRunner
    pki: Pki
    admin: Path

    def tree(self, prefix: str, config: Path | None = None) -> dict[str, str]:
        result = etcd(self.pod, config or self.admin, ["list", prefix])
        assert isinstance(result, list) and isinstance(result[0], dict), result
        return result[0]

    def users(self) -> dict[str, list[str]]:
        result = etcd(self.pod, self.admin, ["users"])
        assert isinstance(result, list), result
        return result[0]


@pytest.fixture(scope="module")
def mesh_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshPod]:
    if (reason := unavailable_reason()) is not None:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("dropin")
    pki = make_pki(workdir / "pki")
    secrets = {"clustermesh-apiserver-server-cert": pki.secret("server"),
               "clustermesh-apiserver-admin-cert": pki.secret(f"admin-{CLUSTER}"),
               "clustermesh-apiserver-remote-cert": pki.secret("remote"),
               "cilium-kvstoremesh": kvstoremesh_secret()}
    config_maps = {"cilium-config": {"cluster-name": CLUSTER, "cluster-id": str(CLUSTER_ID)},
                   "clustermesh-remote-users": {"users.yaml": USERS}}
    with PodRunner(FIXTURES / "pod-clustermesh-apiserver.yaml", workdir=workdir / "pod",
                   secrets=secrets, config_maps=config_maps) as pod:
        start_remote(pod, pki, workdir)
        # What a previous run of the pod's containers may have left (emptyDir survives
        # container restarts): etcd-init must wipe it.
        stale = pod.volume_dir("etcd-data-dir") / "member" / "stale"
        stale.parent.mkdir(parents=True)
        stale.write_text("from a previous etcd")
        pod.start()
        yield MeshPod(pod=pod, pki=pki, admin=pki.client_config(f"admin-{CLUSTER}"))


def test_etcd_init_prepared_the_data_dir(mesh_pod: MeshPod) -> None:
    pod = mesh_pod.pod
    assert pod.init_status == {"etcd-init": 0}, pod.report()
    member = pod.volume_dir("etcd-data-dir") / "member"
    assert member.is_dir(), sorted(p.name for p in pod.volume_dir("etcd-data-dir").iterdir())
    assert not (member / "stale").exists(), "etcd-init wipes the data directory first"
    assert member.stat().st_uid == 65532, "etcd-init and etcd run as the pod's user"
    wait_for("etcd to answer the admin certificate",
             lambda: isinstance(etcd(pod, mesh_pod.admin, ["get", PROBE_KEY]), list), pod)


def test_etcd_enforces_ciliums_users(mesh_pod: MeshPod) -> None:
    pod, pki = mesh_pod.pod, mesh_pod.pki
    key = PROBE_KEY
    assert etcd(pod, mesh_pod.admin, ["put", key, "1"], ["get", key]) == ["ok", "1"]
    users = mesh_pod.users()
    for user, roles in {"root": ["root"], f"admin-{CLUSTER}": ["root"],
                        "externalworkload": ["externalworkload"],
                        f"local-{CLUSTER}": ["local"], "remote": ["remote"]}.items():
        assert users.get(user) == roles, users
    remote = etcd(pod, pki.client_config("remote"), ["get", key], ["list", "cilium/cache/"],
                  ["put", key, "2"], ["get", cluster_config_key(CLUSTER)])
    assert remote[:3] == ["1", "error: EtcdPermissionDenied", "error: EtcdPermissionDenied"]
    assert not str(remote[3]).startswith("error"), remote
    local = etcd(pod, pki.client_config(f"local-{CLUSTER}"), ["list", "cilium/cache/"],
                 ["put", "cilium/cache/nodes/v1/x/y", "1"], ["get", key])
    assert isinstance(local[0], dict)
    assert local[1:] == ["error: EtcdPermissionDenied", "error: EtcdPermissionDenied"]
    anonymous = etcd(pod, pki.client_config(None), ["get", key])
    assert isinstance(anonymous, str) and anonymous.startswith("connect error"), anonymous


def test_kvstoremesh_fills_the_cache_and_is_ready(mesh_pod: MeshPod) -> None:
    pod = mesh_pod.pod
    remote_config = mesh_pod.pki.client_config("remote", REMOTE_PORT)
    for res in MIRRORED:
        source, target = res.state_prefix(REMOTE), res.cache_prefix(REMOTE)
        expected = {target + k[len(source):]: v
                    for k, v in mesh_pod.tree(source, remote_config).items()}
        assert expected, f"cluster2 has no {res.name}"
        wait_for(f"{res.name} of cluster2 in the cache",
                 lambda t=target, e=expected: mesh_pod.tree(t) == e, pod)
        assert etcd(pod, mesh_pod.admin, ["get", res.cache_canary(REMOTE)])[0], res.name
    cached = json.loads(etcd(pod, mesh_pod.admin, ["get", cluster_config_key(REMOTE)])[0])
    assert cached["id"] == REMOTE_ID and cached["capabilities"]["cached"] is True
    ready = wait_for("KVStoreMesh's readiness", lambda: pod.readiness("kvstoremesh").ok, pod)
    assert ready
    assert "cilium_kvstoremesh_" in pod.http_get(9964, "/metrics").body
    assert re.search(r"^etcd_server_has_leader 1", pod.http_get(9963, "/metrics").body, re.M)


def test_apiserver_serves_without_kubernetes(mesh_pod: MeshPod) -> None:
    pod = mesh_pod.pod
    assert "kube-apiserver" not in pod.processes, "this check runs before the stand-in"
    for key in (cluster_config_key(CLUSTER), "cilium/.heartbeat"):
        wait_for(f"{key} written by the apiserver",
                 lambda k=key: etcd(pod, mesh_pod.admin, ["get", k])[0], pod)
    config = json.loads(etcd(pod, mesh_pod.admin, ["get", cluster_config_key(CLUSTER)])[0])
    assert config["id"] == CLUSTER_ID
    readiness = pod.readiness("apiserver")
    assert readiness.status == 500, readiness
    assert "cilium_clustermesh_apiserver_" in pod.http_get(9962, "/metrics").body


def test_apiserver_publishes_the_workload_in_cluster(mesh_pod: MeshPod) -> None:
    pod = mesh_pod.pod
    objects = workload(cluster=CLUSTER, cluster_id=CLUSTER_ID)
    pod.start_kube(objects)
    wait_for("the apiserver's readiness", lambda: pod.readiness("apiserver").ok, pod,
             timeout=60)
    nodes = mesh_pod.tree(NODES.state_prefix(CLUSTER))
    assert sorted(nodes) == [f"{NODES.state_prefix(CLUSTER)}{CLUSTER}-node-{i}"
                             for i in range(3)], sorted(nodes)
    assert len(mesh_pod.tree(IDENTITIES.state_prefix(CLUSTER))) == 2
    assert len(mesh_pod.tree(ENDPOINTS.state_prefix(CLUSTER))) == 8  # 4 pods, dual-stack
    assert list(mesh_pod.tree(SERVICES.state_prefix(CLUSTER))) == [
        f"{SERVICES.state_prefix(CLUSTER)}demo/echo"]
    canaries = mesh_pod.tree(f"cilium/synced/{CLUSTER}/")
    for res in MIRRORED:
        assert res.state_canary(CLUSTER) in canaries, canaries


def test_users_yaml_is_managed_live(mesh_pod: MeshPod) -> None:
    pod = mesh_pod.pod
    wait_for("the users of users.yaml", lambda: {"remote-cluster1", "remote-cluster2"}
             <= set(mesh_pod.users()), pod)
    pod.update_config_map("clustermesh-remote-users",
                          {"users.yaml": USERS + "- name: remote-cluster9\n  role: remote\n"})
    wait_for("remote-cluster9 created",
             lambda: mesh_pod.users().get("remote-cluster9") == ["remote"], pod)
    pod.update_config_map("clustermesh-remote-users", {"users.yaml": USERS})
    wait_for("remote-cluster9 deleted", lambda: "remote-cluster9" not in mesh_pod.users(), pod)
    assert {"remote-cluster1", "remote-cluster2", "remote"} <= set(mesh_pod.users())


def sysdump(pod: PodRunner, container: str, *args: str) -> str:
    out = pod.exec([CLI, *args], container=container, timeout=60)
    # sysdump's "unknown command" detection (facts §8.3)
    assert "Usage:" not in out.stderr and "unknown command" not in out.stderr, out.stderr
    assert out.returncode == 0, (args, out.returncode, out.stdout, out.stderr)
    return out.stdout


def test_sysdump_commands_answer(mesh_pod: MeshPod) -> None:
    pod = mesh_pod.pod
    wait_for("KVStoreMesh's readiness", lambda: pod.readiness("kvstoremesh").ok, pod)
    assert sysdump(pod, "apiserver", "version").strip()
    assert sysdump(pod, "kvstoremesh", "version").strip()
    local = sysdump(pod, "apiserver", "clustermesh-dbg", "troubleshoot")
    assert "Local etcd kvstore:" in local and "Etcd connection successfully established" in local
    status = sysdump(pod, "kvstoremesh", "kvstoremesh-dbg", "status", "--verbose")
    assert status.startswith("KVStoreMesh:\t1/1 clusters ready\n"), status
    assert re.search(rf"^   {REMOTE}: ready, 2 nodes, 4 endpoints, 1 identities, 2 services, "
                     r"\d+ MCS-API service exports, \d+ reconnections \(last: [^)]+\)", status,
                     re.M), status
    assert (f"└  remote configuration: expected=true, retrieved=true, cluster-id={REMOTE_ID}, "
            "kvstoremesh=false, sync-canaries=true") in status, status
    assert ("└  synchronization status: nodes=true, endpoints=true, identities=true, "
            "services=true") in status, status
    clusters = json.loads(sysdump(pod, "kvstoremesh", "kvstoremesh-dbg", "status", "-o", "json"))
    assert [(c["name"], c["ready"], c["num-nodes"]) for c in clusters] == [(REMOTE, True, 2)]
    trouble = sysdump(pod, "kvstoremesh", "kvstoremesh-dbg", "troubleshoot", "--include-local")
    assert "Local etcd kvstore:" in trouble and "Found 1 cluster configurations" in trouble
    assert f'Cluster "{REMOTE}":' in trouble
    assert trouble.count("Etcd connection successfully established") == 2, trouble


def test_sigterm_stops_every_container_with_status_0(mesh_pod: MeshPod) -> None:
    pod = mesh_pod.pod
    assert pod.terminate(timeout=30) == {"etcd": 0, "apiserver": 0, "kvstoremesh": 0}, \
        pod.report()


@pytest.fixture
def external_pod(tmp_path: Path) -> Iterator[tuple[PodRunner, Path]]:
    if (reason := unavailable_reason()) is not None:
        pytest.skip(reason)
    pki = make_pki(tmp_path / "pki")
    agents_etcd = write_client_config(tmp_path / "agents-etcd.yaml",
                                      endpoints=[f"http://127.0.0.1:{AGENTS_ETCD_PORT}"])
    config_maps = {"cilium-config": {"cluster-name": CLUSTER, "cluster-id": str(CLUSTER_ID),
                                     "etcd-config": agents_etcd.read_text()}}
    secrets = {"clustermesh-apiserver-remote-cert": pki.secret("remote"),
               "cilium-kvstoremesh": kvstoremesh_secret()}
    with PodRunner(FIXTURES / "pod-kvstoremesh-external.yaml", workdir=tmp_path / "pod",
                   secrets=secrets, config_maps=config_maps) as pod:
        pod.spawn("agents-etcd", etcd_argv("agents", tmp_path / "agents-etcd",
                                           AGENTS_ETCD_PORT, pki=None))
        start_remote(pod, pki, tmp_path)
        pod.start()
        yield pod, agents_etcd


def test_external_kvstoremesh_writes_cache_and_heartbeat(
        external_pod: tuple[PodRunner, Path]) -> None:
    pod, agents = external_pod
    assert set(pod.processes) == {"agents-etcd", "cluster2-etcd", "kvstoremesh"}
    # /var/lib/cilium is the etcd-config ConfigMap (the image's file hidden), 0400 + fsGroup.
    view = pod.exec(["ls", "-a", "/var/lib/cilium"], container="kvstoremesh")
    assert {"..data", "etcd-config.yaml", "clustermesh"} <= set(view.stdout.split()), view
    assert "etcd-secrets" not in view.stdout
    config = pod.exec(["cat", "/var/lib/cilium/etcd-config.yaml"], container="kvstoremesh")
    assert config.stdout == agents.read_text(), config
    mode = pod.exec(["stat", "-L", "-c", "%a %u %g", "/var/lib/cilium/etcd-config.yaml"],
                    container="kvstoremesh")
    assert mode.stdout.split() == ["440", "0", "65532"], mode

    def tree(prefix: str) -> dict[str, str]:
        result = etcd(pod, agents, ["list", prefix])
        assert isinstance(result, list) and isinstance(result[0], dict), result
        return result[0]

    wait_for("cluster2's nodes in the agents' etcd",
             lambda: len(tree(f"cilium/cache/nodes/v1/{REMOTE}/")) == 2, pod)
    wait_for("the heartbeat written by KVStoreMesh", lambda: tree("cilium/.heartbeat"), pod)
    wait_for("KVStoreMesh's readiness", lambda: pod.readiness("kvstoremesh").ok, pod)
    assert pod.terminate() == {"kvstoremesh": 0}, pod.report()
