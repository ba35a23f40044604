"""Tests of the etcd test harness itself (tests/harness), using etcdctl only.

They prove the fixtures other tests build on: a server starts, survives kill/restart with
its data and URLs, a 3-member cluster elects a new leader when the leader dies, TLS with
``--client-cert-auth`` refuses clients without (or with a wrongly signed) certificate,
auth refuses wrong passwords while the harness keeps working as root, and no signal ever
reaches a process the harness already reaped (whose pid may be someone else's).
"""

from __future__ import annotations

import datetime as dt
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from harness import (
    ETCD_BIN_ENV,
    EtcdCluster,
    EtcdFactory,
    EtcdNotFound,
    EtcdServer,
    EtcdStartError,
    Pki,
    binary_version,
    enable_auth,
    find_etcd_binary,
    find_etcdctl_binary,
    kill_all,
    make_other_ca,
    read_not_after,
)
from harness.procs import Child

# For calls that are expected to fail at the TLS/connection level: etcdctl keeps redialling
# until its command timeout (5 s by default), so cap it.
QUICK = ("--dial-timeout=300ms", "--command-timeout=500ms")


def test_find_binaries_and_versions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    etcd_bin = find_etcd_binary()
    assert binary_version(etcd_bin).startswith("3.")
    assert binary_version(find_etcdctl_binary()).startswith("3.")
    with pytest.raises(EtcdNotFound):
        find_etcd_binary("2.9")
    # The environment variable wins over PATH, and a bad value is an error, not a fallback.
    monkeypatch.setenv(ETCD_BIN_ENV, str(etcd_bin))
    assert find_etcd_binary() == etcd_bin
    monkeypatch.setenv(ETCD_BIN_ENV, str(tmp_path / "missing"))
    with pytest.raises(EtcdNotFound):
        find_etcd_binary()


def test_single_node_basics(etcd: EtcdServer) -> None:
    assert etcd.is_running
    assert etcd.client_url.startswith("http://127.0.0.1:")
    assert etcd.endpoints == [etcd.client_url]
    rev = etcd.revision()
    etcd.put("cilium/state/a", "-starts-with-dash")
    assert etcd.get("cilium/state/a") == "-starts-with-dash"
    assert etcd.get("missing") is None
    assert etcd.revision() == rev + 1
    assert etcd.cluster_id() > 0
    assert etcd.member_id() > 0
    # Compacting at the current revision works, and doing it twice is harmless.
    assert etcd.compact() == rev + 1
    etcd.compact(rev + 1)
    old = etcd.etcdctl("get", "cilium/state/a", f"--rev={rev}", check=False)
    assert old.returncode != 0 and "compacted" in old.stderr


def test_kill_and_restart_keep_data_and_urls(etcd: EtcdServer) -> None:
    etcd.put("k", "v1")
    url, cluster_id = etcd.client_url, etcd.cluster_id()
    pgid = os.getpgid(etcd.pid or 0)
    assert pgid == etcd.pid, "etcd must lead its own process group"
    assert pgid != os.getpgrp()

    etcd.kill()
    assert not etcd.is_running
    down = etcd.etcdctl("get", "k", *QUICK, check=False)
    assert down.returncode != 0

    etcd.start()
    assert etcd.client_url == url
    assert etcd.get("k") == "v1"
    assert etcd.cluster_id() == cluster_id

    etcd.restart()  # graceful (SIGTERM) this time
    assert etcd.get("k") == "v1"
    assert "start #3" in etcd.log_text()


def test_wipe_creates_a_new_cluster(etcd: EtcdServer) -> None:
    etcd.put("k", "v")
    cluster_id = etcd.cluster_id()
    etcd.stop()
    etcd.wipe()
    etcd.start()
    assert etcd.get("k") is None
    assert etcd.cluster_id() != cluster_id


def test_context_manager_and_start_failure(tmp_path: Path) -> None:
    with EtcdServer(name="ctx", data_dir=tmp_path / "ctx") as server:
        proc_pid = server.pid
        assert proc_pid is not None
        # A pidfd names this very process: a recycled pid cannot fool the check below.
        pidfd = os.pidfd_open(proc_pid)
        assert server.is_healthy()
    assert not server.is_running
    try:
        with pytest.raises(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, 0)
    finally:
        os.close(pidfd)
    # A bad flag makes etcd exit at once; the error carries the log tail.
    bad = EtcdServer(name="bad", data_dir=tmp_path / "bad", extra_args=["--no-such-flag"])
    with pytest.raises(EtcdStartError, match="no-such-flag"):
        bad.start()
    assert not bad.is_running


def test_cluster_leader_failover(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.members) == 3
    assert len(etcd_cluster.endpoints) == 3
    ids = {m.member_id() for m in etcd_cluster.members}
    assert len(ids) == 3
    assert len({m.cluster_id() for m in etcd_cluster.members}) == 1
    etcd_cluster.put("cilium/x", "1")

    leader = etcd_cluster.leader()
    assert leader in etcd_cluster.members
    leader.kill()
    new_leader = etcd_cluster.leader()
    assert new_leader is not leader
    assert etcd_cluster.get("cilium/x") == "1"
    etcd_cluster.put("cilium/x", "2")

    leader.start()  # rejoins from its data dir and catches up
    out = leader.etcdctl("get", "cilium/x", "--consistency=s", "--print-value-only")
    assert out.stdout.strip() == "2"
    assert len(etcd_cluster.members[0].etcdctl("member", "list").stdout.splitlines()) == 3


def test_tls_requires_client_cert(etcd_tls: EtcdServer, pki: Pki, tmp_path: Path) -> None:
    assert etcd_tls.client_url.startswith("https://")
    etcd_tls.put("k", "v")  # the harness presents the root client cert
    assert etcd_tls.get("k", cert=pki.client("alice")) == "v"

    anon = etcd_tls.etcdctl("get", "k", *QUICK, anonymous=True, check=False)
    assert anon.returncode != 0

    other = make_other_ca(tmp_path / "other")
    stranger = replace(other.issue_client("alice"), ca_file=pki.ca_file)
    refused = etcd_tls.etcdctl("get", "k", *QUICK, cert=stranger, check=False)
    assert refused.returncode != 0

    # The server certificate itself is refused by a client trusting only another CA.
    distrust = etcd_tls.etcdctl("get", "k", *QUICK, ca_file=other.ca_file, check=False)
    assert distrust.returncode != 0


def test_auth_refuses_wrong_password(etcd_auth: EtcdServer) -> None:
    assert etcd_auth.auth_enabled
    etcd_auth.put("cilium/a", "1", user="alice", password="alicepw")
    assert etcd_auth.get("cilium/a", user="alice", password="alicepw") == "1"

    wrong = etcd_auth.etcdctl("get", "cilium/a", user="alice", password="nope", check=False)
    assert wrong.returncode != 0
    assert "authentication failed" in wrong.stderr

    denied = etcd_auth.etcdctl("put", "other/a", "1", user="alice:alicepw", check=False)
    assert denied.returncode != 0
    assert "permission denied" in denied.stderr

    anon = etcd_auth.etcdctl("get", "cilium/a", anonymous=True, check=False)
    assert anon.returncode != 0

    # Harness helpers run as root, and keep doing so across a restart.
    rev = etcd_auth.revision()
    assert etcd_auth.compact() == rev
    etcd_auth.restart()
    assert etcd_auth.get("cilium/a") == "1"


def test_tls_cert_cn_is_the_auth_user(etcd_factory: EtcdFactory, pki: Pki) -> None:
    server = etcd_factory(name="tls-auth", tls=pki.server)
    enable_auth(
        server,
        users={"alice": None, "remote": None},  # certificate-only users
        roles={
            "cilium-rw": [("readwrite", "cilium/", True)],
            "one-key": [("read", "cilium/a")],
        },
        grants={"alice": ["cilium-rw"], "remote": ["one-key"]},
    )
    server.put("cilium/a", "1", cert=pki.client("alice"))
    assert server.get("cilium/a", cert=pki.client("remote")) == "1"
    denied = server.etcdctl("put", "cilium/b", "1", cert=pki.client("remote"), check=False)
    assert "permission denied" in denied.stderr
    # local-c1 has a valid certificate but no etcd user.
    unknown = server.etcdctl("get", "cilium/a", cert=pki.client("local-c1"), check=False)
    assert unknown.returncode != 0
    assert server.revision() > 1  # harness: root password plus the root certificate


def test_etcd35(etcd35: EtcdServer) -> None:
    assert etcd35.version.startswith("3.5.")
    assert etcd35.status()["version"].startswith("3.5.")
    etcd35.put("k", "v")
    assert etcd35.get("k") == "v"
    assert etcd35.compact() == etcd35.revision()


def test_client_config(etcd_tls: EtcdServer, pki: Pki, tmp_path: Path) -> None:
    path = etcd_tls.client_config(tmp_path / "etcd.yaml", client=pki.client("remote"))
    data = yaml.safe_load(path.read_text())
    assert data == {
        "endpoints": [etcd_tls.client_url],
        "trusted-ca-file": str(pki.ca_file),
        "cert-file": str(pki.client("remote").cert_file),
        "key-file": str(pki.client("remote").key_file),
    }
    plain = EtcdServer(name="cfg", data_dir=tmp_path / "cfg").client_config(
        tmp_path / "plain.yaml", username="u", password="p"
    )
    assert set(yaml.safe_load(plain.read_text())) == {"endpoints", "username", "password"}


def test_pki_issue_with_expiry(pki: Pki) -> None:
    soon = pki.issue_client("expiring", validity=dt.timedelta(days=10))
    remaining = read_not_after(soon.cert_file) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=9) < remaining <= dt.timedelta(days=10)
    expired = pki.issue_client("expired", not_after=dt.datetime.now(dt.UTC) - dt.timedelta(1))
    assert read_not_after(expired.cert_file) < dt.datetime.now(dt.UTC)
    rotated = pki.issue_client("alice")
    assert rotated.cert_file != pki.client("alice").cert_file
    in_place = pki.issue_client("rot", stem="rot")
    again = pki.issue_client("rot", stem="rot")
    assert in_place.cert_file == again.cert_file
    assert in_place.key_file.stat().st_mode & 0o077 == 0


def test_pause_resume(etcd: EtcdServer) -> None:
    etcd.pause()
    hung = etcd.etcdctl("get", "k", *QUICK, check=False, timeout=10)
    assert hung.returncode != 0
    etcd.resume()
    etcd.put("k", "v")
    etcd.pause()
    etcd.stop()  # SIGTERM must still work on a stopped process
    assert not etcd.is_running


def test_atexit_safety_net(etcd_factory: EtcdFactory) -> None:
    server = etcd_factory(name="orphan")
    pid = server.pid
    assert pid is not None
    pidfd = os.pidfd_open(pid)
    kill_all()
    assert not server.is_running
    try:
        with pytest.raises(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, 0)
    finally:
        os.close(pidfd)


# ------------------------------------------------- signals reach only processes we hold

#: Echoes every line of stdin; no signal handlers, so SIGTERM/SIGKILL end it at once.
_ECHO = "import sys\nfor line in sys.stdin:\n    print(line.strip(), flush=True)\n"


def _decoy() -> Child:
    """A stranger in a session of its own (pgid == pid), standing in for whatever process
    the kernel gave a recycled pid to."""
    return Child.spawn([sys.executable, "-u", "-c", _ECHO], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True, start_new_session=True)


def _answers(decoy: Child, marker: str, timeout: float = 10.0) -> bool:
    """The sentinel: the decoy echoes ``marker`` back. Whatever signal reached it before
    we wrote the marker has been acted upon by then: a fatal one (no handler) kills the
    process as it is sent, so a dead or stopped decoy never answers."""
    stdin, stdout = decoy.popen.stdin, decoy.popen.stdout
    assert stdin is not None and stdout is not None
    try:
        stdin.write(marker + "\n")
        stdin.flush()
    except BrokenPipeError:
        return False
    ready, _, _ = select.select([stdout], [], [], timeout)
    return bool(ready) and stdout.readline().strip() == marker


def _finish(decoy: Child) -> None:
    decoy.signal_group(signal.SIGKILL)
    decoy.wait(10)
    for pipe in (decoy.popen.stdin, decoy.popen.stdout):
        if pipe is not None:
            pipe.close()


def test_child_signals_nothing_once_reaped() -> None:
    """A reaped child's pid may be anyone's: its handle refuses to signal, even when the
    number (and the group ID it led) now belongs to another process."""
    old = Child.spawn([sys.executable, "-c", "pass"], start_new_session=True)
    assert old.wait(30) == 0
    decoy = _decoy()
    try:
        assert _answers(decoy, "before")
        old.pid = decoy.pid  # fake the reuse: the old number is the decoy's pid and pgid now
        for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
            assert not old.signal(sig)
            assert not old.signal_group(sig)
        assert _answers(decoy, "after"), "a signal for the reaped child hit the decoy"
        assert decoy.held
        # The decoy's own handle does reach it (the refusal above is not a broken Child).
        assert decoy.signal_group(signal.SIGTERM)
        assert decoy.wait(10) == -signal.SIGTERM
        assert not decoy.signal(signal.SIGTERM)
    finally:
        _finish(decoy)


def test_reaped_etcd_is_never_signalled(etcd_factory: EtcdFactory,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An etcd that died and was reaped (here by ``is_running``) is signalled neither by
    its server's methods nor by ``kill_all()``, and its pid, were it reused, is left alone."""
    server = etcd_factory(name="gone")
    process = server.process
    assert process is not None and server.pid is not None
    assert process.signal(signal.SIGKILL)  # a crash from outside the harness
    deadline = time.monotonic() + 10
    while server.is_running:  # looking reaps it
        assert time.monotonic() < deadline, "etcd survived SIGKILL"
        time.sleep(0.01)
    assert process.returncode == -signal.SIGKILL

    sent: list[tuple[str, int, int]] = []
    real_kill, real_killpg = os.kill, os.killpg

    def record(name: str, real):  # type: ignore[no-untyped-def]
        def call(target: int, sig: int) -> None:
            sent.append((name, target, sig))
            real(target, sig)
        return call

    decoy = _decoy()
    try:
        process.pid = decoy.pid  # fake the reuse of the reaped etcd's pid and group ID
        monkeypatch.setattr(os, "kill", record("kill", real_kill))
        monkeypatch.setattr(os, "killpg", record("killpg", real_killpg))
        kill_all()  # first: the registry must have dropped the reaped process
        server.pause()
        server.resume()
        server.stop(timeout=1)
        server.kill()
        server.close()
        kill_all()
        monkeypatch.undo()
        assert [s for s in sent if s[1] == decoy.pid] == []
        assert _answers(decoy, "still here"), "the reaped etcd's pid was signalled"
    finally:
        _finish(decoy)
    assert not server.is_running


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="util-linux setpriv not installed")
def test_etcd_dies_with_a_killed_test_process(tmp_path: Path) -> None:
    # The parent-death signal covers what atexit cannot: pytest itself being SIGKILLed.
    script = (
        "import os, signal, sys\n"
        "from harness import EtcdServer\n"
        f"s = EtcdServer(name='orphan', data_dir={str(tmp_path / 'orphan')!r}).start()\n"
        "print(s.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pid = int(proc.stdout.split()[0])

    def alive() -> bool:
        # A zombie (state Z) is dead; whether it is reaped depends on the container's init.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(), "etcd outlived the process that started it"
