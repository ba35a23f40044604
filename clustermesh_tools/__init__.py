"""The tooling layer: the commands people and images run, on top of both daemons.

The project has three layers, and imports only go down (``lint-imports`` checks the
contracts of ``pyproject.toml``, ``tests/test_layers.py`` runs it):

1. :mod:`clustermesh`, the shared core (etcd client, keys, cluster config, sync writer,
   serving, metrics, flags, PKI, ...), imports neither daemon nor this package;
2. the daemons, :mod:`kvstoremesh` and :mod:`apiserver`, import the core only, never each
   other;
3. this package, which may import everything:

   * :mod:`.apiserver_binary`: ``clustermesh-apiserver``, upstream's one binary, whose
     subcommands run both daemons (``clustermesh``, ``kvstoremesh``), ``etcdinit`` and
     the debug commands;
   * :mod:`.cli`: the ``clustermesh`` command (cluster directories, ``enable``,
     ``connect``, ``status``, ``check``, ``troubleshoot``, ``local``);
   * :mod:`.localmesh`: a whole Cluster Mesh on one machine (``clustermesh local``).
"""
