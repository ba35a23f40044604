"""Cilium Cluster Mesh control plane: the shared core.

The bottom layer: :mod:`kvstoremesh` and :mod:`apiserver` (the daemons) and
:mod:`clustermesh_tools` (the commands on top) import it; it imports none of them
(``lint-imports``, contracts in ``pyproject.toml``).
"""
