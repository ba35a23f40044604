"""The cluster directory: everything ``clustermesh enable`` generates for one cluster.

``enable`` creates it, ``connect`` adds remote clusters to it (``disconnect`` removes
them), ``status``, ``check`` and ``troubleshoot`` read it, and the local mesh is made of
them (``local up`` = ``enable`` for each cluster + ``connect`` for each pair + start the
processes).  Layout::

    <dir>/
      cluster.yaml          metadata: name, id, maxConnectedClusters, service type,
                            kvstoremesh, authMode, the address/port other clusters
                            reach this cluster's etcd at, the CA, connected remotes
                            (with their authMode as of the last connect), and (local
                            mesh, or when reachable) the daemons' status addresses
      certs/
        ca.crt              the mesh CA (every cluster of a mesh shares it)
        ca.key              only when the CA was generated here (no --ca-dir/--shared-ca)
        server.crt/.key     etcd server certificate (serverAuth+clientAuth; SANs:
                            127.0.0.1, ::1, localhost, <name>.mesh.cilium.io,
                            *.mesh.cilium.io, clustermesh-apiserver.kube-system.svc,
                            the --address)
        admin.crt/.key      client, CN admin-<name>: clustermesh-apiserver and KVStoreMesh
        local.crt/.key      client, CN local-<name>: this cluster's Cilium agents
        remote.crt/.key     client, CN remote (remote-<name> in authMode cluster): what
                            this cluster's KVStoreMesh presents to the other clusters
      clustermesh/          KVStoreMesh's --clustermesh-config directory: one etcd
                            client YAML per remote cluster, named after it, plus
                            common-etcd-client{.crt,.key,-ca.crt} (the remote cert);
                            <remote>.etcd-client{.crt,.key,-ca.crt} when a remote uses
                            another CA
      etcd-admin.yaml       etcd client config of this cluster's etcd, as admin-<name>
      etcd-local.yaml       the same as local-<name> (what agents use)
      users.yaml            the etcd users of this cluster's clustermesh-apiserver
                            (--cluster-users-config-path): remote-<peer> per connected
                            peer (+ remote-<name> with KVStoreMesh); none in legacy
      users-configmap.yaml  the same as the clustermesh-remote-users ConfigMap, for
                            installs without a chart (ours and Cilium's render it
                            themselves from values.yaml: not in secrets.yaml, which
                            is applied before `helm install`, so Helm would refuse the
                            ConfigMap as owned by no release)
      values.yaml           Helm values for helm/clustermesh
      secrets.yaml          the TLS Secrets the chart expects (kubernetes.io/tls:
                            ca.crt, tls.crt, tls.key)

The auth mode (Cilium's ``tls.authMode``) and its rules are in
:mod:`clustermesh_tools.clusters.authmode`.

Every path inside the directory is written relative to it, so the directory can
be moved or mounted elsewhere.  ``connect`` and ``disconnect`` are in
:mod:`clustermesh_tools.clusters.pairing`.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clustermesh.clusterconfig import (
    DEFAULT_MAX_CONNECTED_CLUSTERS,
    validate_local_cluster,
)
from clustermesh.etcd.config import EtcdConfig, load_etcd_config
from clustermesh.pki import CertificateAuthority, write_atomic

from . import authmode
from .authmode import DEFAULT_AUTH_MODE, USERS_FILE

CLUSTER_FILE = "cluster.yaml"
CERTS = "certs"
CONFIG_DIR = "clustermesh"
SERVICE_TYPES = ("LoadBalancer", "NodePort", "ClusterIP")
MESH_DOMAIN = "mesh.cilium.io"
NAMESPACE = "kube-system"
SERVER_SECRET = "clustermesh-apiserver-server-cert"
ADMIN_SECRET = "clustermesh-apiserver-admin-cert"
REMOTE_SECRET = "clustermesh-apiserver-remote-cert"
LOCAL_SECRET = "clustermesh-apiserver-local-cert"
COMMON_CLIENT = "common-etcd-client"
# The leaf certificates of certs/ (a stem each), as the layout above describes them.
LEAVES = ("server", "admin", "local", "remote")
USERS_CONFIGMAP_FILE = "users-configmap.yaml"


class ClusterDirError(ValueError):
    """A problem the user must fix; the message says what and how."""


@dataclass
class Remote:
    name: str
    id: int
    address: str
    port: int
    own_tls: bool = False  # <name>.etcd-client.* instead of the common remote cert
    auth_mode: str = "legacy"  # the remote's mode as of the last connect (older: legacy)


@dataclass
class ClusterDir:
    path: Path
    name: str
    id: int
    max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS
    service_type: str = "NodePort"
    kvstoremesh: bool = True
    auth_mode: str = DEFAULT_AUTH_MODE
    address: str = ""
    port: int = 2379
    # Client ports of the other members of the cluster's etcd at the same address (a
    # local mesh's multi-member etcd): every client config lists them all.
    extra_ports: list[int] = field(default_factory=list)
    ca_key: str = ""  # where the CA key is, if known (relative to path or absolute)
    # A CA rollover in progress (clustermesh_tools/clusters/rotation.py): the new CA's
    # key (its certificate beside it, .crt) and the phase ("trusted": both CAs trusted,
    # leaves still from the old one; "issuing": leaves from the new one).
    ca_next_key: str = ""
    ca_rollover: str = ""
    kvstoremesh_api: str = ""  # HOST:PORT of KVStoreMesh's status API, if reachable
    kvstoremesh_health: str = ""  # HOST:PORT of its /readyz
    apiserver_health: str = ""
    manifests_dir: str = ""  # the apiserver's manifests directory (local mesh)
    remotes: list[Remote] = field(default_factory=list)

    # ------------------------------------------------------------------ paths

    @property
    def certs(self) -> Path:
        return self.path / CERTS

    @property
    def config_dir(self) -> Path:
        return self.path / CONFIG_DIR

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.crt"

    def cert(self, stem: str) -> tuple[Path, Path]:
        return self.certs / f"{stem}.crt", self.certs / f"{stem}.key"

    def _recorded(self, path: str) -> Path | None:
        """A path cluster.yaml records (relative to the directory, or absolute)."""
        return None if not path else self.path / path  # an absolute one replaces the base

    @property
    def ca_key_file(self) -> Path | None:
        return self._recorded(self.ca_key)

    @property
    def ca_next_key_file(self) -> Path | None:
        return self._recorded(self.ca_next_key)

    @property
    def remote_cn(self) -> str:
        """Who this cluster's KVStoreMesh authenticates as to the other clusters."""
        return authmode.remote_cn(self.auth_mode, self.name)

    @property
    def users_file(self) -> Path:
        return self.path / USERS_FILE

    def remote_users(self) -> list[dict[str, str]]:
        """The entries of users.yaml (none in legacy mode)."""
        return authmode.remote_users(self.auth_mode, cluster=self.name,
                                     kvstoremesh=self.kvstoremesh,
                                     peers=[r.name for r in self.remotes])

    def etcd_config_file(self, user: str = "admin") -> Path:
        return self.path / f"etcd-{user}.yaml"

    def etcd_config(self, user: str = "admin") -> EtcdConfig:
        return load_etcd_config(self.etcd_config_file(user))

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    @property
    def endpoints(self) -> list[str]:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return [f"https://{host}:{port}" for port in (self.port, *self.extra_ports)]

    # ------------------------------------------------------------------ persistence

    def to_doc(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "maxConnectedClusters": self.max_connected_clusters,
            "serviceType": self.service_type,
            "kvstoremesh": self.kvstoremesh,
            "authMode": self.auth_mode,
            "address": self.address,
            "port": self.port,
            **({"extraPorts": self.extra_ports} if self.extra_ports else {}),
            "ca": {"cert": f"{CERTS}/ca.crt", "key": self.ca_key,
                   **({"next": {"key": self.ca_next_key, "phase": self.ca_rollover}}
                      if self.ca_rollover else {})},
            "kvstoremeshApi": self.kvstoremesh_api,
            "kvstoremeshHealth": self.kvstoremesh_health,
            "apiserverHealth": self.apiserver_health,
            "manifestsDir": self.manifests_dir,
            "remotes": [{"name": r.name, "id": r.id, "address": r.address, "port": r.port,
                         "ownTls": r.own_tls, "authMode": r.auth_mode}
                        for r in self.remotes],
        }

    def save(self) -> None:
        header = ("# clustermesh cluster directory (written by `clustermesh enable`, updated by\n"
                  "# `clustermesh connect`/`disconnect`); see\n"
                  "# clustermesh_tools/clusters/clusterdir.py for the layout.\n")
        write_atomic(self.path / CLUSTER_FILE,
                     header + yaml.safe_dump(self.to_doc(), sort_keys=False))
        self.write_values()
        self.write_users()
        self.write_secrets()

    @classmethod
    def load(cls, path: Path | str) -> ClusterDir:
        path = Path(path)
        file = path / CLUSTER_FILE
        try:
            doc = yaml.safe_load(file.read_text())
        except FileNotFoundError:
            raise ClusterDirError(f"{path}: not a cluster directory (no {CLUSTER_FILE}); "
                                  "create one with `clustermesh enable --output DIR`") from None
        except (OSError, yaml.YAMLError) as exc:
            raise ClusterDirError(f"{file}: cannot read: {exc}") from None
        if not isinstance(doc, dict) or "name" not in doc or "id" not in doc:
            raise ClusterDirError(f"{file}: not a cluster.yaml (needs name and id)")

        ca = doc.get("ca") or {}
        next_ca = ca.get("next") or {}

        def mode(entry: dict[str, Any], where: str) -> str:
            # Directories from before auth modes had no users.yaml: legacy.
            try:
                return authmode.check_mode(str(entry.get("authMode") or "legacy"))
            except ValueError as exc:
                raise ClusterDirError(f"{file}: {where}authMode: {exc}") from None

        return cls(
            path=path, name=str(doc["name"]), id=int(doc["id"]),
            max_connected_clusters=int(doc.get("maxConnectedClusters") or 255),
            service_type=str(doc.get("serviceType") or "NodePort"),
            kvstoremesh=bool(doc.get("kvstoremesh", True)),
            auth_mode=mode(doc, ""),
            address=str(doc.get("address") or ""), port=int(doc.get("port") or 2379),
            extra_ports=[int(p) for p in doc.get("extraPorts") or []],
            ca_key=str(ca.get("key") or ""),
            ca_next_key=str(next_ca.get("key") or ""),
            ca_rollover=str(next_ca.get("phase") or ""),
            kvstoremesh_api=str(doc.get("kvstoremeshApi") or ""),
            kvstoremesh_health=str(doc.get("kvstoremeshHealth") or ""),
            apiserver_health=str(doc.get("apiserverHealth") or ""),
            manifests_dir=str(doc.get("manifestsDir") or ""),
            remotes=[Remote(name=str(r["name"]), id=int(r["id"]), address=str(r["address"]),
                            port=int(r["port"]), own_tls=bool(r.get("ownTls")),
                            auth_mode=mode(r, f"remotes[{i}].{r['name']}."))
                     for i, r in enumerate(doc.get("remotes") or [])],
        )

    # ------------------------------------------------------------------ generated files

    def write_client_configs(self) -> None:
        for user in ("admin", "local"):
            doc = {"endpoints": self.endpoints, "trusted-ca-file": f"{CERTS}/ca.crt",
                   "cert-file": f"{CERTS}/{user}.crt", "key-file": f"{CERTS}/{user}.key"}
            write_atomic(self.etcd_config_file(user), yaml.safe_dump(doc, sort_keys=False))

    def helm_values(self) -> dict[str, Any]:
        clusters = []
        for r in self.remotes:
            entry: dict[str, Any] = {"name": r.name, "address": r.address, "port": r.port}
            if r.own_tls:
                stem = f"{r.name}.etcd-client"
                entry["tls"] = {
                    "cert": _b64(self.config_dir / f"{stem}.crt"),
                    "key": _b64(self.config_dir / f"{stem}.key"),
                    "caCert": _b64(self.config_dir / f"{r.name}.etcd-client-ca.crt"),
                }
            clusters.append(entry)
        values: dict[str, Any] = {
            "cluster": {"name": self.name, "id": self.id},
            "maxConnectedClusters": self.max_connected_clusters,
            "service": {"type": self.service_type},
            "kvstoremesh": {"enabled": self.kvstoremesh},
            "tls": {"serverSecret": SERVER_SECRET, "adminSecret": ADMIN_SECRET,
                    "remoteSecret": REMOTE_SECRET, "authMode": self.auth_mode},
            "clustermesh": {"config": {"enabled": True, "domain": MESH_DOMAIN,
                                       "clusters": clusters}},
        }
        if self.service_type == "NodePort":
            values["service"]["nodePort"] = self.port
        return values

    def write_values(self) -> None:
        header = (f"# Helm values for helm/clustermesh, cluster {self.name} (generated by\n"
                  "# `clustermesh enable`/`connect`). Install with:\n"
                  f"#   kubectl apply -f secrets.yaml && helm install clustermesh "
                  f"helm/clustermesh -n {NAMESPACE} -f values.yaml\n")
        write_atomic(self.path / "values.yaml",
                     header + yaml.safe_dump(self.helm_values(), sort_keys=False))

    def write_users(self) -> None:
        configmap = self.path / USERS_CONFIGMAP_FILE
        if self.auth_mode == "legacy":
            self.users_file.unlink(missing_ok=True)
            configmap.unlink(missing_ok=True)
            return
        text = authmode.users_yaml(self.remote_users(), cluster=self.name)
        write_atomic(self.users_file, text)
        write_atomic(configmap, yaml.safe_dump(authmode.users_configmap(
            text, cluster=self.name, namespace=NAMESPACE), sort_keys=False))

    def secrets(self) -> list[dict[str, Any]]:
        docs = []
        for secret, stem in ((SERVER_SECRET, "server"), (ADMIN_SECRET, "admin"),
                             (REMOTE_SECRET, "remote"), (LOCAL_SECRET, "local")):
            crt, key = self.cert(stem)
            docs.append({
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": secret, "namespace": NAMESPACE,
                             "labels": {"app.kubernetes.io/part-of": "clustermesh",
                                        "clustermesh.io/cluster": self.name}},
                "data": {"ca.crt": _b64(self.ca_file), "tls.crt": _b64(crt),
                         "tls.key": _b64(key)},
            })
        return docs

    def write_secrets(self) -> None:
        header = (f"# TLS Secrets of cluster {self.name} (generated by `clustermesh enable`):\n"
                  f"# {SERVER_SECRET} (etcd server), {ADMIN_SECRET} (CN admin-{self.name}),\n"
                  f"# {REMOTE_SECRET} (CN {self.remote_cn}), {LOCAL_SECRET} (CN "
                  f"local-{self.name}, for Cilium agents).\n")
        write_atomic(self.path / "secrets.yaml",
                     header + yaml.safe_dump_all(self.secrets(), sort_keys=False), 0o600)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# ---------------------------------------------------------------------------- enable


def _default_port(service_type: str) -> int:
    return 32379 if service_type == "NodePort" else 2379


def _load_or_create_ca(certs: Path, *, ca_dir: Path | None, shared_ca: Path | None,
                       shared_ca_key: Path | None) -> tuple[CertificateAuthority, str]:
    """The CA to issue with, and where its key is (as recorded in cluster.yaml)."""
    if ca_dir is not None and shared_ca is not None:
        raise ClusterDirError("--ca-dir and --shared-ca are alternatives: give one of them")
    if shared_ca is not None:
        key = shared_ca_key or shared_ca.with_suffix(".key")
        if not shared_ca.is_file():
            raise ClusterDirError(f"--shared-ca {shared_ca}: no such file")
        if not key.is_file():
            raise ClusterDirError(
                f"--shared-ca {shared_ca}: its private key {key} does not exist; "
                "pass it with --shared-ca-key FILE")
        try:
            ca = CertificateAuthority.load(shared_ca, key, dir=certs)
        except ValueError as exc:
            raise ClusterDirError(f"--shared-ca {shared_ca}: cannot load the CA: {exc}") from None
        return ca, str(key.resolve())
    if ca_dir is not None:
        cert, key = ca_dir / "ca.crt", ca_dir / "ca.key"
        if cert.exists() and key.exists():
            return CertificateAuthority.load(cert, key, dir=certs), str(key.resolve())
        if cert.exists() or key.exists():
            raise ClusterDirError(f"--ca-dir {ca_dir}: has only one of ca.crt and ca.key")
        created = CertificateAuthority(ca_dir, name="ca")
        created.dir = certs
        return created, str(key.resolve())
    ca = CertificateAuthority(certs, name="ca")
    return ca, f"{CERTS}/ca.key"


def server_sans(name: str, address: str) -> tuple[list[str], list[str]]:
    dns = ["localhost", f"{name}.{MESH_DOMAIN}", f"*.{MESH_DOMAIN}",
           "clustermesh-apiserver", f"clustermesh-apiserver.{NAMESPACE}.svc",
           f"clustermesh-apiserver.{NAMESPACE}.svc.cluster.local"]
    ips = ["127.0.0.1", "::1"]
    if address:
        try:
            ip = str(ipaddress.ip_address(address))
            if ip not in ips:
                ips.append(ip)
        except ValueError:
            if address not in dns:
                dns.append(address)
    return dns, ips


def enable(output: Path, *, name: str, cluster_id: int,
           max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS,
           service_type: str = "NodePort", kvstoremesh: bool = True,
           ca_dir: Path | None = None, shared_ca: Path | None = None,
           shared_ca_key: Path | None = None, address: str = "",
           port: int | None = None, auth_mode: str = DEFAULT_AUTH_MODE) -> ClusterDir:
    """Validate the cluster and write its directory (see the module docstring)."""
    validate_local_cluster(name=name, cluster_id=cluster_id,
                           max_connected_clusters=max_connected_clusters)
    authmode.check_mode(auth_mode)
    if service_type not in SERVICE_TYPES:
        raise ClusterDirError(f"service type {service_type!r} is not one of "
                              f"{', '.join(SERVICE_TYPES)}")
    if port is not None and not 0 < port < 65536:
        raise ClusterDirError(f"port {port} is not between 1 and 65535")
    output = Path(output)
    if (output / CLUSTER_FILE).exists():
        raise ClusterDirError(f"{output} already holds a cluster directory "
                              f"({(output / CLUSTER_FILE)}); choose another --output "
                              "or remove it first")
    if output.exists() and any(output.iterdir()):
        raise ClusterDirError(f"{output} exists and is not empty; choose an empty or new "
                              "--output directory")
    output.mkdir(parents=True, exist_ok=True)
    certs = output / CERTS
    ca, ca_key = _load_or_create_ca(certs, ca_dir=ca_dir, shared_ca=shared_ca,
                                    shared_ca_key=shared_ca_key)
    if ca.ca_file != certs / "ca.crt":
        write_atomic(certs / "ca.crt", Path(ca.ca_file).read_bytes())
    address = address or f"{name}.{MESH_DOMAIN}"
    cdir = ClusterDir(path=output, name=name, id=cluster_id,
                      max_connected_clusters=max_connected_clusters,
                      service_type=service_type, kvstoremesh=kvstoremesh,
                      auth_mode=auth_mode, address=address,
                      port=port or _default_port(service_type), ca_key=ca_key)
    cdir.config_dir.mkdir()
    for stem in LEAVES:
        issue_leaf(cdir, ca, stem)
    write_atomic(cdir.config_dir / f"{COMMON_CLIENT}-ca.crt", cdir.ca_file.read_bytes())
    cdir.write_client_configs()
    cdir.save()
    return cdir


def issue_leaf(d: ClusterDir, ca: CertificateAuthority, stem: str) -> None:
    """``certs/<stem>.crt``/``.key`` of ``d`` (one of :data:`LEAVES`) from ``ca``: what
    ``enable`` issues and ``rotate-certs`` issues again."""
    if stem == "server":
        dns, ips = server_sans(d.name, d.address)
        ca.issue_server("clustermesh-apiserver", dns_names=dns, ips=ips, stem="server")
    elif stem == "remote":
        issue_remote_cert(d, ca)
    elif stem in ("admin", "local"):
        ca.issue_client(f"{stem}-{d.name}", stem=stem)
    else:
        raise ValueError(f"no leaf certificate {stem!r} (one of {', '.join(LEAVES)})")


def issue_remote_cert(d: ClusterDir, ca: CertificateAuthority) -> None:
    """certs/remote.* with the CN of d's auth mode, and its copy in the config directory
    as the common client certificate (as the chart projects the remote-cert Secret)."""
    ca.issue_client(d.remote_cn, stem="remote")
    crt, key = d.cert("remote")
    write_atomic(d.config_dir / f"{COMMON_CLIENT}.crt", crt.read_bytes())
    write_atomic(d.config_dir / f"{COMMON_CLIENT}.key", key.read_bytes(), 0o600)
