"""Shared pieces of the KVStoreMesh benchmarks (initial_sync, latency, scale, memory,
restart, profile_sync).  Self-contained: nothing is imported from ``tests/``.

* **Machine and result files** — :func:`machine_info`, :class:`Results` (prints one JSON
  line per figure on stdout and writes ``bench/results/<name>.json`` with machine, etcd
  version, date and arguments).
* **Data** — what a clustermesh-apiserver publishes for one cluster: ipcache entries
  (~300-byte JSON), identities (label strings), global services and nodes, under the
  *state* layout (one cluster per etcd, as Cilium does) or under the per-cluster
  *cached* layout (``cilium/cache/<res>/v1/<cluster>/...``, what a KVStoreMesh
  publishes), which lets several cluster names share one etcd process without sharing
  keys.  :func:`publish` writes cluster-config, heartbeat, the objects and the sync
  canaries.
* **The daemon** — :class:`Daemon` runs ``python -m kvstoremesh.main`` as a subprocess
  on free loopback ports, optionally under ``py-spy record``; it knows its readiness,
  status and metrics URLs, its RSS and its CPU time.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # so that `python bench/<name>.py` works from anywhere
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from bench._batch import BatchWriter, Put  # noqa: E402
from bench._etcd import EtcdProcess, free_port  # noqa: E402
from clustermesh.clusterconfig import CiliumClusterConfig  # noqa: E402
from clustermesh.etcd.client import EtcdClient  # noqa: E402
from clustermesh.etcd.config import parse_etcd_config  # noqa: E402
from clustermesh.keys import (  # noqa: E402
    ENDPOINTS,
    HEARTBEAT_KEY,
    IDENTITIES,
    NODES,
    RESOURCES,
    SERVICES,
    Resource,
    cluster_config_key,
)
from kvstoremesh.resources import Reflection, reflection  # noqa: E402

RESULTS = REPO / "bench" / "results"
LOCAL_NAME = "local"
LOCAL_ID = 255  # remotes use 1..250
HEARTBEAT_VALUE = b"2026-01-01T00:00:00Z"
MIRRORED = (ENDPOINTS, IDENTITIES, NODES, SERVICES)  # service exports: not advertised


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return None


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "cpu_model": cpu_model(),
        "mem_total_gib": mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": version_of("grpcio"),
        "protobuf": version_of("protobuf"),
    }


def etcd_info(etcd: EtcdProcess) -> dict[str, Any]:
    args = [a for a in etcd.args()[1:]
            if not a.startswith(("--data-dir=", "--listen-", "--advertise-", "--initial-"))]
    return {"binary": str(etcd.binary), "version": etcd.version, "args": args}


class Results:
    """Figures of one benchmark run: JSON lines on stdout, one file in bench/results/."""

    def __init__(self, name: str, args: Any, output: Path | None = None) -> None:
        self.name = name
        self.output = output or RESULTS / f"{name}.json"
        self.args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        self.started = dt.datetime.now(dt.UTC)
        self.t0 = time.monotonic()
        self.figures: list[dict[str, Any]] = []
        self.etcd: dict[str, Any] = {}
        self.notes: list[str] = []
        # Other work on the machine skews every figure: say how busy it was.
        self.loadavg_start = [round(x, 2) for x in os.getloadavg()]

    def emit(self, figure: str, value: Any, unit: str, **extra: Any) -> dict[str, Any]:
        record = {"figure": figure, "value": value, "unit": unit, **extra}
        self.figures.append(record)
        print(json.dumps(record), flush=True)
        return record

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"note: {text}")

    def write(self) -> Path:
        document = {
            "benchmark": f"bench/{self.name}.py",
            "date": self.started.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - self.t0, 1),
            "machine": {**machine_info(), "loadavg_1_5_15_at_start": self.loadavg_start,
                        "loadavg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]},
            "etcd": self.etcd,
            "args": self.args,
            "notes": self.notes,
            "figures": self.figures,
        }
        self.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output.with_name(self.output.name + ".tmp")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        tmp.replace(self.output)
        log(f"results written to {self.output}")
        return self.output


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Shape:
    """How many objects of each kind one cluster publishes."""

    endpoints: int = 0
    identities: int = 0
    services: int = 0
    nodes: int = 0

    @property
    def total(self) -> int:
        return self.endpoints + self.identities + self.services + self.nodes

    def count(self, resource: Resource) -> int:
        return {ENDPOINTS: self.endpoints, IDENTITIES: self.identities,
                SERVICES: self.services, NODES: self.nodes}.get(resource, 0)

    def scaled(self, total: int) -> Shape:
        """The same proportions with ``total`` objects (rounded; at least one of each kind
        present in self)."""
        f = total / self.total
        return Shape(*(max(1, round(n * f)) if n else 0 for n in
                       (self.endpoints, self.identities, self.services, self.nodes)))

    def as_dict(self) -> dict[str, int]:
        return {"endpoints": self.endpoints, "identities": self.identities,
                "services": self.services, "nodes": self.nodes, "total": self.total}


def _ip(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def endpoint_suffix(cid: int, i: int) -> str:
    return _ip(i)


def endpoint_value(name: str, cid: int, i: int, tag: str = "") -> bytes:
    """An ipcache entry (``identity.IPIdentityPair``), ~300 bytes."""
    ip = _ip(i)
    identity = (cid << 16) + i % 60000
    return (f'{{"IP":"{ip}","HostIP":"172.18.{cid % 256}.{i % 250}","ID":{identity},'
            f'"Key":0,"Metadata":"{tag}","K8sNamespace":"namespace-{i % 50}","K8sPodName":'
            f'"deployment-{i % 997}-7d9f8c6b5-{i:08x}","K8sPodUID":"{i:08x}-1c2d-4e5f-8a9b-'
            f'0c1d2e3f4a5b","K8sServiceAccount":"default","NamedPorts":[{{"Name":"http",'
            f'"Port":8080,"Protocol":"TCP"}}]}}').encode()


def identity_suffix(cid: int, i: int) -> str:
    return str((cid << 16) + 256 + i)


def identity_value(name: str, cid: int, i: int, tag: str = "") -> bytes:
    ns = f"namespace-{i % 50}"
    return (f"k8s:app=app-{i};k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name="
            f"{ns};k8s:io.cilium.k8s.policy.cluster={name};k8s:io.cilium.k8s.policy."
            f"serviceaccount=default;k8s:io.kubernetes.pod.namespace={ns};"
            f"k8s:version=v{i % 7}{tag};").encode()


def service_suffix(cid: int, i: int) -> str:
    return f"namespace-{i % 50}/service-{i}"


def service_value(name: str, cid: int, i: int, tag: str = "") -> bytes:
    backends = ",".join(f'"10.{cid % 256}.{(i + b) // 256 % 256}.{(i + b) % 256}":{{"http":'
                        f'{{"Protocol":"TCP","Port":8080}}}}' for b in range(3))
    return (f'{{"cluster":"{name}","namespace":"namespace-{i % 50}","name":"service-{i}",'
            f'"frontends":{{"10.96.{i // 256 % 256}.{i % 256}":{{"http":{{"Protocol":"TCP",'
            f'"Port":80}}}}}},"backends":{{{backends}}},"labels":{{"app":"app-{i}{tag}"}},'
            f'"selector":{{"app":"app-{i}"}},"includeExternal":true,"shared":true,'
            f'"clusterID":{cid}}}').encode()


def node_suffix(cid: int, i: int) -> str:
    return f"node-{i:05d}"


def node_value(name: str, cid: int, i: int, tag: str = "") -> bytes:
    return (f'{{"Name":"node-{i:05d}","Cluster":"{name}","IPAddresses":[{{"Type":"InternalIP",'
            f'"IP":"172.18.{cid % 256}.{i % 250}"}},{{"Type":"CiliumInternalIP","IP":'
            f'"10.{cid % 256}.{i % 256}.1"}}],"IPv4AllocCIDR":{{"IP":"10.{cid % 256}.{i % 256}.0",'
            f'"Mask":"////AA=="}},"IPv4HealthIP":"10.{cid % 256}.{i % 256}.2","ClusterID":{cid},'
            f'"Source":"custom-resource","EncryptionKey":0,"Labels":{{"kubernetes.io/hostname":'
            f'"node-{i:05d}","topology.kubernetes.io/zone":"zone-{i % 3}{tag}"}},'
            f'"NodeIdentity":{(cid << 16) + 1},"BootID":"{i:08x}-boot"}}').encode()


GENERATORS = {
    ENDPOINTS: (endpoint_suffix, endpoint_value),
    IDENTITIES: (identity_suffix, identity_value),
    SERVICES: (service_suffix, service_value),
    NODES: (node_suffix, node_value),
}


def object_key(resource: Resource, name: str, cid: int, i: int, *, cached: bool) -> bytes:
    suffix = GENERATORS[resource][0](cid, i)
    return (resource.remote_prefix(name, cached=cached) + suffix).encode()


def object_value(resource: Resource, name: str, cid: int, i: int, tag: str = "") -> bytes:
    return GENERATORS[resource][1](name, cid, i, tag)


def cache_key(resource: Resource, name: str, cid: int, i: int) -> bytes:
    """Where KVStoreMesh caches object ``i`` of ``name`` in the local etcd."""
    return (resource.cache_prefix(name) + GENERATORS[resource][0](cid, i)).encode()


def objects(name: str, cid: int, shape: Shape, *, cached: bool) -> Iterator[Put]:
    """Every object of one cluster as a remote-side Put."""
    for resource in MIRRORED:
        suffix_of, value_of = GENERATORS[resource]
        prefix = resource.remote_prefix(name, cached=cached)
        for i in range(shape.count(resource)):
            yield Put(f"{prefix}{suffix_of(cid, i)}".encode(), value_of(name, cid, i))


def cache_objects(name: str, cid: int, shape: Shape) -> Iterator[Put]:
    """The same objects as KVStoreMesh writes them into the local cache."""
    for resource in MIRRORED:
        suffix_of, value_of = GENERATORS[resource]
        prefix = resource.cache_prefix(name)
        for i in range(shape.count(resource)):
            yield Put(f"{prefix}{suffix_of(cid, i)}".encode(), value_of(name, cid, i))


def _config(cid: int, *, cached: bool) -> CiliumClusterConfig:
    return CiliumClusterConfig(id=cid, synced_canaries=True, cached=cached,
                               max_connected_clusters=255)


def cluster_config(cid: int, *, cached: bool) -> bytes:
    return _config(cid, cached=cached).to_json()


# The canaries of a bench cluster, on the remote and in the cache: its config has no
# EndpointSlice export mode (a 1.18/1.19 peer), so EndpointSlices have none.
CANARIED = tuple(r for r in RESOURCES
                 if reflection(r, _config(1, cached=False)) is not Reflection.OFF)


def client_for(url: str, *, name: str | None = None, timeout: float = 120.0) -> EtcdClient:
    return EtcdClient(parse_etcd_config(f"endpoints:\n- {url}\n"), name=name or url,
                      request_timeout=timeout)


async def publish(client: EtcdClient, name: str, cid: int, shape: Shape, *, cached: bool,
                  canaries: bool = True, inflight: int = 8) -> int:
    """Publish one cluster as its clustermesh-apiserver (or KVStoreMesh) would; returns
    the number of objects written."""
    await client.put(cluster_config_key(name).encode(), cluster_config(cid, cached=cached))
    await client.put(HEARTBEAT_KEY.encode(), HEARTBEAT_VALUE)
    await BatchWriter(client, max_inflight=inflight).apply(objects(name, cid, shape,
                                                                   cached=cached))
    if canaries:
        await write_canaries(client, name, cached=cached)
    return shape.total


async def write_canaries(client: EtcdClient, name: str, *, cached: bool) -> None:
    for resource in CANARIED:
        await client.put(resource.remote_canary(name, cached=cached).encode(), HEARTBEAT_VALUE)


def local_canaries(names: Iterable[str]) -> set[bytes]:
    """The sync canaries KVStoreMesh writes locally once each cluster is cached."""
    return {r.cache_canary(n).encode() for n in names for r in CANARIED}


async def count_prefix(client: EtcdClient, prefix: bytes) -> int:
    from clustermesh.etcd.client import prefix_range_end
    return (await client.range(prefix, prefix_range_end(prefix), count_only=True)).count


async def revision(client: EtcdClient) -> int:
    return (await client.status()).revision


# ----------------------------------------------------------------------------- processes


def proc_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` (0.0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def proc_status_kib(pid: int, field_name: str) -> int:
    """A ``VmRSS``/``VmHWM`` style field of /proc/<pid>/status, in KiB (0 if unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid``."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return sorted(kids)


class CpuMeter:
    """CPU seconds used by a set of processes (by pid) and by this process over a span."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def snapshot(self) -> dict[str, float]:
        snap = {name: proc_cpu_seconds(pid) for name, pid in self.pids.items()}
        snap["bench"] = self_cpu_seconds()
        return snap

    def start(self) -> None:
        self._start = self.snapshot()

    def stop(self) -> dict[str, float]:
        end = self.snapshot()
        return {k: round(end[k] - self._start.get(k, 0.0), 2) for k in end}


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> {name: [(labels, value)]} (enough for our gauges)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, labels = head, {}
        if "{" in head:
            name, _, rest = head.partition("{")
            for part in rest.rstrip("}").split('",'):
                if "=" in part:
                    k, _, v = part.partition("=")
                    labels[k.strip(",")] = v.strip('"')
        try:
            out.setdefault(name, []).append((labels, float(value)))
        except ValueError:
            continue
    return out


def metric_sum(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(v for _, v in metrics.get(name, []))


@dataclass
class Daemon:
    """``python -m kvstoremesh.main`` on free loopback ports, in its own work directory."""

    workdir: Path
    local_url: str
    max_txn_ops: int = 128
    max_inflight: int = 4
    extra_args: Sequence[str] = ()
    profile_output: Path | None = None  # run under `py-spy record` writing this file
    profile_format: str = "speedscope"
    profile_rate: int = 100
    repo: Path = REPO  # the source tree the daemon runs from (an A/B baseline, say)
    health_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def __post_init__(self) -> None:
        compile_tree(self.repo)
        (self.workdir / "clustermesh").mkdir(parents=True, exist_ok=True)
        (self.workdir / "local.yaml").write_text(f"endpoints:\n- {self.local_url}\n")

    def configure(self, remotes: dict[str, str]) -> None:
        """One config file per remote cluster name: ``{name: etcd URL}``."""
        directory = self.workdir / "clustermesh"
        for old in directory.iterdir():
            if old.name not in remotes:
                old.unlink()
        for name, url in remotes.items():
            (directory / name).write_text(f"endpoints:\n- {url}\n")

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "kvstoremesh.main", "--cluster-name", LOCAL_NAME,
                "--cluster-id", str(LOCAL_ID), "--clustermesh-config",
                str(self.workdir / "clustermesh"),
                "--kvstore-opt", f"etcd.config={self.workdir / 'local.yaml'}",
                "--kvstore-opt", f"etcd.maxInflight={self.max_inflight}",
                "--max-txn-ops", str(self.max_txn_ops),
                "--health-port", str(self.health_port),
                "--api-serve-addr", f"127.0.0.1:{self.api_port}",
                "--prometheus-serve-addr", f"127.0.0.1:{self.metrics_port}",
                "--log-level", os.environ.get("BENCH_LOG_LEVEL", "warning"), *self.extra_args]
        if self.profile_output is not None:
            py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) \
                or shutil.which("py-spy")
            if py_spy is None:
                raise SystemExit("py-spy not found: pip install py-spy (into this venv)")
            argv = [py_spy, "record", "-o", str(self.profile_output), "--format",
                    self.profile_format, "--nonblocking", "-r", str(self.profile_rate), "--", *argv]
        return argv

    @property
    def log_path(self) -> Path:
        return self.workdir / "kvstoremesh.log"

    def start(self) -> float:
        # `python -m` puts the working directory first on sys.path: run from the tree.
        env = {**os.environ, "PYTHONPATH": str(self.repo)}
        with self.log_path.open("ab") as logfile:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(self.argv(), env=env, cwd=self.repo,
                                         stdin=subprocess.DEVNULL, stdout=logfile,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self.started_at

    @property
    def pid(self) -> int | None:
        """The daemon's pid (under py-spy: py-spy's child)."""
        if self.proc is None:
            return None
        if self.profile_output is None:
            return self.proc.pid
        kids = children(self.proc.pid)
        return kids[0] if kids else None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"kvstoremesh exited with {self.proc.returncode}; log "
                               f"{self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def rss_mib(self) -> float:
        pid = self.pid
        return proc_status_kib(pid, "VmRSS") / 1024 if pid else 0.0

    def peak_rss_mib(self) -> float:
        pid = self.pid
        return proc_status_kib(pid, "VmHWM") / 1024 if pid else 0.0

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    async def _get(self, session: aiohttp.ClientSession, port: int, path: str
                   ) -> tuple[int, str]:
        async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status, await resp.text()

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        try:
            status, _ = await self._get(session, self.health_port, "/readyz")
        except (aiohttp.ClientError, OSError):
            return False
        return status == 200

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float,
                         interval: float = 0.05) -> float:
        """Seconds from start to /readyz answering 200."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if await self.ready(session):
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                raise TimeoutError(f"kvstoremesh not ready after {timeout:.0f}s; log tail:\n"
                                   f"{self.log_tail()}")
            await asyncio.sleep(interval)

    async def metrics(self, session: aiohttp.ClientSession
                      ) -> dict[str, list[tuple[dict[str, str], float]]]:
        _, text = await self._get(session, self.metrics_port, "/metrics")
        return parse_metrics(text)

    async def status(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        _, text = await self._get(session, self.api_port, "/v1/cluster")
        return json.loads(text)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.profile_output is not None and sig == signal.SIGTERM:
                # Stop the daemon, not py-spy: py-spy then writes its profile and exits.
                kids = children(proc.pid)
                os.kill(kids[0] if kids else proc.pid, sig)
            else:
                os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"clustermesh-{prefix}-"))
    try:
        yield path
    finally:
        if os.environ.get("BENCH_KEEP"):
            print("kept", path, file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    """Start ``daemon`` and stop it (SIGTERM) however the block ends."""
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


async def wait_keys(client: EtcdClient, keys: set[bytes], *, timeout: float,
                    interval: float = 0.02, daemon: Daemon | None = None,
                    prefix: bytes = b"cilium/synced/") -> float:
    """Monotonic time at which every key of ``keys`` (all under ``prefix``) exists."""
    deadline = time.monotonic() + timeout
    while True:
        if daemon is not None:
            daemon.check_alive()
        kvs, _ = await client.list_prefix(prefix)
        if keys <= {kv.key for kv in kvs}:
            return time.monotonic()
        if time.monotonic() > deadline:
            missing = len(keys - {kv.key for kv in kvs})
            raise TimeoutError(f"{missing} of {len(keys)} keys missing after {timeout:.0f}s"
                               + (f"; daemon log:\n{daemon.log_tail()}" if daemon else ""))
        await asyncio.sleep(interval)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def start_etcds(count: int, *, extra_args: Sequence[str] = ()) -> list[EtcdProcess]:
    """Start ``count`` etcd processes (stopped by the caller, or at exit)."""
    started: list[EtcdProcess] = []
    try:
        for _ in range(count):
            etcd = EtcdProcess(extra_args=extra_args)
            etcd.start()
            started.append(etcd)
    except BaseException:
        for etcd in started:
            etcd.stop()
        raise
    return started


@contextlib.contextmanager
def etcds(count: int, *, extra_args: Sequence[str] = ()) -> Iterator[list[EtcdProcess]]:
    procs = start_etcds(count, extra_args=extra_args)
    try:
        yield procs
    finally:
        for etcd in procs:
            etcd.stop()


@functools.cache
def compile_tree(root: Path) -> None:
    """Byte-compile a source tree's packages, as the image ships them (its Dockerfile runs
    compileall): without this, every daemon spawned under PYTHONDONTWRITEBYTECODE (or from
    a fresh checkout) would compile its modules again, a start-up cost no user pays."""
    for package in ("clustermesh", "kvstoremesh", "apiserver", "clustermesh_tools", "bench"):
        if (root / package).is_dir():
            compileall.compile_dir(root / package, quiet=1)


def bench_main(coro_fn: Any, args: Any) -> int:
    """Run ``coro_fn(args)``; Ctrl-C and SIGTERM stop every etcd and daemon we started."""
    from bench._etcd import exit_on_termination_signals
    exit_on_termination_signals()
    compile_tree(REPO)
    try:
        asyncio.run(coro_fn(args))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0
