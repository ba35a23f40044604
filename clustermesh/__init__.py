"""Cilium Cluster Mesh control plane: shared library code."""
