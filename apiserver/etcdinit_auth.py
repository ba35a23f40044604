"""The users, roles and permissions of the clustermesh-apiserver's etcd (both etcdinit modes).

The clustermesh-apiserver pod runs its own etcd with ``--client-cert-auth``.  Every
client authenticates with a certificate whose common name is its etcd user name
(etcd's generic behaviour with ``--client-cert-auth``: without a token, the CN of the
client certificate is the user), so all users are created *without* a password.
:func:`etcdinit` creates them, their roles and the roles' permissions exactly as
Cilium's ``pkg/kvstore/etcdinit/init.go`` does (``cilium-dropin-facts.md`` §3), then
turns authentication on:

=====================  ==================  ==============================================
user                   role                permissions of the role
=====================  ==================  ==============================================
``root``               ``root``            everything (etcd's built-in meaning of root)
``admin-<cluster>``    ``root``            everything (the apiserver and KVStoreMesh)
``externalworkload``   ``externalworkload`` read every key; readwrite on the prefixes
                                           ``cilium/state/noderegister/v1/`` and
                                           ``cilium/.initlock/``
``local-<cluster>``    ``local``           read the prefixes ``cilium/.heartbeat`` (no
                                           trailing slash), ``cilium/cache/``,
                                           ``cilium/cluster-config/``, ``cilium/synced/``
``remote``             ``remote``          read the prefixes ``cilium/.heartbeat``,
                                           ``cilium/state/``, ``cilium/synced/<cluster>/``
                                           and the single key
                                           ``cilium/cluster-config/<cluster>``
=====================  ==================  ==============================================

The same function serves both modes of ``clustermesh-apiserver etcdinit``
(:mod:`apiserver.etcdinit`): against the blank private etcd of the upstream mode and
against an already running, possibly initialised etcd in our client mode.  Differences
from Cilium, on purpose:

* **Idempotent, not create-on-blank.**  Cilium assumes an empty server (it has just
  wiped the data directory).  In our client mode etcd runs beside us and may already be
  partly or fully initialised, so every step first reads what exists and only adds
  what is missing.  A second run takes no action at all.  Nothing is deleted, with
  one exception: a role of ours holding a permission it must not have is deleted and
  recreated (see :func:`_ensure_role`).  On a blank etcd the calls are Cilium's.
* **The ``root`` role is created explicitly** (``etcdctl``'s documented procedure).
  Cilium only grants it: etcd treats the *name* ``root`` specially, so the grant works
  without the role existing.  Creating it is harmless and makes ``role get root``
  answer.  Its permissions are never checked or changed: etcd ignores them (a holder
  of ``root`` may do everything) and refuses to delete the root role once auth is on.
* **Works with auth already on**, connected as a user with the ``root`` role (the
  ``root`` or ``admin-<cluster>`` client certificate), and completes a server where
  auth was enabled but users or permissions are missing.
* **Extra users** (``extra_users``, name → role, as in Cilium's ``users.yaml`` for
  per-remote-cluster users, read by :func:`apiserver.users.load_users_file`) can be
  created here too; Cilium's apiserver does that later in its users manager, which
  also deletes stale ones.  This module never deletes users.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from clustermesh.clusterconfig import validate_cluster_name
from clustermesh.etcd import auth
from clustermesh.etcd.auth import Permission
from clustermesh.etcd.client import EtcdClient, prefix_range_end
from clustermesh.etcd.errors import EtcdError, EtcdPermissionDenied
from clustermesh.keys import (
    CACHE_PREFIX,
    CLUSTER_CONFIG_PREFIX,
    HEARTBEAT_KEY,
    STATE_PREFIX,
    SYNCED_PREFIX,
    cluster_config_key,
    synced_prefix,
)

__all__ = [
    "ALL_KEYS",
    "ROOT",
    "EtcdInitFailed",
    "Grant",
    "desired_auth",
    "etcdinit",
    "users_and_roles",
]

log = logging.getLogger(__name__)

#: etcd's special user and role: a user holding the role ``root`` may do everything.
ROOT = "root"
#: ``Grant(key=ALL_KEYS, prefix=True)`` covers every key (etcd range ``["\\x00", ∞)``).
ALL_KEYS = ""
#: Cilium's ``store.NodeRegisterStorePrefix`` and ``kvstore.InitLockPath``.
NODE_REGISTER_PREFIX = "cilium/state/noderegister/v1"
INIT_LOCK_PATH = "cilium/.initlock"

_PERMS = ("read", "write", "readwrite")
_NO_USERS: Mapping[str, str] = MappingProxyType({})


class EtcdInitFailed(Exception):
    """etcdinit (either mode) failed; the message says what and, where it helps, what to do."""


# ------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class Grant:
    """Permission ``perm`` for ``role`` on one key, or on every key starting with ``key``.

    ``prefix=True`` with ``key=""`` (:data:`ALL_KEYS`) means every key, which etcd
    stores as the range ``["\\x00", "\\x00")`` (as Go's ``clientv3.WithPrefix("")``).
    A prefix is taken literally: ``cilium/.heartbeat`` (no trailing slash) also covers
    ``cilium/.heartbeat-x``, exactly as Cilium grants it.
    """

    role: str
    key: str
    perm: str
    prefix: bool

    def __post_init__(self) -> None:
        if self.perm not in _PERMS:
            raise ValueError(f"permission {self.perm!r}: use one of {', '.join(_PERMS)}")
        if not self.key and not self.prefix:
            raise ValueError("an empty key is only meaningful as a prefix (every key)")

    def etcd_range(self) -> tuple[bytes, bytes]:
        """``(key, range_end)`` as etcd stores the permission."""
        key = self.key.encode()
        if not self.prefix:
            return key, b""
        if not key:
            return b"\x00", b"\x00"
        return key, prefix_range_end(key)

    def describe(self) -> str:
        return f"{self.perm} on {_describe_range(*self.etcd_range())}"


def _describe_range(key: bytes, range_end: bytes) -> str:
    def text(b: bytes) -> str:
        return b.decode("utf-8", errors="backslashreplace")

    if key == b"\x00" and range_end == b"\x00":
        return "all keys"
    if not range_end:
        return f"key {text(key)}"
    if range_end == prefix_range_end(key):
        return f"prefix {text(key)}"
    if range_end == b"\x00":
        return f"keys from {text(key)}"
    return f"range [{text(key)}, {text(range_end)})"


def _describe_permission(p: Permission) -> str:
    return f"{p.perm} on {_describe_range(p.key, p.range_end)}"


def desired_auth(cluster_name: str) -> tuple[dict[str, str], dict[str, list[Grant]]]:
    """The users (name → role) and roles (name → grants) (dropin facts §3) for ``cluster_name``.

    Raises ValueError for an invalid cluster name.  The ``root`` role has no grants:
    etcd lets its holders do everything regardless.
    """
    validate_cluster_name(cluster_name)
    users = {
        ROOT: ROOT,
        f"admin-{cluster_name}": ROOT,
        "externalworkload": "externalworkload",
        f"local-{cluster_name}": "local",
        "remote": "remote",
    }
    roles: dict[str, list[Grant]] = {
        ROOT: [],
        "externalworkload": [
            Grant("externalworkload", ALL_KEYS, "read", True),
            Grant("externalworkload", NODE_REGISTER_PREFIX + "/", "readwrite", True),
            Grant("externalworkload", INIT_LOCK_PATH + "/", "readwrite", True),
        ],
        "local": [
            Grant("local", HEARTBEAT_KEY, "read", True),
            Grant("local", CACHE_PREFIX + "/", "read", True),
            Grant("local", CLUSTER_CONFIG_PREFIX + "/", "read", True),
            Grant("local", SYNCED_PREFIX + "/", "read", True),
        ],
        "remote": [
            Grant("remote", HEARTBEAT_KEY, "read", True),
            Grant("remote", STATE_PREFIX + "/", "read", True),
            Grant("remote", cluster_config_key(cluster_name), "read", False),
            Grant("remote", synced_prefix(cluster_name), "read", True),
        ],
    }
    return users, roles


# ------------------------------------------------------------------------------ etcd


def _already_exists(exc: EtcdError) -> bool:
    return "already exists" in str(exc)


class _Run:
    """One etcdinit pass: the actions taken, in order."""

    def __init__(self, client: EtcdClient, on_action: Callable[[str], None] | None) -> None:
        self.client = client
        self.on_action = on_action
        self.actions: list[str] = []

    def did(self, action: str) -> None:
        self.actions.append(action)
        if self.on_action is None:
            log.info("etcdinit: %s", action)
        else:
            self.on_action(action)

    async def add_role(self, role: str) -> None:
        try:
            await auth.role_add(self.client, role)
        except EtcdError as exc:
            if not _already_exists(exc):  # a concurrent etcdinit created it: fine
                raise
            return
        self.did(f"added role {role}")

    async def add_user(self, user: str) -> None:
        try:
            await auth.user_add(self.client, user)  # no password: client certificate only
        except EtcdError as exc:
            if not _already_exists(exc):
                raise
            return
        self.did(f"added user {user} (no password: it authenticates by client certificate)")

    async def grant_role(self, user: str, role: str) -> None:
        await auth.user_grant_role(self.client, user, role)
        self.did(f"granted role {role} to user {user}")

    async def grant(self, grant: Grant) -> None:
        key, range_end = grant.etcd_range()
        await auth.role_grant_permission(self.client, grant.role, key=key, perm=grant.perm,
                                         range_end=range_end)
        self.did(f"granted role {grant.role} {grant.describe()}")


async def _ensure_role(run: _Run, role: str, grants: Sequence[Grant], *,
                       exists: bool, users: Sequence[str]) -> None:
    """Make ``role`` exist with exactly ``grants``.

    A missing permission is granted, and a permission on the right range with the wrong
    type is granted again (etcd replaces the type of a permission on the same
    ``(key, range_end)``).  A permission on any other range must go, but our client has
    no ``RoleRevokePermission``: the role is then deleted and recreated with exactly the
    desired permissions, and granted again to the users who held it (etcd removes a
    deleted role from every user).  Those users lose the role for a moment, which only
    ever takes access away, never grants more.  Should the run die between the delete
    and the re-grants, a rerun restores the role of every user it manages (built-in and
    ``extra_users``); other holders would have to be granted it again by hand.
    ``users`` are all existing users.
    """
    client = run.client
    if not exists:
        await run.add_role(role)
    if role == ROOT:
        return  # etcd ignores the root role's permissions (see module docstring)
    want = {g.etcd_range(): g for g in grants}
    have = {(p.key, p.range_end): p for p in await auth.role_get(client, role)} if exists else {}
    extra = [p for rng, p in have.items() if rng not in want]
    if extra:
        holders = [u for u in users if role in await auth.user_get(client, u)]
        await auth.role_delete(client, role)
        await auth.role_add(client, role)
        dropped = "; ".join(_describe_permission(p) for p in extra)
        run.did(f"recreated role {role} to drop permissions it must not have ({dropped})")
        for grant in grants:
            await run.grant(grant)
        for user in holders:
            await run.grant_role(user, role)
        return
    for rng, grant in want.items():
        current = have.get(rng)
        if current is None or current.perm != grant.perm:
            await run.grant(grant)


def users_and_roles(cluster_name: str, extra_users: Mapping[str, str] = _NO_USERS
                    ) -> tuple[dict[str, str], dict[str, list[Grant]]]:
    """:func:`desired_auth` plus ``extra_users``; ValueError for a bad name or extra user.

    Also the check the CLI runs before it touches anything.
    """
    users, roles = desired_auth(cluster_name)
    for name, role in extra_users.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"extra user {name!r}: the name must be a non-empty string")
        if role not in roles:
            raise ValueError(f"extra user {name!r}: unknown role {role!r} "
                             f"(one of {', '.join(roles)})")
        if users.get(name, role) != role:
            raise ValueError(f"extra user {name!r}: it is a built-in user with role "
                             f"{users[name]!r}, not {role!r}")
        users[name] = role
    return users, roles


async def etcdinit(client: EtcdClient, *, cluster_name: str,
                   extra_users: Mapping[str, str] = _NO_USERS,
                   on_action: Callable[[str], None] | None = None) -> list[str]:
    """Create the users, roles and permissions of dropin facts §3, then enable auth.

    ``client`` must be able to administer etcd: any client while auth is off, a user
    with the ``root`` role (client certificate CN ``root`` or ``admin-<cluster>``) once
    it is on.  Returns the actions taken, in order, as sentences; an empty list means
    etcd was already fully initialised.  Each action is also reported as it is taken:
    to ``on_action`` if given, else logged at info level (so the actions of a run that
    fails half-way are not lost).  Raises ValueError for an invalid cluster name
    or extra user, :class:`EtcdPermissionDenied` when the client lacks the root role,
    and other :class:`EtcdError` subclasses for etcd failures (a rerun completes the
    work: every step is idempotent).
    """
    users, roles = users_and_roles(cluster_name, extra_users)
    run = _Run(client, on_action)
    enabled = await auth.auth_status(client)
    try:
        existing_users = await auth.user_list(client)
        existing_roles = set(await auth.role_list(client))
    except EtcdPermissionDenied as exc:
        raise EtcdPermissionDenied(
            "authentication is enabled and this client's etcd user lacks the root role: "
            "run etcdinit with the root (or admin-<cluster>) client certificate "
            f"({exc})") from None

    # Roles first: a role must exist before it can be granted to a user.
    for role, grants in roles.items():
        await _ensure_role(run, role, grants, exists=role in existing_roles,
                           users=existing_users)

    for user, role in users.items():
        if user in existing_users:
            held = await auth.user_get(client, user)
        else:
            await run.add_user(user)
            held = await auth.user_get(client, user)  # a concurrent run may have granted it
        if role not in held:
            await run.grant_role(user, role)
        others = sorted(set(held) - {role})
        if others:
            # Not revoked: etcdinit takes away nothing but our own roles' permissions (a
            # role someone granted on purpose must survive a re-run).  Say so loudly.
            log.warning("etcdinit: user %s also holds role(s) %s, which etcdinit does not "
                        "grant; revoke them with 'etcdctl user revoke-role' if unintended",
                        user, ", ".join(others))

    # Last: from here on only users with the root role can administer etcd.
    if not enabled:
        await auth.auth_enable(client)
        run.did("enabled authentication")
    return run.actions
