"""``clustermesh rotate-certs``: new leaf certificates, and a CA rollover in phases.

**Leaf rotation** (no ``--new-ca``) issues ``certs/server``, ``admin``, ``local`` and
``remote`` again (``--component`` picks some) from the CA that signs now, with the
names, SANs and CNs ``enable`` gave them (:func:`~.clusterdir.issue_leaf`), and rewrites
cluster.yaml, values.yaml and secrets.yaml.  Nothing restarts: the daemons re-read
their TLS files every 10 s and reconnect with the new ones, and etcd reads its server
certificate on every new connection.

**CA rollover** (``--new-ca PHASE``) is mesh-wide: a KVStoreMesh presents its remote
certificate to every other cluster's etcd and checks every remote's server
certificate against ``clustermesh/common-etcd-client-ca.crt``, so a phase may start
only when the previous one holds on *every* cluster of the mesh:

1. ``begin``: a new CA, beside the current CA's key (CN ``ca-<UTC time>``), and every
   directory trusts both: ``certs/ca.crt`` and ``common-etcd-client-ca.crt`` hold the
   old CA then the new one.  Clients pick the bundle up within 10 s; etcd reads
   ``--trusted-ca-file`` only at start, so every cluster's etcd must be restarted
   (one cluster at a time) before any certificate of the new CA is shown to it.
2. ``reissue``: every leaf from the new CA.  Both CAs are trusted everywhere, so each
   side accepts the other whether it still presents the old certificate or the new one.
3. ``finish``: only the new CA is trusted and cluster.yaml names its key; etcd must be
   restarted once more to stop trusting the old one.  Refused while a leaf of a given
   directory is not from the new CA.

The new CA's key goes where the current one is (the directory every cluster of the
mesh names in cluster.yaml's ``ca.key``), and a directory in the middle of a rollover
records it (``ca.next``), so the clusters of a mesh, given in one command or in
several, roll over to one CA.  What a directory cannot know — whether the clusters not
given have reached the phase — the result says as a note, as it says what must be
restarted and applied.  Certificates another CA issued (``<remote>.etcd-client.*``,
remotes with their own CA) only ``clustermesh connect`` with that cluster's directory
renews; they are listed, never touched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from clustermesh.pki import CertificateAuthority, write_atomic

from .clusterdir import COMMON_CLIENT, LEAVES, ClusterDir, ClusterDirError, issue_leaf

__all__ = ["PHASES", "Rotation", "rotate_certs"]

PHASES = ("begin", "reissue", "finish")
TRUSTED, ISSUING = "trusted", "issuing"  # ClusterDir.ca_rollover


@dataclass
class Rotation:
    """What :func:`rotate_certs` did and what is left to do."""

    done: list[str] = field(default_factory=list)  # one line per directory
    restart_etcd: list[str] = field(default_factory=list)  # clusters (re-read the CA)
    reload: bool = False  # client certificates or trusted CAs changed: daemons re-read
    notes: list[str] = field(default_factory=list)  # what was not done, and why
    next_phase: str | None = None  # of the CA rollover, once this one holds mesh-wide


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _trusted(d: ClusterDir) -> list[x509.Certificate]:
    """The CAs of ``certs/ca.crt``: the current one first (then the new one, mid-rollover)."""
    try:
        cas = x509.load_pem_x509_certificates(d.ca_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ClusterDirError(f"{d.ca_file}: cannot read the CA of cluster {d.name}: "
                              f"{exc}") from None
    return cas


def _key_file(d: ClusterDir, key: Path | None, what: str) -> Path:
    if key is None or not key.is_file():
        raise ClusterDirError(
            f"cluster {d.name}: {what} key ({key or 'not recorded in cluster.yaml'}) is not "
            f"available here, and rotation issues certificates with it; run the command "
            "where the mesh CA's key is")
    return key


def _load_ca(d: ClusterDir, key: Path, cert: Path) -> CertificateAuthority:
    """The CA of ``key`` and (the first certificate of) ``cert``, issuing into certs/."""
    try:
        ca = CertificateAuthority.load(cert, key, dir=d.certs)
    except (OSError, ValueError) as exc:
        raise ClusterDirError(f"cluster {d.name}: cannot load the CA {cert} / {key}: "
                              f"{exc}") from None
    if ca.private_key.public_key() != ca.certificate.public_key():
        raise ClusterDirError(f"cluster {d.name}: the CA key {key} does not belong to the "
                              f"CA certificate {cert}")
    return ca


def _current_ca(d: ClusterDir) -> CertificateAuthority:
    # certs/ca.crt starts with the current CA (a rollover appends the new one).
    return _load_ca(d, _key_file(d, d.ca_key_file, "the CA"), d.ca_file)


def _next_ca(d: ClusterDir) -> CertificateAuthority:
    key = _key_file(d, d.ca_next_key_file, "the new CA")
    return _load_ca(d, key, key.with_suffix(".crt"))


def _signing_ca(d: ClusterDir) -> CertificateAuthority:
    return _next_ca(d) if d.ca_rollover == ISSUING else _current_ca(d)


def _issued_by(cert_file: Path, ca: x509.Certificate) -> bool:
    try:
        x509.load_pem_x509_certificate(cert_file.read_bytes()).verify_directly_issued_by(ca)
    except Exception:  # unreadable, or InvalidSignature (no message), ValueError, TypeError
        return False
    return True


def _write_trust(d: ClusterDir, cas: Sequence[x509.Certificate]) -> None:
    """``certs/ca.crt`` and the remotes' trust of the same CA, as ``cas``."""
    bundle = b"".join(_pem(ca) for ca in cas)
    write_atomic(d.ca_file, bundle)
    write_atomic(d.config_dir / f"{COMMON_CLIENT}-ca.crt", bundle)


def _foreign_ca_notes(d: ClusterDir, *, rollover: bool) -> list[str]:
    notes = []
    for r in d.remotes:
        if not r.own_tls:
            continue
        fix = f"clustermesh connect --source {d.path} --destination <{r.name}'s dir>"
        if rollover:
            notes.append(f"{r.name} has its own CA and reaches {d.name} with a certificate of "
                         f"{d.name}'s CA, which only `{fix}` re-issues: run it after "
                         "`--new-ca reissue` and before `--new-ca finish`")
        else:
            notes.append(f"{d.config_dir / r.name}.etcd-client.crt is issued by {r.name}'s "
                         f"CA and was not renewed: `{fix}` renews it")
    return notes


def _same_mesh_ca(dirs: Sequence[ClusterDir]) -> None:
    first = _fingerprint(_trusted(dirs[0])[0])
    for d in dirs[1:]:
        if _fingerprint(_trusted(d)[0]) != first:
            raise ClusterDirError(
                f"clusters {dirs[0].name} and {d.name} have different CAs: a CA rollover "
                "moves the clusters of one CA together; run it for each CA's clusters")


def _leaves(d: ClusterDir, ca: CertificateAuthority, components: Sequence[str],
            out: Rotation) -> None:
    for stem in components:
        issue_leaf(d, ca, stem)
    d.save()
    not_after = min(x509.load_pem_x509_certificate(d.cert(s)[0].read_bytes())
                    .not_valid_after_utc for s in components)
    out.done.append(f"{d.name}: {', '.join(components)} re-issued by CA {ca.name!r} "
                    f"(valid until {not_after:%Y-%m-%d})")
    out.reload = out.reload or any(s != "server" for s in components)


def _begin(dirs: Sequence[ClusterDir], out: Rotation) -> None:
    _same_mesh_ca(dirs)
    pending = {d.ca_next_key_file for d in dirs if d.ca_rollover}
    if len(pending) > 1:
        raise ClusterDirError("these clusters are rolling over to different new CAs ("
                              + ", ".join(sorted(map(str, pending))) + "): finish one first")
    if pending:
        key = _key_file(dirs[0], pending.pop(), "the new CA")
        new = x509.load_pem_x509_certificate(key.with_suffix(".crt").read_bytes())
    else:
        current = _current_ca(dirs[0])
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        home = current.key_file.parent
        name = f"ca-{stamp}"
        for n in range(2, 100):
            if not (home / f"{name}.key").exists():
                break
            name = f"ca-{stamp}-{n}"
        ca = CertificateAuthority(home, name=name, organization=current.organization)
        key, new = ca.key_file, ca.certificate
        out.done.append(f"new CA {name!r}: {ca.ca_file} (key {key})")
    for d in dirs:
        if d.ca_rollover == ISSUING:
            out.done.append(f"{d.name}: already issues from the new CA (run --new-ca finish)")
            continue
        _write_trust(d, [_trusted(d)[0], new])
        d.ca_next_key, d.ca_rollover = str(key.resolve()), TRUSTED
        d.save()
        out.done.append(f"{d.name}: trusts the old and the new CA")
        out.restart_etcd.append(d.name)
        out.notes += _foreign_ca_notes(d, rollover=True)
    out.reload = bool(out.restart_etcd)
    out.next_phase = "reissue"


def _reissue(dirs: Sequence[ClusterDir], components: Sequence[str], out: Rotation) -> None:
    for d in dirs:
        if not d.ca_rollover:
            raise ClusterDirError(f"cluster {d.name} has not begun a CA rollover: run "
                                  f"`clustermesh rotate-certs --cluster-dir {d.path} "
                                  "--new-ca begin` and restart its etcd first")
    if len({d.ca_next_key_file for d in dirs}) > 1:
        raise ClusterDirError("these clusters are rolling over to different new CAs")
    cas = [_next_ca(d) for d in dirs]
    for d, ca in zip(dirs, cas, strict=True):
        d.ca_rollover = ISSUING
        _leaves(d, ca, components, out)
    out.next_phase = "finish"


def _finish(dirs: Sequence[ClusterDir], out: Rotation) -> None:
    for d in dirs:
        if d.ca_rollover != ISSUING:
            raise ClusterDirError(
                f"cluster {d.name} " + ("has not begun a CA rollover" if not d.ca_rollover
                                        else "still issues from the old CA")
                + ": run --new-ca " + ("begin" if not d.ca_rollover else "reissue") + " first")
        new = _next_ca(d)
        old = [s for s in LEAVES if not _issued_by(d.cert(s)[0], new.certificate)]
        if old:
            raise ClusterDirError(f"cluster {d.name}: {', '.join(f'{s}.crt' for s in old)} "
                                  "not issued by the new CA: run --new-ca reissue first")
    old_keys = set()
    for d in dirs:
        new = _next_ca(d)
        old_keys.add(str(d.ca_key_file))
        _write_trust(d, [new.certificate])
        d.ca_key, d.ca_next_key, d.ca_rollover = d.ca_next_key, "", ""
        d.save()
        out.done.append(f"{d.name}: trusts only the new CA {new.name!r}")
        out.restart_etcd.append(d.name)
    out.reload = True
    out.notes.append(f"the old CA key ({', '.join(sorted(old_keys))}) is no longer used by "
                     "these clusters: remove it once every cluster of the mesh has finished")


def rotate_certs(dirs: Sequence[ClusterDir], *, components: Sequence[str] = LEAVES,
                 new_ca: str | None = None) -> Rotation:
    """Rotate ``components`` of every directory, or run CA rollover phase ``new_ca``
    (see the module docstring).  Raises ClusterDirError, saying why, before writing
    anything a check can refuse."""
    if not dirs:
        raise ClusterDirError("no cluster directory given")
    unknown = [c for c in components if c not in LEAVES]
    if unknown:
        raise ClusterDirError(f"no certificate {', '.join(unknown)} (one of "
                              f"{', '.join(LEAVES)})")
    out = Rotation()
    if new_ca is None:
        cas = [_signing_ca(d) for d in dirs]  # every key checked before anything is written
        for d, ca in zip(dirs, cas, strict=True):
            _leaves(d, ca, components, out)
            if "remote" in components:
                out.notes += _foreign_ca_notes(d, rollover=False)
    elif new_ca == "begin":
        _begin(dirs, out)
    elif new_ca == "reissue":
        _reissue(dirs, components, out)
    elif new_ca == "finish":
        _finish(dirs, out)
    else:
        raise ClusterDirError(f"--new-ca {new_ca}: one of {', '.join(PHASES)}")
    return out
