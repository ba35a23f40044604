"""clustermesh-apiserver: publishes this cluster's state into its etcd (issue [D])."""
