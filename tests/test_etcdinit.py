"""``apiserver.etcdinit`` against real etcd servers with TLS and ``--client-cert-auth``.

Every etcd user authenticates by the CN of its client certificate, as in the
clustermesh-apiserver pod.  State is read back through the auth API and, where it
matters, cross-checked with ``etcdctl`` (an implementation independent of ours).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    ClientCert,
    EtcdFactory,
    EtcdNotFound,
    EtcdServer,
    Pki,
    find_etcd_binary,
    free_port,
    write_client_config,
)

from apiserver.etcdinit import (
    ALL_KEYS,
    Grant,
    desired_auth,
    etcdinit,
    main,
)
from clustermesh.etcd import auth
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import load_etcd_config
from clustermesh.etcd.errors import EtcdError, EtcdPermissionDenied, EtcdUnavailable
from clustermesh.flags import parse_duration

REPO = Path(__file__).resolve().parent.parent
CLUSTER = "c1"

# Facts §4.4 written out by hand (not derived from desired_auth): what etcd must hold.
Dump = tuple[dict[str, list[str]], dict[str, list[tuple[bytes, bytes, str]]]]
EXPECTED_USERS = {
    "root": ["root"],
    "admin-c1": ["root"],
    "externalworkload": ["externalworkload"],
    "local-c1": ["local"],
    "remote": ["remote"],
}
EXPECTED_ROLES = {
    "root": [],
    "externalworkload": sorted([
        (b"\x00", b"\x00", "read"),
        (b"cilium/state/noderegister/v1/", b"cilium/state/noderegister/v10", "readwrite"),
        (b"cilium/.initlock/", b"cilium/.initlock0", "readwrite"),
    ]),
    "local": sorted([
        (b"cilium/.heartbeat", b"cilium/.heartbeau", "read"),
        (b"cilium/cache/", b"cilium/cache0", "read"),
        (b"cilium/cluster-config/", b"cilium/cluster-config0", "read"),
        (b"cilium/synced/", b"cilium/synced0", "read"),
    ]),
    "remote": sorted([
        (b"cilium/.heartbeat", b"cilium/.heartbeau", "read"),
        (b"cilium/state/", b"cilium/state0", "read"),
        (b"cilium/cluster-config/c1", b"", "read"),
        (b"cilium/synced/c1/", b"cilium/synced/c10", "read"),
    ]),
}


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(params=["3.4", "3.5"])
def server(request: pytest.FixtureRequest, etcd_factory: EtcdFactory, pki: Pki) -> EtcdServer:
    """A fresh TLS etcd with ``--client-cert-auth``, once per etcd minor version."""
    try:
        binary = find_etcd_binary(request.param)
    except EtcdNotFound as exc:
        pytest.skip(f"etcd {request.param} not available: {exc}")
    return etcd_factory(name=f"etcd-{request.param}", tls=pki.server, client_cert_auth=True,
                        binary=binary)


@pytest.fixture
def etcd_tls_default(etcd_factory: EtcdFactory, pki: Pki) -> EtcdServer:
    return etcd_factory(name="etcd-tls", tls=pki.server, client_cert_auth=True)


def config_for(server: EtcdServer, tmp_path: Path, cert: ClientCert | None) -> Path:
    name = cert.name if cert else "nocert"
    return server.client_config(tmp_path / f"{name}-{uuid.uuid4().hex[:8]}.yaml", client=cert)


@contextlib.asynccontextmanager
async def connect(server: EtcdServer, tmp_path: Path,
                  cert: ClientCert | None) -> AsyncIterator[EtcdClient]:
    client = EtcdClient(load_etcd_config(config_for(server, tmp_path, cert)),
                        name=cert.name if cert else "nocert", dial_timeout=3.0,
                        request_timeout=10.0, tls_reload_interval=0)
    try:
        await client.connect()
        yield client
    finally:
        await client.close()


async def dump(client: EtcdClient) -> Dump:
    users = {u: sorted(await auth.user_get(client, u)) for u in await auth.user_list(client)}
    roles = {
        r: sorted((p.key, p.range_end, p.perm) for p in await auth.role_get(client, r))
        for r in await auth.role_list(client)
    }
    return users, roles


def auth_on_per_etcdctl(server: EtcdServer, pki: Pki) -> bool:
    """Auth status as etcdctl sees it: with auth on, a certificate whose CN is not an etcd
    user (alice) is refused; with auth off, anyone with a valid certificate may read."""
    proc = server.etcdctl("get", "probe", cert=pki.client("alice"), check=False)
    return proc.returncode != 0


def auth_revision(server: EtcdServer) -> int | None:
    """etcd 3.5's auth revision (bumped by every auth change); None on 3.4 (no RPC)."""
    if not server.version.startswith("3.5"):
        return None
    out = server.etcdctl("auth", "status", "-w", "json").stdout
    return int(json.loads(out)["authRevision"])


# --------------------------------------------------------------------- desired state


def test_desired_auth_is_facts_4_4() -> None:
    users, roles = desired_auth(CLUSTER)
    assert users == {u: r[0] for u, r in EXPECTED_USERS.items()}
    as_etcd = {
        role: sorted((*g.etcd_range(), g.perm) for g in grants) for role, grants in roles.items()
    }
    assert as_etcd == EXPECTED_ROLES
    for role, grants in roles.items():
        assert all(g.role == role for g in grants)
    # The shape Cilium uses: heartbeat as a prefix without trailing slash, cluster config
    # of this cluster as one key, all keys for external workloads.
    assert Grant("remote", "cilium/.heartbeat", "read", True) in roles["remote"]
    assert Grant("remote", "cilium/cluster-config/c1", "read", False) in roles["remote"]
    assert Grant("externalworkload", ALL_KEYS, "read", True) in roles["externalworkload"]


def test_desired_auth_rejects_bad_names_and_grants() -> None:
    for bad in ("", "C1", "-x", "a" * 33):
        with pytest.raises(ValueError):
            desired_auth(bad)
    with pytest.raises(ValueError, match="permission"):
        Grant("r", "k", "admin", False)
    with pytest.raises(ValueError):
        Grant("r", "", "read", False)


def test_grant_description() -> None:
    assert Grant("r", ALL_KEYS, "read", True).describe() == "read on all keys"
    assert Grant("r", "a/", "readwrite", True).describe() == "readwrite on prefix a/"
    assert Grant("r", "a", "read", False).describe() == "read on key a"


def test_parse_duration() -> None:
    assert parse_duration("2m") == 120
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1.5h") == 5400
    assert parse_duration("0") == 0
    for bad in ("", "5", "1x", "-1s", "s", "1m 2s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# --------------------------------------------------------------------- initialisation


async def test_fresh_etcd_then_idempotent(server: EtcdServer, pki: Pki,
                                          tmp_path: Path) -> None:
    assert not auth_on_per_etcdctl(server, pki)
    async with connect(server, tmp_path, pki.client("root")) as client:
        assert not await auth.auth_status(client)
        reported: list[str] = []
        actions = await etcdinit(client, cluster_name=CLUSTER, on_action=reported.append)
        assert reported == actions
        assert actions[-1] == "enabled authentication"
        assert "added user admin-c1 (no password: it authenticates by client certificate)" \
            in actions
        assert "granted role remote read on key cilium/cluster-config/c1" in actions
        assert await auth.auth_status(client)
        before = await dump(client)
        assert before == (EXPECTED_USERS, EXPECTED_ROLES)
    assert auth_on_per_etcdctl(server, pki)
    revision = auth_revision(server)

    # Second run, on a new connection: nothing to do, nothing changed.
    async with connect(server, tmp_path, pki.client("root")) as client:
        assert await etcdinit(client, cluster_name=CLUSTER) == []
        assert await dump(client) == before
    assert auth_revision(server) == revision
    # etcdctl reads the same permissions back.
    out = server.etcdctl("role", "get", "remote").stdout
    assert "cilium/cluster-config/c1" in out and "cilium/state/" in out


async def test_partially_initialised_etcd_is_completed(server: EtcdServer, pki: Pki,
                                                       tmp_path: Path) -> None:
    # Left behind by an interrupted run (or by hand): auth still off.
    ctl = server.etcdctl
    ctl("user", "add", "root", "--no-password")
    ctl("user", "grant-role", "root", "root")  # etcd allows this without a "root" role
    ctl("role", "add", "remote")
    ctl("role", "grant-permission", "--prefix", "remote", "readwrite", "cilium/")  # too much
    ctl("role", "grant-permission", "--prefix", "remote", "read", "cilium/state/")
    ctl("user", "add", "remote", "--no-password")
    ctl("user", "grant-role", "remote", "remote")
    ctl("user", "add", "local-c1", "--no-password")  # no role yet
    ctl("role", "add", "local")
    ctl("role", "grant-permission", "--prefix", "local", "readwrite", "cilium/cache/")

    async with connect(server, tmp_path, pki.client("root")) as client:
        actions = await etcdinit(client, cluster_name=CLUSTER)
        assert "added role root" in actions
        assert ("recreated role remote to drop permissions it must not have "
                "(readwrite on prefix cilium/)") in actions
        assert "granted role remote to user remote" in actions  # re-granted after recreate
        assert "granted role local read on prefix cilium/cache/" in actions  # type fixed
        assert "granted role local to user local-c1" in actions
        assert not any(a.startswith(("added user remote", "added user root",
                                     "added user local-c1")) for a in actions)
        assert actions[-1] == "enabled authentication"
        assert await dump(client) == (EXPECTED_USERS, EXPECTED_ROLES)
        assert await etcdinit(client, cluster_name=CLUSTER) == []
    assert auth_on_per_etcdctl(server, pki)


async def test_etcd_initialised_by_cilium_is_accepted(server: EtcdServer, pki: Pki,
                                                      tmp_path: Path) -> None:
    """The calls of Cilium's ClusterMeshEtcdInit, in its order and with its exact ranges
    (no "root" role: etcd grants it by name), then auth on: only the root role is added."""
    async with connect(server, tmp_path, pki.client("root")) as client:
        for user, role in [("root", "root"), ("admin-c1", "root")]:
            await auth.user_add(client, user)
            await auth.user_grant_role(client, user, role)
        for user, role in [("externalworkload", "externalworkload"), ("local-c1", "local"),
                           ("remote", "remote")]:
            await auth.user_add(client, user)
            await auth.role_add(client, role)
            await auth.user_grant_role(client, user, role)
            for key, end, perm in EXPECTED_ROLES[role]:
                await auth.role_grant_permission(client, role, key=key, range_end=end, perm=perm)
        await auth.auth_enable(client)
        assert await auth.auth_status(client)
        assert await etcdinit(client, cluster_name=CLUSTER) == ["added role root"]
        assert await dump(client) == (EXPECTED_USERS, EXPECTED_ROLES)
        assert await etcdinit(client, cluster_name=CLUSTER) == []


async def test_auth_already_enabled_is_corrected_and_extra_users(
        etcd_tls_default: EtcdServer, pki: Pki, tmp_path: Path) -> None:
    server = etcd_tls_default
    async with connect(server, tmp_path, pki.client("root")) as client:
        await etcdinit(client, cluster_name=CLUSTER)

    # Damage it while auth is on (the harness's etcdctl uses the root certificate).
    server.etcdctl("role", "grant-permission", "--prefix", "remote", "readwrite", "cilium/")
    server.etcdctl("role", "revoke-permission", "--prefix", "local", "cilium/cache/")
    server.etcdctl("user", "delete", "local-c1")

    extra = {"cluster2": "remote", "remote": "remote"}
    async with connect(server, tmp_path, pki.client("root")) as client:
        assert await auth.auth_status(client)
        actions = await etcdinit(client, cluster_name=CLUSTER, extra_users=extra)
        assert "enabled authentication" not in actions
        assert any(a.startswith("recreated role remote") for a in actions)
        assert "granted role local read on prefix cilium/cache/" in actions
        assert any(a.startswith("added user local-c1") for a in actions)
        assert any(a.startswith("added user cluster2") for a in actions)
        users, roles = await dump(client)
        assert users == {**EXPECTED_USERS, "cluster2": ["remote"]}
        assert roles == EXPECTED_ROLES

        # The role is recreated again: both holders get it back.
        server.etcdctl("role", "grant-permission", "remote", "write", "other")
        actions = await etcdinit(client, cluster_name=CLUSTER, extra_users=extra)
        assert actions[0] == ("recreated role remote to drop permissions it must not have "
                              "(write on key other)")
        assert set(actions[-2:]) == {"granted role remote to user remote",
                                     "granted role remote to user cluster2"}
        assert await dump(client) == (users, roles)
        assert await etcdinit(client, cluster_name=CLUSTER, extra_users=extra) == []

    # The extra user reads like the remote user.
    server.etcdctl("put", "cilium/state/nodes/v1/c1/n1", "x")
    async with connect(server, tmp_path, pki.issue_client("cluster2")) as client:
        assert (await client.get(b"cilium/state/nodes/v1/c1/n1")).value == b"x"
        with pytest.raises(EtcdPermissionDenied):
            await client.put(b"cilium/state/nodes/v1/c1/n1", b"y")


async def test_extra_users_are_validated(etcd_tls_default: EtcdServer, pki: Pki,
                                         tmp_path: Path) -> None:
    async with connect(etcd_tls_default, tmp_path, pki.client("root")) as client:
        with pytest.raises(ValueError, match="unknown role"):
            await etcdinit(client, cluster_name=CLUSTER, extra_users={"c2": "superuser"})
        with pytest.raises(ValueError, match="built-in user"):
            await etcdinit(client, cluster_name=CLUSTER, extra_users={"remote": "root"})
        with pytest.raises(ValueError, match="non-empty"):
            await etcdinit(client, cluster_name=CLUSTER, extra_users={"": "remote"})
        assert await auth.user_list(client) == []  # validated before anything is written


async def test_non_root_client_cannot_initialise(etcd_tls_default: EtcdServer, pki: Pki,
                                                 tmp_path: Path) -> None:
    server = etcd_tls_default
    async with connect(server, tmp_path, pki.client("root")) as client:
        await etcdinit(client, cluster_name=CLUSTER)
    async with connect(server, tmp_path, pki.client("remote")) as client:
        with pytest.raises(EtcdPermissionDenied, match="root role"):
            await etcdinit(client, cluster_name=CLUSTER)
    # admin-<cluster> holds the root role: it may run etcdinit (nothing to do).
    async with connect(server, tmp_path, pki.client("admin-c1")) as client:
        assert await etcdinit(client, cluster_name=CLUSTER) == []


# -------------------------------------------------------------------- who may do what

KEYS = {
    "state": b"cilium/state/nodes/v1/c1/n1",
    "state-other": b"cilium/state/services/v1/c2/default/echo",
    "noderegister": b"cilium/state/noderegister/v1/vm1",
    "noderegister-noslash": b"cilium/state/noderegister/v1x",
    "cache": b"cilium/cache/nodes/v1/c2/n1",
    "config": b"cilium/cluster-config/c1",
    "config-other": b"cilium/cluster-config/c2",
    "config-longer": b"cilium/cluster-config/c10",
    "synced": b"cilium/synced/c1/cilium/state/nodes/v1",
    "synced-other": b"cilium/synced/c2/cilium/cache/nodes/v1",
    "synced-longer": b"cilium/synced/c10/cilium/state/nodes/v1",
    "heartbeat": b"cilium/.heartbeat",
    "heartbeat-suffix": b"cilium/.heartbeat-x",  # a prefix without slash (as Cilium)
    "initlock": b"cilium/.initlock/abcd",
    "outside": b"other/key",
}
READABLE = {
    "remote": {"state", "state-other", "noderegister", "noderegister-noslash", "config",
               "synced", "heartbeat", "heartbeat-suffix"},
    "local-c1": {"cache", "config", "config-other", "config-longer", "synced",
                 "synced-other", "synced-longer", "heartbeat", "heartbeat-suffix"},
    "admin-c1": set(KEYS),
    "root": set(KEYS),
    "externalworkload": set(KEYS),
}
WRITABLE = {
    "remote": set(),
    "local-c1": set(),
    "admin-c1": set(KEYS),
    "root": set(KEYS),
    "externalworkload": {"noderegister", "initlock"},
}
# Prefix listings (what the agents and KVStoreMesh actually issue) per user.
LISTABLE = {
    "remote": {b"cilium/state/": True, b"cilium/synced/c1/": True, b"cilium/synced/": False,
               b"cilium/cluster-config/": False, b"cilium/cache/": False, b"cilium/": False},
    "local-c1": {b"cilium/cache/": True, b"cilium/cluster-config/": True,
                 b"cilium/synced/": True, b"cilium/state/": False, b"cilium/": False},
    "externalworkload": {b"cilium/": True, b"other/": True},
}


def certificate(pki: Pki, user: str) -> ClientCert:
    return pki.clients[user] if user in pki.clients else pki.issue_client(user)


async def test_permissions_by_client_certificate(server: EtcdServer, pki: Pki,
                                                 tmp_path: Path) -> None:
    async with connect(server, tmp_path, pki.client("root")) as client:
        await etcdinit(client, cluster_name=CLUSTER)
    async with connect(server, tmp_path, pki.client("admin-c1")) as admin:
        for name, key in KEYS.items():
            await admin.put(key, name.encode())

    failures: list[str] = []
    for user in READABLE:
        async with connect(server, tmp_path, certificate(pki, user)) as client:
            for name, key in KEYS.items():
                try:
                    kv = await client.get(key)
                    assert kv is not None and kv.value == name.encode()
                    readable = True
                except EtcdPermissionDenied:
                    readable = False
                if readable != (name in READABLE[user]):
                    failures.append(f"{user} read {name}: {readable}")
                try:
                    await client.put(key, name.encode())  # same value: harmless if allowed
                    writable = True
                except EtcdPermissionDenied:
                    writable = False
                if writable != (name in WRITABLE[user]):
                    failures.append(f"{user} write {name}: {writable}")
            for prefix, allowed in LISTABLE.get(user, {}).items():
                try:
                    await client.list_prefix(prefix)
                    listed = True
                except EtcdPermissionDenied:
                    listed = False
                if listed != allowed:
                    failures.append(f"{user} list {prefix!r}: {listed}")
            if user not in ("root", "admin-c1"):
                with pytest.raises(EtcdPermissionDenied):
                    await client.delete(b"cilium/", prefix=True)
                with pytest.raises(EtcdPermissionDenied):
                    await auth.user_list(client)
    assert failures == []

    # A certificate whose CN is no etcd user may do nothing.
    async with connect(server, tmp_path, pki.client("alice")) as client:
        with pytest.raises(EtcdError):
            await client.get(KEYS["heartbeat"])
    # A client without a certificate does not get past the TLS handshake.
    client = EtcdClient(load_etcd_config(config_for(server, tmp_path, None)), name="nocert",
                        dial_timeout=3.0, tls_reload_interval=0)
    with pytest.raises(EtcdUnavailable):
        await client.connect()
        await client.get(KEYS["heartbeat"])
    await client.close()


# ------------------------------------------------------------------------------ CLI


CLI_CODE = "import sys; from apiserver.etcdinit import main; sys.exit(main(sys.argv[1:]))"
#: Without the CILIUM_* variables of whoever runs the tests: etcdinit reads them as flags.
CLI_ENV = {k: v for k, v in os.environ.items() if not k.startswith("CILIUM_")}


def read_until(proc: subprocess.Popen[str], marker: str, *, timeout: float) -> str:
    """The stderr of ``proc`` up to and including the line with ``marker`` (read from the
    pipe's descriptor, so ``communicate()`` still gets the rest); fails at EOF or after
    ``timeout`` seconds without it."""
    assert proc.stderr is not None
    fd, seen = proc.stderr.fileno(), b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in seen or not seen.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
        chunk = os.read(fd, 65536) if ready else b""
        assert chunk, f"no {marker!r} on stderr (exit status {proc.poll()}): {seen!r}"
        seen += chunk
    return seen.decode()


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLI_CODE, *args], cwd=REPO, env=CLI_ENV,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def test_cli_initialises_and_is_idempotent(etcd_tls_default: EtcdServer, pki: Pki,
                                           tmp_path: Path) -> None:
    server = etcd_tls_default
    config = config_for(server, tmp_path, pki.client("root"))
    users_file = tmp_path / "users.yaml"
    users_file.write_text("users:\n- name: c1\n  role: remote\n- name: cluster2\n  role: remote\n")
    args = ["etcdinit", "--cluster-name", CLUSTER, "--kvstore-opt", f"etcd.config={config}",
            "--timeout", "30s", "--cluster-users-config-path", str(users_file)]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "added user remote (no password: it authenticates by client certificate)" in lines
    assert "granted role remote to user cluster2" in lines
    assert "enabled authentication" in lines
    assert lines[-1].startswith("etcd initialised for cluster c1")
    assert auth_on_per_etcdctl(server, pki)
    users = server.etcdctl("user", "list").stdout.split()
    assert "cluster2" in users and "c1" not in users  # own cluster skipped, as Cilium

    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "etcd already initialised for cluster c1: nothing to do"


def test_cli_waits_for_etcd_starting_in_parallel(etcd_factory: EtcdFactory, pki: Pki,
                                                 tmp_path: Path) -> None:
    server = etcd_factory(name="late", tls=pki.server, client_cert_auth=True, start=False)
    config = config_for(server, tmp_path, pki.client("root"))
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_CODE, "--cluster-name", CLUSTER, "--kvstore-opt",
         f"etcd.config={config}", "--timeout", "60s"],
        cwd=REPO, env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        # The sentinel: the CLI tried, failed and says it retries, i.e. it is waiting.
        seen = read_until(proc, "retrying", timeout=30)
        assert proc.poll() is None, proc.communicate()
        server.start()
        out, err = proc.communicate(timeout=60)
        err = seen + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "enabled authentication" in out.splitlines()
    assert "retrying" in err  # it did wait


def test_cli_unreachable_etcd_fails_clearly(pki: Pki, tmp_path: Path) -> None:
    port = free_port()  # nobody listens here
    root = pki.client("root")
    config = write_client_config(tmp_path / "closed.yaml",
                                 endpoints=[f"https://127.0.0.1:{port}"], ca_file=pki.ca_file,
                                 cert_file=root.cert_file, key_file=root.key_file)
    started = time.monotonic()
    proc = run_cli("--cluster-name", CLUSTER, "--kvstore-opt", f"etcd.config={config}",
                   "--timeout", "1s")
    assert time.monotonic() - started < 20
    assert proc.returncode == 255
    assert proc.stdout == ""
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("clustermesh-apiserver etcdinit: error: gave up after 1s "
                              "(--timeout): could not reach etcd")
    assert f"127.0.0.1:{port}" in message


def test_cli_missing_config_file_fails_clearly(tmp_path: Path) -> None:
    proc = run_cli("--cluster-name", CLUSTER, "--kvstore-opt",
                   f"etcd.config={tmp_path / 'absent.yaml'}", "--timeout", "1s")
    assert proc.returncode == 255
    assert "the etcd configuration is incomplete" in proc.stderr
    assert "absent.yaml" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--cluster-name", "Bad_Name", "--kvstore-opt", "etcd.config=x"],
     'invalid argument "Bad_Name" for "--cluster-name" flag'),
    (["--cluster-name", "c1", "--kvstore-opt", "etcd.qps=3"], "only etcd.config=FILE"),
    (["--cluster-name", "c1", "--kvstore-opt", "etcd.config=x", "--timeout", "5"],
     "invalid duration"),
    (["--cluster-name", "c1", "--kvstore-opt", "nonsense"], "key=value"),
    (["--kvstore-opt", "etcd.config=x", "--log-level", "loud"], "must be one of"),
])
def test_cli_usage_errors(args: list[str], message: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    # Cobra's way: "Error: ..." and the usage on stderr, exit 1 (a failed run is 255).
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and message in err.splitlines()[0]
    assert "Usage:" in err


def test_cli_rejects_bad_users_file(etcd_tls_default: EtcdServer, pki: Pki,
                                    tmp_path: Path) -> None:
    config = config_for(etcd_tls_default, tmp_path, pki.client("root"))
    users_file = tmp_path / "users.yaml"
    users_file.write_text("users:\n- name: c2\n  role: superuser\n")
    proc = run_cli("--cluster-name", CLUSTER, "--kvstore-opt", f"etcd.config={config}",
                   "--cluster-users-config-path", str(users_file), "--timeout", "10s")
    assert proc.returncode == 255
    assert "unknown role 'superuser'" in proc.stderr
    users: Any = etcd_tls_default.etcdctl("user", "list").stdout.split()
    assert users == []
