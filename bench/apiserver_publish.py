#!/usr/bin/env python3
"""clustermesh-apiserver: the initial publish of 100k CiliumEndpoints, and a restart.

    python bench/apiserver_publish.py                      # 100k CEPs, 5 + 5 runs
    python bench/apiserver_publish.py --quick --repeat 2   # smoke run: 5k CEPs

Design:

* **Kubernetes.**  One stand-in serves the whole run: ``bench/kube_standin.py``, a
  separate process (benchmarks import nothing from ``tests/``; that launcher puts
  ``tests/harness`` on its own ``sys.path`` and serves the test suite's FakeKube) holding
  ``--endpoints`` CiliumEndpoints across 50 Namespaces; the other kinds the apiserver
  lists are served empty.
* **Ours.**  ``python -m clustermesh_tools.apiserver_binary clustermesh`` (the real entry
  point) with the flags the tests give it — ``--cluster-name``, ``--cluster-id``,
  ``--kvstore-opt etcd.config=...``, ``--k8s-kubeconfig-path`` and a free
  ``--health-port`` — and defaults otherwise (``--k8s-client-qps 10``/``burst 20``, 500
  objects per page, 128-op Txns, 4 in flight), against a fresh local etcd per run.  Timed
  from spawn until the ipcache sync canary
  ``cilium/synced/<cluster>/cilium/state/ip/v1`` exists, when all N ipcache keys
  ``cilium/state/ip/v1/default/<IP>`` must be there (checked).  keys/s = N / seconds.
* **Reference.**  ``bench/bare_publisher.py``, a fresh process against a fresh etcd:
  the same list through kubernetes_asyncio (same paging), the apiserver's own converter
  (``apiserver.converters.endpoint_entries``), 128-op Txns 4 in flight through
  ``clustermesh.etcd.client``, then the canary; timed from spawn to canary alike.  The
  first pair's ipcache trees are compared byte for byte (the canary's value, a
  timestamp, aside): a difference aborts the run.
* Ours and the reference alternate, ``--repeat`` runs each; median, min and max.
* **Restart.**  After the first of our runs: SIGTERM, restart on the same etcd, wait for
  ``/readyz``, let it settle ``--settle`` seconds, then count the keys whose
  ``mod_revision`` moved past the revision before the restart, plus keys that
  disappeared.  Writes under ``cilium/state/`` and ``cilium/synced/`` (the publish) are
  the figure and must be 0; the daemon's own keys (heartbeat, cluster-config) are
  reported beside it.

Figures: ``apiserver_initial_publish`` (keys/s) and ``apiserver_restart_writes``
(writes), in bench/results/apiserver_publish.json (``--quick``:
apiserver_publish-quick.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench._etcd import EtcdProcess, free_port
from bench._mesh import (
    REPO,
    RESULTS,
    Results,
    bench_main,
    client_for,
    count_prefix,
    etcd_info,
    log,
    median,
    version_of,
    workdir,
)
from clustermesh.etcd.client import EtcdClient
from clustermesh.keys import ENDPOINTS

CLUSTER = "cluster1"
CLUSTER_ID = 1
IPCACHE = ENDPOINTS.state_prefix(CLUSTER).encode()  # cilium/state/ip/v1/default/
CANARY = ENDPOINTS.state_canary(CLUSTER).encode()
PUBLISHED = (b"cilium/state/", b"cilium/synced/")


def spawn(argv: list[str], log_path: Path, *, stdout: int | None = None
          ) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_path.open("ab") as logfile:
        return subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else logfile,
                                stderr=logfile, start_new_session=True)


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> int | None:
    """SIGTERM ``proc`` (by pid, only processes we started), SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc is not None else None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class StandIn:
    """bench/kube_standin.py as a child process (stdin kept open: EOF stops it)."""

    def __init__(self, directory: Path, endpoints: int) -> None:
        self.kubeconfig = directory / "kubeconfig"
        self.log_path = directory / "kube_standin.log"
        self.endpoints = endpoints
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = 300.0) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log_path.open("ab") as logfile:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "kube_standin.py"), "--endpoints",
                 str(self.endpoints), "--kubeconfig", str(self.kubeconfig)],
                env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=logfile, start_new_session=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            raise RuntimeError(f"stand-in did not start:\n{tail(self.log_path)}")
        self.info = json.loads(line)
        return self.info

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"stand-in exited:\n{tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
        stop(self.proc)


class Apiserver:
    """Our daemon: ``python -m clustermesh_tools.apiserver_binary clustermesh``."""

    def __init__(self, directory: Path, etcd_url: str, kubeconfig: Path,
                 extra: list[str]) -> None:
        self.config = directory / "etcd.yaml"
        self.config.write_text(f"endpoints:\n- {etcd_url}\n")
        self.log_path = directory / "apiserver.log"
        self.kubeconfig = kubeconfig
        self.extra = extra
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> float:
        argv = [sys.executable, "-m", "clustermesh_tools.apiserver_binary", "clustermesh",
                "--cluster-name", CLUSTER, "--cluster-id", str(CLUSTER_ID),
                "--kvstore-opt", f"etcd.config={self.config}",
                "--k8s-kubeconfig-path", str(self.kubeconfig),
                "--health-port", str(self.health_port),
                "--log-level", os.environ.get("BENCH_LOG_LEVEL", "info"), *self.extra]
        self.started_at = time.monotonic()
        self.proc = spawn(argv, self.log_path)
        return self.started_at

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"apiserver exited with {self.proc.returncode}:\n"
                               f"{tail(self.log_path)}")

    async def wait_ready(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        async with aiohttp.ClientSession() as session:
            while True:
                self.check_alive()
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return time.monotonic()
                except (aiohttp.ClientError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"apiserver not ready after {timeout:.0f}s:\n"
                                       f"{tail(self.log_path)}")
                await asyncio.sleep(0.05)

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        return stop(proc)


async def wait_canary(client: EtcdClient, *, timeout: float, alive: Any,
                      interval: float = 0.01) -> float:
    """Monotonic time at which the ipcache canary exists."""
    deadline = time.monotonic() + timeout
    while True:
        alive()
        if await client.get(CANARY) is not None:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {CANARY.decode()} after {timeout:.0f}s")
        await asyncio.sleep(interval)


async def ipcache_tree(client: EtcdClient) -> dict[bytes, bytes]:
    kvs, _ = await client.list_prefix(IPCACHE)
    return {kv.key: kv.value for kv in kvs}


async def check_count(client: EtcdClient, expected: int, who: str) -> None:
    n = await count_prefix(client, IPCACHE)
    if n != expected:
        raise RuntimeError(f"{who}: {n} ipcache keys at the canary, expected {expected}")


async def run_ours(args: argparse.Namespace, base: Path, kube: StandIn, index: int,
                   restart: bool) -> tuple[float, dict[bytes, bytes] | None,
                                           dict[str, Any] | None, EtcdProcess]:
    etcd = EtcdProcess()
    etcd.start()
    directory = base / f"ours-{index}"
    directory.mkdir()
    daemon = Apiserver(directory, etcd.client_url, kube.kubeconfig, args.apiserver_arg)
    client = client_for(etcd.client_url)
    await client.connect()
    try:
        t0 = daemon.start()

        def alive() -> None:
            daemon.check_alive()
            kube.check_alive()

        t1 = await wait_canary(client, timeout=args.timeout, alive=alive)
        seconds = t1 - t0
        await check_count(client, args.endpoints, "ours")
        tree = await ipcache_tree(client) if index == 0 else None
        restart_result = await measure_restart(args, daemon, client) if restart else None
        return seconds, tree, restart_result, etcd
    finally:
        daemon.stop()
        await client.close()
        etcd.stop()


async def all_keys(client: EtcdClient) -> dict[bytes, int]:
    kvs, _ = await client.list_prefix(b"cilium/")
    return {kv.key: kv.mod_revision for kv in kvs}


async def measure_restart(args: argparse.Namespace, daemon: Apiserver,
                          client: EtcdClient) -> dict[str, Any]:
    await daemon.wait_ready(args.timeout)  # every resource synced, nothing in flight
    rc = daemon.stop()
    before = await all_keys(client)
    rev0 = (await client.status()).revision
    t0 = daemon.start()
    t1 = await daemon.wait_ready(args.timeout)
    await asyncio.sleep(args.settle)
    daemon.check_alive()
    after = await all_keys(client)
    rev1 = (await client.status()).revision
    changed = sorted(k for k, rev in after.items() if rev > rev0)
    deleted = sorted(k for k in before if k not in after)
    touched = changed + deleted
    publish = [k for k in touched if k.startswith(PUBLISHED)]
    other = [k for k in touched if not k.startswith(PUBLISHED)]
    log(f"restart: ready after {t1 - t0:.2f}s; publish writes {len(publish)}, "
        f"other writes {len(other)} ({', '.join(k.decode() for k in other[:5])}); "
        f"revision {rev0} -> {rev1}")
    return {"writes": len(publish), "published_keys_written": [k.decode() for k in publish[:20]],
            "other_keys_written": [k.decode() for k in other], "revision_before": rev0,
            "revision_after": rev1, "ready_after_s": round(t1 - t0, 3),
            "settle_s": args.settle, "first_exit_code": rc}


async def run_reference(args: argparse.Namespace, base: Path, kube: StandIn, index: int
                        ) -> tuple[float, dict[str, Any], dict[bytes, bytes] | None]:
    etcd = EtcdProcess()
    etcd.start()
    log_path = base / f"reference-{index}.log"
    client = client_for(etcd.client_url)
    await client.connect()
    try:
        t0 = time.monotonic()
        proc = spawn([sys.executable, str(REPO / "bench" / "bare_publisher.py"),
                      "--kubeconfig", str(kube.kubeconfig), "--etcd", etcd.client_url,
                      "--cluster", CLUSTER], log_path, stdout=subprocess.PIPE)
        out, _ = await asyncio.to_thread(proc.communicate, None, args.timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"bare_publisher failed ({proc.returncode}):\n{tail(log_path)}")
        seconds = time.monotonic() - t0
        report = json.loads(out)
        await check_count(client, args.endpoints, "reference")
        if await client.get(CANARY) is None:
            raise RuntimeError("reference: no canary")
        tree = await ipcache_tree(client) if index == 0 else None
        return seconds, report, tree
    finally:
        await client.close()
        etcd.stop()


def summary(samples: list[float], digits: int = 1) -> dict[str, Any]:
    return {"median": round(median(samples), digits), "min": round(min(samples), digits),
            "max": round(max(samples), digits), "samples": [round(s, digits) for s in samples]}


async def run(args: argparse.Namespace) -> None:
    results = Results("apiserver_publish", args, output=args.output)
    n = args.endpoints
    ours_rate: list[float] = []
    ref_rate: list[float] = []
    ours_s: list[float] = []
    ref_s: list[float] = []
    ref_internal: list[float] = []
    restart: dict[str, Any] | None = None
    with workdir("apiserver-publish") as base:
        kube = StandIn(base, n)
        try:
            info = kube.start()
            log(f"stand-in: {n} CiliumEndpoints at {info['url']} (built in {info['build_s']}s)")
            results.note(f"stand-in built {n} CiliumEndpoints in {info['build_s']}s")
            trees: dict[str, dict[bytes, bytes]] = {}
            for i in range(args.repeat):
                seconds, tree, restarted, etcd = await run_ours(args, base, kube, i,
                                                                restart=(i == 0))
                if i == 0:
                    results.etcd = etcd_info(etcd)
                    restart = restarted
                if tree is not None:
                    trees["ours"] = tree
                ours_s.append(seconds)
                ours_rate.append(n / seconds)
                log(f"ours      #{i}: {seconds:.2f}s, {n / seconds:.0f} keys/s")
                seconds, report, tree = await run_reference(args, base, kube, i)
                if tree is not None:
                    trees["reference"] = tree
                    if trees["reference"] != trees["ours"]:
                        diff = set(trees["reference"].items()) ^ set(trees["ours"].items())
                        raise RuntimeError(f"ipcache trees differ ({len(diff)} items), e.g. "
                                           f"{sorted(diff)[:2]}")
                    log(f"ipcache trees identical ({len(tree)} keys)")
                    results.note(f"first pair: ipcache trees identical, {len(tree)} keys, "
                                 "byte for byte")
                ref_s.append(seconds)
                ref_rate.append(n / seconds)
                ref_internal.append(float(report["seconds"]))
                log(f"reference #{i}: {seconds:.2f}s, {n / seconds:.0f} keys/s "
                    f"(its own timer: {report['seconds']:.2f}s)")
        finally:
            kube.stop()
    ratio = round(median(ours_rate) / median(ref_rate), 2)
    results.emit("apiserver_initial_publish", round(median(ours_rate), 1), "keys/s",
                 endpoints=n, runs=summary(ours_rate),
                 reference={"name": "bare lister+writer", **summary(ref_rate)},
                 ratio=ratio, goal="≥ 0.8\u00d7", met=ratio >= 0.8,
                 seconds={"ours": summary(ours_s, 3), "reference": summary(ref_s, 3),
                          "reference_own_timer": summary(ref_internal, 3)},
                 versions={d: version_of(d) for d in ("kubernetes_asyncio", "aiohttp")})
    assert restart is not None
    writes = restart.pop("writes")
    results.emit("apiserver_restart_writes", writes, "writes", goal="0", met=writes == 0,
                 **restart)
    results.write()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoints", type=int, default=None,
                   help="CiliumEndpoints in the stand-in (default 100000; --quick 5000)")
    p.add_argument("--repeat", type=int, default=5, help="runs of ours and of the reference")
    p.add_argument("--quick", action="store_true", help="5000 CiliumEndpoints")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds after the restarted daemon is ready before counting writes")
    p.add_argument("--apiserver-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for our daemon (repeatable), e.g. "
                        "--apiserver-arg=--k8s-client-qps=0")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    if args.endpoints is None:
        args.endpoints = 5000 if args.quick else 100000
    if args.output is None:
        args.output = RESULTS / ("apiserver_publish-quick.json" if args.quick
                                 else "apiserver_publish.json")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return bench_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
