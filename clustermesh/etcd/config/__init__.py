"""etcd client configuration files, in the format of etcd's ``client/v3/yaml``.

Cilium describes every etcd it talks to with one small YAML file: the local etcd
(``--kvstore-opt etcd.config=FILE``) and each remote cluster (one file per
cluster in the ``--clustermesh-config`` directory, the file name being the
cluster name)::

    endpoints:
    - https://cluster1.mesh.cilium.io:2379
    trusted-ca-file: /var/lib/cilium/clustermesh/cluster1-ca.crt
    cert-file: /var/lib/cilium/clustermesh/cluster1.crt
    key-file: /var/lib/cilium/clustermesh/cluster1.key

This package turns such a file into an immutable :class:`EtcdConfig`, and reads
the TLS files it names into a :class:`TlsBytes`.  Nothing here opens a
connection.  Its modules: :mod:`.model` (:class:`EtcdConfig` and its errors),
:mod:`.endpoint` (endpoint URLs), :mod:`.yamlfile` (reading and parsing the YAML
file; recognising one in a config directory) and :mod:`.tls` (the TLS files); the
``--kvstore-opt`` flag is parsed by :func:`clustermesh.flags.go_map`.  Import the public names from
the package itself (``from clustermesh.etcd.config import load_etcd_config``).

Design
------

* **Same reading as etcd.**  etcd converts the YAML to JSON and decodes it with
  Go's ``encoding/json``, so keys match case-insensitively, a null value
  (``key:`` with nothing after it) means "not set", an empty string means "not
  set" too, and a plain integer given where a string is expected
  (``password: 123456``) is taken as written.  Booleans must be YAML booleans.
* **Which transport** is decided exactly as etcd's client decides it: an
  ``https://`` endpoint uses TLS, an ``http://`` endpoint plain text.  An
  endpoint written without a scheme (``host:2379``, which etcd accepts) uses TLS
  unless ``insecure-transport`` is true.  ``insecure-transport`` means what it
  means in etcd's YAML loader: "do not set up TLS from this file".  Because etcd
  would still speak TLS to an ``https://`` endpoint (without the configured
  certificates), ``insecure-transport: true`` together with ``https://``
  endpoints is rejected as contradictory.  TLS files configured for ``http://``
  endpoints are not used (as in etcd) and produce a warning.
* **Ports are required.**  etcd has no default port (gRPC would silently dial
  443), so ``https://host`` is an error that suggests ``https://host:2379``.
  Every configuration accepted here therefore means the same thing to Cilium.
* **Relative file paths** (``trusted-ca-file``, ``ca-file``, ``cert-file``,
  ``key-file``) are resolved against the directory that contains the YAML file,
  so a Secret volume holding the config and its certificates works wherever it
  is mounted.  Absolute paths are kept unchanged; ``~`` is not expanded.  For
  :func:`parse_etcd_config` without ``source``, relative paths stay relative.
* **Stricter than etcd where etcd silently ignores mistakes**: ``cert-file``
  without ``key-file`` (or the reverse), ``password`` without ``username``,
  ``ca-file`` and ``trusted-ca-file`` naming different files, endpoints with
  different schemes, URLs with credentials in them.  Unknown keys, duplicate
  keys, the deprecated ``ca-file`` alias, a ``username`` without ``password``
  (etcd then does not authenticate) and a password sent over plain text are
  reported in :attr:`EtcdConfig.warnings`; this package does not log, the caller
  logs the warnings (once per load).
* **Errors name the place.**  :class:`EtcdConfigError` is a ``ValueError``
  whose message names the file, the field and, where known, the YAML line:
  ``/x/cluster1: field 'endpoints': must be a non-empty list of URLs (line 2)``.
  A missing file (the YAML file itself or a TLS file it names) raises the
  subclass :class:`EtcdConfigFileMissing`, which the daemons treat as "not
  there yet, retry" (certificates in a Secret can appear after the config).
* **Secrets stay secret.**  The password is excluded from ``repr`` and from
  :meth:`EtcdConfig.redacted`; the private key is excluded from ``repr`` of
  :class:`TlsBytes`; error messages never quote file contents.
"""

from __future__ import annotations

from .endpoint import Endpoint
from .model import EtcdConfig, EtcdConfigError, EtcdConfigFileMissing
from .tls import TlsBytes, load_tls_files
from .yamlfile import is_cluster_config_file, load_etcd_config, parse_etcd_config

__all__ = [
    "Endpoint",
    "EtcdConfig",
    "EtcdConfigError",
    "EtcdConfigFileMissing",
    "TlsBytes",
    "is_cluster_config_file",
    "load_etcd_config",
    "load_tls_files",
    "parse_etcd_config",
]
