"""Reliability: KVStoreMesh under faults, with background churn, against real etcd.

Each scenario runs once per seed (:data:`SEEDS`).  The seed drives the churn
(random puts, deletes and small txns across every resource of every remote, at a
bounded rate, plus heartbeats), the bulk data and the timing of the fault.  The
churn runs before, during and after the fault and is stopped before the final
check, which is always the exact convergence check of
:mod:`harness.convergence`: the whole local keyspace must equal what the remotes
hold, and nothing may exist outside the allowed prefixes of the configured
clusters.

Network faults go through :class:`harness.tcpproxy.TcpProxy` (the daemon's config
names the proxy; the test's own clients talk to etcd directly, so a remote keeps
changing while the daemon cannot see it).  The existing scenario tests
(``test_kvstoremesh_sync``/``_lifecycle``) cover each mechanism once and quietly;
these are the same mechanisms under load and combined with live changes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import random
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from harness import ClientCert, EtcdServer, Pki, enable_auth
from harness.churn import DaemonProcess, Rig, attach_remote, publish_bulk, write_daemon_config
from harness.convergence import wait_converged
from harness.mesh import MeshEnv, sample_state
from harness.tcpproxy import TcpProxy
from harness.waiting import wait_until

from clustermesh.clusterconfig import EXPORT_SERVICES_AND_ENDPOINTSLICES
from clustermesh.etcd.client import EtcdClient, delete_op, prefix_range_end
from clustermesh.etcd.config import load_etcd_config, load_tls_files
from clustermesh.keys import ENDPOINTS, NODES, RESOURCES, SERVICE_EXPORTS

SEEDS = (11, 22, 33)
#: A remote of Cilium main exports EndpointSlices; the older ones beside it do not.
MAIN = EXPORT_SERVICES_AND_ENDPOINTSLICES
#: Session checks fast enough for second-scale scenarios.
FAST: dict[str, Any] = {"heartbeat_timeout": 2.0, "status_check_interval": 0.3}

seeded = pytest.mark.parametrize("seed", SEEDS)


# ------------------------------------------------------------------------ helpers




async def count_prefix(client: EtcdClient, prefix: bytes) -> int:
    return (await client.range(prefix, prefix_range_end(prefix), count_only=True)).count


async def cached_keys(env: MeshEnv, name: str) -> int:
    total = 0
    for resource in RESOURCES:
        total += await count_prefix(env.local, resource.cache_prefix(name).encode())
    return total


async def propagation(env: MeshEnv, name: str, *, timeout: float = 5.0) -> float:
    """Seconds from a put on remote ``name`` to the value being in the local cache."""
    remote = env.remotes[name]
    suffix = f"probe-{uuid.uuid4().hex[:8]}"
    value = json.dumps({"Name": suffix, "Cluster": name, "ClusterID": remote.config.id,
                        "probe": time.time()}).encode()  # a node the agents' rules accept
    target = NODES.cache_prefix(name).encode() + suffix.encode()
    started = time.monotonic()
    await remote.put(NODES, suffix, value)
    async with asyncio.timeout(timeout):
        while True:
            kv = await env.local.get(target)
            if kv is not None and kv.value == value:
                return time.monotonic() - started
            await asyncio.sleep(0.01)


async def sleep_some(rng: random.Random, low: float, high: float) -> None:
    await asyncio.sleep(rng.uniform(low, high))


@pytest.fixture
async def rig(mesh_env: MeshEnv, request: pytest.FixtureRequest) -> Any:
    callspec = getattr(request.node, "callspec", None)
    seed = callspec.params.get("seed", 0) if callspec is not None else 0
    rig = Rig(mesh_env, seed)
    try:
        yield rig
    finally:
        await rig.close()
        await mesh_env.stop_mesh()
        gc.collect()  # frees closed gRPC channels (and their connections): fast etcd stops


async def standard(rig: Rig, *, keys: int = 300, proxied: tuple[str, ...] = ("cluster1",),
                   **options: Any) -> None:
    """Two remotes (cluster1 maybe behind a proxy), mesh ready and converged, churn on.
    cluster1 has MCS-API and EndpointSlices; cluster2 neither (an older Cilium)."""
    await rig.add("cluster1", 1, keys=keys, proxied="cluster1" in proxied,
                  endpoint_slices=MAIN)
    await rig.add("cluster2", 2, keys=keys, proxied="cluster2" in proxied,
                  service_exports=None)
    await rig.env.start_mesh(**{**FAST, **options})
    await rig.env.wait_ready()
    rig.start_churn()
    await sleep_some(rig.rng, 0.2, 0.6)


async def finish(rig: Rig, *, settle: float = 0.3, timeout: float = 20.0) -> None:
    """Churn a little longer, stop it, then the exact convergence check."""
    await asyncio.sleep(settle)
    stats = await rig.stop_churn()
    assert stats.writes > 0, stats
    report = await wait_converged(rig.env, timeout=timeout)
    for name in rig.env.remotes:
        assert report.per_cluster.get(name, 0) > 10, report.summary()


# ------------------------------------------------------------------------ scenarios


@seeded
async def test_remote_killed_and_restarted(rig: Rig, seed: int) -> None:
    await standard(rig, proxied=())
    env = rig.env
    c1 = env.remotes["cluster1"]
    assert isinstance(c1.server, EtcdServer)
    c1.server.kill()  # kill -9: no clean shutdown
    await sleep_some(rig.rng, 0.3, 1.2)  # writes to cluster2 go on, cluster1's fail
    # Meanwhile cluster2 is served as usual.
    assert await propagation(env, "cluster2") < 1.0
    await asyncio.to_thread(c1.server.start)
    await finish(rig)
    assert env.mesh is not None
    assert env.mesh.remotes["cluster2"].status().failures == 0


@seeded
async def test_remote_deletes_many_keys_while_disconnected(rig: Rig, seed: int) -> None:
    await standard(rig, keys=600)
    env, proxy = rig.env, rig.proxies["cluster1"]
    c1 = env.remotes["cluster1"]
    before = await cached_keys(env, "cluster1")
    proxy.refuse()
    # Delete most of cluster1's objects (whole txns of deletes), while disconnected.
    kvs, _ = await c1.client.list_prefix(b"cilium/state/")
    doomed = [kv.key for kv in kvs if rig.rng.random() < 0.7]
    for i in range(0, len(doomed), 100):
        await c1.client.txn(success=[delete_op(k) for k in doomed[i:i + 100]])
    await sleep_some(rig.rng, 0.2, 1.0)
    proxy.forward()
    await finish(rig)
    assert await cached_keys(env, "cluster1") < before - len(doomed) // 2


@seeded
async def test_remote_compacts_past_our_revision_while_disconnected(rig: Rig,
                                                                    seed: int) -> None:
    # Session checks slow enough that the session survives the outage: the watches
    # resume, find their revision compacted, and each reflector relists and diffs.
    await standard(rig, keys=300, heartbeat_timeout=6.0, status_check_interval=5.0)
    env, proxy = rig.env, rig.proxies["cluster1"]
    c1 = env.remotes["cluster1"]
    mesh = env.mesh
    assert mesh is not None
    proxy.refuse()
    await sleep_some(rig.rng, 0.3, 0.6)  # churn writes cluster1 behind our back
    for i in range(3):  # and deletes some of what we cached
        await c1.delete(ENDPOINTS, f"10.1.0.{i + 5}")
    revision = await asyncio.to_thread(c1.server.compact)
    assert revision > 0
    proxy.forward()
    await finish(rig)
    remote = mesh.remotes["cluster1"]
    reflectors = remote.status().reflectors
    assert sum(r.relists for r in reflectors) >= 1, reflectors
    assert remote.status().failures == 0, remote.status().status


async def blackhole_and_detect(rig: Rig, heartbeat_timeout: float) -> None:
    """Blackhole cluster1's proxy; it must be detected within the heartbeat timeout
    (plus the check period and margin) while cluster2 goes on unaffected."""
    env, proxy = rig.env, rig.proxies["cluster1"]
    mesh = env.mesh
    assert mesh is not None
    remote = mesh.remotes["cluster1"]
    proxy.blackhole()
    started = time.monotonic()
    await wait_until(lambda: not remote.status().connected,
                     "the blackholed remote to be detected", timeout=heartbeat_timeout + 4)
    detected = time.monotonic() - started
    assert detected < heartbeat_timeout + 3, detected
    state = remote.status()
    assert state.failures >= 1
    assert "heartbeat" in state.status or "status check" in state.status, state.status
    # The other cluster is unaffected while cluster1 hangs.
    assert await propagation(env, "cluster2") < 1.0
    assert mesh.remotes["cluster2"].status().failures == 0


@seeded
async def test_remote_blackholed_is_detected_not_hung(rig: Rig, seed: int) -> None:
    heartbeat_timeout = 1.5
    await standard(rig, heartbeat_timeout=heartbeat_timeout)
    await blackhole_and_detect(rig, heartbeat_timeout)
    proxy = rig.proxies["cluster1"]
    # The daemon tries again (into the blackhole, where the attempt hangs until the
    # link heals or the dial timeout ends it)...
    accepted = proxy.accepted
    await wait_until(lambda: proxy.accepted > accepted, "a reconnect attempt", timeout=5)
    await sleep_some(rig.rng, 0.0, 1.0)
    proxy.forward()  # ... and the link heals: the attempt in flight goes through.
    await finish(rig)
    await rig.env.wait_ready()


async def test_reconnect_into_a_blackhole_times_out(rig: Rig) -> None:
    """Not one hung attempt: each reconnect into the blackhole fails after the dial
    timeout (5 s), is counted, and the next one follows after the backoff."""
    heartbeat_timeout = 1.5
    await standard(rig, heartbeat_timeout=heartbeat_timeout)
    await blackhole_and_detect(rig, heartbeat_timeout)
    mesh = rig.env.mesh
    assert mesh is not None
    remote = mesh.remotes["cluster1"]
    failures = remote.status().failures
    await wait_until(lambda: remote.status().failures > failures,
                     "a reconnect attempt into the blackhole to fail", timeout=10)
    state = remote.status()
    assert not state.connected
    assert "no etcd endpoint answered" in state.status or "DEADLINE" in state.status, \
        state.status
    rig.proxies["cluster1"].forward()
    await finish(rig)
    await rig.env.wait_ready()


async def test_backoff_resets_after_a_synced_session(rig: Rig) -> None:
    """Short outages in a row, each followed by a full resync: every reconnect must come
    within the base backoff (~1 s), not after one that doubled with each outage."""
    await standard(rig, status_check_interval=0.2)
    mesh = rig.env.mesh
    assert mesh is not None
    proxy = rig.proxies["cluster1"]
    remote = mesh.remotes["cluster1"]
    delays = []
    for _ in range(4):
        # Every reflector listed, but service exports: cluster1 exports none.
        await wait_until(lambda: (s := remote.status()).ready and all(
                             r.listed for r in s.reflectors if r.resource is not SERVICE_EXPORTS),
                         "cluster1 synced", timeout=10)
        failures = remote.status().failures
        proxy.refuse()
        await wait_until(lambda f=failures: remote.status().failures > f, "the session to fail")
        proxy.forward()
        healed = time.monotonic()
        await wait_until(lambda: remote.status().connected, "cluster1 to reconnect", timeout=40)
        delays.append(round(time.monotonic() - healed, 2))
    assert max(delays) < 2.5, delays
    await finish(rig)


@seeded
async def test_local_etcd_restart_mid_sync(rig: Rig, seed: int) -> None:
    env = rig.env
    await rig.add("cluster1", 1, keys=1500, proxied=False, endpoint_slices=MAIN)
    await rig.add("cluster2", 2, keys=1500, proxied=False, service_exports=None)
    rig.start_churn()
    # Rate-limited writes so the initial sync is still running when the local etcd dies.
    await env.start_mesh(**FAST, max_txn_ops=50, bootstrap_qps=25)
    threshold = rig.rng.randrange(200, 600)

    async def some_cached() -> bool:
        return await cached_keys(env, "cluster1") + await cached_keys(env, "cluster2") \
            >= threshold

    await wait_until(some_cached, "the first cache keys", timeout=15)
    assert env.mesh is not None
    assert not all(r.status().ready for r in env.mesh.remotes.values()), "sync over too early"
    await asyncio.to_thread(env.local_server.restart, hard=rig.rng.random() < 0.5)
    await finish(rig, timeout=30)
    await env.wait_ready()


@seeded
async def test_daemon_killed_mid_initial_sync(rig: Rig, seed: int, tmp_path: Path) -> None:
    """kill -9 of the daemon process during its first sync, then a restart."""
    env = rig.env
    await rig.add("cluster1", 1, keys=1500, proxied=False, endpoint_slices=MAIN)
    await rig.add("cluster2", 2, keys=1500, proxied=False, service_exports=None)
    daemon = DaemonProcess(env, tmp_path / "kvstoremesh.log", "--heartbeat-timeout", "3s",
                           "--status-check-interval", "1s")
    await daemon.start("--kvstore-opt", "etcd.bootstrapQps=20", "--max-txn-ops", "40")
    try:
        rig.start_churn()
        threshold = rig.rng.randrange(150, 500)

        async def some_cached() -> bool:
            daemon.alive()
            return await cached_keys(env, "cluster1") + await cached_keys(env, "cluster2") \
                >= threshold

        await wait_until(some_cached, "the first cache keys", timeout=20)
        assert await daemon.kill() == -signal.SIGKILL
        partial = await cached_keys(env, "cluster1") + await cached_keys(env, "cluster2")
        assert partial < 3000, "the initial sync was over before the kill"
        # While the daemon is dead: churn goes on, and many cached keys disappear.
        c1 = env.remotes["cluster1"]
        kvs, _ = await c1.client.list_prefix(c1.prefix(ENDPOINTS).encode())
        doomed = [kv.key for kv in kvs if rig.rng.random() < 0.5]
        for i in range(0, len(doomed), 100):
            await c1.client.txn(success=[delete_op(k) for k in doomed[i:i + 100]])
        await sleep_some(rig.rng, 0.2, 0.8)
        await daemon.start()
        await asyncio.sleep(0.3)
        await rig.stop_churn()
        await wait_converged(env, timeout=30, alive=daemon.alive)
        assert await daemon.stop() == 0, daemon.log_tail()
        assert "Traceback" not in daemon.log_file.read_text()
    finally:
        if daemon.running:
            await daemon.kill()


@seeded
async def test_config_endpoint_moved_then_removed_and_readded(rig: Rig, seed: int) -> None:
    await standard(rig, removal_grace=rig.rng.choice((0.0, 0.3)))
    env = rig.env
    mesh = env.mesh
    assert mesh is not None
    c1 = env.remotes["cluster1"]
    old = rig.proxies["cluster1"]
    new = await TcpProxy.to_url(c1.server.endpoints[0], name="cluster1-moved").start()
    rig.proxies["cluster1-moved"] = new
    # The endpoint moves: the daemon must reconnect through the new proxy...
    write_daemon_config(env, "cluster1", c1.server, endpoints=[new.url])
    await wait_until(lambda: new.active > 0, "a connection through the moved endpoint")
    await wait_until(lambda: mesh.remotes["cluster1"].status().ready,
                     "cluster1 ready after the move")
    # ... and must not need the old one any more.
    old.refuse()
    assert await propagation(env, "cluster1") < 2.0
    await sleep_some(rig.rng, 0.1, 0.4)
    # Removed and re-added quickly (within a few config polls).
    env.remove_remote_file("cluster1")
    await sleep_some(rig.rng, 0.06, 0.25)
    env.remotes["cluster1"] = c1
    write_daemon_config(env, "cluster1", c1.server, endpoints=[new.url])
    await finish(rig)
    await env.wait_ready()
    client = mesh.remotes["cluster1"].session_client
    assert client is not None and client.endpoint == new.url, client and client.endpoint


@seeded
async def test_remote_etcd_replaced_behind_the_same_endpoint(rig: Rig, seed: int) -> None:
    await standard(rig)
    env, proxy = rig.env, rig.proxies["cluster1"]
    mesh = env.mesh
    assert mesh is not None and rig.churn is not None
    old = env.remotes["cluster1"]
    old_id = mesh.remotes["cluster1"].status().etcd_cluster_id
    # A new etcd cluster with other data takes over the endpoint (a replaced apiserver).
    server = env.factory(name="remote-cluster1-new")
    new = await env.add_remote("cluster1", 1, server=server, write_file=False,
                               service_exports=True)
    rig.retired.append(old)
    state = sample_state("cluster1", 1, nodes=1, endpoints=2)
    state[NODES]["node-replaced"] = (b'{"Name":"node-replaced","Cluster":"cluster1",'
                                     b'"ClusterID":1}')
    await new.publish(state)
    await publish_bulk(new, 200, seed=seed + 7)
    await new.write_canaries()
    rig.churn.replace_remote(new)
    proxy.retarget(int(server.endpoints[0].rsplit(":", 1)[1]))
    proxy.drop_connections()
    new_id = await asyncio.to_thread(server.cluster_id)
    assert new_id != old_id
    remote = mesh.remotes["cluster1"]
    await wait_until(lambda: remote.status().etcd_cluster_id == new_id and remote.status().ready,
                     "cluster1 to resync from the new etcd cluster", timeout=15)
    await finish(rig)
    assert b"cilium/cache/nodes/v1/cluster1/node-replaced" in await env.local_tree()


@seeded
async def test_client_certificate_rotated_on_disk(rig: Rig, seed: int, pki: Pki,
                                                  tmp_path: Path) -> None:
    """The daemon's client certificate is replaced on disk shortly before it expires;
    after the old one expired the connection breaks, and the daemon must reconnect
    with the new files (an expired certificate is refused by etcd)."""
    env = rig.env
    server = env.factory(name="remote-tls", tls=pki.server, client_cert_auth=True)
    harness = server.client_config(tmp_path / "harness-tls.yaml", client=pki.server.client)
    c1 = await attach_remote(env, "cluster1", 1, server, harness)
    await rig.populate(c1, 300)
    await rig.add("cluster2", 2, proxied=False, service_exports=None)
    proxy = await TcpProxy.to_url(server.endpoints[0], name="tls").start()
    rig.proxies["cluster1"] = proxy
    certs = tmp_path / "certs"
    certs.mkdir()
    lifetime = 2.5
    first = pki.issue_client("remote", stem=f"rot-{seed}-{uuid.uuid4().hex[:6]}-a",
                             validity=_seconds(lifetime))
    expires = time.monotonic() + lifetime
    live = _install_cert(first, certs)
    write_daemon_config(env, "cluster1", server, endpoints=[proxy.url], client=live)
    await env.start_mesh(**FAST)
    await env.wait_ready()
    mesh = env.mesh
    assert mesh is not None
    rig.start_churn()
    await sleep_some(rig.rng, 0.2, 0.8)
    # Rotation: new key and certificate, atomically replaced at the same paths.
    second = pki.issue_client("remote", stem=f"rot-{seed}-{uuid.uuid4().hex[:6]}-b")
    _install_cert(second, certs)
    await asyncio.sleep(max(0.0, expires - time.monotonic()) + 0.5)
    accepted = proxy.accepted
    proxy.drop_connections()  # the old certificate is expired now: reconnect or die
    await wait_until(lambda: proxy.accepted > accepted and mesh.remotes["cluster1"].status().ready
                     and mesh.remotes["cluster1"].status().connected,
                     "cluster1 to reconnect with the rotated certificate", timeout=15)
    await finish(rig)
    client = mesh.remotes["cluster1"].session_client
    assert client is not None and client.endpoint is not None
    config = load_etcd_config(env.config_dir / "cluster1")
    assert client.connection_status().tls_fingerprint == load_tls_files(config).fingerprint


async def test_client_certificate_rotation_without_reconnect_takes_10s(
        mesh_env: MeshEnv, pki: Pki, tmp_path: Path) -> None:
    """What a rotation does when nothing breaks: the remote client re-reads its TLS files
    every ``tls_reload_interval``, which KVStoreMesh does not set (``RemoteCluster``
    builds ``EtcdClient(config, name=..., observer=...)``), so the client default of
    10 s applies: within ~10 s the daemon opens a new connection with the new
    certificate and retires the old one, without any session failure."""
    env = mesh_env
    rig = Rig(env, 0)
    try:
        server = env.factory(name="remote-tls", tls=pki.server, client_cert_auth=True)
        harness = server.client_config(tmp_path / "harness-tls.yaml", client=pki.server.client)
        c1 = await attach_remote(env, "cluster1", 1, server, harness)
        await rig.populate(c1, 50)
        proxy = await TcpProxy.to_url(server.endpoints[0], name="tls").start()
        rig.proxies["cluster1"] = proxy
        certs = tmp_path / "certs"
        certs.mkdir()
        live = _install_cert(pki.issue_client("remote", stem=f"norot-{uuid.uuid4().hex[:6]}"),
                             certs)
        write_daemon_config(env, "cluster1", server, endpoints=[proxy.url], client=live)
        mesh = await env.start_mesh(**FAST)
        await env.wait_ready()
        rig.start_churn(rate=50)
        client = mesh.remotes["cluster1"].session_client
        assert client is not None and client.endpoint is not None
        old_fingerprint = client.connection_status().tls_fingerprint
        accepted = proxy.accepted
        _install_cert(pki.issue_client("remote", stem=f"norot-{uuid.uuid4().hex[:6]}"), certs)
        rotated = time.monotonic()
        await wait_until(lambda: client.connection_status().tls_fingerprint
                         not in ("", old_fingerprint),
                         "the TLS reload loop to pick up the new files", timeout=13)
        took = time.monotonic() - rotated
        assert took <= 10.5, took
        assert proxy.accepted > accepted  # a new connection, with the new certificate
        await wait_until(lambda: proxy.active == 1, "the old connection to be retired",
                         timeout=5)
        await rig.stop_churn()
        await wait_converged(env)
        assert mesh.remotes["cluster1"].status().failures == 0
    finally:
        await rig.close()


@seeded
async def test_auth_token_expiry(rig: Rig, seed: int) -> None:
    """Simple tokens with a 1 s TTL: idle gaps longer than that (status checks every
    1.5 s) expire the daemon's token again and again; every expiry is handled by
    re-authenticating, and watches re-created after a connection drop as well."""
    env = rig.env
    server = env.factory(name="remote-auth",
                         extra_args=["--auth-token=simple", "--auth-token-ttl=1"])
    c1 = await env.add_remote("cluster1", 1, server=server, write_file=False,
                              service_exports=True)
    await rig.populate(c1, 300)
    enable_auth(server, root_password="rootpw", users={"reader": "reader-pw"},
                roles={"ro": [("read", "cilium/", True)]}, grants={"reader": ["ro"]})
    root = server.client_config(env.dir / "root-auth.yaml", username="root",
                                password="rootpw")
    c1 = await attach_remote(env, "cluster1", 1, server, root, service_exports=True)
    proxy = await TcpProxy.to_url(server.endpoints[0], name="auth").start()
    rig.proxies["cluster1"] = proxy
    write_daemon_config(env, "cluster1", server, endpoints=[proxy.url], username="reader",
                        password="reader-pw")
    await rig.add("cluster2", 2, proxied=False, service_exports=None)
    mesh = await env.start_mesh(heartbeat_timeout=3.0, status_check_interval=1.5)
    await env.wait_ready()
    rig.start_churn(rate=100)
    client = mesh.remotes["cluster1"].session_client
    assert client is not None
    tokens = client.connection_status().authentications
    # > TTL + the 1 s resolution of etcd's simple-token expiry ticker
    await asyncio.sleep(2.1 + rig.rng.uniform(0, 0.5))
    accepted = proxy.accepted
    proxy.drop_connections()  # watches re-created with an expired token
    await wait_until(lambda: proxy.accepted > accepted, "the daemon to reconnect")
    await asyncio.sleep(1.2)
    assert await propagation(env, "cluster1") < 2.0
    await finish(rig)
    assert client.connection_status().authentications > tokens, "never re-authenticated"
    assert mesh.remotes["cluster1"].status().failures == 0, mesh.remotes["cluster1"].status().status


@seeded
async def test_slow_remote_does_not_slow_the_fast_one(rig: Rig, seed: int) -> None:
    """A remote behind a slow link (200 ms per chunk) beside a fast one.  The slow
    one's initial sync takes longer than the heartbeat timeout: its heartbeat events
    queue behind the bulk data on the same connection, yet the sync must complete
    (the data arriving proves the connection alive), and the fast one is unaffected."""
    env = rig.env
    await rig.add("slow", 1, keys=1000, value_size=400, endpoint_slices=MAIN)
    await rig.add("fast", 2, keys=300, proxied=False, service_exports=None)
    proxy = rig.proxies["slow"]
    proxy.latency = 0.2  # per chunk, each direction
    heartbeat_timeout = 2.0
    mesh = await env.start_mesh(**{**FAST, "heartbeat_timeout": heartbeat_timeout})
    started = time.monotonic()
    await wait_until(lambda: "fast" in mesh.remotes and mesh.remotes["fast"].status().ready,
                     "the fast remote to be ready", timeout=10)
    fast_ready = time.monotonic() - started
    assert not mesh.remotes["slow"].status().ready, "the slow remote was not slow"
    rig.start_churn(rate=100)
    lags = [await propagation(env, "fast") for _ in range(5)]
    assert not mesh.remotes["slow"].status().ready, "the slow remote synced before the measurement"
    assert max(lags) < 1.0, lags
    assert fast_ready < 2.0, fast_ready
    await wait_until(lambda: mesh.remotes["slow"].status().ready, "the slow remote to sync",
                     timeout=20)
    slow_ready = time.monotonic() - started
    assert slow_ready > heartbeat_timeout, slow_ready
    await finish(rig, timeout=30)
    print(f"fast ready after {fast_ready:.2f}s, slow after {slow_ready:.2f}s, "
          f"fast propagation {max(lags) * 1000:.0f} ms max")


# ----------------------------------------------------------------------- TLS helpers


def _seconds(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


def _install_cert(cert: ClientCert, directory: Path) -> ClientCert:
    """Copy a client certificate to fixed paths in ``directory`` (atomically, key first:
    a reader may see a new key with the old certificate for a moment, as with a real
    Secret update, and must cope)."""
    key = directory / "client.key"
    crt = directory / "client.crt"
    for src, dst in ((cert.key_file, key), (cert.cert_file, crt)):
        tmp = directory / f".{dst.name}.tmp"
        tmp.write_bytes(Path(src).read_bytes())
        tmp.chmod(0o600)
        tmp.replace(dst)
    return replace(cert, cert_file=crt, key_file=key)
