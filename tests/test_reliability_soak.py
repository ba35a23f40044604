"""Soak: churn with a random fault every few seconds, checked for exact convergence.

Run it with one command (default 10 minutes; ``SOAK_SECONDS`` shortens it)::

    pytest -m slow tests/test_reliability_soak.py            # 600 s
    SOAK_SECONDS=60 pytest -m slow tests/test_reliability_soak.py
    SOAK_SEED=7 ...                                          # another workload

Three remote clusters (two behind :class:`~harness.tcpproxy.TcpProxy`, one direct)
and KVStoreMesh as a real process.  Each *round*: churn runs, one fault is
injected and healed after a random 0.5-3 s — a remote etcd killed (kill -9) and
restarted, a remote compacted while the daemon is cut off, a proxy blackhole, a
dropped connection, the daemon killed (kill -9) and restarted, the local etcd
restarted — then the churn stops and the exact convergence check of
:mod:`harness.convergence` runs (every key of the local etcd compared with what
the remotes hold).  The summary line gives rounds survived, faults injected (by
kind), keys checked and mismatches, which must be 0.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import random
import time
from pathlib import Path

import pytest
from harness.churn import DaemonProcess, Rig
from harness.convergence import convergence_report, wait_converged
from harness.mesh import MeshEnv

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SOAK_SEED = int(os.environ.get("SOAK_SEED", "1"))
CONVERGE_TIMEOUT = 60.0  # per round; a round that does not converge counts mismatches

FAULTS = ("remote-kill", "compact-while-cut-off", "blackhole", "drop-connections",
          "daemon-kill", "local-restart")


@pytest.mark.slow
async def test_soak(mesh_env: MeshEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                    ) -> None:
    env = mesh_env
    rng = random.Random(SOAK_SEED)
    rig = Rig(env, SOAK_SEED)
    daemon = DaemonProcess(env, tmp_path / "kvstoremesh.log", "--heartbeat-timeout", "2s",
                           "--status-check-interval", "500ms")
    injected: collections.Counter[str] = collections.Counter()
    rounds = checked = mismatches = 0
    failures: list[str] = []
    converge_times: list[float] = []
    started = time.monotonic()
    try:
        await rig.add("cluster1", 1, keys=800)
        await rig.add("cluster2", 2, keys=800, service_exports=None)
        await rig.add("cluster3", 3, keys=400, proxied=False)
        await daemon.start()
        await wait_converged(env, timeout=30, alive=daemon.alive)
        while time.monotonic() - started < SOAK_SECONDS:
            rig.start_churn(rate=rng.choice((50, 150, 300)))
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            fault = rng.choice(FAULTS)
            injected[fault] += 1
            await inject(fault, rig, daemon, rng)
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await rig.stop_churn()
            began = time.monotonic()
            try:
                report = await wait_converged(env, timeout=CONVERGE_TIMEOUT, alive=daemon.alive)
            except AssertionError as exc:
                report = await convergence_report(env)
                mismatches += report.mismatches
                failures.append(f"round {rounds + 1} ({fault}): {exc}")
                if not daemon.running:
                    break
            else:
                converge_times.append(time.monotonic() - began)
                rounds += 1
            checked += report.checked
    finally:
        elapsed = time.monotonic() - started
        summary = (f"soak: {elapsed:.0f} s (seed {SOAK_SEED}), {rounds} rounds survived, "
                   f"{sum(injected.values())} faults injected "
                   f"({', '.join(f'{k} {v}' for k, v in sorted(injected.items()))}), "
                   f"{checked} keys checked, {mismatches} mismatches")
        if converge_times:
            ordered = sorted(converge_times)
            summary += (f"; convergence after healing: median {ordered[len(ordered) // 2]:.1f} s,"
                        f" max {ordered[-1]:.1f} s")
        with capsys.disabled():
            print("\n" + summary)
            for failure in failures:
                print(failure[:3000])
        if daemon.running:
            await daemon.stop()
        await rig.close()
        gc.collect()
    assert not failures and mismatches == 0, summary
    assert rounds > 0


async def inject(fault: str, rig: Rig, daemon: DaemonProcess, rng: random.Random) -> None:
    """Inject ``fault`` and heal it (after a random outage)."""
    env = rig.env
    outage = rng.uniform(0.5, 3.0)
    if fault == "remote-kill":
        remote = env.remotes[rng.choice(sorted(env.remotes))]
        remote.server.kill()  # type: ignore[union-attr]
        await asyncio.sleep(outage)
        await asyncio.to_thread(remote.server.start)
    elif fault == "compact-while-cut-off":
        name = rng.choice(sorted(rig.proxies))
        rig.proxies[name].refuse()
        await asyncio.sleep(outage)
        await asyncio.to_thread(env.remotes[name].server.compact)
        rig.proxies[name].forward()
    elif fault == "blackhole":
        name = rng.choice(sorted(rig.proxies))
        rig.proxies[name].blackhole()
        await asyncio.sleep(outage + 2.0)  # past the heartbeat timeout (2 s)
        rig.proxies[name].forward()
    elif fault == "drop-connections":
        rig.proxies[rng.choice(sorted(rig.proxies))].drop_connections()
    elif fault == "daemon-kill":
        await daemon.kill()
        await asyncio.sleep(outage)
        await daemon.start()
    elif fault == "local-restart":
        await asyncio.to_thread(env.local_server.restart, hard=rng.random() < 0.5)
    else:  # pragma: no cover
        raise ValueError(fault)
