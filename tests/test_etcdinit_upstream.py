"""``clustermesh-apiserver etcdinit`` in upstream mode (Cilium's chart's ``etcd-init``).

The real command runs as a subprocess against a temporary data directory full of junk.
Its private etcd binds the fixed ports ``localhost:2379``/``2380`` exactly as upstream's,
so every run happens inside a private network namespace (:class:`NetNs`: ``unshare -n``,
then ``nsenter`` for each command), where nothing else listens and parallel tests cannot
collide; without root the tests that need one are skipped, saying why.

The data directory is then served the way the chart's ``etcd`` container serves it: the
same ``--name``, ``--initial-cluster-token`` and ``--data-dir``, with TLS and
``--client-cert-auth``, in the same namespace.  What it holds is read back with
``etcdctl`` (not our client) and compared with the users and roles of
``cilium-dropin-facts.md`` §3, written out below by hand.

Fake etcd binaries (small shell scripts, via ``$CLUSTERMESH_ETCD_BIN``) cover the
failure paths: one that exits at once, one that hangs and ignores SIGTERM.  They record
their pid, so the tests check by pid that no etcd is left behind.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import EtcdNotFound, Pki, etcdctl_for, find_etcd_binary

from apiserver.etcdinit import main

COMMAND = [str(Path(sys.executable).with_name("clustermesh-apiserver")), "etcdinit"]
TOKEN = f"token-{uuid.uuid4().hex[:8]}"
MEMBER = "cm-test-member"

# Facts §3, by hand: users → roles, and each role's (key, range_end, permission).
PERM_NAMES = {0: "READ", 1: "WRITE", 2: "READWRITE"}  # etcd's authpb.Permission.Type


def expected_users(cluster: str) -> dict[str, list[str]]:
    return {"root": ["root"], f"admin-{cluster}": ["root"],
            "externalworkload": ["externalworkload"], f"local-{cluster}": ["local"],
            "remote": ["remote"]}


def expected_roles(cluster: str) -> dict[str, set[tuple[bytes, bytes, str]]]:
    return {
        # Ours only: the root role exists (etcdctl's procedure), with no permissions.
        "root": set(),
        "externalworkload": {
            (b"\x00", b"\x00", "READ"),
            (b"cilium/state/noderegister/v1/", b"cilium/state/noderegister/v10", "READWRITE"),
            (b"cilium/.initlock/", b"cilium/.initlock0", "READWRITE"),
        },
        "local": {
            (b"cilium/.heartbeat", b"cilium/.heartbeau", "READ"),
            (b"cilium/cache/", b"cilium/cache0", "READ"),
            (b"cilium/cluster-config/", b"cilium/cluster-config0", "READ"),
            (b"cilium/synced/", b"cilium/synced0", "READ"),
        },
        "remote": {
            (b"cilium/.heartbeat", b"cilium/.heartbeau", "READ"),
            (b"cilium/state/", b"cilium/state0", "READ"),
            (f"cilium/cluster-config/{cluster}".encode(), b"", "READ"),
            (f"cilium/synced/{cluster}/".encode(), f"cilium/synced/{cluster}0".encode(),
             "READ"),
        },
    }


# ------------------------------------------------------------------ network namespace


class NetNs:
    """A private network namespace with ``lo`` up, kept alive by a ``cat`` on our pipe
    (so it also goes away if pytest dies)."""

    def __init__(self) -> None:
        self._holder = subprocess.Popen(
            ["unshare", "-n", "--", "sh", "-c", "ip link set lo up && echo ready && exec cat"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._holder.stdout is not None
        if self._holder.stdout.readline() != b"ready\n":
            _, err = self._holder.communicate(timeout=10)
            raise OSError(err.decode(errors="replace").strip() or "unshare -n failed")

    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/proc/{self._holder.pid}/ns/net", "--", *argv]

    def run(self, argv: list[str], *, env: dict[str, str] | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), env=env, capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    def popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(argv), text=True, stdin=subprocess.DEVNULL,
                                **kwargs)  # type: ignore[call-overload]

    def close(self) -> None:
        self._holder.kill()
        self._holder.communicate()


@pytest.fixture
def netns() -> Iterator[NetNs]:
    if os.geteuid() != 0:
        pytest.skip("needs root: etcdinit's etcd binds the fixed ports 2379/2380, so the "
                    "test runs it in a private network namespace (unshare -n)")
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} for a private network namespace")
    try:
        ns = NetNs()
    except OSError as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture(autouse=True)
def no_cilium_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ambient CILIUM_* variables would be read as flags."""
    for name in list(os.environ):
        if name.startswith("CILIUM_"):
            monkeypatch.delenv(name)


def command_env(etcd: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CILIUM_")}
    return {**env, "CLUSTERMESH_ETCD_BIN": str(etcd), **extra}


def junk_dir(tmp_path: Path) -> Path:
    """A data directory as a previous pod run might leave it, plus links pointing out."""
    data = tmp_path / "etcd-data"
    (data / "member" / "wal").mkdir(parents=True)
    (data / "member" / "wal" / "0.wal").write_bytes(b"not a wal")
    (data / "junk.txt").write_text("junk")
    (data / ".hidden").write_text("junk")
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / "keep").write_text("keep")
    (outside / "file").write_text("keep")
    (data / "filelink").symlink_to(outside / "file")
    (data / "dirlink").symlink_to(outside / "dir")
    return data


def fake_etcd(tmp_path: Path, body: str) -> tuple[Path, Path]:
    """A shell script standing in for etcd; it writes its pid to the returned file."""
    pid_file = tmp_path / "fake-etcd.pid"
    script = tmp_path / "fake-etcd"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\n{body}\n")
    script.chmod(0o755)
    return script, pid_file


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count: some PID 1s never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@pytest.fixture(params=["3.4", "3.5"])
def etcd_binary(request: pytest.FixtureRequest) -> Path:
    try:
        return find_etcd_binary(request.param)
    except EtcdNotFound as exc:
        pytest.skip(f"etcd {request.param} not available: {exc}")


# ------------------------------------------------------------- serving the result


Ctl = Callable[..., subprocess.CompletedProcess[str]]


@contextmanager
def served(netns: NetNs, pki: Pki, etcd: Path, data_dir: Path, tmp_path: Path) -> Iterator[Ctl]:
    """The data dir served as the chart's etcd container does; yields ``ctl(*args,
    cert=CN)`` (etcdctl over TLS as the user of that client certificate)."""
    log = (tmp_path / "served-etcd.log").open("w")
    proc = netns.popen([
        str(etcd), f"--data-dir={data_dir}", f"--name={MEMBER}",
        f"--initial-cluster-token={TOKEN}", "--client-cert-auth",
        f"--trusted-ca-file={pki.ca_file}", f"--cert-file={pki.server.cert_file}",
        f"--key-file={pki.server.key_file}", "--listen-client-urls=https://localhost:2379",
        "--advertise-client-urls=https://localhost:2379"], stdout=log, stderr=log)
    etcdctl = etcdctl_for(etcd)

    def ctl(*args: str, cert: str = "root") -> subprocess.CompletedProcess[str]:
        client = pki.client(cert)
        return netns.run([str(etcdctl), "--endpoints=https://localhost:2379",
                          f"--cacert={pki.ca_file}", f"--cert={client.cert_file}",
                          f"--key={client.key_file}", "--dial-timeout=2s", *args],
                         env={**os.environ, "ETCDCTL_API": "3"})

    try:
        deadline = time.monotonic() + 30
        while ctl("endpoint", "health").returncode != 0:
            assert proc.poll() is None, (tmp_path / "served-etcd.log").read_text()
            assert time.monotonic() < deadline, "the initialised data dir is not served"
            time.sleep(0.1)
        yield ctl
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def ctl_json(ctl: Ctl, *args: str) -> Any:
    proc = ctl(*args, "-w", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def dump_auth(ctl: Ctl) -> tuple[dict[str, list[str]], dict[str, set[tuple[bytes, bytes, str]]]]:
    # JSON as etcdctl prints protobufs: empty lists and zero values (READ) are left out.
    users = {u: sorted(ctl_json(ctl, "user", "get", u).get("roles", []))
             for u in ctl_json(ctl, "user", "list").get("users", [])}
    roles = {}
    for role in ctl_json(ctl, "role", "list").get("roles", []):
        perms = ctl_json(ctl, "role", "get", role).get("perm", [])
        roles[role] = {(base64.b64decode(p["key"]), base64.b64decode(p.get("range_end", "")),
                        PERM_NAMES[p.get("permType", 0)]) for p in perms}
    return users, roles


def cluster_id(ctl: Ctl) -> int:
    out = ctl("endpoint", "status", "-w", "json")
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)[0]["Status"]["header"]["cluster_id"])


# ----------------------------------------------------------------------- the real thing


def test_initialises_a_data_dir_the_etcd_container_serves(
        netns: NetNs, pki: Pki, etcd_binary: Path, tmp_path: Path) -> None:
    data = junk_dir(tmp_path)
    inode = data.stat().st_ino
    proc = netns.run([*COMMAND, f"--etcd-data-dir={data}", f"--etcd-cluster-name={MEMBER}",
                      f"--etcd-initial-cluster-token={TOKEN}", "--timeout=60s"],
                     env=command_env(etcd_binary, CILIUM_CLUSTER_NAME="c1"))
    assert proc.returncode == 0, proc.stderr
    # The contents went, the directory (a volume mount in the pod) stayed; links were
    # removed, not followed.
    assert data.stat().st_ino == inode
    assert sorted(p.name for p in data.iterdir()) == ["member"]
    assert (tmp_path / "outside" / "file").read_text() == "keep"
    assert (tmp_path / "outside" / "dir" / "keep").read_text() == "keep"
    # Upstream's exact etcd command line, and what was done, are in the log.
    assert (f"{etcd_binary} --data-dir={data} --name={MEMBER} "
            "--listen-client-urls=http://localhost:2379 "
            "--advertise-client-urls=http://localhost:2379 "
            f"--initial-cluster-token={TOKEN} --initial-cluster-state=new") in proc.stderr
    assert "etcd: enabled authentication" in proc.stderr

    with served(netns, pki, etcd_binary, data, tmp_path) as ctl:
        assert dump_auth(ctl) == (expected_users("c1"), expected_roles("c1"))
        members = ctl_json(ctl, "member", "list")["members"]
        assert [m["name"] for m in members] == [MEMBER]
        served_id = cluster_id(ctl)
        # Auth is on and the users authenticate by certificate CN, without password.
        assert ctl("put", "cilium/state/nodes/v1/c1/n1", "x", cert="admin-c1").returncode == 0
        assert ctl("get", "cilium/state/nodes/v1/c1/n1", cert="remote").stdout.split() \
            == ["cilium/state/nodes/v1/c1/n1", "x"]
        denied = ctl("get", "cilium/state/nodes/v1/c1/n1", cert="local-c1")
        assert denied.returncode != 0 and "permission denied" in denied.stderr
        assert ctl("put", "cilium/state/x", "y", cert="remote").returncode != 0
        assert ctl("get", "any", cert="alice").returncode != 0  # no such etcd user

    # The cluster ID derives from the member's peer URL and --initial-cluster-token: a
    # fresh etcd with the same name, token and default peer URL gets the same one.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    log = (tmp_path / "scratch.log").open("w")
    fresh = netns.popen([str(etcd_binary), f"--data-dir={scratch}", f"--name={MEMBER}",
                         f"--initial-cluster-token={TOKEN}"], stdout=log, stderr=log)
    plain = [str(etcdctl_for(etcd_binary)), "--endpoints=http://localhost:2379"]
    try:
        deadline = time.monotonic() + 30
        while (status := netns.run([*plain, "endpoint", "status", "-w", "json"])).returncode:
            assert time.monotonic() < deadline, status.stderr
            time.sleep(0.1)
        assert int(json.loads(status.stdout)[0]["Status"]["header"]["cluster_id"]) \
            == served_id
    finally:
        fresh.terminate()
        fresh.wait(timeout=30)
        log.close()


def test_cluster_name_flag_beats_the_environment(netns: NetNs, pki: Pki,
                                                 tmp_path: Path) -> None:
    etcd = find_etcd_binary()
    data = junk_dir(tmp_path)
    proc = netns.run([*COMMAND, f"--etcd-data-dir={data}", "--cluster-name=c1",
                      f"--etcd-cluster-name={MEMBER}", f"--etcd-initial-cluster-token={TOKEN}"],
                     env=command_env(etcd, CILIUM_CLUSTER_NAME="fromenv"))
    assert proc.returncode == 0, proc.stderr
    with served(netns, pki, etcd, data, tmp_path) as ctl:
        users, roles = dump_auth(ctl)
    assert users == expected_users("c1")
    assert roles["remote"] == expected_roles("c1")["remote"]


# ------------------------------------------------------------------------------ failures


def test_missing_data_dir_fails_naming_it(netns: NetNs, tmp_path: Path) -> None:
    script, pid_file = fake_etcd(tmp_path, "exit 99")
    missing = tmp_path / "no-such-dir"
    proc = netns.run([*COMMAND, f"--etcd-data-dir={missing}"], env=command_env(script))
    assert proc.returncode == 255
    assert f"--etcd-data-dir {missing}: the directory does not exist" in proc.stderr
    assert not pid_file.exists()  # etcd was never started
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    proc = netns.run([*COMMAND, f"--etcd-data-dir={a_file}"], env=command_env(script))
    assert proc.returncode == 255
    assert f"--etcd-data-dir {a_file}: not a directory" in proc.stderr


def test_unreadable_data_dir_fails_naming_it(netns: NetNs, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run etcdinit as the chart's uid 65532")
    data = junk_dir(tmp_path)
    data.chmod(0o700)  # root's; the pod's user is 65532, as in Cilium's chart
    as_65532 = ["setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", "--", *COMMAND]
    # The real etcd (a fake one under tmp_path would be out of 65532's reach too).
    proc = netns.run([*as_65532, f"--etcd-data-dir={data}"],
                     env=command_env(find_etcd_binary()))
    assert proc.returncode == 255
    assert f"--etcd-data-dir {data}: cannot read the directory: Permission denied" \
        in proc.stderr
    assert (data / "junk.txt").exists()
    assert "Starting etcd" not in proc.stderr
    # And an etcd binary it cannot reach is an error naming it, not a traceback.
    script, _ = fake_etcd(tmp_path, "exit 99")
    proc = netns.run([*as_65532, f"--etcd-data-dir={data}"], env=command_env(script))
    assert proc.returncode == 255
    assert proc.stderr.startswith("clustermesh-apiserver etcdinit: error: cannot start etcd: "
                                  "$CLUSTERMESH_ETCD_BIN: [Errno 13] Permission denied")


def test_etcd_exiting_at_once_fails_with_its_status(netns: NetNs, tmp_path: Path) -> None:
    script, _ = fake_etcd(tmp_path, "echo 'fake etcd: cannot start' >&2\nexit 3")
    data = junk_dir(tmp_path)
    proc = netns.run([*COMMAND, f"--etcd-data-dir={data}"], env=command_env(script))
    assert proc.returncode == 255
    assert "fake etcd: cannot start" in proc.stderr  # etcd's own output is not swallowed
    assert f"etcd ({script}) exited with status 3 before it answered" in proc.stderr


def test_hanging_etcd_times_out_and_is_killed(netns: NetNs, tmp_path: Path) -> None:
    # Ignores SIGTERM: only the SIGKILL etcdinit sends on timeout stops it.
    script, pid_file = fake_etcd(tmp_path, "trap '' TERM\nexec sleep 300")
    data = junk_dir(tmp_path)
    started = time.monotonic()
    proc = netns.run([*COMMAND, f"--etcd-data-dir={data}", "--timeout=1500ms"],
                     env=command_env(script))
    assert time.monotonic() - started < 30
    assert proc.returncode == 255
    pid = int(pid_file.read_text())
    assert (f"timed out after 1.5s while waiting for etcd (pid {pid}) to answer on "
            "http://localhost:2379") in proc.stderr
    assert "--timeout (or CILIUM_TIMEOUT)" in proc.stderr
    assert not alive(pid)


def test_tiny_timeout_from_the_environment(netns: NetNs, tmp_path: Path) -> None:
    script, pid_file = fake_etcd(tmp_path, "trap '' TERM\nexec sleep 300")
    data = junk_dir(tmp_path)
    proc = netns.run([*COMMAND, f"--etcd-data-dir={data}"],
                     env=command_env(script, CILIUM_TIMEOUT="1ms"))
    assert proc.returncode == 255
    assert "timed out after 1ms while" in proc.stderr
    assert "CILIUM_TIMEOUT" in proc.stderr
    # Usually nothing was started; if it was, it is gone.
    if pid_file.exists():
        assert not alive(int(pid_file.read_text()))


def test_killed_etcdinit_takes_its_etcd_along(netns: NetNs, tmp_path: Path) -> None:
    script, pid_file = fake_etcd(tmp_path, "trap '' TERM\nexec sleep 300")
    data = junk_dir(tmp_path)
    # nsenter execs the command: the pid is etcdinit's own.
    proc = netns.popen([*COMMAND, f"--etcd-data-dir={data}", "--timeout=5m"],
                       env=command_env(script), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert alive(child)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(child):
            assert time.monotonic() < deadline, f"etcd child {child} outlived etcdinit"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_taken_port_is_refused_before_anything_is_touched(netns: NetNs,
                                                          tmp_path: Path) -> None:
    script, pid_file = fake_etcd(tmp_path, "exit 99")
    listener = netns.popen(
        [sys.executable, "-c", "import socket, time; s = socket.create_server(('127.0.0.1', "
         "2379)); print('ready', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE)
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
        data = junk_dir(tmp_path)
        proc = netns.run([*COMMAND, f"--etcd-data-dir={data}"], env=command_env(script))
    finally:
        listener.kill()
        listener.wait()
    assert proc.returncode == 255
    assert "localhost port 2379 (127.0.0.1) is taken" in proc.stderr
    assert (data / "junk.txt").exists()
    assert not pid_file.exists()


# ---------------------------------------------------------------- command line (no etcd)


@pytest.fixture
def refusing_etcd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An etcd that fails at once: should a check below be broken, nothing real starts."""
    script, pid_file = fake_etcd(tmp_path, "exit 99")
    monkeypatch.setenv("CLUSTERMESH_ETCD_BIN", str(script))
    return pid_file


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--kvstore-opt", "etcd.config=/nowhere.yaml", "--etcd-data-dir", "{data}"], {},
     ["--kvstore-opt", "--etcd-data-dir"]),
    (["--kvstore-opt=etcd.config=/nowhere.yaml"], {"CILIUM_ETCD_DATA_DIR": "{data}"},
     ["--kvstore-opt", "CILIUM_ETCD_DATA_DIR"]),
    (["--etcd-data-dir={data}", "--etcd-cluster-name=x"],
     {"CILIUM_KVSTORE_OPT": "etcd.config=/nowhere.yaml"},
     ["CILIUM_KVSTORE_OPT", "--etcd-data-dir", "--etcd-cluster-name"]),
])
def test_both_modes_at_once_is_refused_before_anything_is_touched(
        args: list[str], env: dict[str, str], named: list[str], refusing_etcd: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    data = junk_dir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(data=data))
    assert main([a.format(data=data) for a in args]) == 1
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("Error: ") and "cannot be combined" in first
    assert all(n in first for n in named), first
    assert "Usage:" in err
    assert (data / "junk.txt").read_text() == "junk"
    assert not refusing_etcd.exists()


def test_unknown_flag_and_abbreviations_are_refused(refusing_etcd: Path,
                                                    tmp_path: Path) -> None:
    data = junk_dir(tmp_path)
    for flag in ("--no-such-flag", "--etcd-data"):  # no prefix matching, as pflag
        proc = subprocess.run([*COMMAND, f"{flag}={data}"], capture_output=True, text=True,
                              timeout=60, check=False, stdin=subprocess.DEVNULL)
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"Error: unknown flag: {flag}\nUsage:\n")
    assert (data / "junk.txt").exists()
    assert not refusing_etcd.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--etcd-data-dir="], "--etcd-data-dir must not be empty"),
    (["--etcd-initial-cluster-token="], "--etcd-initial-cluster-token must not be empty"),
    (["--etcd-data-dir=/"], "refusing to empty the root directory"),
    (["--cluster-name=Bad_Name"], 'invalid argument "Bad_Name" for "--cluster-name" flag'),
    (["--timeout=soon"], 'invalid argument "soon" for "--timeout" flag'),
    (["--kvstore-opt=etcd.qps=5"], "understands only etcd.config=FILE"),
])
def test_bad_values_are_refused(args: list[str], message: str, refusing_etcd: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and message in err.splitlines()[0]
    assert not refusing_etcd.exists()


def test_bad_cluster_name_from_the_environment_names_the_variable(
        refusing_etcd: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CILIUM_CLUSTER_NAME", "Bad_Name")
    assert main([]) == 1
    assert "(from CILIUM_CLUSTER_NAME)" in capsys.readouterr().err


def test_help_lists_upstreams_flags_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("      --")}
    for flag, default in [("--etcd-data-dir", '(default "/var/run/etcd")'),
                          ("--etcd-initial-cluster-token", '(default "clustermesh-apiserver")'),
                          ("--etcd-cluster-name", '(default "clustermesh-apiserver")'),
                          ("--cluster-name", '(default "default")'),
                          ("--timeout", "(default 2m0s)"), ("--debug", "")]:
        assert flag in rows and rows[flag].endswith(default), out
