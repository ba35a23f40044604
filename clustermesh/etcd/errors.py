"""Errors raised by the etcd client, translated from gRPC status codes.

Callers never see ``grpc.aio.AioRpcError``: each failure is mapped once, here, to
an exception that says what happened in etcd's terms and names the endpoint, so
the daemons can decide (retry, relist, reconnect, give up) on the type alone.
"""

from __future__ import annotations

import grpc


class EtcdError(Exception):
    """Base class; ``endpoint`` is the URL the failing request went to (if any)."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(f"{endpoint}: {message}" if endpoint else message)
        self.endpoint = endpoint


class EtcdUnavailable(EtcdError):
    """No endpoint answered, or the cluster has no leader: try again later."""


class EtcdTLSError(EtcdUnavailable):
    """The TLS handshake failed (wrong CA, bad or expired certificate)."""


class EtcdAuthError(EtcdError):
    """Authentication failed: wrong user/password, or a certificate etcd does not map to a user."""


class EtcdPermissionDenied(EtcdError):
    """The user is authenticated but its roles do not allow the request."""


class EtcdInvalidToken(EtcdError):
    """The auth token expired or was revoked; the client re-authenticates."""


class EtcdAuthRevisionOld(EtcdError):
    """A user or role changed while the request was in flight ("revision of auth store
    is old"): nothing was applied, and the request sent again is checked anew."""


class EtcdRequestTooLarge(EtcdError):
    """A request exceeds the server's --max-request-bytes or --max-txn-ops."""


class EtcdCompacted(EtcdError):
    """The requested revision was compacted; relist from a current revision."""

    def __init__(self, compact_revision: int, *, endpoint: str | None = None) -> None:
        super().__init__(
            f"revision has been compacted (compact revision {compact_revision})",
            endpoint=endpoint,
        )
        self.compact_revision = compact_revision


class EtcdClusterChanged(EtcdError):
    """A resumed watch reached a different etcd cluster (a restore from backup, endpoints
    that point elsewhere now): its revisions say nothing about ours; relist."""

    def __init__(self, expected: int, found: int, *, endpoint: str | None = None) -> None:
        super().__init__(f"etcd cluster ID changed from {expected:x} to {found:x}",
                         endpoint=endpoint)
        self.expected = expected
        self.found = found


# gRPC status codes whose failure says nothing about the request itself: the
# member is down, partitioned, leaderless or shutting down; another may answer.
_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}
_TLS_MARKERS = ("ssl", "handshake", "certificate", "tls", "tsi_")
# INTERNAL is the request's fault, except a stream the server reset with NO_ERROR on its
# way down (a member stopped gracefully: "Stream removed ... RST_STREAM"): etcd's own
# client retries INTERNAL on watches for this reason.
_RESET_MARKERS = ("stream removed", "rst_stream")


def translate(exc: grpc.aio.AioRpcError, *, endpoint: str | None = None) -> EtcdError:
    """Map a gRPC error from etcd to our exception hierarchy."""
    code = exc.code()
    details = exc.details() or code.name
    lowered = details.lower()
    if "required revision has been compacted" in lowered:
        return EtcdCompacted(0, endpoint=endpoint)
    if "invalid auth token" in lowered:
        return EtcdInvalidToken(details, endpoint=endpoint)
    if "revision of auth store is old" in lowered:
        return EtcdAuthRevisionOld(details, endpoint=endpoint)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return EtcdPermissionDenied(details, endpoint=endpoint)
    if "authentication failed" in lowered or code == grpc.StatusCode.UNAUTHENTICATED:
        return EtcdAuthError(details, endpoint=endpoint)
    if "too many operations in txn" in lowered or "request is too large" in lowered:
        return EtcdRequestTooLarge(details, endpoint=endpoint)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in lowered:
        return EtcdRequestTooLarge(details, endpoint=endpoint)
    if code == grpc.StatusCode.INTERNAL and any(m in lowered for m in _RESET_MARKERS):
        return EtcdUnavailable(details, endpoint=endpoint)
    if code in _UNAVAILABLE_CODES:
        if any(m in lowered for m in _TLS_MARKERS):
            return EtcdTLSError(_tls_hint(details), endpoint=endpoint)
        return EtcdUnavailable(details, endpoint=endpoint)
    return EtcdError(f"{code.name}: {details}", endpoint=endpoint)


def _tls_hint(details: str) -> str:
    lowered = details.lower()
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return ("TLS handshake failed: the server certificate is not signed by the "
                f"configured trusted-ca-file ({details})")
    if "certificate" in lowered and ("expired" in lowered or "unknown" in lowered):
        return f"TLS handshake failed: a certificate was rejected ({details})"
    return f"TLS handshake failed ({details})"
