"""A gRPC channel to one etcd endpoint: how it is opened and proven to work.

:class:`~clustermesh.etcd.connection.EtcdConnection` keeps one :class:`Channel` at a
time and opens the next with :func:`open_channel` and :func:`probe` when it fails
over or the TLS files change.  The channel options are chosen so that a dead path
is noticed: HTTP/2 keepalive pings run while calls are open, and
``grpc.http2.ping_timeout_ms`` bounds the wait for a reply (grpcio waits about a
minute otherwise).  Pings are not sent on idle channels, because etcd answers those
with a ``too_many_pings`` GOAWAY.  gRPC's own retries are off: the connection's
retry path decides, with failover, which gRPC's cannot do.
"""

from __future__ import annotations

from typing import Any

import grpc

from .config import Endpoint, EtcdConfig, EtcdConfigError, load_tls_files
from .errors import translate
from .pb import rpc_pb2, rpc_pb2_grpc

MAX_RECEIVE_MESSAGE_LENGTH = 64 * 1024 * 1024


class Channel:
    """A gRPC channel to one endpoint, with its stubs."""

    def __init__(self, endpoint: Endpoint, channel: grpc.aio.Channel, tls_fingerprint: str
                 ) -> None:
        self.endpoint = endpoint
        self.url = str(endpoint)
        self.channel = channel
        self.tls_fingerprint = tls_fingerprint
        self.cluster_id = 0  # of the etcd cluster the endpoint belongs to (from the probe)
        self.generation = 0  # set when it becomes the connection's channel in use
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.watch = rpc_pb2_grpc.WatchStub(channel)
        self.lease = rpc_pb2_grpc.LeaseStub(channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        self.auth = rpc_pb2_grpc.AuthStub(channel)


def _options(keepalive_time: float, keepalive_timeout: float) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_LENGTH),
        ("grpc.max_send_message_length", MAX_RECEIVE_MESSAGE_LENGTH),
        ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # Our own connection per client: two clients of one etcd stay independent.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def open_channel(config: EtcdConfig, endpoint: Endpoint, *, keepalive_time: float,
                 keepalive_timeout: float) -> Channel:
    """A channel to ``endpoint`` with the TLS files of ``config`` as they are now
    (:class:`~clustermesh.etcd.config.EtcdConfigError` if they cannot be used)."""
    options = _options(keepalive_time, keepalive_timeout)
    if not config.use_tls:
        return Channel(endpoint, grpc.aio.insecure_channel(endpoint.grpc_target,
                                                           options=options), "")
    if config.insecure_skip_tls_verify and config.trusted_ca_file is None:
        raise EtcdConfigError(
            "skipping server certificate verification is not supported by the gRPC TLS "
            "stack this client uses; set trusted-ca-file to the server's CA instead",
            path=config.source, field="insecure-skip-tls-verify")
    tls = load_tls_files(config, check_pair=True)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )
    channel = grpc.aio.secure_channel(endpoint.grpc_target, creds, options=options)
    return Channel(endpoint, channel, tls.fingerprint)


async def probe(channel: Channel, *, timeout: float) -> None:
    """One Status call: proves the endpoint is reachable and the TLS handshake works, and
    tells which etcd cluster it belongs to."""
    try:
        resp = await channel.maintenance.Status(rpc_pb2.StatusRequest(), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise translate(exc, endpoint=channel.url) from None
    channel.cluster_id = resp.header.cluster_id
