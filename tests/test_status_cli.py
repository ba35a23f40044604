"""``kvstoremesh status`` and the daemon's command line.

* :func:`kvstoremesh.status.format_status` on fixed RemoteCluster models, compared
  with golden files in ``tests/golden/`` (``UPDATE_GOLDEN=1`` rewrites them; review
  the diff before committing), and the per-remote counts ``clustermesh status`` prints
  from the same models;
* ``python -m kvstoremesh.main status`` as a real process against an in-process
  daemon on real etcd (the test's event loop keeps serving while it runs), against a
  not-ready daemon with ``--wait``, and against a closed port;
* ``kvstoremesh --help`` and the rejection of invalid flags.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import free_port
from harness.mesh import MeshEnv, sample_state

from clustermesh_tools.cli.status import ClusterStatus, Target, format_statuses
from kvstoremesh.mesh import KVStoreMesh
from kvstoremesh.status import format_status

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

# ------------------------------------------------------------ models and goldens


def model(name: str, *, ready: bool = True, connected: bool = True,
          status: str = "etcd: 1/1 connected: https://{name}.mesh.cilium.io:2379, "
                        "ID: 6be6b5b96e0c1e01",
          counts: tuple[int, int, int, int, int] = (2, 8, 5, 3, 1), failures: int = 0,
          last_failure: str | None = None, cluster_id: int = 1, kvstoremesh: bool = False,
          sync_canaries: bool = True, exports: bool | None = True, retrieved: bool = True,
          synced: bool = True, endpointslices: int = 0, mode: str = "") -> dict[str, Any]:
    """A RemoteCluster model as ``GET /v1/cluster`` returns it.
    ``counts``: nodes, endpoints, identities, services, service exports; ``mode``: the
    remote's EndpointSlice export mode."""
    nodes, endpoints, identities, services, service_exports = counts
    doc: dict[str, Any] = {
        "name": name, "ready": ready, "connected": connected,
        "status": status.format(name=name),
        "num-nodes": nodes, "num-shared-services": services,
        "num-service-exports": service_exports, "num-identities": identities,
        "num-endpoints": endpoints, "num-endpointslices": endpointslices,
        "num-failures": failures,
        "synced": {"nodes": synced, "services": synced,
                   "service-exports": synced if exports is not None else None,
                   "identities": synced, "endpoints": synced,
                   "endpointslices": synced if mode else None},
        "config": {"required": True, "retrieved": retrieved, "cluster-id": cluster_id,
                   "kvstoremesh": kvstoremesh, "sync-canaries": sync_canaries,
                   "service-exports-enabled": exports, "endpointslices-export-mode": mode},
    }
    if last_failure is not None:
        doc["last-failure"] = last_failure
    return doc


READY = model("cluster1", endpointslices=4, mode="services-and-endpointslices")
NOT_READY = model(
    "cluster2", ready=False, connected=False,
    status="remote cluster2: no etcd endpoint answered (https://cluster2.mesh.cilium.io:2379: "
           "failed to connect to all addresses)",
    counts=(3, 12, 4, 0, 0), failures=3, last_failure="2026-01-01T11:58:30.250Z",
    cluster_id=2, kvstoremesh=True, exports=False, synced=False, endpointslices=6,
    mode="endpointslices-only")
UNSUPPORTED = model("cluster3", counts=(1, 2, 1, 1, 0), failures=1,
                    last_failure="2026-01-01T09:45:00.000Z", cluster_id=3, exports=None)
WAITING_FOR_CONFIG = model(
    "cluster4", ready=False,
    status="waiting for the remote cluster configuration "
           "(cilium/cluster-config/cluster4 is missing)",
    counts=(0, 0, 0, 0, 0), cluster_id=0, sync_canaries=False, exports=None, retrieved=False,
    synced=False)

CASES: dict[str, tuple[list[dict[str, Any]], bool]] = {
    "status_empty": ([], False),
    "status_ready": ([READY], False),
    "status_ready_verbose": ([READY], True),
    "status_not_ready": ([NOT_READY], False),
    # Service exports enabled, disabled and unsupported; EndpointSlice export modes both,
    # only slices and none; last failures 90 s and 2 h 15 m ago.
    "status_mixed": ([READY, NOT_READY, UNSUPPORTED, WAITING_FOR_CONFIG], False),
    "status_mixed_verbose": ([READY, NOT_READY, UNSUPPORTED, WAITING_FOR_CONFIG], True),
}


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"golden/{name}.txt", "format_status()"))
        raise AssertionError(f"output differs from golden/{name}.txt "
                             f"(UPDATE_GOLDEN=1 to accept):\n{diff}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_format_status_matches_golden(case: str) -> None:
    models, verbose = CASES[case]
    assert_golden(case, format_status(models, verbose=verbose, now=NOW))


@pytest.mark.parametrize(("last_failure", "shown"), [
    (None, "never"),
    ("2026-01-01T12:00:00.000Z", "0s ago"),
    ("2026-01-01T11:59:00.999Z", "59s ago"),
    ("2026-01-01T11:59:00.000Z", "1m0s ago"),
    ("2026-01-01T11:00:00.001Z", "59m59s ago"),
    ("2026-01-01T11:00:00.000Z", "1h0m ago"),
    ("2025-12-30T09:30:00.000Z", "50h30m ago"),
    ("2026-01-01T12:00:05.000Z", "0s ago"),  # clock skew: never negative
])
def test_last_failure_is_shown_relative_to_now(last_failure: str | None, shown: str) -> None:
    failures = 1 if last_failure else 0
    doc = model("cluster1", failures=failures, last_failure=last_failure, endpointslices=7)
    first = format_status([doc], now=NOW).splitlines()[1]
    assert first == ("   cluster1: ready, 2 nodes, 8 endpoints, 5 identities, 3 services, "
                     f"1 MCS-API service exports, {failures} reconnections (last: {shown}), "
                     "7 endpointslices"), first


def test_endpointslices_are_counted_last_and_older_daemons_count_zero() -> None:
    # A daemon from before EndpointSlices has no "num-endpointslices": shown as 0.
    older = {k: v for k, v in UNSUPPORTED.items() if k != "num-endpointslices"}
    assert format_status([READY, older], now=NOW).splitlines()[1:] == [
        "   cluster1: ready, 2 nodes, 8 endpoints, 5 identities, 3 services, "
        "1 MCS-API service exports, 0 reconnections (last: never), 4 endpointslices",
        "   cluster3: ready, 1 nodes, 2 endpoints, 1 identities, 1 services, "
        "0 MCS-API service exports, 1 reconnections (last: 2h15m ago), 0 endpointslices"]
    # `clustermesh status` shows the same count at the end of each remote's line.
    target = Target(name="local", api="127.0.0.1:9889", cluster_id=9,
                    configured=["cluster1", "cluster3"])
    assert format_statuses([ClusterStatus(target, [READY, older])]).splitlines() == [
        "Cluster Mesh: 1 clusters, 2/2 KVStoreMesh connections ready",
        "local (id 9): 2/2 remotes configured, 2/2 connected, 2/2 ready",
        "   cluster1: ready, 2 nodes, 8 endpoints, 5 identities, 3 services, 0 failures, "
        "4 endpointslices",
        "   cluster3: ready, 1 nodes, 2 endpoints, 1 identities, 1 services, 1 failures, "
        "0 endpointslices",
        "All clusters are connected to all clusters and ready."]


def test_remote_configuration_details_only_once_retrieved_and_unknown_without_config() -> None:
    # Cilium prints cluster-id & co. only for a retrieved config, "unknown" without one.
    no_config = {k: v for k, v in WAITING_FOR_CONFIG.items() if k != "config"}
    lines = format_status([no_config, WAITING_FOR_CONFIG], now=NOW).splitlines()
    assert lines[3] == "   └  remote configuration: expected=unknown, retrieved=unknown"
    assert lines[7] == "   └  remote configuration: expected=true, retrieved=false"


def test_format_status_of_a_real_status_api_document_round_trips_through_json() -> None:
    # What the CLI prints for -o text must not depend on whether the models came
    # straight from Python or through JSON (as they do from the API).
    models = [READY, NOT_READY, UNSUPPORTED]
    assert (format_status(json.loads(json.dumps(models)), verbose=True, now=NOW)
            == format_status(models, verbose=True, now=NOW))


# ----------------------------------------------------------------- the processes


async def run_cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str, float]:
    """``python -m kvstoremesh.main ARGS``: (exit code, stdout, stderr, seconds)."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvstoremesh.main", *args, cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


LEADER_LINE = "Leader election:\tleader: this replica (kvstoremesh-0, lease "


async def start(env: MeshEnv, **overrides: Any) -> KVStoreMesh:
    mesh = await env.start_mesh(**{"leader_election_identity": "kvstoremesh-0", **overrides})
    async with asyncio.timeout(10):
        while "api" not in mesh.runners:
            await asyncio.sleep(0.02)
    return mesh


async def api_models(address: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://{address}/v1/cluster") as resp:
        return await resp.json()


async def test_status_command_against_a_running_daemon(mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1, service_exports=True)
    await c1.publish(sample_state("cluster1", 1))
    await c1.write_canaries()
    mesh = await start(mesh_env)
    await mesh_env.wait_ready()
    address = f"127.0.0.1:{mesh.port('api')}"

    (code, out, err, _), (jcode, jout, _, _), (vcode, vout, _, _) = await asyncio.gather(
        run_cli("status", "--api-serve-addr", address),
        run_cli("status", "--api-serve-addr", address, "-o", "json"),
        run_cli("status", "--api-serve-addr", address, "--verbose"))
    assert (code, err) == (0, ""), err
    assert out.startswith("KVStoreMesh:\t1/1 clusters ready\n"), out
    # Cilium's lines, then ours: the role of the replica that answered.
    assert out.splitlines()[1:-1] == [
        "   cluster1: ready, 2 nodes, 4 endpoints, 1 identities, 2 services, "
        "1 MCS-API service exports, 0 reconnections (last: never), 0 endpointslices"]
    assert out.splitlines()[-1].startswith(LEADER_LINE), out

    assert jcode == 0
    assert json.loads(jout) == await api_models(address)
    (doc,) = json.loads(jout)
    assert doc["name"] == "cluster1" and doc["ready"] is True and doc["num-endpoints"] == 4

    assert vcode == 0
    lines = vout.splitlines()
    assert lines[0] == "KVStoreMesh:\t1/1 clusters ready"
    assert lines[2].startswith("   └  etcd: 1/1 connected: http://127.0.0.1:")
    assert lines[3:-1] == [
        "   └  remote configuration: expected=true, retrieved=true, cluster-id=1, "
        "kvstoremesh=false, sync-canaries=true, service-exports=enabled",
        "   └  synchronization status: nodes=true, endpoints=true, identities=true, "
        "services=true, service-exports=true"]
    assert lines[-1].startswith(LEADER_LINE), vout


async def test_status_wait_gives_up_on_a_not_ready_cluster_and_succeeds_once_ready(
        mesh_env: MeshEnv) -> None:
    c1 = await mesh_env.add_remote("cluster1", 1)
    await c1.publish(sample_state("cluster1", 1))  # no canaries: never ready
    mesh = await start(mesh_env)
    address = f"127.0.0.1:{mesh.port('api')}"
    async with asyncio.timeout(10):
        while not (await api_models(address)):
            await asyncio.sleep(0.05)

    (code, out, err, took), (ncode, nout, _, _) = await asyncio.gather(
        run_cli("status", "--api-serve-addr", address, "--wait", "--timeout", "2s"),
        run_cli("status", "--api-serve-addr", address))
    assert code == 1, (out, err)
    assert 2.0 <= took < 6.0, took
    assert "not all clusters ready after 2s" in err
    assert out.startswith("KVStoreMesh:\t0/1 clusters ready\n")
    assert "   cluster1: not-ready, " in out
    assert "   └  synchronization status: nodes=false, endpoints=false" in out
    # Without --wait: the same answer at once.
    assert ncode == 1 and nout.startswith("KVStoreMesh:\t0/1 clusters ready\n")

    # --wait returns as soon as the cluster turns ready.
    waiting = asyncio.create_task(
        run_cli("status", "--api-serve-addr", address, "--wait", "--timeout", "20s"))
    await asyncio.sleep(0.5)
    await c1.write_canaries()
    code, out, err, took = await waiting
    assert (code, err) == (0, ""), (out, err)
    assert out.startswith("KVStoreMesh:\t1/1 clusters ready\n")
    assert took < 10


async def test_status_command_against_a_closed_port() -> None:
    address = f"127.0.0.1:{free_port()}"
    (code, out, err, _), (wcode, _, werr, took) = await asyncio.gather(
        run_cli("status", "--api-serve-addr", address),
        run_cli("status", "--api-serve-addr", address, "--wait", "--timeout", "1s"))
    assert code == 2 and out == ""
    assert f"cannot reach the status API at http://{address}/v1/cluster" in err, err
    assert wcode == 2 and address in werr
    assert took >= 1.0


DAEMON_FLAGS = ("--cluster-name", "--cluster-id", "--max-connected-clusters",
                "--clustermesh-config", "--kvstore-opt", "--health-port",
                "--prometheus-serve-addr", "--api-serve-addr", "--per-cluster-ready-timeout",
                "--global-ready-timeout", "--clustermesh-cache-ttl", "--cluster-removal-grace",
                "--log-format")


async def test_help_lists_every_flag() -> None:
    (code, out, err, _), (scode, sout, _, _) = await asyncio.gather(
        run_cli("--help"), run_cli("status", "--help"))
    assert (code, err) == (0, "")
    missing = [flag for flag in DAEMON_FLAGS if flag not in out]
    assert not missing, f"missing from --help: {missing}\n{out}"
    assert "kvstoremesh status" in out  # points at the subcommand
    assert scode == 0
    for flag in ("--api-serve-addr", "--verbose", "--output", "--wait", "--timeout"):
        assert flag in sout, flag


@pytest.mark.parametrize(("flags", "reason"), [
    (("--cluster-name", "Cluster_1"), "cluster name 'Cluster_1' is invalid"),
    (("--cluster-name", "c" * 33), "at most 32 are allowed"),
    (("--cluster-id", "0"), "cluster ID 0 is reserved"),
    (("--cluster-id", "256"), "cluster ID 256 is out of range"),
    (("--max-connected-clusters", "300"), "max-connected-clusters is 300: it must be one of"),
    (("--per-cluster-ready-timeout", "soon"),
     'invalid argument "soon" for "--per-cluster-ready-timeout" flag: '
     'time: invalid duration "soon"'),
    (("--cluster-id", "x"), 'invalid argument "x" for "--cluster-id" flag: '
                            'strconv.ParseUint: parsing "x": invalid syntax'),
])
async def test_invalid_flags_are_rejected_with_the_reason(
        tmp_path: Path, flags: tuple[str, ...], reason: str) -> None:
    values = {"--cluster-name": "local", "--cluster-id": "1",
              "--clustermesh-config": str(tmp_path),
              "--kvstore-opt": f"etcd.config={tmp_path / 'etcd.yaml'}"}
    values.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    args = [item for pair in values.items() for item in pair]
    code, out, err, took = await run_cli(*args, timeout=15)
    assert code != 0
    assert reason in err, err
    assert out == ""
    assert took < 10  # rejected up front, not after trying to connect
