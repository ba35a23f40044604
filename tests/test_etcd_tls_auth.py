"""TLS, certificate rotation, password authentication, token refresh and the auth admin
API of :class:`clustermesh.etcd.client.EtcdClient`, against real etcd servers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import (
    ClientCert,
    EtcdCluster,
    EtcdctlError,
    EtcdFactory,
    EtcdNotFound,
    EtcdServer,
    Pki,
    assume_auth,
    enable_auth,
    find_etcd_binary,
    make_other_ca,
    write_client_config,
)

from clustermesh.etcd import auth
from clustermesh.etcd.auth import Permission
from clustermesh.etcd.client import EtcdClient, prefix_range_end
from clustermesh.etcd.config import load_etcd_config, load_tls_files
from clustermesh.etcd.errors import (
    EtcdAuthError,
    EtcdError,
    EtcdPermissionDenied,
    EtcdTLSError,
    EtcdUnavailable,
)


def client_for(path: Path, name: str = "client", **kwargs: Any) -> EtcdClient:
    kwargs.setdefault("dial_timeout", 2.0)
    kwargs.setdefault("request_timeout", 10.0)
    return EtcdClient(load_etcd_config(path), name=name, **kwargs)


def make_client(server: EtcdServer, tmp_path: Path, name: str = "client", *,
                cert: ClientCert | None = None, username: str | None = None,
                password: str | None = None, **kwargs: Any) -> EtcdClient:
    path = server.client_config(tmp_path / f"{name}.yaml", client=cert, username=username,
                                password=password)
    return client_for(path, name, **kwargs)


# ----------------------------------------------------------------------------------- TLS


async def test_tls_with_client_certificate(etcd_tls: EtcdServer, pki: Pki,
                                           tmp_path: Path) -> None:
    assert etcd_tls.client_url.startswith("https://")
    async with asyncio.timeout(30), make_client(etcd_tls, tmp_path,
                                                cert=pki.client("root")) as client:
        assert client.config.use_tls
        rev = await client.put(b"tls/a", b"1")
        assert (await client.get(b"tls/a")).mod_revision == rev
        assert await asyncio.to_thread(etcd_tls.get, "tls/a") == "1"
        assert (await client.status()).revision == rev


async def test_tls_wrong_ca_is_a_tls_error(etcd_tls: EtcdServer, pki: Pki,
                                           tmp_path: Path) -> None:
    other = make_other_ca(tmp_path / "other-ca")
    root = pki.client("root")
    path = write_client_config(tmp_path / "wrong-ca.yaml", endpoints=etcd_tls.endpoints,
                               ca_file=other.ca_file, cert_file=root.cert_file,
                               key_file=root.key_file)
    client = client_for(path)
    with pytest.raises(EtcdTLSError) as info:
        async with asyncio.timeout(20):
            await client.connect()
    await client.close()
    message = str(info.value).lower()
    assert "tls" in message or "certificate" in message
    assert etcd_tls.client_url in str(info.value)
    assert isinstance(info.value, EtcdUnavailable)


async def test_tls_without_client_certificate_is_refused(etcd_tls: EtcdServer, pki: Pki,
                                                         tmp_path: Path) -> None:
    client = make_client(etcd_tls, tmp_path)  # CA only: the server is verified, we are not
    assert client.config.cert_file is None
    with pytest.raises(EtcdUnavailable) as info:
        async with asyncio.timeout(20):
            await client.connect()
            await client.put(b"tls/anon", b"1")
    await client.close()
    assert etcd_tls.client_url in str(info.value)
    assert await asyncio.to_thread(etcd_tls.get, "tls/anon") is None

    # A certificate from an unrelated CA is refused the same way.
    stranger = make_other_ca(tmp_path / "stranger").issue_client("root")
    path = write_client_config(tmp_path / "stranger.yaml", endpoints=etcd_tls.endpoints,
                               ca_file=pki.ca_file, cert_file=stranger.cert_file,
                               key_file=stranger.key_file)
    client = client_for(path, "stranger")
    with pytest.raises(EtcdUnavailable):
        async with asyncio.timeout(20):
            await client.connect()
            await client.put(b"tls/stranger", b"1")
    await client.close()


async def test_tls_certificate_rotation(etcd_tls: EtcdServer, pki: Pki,
                                        tmp_path: Path) -> None:
    """The client certificate is replaced on disk (same paths, new key): the client keeps
    working, reconnects with the new files, and a watch resumes on the new channel."""
    stem = f"rotating-{uuid.uuid4().hex[:8]}"
    cert_a = pki.issue_client("root", stem=stem)
    path = write_client_config(tmp_path / "rotating.yaml", endpoints=etcd_tls.endpoints,
                               ca_file=pki.ca_file, cert_file=cert_a.cert_file,
                               key_file=cert_a.key_file)
    client = client_for(path, tls_reload_interval=0.2)
    async with asyncio.timeout(60), client:
        await client.put(b"rot/0", b"x")
        first = client.connection_status()
        assert first.endpoint is not None
        fingerprint_a = first.tls_fingerprint
        assert fingerprint_a == load_tls_files(client.config).fingerprint

        start = (await client.status()).revision + 1
        async with client.watch(b"rot/", start_revision=start) as watch:
            events: list[Any] = []

            async def consume() -> None:
                async for batch in watch:
                    events.extend(batch.events)

            consumer = asyncio.create_task(consume())
            await client.put(b"rot/1", b"x")

            cert_b = pki.issue_client("root", stem=stem)  # overwrites cert_a's files
            assert cert_b.cert_file == cert_a.cert_file
            fingerprint_b = load_tls_files(client.config).fingerprint
            assert fingerprint_b != fingerprint_a

            # Keep writing while the client notices and switches.
            i = 2
            while client.connection_status().tls_fingerprint != fingerprint_b:
                await client.put(f"rot/{i}".encode(), b"x")
                i += 1
                await asyncio.sleep(0.05)
            assert client.connection_status().channel > first.channel
            await client.put(b"rot/last", b"x")
            assert (await client.get(b"rot/last")).value == b"x"

            # The watch moves to the new channel (the old one is closed after a grace
            # period) and delivers every write exactly once.
            expected = [b"rot/1", *(f"rot/{n}".encode() for n in range(2, i)), b"rot/last"]
            while len(events) < len(expected) and not consumer.done():
                await asyncio.sleep(0.05)
            # The old channel is closed after its grace period: the stream breaks and the
            # watch resumes on the new channel.
            async with asyncio.timeout(10):
                while watch.reconnects == 0 and not consumer.done():
                    await asyncio.sleep(0.05)
            await client.put(b"rot/after-grace", b"x")
            expected.append(b"rot/after-grace")
            while len(events) < len(expected) and not consumer.done():
                await asyncio.sleep(0.05)
            if consumer.done():
                consumer.result()
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            assert [ev.kv.key for ev in events] == expected
    assert await asyncio.to_thread(etcd_tls.get, "rot/after-grace") == "x"


# ---------------------------------------------------------------------------------- auth


async def test_auth_user_permissions(etcd_auth: EtcdServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30), make_client(etcd_auth, tmp_path, username="alice",
                                                password="alicepw") as client:
        await client.put(b"cilium/state/a", b"1")
        assert (await client.get(b"cilium/state/a")).value == b"1"
        kvs, _ = await client.list_prefix(b"cilium/")
        assert [kv.key for kv in kvs] == [b"cilium/state/a"]
        with pytest.raises(EtcdPermissionDenied):
            await client.put(b"other/a", b"1")
        with pytest.raises(EtcdPermissionDenied):
            await client.get(b"other/a")
        with pytest.raises(EtcdPermissionDenied):
            async with client.watch(b"other/") as watch:
                async for _ in watch:
                    pytest.fail("a watch without permission delivered events")
        with pytest.raises(EtcdPermissionDenied):
            await auth.user_list(client)  # admin API needs root
        assert await asyncio.to_thread(etcd_auth.get, "other/a") is None
        assert await asyncio.to_thread(etcd_auth.get, "cilium/state/a") == "1"


async def test_auth_wrong_password(etcd_auth: EtcdServer, tmp_path: Path) -> None:
    client = make_client(etcd_auth, tmp_path, username="alice", password="wrong")
    with pytest.raises(EtcdAuthError):
        async with asyncio.timeout(20):
            await client.connect()
            await client.put(b"cilium/x", b"1")
    await client.close()
    client = make_client(etcd_auth, tmp_path, "nobody", username="nobody", password="pw")
    with pytest.raises(EtcdAuthError):
        async with asyncio.timeout(20):
            await client.connect()
            await client.put(b"cilium/x", b"1")
    await client.close()
    assert await asyncio.to_thread(etcd_auth.get, "cilium/x") is None


def etcd_binary(version: str) -> Path:
    try:
        return find_etcd_binary(version)
    except EtcdNotFound as exc:
        pytest.skip(f"etcd {version} not available: {exc}")


class Consumer:
    """Iterates one watch in a background task, so failures hit a stream in use."""

    def __init__(self, watch: Any) -> None:
        self.events: list[Any] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(watch))

    async def _run(self, watch: Any) -> None:
        try:
            async for batch in watch:
                self.events.extend(batch.events)
                self._changed.set()
        finally:
            self._changed.set()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                if self._task.done():
                    self._task.result()  # the watch's error
                    pytest.fail(f"watch ended after {len(self.events)} events")
                self._changed.clear()
                await self._changed.wait()
        return [ev.kv.key for ev in self.events]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def put_after_election(cluster: EtcdCluster, key: str, value: str) -> None:
    """etcdctl put once a leader is elected (retrying etcd's transient "leader changed")."""
    cluster.leader()
    for attempt in range(5):
        try:
            cluster.put(key, value)
            return
        except EtcdctlError as exc:
            if attempt == 4 or "leader changed" not in str(exc):
                raise
            time.sleep(0.2)


AUTH = {
    "root_password": "rootpw",
    "users": {"alice": "alicepw"},
    "roles": {"rw": [("readwrite", "cilium/", True)]},
    "grants": {"alice": ["rw"]},
}


@pytest.mark.parametrize("version", ["3.4", "3.5"])
async def test_auth_token_refresh(etcd_factory: EtcdFactory, tmp_path: Path,
                                  version: str) -> None:
    """A simple token left unused for ``--auth-token-ttl`` (expiry is checked once a
    second) is dropped by etcd. The client re-authenticates by itself, for unary calls
    ("invalid auth token") and for a new watch (etcd 3.5.1 cancels it as "permission
    denied", 3.4.23 as "invalid auth token")."""
    server = etcd_factory(name=f"etcd-ttl-{version}", binary=etcd_binary(version),
                          extra_args=["--auth-token=simple", "--auth-token-ttl=1"])
    enable_auth(server, **AUTH)
    async with asyncio.timeout(40), make_client(server, tmp_path, username="alice",
                                                password="alicepw") as client:
        start = await client.put(b"cilium/a", b"1")
        tokens = client.connection_status().authentications
        assert tokens and client.connection_status().authenticated
        await asyncio.sleep(2.5)  # idle > ttl + the 1 s expiry resolution
        await client.put(b"cilium/b", b"2")
        assert client.connection_status().authentications > tokens  # re-authenticated
        assert (await client.get(b"cilium/a")).value == b"1"

        # The token expires again; the first request is now a new watch.
        tokens = client.connection_status().authentications
        await asyncio.sleep(2.5)
        async with client.watch(b"cilium/", start_revision=start) as watch:
            consumer = Consumer(watch)
            assert await consumer.wait_for(2) == [b"cilium/a", b"cilium/b"]
            assert client.connection_status().authentications > tokens
            await client.put(b"cilium/c", b"3")
            assert await consumer.wait_for(3) == [b"cilium/a", b"cilium/b", b"cilium/c"]
            await consumer.stop()
    assert await asyncio.to_thread(server.get_prefix, "cilium/") == {
        "cilium/a": "1", "cilium/b": "2", "cilium/c": "3"}


@pytest.mark.parametrize("version", ["3.4", "3.5"])
async def test_watch_resumes_with_a_fresh_token_after_failover(
        etcd_factory: EtcdFactory, tmp_path: Path, version: str) -> None:
    """A watch stream outlives its token (tokens are checked when a watch is created). When
    its member dies, the watch resumes on another member, which has expired that token: the
    watch must authenticate again instead of failing with "permission denied"."""
    cluster = etcd_factory.cluster(binary=etcd_binary(version),
                                   extra_args=["--auth-token=simple", "--auth-token-ttl=1"])
    enable_auth(cluster, **AUTH)
    async with asyncio.timeout(40), make_client(cluster, tmp_path, username="alice",
                                                password="alicepw",
                                                request_timeout=2.0) as client:
        start = await client.put(b"cilium/a", b"1")
        async with client.watch(b"cilium/", start_revision=start) as watch:
            consumer = Consumer(watch)
            await consumer.wait_for(1)
            tokens = client.connection_status().authentications
            await asyncio.sleep(2.5)  # the token expires on every member
            victim = next(m for m in cluster.members if m.client_url == client.endpoint)
            victim.kill()
            # Written as root by etcdctl: no unary call of this client renews its token.
            await asyncio.to_thread(put_after_election, cluster, "cilium/b", "2")
            assert await consumer.wait_for(2) == [b"cilium/a", b"cilium/b"]
            assert watch.reconnects >= 1
            assert client.connection_status().authentications > tokens
            await consumer.stop()


async def admin_roundtrip(server: EtcdServer, tmp_path: Path) -> None:
    """Create users/roles with the client on a server without auth, enable auth, check that
    the grants are real, then clean up as root."""
    async with asyncio.timeout(60), make_client(server, tmp_path, "admin") as admin:
        assert await auth.auth_status(admin) is False
        await auth.user_add(admin, "root", "rootpw")
        await auth.user_grant_role(admin, "root", "root")
        await auth.user_add(admin, "bob", "bobpw")
        await auth.user_add(admin, "certonly")  # no password: certificate login only
        await auth.role_add(admin, "reader")
        await auth.role_grant_permission(admin, "reader", key=b"cilium/", perm="read", prefix=True)
        await auth.role_add(admin, "writer")
        await auth.role_grant_permission(admin, "writer", key=b"a", perm="write",
                                         range_end=b"c")
        await auth.user_grant_role(admin, "bob", "reader")
        await auth.user_grant_role(admin, "certonly", "writer")
        with pytest.raises(ValueError):
            await auth.role_grant_permission(admin, "reader", key=b"x", perm="admin")

        assert await auth.user_get(admin, "bob") == ["reader"]
        assert await auth.user_get(admin, "root") == ["root"]
        assert await auth.role_get(admin, "reader") == [
            Permission(key=b"cilium/", range_end=prefix_range_end(b"cilium/"), perm="read")]
        assert await auth.role_get(admin, "writer") == [
            Permission(key=b"a", range_end=b"c", perm="write")]
        assert sorted(await auth.user_list(admin)) == ["bob", "certonly", "root"]
        assert {"reader", "writer"} <= set(await auth.role_list(admin))
        with pytest.raises(EtcdError):
            await auth.user_get(admin, "nobody")

        await admin.put(b"cilium/x", b"1")
        await auth.auth_enable(admin)
        assert await auth.auth_status(admin) is True
        with pytest.raises(EtcdError):
            await admin.put(b"cilium/y", b"anonymous writes are refused now")
    assume_auth(server, root_password="rootpw")  # the harness's etcdctl calls log in as root

    async with asyncio.timeout(60), make_client(server, tmp_path, "bob", username="bob",
                                                password="bobpw") as bob:
        assert (await bob.get(b"cilium/x")).value == b"1"
        assert await auth.auth_status(bob) is True  # not root: 3.5 refuses, which means "on"
        with pytest.raises(EtcdPermissionDenied):
            await bob.put(b"cilium/x", b"2")  # read-only
    certonly = make_client(server, tmp_path, "certonly", username="certonly", password="pw")
    with pytest.raises(EtcdAuthError):
        async with asyncio.timeout(20):
            await certonly.connect()
            await certonly.get(b"cilium/x")
    await certonly.close()

    async with asyncio.timeout(60), make_client(server, tmp_path, "root", username="root",
                                                password="rootpw") as root:
        assert await auth.auth_status(root) is True
        await auth.user_delete(root, "bob")
        await auth.user_delete(root, "certonly")
        await auth.role_delete(root, "reader")
        await auth.role_delete(root, "writer")
        assert sorted(await auth.user_list(root)) == ["root"]
        assert not {"reader", "writer"} & set(await auth.role_list(root))
    users = await asyncio.to_thread(server.etcdctl, "user", "list")
    assert users.stdout.split() == ["root"]


async def test_auth_admin_api(etcd: EtcdServer, tmp_path: Path) -> None:
    """etcd 3.4 has no AuthStatus RPC: auth_status() uses its fallback."""
    assert etcd.version.startswith("3.4")
    await admin_roundtrip(etcd, tmp_path)


async def test_auth_admin_api_etcd35(etcd35: EtcdServer, tmp_path: Path) -> None:
    """etcd 3.5 answers AuthStatus itself."""
    await admin_roundtrip(etcd35, tmp_path)
