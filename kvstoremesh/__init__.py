"""KVStoreMesh: caches remote clusters' etcd state in the local cluster's etcd."""
