"""Run the real ``kvstoremesh`` daemon against two remote etcds with 100k keys each.

    python bench/two_remotes.py [--keys 100000] [--output bench/results/two_remotes.json]

Starts three etcd processes (two remotes, one local cache), fills each remote
the way a clustermesh-apiserver would (cluster-config, heartbeat, ipcache
entries of ~300 bytes, sync canaries), starts ``python -m kvstoremesh.main`` as
a subprocess and measures the time until every local sync canary of both
clusters exists, then checks that the cache holds every key.  It then restarts
the daemon on the full cache and counts the local writes the restart issued
(the local etcd revision must not move).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _etcd import EtcdProcess, exit_on_termination_signals

from bench._batch import BatchWriter, Put
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import parse_etcd_config
from clustermesh.keys import RESOURCES, cluster_config_key
from kvstoremesh.resources import Reflection, reflection

ROOT = Path(__file__).resolve().parent.parent


def client_for(url: str) -> EtcdClient:
    return EtcdClient(parse_etcd_config(f"endpoints:\n- {url}\n"), name=url)


def ipcache_value(cluster_id: int, i: int) -> bytes:
    ip = f"10.{cluster_id}.{i // 256 % 256}.{i % 256}"
    identity = (cluster_id << 16) + i % 60000
    return (f'{{"IP":"{ip}","HostIP":"172.18.{cluster_id}.{i % 250}","ID":{identity},'
            f'"Key":0,"Metadata":"","K8sNamespace":"namespace-{i % 50}","K8sPodName":'
            f'"deployment-{i % 997}-7d9f8c6b5-{i:08x}","K8sPodUID":"{i:08x}-1c2d-4e5f-8a9b-'
            f'0c1d2e3f4a5b","K8sServiceAccount":"default","NamedPorts":[{{"Name":"http",'
            f'"Port":8080,"Protocol":"TCP"}}]}}').encode()


def cluster_config(cluster_id: int) -> CiliumClusterConfig:
    return CiliumClusterConfig(id=cluster_id, synced_canaries=True, max_connected_clusters=255)


# The canaries of both clusters, remote and cached: their config has no EndpointSlice
# export mode (a 1.18/1.19 peer), so EndpointSlices have none.
CANARIED = tuple(r for r in RESOURCES if reflection(r, cluster_config(1)) is not Reflection.OFF)


async def fill_remote(url: str, name: str, cluster_id: int, keys: int) -> None:
    async with client_for(url) as client:
        await client.put(cluster_config_key(name).encode(),
                         cluster_config(cluster_id).to_json())
        await client.put(b"cilium/.heartbeat", b"2026-01-01T00:00:00Z")
        writer = BatchWriter(client, max_inflight=8)
        await writer.apply(
            Put(f"cilium/state/ip/v1/default/10.{cluster_id}.{i // 256 % 256}.{i % 256}"
                f"-{i // 65536}".encode(), ipcache_value(cluster_id, i))
            for i in range(keys))
        for resource in CANARIED:
            await client.put(resource.state_canary(name).encode(), b"2026-01-01T00:00:00Z")


async def wait_canaries(local_url: str, names: list[str], timeout: float) -> float:
    wanted = {r.cache_canary(n).encode() for n in names for r in CANARIED}
    start = time.monotonic()
    async with client_for(local_url) as local:
        while True:
            kvs, _ = await local.list_prefix(b"cilium/synced/")
            if wanted <= {kv.key for kv in kvs}:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"canaries missing after {timeout}s")
            await asyncio.sleep(0.05)


async def local_stats(local_url: str) -> tuple[int, int]:
    async with client_for(local_url) as local:
        count = (await local.range(b"cilium/cache/", b"cilium/cache0", count_only=True)).count
        return count, (await local.status()).revision


def start_daemon(workdir: Path, local_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "kvstoremesh.main", "--cluster-name", "local", "--cluster-id",
         "200", "--clustermesh-config", str(workdir / "clustermesh"), "--kvstore-opt",
         f"etcd.config={workdir / 'local.yaml'}", "--kvstore-opt", "etcd.maxInflight=8",
         "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / "kvstoremesh.log", "ab"))


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


async def run(keys: int) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="two-remotes-"))
    (workdir / "clustermesh").mkdir()
    with EtcdProcess() as r1, EtcdProcess() as r2, EtcdProcess() as local:
        t = time.monotonic()
        await asyncio.gather(fill_remote(r1.client_url, "cluster1", 1, keys),
                             fill_remote(r2.client_url, "cluster2", 2, keys))
        fill_seconds = time.monotonic() - t
        for name, server in (("cluster1", r1), ("cluster2", r2)):
            (workdir / "clustermesh" / name).write_text(f"endpoints:\n- {server.client_url}\n")
        (workdir / "local.yaml").write_text(f"endpoints:\n- {local.client_url}\n")

        proc = start_daemon(workdir, local.client_url)
        try:
            sync_seconds = await wait_canaries(local.client_url, ["cluster1", "cluster2"], 600)
            rss = peak_rss_mib(proc.pid)
        finally:
            stop_daemon(proc)
        cached, revision = await local_stats(local.client_url)

        proc = start_daemon(workdir, local.client_url)
        try:
            # Canaries exist already; wait until the daemon has relisted and diffed
            # both remotes: long enough to have written anything it would write.
            await asyncio.sleep(2 * max(sync_seconds, 5.0))
        finally:
            stop_daemon(proc)
        _, revision_after = await local_stats(local.client_url)

    result: dict[str, object] = {
        "figure": "two_remotes_initial_sync",
        "keys_per_remote": keys,
        "fill_seconds": round(fill_seconds, 2),
        "seconds_to_all_canaries": round(sync_seconds, 2),
        "keys_per_second": round(2 * keys / sync_seconds),
        "cached_keys": cached,
        "daemon_peak_rss_mib": round(rss, 1),
        "restart_local_writes": revision_after - revision,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
    }
    assert cached == 2 * keys, f"cache holds {cached} keys, expected {2 * keys}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--output", type=Path,
                        default=ROOT / "bench" / "results" / "two_remotes.json")
    args = parser.parse_args()
    exit_on_termination_signals()
    result = asyncio.run(run(args.keys))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
