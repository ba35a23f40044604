"""Test harness: real etcd processes (single node, 3-member clusters, TLS, auth) and a
throw-away TLS PKI. Fixtures built on it live in ``tests/conftest.py``.

Import from here (``from harness import EtcdServer, make_pki``: ``tests/`` has no
``__init__.py``, so pytest puts ``tests/`` itself on ``sys.path``); the submodules are
:mod:`harness.etcd` (processes, etcdctl, auth, client config) and
:mod:`harness.certs` (certificates).
"""

from .certs import (
    CA_VALIDITY,
    LEAF_VALIDITY,
    CertificateAuthority,
    ClientCert,
    Pki,
    TlsMaterial,
    make_other_ca,
    make_pki,
    read_not_after,
)
from .etcd import (
    CLUSTER_TIMING,
    DEFAULT_START_TIMEOUT,
    ETCD_BIN_ENV,
    ETCDCTL_BIN_ENV,
    FAST_ARGS,
    STANDALONE_TIMING,
    EtcdCluster,
    EtcdctlError,
    EtcdError,
    EtcdFactory,
    EtcdNotFound,
    EtcdServer,
    EtcdStartError,
    Permission,
    assume_auth,
    binary_version,
    disable_auth,
    enable_auth,
    etcdctl_for,
    find_etcd_binary,
    find_etcdctl_binary,
    free_port,
    kill_all,
    write_client_config,
)

__all__ = [
    "CA_VALIDITY",
    "CLUSTER_TIMING",
    "DEFAULT_START_TIMEOUT",
    "ETCDCTL_BIN_ENV",
    "ETCD_BIN_ENV",
    "FAST_ARGS",
    "LEAF_VALIDITY",
    "STANDALONE_TIMING",
    "CertificateAuthority",
    "ClientCert",
    "EtcdCluster",
    "EtcdError",
    "EtcdFactory",
    "EtcdNotFound",
    "EtcdServer",
    "EtcdStartError",
    "EtcdctlError",
    "Permission",
    "Pki",
    "TlsMaterial",
    "assume_auth",
    "binary_version",
    "disable_auth",
    "enable_auth",
    "etcdctl_for",
    "find_etcd_binary",
    "find_etcdctl_binary",
    "free_port",
    "kill_all",
    "make_other_ca",
    "make_pki",
    "read_not_after",
    "write_client_config",
]
