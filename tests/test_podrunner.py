"""The pod runner's own tests (harness/podrunner.py), with small Python containers.

The kubelet rules come first, as pure functions (``$(VAR)`` expansion, the atomic
writer's layout, volume ownership); then whole pods, run as root in their namespaces:
a container reports what it sees (uid, groups, PID, modes, owners, symlinks, environment,
read-only mounts, the image's paths) and the test compares with what the kubelet would
give it; init containers, missing objects, ConfigMap updates, signals, ``exec`` and the
in-cluster Kubernetes stand-in each get their own check.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.podrunner import (
    KUBE_SERVICE_IP,
    POD_IP,
    POD_UID,
    SERVICE_ACCOUNT_DIR,
    PodFailed,
    PodRunner,
    PodSpecError,
    atomic_write,
    expand,
    set_volume_ownership,
    unavailable_reason,
)

PY = sys.executable
NONROOT = 65532

# -- the kubelet's rules, no namespace needed ----------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("$(A)", "a"),
    ("x$(A)y$(B)z", "xaybz"),
    ("$(UNDEFINED)", "$(UNDEFINED)"),
    ("$$(A)", "$(A)"),
    ("$$", "$"),
    ("$", "$"),
    ("a$", "a$"),
    ("$x", "$x"),
    ("$(A", "$(A"),
    ("$(a$$", "$(a$"),
    ("$()", "$()"),
    ("--token=$(A)$(A)", "--token=aa"),
])
def test_expand_follows_the_kubelet(text: str, expected: str) -> None:
    assert expand(text, {"A": "a", "B": "b"}) == expected


def _layout(root: Path) -> dict[str, str]:
    """Every entry below ``root``: symlink target or ``file``/``dir``."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = (f"-> {os.readlink(path)}" if path.is_symlink()
                    else "dir" if path.is_dir() else "file")
    return out


def test_atomic_write_layout_update_and_removal(tmp_path: Path) -> None:
    assert atomic_write(tmp_path, {"users.yaml": (b"users: []\n", 0o400),
                                   "sub/x": (b"x", 0o644)})
    ts = os.readlink(tmp_path / "..data")
    assert ts.startswith("..") and ts != "..data"
    assert _layout(tmp_path) == {
        "..data": f"-> {ts}", ts: "dir", f"{ts}/users.yaml": "file", f"{ts}/sub": "dir",
        f"{ts}/sub/x": "file", "users.yaml": "-> ..data/users.yaml", "sub": "-> ..data/sub"}
    assert stat.S_IMODE((tmp_path / ts / "users.yaml").stat().st_mode) == 0o400
    assert stat.S_IMODE((tmp_path / ts).stat().st_mode) == 0o755
    assert not atomic_write(tmp_path, {"users.yaml": (b"users: []\n", 0o400),
                                       "sub/x": (b"x", 0o644)}), "unchanged: nothing written"
    time.sleep(0.01)
    assert atomic_write(tmp_path, {"users.yaml": (b"users: [a]\n", 0o400)})
    ts2 = os.readlink(tmp_path / "..data")
    assert ts2 != ts
    assert _layout(tmp_path) == {"..data": f"-> {ts2}", ts2: "dir",
                                 f"{ts2}/users.yaml": "file",
                                 "users.yaml": "-> ..data/users.yaml"}
    assert (tmp_path / "users.yaml").read_text() == "users: [a]\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
def test_volume_ownership_adds_group_read_like_the_kubelet(tmp_path: Path) -> None:
    atomic_write(tmp_path, {"tls.key": (b"k", 0o400)})
    set_volume_ownership(tmp_path, NONROOT, read_only=True)
    key = (tmp_path / "..data" / "tls.key").stat()
    assert (stat.S_IMODE(key.st_mode), key.st_uid, key.st_gid) == (0o440, 0, NONROOT)
    ts = (tmp_path / os.readlink(tmp_path / "..data")).stat()
    assert stat.S_IMODE(ts.st_mode) == 0o2755 and ts.st_gid == NONROOT
    assert os.lstat(tmp_path / "tls.key").st_gid == NONROOT  # the symlink itself


# -- pods ------------------------------------------------------------------------------------

#: The main container: writes what it sees to the emptyDir, then serves /ok on 8080 and
#: exits 0 on SIGTERM.
REPORTER = r"""
import errno, http.server, json, os, signal, stat, sys, threading
def entry(path):
    st = os.lstat(path)
    out = {"mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(st.st_mode):
        out["link"] = os.readlink(path)
    return out
def readable(path):
    try:
        open(path, "rb").read()
        return True
    except OSError as exc:
        return exc.strerror
def writable(path):
    try:
        open(path, "w").close()
        return True
    except OSError as exc:
        return errno.errorcode[exc.errno]
status = open("/proc/self/status").read()
report = {
    "argv": sys.argv[1:], "uid": os.getuid(), "gid": os.getgid(),
    "groups": sorted(os.getgroups()), "pid": os.getpid(),
    "no_new_privs": "NoNewPrivs:\t1" in status,
    "env": {k: v for k, v in os.environ.items()
            if k in ("GREETING", "FROM_CM", "FROM_SECRET", "POD_UID", "POD_IP", "COMBINED",
                     "HOSTNAME", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                     "OPTIONAL_MISSING", "PATH", "HOME")},
    "certs": {n: entry("/var/lib/certs/" + n) for n in os.listdir("/var/lib/certs")},
    "cert_key_readable": readable("/var/lib/certs/tls.key"),
    "certs_data": os.readlink("/var/lib/certs/..data"),
    "config": sorted(os.listdir("/etc/config")),
    "projected": sorted(n for n in os.listdir("/var/lib/cilium/clustermesh")
                        if not n.startswith("..")),
    "projected_ca": open("/var/lib/cilium/clustermesh/common-etcd-client-ca.crt").read(),
    "secret_write": writable("/var/lib/certs/new"),
    "scratch": entry("/var/run/scratch"),
    "init_marker": open("/var/run/scratch/init-done").read(),
    "image_file": open("/var/lib/cilium/etcd-config.yaml").read(),
    "var_run_cilium": entry("/var/run/cilium"),
    "launcher": os.access("/usr/bin/clustermesh-apiserver", os.X_OK),
    "sa": sorted(n for n in os.listdir("SA_DIR") if not n.startswith("..")),
    "sa_token_readable": readable("SA_DIR/token"),
    "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}
with open("/var/run/scratch/report.json.tmp", "w") as f:
    json.dump(report, f)
os.rename("/var/run/scratch/report.json.tmp", "/var/run/scratch/report.json")
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ok" else 404)
        self.end_headers()
        self.wfile.write(b"fine")
server = http.server.HTTPServer(("", 8080), Ok)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
sys.exit(0)
""".replace("SA_DIR", SERVICE_ACCOUNT_DIR)

#: PID 1 without a SIGTERM handler: the kernel does not deliver SIGTERM to it.
NO_HANDLER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_DFL); time.sleep(600)"


def _pod(*, init: str = "open('/var/run/scratch/init-done', 'w').write(str(__import__('os')"
                        ".getuid()))", extra_containers: tuple[dict[str, Any], ...] = (),
         ) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "probe", "namespace": "kube-system"},
        "spec": {"template": {"metadata": {"labels": {"app": "probe"}}, "spec": {
            "securityContext": {"runAsUser": NONROOT, "runAsGroup": NONROOT,
                                "fsGroup": NONROOT, "runAsNonRoot": True,
                                "supplementalGroups": [4000]},
            "initContainers": [{
                "name": "init", "command": [PY, "-c", init],
                "volumeMounts": [{"name": "scratch", "mountPath": "/var/run/scratch"}]}],
            "containers": [{
                "name": "main", "command": [PY, "-c", REPORTER],
                "args": ["$(GREETING)", "$(UNDEFINED)", "$$(GREETING)",
                         "--uid=$(POD_UID)", "$(COMBINED)"],
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {"name": "COMBINED", "value": "$(GREETING)-$(FROM_CM)-$(LATER)"},
                    {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {
                        "name": "settings", "key": "cluster-name"}}},
                    {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {
                        "name": "certs", "key": "token"}}},
                    {"name": "OPTIONAL_MISSING", "valueFrom": {"configMapKeyRef": {
                        "name": "settings", "key": "nope", "optional": True}}},
                    {"name": "POD_UID", "valueFrom": {"fieldRef": {
                        "fieldPath": "metadata.uid"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {
                        "fieldPath": "status.podIP"}}},
                    {"name": "LATER", "value": "late"}],
                "ports": [{"name": "health", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ok", "port": "health"}},
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [
                    {"name": "certs", "mountPath": "/var/lib/certs", "readOnly": True},
                    {"name": "config", "mountPath": "/etc/config"},
                    {"name": "mesh", "mountPath": "/var/lib/cilium/clustermesh",
                     "readOnly": True},
                    {"name": "scratch", "mountPath": "/var/run/scratch"}]},
                *extra_containers],
            "volumes": [
                {"name": "certs", "secret": {
                    "secretName": "certs", "defaultMode": 0o400,
                    "items": [{"key": "tls.crt", "path": "tls.crt"},
                              {"key": "tls.key", "path": "tls.key"},
                              {"key": "ca.crt", "path": "ca.crt", "mode": 0o444}]}},
                {"name": "config", "configMap": {"name": "settings"}},
                {"name": "mesh", "projected": {"defaultMode": 0o400, "sources": [
                    {"secret": {"name": "absent-but-optional", "optional": True}},
                    {"secret": {"name": "certs", "optional": True, "items": [
                        {"key": "tls.crt", "path": "common-etcd-client.crt"},
                        {"key": "ca.crt", "path": "common-etcd-client-ca.crt"},
                        {"key": "missing-key", "path": "never"}]}}]}},
                {"name": "scratch", "emptyDir": {}}]}}}}


SECRETS = {"certs": {"tls.crt": b"CERT", "tls.key": b"KEY", "ca.crt": b"CA", "token": "t0k"}}
CONFIG_MAPS = {"settings": {"cluster-name": "cluster1", "users.yaml": "users: []\n"}}


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Callable[..., PodRunner]]:
    if (reason := unavailable_reason()) is not None:
        pytest.skip(reason)
    made: list[PodRunner] = []

    def make(manifest: dict[str, Any], **kwargs: Any) -> PodRunner:
        pod = PodRunner(manifest, workdir=tmp_path / f"pod{len(made)}",
                        secrets=kwargs.pop("secrets", SECRETS),
                        config_maps=kwargs.pop("config_maps", CONFIG_MAPS), **kwargs)
        made.append(pod)
        pod.open()
        return pod

    yield make
    for pod in made:
        pod.close()


def _wait(what: str, check: Callable[[], Any], pod: PodRunner, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{pod.report()}")
        time.sleep(0.05)


def _report(pod: PodRunner) -> dict[str, Any]:
    path = pod.volume_dir("scratch") / "report.json"
    _wait("the container's report", path.exists, pod)
    return json.loads(path.read_text())


def test_containers_see_what_the_kubelet_gives_them(runner: Callable[..., PodRunner]) -> None:
    pod = runner(_pod())
    pod.start()
    assert pod.init_status == {"init": 0}
    r = _report(pod)
    # Identity: the pod's user, fsGroup + supplementalGroups, PID 1, no_new_privs.
    assert (r["uid"], r["gid"], r["groups"]) == (NONROOT, NONROOT, [4000, NONROOT])
    assert r["pid"] == 1 and r["procs"] == [1], "own PID namespace, own /proc"
    assert r["no_new_privs"] is True
    assert r["init_marker"] == str(NONROOT)
    # $(VAR): defined ones expanded, undefined and $$ literal; env values see earlier vars.
    assert r["argv"] == ["hello", "$(UNDEFINED)", "$(GREETING)", f"--uid={POD_UID}",
                         "hello-$(FROM_CM)-$(LATER)"]
    env = r["env"]
    assert env["FROM_CM"] == "cluster1" and env["FROM_SECRET"] == "t0k"
    assert env["POD_UID"] == POD_UID and env["POD_IP"] == POD_IP
    assert "OPTIONAL_MISSING" not in env
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == (
        KUBE_SERVICE_IP, "443")
    assert env["HOSTNAME"] == pod.name and env["HOME"] == "/"
    # Secret volume: kubelet layout; 0400 + fsGroup = 0440 root:fsGroup; item mode kept.
    certs = r["certs"]
    ts = r["certs_data"]
    assert certs["..data"]["link"] == ts and ts.startswith("..")
    assert {n: certs[n].get("link") for n in ("tls.crt", "tls.key", "ca.crt")} == {
        n: f"..data/{n}" for n in ("tls.crt", "tls.key", "ca.crt")}
    assert sorted(certs) == sorted(["..data", ts, "tls.crt", "tls.key", "ca.crt"])
    key = (pod.volume_dir("certs") / ts / "tls.key").stat()
    ca = (pod.volume_dir("certs") / ts / "ca.crt").stat()
    assert (oct(stat.S_IMODE(key.st_mode)), key.st_uid, key.st_gid) == ("0o440", 0, NONROOT)
    assert oct(stat.S_IMODE(ca.st_mode)) == "0o444"
    assert r["cert_key_readable"] is True
    assert r["secret_write"] == "EROFS", "Secret volumes are mounted read-only"
    assert r["config"] == sorted(["..data", os.readlink(pod.volume_dir("config") / "..data"),
                                  "cluster-name", "users.yaml"])
    # Projected: optional missing Secret and key skipped, items renamed.
    assert r["projected"] == ["common-etcd-client-ca.crt", "common-etcd-client.crt"]
    assert r["projected_ca"] == "CA"
    # emptyDir: 2777 group fsGroup.
    assert (r["scratch"]["mode"], r["scratch"]["gid"]) == ("0o2777", NONROOT)
    # The image: upstream's etcd-config.yaml, a writable /var/run/cilium, the launcher.
    assert "https://127.0.0.1:2379" in r["image_file"]
    assert r["var_run_cilium"]["mode"] == "0o777"
    assert r["launcher"] is True
    assert r["sa"] == ["ca.crt", "namespace", "token"] and r["sa_token_readable"] is True
    # The host saw none of it.
    assert not Path("/var/lib/cilium/etcd-config.yaml").exists()
    assert not Path("/usr/bin/clustermesh-apiserver").exists()
    # The readiness probe, by port name against the pod IP.
    probe = _wait("readiness", lambda: pod.readiness("main").ok and pod.readiness("main"), pod)
    assert (probe.status, probe.body) == (200, "fine")
    assert pod.http_get(8080, "/nope").status == 404
    assert pod.terminate() == {"main": 0}
    assert pod.terminate() == {"main": 0}, "a second terminate signals nothing"


def test_exec_runs_in_the_container_and_in_the_pod(runner: Callable[..., PodRunner]) -> None:
    pod = runner(_pod())
    pod.start()
    _report(pod)
    code = ("import os; print(os.getuid(), sorted(os.getgroups()), os.environ['FROM_CM'], "
            "open('/etc/config/cluster-name').read())")
    out = pod.exec([PY, "-c", code], container="main")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(NONROOT), "[4000,", f"{NONROOT}]", "cluster1", "cluster1"]
    as_root = pod.exec([PY, "-c", "import os; print(os.getuid())"], container="main", uid=0)
    assert as_root.stdout.strip() == "0"
    # Outside the containers: the pod's network, and empty writable roots hiding the host's.
    outside = pod.exec(["ls", "-A", "/var/lib", "/run"])
    assert outside.stdout.split() == ["/run:", "/var/lib:"], outside
    assert pod.http_get(8080, "/ok").status == 200
    # The launcher runs our console script.
    out = pod.exec(["clustermesh-apiserver", "--help"], container="main")
    assert "clustermesh" in out.stdout + out.stderr


def test_config_map_update_is_an_atomic_swap(runner: Callable[..., PodRunner]) -> None:
    pod = runner(_pod())
    pod.start()
    _report(pod)
    root = pod.volume_dir("config")
    before = os.readlink(root / "..data")
    pod.update_config_map("settings", {"cluster-name": "cluster1", "new.yaml": "x: 1\n"})
    after = os.readlink(root / "..data")
    assert after != before and not (root / before).exists()
    assert sorted(os.listdir(root)) == sorted(["..data", after, "cluster-name", "new.yaml"])
    out = pod.exec(["cat", "/etc/config/new.yaml"], container="main")
    assert out.stdout == "x: 1\n"
    gone = pod.exec(["ls", "/etc/config"], container="main")
    assert "users.yaml" not in gone.stdout
    assert (root / after / "new.yaml").stat().st_gid == NONROOT


def test_sigterm_reaches_pid_1_only_if_it_handles_it(runner: Callable[..., PodRunner]) -> None:
    stubborn = {"name": "stubborn", "command": [PY, "-c", NO_HANDLER]}
    pod = runner(_pod(extra_containers=(stubborn,)))
    pod.start()
    _report(pod)
    pid1 = pod.processes["stubborn"].pid1()
    assert pod.terminate("main", "stubborn", timeout=2) == {"main": 0, "stubborn": None}
    pod.processes["stubborn"].signal(signal.SIGKILL)
    assert pod.processes["stubborn"].wait(5) == 137
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid1}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{pid1}").exists(), "the container dies with its forwarder"


def test_failing_init_container_fails_the_run(runner: Callable[..., PodRunner]) -> None:
    pod = runner(_pod(init="import sys; print('boom: no data dir'); sys.exit(3)"))
    with pytest.raises(PodFailed, match=r"(?s)init container init exited 3:.*boom: no data dir"):
        pod.start()
    assert "main" not in pod.processes


def test_missing_objects_refuse_the_pod(runner: Callable[..., PodRunner]) -> None:
    pod = runner(_pod(), secrets={})
    with pytest.raises(PodSpecError, match="secret certs not found"):
        pod.start()
    no_key = runner(_pod(), config_maps={"settings": {"users.yaml": ""}})
    with pytest.raises(PodSpecError, match="configMapKeyRef settings/cluster-name not found"):
        no_key.start()


KUBE_CLIENT = """
import asyncio
from kubernetes_asyncio import client, config
async def main():
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        namespaces = await client.CoreV1Api(api).list_namespace()
        print(configuration.host, [n.metadata.name for n in namespaces.items])
asyncio.run(main())
"""


def test_in_cluster_kubernetes_stand_in(runner: Callable[..., PodRunner]) -> None:
    pod = runner(_pod())
    pod.start()
    _report(pod)
    refused = pod.http_get(443, "/", host=KUBE_SERVICE_IP)
    assert (refused.status, refused.body.split(":")[0]) == (0, "ConnectionRefusedError")
    pod.start_kube([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}])
    out = pod.exec([PY, "-c", KUBE_CLIENT], container="main")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"https://{KUBE_SERVICE_IP}:443 ['demo']"
