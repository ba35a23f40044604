"""The start-up steps of ``local up`` that talk to the etcds.

* :func:`init_etcds` — once every etcd answers, give it etcdinit's users and roles
  (auth on);
* :func:`wait_member` — after a member was restarted (certificate rotation): it
  answers and knows a leader;
* :func:`wait_remote_access` — before any KVStoreMesh starts: every etcd holds
  etcdinit's users and the ``users.yaml`` users (created by the apiservers' users
  management), each with its role, and the cluster-config its apiserver publishes.
  A KVStoreMesh connecting earlier meets a permission error or a missing
  cluster-config, and counts a connection failure (upstream's
  ``remote_cluster_failures``) that its status shows from then on.

Both check through each cluster's admin client and fail with the log tail of the
process that exited or did not get there in time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clustermesh.etcd import auth as etcd_auth
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.errors import EtcdError
from clustermesh.keys import cluster_config_key
from clustermesh_tools.clusters.probes import log_tail

from . import procs
from .errors import LocalMeshError
from .procs import ProcRecord

if TYPE_CHECKING:
    from clustermesh_tools.clusters.clusterdir import ClusterDir

    from .mesh import LocalCluster

__all__ = ["init_etcds", "wait_member", "wait_remote_access"]

_POLL = 0.1


def _admin(cdir: ClusterDir, purpose: str, *, port: int | None = None) -> EtcdClient:
    """A client of ``cdir``'s etcd as admin: every member, or only the one on ``port``."""
    config = cdir.etcd_config("admin")
    if port is not None:
        config = dataclasses.replace(
            config, endpoints=tuple(e for e in config.endpoints if e.port == port))
    return EtcdClient(config, name=f"{cdir.name} {purpose}",
                      dial_timeout=2.0, request_timeout=10.0, tls_reload_interval=0)


def _check_alive(processes: Mapping[str, ProcRecord], *keys: str) -> None:
    for key in keys:
        rec = processes[key]
        if procs.exited_early(rec):
            raise LocalMeshError(f"{key} exited during start-up:\n{log_tail(Path(rec.log))}")


async def init_etcds(clusters: Sequence[LocalCluster], processes: Mapping[str, ProcRecord],
                     *, timeout: float) -> None:
    """etcdinit on every etcd, retried until it answers (at most ``timeout`` s each)."""
    from apiserver.etcdinit import etcdinit

    async def one(c: LocalCluster) -> None:
        cdir = c.cluster_dir
        deadline = time.monotonic() + timeout
        rec = processes[f"{c.name}/etcd"]
        last: Exception | None = None
        while True:
            _check_alive(processes, rec.name)
            try:
                async with _admin(cdir, "init") as client:
                    await etcdinit(client, cluster_name=c.name, on_action=lambda _: None)
                    return
            except Exception as exc:  # etcd not up yet
                last = exc
            if time.monotonic() > deadline:
                raise LocalMeshError(f"etcd of {c.name} not ready after {timeout:g}s "
                                     f"({last}):\n{log_tail(Path(rec.log))}")
            await asyncio.sleep(0.2)

    await asyncio.gather(*(one(c) for c in clusters))


async def wait_member(c: LocalCluster, port: int, rec: ProcRecord, *,
                      timeout: float) -> None:
    """Until the member of ``c`` on ``port`` (process ``rec``) answers a Status call and
    knows a leader."""
    cdir = c.cluster_dir
    deadline = time.monotonic() + timeout
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        _check_alive({rec.name: rec}, rec.name)
        try:
            async with _admin(cdir, "etcd restart", port=port) as client:
                if (await client.status()).leader:
                    return
                last = "no leader yet"
        except EtcdError as exc:  # not listening yet
            last = exc
        await asyncio.sleep(0.2)
    raise LocalMeshError(f"etcd of {c.name} on port {port} not back after {timeout:g}s "
                         f"({last}):\n{log_tail(Path(rec.log))}")


async def _missing(client: EtcdClient, users: Mapping[str, str], key: bytes,
                   confirmed: set[str]) -> list[str]:
    """What ``client``'s etcd still lacks: users (or their role), the cluster-config.
    ``confirmed`` remembers the users already seen with their role."""
    try:
        present = set(await etcd_auth.user_list(client))
        for name, role in users.items():
            if name in present and name not in confirmed and \
                    role in await etcd_auth.user_get(client, name):
                confirmed.add(name)
        config = await client.get(key)
    except EtcdError as exc:
        return [str(exc)]
    lacking = [f"user {name} ({f'without role {role}' if name in present else 'missing'})"
               for name, role in users.items() if name not in confirmed]
    if config is None:
        lacking.append(f"{key.decode()} (not written yet)")
    return lacking


async def wait_remote_access(clusters: Sequence[LocalCluster],
                             processes: Mapping[str, ProcRecord], *, timeout: float) -> None:
    """Until a KVStoreMesh's first connection to any cluster can succeed (module doc)."""
    from apiserver.etcdinit_auth import users_and_roles

    async def one(c: LocalCluster) -> None:
        cdir = c.cluster_dir
        users, _ = users_and_roles(c.name, {u["name"]: u["role"]
                                            for u in cdir.remote_users()})
        key = cluster_config_key(c.name).encode()
        deadline = time.monotonic() + timeout
        confirmed: set[str] = set()
        async with _admin(cdir, "users check") as client:
            while True:
                _check_alive(processes, f"{c.name}/etcd", f"{c.name}/apiserver")
                lacking = await _missing(client, users, key, confirmed)
                if not lacking:
                    return
                if time.monotonic() > deadline:
                    log = processes[f"{c.name}/apiserver"].log
                    raise LocalMeshError(
                        f"etcd of {c.name} still lacks {', '.join(lacking)} after "
                        f"{timeout:g}s (KVStoreMesh not started yet); its apiserver's "
                        f"log:\n{log_tail(Path(log))}")
                await asyncio.sleep(_POLL)

    await asyncio.gather(*(one(c) for c in clusters))
