"""Child processes of the harness, signalled only while they are still ours.

A pid belongs to the process we started only until we reap it: once ``waitpid`` has
collected the exit status the kernel may give the number to any new process on the
machine, and a process group ID with it (a shell job, a daemon calling ``setsid``).
A ``kill`` or ``killpg`` aimed at a child that exited long ago can then hit a stranger.
:class:`Child` makes that impossible:

* it opens a pidfd (``os.pidfd_open``) right after spawning, while the child cannot
  have been reaped yet, so the pidfd names that process and no other; signals to the
  process itself go through ``signal.pidfd_send_signal``, which cannot reach another
  process even if the pid number is reused;
* signals to its process group (children started with ``start_new_session=True`` lead
  one: pgid == pid) are sent only while the leader is un-reaped — running or a zombie,
  it keeps its pid, hence the group ID, from being reused — so a group kill only ever
  reaches the leader's own descendants.  The check and the ``killpg`` run under the
  lock every reap of this child takes (:meth:`Child.poll`, :meth:`Child.wait`), so no
  other thread can reap in between;
* once reaped, :meth:`Child.signal` and :meth:`Child.signal_group` send nothing and
  return False.

Reap only through :meth:`Child.poll` and :meth:`Child.wait` (not ``child.popen.wait()``
or ``communicate()``), or the lock cannot protect the group kill.  Stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["Child"]


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: the lock-and-poll rule alone
        return None


class Child:
    """One process we spawned (``Child.spawn(argv, **Popen kwargs)`` or ``Child(popen)``
    right after ``Popen`` returned)."""

    def __init__(self, popen: subprocess.Popen[Any]) -> None:
        self.popen = popen
        #: the pid while we hold the process; never signalled once it is reaped
        self.pid = popen.pid
        self._lock = threading.Lock()
        self._pidfd = _open_pidfd(popen.pid)

    @classmethod
    def spawn(cls, argv: Sequence[str], **kwargs: Any) -> Child:
        return cls(subprocess.Popen(argv, **kwargs))

    def __repr__(self) -> str:
        state = "held" if self.returncode is None else f"reaped ({self.returncode})"
        return f"<Child {self.pid} {state}>"

    # ------------------------------------------------------------------ reaping

    def _poll_locked(self) -> int | None:
        code = self.popen.poll()
        if code is not None:
            self._close_pidfd()
        return code

    def poll(self) -> int | None:
        """Reap if it exited; the exit status (``-N`` for signal N) or None if running."""
        with self._lock:
            return self._poll_locked()

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (no system call)."""
        return self.popen.returncode

    @property
    def held(self) -> bool:
        """Not reaped: the pid and the process group it leads are still this child's."""
        return self.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Reap, waiting up to ``timeout`` (``subprocess.TimeoutExpired`` after it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while True:
            with self._lock:
                code = self._poll_locked()
                fd = self._pidfd
            if code is not None:
                return code
            remaining = 0.5 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(self.popen.args, timeout or 0.0)
            if fd is not None:
                try:  # a pidfd turns readable when the process exits
                    select.select([fd], [], [], min(remaining, 0.5))
                    continue
                except (OSError, ValueError):  # closed meanwhile by a reap in another thread
                    pass
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)

    # ---------------------------------------------------------------- signalling

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the process itself if it is still ours; False if it was
        already reaped (or exited just now)."""
        with self._lock:
            if self._poll_locked() is not None:
                return False
            return self._signal_self_locked(sig)

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the process group the child leads (``start_new_session``),
        only while the leader is un-reaped; False otherwise."""
        with self._lock:
            if self._poll_locked() is not None:
                return False
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:  # not a group leader after all: the process only
                return self._signal_self_locked(sig)
            return True

    def _signal_self_locked(self, sig: int) -> bool:
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)  # un-reaped, and we hold the lock: still ours
        except ProcessLookupError:  # exited just now (a zombie until we reap it)
            return False
        return True

    # ------------------------------------------------------------------ cleanup

    def _close_pidfd(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self._close_pidfd()
