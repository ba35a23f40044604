"""Cluster users management (``apiserver/users.py``) against a real etcd with auth on.

The etcd runs with TLS and ``--client-cert-auth``; etcdinit creates Cilium's users and
roles first, and the manager connects as ``admin-c1`` (role root), as in the pod.  What
a managed user may do is checked by connecting with a client certificate whose CN is
the user.  The users file lives in a kubelet-style ConfigMap volume (``users.yaml ->
..data/users.yaml``, ``..data -> ..<timestamp>``), updated by the kubelet's atomic swap.
Most tests drive :meth:`UsersManager.poll_once` directly (one deterministic pass); the
retry backoff and the polling loop of the reload test run on :mod:`harness.fakeclock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import yaml
from harness import ClientCert, EtcdFactory, EtcdServer, Pki
from harness.fakeclock import FakeClock
from prometheus_client import CollectorRegistry

from apiserver.daemon import ApiServer, ApiserverOptions
from apiserver.etcdinit import etcdinit
from apiserver.users import UsersFileError, UsersManager, load_users_file, parse_users_file
from clustermesh.backoff import BackoffPolicy
from clustermesh.controllers import ControllerRuns
from clustermesh.etcd import auth
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import EtcdPermissionDenied

CLUSTER = "c1"


# ---------------------------------------------------------------------------- helpers


class ConfigMapVolume:
    """A directory laid out as the kubelet mounts a ConfigMap, updated as it does:
    write a new timestamped directory, point a new ``..data_tmp`` symlink at it, rename
    that over ``..data`` (atomic), then remove the old directory."""

    def __init__(self, root: Path, key: str = "users.yaml") -> None:
        self.root = root
        self.key = key
        self.generation = 0
        root.mkdir(parents=True)

    @property
    def path(self) -> Path:
        return self.root / self.key

    def write(self, text: str) -> None:
        self.generation += 1
        data = self.root / f"..2026_12_01_21_00_{self.generation:02d}.{uuid.uuid4().hex[:6]}"
        data.mkdir()
        (data / self.key).write_text(text)
        os.chmod(data / self.key, 0o444)
        link = self.root / "..data"
        old = Path(os.readlink(link)) if link.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(data.name, tmp)
        os.rename(tmp, link)
        if not self.path.is_symlink():
            os.symlink(f"..data/{self.key}", self.path)
        if old is not None:
            for child in (self.root / old).iterdir():
                child.unlink()
            (self.root / old).rmdir()

    def users(self, *entries: tuple[str, str]) -> None:
        self.write(yaml.safe_dump({"users": [{"name": n, "role": r} for n, r in entries]}))


@pytest.fixture
def server(etcd_factory: EtcdFactory, pki: Pki) -> EtcdServer:
    return etcd_factory(name="etcd-users", tls=pki.server, client_cert_auth=True)


@contextlib.asynccontextmanager
async def connect(server: EtcdServer, tmp_path: Path, cert: ClientCert) -> AsyncIterator[
        EtcdClient]:
    config = server.client_config(tmp_path / f"{cert.name}-{uuid.uuid4().hex[:6]}.yaml",
                                  client=cert)
    client = EtcdClient(load_etcd_config(config), name=cert.name, dial_timeout=3.0,
                        request_timeout=10.0, tls_reload_interval=0)
    try:
        await client.connect()
        yield client
    finally:
        await client.close()


@pytest.fixture
async def admin(server: EtcdServer, pki: Pki, tmp_path: Path) -> AsyncIterator[EtcdClient]:
    """Cilium's users and roles in place (auth on); a client as admin-c1 (role root)."""
    async with connect(server, tmp_path, pki.client("root")) as root:
        await etcdinit(root, cluster_name=CLUSTER, on_action=lambda _: None)
    async with connect(server, tmp_path, pki.client("admin-c1")) as client:
        await client.put(b"cilium/state/nodes/v1/c1/n1", b"node")
        await client.put(b"cilium/cache/nodes/v1/c2/n1", b"cached")
        yield client


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    return ConfigMapVolume(tmp_path / "etcd-config")


def manager(client: EtcdClient, volume: ConfigMapVolume, **kwargs: object) -> UsersManager:
    return UsersManager(client, cluster_name=CLUSTER, path=volume.path,  # type: ignore[arg-type]
                        **kwargs)


async def users(client: EtcdClient) -> dict[str, list[str]]:
    return {u: sorted(await auth.user_get(client, u)) for u in await auth.user_list(client)}


async def can_read(server: EtcdServer, tmp_path: Path, cert: ClientCert, key: bytes) -> bool:
    async with connect(server, tmp_path, cert) as client:
        try:
            await client.get(key)
        except EtcdPermissionDenied:
            return False
        return True


async def wait_for(predicate: Callable[[], Awaitable[bool]], what: str,
                   timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def errors_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and text in r.getMessage()]


# ---------------------------------------------------------------------------- the file


def test_parse_users_file_format(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    parsed = parse_users_file(
        "other: ignored\nusers:\n- {name: remote-c2, role: remote, extra: x}\n"
        "- {name: '', role: remote}\n- {role: remote}\n- {name: remote-c3, role: remote}\n"
        "- {name: remote-c2, role: remote}\n- {name: admin-c1, role: root}\n"
        "- {name: remote, role: remote}\n", path=path, cluster_name=CLUSTER)
    assert dict(parsed.users) == {"remote-c2": "remote", "remote-c3": "remote"}
    assert parsed.skipped == 2
    assert len(parsed.refused) == 2
    assert all(str(path) in m for m in parsed.refused)
    assert "users[5]: refusing to manage user admin-c1" in parsed.refused[0]
    assert dict(parse_users_file("", path=path, cluster_name=CLUSTER).users) == {}
    assert dict(parse_users_file("users:\n", path=path, cluster_name=CLUSTER).users) == {}


@pytest.mark.parametrize(("text", "message"), [
    ("users: [", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping with a 'users' list, got list"),
    ("users: {name: x}\n", "'users' must be a list of {name, role}, got dict"),
    ("users:\n- remote-c2\n", "users[0]: expected a mapping with name and role"),
    ("users:\n- {name: [x], role: remote}\n", "users[0]: name must be a string"),
    ("users:\n- {name: ok, role: remote}\n- {name: remote-c2}\n",
     "users[1] (remote-c2): role must be a non-empty string, got None"),
    ("users:\n- {name: c2, role: remote}\n- {name: c2, role: local}\n",
     "users[1]: user c2 is listed twice with different roles (remote at users[0], local"),
])
def test_parse_users_file_errors_name_the_file_and_entry(tmp_path: Path, text: str,
                                                        message: str) -> None:
    path = tmp_path / "users.yaml"
    with pytest.raises(UsersFileError) as info:
        parse_users_file(text, path=path, cluster_name=CLUSTER)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_etcdinit_reads_the_same_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``etcdinit --cluster-users-config-path`` reads users.yaml with the manager's
    parser: the same entries refused and skipped, less the entry named after this
    cluster (Cilium's etcdinit skips it)."""
    caplog.set_level(logging.WARNING, logger="apiserver.users")
    path = tmp_path / "users.yaml"
    path.write_text("users:\n- {name: c1, role: remote}\n- {name: remote-c2, role: remote}\n"
                    "- {name: '', role: remote}\n- {name: admin-c1, role: remote}\n")
    assert load_users_file(path, cluster_name=CLUSTER) == {"remote-c2": "remote"}
    assert [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()] == [
        f"{path}: users[3]: refusing to manage user admin-c1: it is one of etcdinit's users "
        "(root, admin-<cluster>, local-<cluster>, externalworkload, remote), which must "
        "stay as etcdinit made them"]
    path.write_text("users: [")
    with pytest.raises(UsersFileError, match="not valid YAML"):
        load_users_file(path, cluster_name=CLUSTER)
    with pytest.raises(UsersFileError, match=r"absent\.yaml: cannot read"):
        load_users_file(tmp_path / "absent.yaml", cluster_name=CLUSTER)


# ---------------------------------------------------------------------------- etcd


async def test_user_created_with_role_authenticates_by_certificate(
        server: EtcdServer, admin: EtcdClient, pki: Pki, tmp_path: Path,
        volume: ConfigMapVolume) -> None:
    cert = pki.issue_client("remote-c2")
    # Before: the CN is no etcd user, so etcd grants it nothing.
    assert not await can_read(server, tmp_path, cert, b"cilium/state/nodes/v1/c1/n1")
    volume.users(("remote-c2", "remote"))
    m = manager(admin, volume)
    await m.poll_once()
    assert (await users(admin))["remote-c2"] == ["remote"]
    assert "remote-c2" in server.etcdctl("user", "list").stdout.split()  # etcd's own view
    assert await can_read(server, tmp_path, cert, b"cilium/state/nodes/v1/c1/n1")
    assert not await can_read(server, tmp_path, cert, b"cilium/cache/nodes/v1/c2/n1")
    status = m.status
    assert dict(status.users) == {"remote-c2": "remote"}
    assert status.created == {"remote-c2"}
    assert status.in_sync and status.last_error is None


async def test_dropped_users_deleted_only_if_we_created_them(
        server: EtcdServer, admin: EtcdClient, volume: ConfigMapVolume) -> None:
    # Made by hand: one holding its role already, one without any role, one never listed.
    for name in ("by-hand", "by-hand-bare", "operator"):
        server.etcdctl("user", "add", name, "--no-password")
    server.etcdctl("user", "grant-role", "by-hand", "remote")
    volume.users(("remote-c2", "remote"), ("remote-c3", "remote"), ("by-hand", "remote"),
                 ("by-hand-bare", "remote"))
    m = manager(admin, volume)
    await m.poll_once()
    assert m.status.created == {"remote-c2", "remote-c3"}
    assert (await users(admin))["by-hand-bare"] == ["remote"]
    volume.users(("remote-c3", "remote"))
    await m.poll_once()
    now = await users(admin)
    assert "remote-c2" not in now
    assert now["remote-c3"] == ["remote"]
    # Not ours: kept; the role we granted is taken back, the one it had stays.
    assert now["by-hand"] == ["remote"]
    assert now["by-hand-bare"] == []
    assert now["operator"] == []
    # Cilium's users are untouched.
    assert now["remote"] == ["remote"] and now["admin-c1"] == ["root"]
    assert dict(m.status.users) == {"remote-c3": "remote"}


async def test_role_change_grants_the_new_role_and_revokes_the_old(
        server: EtcdServer, admin: EtcdClient, pki: Pki, tmp_path: Path,
        volume: ConfigMapVolume) -> None:
    await auth.role_add(admin, "cache-reader")
    await auth.role_grant_permission(admin, "cache-reader", key=b"cilium/cache/", perm="read",
                                     prefix=True)
    cert = pki.issue_client("remote-c2")
    volume.users(("remote-c2", "remote"))
    m = manager(admin, volume)
    await m.poll_once()
    volume.users(("remote-c2", "cache-reader"))
    await m.poll_once()
    assert (await users(admin))["remote-c2"] == ["cache-reader"]
    assert await can_read(server, tmp_path, cert, b"cilium/cache/nodes/v1/c2/n1")
    assert not await can_read(server, tmp_path, cert, b"cilium/state/nodes/v1/c1/n1")


async def test_protected_names_refused_and_empty_names_skipped(
        admin: EtcdClient, volume: ConfigMapVolume,
        caplog: pytest.LogCaptureFixture) -> None:
    before = await users(admin)
    volume.write("users:\n- {name: root, role: remote}\n- {name: remote, role: local}\n"
                 "- {name: local-c1, role: remote}\n- {name: '', role: remote}\n"
                 "- {name: remote-c2, role: remote}\n")
    caplog.set_level(logging.INFO, logger="apiserver.users")
    m = manager(admin, volume)
    await m.poll_once()
    after = await users(admin)
    assert after == {**before, "remote-c2": ["remote"]}
    refusals = [r.getMessage() for r in caplog.records if "refusing to manage" in r.getMessage()]
    assert [m.split("refusing to manage user ")[1].split(":")[0] for m in refusals] == [
        "root", "remote", "local-c1"]
    # Dropping every entry leaves Cilium's users alone too.
    volume.users()
    await m.poll_once()
    assert await users(admin) == before


async def test_unparsable_file_reported_once_and_changes_nothing(
        admin: EtcdClient, volume: ConfigMapVolume,
        caplog: pytest.LogCaptureFixture) -> None:
    volume.users(("remote-c2", "remote"))
    m = manager(admin, volume)
    await m.poll_once()
    caplog.set_level(logging.INFO, logger="apiserver.users")
    volume.write("users:\n- {name: remote-c3, role: remote}\n  - broken")
    await m.poll_once()
    await m.poll_once()
    await m.poll_once()
    reported = errors_about(caplog, str(volume.path))
    assert len(reported) == 1, reported
    assert "not valid YAML" in reported[0]
    assert "remote-c2" in await users(admin) and "remote-c3" not in await users(admin)
    assert m.status.last_error is not None and "not valid YAML" in m.status.last_error
    volume.users(("remote-c3", "remote"))
    await m.poll_once()
    now = await users(admin)
    assert "remote-c3" in now and "remote-c2" not in now
    assert m.status.last_error is None and m.status.in_sync


async def test_missing_role_retried_with_backoff_until_it_exists(
        admin: EtcdClient, volume: ConfigMapVolume,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiserver.users")
    fake = FakeClock()
    registry = CollectorRegistry()
    runs = ControllerRuns(namespace="t", registry=registry, groups=["all"])
    m = manager(admin, volume, clock=fake.clock, runs=runs,
                backoff=BackoffPolicy(initial=1.0, maximum=4.0, jitter=0.0))

    def counted(status: str) -> float | None:
        return registry.get_sample_value("t_controllers_group_runs_total", {
            "group_name": "clustermesh-users-management", "status": status})
    volume.users(("remote-c2", "peers"), ("remote-c3", "remote"))
    await m.poll_once()
    failed = errors_about(caplog, "user remote-c2: role peers does not exist")
    assert len(failed) == 1 and "retrying in 1.0s" in failed[0]
    assert m.status.passes == 1 and not m.status.in_sync
    now = await users(admin)
    assert "remote-c2" not in now  # not created without its role
    assert now["remote-c3"] == ["remote"]  # the other entries still apply
    # The pass counter is the sentinel: each poll below has completed when it returns.
    # Delays 1, 2, 4, 4 (capped); the steps are exact in binary floating point.
    schedule = [(0.5, 1), (0.5, 2), (1.75, 2), (0.25, 3), (3.75, 3), (0.25, 4), (4.0, 5)]
    for advance, passes in schedule:
        fake.advance(advance)
        await m.poll_once()
        assert m.status.passes == passes, (advance, passes)
    await auth.role_add(admin, "peers")
    fake.advance(4.0)
    await m.poll_once()
    assert m.status.passes == 6
    assert (counted("failure"), counted("success")) == (5, 1)
    assert (await users(admin))["remote-c2"] == ["peers"]
    assert m.status.in_sync and m.status.last_error is None
    assert dict(m.status.users) == {"remote-c2": "peers", "remote-c3": "remote"}
    assert fake.sleeps == []  # poll_once never sleeps: the retry is a deadline


async def test_reload_follows_the_kubelet_symlink_swap(
        admin: EtcdClient, volume: ConfigMapVolume) -> None:
    volume.users(("remote-c2", "remote"))
    fake = FakeClock()
    m = manager(admin, volume, clock=fake.clock)
    task = asyncio.create_task(m.run())
    try:
        # The loop is parked on the clock between polls: each pass has completed then.
        await fake.wait_for_sleepers(1)
        assert "remote-c2" in await users(admin)
        volume.users(("remote-c3", "remote"))
        assert fake.advance(0.99) == 0  # not polled before the interval is over
        assert fake.advance(0.01) == 1
        await fake.wait_for_sleepers(1)
        now = await users(admin)
        assert "remote-c3" in now and "remote-c2" not in now
        assert fake.sleeps == [1.0, 1.0]  # the default poll interval
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------------------- daemon


class NeverListing:
    """A source whose API never answers: the apiserver stays unready."""

    async def run(self, sink: object, kinds: object) -> None:
        await asyncio.Event().wait()


@pytest.mark.parametrize("enabled", [True, False])
async def test_apiserver_manages_users_without_waiting_for_kubernetes(
        server: EtcdServer, admin: EtcdClient, pki: Pki, tmp_path: Path,
        volume: ConfigMapVolume, caplog: pytest.LogCaptureFixture, enabled: bool) -> None:
    caplog.set_level(logging.INFO)
    volume.users(("remote-c2", "remote"))
    options = ApiserverOptions(
        cluster_name=CLUSTER, cluster_id=1, health_port=0,
        local_config=server.client_config(tmp_path / "admin.yaml",
                                          client=pki.client("admin-c1")),
        cluster_users_enabled=enabled, cluster_users_config_path=volume.path)
    apiserver = ApiServer(options, NeverListing())
    stop = asyncio.Event()
    task = asyncio.create_task(apiserver.run(stop))
    try:
        if enabled:
            async def created() -> bool:
                return "remote-c2" in await users(admin)

            await wait_for(created, "remote-c2 created by the apiserver")
            assert apiserver.users is not None and apiserver.users.status.in_sync
        else:
            async def said() -> bool:
                return any(r.getMessage() == "etcd users management disabled"
                           for r in caplog.records)

            await wait_for(said, "the disabled line")
            # The line comes after the etcd connection, where the task would start.
            assert apiserver.users is None
            assert "remote-c2" not in await users(admin)
        assert not apiserver.ready()[0]
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


async def test_writes_racing_users_management_succeed(
        server: EtcdServer, admin: EtcdClient, pki: Pki, tmp_path: Path,
        volume: ConfigMapVolume) -> None:
    """Every user change bumps etcd's auth revision, and a write admitted before the bump
    is refused when applied ("revision of auth store is old"); the client sends it again,
    so the daemons writing beside users management never see it."""
    m = manager(admin, volume)
    async with connect(server, tmp_path, pki.client("admin-c1")) as writer:
        stop = asyncio.Event()

        async def write() -> int:
            n = 0
            while not stop.is_set():
                await writer.put(f"cilium/state/nodes/v1/c1/n{n % 10}".encode(), b"x")
                n += 1
            return n

        writers = [asyncio.create_task(write()) for _ in range(4)]
        for i in range(15):
            volume.users(*[(f"remote-p{j}", "remote") for j in range(i % 4, 8)])
            await m.poll_once()
            assert m.status.last_error is None
        stop.set()
        written = await asyncio.gather(*writers)  # raises if a put failed
    assert min(written) > 0
