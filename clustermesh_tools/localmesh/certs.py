"""``clustermesh local rotate-certs``: rotation on every cluster of the local mesh.

The directories change as ``clustermesh rotate-certs`` changes them
(:mod:`clustermesh_tools.clusters.rotation`), for every cluster at once; then what a
person would do on real clusters is done here:

* the etcds that must re-read ``--trusted-ca-file`` (``--new-ca begin`` and
  ``finish``) are restarted one cluster at a time, one member at a time: each member
  must answer with a leader before the next one stops, and every KVStoreMesh must have
  every remote ready again before the next cluster's turn.  With ``--etcd-members 3``
  the clients fail over to the other members meanwhile; with one member they wait for
  it (a second or so);
* when client certificates or trusted CAs changed, the command returns only once the
  daemons have re-read them: they read their TLS files every
  :data:`~clustermesh.etcd.connection.TLS_RELOAD_INTERVAL` seconds, and a read that met
  a half-written pair is retried one period later, after the files were complete, so
  one period (plus the reconnection) after the last write every daemon holds the new
  files.  The next phase of a CA rollover may start then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from clustermesh.etcd.connection import TLS_RELOAD_INTERVAL
from clustermesh_tools.clusters.rotation import Rotation, rotate_certs

from .errors import LocalMeshError
from .mesh import LocalCluster, LocalMesh
from .startup import wait_member

__all__ = ["rotate_mesh_certs"]

Say = Callable[[str], None]
# After the last write: one reload period, and the reconnection with the new files.
_RELOAD_WAIT = TLS_RELOAD_INTERVAL + 3.0


def _restart_etcd(mesh: LocalMesh, c: LocalCluster, *, timeout: float, say: Say) -> None:
    for name, (port, _) in c.etcd_member_ports.items():
        key = f"{c.name}/{name}"
        result = mesh.restart_process(key)
        rec = mesh.processes[key]
        asyncio.run(wait_member(c, port, rec, timeout=timeout))
        say(f"  restarted {key} ({result}, now pid {rec.pid}): it reads --trusted-ca-file "
            "only at start")
    mesh.wait_ready(timeout=timeout, say=lambda _: None)


def rotate_mesh_certs(mesh: LocalMesh, *, components: Sequence[str], new_ca: str | None,
                      timeout: float, say: Say = print) -> Rotation:
    """Rotate (or run a CA rollover phase) on every cluster of ``mesh``, restart what
    must re-read its CA and wait until the daemons use the new files (module doc)."""
    alive = mesh.running()
    down = [key for key, ok in alive.items() if not ok]
    if down:
        raise LocalMeshError(f"not every process of the mesh runs ({', '.join(down)}): "
                             "start them first (`clustermesh local restart`), so that the "
                             "rotation can be checked")
    result = rotate_certs([c.cluster_dir for c in mesh.clusters], components=components,
                          new_ca=new_ca)
    written = time.monotonic()
    for line in result.done:
        say(line)
    for i, name in enumerate(result.restart_etcd):
        try:
            _restart_etcd(mesh, mesh.cluster(name), timeout=timeout, say=say)
        except LocalMeshError as exc:
            left = result.restart_etcd[i:]
            raise LocalMeshError(
                f"{exc}\nthe certificate files are written; the etcd of {', '.join(left)} "
                "must still be restarted to re-read --trusted-ca-file: for each, `clustermesh "
                "local stop --cluster NAME --component etcd` then `clustermesh local "
                "restart --cluster NAME`") from None
    if result.reload:
        left = written + _RELOAD_WAIT - time.monotonic()
        if left > 0:
            say(f"waiting {left:.0f}s for the daemons to re-read their TLS files (every "
                f"{TLS_RELOAD_INTERVAL:g}s)")
            time.sleep(left)
    mesh.wait_ready(timeout=timeout, say=say)
    return result
