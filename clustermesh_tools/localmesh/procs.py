"""Processes of the local mesh: start them detached, recognise them later, stop them.

A process is recorded as (pid, start time, argv).  The start time is the
``starttime`` field of ``/proc/<pid>/stat`` (clock ticks since boot), which
together with the pid identifies a process uniquely: a recycled pid has a
different start time.  Before signalling anything we check both, and the
command line too, so ``local down`` never kills a process it did not start.

Processes run in their own session (``start_new_session``), so they outlive the
command that started them and a Ctrl-C in its terminal does not reach them; they
lead their own process group, which is what we signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ProcRecord:
    name: str  # e.g. cluster1/etcd
    argv: list[str]
    log: str
    env: dict[str, str] = field(default_factory=dict)  # extra environment
    pid: int = 0
    start_time: int = 0  # /proc/<pid>/stat starttime

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ProcRecord:
        return cls(**doc)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of a process, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    rest = text[text.rfind(")") + 2:].split()
    return rest[0], int(rest[19])


def start_time(pid: int) -> int:
    stat = _stat(pid)
    return stat[1] if stat else 0


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_running(rec: ProcRecord) -> bool:
    """Whether the recorded process is alive *and* still the one we started."""
    if rec.pid <= 0:
        return False
    stat = _stat(rec.pid)
    if stat is None or stat[0] in ("Z", "X"):  # zombies are dead
        return False
    if stat[1] != rec.start_time:
        return False  # the pid was recycled
    return _cmdline(rec.pid) == rec.argv


def spawn(rec: ProcRecord, *, cwd: Path | None = None) -> ProcRecord:
    """Start ``rec.argv`` detached (own session, output appended to ``rec.log``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env.update(rec.env)
    Path(rec.log).parent.mkdir(parents=True, exist_ok=True)
    with open(rec.log, "ab") as log:
        log.write(f"=== clustermesh local: starting {rec.name} at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(rec.argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(rec.argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=cwd, close_fds=True)
    # We never wait() on it: it must outlive us.  Forget the Popen object quietly.
    proc.returncode = 0
    rec.pid = proc.pid
    rec.start_time = start_time(proc.pid)
    return rec


def exited_early(rec: ProcRecord) -> bool:
    """Reap ``rec`` if it is our child and has exited; True if it is gone."""
    with contextlib.suppress(ChildProcessError, OSError):
        pid, _ = os.waitpid(rec.pid, os.WNOHANG)
        if pid == rec.pid:
            return True
    return not is_running(rec)


def stop(rec: ProcRecord, *, timeout: float = 10.0) -> str:
    """SIGTERM (then SIGKILL) the recorded process group, if it is still ours."""
    if not is_running(rec):
        _reap(rec.pid)
        return "not running"
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(rec.pid)
        if not is_running(rec):
            return "stopped"
        time.sleep(0.05)
    _sigkill(rec)
    return "killed"


def kill(rec: ProcRecord) -> bool:
    """SIGKILL the recorded process (fault injection); False if it was not running."""
    if not is_running(rec):
        return False
    _sigkill(rec)
    return True


def _sigkill(rec: ProcRecord) -> None:
    """SIGKILL the process group and wait (up to 5 s) until it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rec.pid, signal.SIGKILL)
    for _ in range(100):
        _reap(rec.pid)
        if not is_running(rec):
            break
        time.sleep(0.05)


def _reap(pid: int) -> None:
    # Only succeeds for our own children (tests run `up` in-process sometimes).
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
