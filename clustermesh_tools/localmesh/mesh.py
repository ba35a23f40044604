"""A local Cluster Mesh: N clusters, each an etcd + clustermesh-apiserver + KVStoreMesh.

``up`` is ``clustermesh enable`` for each cluster (one shared CA, the etcd on a free
loopback port), ``clustermesh connect`` for each pair, then the processes:

1. every etcd (TLS, ``--client-cert-auth``), waited for, then initialised with the
   users and roles of ``clustermesh-apiserver etcdinit`` (auth enabled);
2. every clustermesh-apiserver, fed by the cluster's ``manifests/`` directory, which
   starts with a small realistic workload (:mod:`apiserver.sample`); in auth modes
   ``migration`` and ``cluster`` (Cilium's ``tls.authMode``, default ``migration``) with
   ``--cluster-users-enabled`` and the cluster's ``users.yaml``, so its etcd gets one
   ``remote-<peer>`` user per other cluster;
3. every KVStoreMesh (unless ``kvstoremesh=False``), each with one config file per
   other cluster using the cluster's remote client certificate: CN ``remote``, or
   ``remote-<its cluster>`` in ``cluster`` mode.  They start only once every etcd holds
   the users and cluster-config a KVStoreMesh reads (:mod:`.startup`), so no
   connection fails on the way up;

and waits until every apiserver is ready and every KVStoreMesh reports every
remote ready.  The processes run detached (own session, logs in
``<dir>/<cluster>/logs/``) and are recorded with their pid, start time and
command line in ``<dir>/state.json``; ``down`` stops exactly those.

Directory::

    <dir>/
      state.json            clusters, ports, processes (pid + start time + argv)
      prometheus.yml        a Prometheus scrape config of every daemon's metrics
      ca/ca.crt, ca.key     the mesh CA
      <cluster>/            a cluster directory (clustermesh_tools/clusters/clusterdir.py) plus
        etcd/               etcd's data directory
        manifests/          the apiserver's source (workload.yaml; check adds a probe)
        logs/               etcd.log, apiserver.log, kvstoremesh.log
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clustermesh.clusterconfig import validate_cluster_name
from clustermesh.etcdbin import find_etcd_binary
from clustermesh.pki import CertificateAuthority
from clustermesh_tools.clusters.authmode import DEFAULT_AUTH_MODE, check_mode
from clustermesh_tools.clusters.clusterdir import ClusterDir, enable, write_atomic
from clustermesh_tools.clusters.pairing import connect
from clustermesh_tools.clusters.probes import fetch_status, http_ok, log_tail

from . import procs
from .errors import LocalMeshError
from .procs import ProcRecord
from .startup import init_etcds, wait_remote_access

STATE_FILE = "state.json"
PROMETHEUS_FILE = "prometheus.yml"
COMPONENTS = ("etcd", "apiserver", "kvstoremesh")
LOOPBACK = "127.0.0.1"

Say = Callable[[str], None]


def default_dir() -> Path:
    """``$XDG_STATE_HOME/clustermesh/local``, else ``~/.local/state/clustermesh/local``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "clustermesh" / "local"


def _source_root() -> Path:
    """The directory holding the project's packages (for the daemons' PYTHONPATH)."""
    import clustermesh

    return Path(clustermesh.__file__).resolve().parent.parent


class _Ports:
    def __init__(self) -> None:
        self.used: set[int] = set()

    def free(self) -> int:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = int(sock.getsockname()[1])
            if port not in self.used:
                self.used.add(port)
                return port
        raise LocalMeshError("could not find a free port on 127.0.0.1")


@dataclass
class LocalCluster:
    name: str
    id: int
    dir: Path
    etcd_port: int
    etcd_peer_port: int
    apiserver_health_port: int
    kvstoremesh_health_port: int
    kvstoremesh_api_port: int
    # The other etcd members ([client, peer] ports) and KVStoreMesh replicas ([health,
    # API] ports) beyond the first, with --etcd-members / --kvstoremesh-replicas.
    etcd_members: list[list[int]] = field(default_factory=list)
    kvstoremesh_replicas: list[list[int]] = field(default_factory=list)
    # The Prometheus metrics port of each process, by its name within the cluster
    # ("etcd", "etcd-1", "apiserver", "kvstoremesh", "kvstoremesh-1"); empty in meshes
    # started before metrics were served.
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def cluster_dir(self) -> ClusterDir:
        return ClusterDir.load(self.dir)

    @property
    def etcd_member_ports(self) -> dict[str, tuple[int, int]]:
        """The (client, peer) ports of each etcd member, by process name within the
        cluster: ``etcd`` (member 0, named like the cluster), ``etcd-1``, ..."""
        return {"etcd": (self.etcd_port, self.etcd_peer_port),
                **{f"etcd-{i}": (client, peer)
                   for i, (client, peer) in enumerate(self.etcd_members, start=1)}}

    @property
    def kvstoremesh_api(self) -> str:
        """The status API, or every replica's, comma separated (the leader answers for
        the cluster: see ``clustermesh_tools.clusters.probes.fetch_leader``)."""
        ports = [self.kvstoremesh_api_port, *(api for _, api in self.kvstoremesh_replicas)]
        return ",".join(f"{LOOPBACK}:{port}" for port in ports)

    @property
    def metrics(self) -> dict[str, str]:
        """The metrics URL of each process (keys as in ``metrics_ports``)."""
        return {name: f"http://{LOOPBACK}:{port}/metrics"
                for name, port in self.metrics_ports.items()}

    def to_json(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        doc["dir"] = str(self.dir)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LocalCluster:
        return cls(**{**doc, "dir": Path(doc["dir"])})


class LocalMesh:
    """The state of one local mesh directory."""

    def __init__(self, dir: Path) -> None:
        self.dir = Path(dir).absolute()
        self.clusters: list[LocalCluster] = []
        self.processes: dict[str, ProcRecord] = {}
        self.kvstoremesh = True
        self.max_connected_clusters = 255
        self.auth_mode = DEFAULT_AUTH_MODE

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def prometheus_file(self) -> Path:
        return self.dir / PROMETHEUS_FILE

    def write_prometheus_config(self) -> None:
        """``prometheus.yml``: one job per component, a ``cluster`` label per target."""
        write_atomic(self.prometheus_file, prometheus_config(self.clusters, self.dir))

    def exists(self) -> bool:
        return self.state_file.is_file()

    def save(self) -> None:
        doc = {
            "version": 1,
            "kvstoremesh": self.kvstoremesh,
            "maxConnectedClusters": self.max_connected_clusters,
            "authMode": self.auth_mode,
            "clusters": [c.to_json() for c in self.clusters],
            "processes": {k: p.to_json() for k, p in self.processes.items()},
        }
        write_atomic(self.state_file, json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, dir: Path) -> LocalMesh:
        mesh = cls(dir)
        try:
            doc = json.loads(mesh.state_file.read_text())
        except FileNotFoundError:
            raise LocalMeshError(
                f"no local mesh in {mesh.dir} (no {STATE_FILE}): start one with "
                f"`clustermesh local up --dir {mesh.dir}`") from None
        except (OSError, ValueError) as exc:
            raise LocalMeshError(f"{mesh.state_file}: unreadable: {exc}") from None
        mesh.kvstoremesh = bool(doc.get("kvstoremesh", True))
        mesh.max_connected_clusters = int(doc.get("maxConnectedClusters", 255))
        mesh.auth_mode = str(doc.get("authMode") or "legacy")  # older meshes had no users
        mesh.clusters = [LocalCluster.from_json(c) for c in doc.get("clusters", [])]
        mesh.processes = {k: ProcRecord.from_json(p)
                          for k, p in doc.get("processes", {}).items()}
        return mesh

    def cluster(self, name: str) -> LocalCluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise LocalMeshError(f"no cluster {name!r} in the local mesh at {self.dir} "
                             f"(clusters: {', '.join(c.name for c in self.clusters)})")

    def running(self) -> dict[str, bool]:
        return {key: procs.is_running(rec) for key, rec in self.processes.items()}

    # ------------------------------------------------------------------ up

    def up(self, *, names: list[str], max_connected_clusters: int = 255,
           kvstoremesh: bool = True, auth_mode: str = DEFAULT_AUTH_MODE,
           etcd_members: int = 1, kvstoremesh_replicas: int = 1,
           timeout: float = 90.0, say: Say = print) -> None:
        try:
            check_mode(auth_mode)
        except ValueError as exc:
            raise LocalMeshError(str(exc)) from None
        if etcd_members not in (1, 3, 5):
            raise LocalMeshError(f"--etcd-members must be 1, 3 or 5, not {etcd_members}")
        if not 1 <= kvstoremesh_replicas <= 5:
            raise LocalMeshError(f"--kvstoremesh-replicas must be 1 to 5, not "
                                 f"{kvstoremesh_replicas}")
        if kvstoremesh_replicas > 1 and not kvstoremesh:
            raise LocalMeshError("--kvstoremesh-replicas needs KVStoreMesh (not with "
                                 "--no-kvstoremesh)")
        if len(set(names)) != len(names):
            raise LocalMeshError(f"cluster names must be unique: {', '.join(names)}")
        if not 1 <= len(names) <= max_connected_clusters:
            raise LocalMeshError(f"the mesh needs 1 to {max_connected_clusters} clusters")
        for name in names:
            try:
                validate_cluster_name(name)
            except ValueError as exc:
                raise LocalMeshError(str(exc)) from None
        if self.exists():
            old = LocalMesh.load(self.dir)
            alive = [k for k, ok in old.running().items() if ok]
            if alive:
                raise LocalMeshError(
                    f"a local mesh is already running in {self.dir} ({', '.join(alive)}): "
                    f"run `clustermesh local down --dir {self.dir}` first, or use another "
                    "--dir")
            say(f"removing the stopped mesh left in {self.dir}")
        if self.dir.exists():
            if any(self.dir.iterdir()) and not self.exists():
                raise LocalMeshError(f"{self.dir} exists, is not empty and holds no local mesh: "
                                     "choose another --dir")
            shutil.rmtree(self.dir)
        etcd_bin = find_etcd_binary()
        self.dir.mkdir(parents=True)
        self.kvstoremesh = kvstoremesh
        self.max_connected_clusters = max_connected_clusters
        self.auth_mode = auth_mode
        say(f"local mesh in {self.dir}: {len(names)} clusters ({', '.join(names)}), "
            f"authMode {auth_mode}, etcd {etcd_bin}"
            + (f", {etcd_members} etcd members" if etcd_members > 1 else "")
            + (f", {kvstoremesh_replicas} KVStoreMesh replicas" if kvstoremesh_replicas > 1
               else "") + " per cluster")

        # 1. enable every cluster (one CA) and connect every pair.
        ca = CertificateAuthority(self.dir / "ca", name="ca")
        ports = _Ports()
        dirs: list[ClusterDir] = []
        for index, name in enumerate(names, start=1):
            c = LocalCluster(name=name, id=index, dir=self.dir / name,
                             etcd_port=ports.free(), etcd_peer_port=ports.free(),
                             apiserver_health_port=ports.free(),
                             kvstoremesh_health_port=ports.free(),
                             kvstoremesh_api_port=ports.free(),
                             etcd_members=[[ports.free(), ports.free()]
                                           for _ in range(etcd_members - 1)],
                             kvstoremesh_replicas=[[ports.free(), ports.free()]
                                                   for _ in range(kvstoremesh_replicas - 1)])
            c.metrics_ports = {name: ports.free() for name in _process_names(
                etcd_members, kvstoremesh_replicas if kvstoremesh else 0)}
            cdir = enable(c.dir, name=name, cluster_id=c.id,
                          max_connected_clusters=max_connected_clusters,
                          service_type="ClusterIP", kvstoremesh=kvstoremesh,
                          shared_ca=ca.ca_file, address=LOOPBACK, port=c.etcd_port,
                          auth_mode=auth_mode)
            cdir.extra_ports = [client for client, _ in c.etcd_members]
            cdir.write_client_configs()  # the daemons' configs list every member
            cdir.apiserver_health = f"{LOOPBACK}:{c.apiserver_health_port}"
            if kvstoremesh:
                cdir.kvstoremesh_api = c.kvstoremesh_api
                cdir.kvstoremesh_health = f"{LOOPBACK}:{c.kvstoremesh_health_port}"
            cdir.manifests_dir = "manifests"
            cdir.save()
            _write_workload(cdir)
            self.clusters.append(c)
            dirs.append(cdir)
        for i, a in enumerate(dirs):
            for b in dirs[i + 1:]:
                connect(a, b)
        for c in self.clusters:
            self.add_process_records(c, etcd_bin)
        self.save()
        self.write_prometheus_config()

        # 2. processes.
        try:
            for c in self.clusters:
                for key in self._keys(c, "etcd"):
                    self._spawn(key)
            self.save()
            asyncio.run(init_etcds(self.clusters, self.processes, timeout=min(timeout, 60.0)))
            say("etcd: " + ", ".join(f"{c.name} https://{LOOPBACK}:{c.etcd_port}"
                                     for c in self.clusters) + " (users initialised, auth on)")
            for c in self.clusters:
                self._spawn(f"{c.name}/apiserver")
            self.save()
            if kvstoremesh:
                asyncio.run(wait_remote_access(self.clusters, self.processes,
                                               timeout=min(timeout, 60.0)))
                for c in self.clusters:
                    for key in self._keys(c, "kvstoremesh"):
                        self._spawn(key)
                self.save()
            self.wait_ready(timeout=timeout, say=say)
        except BaseException:
            say("start-up failed; stopping what was started (logs kept in "
                f"{self.dir}/<cluster>/logs/)")
            self.stop_all(say=lambda _: None)
            raise

    def add_process_records(self, c: LocalCluster, etcd_bin: Path) -> None:
        """The command lines of ``c``'s etcd, apiserver and KVStoreMesh (not started)."""
        certs = c.dir / "certs"
        logs = c.dir / "logs"
        # Member 0 is "etcd" (name, data dir and log as with one member), then etcd-1, ...
        members = {name.removeprefix("etcd"): ports
                   for name, ports in c.etcd_member_ports.items()}
        initial = ",".join(f"{c.name}{sfx}=http://{LOOPBACK}:{peer_port}"
                           for sfx, (_, peer_port) in members.items())
        for sfx, (client_port, peer_port) in members.items():
            peer = f"http://{LOOPBACK}:{peer_port}"
            client = f"https://{LOOPBACK}:{client_port}"
            # Plain HTTP, whatever the client port speaks.
            metrics = c.metrics_ports.get(f"etcd{sfx}")
            self.processes[f"{c.name}/etcd{sfx}"] = ProcRecord(
                name=f"{c.name}/etcd{sfx}", log=str(logs / f"etcd{sfx}.log"), argv=[
                    str(etcd_bin), f"--name={c.name}{sfx}",
                    f"--data-dir={c.dir / f'etcd{sfx}'}",
                    f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster={initial}",
                    f"--initial-cluster-token=clustermesh-local-{c.name}",
                    "--initial-cluster-state=new",
                    f"--cert-file={certs / 'server.crt'}",
                    f"--key-file={certs / 'server.key'}",
                    "--client-cert-auth", f"--trusted-ca-file={certs / 'ca.crt'}",
                    "--heartbeat-interval=50", "--election-timeout=500",
                    "--auto-compaction-retention=1", "--logger=zap", "--log-outputs=stderr",
                    *([f"--listen-metrics-urls=http://{LOOPBACK}:{metrics}"] if metrics
                      else []),
                ])
        env = {"PYTHONPATH": os.pathsep.join(
            p for p in (str(_source_root()), os.environ.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1"}
        common = [f"--cluster-name={c.name}", f"--cluster-id={c.id}",
                  f"--max-connected-clusters={self.max_connected_clusters}",
                  f"--kvstore-opt=etcd.config={c.dir / 'etcd-admin.yaml'}"]
        self.processes[f"{c.name}/apiserver"] = ProcRecord(
            name=f"{c.name}/apiserver", log=str(logs / "apiserver.log"), env=env, argv=[
                sys.executable, "-m", "clustermesh_tools.apiserver_binary", "clustermesh",
                *common,
                "--source=manifests", f"--manifests-dir={c.dir / 'manifests'}",
                "--manifests-poll-interval=200ms",
                f"--health-port={c.apiserver_health_port}",
                *_prometheus_flag(c, "apiserver"),
                *([] if self.auth_mode == "legacy" else [
                    "--cluster-users-enabled",
                    f"--cluster-users-config-path={c.dir / 'users.yaml'}"]),
            ])
        if not self.kvstoremesh:
            return
        replicas = [(c.kvstoremesh_health_port, c.kvstoremesh_api_port),
                    *((a, b) for a, b in c.kvstoremesh_replicas)]
        for i, (health, api) in enumerate(replicas):
            sfx = f"-{i}" if i else ""
            # Several replicas share the cluster's etcd: each its own identity, and a
            # short lease, so that a killed leader is replaced within seconds.
            election = [] if len(replicas) == 1 else [
                f"--leader-election-identity={c.name}-kvstoremesh-{i}",
                "--leader-election-lease-ttl=5s"]
            self.processes[f"{c.name}/kvstoremesh{sfx}"] = ProcRecord(
                name=f"{c.name}/kvstoremesh{sfx}", log=str(logs / f"kvstoremesh{sfx}.log"),
                env=env, argv=[
                    sys.executable, "-m", "kvstoremesh.main", *common,
                    f"--clustermesh-config={c.dir / 'clustermesh'}",
                    f"--health-port={health}", f"--api-serve-addr={LOOPBACK}:{api}",
                    "--status-check-interval=1s", "--per-cluster-ready-timeout=30s",
                    *_prometheus_flag(c, f"kvstoremesh{sfx}"), *election,
                ])

    def _keys(self, c: LocalCluster, component: str) -> list[str]:
        """The process keys of ``c``'s ``component``: ``c/etcd``, ``c/etcd-1``, ..."""
        return [key for key in self.processes
                if key.startswith(f"{c.name}/") and _component(key) == component]

    def _spawn(self, key: str) -> None:
        rec = self.processes[key]
        cluster = key.split("/")[0]
        procs.spawn(rec, cwd=self.dir / cluster)

    def wait_ready(self, *, timeout: float, say: Say = print) -> None:
        """Wait until every apiserver is ready and every KVStoreMesh has every remote ready."""
        deadline = time.monotonic() + timeout
        waiting: list[str] = []
        while True:
            waiting = []
            for key, rec in self.processes.items():
                if procs.exited_early(rec):
                    raise LocalMeshError(
                        f"{key} exited (log {rec.log}):\n{log_tail(Path(rec.log))}")
            for c in self.clusters:
                if not http_ok(f"http://{LOOPBACK}:{c.apiserver_health_port}/readyz"):
                    waiting.append(f"{c.name}/apiserver")
                if not self.kvstoremesh:
                    continue
                models = fetch_status(c.kvstoremesh_api)
                expected = {o.name for o in self.clusters if o is not c}
                ready = {m["name"] for m in models or [] if m.get("ready")}
                if not expected <= ready:
                    waiting.append(f"{c.name}/kvstoremesh ({len(ready & expected)}/"
                                   f"{len(expected)} remotes ready)")
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise LocalMeshError(f"not ready after {timeout:g}s: {', '.join(waiting)}; "
                                     f"see the logs in {self.dir}/<cluster>/logs/")
            time.sleep(0.2)
        if self.kvstoremesh:
            n = len(self.clusters)
            say(f"ready: {n} clusters, {n * (n - 1)} KVStoreMesh connections ready")
        else:
            say("ready: etcd and clustermesh-apiserver of every cluster (no KVStoreMesh: "
                "agents would connect to each remote etcd directly; `status` and `check` "
                "need KVStoreMesh)")

    # ------------------------------------------------------------------ down / restart

    def stop_all(self, *, say: Say = print) -> list[str]:
        """Stop the recorded processes (KVStoreMesh, apiserver, then etcd)."""
        order = sorted(self.processes, key=lambda k: -COMPONENTS.index(_component(k)))
        results = []
        for key in order:
            result = procs.stop(self.processes[key])
            results.append(f"{key}: {result}")
            say(f"  {key} (pid {self.processes[key].pid}): {result}")
        return results

    def down(self, *, keep: bool = False, say: Say = print) -> None:
        say(f"stopping the local mesh in {self.dir}")
        self.stop_all(say=say)
        if keep:
            say(f"kept {self.dir} (logs, certificates, etcd data)")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
            say(f"removed {self.dir}")

    def start_stopped(self, *, cluster: str | None = None, timeout: float = 60.0,
                      say: Say = print) -> list[str]:
        """Start again every recorded process that is not running (same ports, same data)."""
        started = []
        for component in COMPONENTS:
            for c in self.clusters:
                if cluster is not None and c.name != cluster:
                    continue
                for key in self._keys(c, component):
                    rec = self.processes[key]
                    if procs.is_running(rec):
                        continue
                    self._spawn(key)
                    started.append(key)
                    say(f"  started {key} (pid {rec.pid})")
        self.save()
        if started:
            self.wait_ready(timeout=timeout, say=say)
        else:
            say("every process is running")
        return started

    def restart_process(self, key: str) -> str:
        """Stop the recorded process ``key`` (SIGTERM) and start it again, same command
        line; how it stopped."""
        result = procs.stop(self.processes[key])
        self._spawn(key)
        self.save()
        return result

    def stop_component(self, cluster: str, component: str, *, kill: bool = False) -> str:
        self.cluster(cluster)
        key = f"{cluster}/{component}"
        rec = self.processes.get(key)
        if rec is None:
            known = ", ".join(k.split("/", 1)[1] for k in self.processes
                              if k.startswith(f"{cluster}/"))
            raise LocalMeshError(f"{key} is not part of this mesh (components of {cluster}: "
                                 f"{known})")
        if kill:
            return "killed" if procs.kill(rec) else "not running"
        return procs.stop(rec)


# ---------------------------------------------------------------------------- helpers


def _component(key: str) -> str:
    """``cluster1/etcd-2`` -> ``etcd``."""
    return key.split("/", 1)[1].split("-", 1)[0]


def _process_names(etcd_members: int, kvstoremesh_replicas: int) -> list[str]:
    """A cluster's process names: ``apiserver``, ``kvstoremesh``, ``kvstoremesh-1``, ...,
    ``etcd``, ``etcd-1``, ..."""
    def numbered(base: str, n: int) -> list[str]:
        return [base if i == 0 else f"{base}-{i}" for i in range(n)]
    return ["apiserver", *numbered("kvstoremesh", kvstoremesh_replicas),
            *numbered("etcd", etcd_members)]


def _prometheus_flag(c: LocalCluster, name: str) -> list[str]:
    port = c.metrics_ports.get(name)
    return [f"--prometheus-serve-addr={LOOPBACK}:{port}"] if port else []


# The job of each component in prometheus.yml (the dashboard's ``job`` variable).
PROMETHEUS_JOBS = {"apiserver": "clustermesh-apiserver", "kvstoremesh": "kvstoremesh",
                   "etcd": "etcd"}


def prometheus_config(clusters: list[LocalCluster], dir: Path) -> str:
    """A Prometheus configuration scraping every metrics port of ``clusters``: one job
    per component, one static config per cluster labelled ``cluster: <name>``."""
    jobs: list[dict[str, Any]] = []
    for component, job in PROMETHEUS_JOBS.items():
        static = [{"targets": [f"{LOOPBACK}:{port}" for name, port in c.metrics_ports.items()
                               if _component(f"{c.name}/{name}") == component],
                   "labels": {"cluster": c.name}} for c in clusters]
        static = [s for s in static if s["targets"]]
        if static:
            jobs.append({"job_name": job, "metrics_path": "/metrics",
                         "static_configs": static})
    doc = {"global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
           "scrape_configs": jobs}
    return (f"# Prometheus scrape config of the local mesh in {dir} (clustermesh local up):\n"
            f"#   prometheus --config.file={dir / PROMETHEUS_FILE}\n"
            + yaml.safe_dump(doc, sort_keys=False))



def _write_workload(cdir: ClusterDir) -> None:
    from apiserver.sample import workload

    manifests = cdir.path / "manifests"
    manifests.mkdir(exist_ok=True)
    objects = workload(cluster=cdir.name, cluster_id=cdir.id,
                       max_connected_clusters=cdir.max_connected_clusters)
    write_atomic(manifests / "workload.yaml",
                 f"# sample workload of {cdir.name} (apiserver/sample.py)\n"
                 + yaml.safe_dump_all(objects, sort_keys=False))
