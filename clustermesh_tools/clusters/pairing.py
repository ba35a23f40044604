"""``clustermesh connect`` / ``disconnect``: two cluster directories, both directions.

Connecting A and B writes B's etcd client config into A's KVStoreMesh config directory
(and A's into B's), records each as a remote of the other, and rewrites both
directories' generated files (values.yaml, users.yaml, secrets.yaml), which list the
remotes.  It refuses what cannot work, saying why: the same name or ID twice in a mesh,
different maxConnectedClusters, and a pair of auth modes in which one cluster could not
authenticate to the other (:mod:`clustermesh_tools.clusters.authmode`).  Disconnecting undoes it:
both config files (and certificates issued for them) go, each stops listing the other,
and the generated files are rewritten (users.yaml without ``remote-<peer>``).

Clusters with the same CA share one client certificate per cluster (``common-etcd-client``,
its remote certificate).  With different CAs, A needs a certificate issued by B's CA
(``<B>.etcd-client.*``, CN as A's auth mode says), so B's CA key must be at hand.

``connect --auth-mode MODE`` also moves both clusters to MODE first: the way to migrate a
mesh (every cluster to ``migration``, then to ``cluster``).  The move is refused while
another remote of either cluster would be locked out by it, judged by the auth mode that
remote had at its last connect (a directory only knows what it was told).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from clustermesh.pki import CertificateAuthority, write_atomic

from . import authmode
from .clusterdir import COMMON_CLIENT, ClusterDir, ClusterDirError, Remote, issue_remote_cert

__all__ = ["check_connectable", "connect", "disconnect"]


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes().strip()).hexdigest()


def check_connectable(a: ClusterDir, b: ClusterDir) -> None:
    """Raise ClusterDirError if ``a`` and ``b`` cannot be in one mesh, saying why."""
    if a.name == b.name:
        raise ClusterDirError(
            f"both clusters are named {a.name!r} ({a.path}, {b.path}): cluster names must "
            "be unique in a mesh (the name keys every cache prefix, and KVStoreMesh ignores "
            "a remote named like its own cluster); re-run `clustermesh enable` with another "
            "--cluster-name for one of them")
    if a.id == b.id:
        raise ClusterDirError(
            f"clusters {a.name} and {b.name} both have cluster ID {a.id}: IDs must be unique "
            "in a mesh (identities are allocated from a range derived from the ID, and agents "
            "reject a second remote with the same ID); re-run `clustermesh enable` with "
            "another --cluster-id for one of them")
    if a.max_connected_clusters != b.max_connected_clusters:
        raise ClusterDirError(
            f"cluster {a.name} has maxConnectedClusters {a.max_connected_clusters} but "
            f"{b.name} has {b.max_connected_clusters}: every cluster of a mesh must use the "
            "same value (it decides how many identity bits hold the cluster ID, and agents "
            "reject a remote with a different value)")
    for x, y in ((a, b), (b, a)):
        for r in x.remotes:
            if r.name != y.name and r.id == y.id:
                raise ClusterDirError(
                    f"cluster {y.name} has ID {y.id}, which {r.name} (already connected to "
                    f"{x.name}) uses too: IDs must be unique in a mesh")
            if r.name == y.name and r.id != y.id:
                continue  # reconnecting after a re-enable: the entry is replaced


def _remote_config(endpoints: list[str], stem: str) -> str:
    listed = "".join(f"- {endpoint}\n" for endpoint in endpoints)
    return (f"endpoints:\n{listed}trusted-ca-file: {stem}-ca.crt\n"
            f"cert-file: {stem}.crt\nkey-file: {stem}.key\n")


def _connect_one(src: ClusterDir, dst: ClusterDir) -> Remote:
    """Write dst's remote config into src's config directory."""
    same_ca = _fingerprint(src.ca_file) == _fingerprint(dst.ca_file)
    own_tls = False
    stem = COMMON_CLIENT
    if not same_ca:
        key = dst.ca_key_file
        if key is None or not key.is_file():
            raise ClusterDirError(
                f"clusters {src.name} and {dst.name} use different CAs and the CA key of "
                f"{dst.name} is not available here, so no client certificate {dst.name}'s etcd "
                "would accept can be issued: enable every cluster with the same --ca-dir or "
                "--shared-ca")
        ca = CertificateAuthority.load(dst.ca_file, key, dir=src.config_dir)
        stem = f"{dst.name}.etcd-client"
        ca.issue_client(src.remote_cn, stem=stem)
        write_atomic(src.config_dir / f"{stem}-ca.crt", dst.ca_file.read_bytes())
        own_tls = True
    write_atomic(src.config_dir / dst.name, _remote_config(dst.endpoints, stem))
    remote = Remote(name=dst.name, id=dst.id, address=dst.address, port=dst.port,
                    own_tls=own_tls, auth_mode=dst.auth_mode)
    src.remotes = [r for r in src.remotes if r.name != dst.name] + [remote]
    src.remotes.sort(key=lambda r: r.name)
    src.save()
    return remote


def _mode_switch_problems(x: ClusterDir, mode: str, *, pair: str) -> list[str]:
    """Why ``x`` cannot move to ``mode`` while connecting to ``pair``, which is checked
    by the caller: its other remotes, as recorded at their last connect."""
    problems = []
    new_cn = authmode.remote_cn(mode, x.name)
    reissue = new_cn != x.remote_cn
    key = x.ca_key_file
    if reissue and (key is None or not key.is_file()):
        problems.append(f"the remote certificate of {x.name} must be re-issued with CN "
                        f"{new_cn}, but its CA key ({x.ca_key or 'not recorded'}) is not "
                        "available here")
    for r in x.remotes:
        if r.name == pair:
            continue
        for why in (authmode.refusal(x.name, mode, r.name, r.auth_mode),
                    authmode.refusal(r.name, r.auth_mode, x.name, mode)):
            if why:
                problems.append(f"{why} (the authMode of {r.name} as of its last connect "
                                f"with {x.name})")
        if reissue and r.own_tls:
            problems.append(
                f"{x.name} reaches {r.name} with a certificate of {r.name}'s CA, which only "
                f"a connect with {r.name}'s directory can re-issue: run `clustermesh connect "
                f"--source {x.path} --destination <{r.name}'s dir> --auth-mode {mode}`")
    return problems


def _set_auth_mode(x: ClusterDir, mode: str) -> None:
    """Move ``x`` to ``mode`` (checked by :func:`_mode_switch_problems`); saved by the
    caller.  The remote certificate is re-issued when its CN changes."""
    old_cn = x.remote_cn
    x.auth_mode = mode
    key = x.ca_key_file
    if x.remote_cn != old_cn and key is not None:
        issue_remote_cert(x, CertificateAuthority.load(x.ca_file, key, dir=x.certs))


def connect(a: ClusterDir, b: ClusterDir, *, auth_mode: str | None = None) -> None:
    """Connect both directions (each cluster's KVStoreMesh gets the other's config).

    With ``auth_mode``, both clusters move to that mode first (re-issuing their remote
    certificate if its CN changes), provided their other remotes still accept them;
    without it each keeps its own.  Refused when one cluster could not authenticate to
    the other (:func:`clustermesh_tools.clusters.authmode.accepts`).  users.yaml of both is
    rewritten with the new peer.
    """
    check_connectable(a, b)
    if auth_mode is not None:
        authmode.check_mode(auth_mode)
        problems = [*_mode_switch_problems(a, auth_mode, pair=b.name),
                    *_mode_switch_problems(b, auth_mode, pair=a.name)]
        if problems:
            raise ClusterDirError(f"cannot move {a.name} and {b.name} to authMode "
                                  f"{auth_mode}: " + "; ".join(problems))
    a_mode, b_mode = auth_mode or a.auth_mode, auth_mode or b.auth_mode
    for why in (authmode.refusal(a.name, a_mode, b.name, b_mode),
                authmode.refusal(b.name, b_mode, a.name, a_mode)):
        if why:
            raise ClusterDirError(f"cannot connect {a.name} and {b.name}: {why}")
    if auth_mode is not None:
        _set_auth_mode(a, auth_mode)
        _set_auth_mode(b, auth_mode)
    _connect_one(a, b)
    _connect_one(b, a)


def disconnect(a: ClusterDir, b: ClusterDir) -> bool:
    """Undo :func:`connect`, both directions: each cluster's KVStoreMesh config file for
    the other (and the client certificate issued for it by the other's CA) is removed,
    the other is no longer one of its remotes, and values.yaml, users.yaml and
    secrets.yaml are rewritten without it.  The auth modes stay as they are.

    Returns whether anything was connected (False: neither lists the other and no
    config file is left, nothing was changed).
    """
    if a.name == b.name:
        raise ClusterDirError(f"both directories are cluster {a.name!r} ({a.path}, "
                              f"{b.path}): a cluster is never connected to itself")
    connected = False
    for src, dst in ((a, b), (b, a)):
        stem = f"{dst.name}.etcd-client"
        files = [src.config_dir / dst.name,
                 *(src.config_dir / f"{stem}{suffix}" for suffix in (".crt", ".key", "-ca.crt"))]
        listed = any(r.name == dst.name for r in src.remotes)
        if not listed and not any(f.exists() for f in files):
            continue
        connected = True
        for f in files:
            f.unlink(missing_ok=True)
        src.remotes = [r for r in src.remotes if r.name != dst.name]
        src.save()
    return connected
