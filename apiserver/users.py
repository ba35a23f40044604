"""Cluster users management: the etcd users listed in ``users.yaml``, kept in etcd.

``--cluster-users-enabled`` turns it on, ``--cluster-users-config-path`` names the file
(Cilium's defaults; ``cilium-dropin-facts.md`` §5).  The file is the
``clustermesh-remote-users`` ConfigMap: ``users: [{name, role}]``, one
``remote-<cluster>`` user per connecting cluster, each with the role ``remote``; other
keys are ignored.  In ``tls.authMode: cluster`` every remote cluster presents a client
certificate with CN ``remote-<its name>``, which etcd's ``--client-cert-auth`` maps to
this user, so each connecting cluster is its own etcd user and can be cut off alone.

What one pass does (:meth:`UsersManager.poll_once`)
---------------------------------------------------
The file is read and hashed.  A new version is parsed and, if valid, becomes the desired
state; then every entry whose (name, role) differs from what this process last applied
is enforced: the user is added without password (client certificate only; "already
exists" is fine) and granted its role.  The role must already exist (``remote`` comes
from etcdinit); a missing one is an error naming the user and the role, and the pass is
retried with a backoff.  Entries that fail do not stop the others.  Then every user that
dropped out of the file is handled.

Whose users are these
---------------------
Only users **this process created** are ever deleted, and they are remembered in
memory only, as upstream does.  A user that already existed when the file first named
it (made by hand, by etcdinit, or by an earlier process against an etcd that survived
its restart) is *adopted*: granted its role, never deleted.  So an etcd that outlives
the apiserver keeps the users an earlier process created, even once they leave the
file.  Upstream has the same property and it does not matter there: etcdinit wipes the
data directory at every pod start, so etcd and the apiserver start from nothing
together.  (Upstream also deletes pre-existing users once they leave the file; we do
not, so a user made by hand is safe from a typo in the ConfigMap.)

Role changes **revoke** the old role, unlike upstream (which only grants the new one,
leaving the user with both): a user should hold exactly the access the file gives it.
Only a role this process granted is revoked, so an adopted user keeps what it had
before; for the same reason an adopted user that leaves the file loses only the role
we granted it.

Entries with an empty name are skipped (upstream's only effective skip, facts §5).  An
entry naming a user we must never touch -- ``root``, ``admin-<cluster>``,
``local-<cluster>``, ``externalworkload``, ``remote``: etcdinit's users, which the
daemons and agents authenticate as -- is refused with one log line; the rest of the file
applies.  A structural error (not YAML, ``users`` not a list, an entry without a string
role, one name with two roles) rejects the whole version: it is reported once, naming
the file and the entry, and nothing changes until the file changes again -- applying
the valid part would delete the users of the entries we could not read.

Why polling and not inotify
---------------------------
Kubernetes mounts the ConfigMap as ``users.yaml -> ..data/users.yaml`` with ``..data``
a symlink to a timestamped directory, and updates it by renaming a new ``..data_tmp``
symlink over ``..data``.  Reading the path and hashing the content every second (as
:mod:`kvstoremesh.configdir` does) sees that swap, an atomic rename and an in-place
write alike, with no watch descriptors to re-arm.  The read runs in a thread so a slow
file system never blocks the event loop.  The poll and the retry timer both go through
an injectable :class:`~clustermesh.clock.Clock`, so tests drive them; the retry delays
are the :data:`~clustermesh.backoff.USER_MANAGEMENT` policy (1 s doubling to 60 s,
jittered), started over after a pass succeeds.  Every pass counts as one run of
upstream's controller group ``clustermesh-users-management``
(``--controller-group-metrics``): a success, or a failure when anything had to be retried.

One reader of the file
----------------------
``etcdinit --cluster-users-config-path`` creates the same users up front; it reads the
file with the same parser (:func:`load_users_file`), so both refuse and skip the same
entries.  etcdinit's users themselves are :func:`~apiserver.etcdinit_auth.desired_auth`'s,
named once there.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml

from clustermesh.backoff import USER_MANAGEMENT, Backoff, BackoffPolicy
from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.controllers import GROUP_USERS_MANAGEMENT, ControllerRuns
from clustermesh.etcd import auth
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.errors import EtcdError, EtcdUnavailable

from .etcdinit_auth import ROOT, desired_auth

__all__ = ["UsersFile", "UsersFileError", "UsersManager", "UsersStatus", "load_users_file",
           "parse_users_file", "protected_users"]

log = logging.getLogger(__name__)


def protected_users(cluster_name: str) -> frozenset[str]:
    """etcdinit's users: the daemons, agents and legacy remotes authenticate as them."""
    return frozenset(desired_auth(cluster_name)[0])


class UsersFileError(ValueError):
    """The file cannot be applied; the message names the file and the entry."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UsersFile:
    """One valid version of ``users.yaml``."""

    users: Mapping[str, str]  # name -> role, in file order
    refused: tuple[str, ...] = ()  # one message per protected entry left out
    skipped: int = 0  # entries with an empty name


def parse_users_file(text: str | bytes, *, path: Path, cluster_name: str) -> UsersFile:
    """Parse ``users: [{name, role}]``; raises :class:`UsersFileError`."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsersFileError(f"{path}: not valid YAML: {exc}") from None
    if doc is None:
        return UsersFile(users={})
    if not isinstance(doc, dict):
        raise UsersFileError(f"{path}: expected a mapping with a 'users' list, "
                             f"got {type(doc).__name__}")
    entries = doc.get("users")
    if entries is None:
        return UsersFile(users={})
    if not isinstance(entries, list):
        raise UsersFileError(f"{path}: 'users' must be a list of {{name, role}}, "
                             f"got {type(entries).__name__}")
    protected = protected_users(cluster_name)
    users: dict[str, str] = {}
    where: dict[str, int] = {}
    refused: list[str] = []
    skipped = 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UsersFileError(f"{path}: users[{i}]: expected a mapping with name and "
                                 f"role, got {entry!r}")
        name, role = entry.get("name"), entry.get("role")
        if name is None or name == "":
            skipped += 1
            continue
        if not isinstance(name, str):
            raise UsersFileError(f"{path}: users[{i}]: name must be a string, got {name!r}")
        if not isinstance(role, str) or not role:
            raise UsersFileError(f"{path}: users[{i}] ({name}): role must be a non-empty "
                                 f"string, got {role!r}")
        if name in protected:
            refused.append(f"{path}: users[{i}]: refusing to manage user {name}: it is one "
                           "of etcdinit's users (root, admin-<cluster>, local-<cluster>, "
                           "externalworkload, remote), which must stay as etcdinit made them")
            continue
        if users.get(name, role) != role:
            raise UsersFileError(f"{path}: users[{i}]: user {name} is listed twice with "
                                 f"different roles ({users[name]} at users[{where[name]}], "
                                 f"{role} here)")
        users.setdefault(name, role)
        where.setdefault(name, i)
    return UsersFile(users=users, refused=tuple(refused), skipped=skipped)


def load_users_file(path: Path, *, cluster_name: str) -> dict[str, str]:
    """The extra users ``etcdinit --cluster-users-config-path`` creates: the file as
    :func:`parse_users_file` reads it (refused entries logged), less the entry named
    after this cluster, which Cilium's etcdinit skips too.  Raises
    :class:`UsersFileError`."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    parsed = parse_users_file(text, path=path, cluster_name=cluster_name)
    for message in parsed.refused:
        log.warning("%s", message)
    return {name: role for name, role in parsed.users.items() if name != cluster_name}


@dataclass(frozen=True, slots=True, kw_only=True)
class UsersStatus:
    """For readiness and metrics: what is managed and what went wrong last."""

    path: Path
    users: Mapping[str, str]  # applied: name -> role
    created: frozenset[str]  # the users this process created (and would delete)
    in_sync: bool  # the last valid file version is fully applied
    last_error: str | None  # the file problem or the failed pass, until a pass succeeds
    passes: int  # reconcile passes attempted (successful or not)


@dataclass(slots=True)
class _Read:
    content: bytes | None
    problem: str | None = None

    @property
    def digest(self) -> str:
        if self.content is None:
            return f"problem:{self.problem}"
        return hashlib.sha256(self.content).hexdigest()


def _read(path: Path) -> _Read:
    try:
        return _Read(path.read_bytes())  # follows the ConfigMap's symlinks
    except FileNotFoundError:
        return _Read(None, f"{path}: does not exist")
    except OSError as exc:
        return _Read(None, f"{path}: cannot read: {exc.strerror or exc}")


def _says(exc: EtcdError, text: str) -> bool:
    return text in str(exc)


class UsersManager:
    """Keep etcd's users in line with ``users.yaml`` (see the module docstring)."""

    def __init__(self, client: EtcdClient, *, cluster_name: str, path: Path,
                 poll_interval: float = 1.0, backoff: BackoffPolicy = USER_MANAGEMENT,
                 clock: Clock = REAL_CLOCK, runs: ControllerRuns | None = None) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll interval must be positive, got {poll_interval}")
        self._client = client
        self._cluster = cluster_name
        self._path = Path(path)
        self._poll_interval = poll_interval
        self._backoff = Backoff(backoff, clock=clock)
        self._clock = clock
        self._runs = runs
        self._seen: str | None = None  # digest of the last version read (or its problem)
        self._desired: Mapping[str, str] = MappingProxyType({})
        self._loaded = False  # a valid version was read at least once
        self._pending = False  # the desired state is not fully applied yet
        self._retry_at = 0.0
        self._applied: dict[str, str] = {}  # name -> role, as last enforced
        self._created: set[str] = set()  # users this process added (it may delete them)
        self._granted: set[tuple[str, str]] = set()  # (user, role) it granted (may revoke)
        self._last_error: str | None = None
        self._passes = 0

    @property
    def status(self) -> UsersStatus:
        return UsersStatus(path=self._path,
                           users=MappingProxyType(dict(self._applied)),
                           created=frozenset(self._created),
                           in_sync=self._loaded and not self._pending,
                           last_error=self._last_error, passes=self._passes)

    async def run(self) -> None:
        """Poll forever (never returns); cancel the task to stop."""
        log.info("etcd users management: following %s (checked every %gs)", self._path,
                 self._poll_interval)
        while True:
            await self.poll_once()
            await self._clock.sleep(self._poll_interval)

    async def poll_once(self) -> None:
        """Read the file; apply a new valid version now, or retry a failed one when due."""
        read = await asyncio.to_thread(_read, self._path)
        digest = read.digest
        if digest != self._seen:
            self._seen = digest
            if self._load(read):
                await self._apply()
                return
        if self._pending and self._clock.monotonic() >= self._retry_at:
            await self._apply()

    def _load(self, read: _Read) -> bool:
        """Take a new version as the desired state; False (reported once) if unusable."""
        try:
            if read.content is None:
                raise UsersFileError(str(read.problem))
            parsed = parse_users_file(read.content, path=self._path,
                                      cluster_name=self._cluster)
        except UsersFileError as exc:
            self._last_error = str(exc)
            log.error("cannot apply the etcd users file: %s; the %d users managed so far "
                      "stay as they are until the file changes", exc, len(self._applied))
            return False
        for message in parsed.refused:
            log.warning("%s", message)
        log.info("etcd users file %s: %d users (%s)%s", self._path, len(parsed.users),
                 ", ".join(f"{n}:{r}" for n, r in parsed.users.items()) or "none",
                 f"; {parsed.skipped} entries without a name skipped" if parsed.skipped
                 else "")
        self._desired = MappingProxyType(dict(parsed.users))
        self._loaded = self._pending = True
        return True

    async def _apply(self) -> None:
        self._passes += 1
        errors: list[str] = []
        try:
            await self._reconcile(errors)
        except EtcdError as exc:  # etcd unreachable: the rest of the pass would fail too
            errors.append(str(exc))
        if self._runs is not None:
            self._runs.record(GROUP_USERS_MANAGEMENT, ok=not errors)
        if not errors:
            self._pending = False
            self._last_error = None
            self._backoff.reset()
            return
        delay = self._backoff.next_delay()
        self._retry_at = self._clock.monotonic() + delay
        self._last_error = "; ".join(errors)
        log.error("etcd users management: %s; retrying in %.1fs", self._last_error, delay)

    async def _reconcile(self, errors: list[str]) -> None:
        client = self._client
        roles = set(await auth.role_list(client))
        for name, role in self._desired.items():
            if self._applied.get(name) == role:
                continue
            if role != ROOT and role not in roles:  # granting root needs no such role
                errors.append(
                    f"user {name}: role {role} does not exist in etcd, so it cannot be "
                    f"granted (create the role first; etcdinit creates 'remote')")
                continue
            try:
                await self._enforce(name, role)
            except EtcdUnavailable:
                raise
            except EtcdError as exc:
                errors.append(f"user {name} (role {role}): {exc}")
        known = self._applied.keys() | self._created | {user for user, _ in self._granted}
        for name in sorted(known - self._desired.keys()):
            try:
                await self._drop(name)
            except EtcdUnavailable:
                raise
            except EtcdError as exc:
                errors.append(f"removing user {name}: {exc}")

    async def _enforce(self, name: str, role: str) -> None:
        client = self._client
        try:
            await auth.user_add(client, name)  # no password: it authenticates by certificate
        except EtcdError as exc:
            if not _says(exc, "already exists"):
                raise
            if name not in self._created:
                log.info("etcd user %s already exists: adopting it (it will not be deleted "
                         "when it leaves the file)", name)
        else:
            self._created.add(name)
            log.info("created etcd user %s (no password: it authenticates by client "
                     "certificate)", name)
        if role not in await auth.user_get(client, name):
            await auth.user_grant_role(client, name, role)
            self._granted.add((name, role))
            log.info("granted role %s to etcd user %s", role, name)
        # A role change: take back what this process granted before, nothing else.
        for user, old in sorted(self._granted):
            if user == name and old != role:
                await self._revoke(name, old)
        self._applied[name] = role

    async def _drop(self, name: str) -> None:
        if name in self._created:
            try:
                await auth.user_delete(self._client, name)
            except EtcdError as exc:
                if not _says(exc, "not found"):
                    raise
            self._created.discard(name)
            self._granted = {(u, r) for u, r in self._granted if u != name}
            log.info("deleted etcd user %s: it is no longer in %s", name, self._path)
        else:
            for user, role in sorted(self._granted):
                if user == name:
                    await self._revoke(name, role)
            log.info("etcd user %s is no longer in %s; it stays (this process did not "
                     "create it), without the roles this process granted", name, self._path)
        self._applied.pop(name, None)

    async def _revoke(self, name: str, role: str) -> None:
        try:
            await auth.user_revoke_role(self._client, name, role)
        except EtcdError as exc:
            if not (_says(exc, "not granted") or _says(exc, "not found")):
                raise
        self._granted.discard((name, role))
        log.info("revoked role %s from etcd user %s", role, name)
