"""A whole Cluster Mesh on one machine (``clustermesh local ...``).

:mod:`.mesh` creates the clusters (the same cluster directories ``clustermesh
enable``/``connect`` write) and runs their processes; :mod:`.procs` starts,
recognises and stops those processes; :mod:`.startup` initialises the etcds and waits
until KVStoreMesh can read them; :mod:`clustermesh.etcdbin` finds etcd.
"""
