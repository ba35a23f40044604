"""What every command works on: a cluster's directory and the daemons running from it.

* :mod:`.clusterdir` — a cluster's directory (its CA, certificates, etcd and
  KVStoreMesh configs, users): what ``clustermesh enable`` writes and every other
  command reads;
* :mod:`.pairing` — ``connect`` and ``disconnect``: remote certificates and the config
  files two clusters' directories exchange;
* :mod:`.authmode` — the cluster users modes (legacy, migration, cluster);
* :mod:`.probes` — asking a running daemon for its status and health.

Both the ``clustermesh`` command (:mod:`clustermesh_tools.cli`) and the local mesh
(:mod:`clustermesh_tools.localmesh`) build on it; it imports only the core.
"""
