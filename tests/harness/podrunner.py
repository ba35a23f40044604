"""Run a Kubernetes pod spec as processes in a private mount and network namespace.

No kubelet or container runtime can run where this project is tested, yet the drop-in
promise ("our image runs unchanged inside Cilium's chart") is about exactly what they do:
which paths exist, which files a uid-65532 process can read, how ``$(VAR)`` references
in ``args`` expand, how a ConfigMap update lands.  :class:`PodRunner` reproduces that part
of the kubelet closely enough for the chart's pod spec to be run as written.

The pod
    One helper process, started with ``unshare --mount --net --propagation private``,
    holds the pod's namespaces.  It brings ``lo`` up, adds the pod IP (:data:`POD_IP`) and
    the ``kubernetes`` Service IP (:data:`KUBE_SERVICE_IP`) to it, mounts tmpfs over
    ``/var/lib`` and ``/run`` (and ``/var/run`` unless it is a symlink) so nothing a
    container writes reaches the host, and overlays the directories of the image's
    binaries (``/usr/bin``) to add a launcher per binary: ``/usr/bin/clustermesh-apiserver``
    runs our console script; ``/usr/bin/etcd`` stays the host's etcd.  Where our
    interpreter lives below a directory other users cannot traverse (a pyenv in a 0700
    ``/root``), that directory gets ``o+x`` in the pod's view only (an overlay), as an
    image would have its interpreter reachable by uid 65532.  Fixed ports stay fixed: the
    pod has its own loopback, so 2379/9880/9881/9962/9964/9889 collide with nothing.
    The helper exits when its stdin closes, i.e. when the runner (or the test
    process) goes away.

A container
    ``nsenter`` into the pod's namespaces, then this file run as a script (stdlib only)
    in ``container`` mode: it unshares a mount and a PID namespace of its own (each
    container has its own root filesystem and is PID 1, as in a real pod), stays outside
    as a forwarder and forks the container: fresh tmpfs over the writable image
    directories, the image's files (:class:`Image`), ``/proc``, the volume mounts (bind
    mounts, in path order; Secret, ConfigMap and projected volumes always read-only, as
    the kubelet mounts them), then ``setgroups`` (fsGroup and supplementalGroups),
    ``setgid``, ``setuid`` (the pod's ``runAsUser``/``runAsGroup``: 65532 for the chart,
    so a file the container cannot read fails as it would in the cluster),
    ``no_new_privs`` when ``allowPrivilegeEscalation: false``, and ``execve`` of
    ``command`` + ``args`` with ``$(VAR)`` expanded the kubelet's way (:func:`expand`).
    The forwarder relays SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2, exits with the
    container's status (128+N when killed by signal N, as the kubelet reports it), and
    takes the container down with it (parent-death signal; PID 1 dying ends the PID
    namespace).  Being PID 1 matters: etcd exits 0 on SIGTERM only as PID 1, and a PID 1
    without a SIGTERM handler ignores SIGTERM, exactly as in a pod.

Volumes
    Backed by directories under ``<workdir>/volumes/<name>`` on the host (the kubelet's
    ``/var/lib/kubelet/pods/<uid>/volumes``), so the test can look at them directly.
    Secret, ConfigMap and projected volumes are written by the kubelet's atomic writer
    (:func:`atomic_write`): ``<mount>/..<timestamp>/<file>``, ``<mount>/..data ->
    ..<timestamp>``, ``<mount>/<file> -> ..data/<file>``; ``items``/``key``/``path``/``mode``,
    ``defaultMode`` and ``optional`` honoured; a missing non-optional Secret, ConfigMap or
    key is a :class:`PodSpecError` (the kubelet would not start the pod).  With an
    ``fsGroup`` the kubelet's ``SetVolumeOwnership`` follows (:func:`set_volume_ownership`):
    group fsGroup, setgid directories, and group read added to files of read-only
    volumes, so a ``defaultMode: 0400`` file is ``0440 root:65532`` in the pod, which is
    what lets the chart's uid 65532 read its certificates.  emptyDir volumes are
    directories of mode ``2777`` group fsGroup.  Nested mount points inside a read-only
    volume are created in it beforehand, as the kubelet does.  Every container also gets
    the service-account volume at ``/var/run/secrets/kubernetes.io/serviceaccount``
    (``token``, ``ca.crt``, ``namespace``) unless ``automountServiceAccountToken: false``,
    and ``KUBERNETES_SERVICE_HOST``/``PORT`` in its environment.
    :meth:`PodRunner.update_config_map` and :meth:`PodRunner.update_secret` change an
    object the way the kubelet propagates it (new ``..<ts>`` directory, a ``..data_tmp``
    symlink renamed over ``..data``, the old directory removed).

Kubernetes
    :meth:`PodRunner.start_kube` serves :class:`harness.fake_kube.FakeKube` inside the pod
    on ``https://10.96.0.1:443`` (a TLS front with a certificate of its own CA, whose
    ``ca.crt`` is the one in the service-account volume), so a container using the
    in-cluster configuration reaches it as it would the real API server.  Not starting it
    leaves the address unreachable (connection refused).

Talking into the pod
    :meth:`PodRunner.exec` runs a command in the pod (``nsenter`` into the helper) or in
    one container (its mount namespace and environment, as ``kubectl exec``), as any uid;
    :meth:`PodRunner.python`, :meth:`PodRunner.http_get` and :meth:`PodRunner.readiness`
    (the container's ``readinessProbe``, on the pod IP) are built on it.
    :meth:`PodRunner.spawn` starts other processes in the pod (a remote cluster's etcd).

Teardown (:meth:`PodRunner.close`) signals only processes this runner started and has
not reaped (:class:`harness.procs.Child`: through a pidfd held from spawn time, so a
recycled pid is never hit): SIGTERM, a grace period, SIGKILL, the namespace helper last.
Not modelled: restarts (``restartPolicy``), probes other than HTTP readiness on demand,
resource limits, ``subPath``, hostPath and other volume types, ``envFrom``, lifecycle
hooks (all refused or ignored as documented at their use).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, Any

import yaml

if __package__:  # imported as harness.podrunner; the in-pod script (run as a file) needs none
    from .procs import Child

ENTRY = Path(__file__).resolve()
TESTS_DIR = ENTRY.parent.parent

POD_UID = "0b5f3c2e-8d41-4a7e-b1f6-6c2d9e4a7f10"
POD_IP = "10.244.0.10"
HOST_IP = "172.18.0.2"
NODE_NAME = "kind-worker"
KUBE_SERVICE_IP = "10.96.0.1"
KUBE_SERVICE_PORT = 443
KUBE_TOKEN = "podrunner-service-account-token"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: The image's writable directories; each container gets fresh tmpfs copies of them.
WRITABLE_ROOTS: tuple[str, ...] = ("/var/lib", "/run") + (
    () if os.path.islink("/var/run") else ("/var/run",))
#: Signals a container's forwarder relays to it (SIGKILL/SIGSTOP cannot be relayed).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)
KUBE_PROCESS = "kube-apiserver"

#: The image's etcd client configuration, as the Dockerfile copies it.
IMAGE_ETCD_CONFIG = TESTS_DIR.parent / "image" / "etcd-config.yaml"


class PodSpecError(ValueError):
    """The spec uses something the runner does not model, or refers to a Secret,
    ConfigMap or key that does not exist (the kubelet would not start the pod)."""


class PodFailed(RuntimeError):
    """The pod could not be run: the namespace, an init container, a process."""


@dataclass(frozen=True)
class Image:
    """What every container's image provides (one image for all, as the chart does)."""

    entrypoint: tuple[str, ...]
    #: path in the image -> host executable a launcher there runs
    binaries: Mapping[str, str]
    #: path -> (content, mode), written into each container's fresh writable roots
    files: Mapping[str, tuple[str, int]]
    dirs: Mapping[str, int]
    env: Mapping[str, str]
    user: int
    group: int
    workdir: str = "/"


def clustermesh_image() -> Image:
    """Our image (the Dockerfile; facts §1 for upstream's): the multi-command binary at
    ``/usr/bin/clustermesh-apiserver`` (here: our console script), the host's
    ``/usr/bin/etcd``, the image's ``etcd-config.yaml`` (mode 0444), a world-writable
    ``/var/run/cilium``, user and group 65532."""
    script = Path(sys.executable).parent / "clustermesh-apiserver"
    return Image(
        entrypoint=("/usr/bin/clustermesh-apiserver",),
        binaries={"/usr/bin/clustermesh-apiserver": str(script)},
        files={"/var/lib/cilium/etcd-config.yaml": (IMAGE_ETCD_CONFIG.read_text(), 0o444)},
        dirs={"/var/run/cilium": 0o777},
        env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "GOPS_CONFIG_DIR": "/tmp/gops"},
        user=65532, group=65532)


@cache
def unavailable_reason() -> str | None:
    """Why pods cannot run here (for ``pytest.skip``), or None."""
    if os.geteuid() != 0:
        return "the pod runner needs root (unshare -mn, mounts, setuid to 65532)"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"the pod runner needs util-linux's {tool}"
    if not Path("/usr/bin/etcd").is_file():
        return "the pod runner runs the host's /usr/bin/etcd as the image's, and there is none"
    probe = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "true"],
                           capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return f"unshare -mn is not permitted here: {probe.stderr.strip()}"
    return None


# -- the kubelet's rules --------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` as the kubelet does (k8s.io/kubernetes
    third_party/forked/golang/expansion): ``$$`` is a literal ``$``; ``$(NAME)`` of a
    defined variable is its value; an undefined one, an unterminated ``$(`` and a ``$``
    before anything else stay literal."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$" or i + 1 == len(text):
            out.append(text[i])
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2:end]
                out.append(env.get(name, f"$({name})"))
                i = end + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def atomic_write(root: Path, payload: Mapping[str, tuple[bytes, int]]) -> bool:
    """Write ``payload`` (relative path -> content, mode) into the volume directory
    ``root`` as the kubelet's AtomicWriter does; False (nothing touched) if unchanged."""
    data_link = root / "..data"
    old = os.readlink(data_link) if data_link.is_symlink() else None
    if old is not None and _read_payload(root / old) == dict(payload):
        return False
    ts = Path(tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()),
                               dir=root))
    os.chmod(ts, 0o755)
    for rel, (content, mode) in payload.items():
        target = ts / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.chmod(target, mode)
    tmp_link = root / "..data_tmp"
    os.symlink(ts.name, tmp_link)
    os.rename(tmp_link, data_link)
    visible = {rel.split("/", 1)[0] for rel in payload}
    for name in sorted(visible):
        if not os.path.lexists(root / name):
            os.symlink(f"..data/{name}", root / name)
    if old is not None:
        for entry in os.listdir(root / old):
            if entry not in visible:
                (root / entry).unlink(missing_ok=True)
        shutil.rmtree(root / old)
    return True


def _read_payload(ts_dir: Path) -> dict[str, tuple[bytes, int]]:
    out: dict[str, tuple[bytes, int]] = {}
    for path in sorted(ts_dir.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(ts_dir))] = (path.read_bytes(),
                                                  stat.S_IMODE(path.stat().st_mode))
    return out


def set_volume_ownership(root: Path, fs_group: int, *, read_only: bool) -> None:
    """The kubelet's SetVolumeOwnership: every entry's group becomes ``fs_group``; files
    gain group read (and write unless ``read_only``); directories also gain the setgid
    and execute bits; symlinks are re-grouped only."""
    mask = 0o440 if read_only else 0o660
    st = os.lstat(root)
    os.lchown(root, -1, fs_group)
    if stat.S_ISLNK(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        os.chmod(root, stat.S_IMODE(st.st_mode) | mask | stat.S_ISGID | 0o110)
        for entry in os.scandir(root):
            set_volume_ownership(Path(entry.path), fs_group, read_only=read_only)
    else:
        os.chmod(root, stat.S_IMODE(st.st_mode) | mask)


def _untraversable() -> list[str]:
    """Directories above our interpreter, the venv and ``tests/`` that other users cannot
    traverse (a pyenv under a 0700 ``/root``), parents first.  In an image the interpreter
    is reachable by the containers' user; the pod's view of these gets ``o+x``."""
    out: set[str] = set()
    for target in (Path(sys.executable).resolve(), Path(sys.prefix), TESTS_DIR):
        for parent in target.parents:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                out.add(str(parent))
    return sorted(out, key=lambda d: d.count("/"))


def _pod_of(manifest: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(pod spec, pod name) of a Pod, a workload's pod template, or a bare template."""
    name = (manifest.get("metadata") or {}).get("name", "pod")
    if manifest.get("kind") in ("Pod", None):
        return dict(manifest["spec"]), name
    # A Deployment's pod: <name>-<pod-template-hash>-<suffix>.
    return dict(manifest["spec"]["template"]["spec"]), f"{name}-6d9c8b7f5c-x2lqv"


# -- processes -----------------------------------------------------------------------


@dataclass
class Process:
    """One process this runner started in the pod: a container, an init container,
    a spawned helper or the Kubernetes stand-in."""

    name: str
    child: Child
    log_path: Path
    pid_file: Path
    #: the launch description (argv, env, uid, ...) as the in-namespace entry got it
    spec: dict[str, Any]
    _log: IO[bytes] | None = field(repr=False, default=None)

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        return self.child.popen

    @property
    def alive(self) -> bool:
        return self.child.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status as the kubelet reports it (128+N when killed by signal N)."""
        code = self.child.poll()
        return 128 - code if code is not None and code < 0 else code

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if still running after ``timeout`` seconds."""
        try:
            self.child.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def signal(self, sig: int) -> bool:
        """Send ``sig`` (relayed to the container) if the process is still ours (not
        reaped); False otherwise."""
        return self.child.signal(sig)

    def pid1(self, timeout: float = 5.0) -> int:
        """The host pid of the container's PID 1 (for nsenter)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise PodFailed(f"{self.name} is not running (exit status {self.returncode})")
            text = self.pid_file.read_text() if self.pid_file.exists() else ""
            if text.strip():
                return int(text)
            if time.monotonic() > deadline:
                raise PodFailed(f"{self.name}: no pid reported within {timeout}s")
            time.sleep(0.01)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(frozen=True)
class HttpResponse:
    status: int  # 0: no HTTP answer (``body`` says why)
    body: str

    @property
    def ok(self) -> bool:
        """A successful probe, by the kubelet's rule (200 <= status < 400)."""
        return 200 <= self.status < 400


_HTTP_GET = """\
import http.client, json, sys
host, port, path, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.request("GET", path)
    resp = conn.getresponse()
    print(json.dumps([resp.status, resp.read().decode(errors="replace")]))
except OSError as exc:
    print(json.dumps([0, f"{type(exc).__name__}: {exc}"]))
"""


class PodRunner:
    """Runs one pod (see the module docstring).

    ``with PodRunner(manifest, workdir=..., secrets=..., config_maps=...) as pod:``
    creates the pod's namespaces; :meth:`start` renders the volumes, runs the init
    containers to completion and starts the containers; leaving the block tears down.
    ``secrets`` and ``config_maps`` map object name -> key -> content (the decoded
    ``data``).  Use a runner from one thread: its processes carry a parent-death signal,
    which follows the thread that started them.
    """

    def __init__(self, manifest: Mapping[str, Any] | Path, *, workdir: Path,
                 secrets: Mapping[str, Mapping[str, bytes | str]] | None = None,
                 config_maps: Mapping[str, Mapping[str, str]] | None = None,
                 image: Image | None = None, namespace: str = "kube-system") -> None:
        if isinstance(manifest, Path):
            manifest = yaml.safe_load(manifest.read_text())
        self.spec, self.name = _pod_of(manifest)
        self.namespace = namespace
        self.workdir = Path(workdir)
        self.image = image or clustermesh_image()
        self.secrets = {k: dict(v) for k, v in (secrets or {}).items()}
        self.config_maps = {k: dict(v) for k, v in (config_maps or {}).items()}
        self.security = dict(self.spec.get("securityContext") or {})
        self.fs_group: int | None = self.security.get("fsGroup")
        self.volumes: dict[str, dict[str, Any]] = {
            v["name"]: v for v in self.spec.get("volumes") or []}
        self.init_containers = {c["name"]: c for c in self.spec.get("initContainers") or []}
        self.container_specs = {c["name"]: c for c in self.spec.get("containers") or []}
        #: exit status of each init container that ran
        self.init_status: dict[str, int] = {}
        self.processes: dict[str, Process] = {}
        self._helper: Child | None = None
        self._kube_pki: tuple[Path, Path, Path] | None = None
        for sub in ("volumes", "run", "logs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> PodRunner:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, timeout: float = 15.0) -> None:
        """Create the pod's namespaces (the helper process)."""
        if self._helper is not None:
            return
        setup = {"addresses": [POD_IP, KUBE_SERVICE_IP], "rootfs_tmpfs": list(WRITABLE_ROOTS),
                 "binaries": dict(self.image.binaries), "untraversable": _untraversable(),
                 "layer": str(self.workdir / "run" / "image-layer")}
        Path(setup["layer"]).mkdir(exist_ok=True)
        setup_file = self.workdir / "run" / "pod.json"
        setup_file.write_text(json.dumps(setup))
        with open(self.workdir / "logs" / "pod-helper.log", "wb") as log:
            self._helper = Child.spawn(
                ["unshare", "--mount", "--net", "--propagation", "private", "--",
                 sys.executable, "-I", str(ENTRY), "pod", str(setup_file)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True)
        stdout = self._helper.popen.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else b""
        if line.strip() != b"ready":
            text = (self.workdir / "logs" / "pod-helper.log").read_text(errors="replace")
            raise PodFailed(f"the pod's namespace helper did not come up: {text.strip()}")

    def start(self, *, init_timeout: float = 90.0) -> None:
        """Render the volumes, run every init container to completion (a failure raises
        :class:`PodFailed` with its output), then start every container."""
        self.open()
        self._render_volumes()
        for name, c in self.init_containers.items():
            proc = self._launch(name, self._launch_spec(c))
            status = proc.wait(init_timeout)
            if status is None:
                proc.signal(signal.SIGKILL)
                proc.wait(5)
                raise PodFailed(f"init container {name} did not finish within {init_timeout}s:"
                                f"\n{proc.logs()}")
            self.init_status[name] = status
            if status != 0:
                raise PodFailed(f"init container {name} exited {status}:\n{proc.logs()}")
        for name, c in self.container_specs.items():
            self._launch(name, self._launch_spec(c))

    def spawn(self, name: str, argv: Sequence[str], *, uid: int = 0, gid: int = 0,
              env: Mapping[str, str] | None = None) -> Process:
        """Start another process in the pod (own mount and PID namespace, no volumes)."""
        self.open()
        return self._launch(name, {
            "argv": list(argv), "env": {**self.image.env, **(env or {})}, "cwd": "/",
            "uid": uid, "gid": gid, "groups": [], "no_new_privs": False, "mounts": []})

    def terminate(self, *names: str, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM the named processes (default: every container) at once, as the
        kubelet does, and return each exit status (None: still running at ``timeout``)."""
        targets = [self.processes[n] for n in names or self.container_specs
                   if n in self.processes]
        for proc in targets:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        return {p.name: p.wait(max(0.0, deadline - time.monotonic())) for p in targets}

    def close(self, grace: float = 10.0) -> None:
        """Stop every process this runner started and still knows alive, then the
        namespace helper. Safe to call more than once and after partial failures."""
        alive = [p for p in self.processes.values() if p.signal(signal.SIGTERM)]
        deadline = time.monotonic() + grace
        for proc in alive:
            if proc.wait(max(0.0, deadline - time.monotonic())) is None:
                proc.signal(signal.SIGKILL)
                proc.wait(5)
        for proc in self.processes.values():
            proc.close_log()
        helper, self._helper = self._helper, None
        if helper is not None:
            if helper.poll() is None and helper.popen.stdin is not None:
                helper.popen.stdin.close()  # the helper exits at EOF
            try:
                helper.wait(5)
            except subprocess.TimeoutExpired:
                helper.signal(signal.SIGKILL)  # a no-op once it is reaped
                helper.wait(5)
            if helper.popen.stdout is not None:
                helper.popen.stdout.close()

    # -- observing -----------------------------------------------------------------------

    def logs(self, name: str) -> str:
        return self.processes[name].logs()

    def all_logs(self) -> dict[str, str]:
        return {name: proc.logs() for name, proc in self.processes.items()}

    def report(self, lines: int = 30) -> str:
        """Each process's state and last log lines (for assertion messages)."""
        parts = []
        for name, proc in self.processes.items():
            state = "running" if proc.alive else f"exited {proc.returncode}"
            tail = "\n".join(proc.logs().splitlines()[-lines:])
            parts.append(f"--- {name} ({state}) ---\n{tail}")
        return "\n".join(parts)

    # -- talking into the pod ------------------------------------------------------------

    def exec(self, argv: Sequence[str], *, container: str | None = None,
             uid: int | None = None, gid: int | None = None,
             env: Mapping[str, str] | None = None, input: str | None = None,
             timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion in the pod, or in ``container`` (its mount namespace,
        environment and user, as ``kubectl exec``); ``uid``/``gid`` override the user
        (default root outside a container).  Output is captured as text."""
        if container is not None:
            proc = self.processes[container]
            target = proc.pid1()
            base = proc.spec
            spec = {"env": {**base["env"], **(env or {})}, "cwd": base["cwd"],
                    "uid": base["uid"] if uid is None else uid,
                    "gid": base["gid"] if gid is None else gid,
                    "groups": base["groups"] if uid is None else []}
        else:
            if self._helper is None or not self._helper.held:
                # A reaped helper's pid may be someone else's: never nsenter into it.
                raise PodFailed("the pod is not open")
            target = self._helper.pid
            spec = {"env": {**self.image.env, **(env or {})}, "cwd": "/", "uid": uid or 0,
                    "gid": gid or 0, "groups": []}
        spec["argv"] = list(argv)
        return subprocess.run(
            ["nsenter", "--target", str(target), "--net", "--mount", "--",
             sys.executable, "-I", str(ENTRY), "exec", json.dumps(spec)],
            input=input, capture_output=True, text=True, timeout=timeout, check=False)

    def python(self, code: str, *args: str, container: str | None = None,
               uid: int | None = None, input: str | None = None,
               timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet with our interpreter (project packages and ``harness``
        importable) in the pod or a container."""
        return self.exec([sys.executable, "-c", code, *args], container=container, uid=uid,
                         env={"PYTHONPATH": str(TESTS_DIR)}, input=input, timeout=timeout)

    def http_get(self, port: int, path: str = "/", *, host: str = "127.0.0.1",
                 timeout: float = 5.0) -> HttpResponse:
        """``GET http://host:port/path`` from inside the pod."""
        result = self.exec([sys.executable, "-I", "-c", _HTTP_GET, host, str(port), path,
                            str(timeout)], timeout=timeout + 10)
        if result.returncode != 0:
            raise PodFailed(f"http probe failed: {result.stderr}")
        status, body = json.loads(result.stdout)
        return HttpResponse(status, body)

    def readiness(self, container: str) -> HttpResponse:
        """Run the container's ``readinessProbe.httpGet`` as the kubelet would (against
        the pod IP, the port by name or number)."""
        c = self.container_specs[container]
        probe = (c.get("readinessProbe") or {}).get("httpGet")
        if probe is None:
            raise PodSpecError(f"container {container} has no httpGet readinessProbe")
        port = probe["port"]
        if isinstance(port, str):
            named = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            if port not in named:
                raise PodSpecError(f"container {container}: no port named {port!r}")
            port = named[port]
        return self.http_get(int(port), probe.get("path", "/"), host=probe.get("host", POD_IP),
                             timeout=float(probe.get("timeoutSeconds", 1)))

    # -- Kubernetes ----------------------------------------------------------------------

    def start_kube(self, objects: Iterable[Mapping[str, Any]] = (),
                   timeout: float = 20.0) -> Process:
        """Serve the Kubernetes stand-in with ``objects`` on the in-cluster address."""
        _, cert, key = self._kube_tls()
        ready = self.workdir / "run" / "kube.ready"
        ready.unlink(missing_ok=True)
        config = self.workdir / "run" / "kube.json"
        config.write_text(json.dumps({
            "host": KUBE_SERVICE_IP, "port": KUBE_SERVICE_PORT, "cert": str(cert),
            "key": str(key), "token": KUBE_TOKEN, "objects": list(objects),
            "ready_file": str(ready), "tests_dir": str(TESTS_DIR)}))
        proc = self.spawn(KUBE_PROCESS, [sys.executable, "-I", str(ENTRY), "kube", str(config)])
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if not proc.alive or time.monotonic() > deadline:
                raise PodFailed(f"the Kubernetes stand-in did not come up:\n{proc.logs()}")
            time.sleep(0.05)
        return proc

    def _kube_tls(self) -> tuple[Path, Path, Path]:
        """The stand-in's CA (its ``ca.crt`` is in every service-account volume) and
        server certificate for the ``kubernetes`` Service: (CA, certificate, key)."""
        if self._kube_pki is None:
            from .certs import CertificateAuthority  # the namespace entry is stdlib-only

            ca = CertificateAuthority(self.workdir / "kube-pki", name="kubernetes-ca",
                                      organization="podrunner")
            server = ca.issue_server(
                "kube-apiserver", ips=(KUBE_SERVICE_IP,),
                dns_names=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                           "kubernetes.default.svc.cluster.local"))
            self._kube_pki = (ca.ca_file, server.cert_file, server.key_file)
        return self._kube_pki

    # -- Secrets and ConfigMaps ------------------------------------------------------------

    def update_config_map(self, name: str, data: Mapping[str, str]) -> None:
        """Replace a ConfigMap's data and propagate it to every volume using it, as the
        kubelet does (atomic ``..data`` swap)."""
        self.config_maps[name] = dict(data)
        self._refresh(("configMap", name))

    def update_secret(self, name: str, data: Mapping[str, bytes | str]) -> None:
        self.secrets[name] = dict(data)
        self._refresh(("secret", name))

    def _refresh(self, ref: tuple[str, str]) -> None:
        for vol in self.volumes.values():
            if ref in self._references(vol):
                root = self.volume_dir(vol["name"])
                if atomic_write(root, self._payload(vol)) and self.fs_group is not None:
                    set_volume_ownership(root, self.fs_group, read_only=True)

    @staticmethod
    def _references(vol: Mapping[str, Any]) -> set[tuple[str, str]]:
        if "secret" in vol:
            return {("secret", vol["secret"]["secretName"])}
        if "configMap" in vol:
            return {("configMap", vol["configMap"]["name"])}
        refs = set()
        for source in (vol.get("projected") or {}).get("sources") or []:
            for kind in ("secret", "configMap"):
                if kind in source:
                    refs.add((kind, source[kind]["name"]))
        return refs

    # -- volumes ------------------------------------------------------------------------

    def volume_dir(self, name: str) -> Path:
        """Where volume ``name`` lives on the host (what the containers see mounted)."""
        return self.workdir / "volumes" / name

    def _render_volumes(self) -> None:
        for name, vol in self.volumes.items():
            root = self.volume_dir(name)
            root.mkdir(exist_ok=True)
            if "emptyDir" in vol:
                os.chmod(root, 0o777)
                if self.fs_group is not None:
                    set_volume_ownership(root, self.fs_group, read_only=False)
                continue
            if not self._references(vol):
                kinds = sorted(set(vol) - {"name"})
                raise PodSpecError(f"volume {name}: {kinds} volumes are not modelled")
            # A Secret's volume is a fresh tmpfs (1777); a ConfigMap's a plain directory.
            os.chmod(root, 0o777 if "configMap" in vol else 0o1777)
            for nested in self._nested_mountpoints(name):
                (root / nested).mkdir(parents=True, exist_ok=True)
            atomic_write(root, self._payload(vol))
            if self.fs_group is not None:
                set_volume_ownership(root, self.fs_group, read_only=True)
        if self._automount:
            root = self.volume_dir("kube-api-access")
            root.mkdir(exist_ok=True)
            os.chmod(root, 0o1777)
            atomic_write(root, {"token": (KUBE_TOKEN.encode(), 0o644),
                                "ca.crt": (self._kube_tls()[0].read_bytes(), 0o644),
                                "namespace": (self.namespace.encode(), 0o644)})
            if self.fs_group is not None:
                set_volume_ownership(root, self.fs_group, read_only=True)

    @property
    def _automount(self) -> bool:
        return self.spec.get("automountServiceAccountToken", True) is not False

    def _nested_mountpoints(self, volume: str) -> set[str]:
        """Mount points of other volumes below this volume's mount path in the same
        container (created in the volume beforehand, as the kubelet does)."""
        out = set()
        for c in [*self.init_containers.values(), *self.container_specs.values()]:
            mounts = c.get("volumeMounts") or []
            for m in mounts:
                if m["name"] != volume:
                    continue
                base = m["mountPath"].rstrip("/") + "/"
                out |= {o["mountPath"][len(base):].strip("/") for o in mounts
                        if o["mountPath"].startswith(base)}
        return out

    def _payload(self, vol: Mapping[str, Any]) -> dict[str, tuple[bytes, int]]:
        if "projected" in vol:
            default_mode = vol["projected"].get("defaultMode", 0o644)
            sources = []
            for source in vol["projected"].get("sources") or []:
                kinds = [k for k in ("secret", "configMap") if k in source]
                if not kinds:
                    raise PodSpecError(f"volume {vol['name']}: projected source "
                                       f"{sorted(source)} is not modelled")
                sources.append((kinds[0], source[kinds[0]]["name"], source[kinds[0]]))
        elif "secret" in vol:
            src = vol["secret"]
            default_mode = src.get("defaultMode", 0o644)
            sources = [("secret", src["secretName"], src)]
        else:
            src = vol["configMap"]
            default_mode = src.get("defaultMode", 0o644)
            sources = [("configMap", src["name"], src)]
        payload: dict[str, tuple[bytes, int]] = {}
        for kind, name, src in sources:
            data = (self.secrets if kind == "secret" else self.config_maps).get(name)
            optional = bool(src.get("optional", False))
            if data is None:
                if optional:
                    continue
                raise PodSpecError(f"volume {vol['name']}: {kind} {name} not found")
            items = src.get("items")
            entries = ([(k, k, default_mode) for k in sorted(data)] if items is None else
                       [(i["key"], i["path"], i.get("mode", default_mode)) for i in items])
            for key, path, mode in entries:
                if key not in data:
                    if optional:
                        continue
                    raise PodSpecError(f"volume {vol['name']}: {kind} {name} has no key {key}")
                value = data[key]
                payload[path] = (value.encode() if isinstance(value, str) else value, mode)
        return payload

    # -- containers -----------------------------------------------------------------------

    def _service_env(self) -> dict[str, str]:
        host, port = KUBE_SERVICE_IP, str(KUBE_SERVICE_PORT)
        return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://{host}:{port}",
                f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
                f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
                f"KUBERNETES_PORT_{port}_TCP_PORT": port,
                f"KUBERNETES_PORT_{port}_TCP_ADDR": host}

    def _field(self, container: str, path: str) -> str:
        values = {"metadata.name": self.name, "metadata.namespace": self.namespace,
                  "metadata.uid": POD_UID, "spec.nodeName": NODE_NAME,
                  "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
                  "status.podIP": POD_IP, "status.podIPs": POD_IP, "status.hostIP": HOST_IP}
        if path not in values:
            raise PodSpecError(f"container {container}: fieldRef {path} is not modelled")
        return values[path]

    def _env(self, c: Mapping[str, Any]) -> dict[str, str]:
        """The container's own variables (valueFrom resolved, ``$(VAR)`` in values
        expanded against earlier ones and the service variables)."""
        service = self._service_env()
        defined: dict[str, str] = {}
        if c.get("envFrom"):
            raise PodSpecError(f"container {c['name']}: envFrom is not modelled")
        for var in c.get("env") or []:
            name = var["name"]
            ref = var.get("valueFrom")
            if ref is None:
                defined[name] = expand(str(var.get("value", "")), {**service, **defined})
                continue
            if "fieldRef" in ref:
                defined[name] = self._field(c["name"], ref["fieldRef"]["fieldPath"])
                continue
            kind = next((k for k in ("configMapKeyRef", "secretKeyRef") if k in ref), None)
            if kind is None:
                raise PodSpecError(f"container {c['name']}: env {name}: {sorted(ref)} "
                                   "is not modelled")
            sel = ref[kind]
            source = self.config_maps if kind == "configMapKeyRef" else self.secrets
            value = (source.get(sel["name"]) or {}).get(sel["key"])
            if value is None:
                if sel.get("optional", False):
                    continue
                raise PodSpecError(f"container {c['name']}: env {name}: {kind} "
                                   f"{sel['name']}/{sel['key']} not found")
            defined[name] = value.decode() if isinstance(value, bytes) else value
        return defined

    def _launch_spec(self, c: Mapping[str, Any]) -> dict[str, Any]:
        name = c["name"]
        if c.get("lifecycle"):
            raise PodSpecError(f"container {name}: lifecycle hooks are not modelled")
        defined = self._env(c)
        mapping = {**self._service_env(), **defined}
        command = [expand(a, mapping) for a in c.get("command") or self.image.entrypoint]
        argv = command + [expand(a, mapping) for a in c.get("args") or []]
        sc = {**self.security, **(c.get("securityContext") or {})}
        uid = int(sc.get("runAsUser", self.image.user))
        gid = int(sc.get("runAsGroup", self.image.group))
        if sc.get("runAsNonRoot") and uid == 0:
            raise PodSpecError(f"container {name}: runAsNonRoot and the user is root")
        groups = ([self.fs_group] if self.fs_group is not None else []) + [
            int(g) for g in self.security.get("supplementalGroups") or []]
        mounts = []
        for m in c.get("volumeMounts") or []:
            if m.get("subPath") or m.get("subPathExpr"):
                raise PodSpecError(f"container {name}: subPath mounts are not modelled")
            vol = self.volumes.get(m["name"])
            if vol is None:
                raise PodSpecError(f"container {name}: no volume {m['name']}")
            api_data = "emptyDir" not in vol  # the kubelet mounts these read-only
            mounts.append({"source": str(self.volume_dir(m["name"])), "target": m["mountPath"],
                           "read_only": bool(m.get("readOnly")) or api_data})
        if self._automount:
            mounts.append({"source": str(self.volume_dir("kube-api-access")),
                           "target": SERVICE_ACCOUNT_DIR, "read_only": True})
        env = {**self.image.env, "HOSTNAME": self.name, **self._service_env(), **defined}
        return {"argv": argv, "env": env, "cwd": c.get("workingDir") or self.image.workdir,
                "uid": uid, "gid": gid, "groups": list(dict.fromkeys(groups)),
                "no_new_privs": sc.get("allowPrivilegeEscalation") is False, "mounts": mounts}

    def _launch(self, name: str, spec: dict[str, Any]) -> Process:
        if name in self.processes:
            raise PodFailed(f"a process named {name} was already started")
        if self._helper is None or not self._helper.held:
            raise PodFailed("the pod's namespace helper is not running")
        pid_file = self.workdir / "run" / f"{name}.pid"
        pid_file.unlink(missing_ok=True)
        spec = {**spec, "pid_file": str(pid_file), "rootfs_tmpfs": list(WRITABLE_ROOTS),
                "image_files": dict(self.image.files), "image_dirs": dict(self.image.dirs)}
        spec_file = self.workdir / "run" / f"{name}.json"
        spec_file.write_text(json.dumps(spec, indent=1))
        log_path = self.workdir / "logs" / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - kept open for the process's lifetime
        child = Child.spawn(
            ["nsenter", "--target", str(self._helper.pid), "--net", "--mount", "--",
             sys.executable, "-I", str(ENTRY), "container", str(spec_file)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        proc = Process(name=name, child=child, log_path=log_path, pid_file=pid_file,
                       spec=spec, _log=log)
        self.processes[name] = proc
        return proc


# -- inside the namespace (this file run as a script; stdlib only, except `kube`) ----------

_CLONE_NEWNS = 0x00020000
_CLONE_NEWPID = 0x20000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _SIOCSIFADDR, _SIOCSIFNETMASK = 0x8913, 0x8914, 0x8916, 0x891C


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    _check(_libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags),
                         enc(data)), f"mount {target}")


def _prctl(option: int, value: int) -> None:
    _check(_libc().prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl {option}")


def _loopback_up(addresses: Sequence[str]) -> None:
    """``ip link set lo up`` and one /32 alias per address, by ioctl (no iproute2)."""
    import fcntl
    import socket
    import struct

    def sockaddr(ip: str) -> bytes:
        return struct.pack("=H2s4s8s", socket.AF_INET, b"", socket.inet_aton(ip), b"")

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("=16s16s", b"lo", b""))
        (flags,) = struct.unpack_from("=H", req, 16)
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("=16sH14s", b"lo", flags | 1, b""))
        for i, ip in enumerate(addresses):
            label = f"lo:{i}".encode()
            fcntl.ioctl(s, _SIOCSIFADDR, struct.pack("=16s16s", label, sockaddr(ip)))
            fcntl.ioctl(s, _SIOCSIFNETMASK,
                        struct.pack("=16s16s", label, sockaddr("255.255.255.255")))


def _overlay(directory: str, layer: str, index: int) -> None:
    """Make ``directory`` writable in this mount namespace only (tmpfs upper layer)."""
    upper, work = f"{layer}/{index}.upper", f"{layer}/{index}.work"
    os.mkdir(upper)
    os.mkdir(work)
    _mount("overlay", directory, "overlay", 0,
           f"lowerdir={directory},upperdir={upper},workdir={work}")


def _pod_main(setup: dict[str, Any]) -> None:
    """The namespace helper: network, writable roots, the interpreter's path made
    reachable, image launchers; then wait."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _loopback_up(setup["addresses"])
    for root in setup["rootfs_tmpfs"]:
        _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755")
    layer = setup["layer"]
    _mount("tmpfs", layer, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=700")
    overlays = 0
    for directory in setup["untraversable"]:
        _overlay(directory, layer, overlays)
        overlays += 1
        os.chmod(directory, stat.S_IMODE(os.stat(directory).st_mode) | stat.S_IXOTH)
    by_dir: dict[str, dict[str, str]] = {}
    for path, host in setup["binaries"].items():
        by_dir.setdefault(os.path.dirname(path), {})[os.path.basename(path)] = host
    for directory, launchers in sorted(by_dir.items()):
        _overlay(directory, layer, overlays)
        overlays += 1
        for base, host in launchers.items():
            path = os.path.join(directory, base)
            with open(path, "w") as f:
                f.write(f'#!/bin/sh\nexec {shlex.quote(host)} "$@"\n')
            os.chmod(path, 0o755)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.buffer.read()  # until the runner closes it or goes away


def _become(spec: Mapping[str, Any]) -> None:
    """Switch to the container's directory and user, restore default signal handling."""
    os.chdir(spec["cwd"])
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)


def _exec(spec: Mapping[str, Any]) -> None:
    env = dict(spec["env"])
    env.setdefault("HOME", "/")
    os.execvpe(spec["argv"][0], spec["argv"], env)


def _container_child(spec: Mapping[str, Any], parent_alive: int) -> None:
    try:
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        for root in spec["rootfs_tmpfs"]:
            _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755")
        for path, mode in spec["image_dirs"].items():
            os.makedirs(path, exist_ok=True)
            os.chmod(path, mode)
        for path, (content, mode) in spec["image_files"].items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(content)
            os.chmod(path, mode)
        for m in sorted(spec["mounts"], key=lambda m: m["target"].rstrip("/").count("/")):
            os.makedirs(m["target"], exist_ok=True)
            _mount(m["source"], m["target"], None, _MS_BIND | _MS_REC)
            if m["read_only"]:
                _mount(None, m["target"], None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
        _become(spec)
        if spec["no_new_privs"]:
            _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
        if select.select([parent_alive], [], [], 0)[0]:
            os._exit(137)  # the forwarder died before the death signal was armed
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        _exec(spec)
    except BaseException as exc:
        print(f"podrunner: cannot start the container: {exc}", file=sys.stderr, flush=True)
        os._exit(128)


def _container_main(spec: dict[str, Any]) -> int:
    """The forwarder: own mount + PID namespace, fork PID 1, relay signals, report."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    waited = {*FORWARDED_SIGNALS, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    _check(_libc().unshare(_CLONE_NEWNS | _CLONE_NEWPID), "unshare")
    alive_r, alive_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(alive_w)
        _container_child(spec, alive_r)
    os.close(alive_r)
    Path(spec["pid_file"]).write_text(str(child))
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            os.kill(child, info.si_signo)
            continue
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def _exec_main(spec: dict[str, Any]) -> None:
    _become(spec)
    _exec(spec)


async def _kube_main(config: dict[str, Any]) -> None:
    """The Kubernetes stand-in: FakeKube on a loopback port behind a TLS front on the
    ``kubernetes`` Service address (the in-cluster loader insists on https)."""
    import asyncio
    import ssl

    sys.path.insert(0, config["tests_dir"])
    from harness import fake_kube as fk

    kinds = {r.kind: r for r in fk.ALL_RESOURCES}
    kube = fk.FakeKube(token=config["token"])
    for obj in config["objects"]:
        kube.create(kinds[obj["kind"]], obj)
    await kube.start()
    backend = int(kube.url.rsplit(":", 1)[1])

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config["cert"], config["key"])
    server = await asyncio.start_server(front, config["host"], config["port"], ssl=context)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.to_thread(Path(config["ready_file"]).write_text, "ready")
    print(f"serving {len(config['objects'])} objects on https://{config['host']}:"
          f"{config['port']}", flush=True)
    await stop.wait()
    server.close()
    await kube.close()


def _main(argv: list[str]) -> int:
    mode, arg = argv
    if mode == "exec":
        _exec_main(json.loads(arg))
        return 127
    config = json.loads(Path(arg).read_text())
    if mode == "pod":
        _pod_main(config)
        return 0
    if mode == "container":
        return _container_main(config)
    if mode == "kube":
        import asyncio

        asyncio.run(_kube_main(config))
        return 0
    raise SystemExit(f"podrunner: unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
