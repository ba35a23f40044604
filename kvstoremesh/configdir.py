"""Watch the ``--clustermesh-config`` directory: one file per remote cluster.

KVStoreMesh learns which remote clusters to connect to from a directory that
holds one etcd client configuration per cluster; the file *name* is the cluster
name.  The rules follow Cilium ``pkg/clustermesh/common/config.go``:

* A directory entry is a cluster config iff it is a regular, readable file
  (symlinks are followed) whose content contains the substring ``endpoints:``.
  Anything else -- TLS material such as ``cluster2.etcd-client.crt``, the
  ``..data`` / ``..2024_01_01_...`` entries of a Kubernetes Secret volume,
  dotfiles, sub-directories -- is ignored without a word.
* The SHA-256 of the content identifies a version.  Seeing the same digest
  again is a no-op; a different digest is a change (the daemon reconnects).
* A config that disappears, or stops containing ``endpoints:``, is removed.
* A name that :func:`clustermesh.clusterconfig.validate_cluster_name` refuses is
  reported with one warning (again only if its content changes or it comes
  back after having gone), and a file named like the local cluster is ignored
  with one info line.

Why polling and not inotify
---------------------------
Kubernetes mounts a Secret as a directory whose visible entries are symlinks
``name -> ..data/name``; an update writes a new timestamped directory and
atomically swaps the ``..data`` symlink.  The entry ``name`` itself never
changes, so watching it (or the directory) for events is subtle: inotify
reports the swap on ``..data``, not on the files that moved, and it needs
either a non-stdlib dependency or ctypes.  Re-reading and hashing every file
on a fixed interval (1 s by default) is trivially correct for symlink swaps,
atomic renames and in-place writes alike, and it is cheap: the files are a few
hundred bytes and there are a few hundred at most.  Each pass does all of its
file-system work in a single :func:`asyncio.to_thread` call so a slow (e.g.
network) file system never blocks the event loop.

As in Cilium, a config rewritten in place (truncate, then write) may be caught
half-written; a pass that sees it without ``endpoints:`` reports it removed
and the next pass re-adds it.  Writers should replace files atomically, which
is what Kubernetes does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.clusterconfig import validate_cluster_name

__all__ = ["IGNORE", "ClusterFile", "ConfigDirectory", "ConfigHandler"]

_CONFIG_MARKER = b"endpoints:"


@dataclass(frozen=True, slots=True)
class ClusterFile:
    """One remote cluster's config file as seen by one scan."""

    name: str
    path: Path
    digest: str  # sha256 hex of content


class ConfigHandler(Protocol):
    """Receives the changes :meth:`ConfigDirectory.run` detects."""

    async def cluster_upserted(self, file: ClusterFile) -> None:
        """A cluster config appeared or its content changed."""
        ...

    async def cluster_removed(self, name: str) -> None:
        """A cluster config disappeared or stopped being a config."""
        ...


class _Ignore:
    """A handler for a directory followed only to know it (a standby's)."""

    async def cluster_upserted(self, file: ClusterFile) -> None:
        pass

    async def cluster_removed(self, name: str) -> None:
        pass


IGNORE = _Ignore()


@dataclass(frozen=True, slots=True)
class _Listing:
    """Raw result of reading the directory: no validation, no logging."""

    files: dict[str, ClusterFile]
    problem: str | None  # why the directory could not be listed, if it could not


def _read_config(path: Path) -> bytes | None:
    """Return the content of ``path`` if it is a readable regular file."""
    try:
        # O_NONBLOCK: a FIFO put in the directory must not block the pass; the
        # flag has no effect on regular files.  os.open follows symlinks.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read()
    except (OSError, ValueError):
        # ValueError: e.g. an embedded NUL in a name on some platforms.
        return None


def _read_directory(directory: Path) -> _Listing:
    """List ``directory`` and hash every file that looks like a cluster config."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return _Listing({}, "does not exist")
    except NotADirectoryError:
        return _Listing({}, "is not a directory")
    except OSError as exc:
        return _Listing({}, f"cannot be listed: {exc.strerror or exc}")
    files: dict[str, ClusterFile] = {}
    for name in names:
        if name.startswith("."):
            # "..data", "..2024_01_01_...", editor swap files, temporary files.
            continue
        path = directory / name
        content = _read_config(path)
        if content is None or _CONFIG_MARKER not in content:
            continue
        files[name] = ClusterFile(name=name, path=path, digest=hashlib.sha256(content).hexdigest())
    return _Listing(files, None)


class ConfigDirectory:
    """Poll a cluster-mesh config directory and report cluster changes."""

    def __init__(
        self,
        path: Path,
        *,
        local_cluster_name: str,
        interval: float = 1.0,
        logger: logging.Logger | None = None,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"poll interval must be positive, got {interval}")
        self._path = Path(path)
        self._local_cluster_name = local_cluster_name
        self._interval = interval
        self._clock = clock  # the poll interval is waited on it
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._known: dict[str, ClusterFile] = {}
        # What has already been logged, so that an unchanged situation is not
        # reported on every pass.
        self._dir_problem: str | None = None
        self._refused: dict[str, str] = {}  # name -> digest already warned about
        self._local_seen: str | None = None  # digest of the local-cluster file logged
        self._scanned = False  # a first pass was delivered: ``known`` is what it held

    @property
    def path(self) -> Path:
        return self._path

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def known(self) -> Mapping[str, ClusterFile]:
        """Clusters delivered to the handler by :meth:`run` (read-only view)."""
        return MappingProxyType(self._known)

    def scan(self) -> dict[str, ClusterFile]:
        """One synchronous pass: the valid remote cluster configs, by name.

        A missing or unreadable directory yields no clusters (logged once).
        """
        return self._classify(_read_directory(self._path))

    async def _scan_async(self) -> dict[str, ClusterFile]:
        return self._classify(await asyncio.to_thread(_read_directory, self._path))

    def _classify(self, listing: _Listing) -> dict[str, ClusterFile]:
        """Apply the name rules to a raw listing, logging each new problem once."""
        if listing.problem != self._dir_problem:
            if listing.problem is not None:
                self._log.warning(
                    "cluster mesh config directory %s %s: no remote clusters configured",
                    self._path, listing.problem,
                )
            elif self._dir_problem is not None:
                self._log.info("cluster mesh config directory %s is available", self._path)
            self._dir_problem = listing.problem

        result: dict[str, ClusterFile] = {}
        refused: dict[str, str] = {}
        local_seen: str | None = None
        for name, file in listing.files.items():
            if name == self._local_cluster_name:
                local_seen = file.digest
                if self._local_seen != file.digest:
                    self._log.info(
                        "ignoring cluster mesh config file %s: it is named after the "
                        "local cluster", file.path,
                    )
                continue
            try:
                validate_cluster_name(name)
            except ValueError as exc:
                refused[name] = file.digest
                if self._refused.get(name) != file.digest:
                    self._log.warning(
                        "ignoring cluster mesh config file %s: %s", file.path, exc,
                    )
                continue
            result[name] = file
        # Forget files that went away, so they are reported again if they return.
        self._refused = refused
        self._local_seen = local_seen
        return result

    async def run(self, handler: ConfigHandler, *, ready: asyncio.Event | None = None) -> None:
        """Deliver the current clusters, set ``ready``, then follow changes forever.

        The first pass calls ``handler.cluster_upserted`` for every cluster in
        name order before ``ready`` is set.  Later passes report removals, then
        additions and changes, each in name order.  An exception from the
        handler is logged and the change counts as delivered: it is delivered
        again only if the file changes again.  Cancel the task to stop.

        A directory followed before (by a standby, with a handler that ignores it) hands
        its ``known`` clusters to the new handler without reading the directory again;
        the next pass, one interval later, catches up with any change since.
        """
        if self._scanned:
            for name in sorted(self._known):
                with self._guard(name, "add"):
                    await handler.cluster_upserted(self._known[name])
        else:
            current = await self._scan_async()
            for name in sorted(current):
                await self._deliver_upsert(handler, current[name])
            self._scanned = True  # only now: a pass cancelled half-way leaves it unknown
        if ready is not None:
            ready.set()
        while True:
            await self._clock.sleep(self._interval)
            current = await self._scan_async()
            for name in sorted(self._known.keys() - current.keys()):
                await self._deliver_removal(handler, name)
            for name in sorted(current):
                old = self._known.get(name)
                if old is None or old.digest != current[name].digest:
                    await self._deliver_upsert(handler, current[name])

    async def _deliver_upsert(self, handler: ConfigHandler, file: ClusterFile) -> None:
        previous = self._known.get(file.name)
        self._known[file.name] = file
        if previous is None:
            self._log.info("remote cluster %s added (config %s)", file.name, file.path)
        else:
            self._log.info("remote cluster %s config changed (%s)", file.name, file.path)
        with self._guard(file.name, "add or update"):
            await handler.cluster_upserted(file)

    async def _deliver_removal(self, handler: ConfigHandler, name: str) -> None:
        del self._known[name]
        self._log.info("remote cluster %s removed", name)
        with self._guard(name, "remove"):
            await handler.cluster_removed(name)

    @contextlib.contextmanager
    def _guard(self, name: str, action: str) -> Iterator[None]:
        try:
            yield
        except Exception:
            self._log.exception("failed to %s remote cluster %s", action, name)
