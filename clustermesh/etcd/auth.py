"""Administering etcd's authentication: users, roles, permissions, auth on and off.

The ``Auth`` service calls an administrator (etcdinit, the cluster users manager,
tests) makes, as functions of the :class:`~clustermesh.etcd.client.EtcdClient` they
go through: ``await auth.user_add(client, "bob")``.  They take the client's one
call path (:meth:`~clustermesh.etcd.connection.EtcdConnection.call`), so they fail
over and refresh tokens like every other request.  Authenticating *as* a user is
not here: the client does that itself from its configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .client import prefix_range_end
from .errors import EtcdAuthError, EtcdError, EtcdPermissionDenied
from .pb import auth_pb2, rpc_pb2

if TYPE_CHECKING:
    from .client import EtcdClient


@dataclass(frozen=True, slots=True)
class Permission:
    """One permission of a role: ``perm`` on the keys from ``key`` to ``range_end``."""

    key: bytes
    range_end: bytes
    perm: str  # "read" | "write" | "readwrite"


_PERM_TYPES = {
    "read": auth_pb2.Permission.READ,
    "write": auth_pb2.Permission.WRITE,
    "readwrite": auth_pb2.Permission.READWRITE,
}
_PERM_NAMES = {v: k for k, v in _PERM_TYPES.items()}


async def auth_enable(client: EtcdClient) -> None:
    await client.call("auth", "AuthEnable", rpc_pb2.AuthEnableRequest())


async def auth_status(client: EtcdClient) -> bool:
    """Whether auth is enabled (etcd 3.5 asks AuthStatus; 3.4 is probed)."""
    try:
        resp = await client.call("auth", "AuthStatus", rpc_pb2.AuthStatusRequest())
        return resp.enabled
    except EtcdError as exc:
        # etcd 3.5 answers AuthStatus only to root while auth is on: anyone else gets
        # "user name is empty" (no token) or "permission denied", which means "on".
        if isinstance(exc, EtcdPermissionDenied) or "user name is empty" in str(exc):
            return True
        if "UNIMPLEMENTED" not in str(exc):
            raise
    # etcd 3.4 has no AuthStatus. Ask it to authenticate the empty user name, which
    # cannot exist: "authentication is not enabled" when off, "authentication failed"
    # when on, whoever asks (a UserList probe would succeed for root with auth on).
    try:
        await client.call("auth", "Authenticate",
                          rpc_pb2.AuthenticateRequest(name="", password=""))
    except EtcdAuthError:
        return True
    except EtcdError as exc:
        if "authentication is not enabled" in str(exc):
            return False
        raise
    raise EtcdError("etcd accepted an empty user name: cannot tell whether auth is on",
                    endpoint=client.endpoint)


async def user_add(client: EtcdClient, name: str, password: str | None = None) -> None:
    """Add a user; without a password it can only authenticate by client certificate."""
    request = rpc_pb2.AuthUserAddRequest(
        name=name, password=password or "",
        options=auth_pb2.UserAddOptions(no_password=password is None),
    )
    await client.call("auth", "UserAdd", request)


async def user_get(client: EtcdClient, name: str) -> list[str]:
    """The roles granted to ``name``."""
    resp = await client.call("auth", "UserGet", rpc_pb2.AuthUserGetRequest(name=name))
    return list(resp.roles)


async def user_list(client: EtcdClient) -> list[str]:
    return list((await client.call("auth", "UserList", rpc_pb2.AuthUserListRequest())).users)


async def user_delete(client: EtcdClient, name: str) -> None:
    await client.call("auth", "UserDelete", rpc_pb2.AuthUserDeleteRequest(name=name))


async def user_grant_role(client: EtcdClient, user: str, role: str) -> None:
    await client.call("auth", "UserGrantRole",
                      rpc_pb2.AuthUserGrantRoleRequest(user=user, role=role))


async def user_revoke_role(client: EtcdClient, user: str, role: str) -> None:
    await client.call("auth", "UserRevokeRole",
                      rpc_pb2.AuthUserRevokeRoleRequest(name=user, role=role))


async def role_add(client: EtcdClient, name: str) -> None:
    await client.call("auth", "RoleAdd", rpc_pb2.AuthRoleAddRequest(name=name))


async def role_get(client: EtcdClient, name: str) -> list[Permission]:
    resp = await client.call("auth", "RoleGet", rpc_pb2.AuthRoleGetRequest(role=name))
    return [Permission(key=p.key, range_end=p.range_end, perm=_PERM_NAMES[p.permType])
            for p in resp.perm]


async def role_list(client: EtcdClient) -> list[str]:
    return list((await client.call("auth", "RoleList", rpc_pb2.AuthRoleListRequest())).roles)


async def role_delete(client: EtcdClient, name: str) -> None:
    await client.call("auth", "RoleDelete", rpc_pb2.AuthRoleDeleteRequest(role=name))


async def role_grant_permission(client: EtcdClient, role: str, *, key: bytes, perm: str,
                                prefix: bool = False, range_end: bytes = b"") -> None:
    """Grant ``perm`` ("read", "write", "readwrite") on a key, a prefix or a range."""
    if perm not in _PERM_TYPES:
        raise ValueError(f"unknown permission {perm!r}: use read, write or readwrite")
    end = prefix_range_end(key) if prefix else range_end
    permission = auth_pb2.Permission(permType=_PERM_TYPES[perm], key=key, range_end=end)
    await client.call("auth", "RoleGrantPermission",
                      rpc_pb2.AuthRoleGrantPermissionRequest(name=role, perm=permission))
