"""etcd client support: configuration, connection, and key-value operations."""
