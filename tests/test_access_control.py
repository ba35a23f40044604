"""Access control: KVStoreMesh with the users ``clustermesh-apiserver etcdinit`` creates.

Both the remote etcd and the local one run TLS with ``--client-cert-auth`` and
auth enabled by :func:`apiserver.etcdinit.etcdinit`; every client is identified by
its certificate's CN (facts §4.4):

* the daemon reads each remote as the read-only ``remote`` user, and converges;
  that user cannot write there, nor read beyond its grants;
* on its local etcd the daemon is ``admin-<cluster>``; the agents' user
  ``local-<cluster>`` can read the cache but write nothing anywhere;
* a client without a valid certificate (none, another CA, expired, a CN that is
  no user) gets nothing;
* the health, metrics and status endpoints (and the logs) leak no secret: no key
  material, no password, no token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from harness import (
    ClientCert,
    EtcdFactory,
    EtcdServer,
    Pki,
    assume_auth,
    enable_auth,
    make_other_ca,
    write_client_config,
)
from harness.churn import Rig, attach_remote, write_daemon_config
from harness.convergence import wait_converged
from harness.mesh import LOCAL_NAME, MeshEnv, sample_state

from apiserver.etcdinit import etcdinit
from clustermesh.clusterconfig import CiliumClusterConfig
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import (
    EtcdAuthError,
    EtcdError,
    EtcdPermissionDenied,
    EtcdUnavailable,
)
from clustermesh.keys import NODES
from kvstoremesh.mesh import KVStoreMesh

REMOTE = "c1"  # the PKI has admin-c1 / local-c1 / remote certificates for it
PASSWORD = "pw-Secret-8d21f0"  # of the password-authenticated remote


@dataclass
class Secured:
    env: MeshEnv
    mesh: KVStoreMesh
    pki: Pki
    remote_server: EtcdServer
    dir: Path
    admin_local: ClientCert
    local_agent: ClientCert


async def client_with(server: EtcdServer, path: Path, cert: ClientCert | None, *,
                      ca: Path | None = None, **kwargs: object) -> EtcdClient:
    write_client_config(path, endpoints=server.endpoints,
                        ca_file=ca or (server.tls.ca_file if server.tls else None),
                        cert_file=cert.cert_file if cert else None,
                        key_file=cert.key_file if cert else None, **kwargs)  # type: ignore[arg-type]
    return EtcdClient(load_etcd_config(path), name=f"test {path.stem}", dial_timeout=2.0,
                      request_timeout=5.0)


async def initialise(server: EtcdServer, root: ClientCert, path: Path, cluster: str) -> None:
    """``clustermesh-apiserver etcdinit`` on ``server`` as root: users, roles, auth on."""
    async with await client_with(server, path, root) as client:
        await etcdinit(client, cluster_name=cluster)
    assume_auth(server, root_password="unused")  # harness etcdctl calls: auth is on now


@pytest.fixture
async def secured(tmp_path: Path, etcd_factory: EtcdFactory, pki: Pki
                  ) -> AsyncIterator[Secured]:
    root = pki.client("root")
    # The local etcd: TLS, client certificates, etcdinit for our own cluster name.
    local_server = etcd_factory(name="local", tls=pki.server, client_cert_auth=True)
    await initialise(local_server, root, tmp_path / "init-local.yaml", LOCAL_NAME)
    admin_local = pki.issue_client(f"admin-{LOCAL_NAME}", stem=f"admin-{tmp_path.name}")
    local_agent = pki.issue_client(f"local-{LOCAL_NAME}", stem=f"agent-{tmp_path.name}")
    mesh_dir = tmp_path / "mesh"
    (mesh_dir / "clustermesh").mkdir(parents=True)
    # The daemon is admin-<cluster> on its local etcd; the test itself reads as root.
    write_client_config(mesh_dir / "local-etcd.yaml", endpoints=local_server.endpoints,
                        ca_file=pki.ca_file, cert_file=admin_local.cert_file,
                        key_file=admin_local.key_file)
    local = await client_with(local_server, tmp_path / "root-local.yaml", root)
    await local.connect()
    env = MeshEnv(dir=mesh_dir, factory=etcd_factory, local_server=local_server, local=local)
    rig = Rig(env, seed=7)
    try:
        # The remote: published as its apiserver would, then locked down by etcdinit.
        remote_server = etcd_factory(name="remote-c1", tls=pki.server, client_cert_auth=True)
        harness = remote_server.client_config(tmp_path / "root-remote.yaml", client=root)
        remote = await attach_remote(env, REMOTE, 1, remote_server, harness)
        await rig.populate(remote, 200)
        await initialise(remote_server, root, tmp_path / "init-remote.yaml", REMOTE)
        write_daemon_config(env, REMOTE, remote_server, client=pki.client("remote"))
        # A second remote authenticating with a password (for the secrets check).
        pw_server = etcd_factory(name="remote-pw", extra_args=["--auth-token=simple"])
        pw = await env.add_remote("c2", 2, server=pw_server, write_file=False)
        await rig.populate(pw, 50)
        enable_auth(pw_server, root_password="root-" + PASSWORD,
                    users={"reader": PASSWORD}, roles={"ro": [("read", "cilium/", True)]},
                    grants={"reader": ["ro"]})
        pw_root = pw_server.client_config(tmp_path / "root-pw.yaml", username="root",
                                          password="root-" + PASSWORD)
        await attach_remote(env, "c2", 2, pw_server, pw_root)
        write_daemon_config(env, "c2", pw_server, username="reader", password=PASSWORD)

        mesh = await env.start_mesh(heartbeat_timeout=5.0, status_check_interval=0.5)
        await env.wait_ready()
        rig.start_churn(rate=60)
        await asyncio.sleep(0.5)
        await rig.stop_churn()
        await wait_converged(env)
        yield Secured(env, mesh, pki, remote_server, tmp_path, admin_local, local_agent)
    finally:
        await rig.close()
        await env.close()
        # gRPC releases a closed channel's connection only when the channel object is
        # freed; channels caught in reference cycles would hold it until the next GC,
        # and a TLS etcd then takes a second to stop at teardown.
        gc.collect()


# ---------------------------------------------------------------------------- remote


async def test_remote_user_reads_everything_needed_and_writes_nothing(secured: Secured) -> None:
    s = secured
    remote = s.mesh.remotes[REMOTE]
    status = remote.status()
    assert status.ready and status.failures == 0, status.status
    # The daemon's own connection (CN "remote") can read its data but not write it.
    daemon = remote.session_client
    assert daemon is not None
    key = f"cilium/state/nodes/v1/{REMOTE}/node-0".encode()
    assert await daemon.get(key) is not None
    for attempt in (daemon.put(key, b"{}"), daemon.delete(key),
                    daemon.put(b"cilium/.heartbeat", b"x"),
                    daemon.put(f"cilium/cluster-config/{REMOTE}".encode(), b"{}"),
                    daemon.delete(b"cilium/", prefix=True)):
        with pytest.raises(EtcdPermissionDenied):
            await attempt
    # Nor read beyond its grants: another cluster's config and canaries, any cache.
    for other in (b"cilium/cluster-config/c9", b"cilium/synced/c9/x", b"cilium/cache/x",
                  b"cilium/.initlock/x", b"other"):
        with pytest.raises(EtcdPermissionDenied):
            await daemon.get(other)
    assert await daemon.get(key) is not None  # ... and the session is unharmed
    await wait_converged(s.env)


async def test_clients_without_a_valid_certificate_are_refused(secured: Secured) -> None:
    s = secured
    server = s.remote_server
    other_ca = make_other_ca(s.dir / "other-ca")
    stranger = other_ca.issue_client("remote", stem="stranger")  # right CN, wrong CA
    expired = s.pki.issue_client("remote", stem=f"expired-{s.dir.name}",
                                 not_after=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    nobody = s.pki.issue_client("mallory", stem=f"mallory-{s.dir.name}")  # no such user
    key = f"cilium/state/nodes/v1/{REMOTE}/node-0".encode()
    for name, cert in (("none", None), ("stranger", stranger), ("expired", expired)):
        client = await client_with(server, s.dir / f"{name}.yaml", cert)
        with pytest.raises(EtcdUnavailable):  # the TLS handshake fails (EtcdTLSError)
            await client.connect()
        await client.close()
    async with await client_with(server, s.dir / "nobody.yaml", nobody) as client:
        with pytest.raises((EtcdPermissionDenied, EtcdAuthError)):
            await client.get(key)
        with pytest.raises((EtcdPermissionDenied, EtcdAuthError)):
            await client.put(key, b"{}")

    # In the daemon: a cluster configured with such a certificate fails on its own,
    # with a TLS error in its status; the others stay ready.
    mesh = s.mesh
    bad = replace(stranger, ca_file=s.pki.ca_file)
    write_daemon_config(s.env, "c3", server, client=bad)
    async with asyncio.timeout(15):
        while "c3" not in mesh.remotes or mesh.remotes["c3"].status().failures < 1:
            await asyncio.sleep(0.05)
    status = mesh.remotes["c3"].status().status
    assert "TLS" in status or "certificate" in status, status
    assert not mesh.remotes["c3"].status().connected
    assert mesh.remotes[REMOTE].status().ready and mesh.remotes["c2"].status().ready
    assert mesh.remotes[REMOTE].status().failures == 0
    (s.env.config_dir / "c3").unlink()


# ----------------------------------------------------------------------------- local


async def test_local_agent_user_reads_the_cache_and_writes_nothing(secured: Secured) -> None:
    s = secured
    path = s.dir / "agent.yaml"
    async with await client_with(s.env.local_server, path, s.local_agent) as agent:
        # What an agent needs: the cache, canaries, cluster-configs, the heartbeat prefix.
        kvs, _ = await agent.list_prefix(NODES.cache_prefix(REMOTE).encode())
        assert kvs, "the agent user cannot read the cache"
        assert await agent.get(f"cilium/cluster-config/{REMOTE}".encode()) is not None
        canaries, _ = await agent.list_prefix(f"cilium/synced/{REMOTE}/".encode())
        assert len(canaries) == 5
        await agent.get(b"cilium/.heartbeat")  # allowed (absent locally)
        # ... and it may write nothing at all, anywhere.
        cache_key = NODES.cache_prefix(REMOTE).encode() + b"node-0"
        for attempt in (agent.put(cache_key, b"{}"), agent.delete(cache_key),
                        agent.delete(b"cilium/cache/", prefix=True),
                        agent.put(f"cilium/cluster-config/{REMOTE}".encode(), b"{}"),
                        agent.put(f"cilium/synced/{REMOTE}/x".encode(), b"x"),
                        agent.put(b"cilium/state/nodes/v1/local/n", b"{}"),
                        agent.put(b"cilium/.heartbeat", b"x"), agent.put(b"x", b"x")):
            with pytest.raises(EtcdPermissionDenied):
                await attempt
        with pytest.raises(EtcdPermissionDenied):  # nor read other clusters' state
            await agent.get(b"cilium/state/nodes/v1/local/n")
    await wait_converged(s.env)


# --------------------------------------------------------------------------- secrets


async def test_health_metrics_and_status_leak_no_secrets(secured: Secured,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    caplog.set_level(logging.DEBUG)
    s = secured
    mesh = s.mesh
    # Make the endpoints busy: a failing cluster with a wrong password on top.
    pw = s.env.remotes["c2"]
    write_daemon_config(s.env, "c4", pw.server, username="reader", password="wrong-" + PASSWORD)
    async with asyncio.timeout(15):
        while "c4" not in mesh.remotes or mesh.remotes["c4"].status().failures < 1:
            await asyncio.sleep(0.05)
    token = mesh.remotes["c2"].session_client._token  # type: ignore[union-attr]
    assert token, "the password remote should hold a token"
    secrets: dict[str, bytes] = {"password": PASSWORD.encode(), "token": token.encode()}
    for name, cert in (("remote key", s.pki.client("remote")), ("admin key", s.admin_local)):
        pem = await asyncio.to_thread(Path(cert.key_file).read_bytes)
        secrets[name] = pem
        # Each base64 line of the key on its own (a partial dump is a leak too).
        for i, line in enumerate(pem.splitlines()[1:-1]):
            secrets[f"{name} line {i}"] = line
    outputs: dict[str, bytes] = {}
    async with aiohttp.ClientSession() as session:
        for server, path in (("health", "/healthz"), ("health", "/healthz?verbose"),
                             ("health", "/readyz"), ("health", "/readyz?verbose"),
                             ("metrics", "/metrics"), ("api", "/v1/cluster")):
            url = f"http://127.0.0.1:{mesh.port(server)}{path}"
            async with session.get(url) as resp:
                outputs[path] = await resp.read()
    outputs["logs"] = caplog.text.encode()
    assert b"c4" in outputs["/v1/cluster"] and b"c2" in outputs["/v1/cluster"]
    for where, text in outputs.items():
        assert b"PRIVATE KEY" not in text, where
        for what, secret in secrets.items():
            assert secret not in text, f"{what} leaked in {where}"
    (s.env.config_dir / "c4").unlink()


async def test_write_attempts_do_not_disturb_the_sync(secured: Secured) -> None:
    """The remote user hammering on write permissions (a compromised reader) changes
    nothing: the data stays as published, and the daemon keeps mirroring updates."""
    s = secured
    async with await client_with(s.remote_server, s.dir / "rogue.yaml",
                                 s.pki.client("remote")) as rogue:
        denied = 0
        for i in range(50):
            try:
                await rogue.put(f"cilium/state/nodes/v1/{REMOTE}/rogue-{i}".encode(), b"{}")
            except EtcdPermissionDenied:
                denied += 1
            except EtcdError as exc:  # pragma: no cover - anything else is a failure
                raise AssertionError(exc) from exc
        assert denied == 50
    await s.env.remotes[REMOTE].publish({NODES: sample_state(REMOTE, 1)[NODES]})
    await wait_converged(s.env)


async def test_remote_whose_config_is_not_published_yet_is_waited_for(
        secured: Secured, etcd_factory: EtcdFactory) -> None:
    """A remote apiserver still starting (no cluster-config yet), read as Cilium's `remote`
    user, which may not list other clusters' configs: we wait without counting a failure."""
    s = secured
    root = s.pki.client("root")
    server = etcd_factory(name="remote-c3", tls=s.pki.server, client_cert_auth=True)
    await initialise(server, root, s.dir / "init-c3.yaml", "c3")
    write_daemon_config(s.env, "c3", server, client=s.pki.client("remote"))
    async with asyncio.timeout(15):
        while not ((remote := s.mesh.remotes.get("c3")) is not None
                   and "waiting for the remote cluster configuration" in remote.status().status):
            await asyncio.sleep(0.05)
    async with await client_with(server, s.dir / "root-c3.yaml", root) as client:
        await client.put(b"cilium/cluster-config/c3",
                         CiliumClusterConfig(id=3, max_connected_clusters=255).to_json())
    async with asyncio.timeout(30):
        while not remote.status().ready:
            await asyncio.sleep(0.05)
    assert remote.status().failures == 0, remote.status().status
