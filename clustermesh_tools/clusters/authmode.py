"""Cilium's ``tls.authMode``: who a cluster authenticates as, and which users its etcd has.

Every cluster's etcd runs with ``--client-cert-auth``, so the CN of the client
certificate a connecting KVStoreMesh presents is its etcd user.  The mode of a cluster X
decides two things (``cilium-dropin-facts.md`` §5):

=============  ====================================  ==============================
mode           X's remote certificate (what X's      users.yaml of X's etcd
               KVStoreMesh presents to the others)   (the clustermesh-remote-users
                                                     ConfigMap)
=============  ====================================  ==============================
``legacy``     CN ``remote``                         none
``migration``  CN ``remote``                         ``remote-<peer>`` per peer
``cluster``    CN ``remote-X``                       ``remote-<peer>`` per peer
=============  ====================================  ==============================

plus ``remote-X`` itself when X runs KVStoreMesh, as upstream's ConfigMap does (every
user with role ``remote``).  ``remote`` always exists (etcdinit), so only one pairing
fails: a cluster in ``cluster`` mode connecting to one in ``legacy`` mode, whose etcd
has no ``remote-<peer>`` users.  Hence the order of a migration: every cluster to
``migration`` first (users created, certificates unchanged), then to ``cluster``.

This module holds the rules as plain functions; :mod:`clustermesh_tools.clusters.clusterdir`
applies them to cluster directories.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

__all__ = ["AUTH_MODES", "DEFAULT_AUTH_MODE", "USERS_CONFIGMAP", "USERS_FILE", "accepts",
           "check_mode", "refusal", "remote_cn", "remote_users", "users_configmap", "users_yaml"]

AUTH_MODES = ("legacy", "migration", "cluster")
#: Cilium's chart default (``clustermesh.apiserver.tls.authMode``).
DEFAULT_AUTH_MODE = "migration"
USERS_FILE = "users.yaml"
USERS_CONFIGMAP = "clustermesh-remote-users"
REMOTE_ROLE = "remote"


def check_mode(mode: str) -> str:
    if mode not in AUTH_MODES:
        raise ValueError(f"auth mode {mode!r} is not one of {', '.join(AUTH_MODES)}")
    return mode


def remote_cn(mode: str, cluster: str) -> str:
    """The CN of the client certificate ``cluster`` presents to the other clusters."""
    return f"remote-{cluster}" if check_mode(mode) == "cluster" else "remote"


def remote_users(mode: str, *, cluster: str, kvstoremesh: bool,
                 peers: Iterable[str]) -> list[dict[str, str]]:
    """The ``users`` of ``cluster``'s users.yaml; empty in legacy mode (no file)."""
    if check_mode(mode) == "legacy":
        return []
    names = ([f"remote-{cluster}"] if kvstoremesh else []) + [f"remote-{p}" for p in peers]
    return [{"name": name, "role": REMOTE_ROLE} for name in names]


def users_yaml(users: list[dict[str, str]], *, cluster: str) -> str:
    return (f"# etcd users of cluster {cluster}'s clustermesh-apiserver "
            "(--cluster-users-config-path; written by `clustermesh enable`/`connect`)\n"
            + yaml.safe_dump({"users": users}, sort_keys=False))


def users_configmap(text: str, *, cluster: str, namespace: str) -> dict[str, Any]:
    """The ConfigMap Cilium's chart mounts at /var/lib/cilium/etcd-config."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": USERS_CONFIGMAP, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "clustermesh",
                                    "clustermesh.io/cluster": cluster}},
            "data": {USERS_FILE: text}}


def accepts(src_mode: str, dst_mode: str) -> bool:
    """Whether a cluster in ``dst_mode`` has an etcd user for one in ``src_mode``."""
    return not (src_mode == "cluster" and dst_mode == "legacy")


def refusal(src: str, src_mode: str, dst: str, dst_mode: str) -> str | None:
    """Why ``src`` cannot authenticate to ``dst`` in these modes, or None."""
    if accepts(src_mode, dst_mode):
        return None
    return (f"{src} (authMode cluster) authenticates as remote-{src}, but {dst} uses "
            f"authMode {dst_mode}, whose etcd has no per-cluster users; "
            f"move {dst} to migration first (clustermesh connect ... --auth-mode migration)")
