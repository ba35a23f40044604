"""What the local mesh reads from its processes: log tails, health and status endpoints.

Every endpoint is on loopback, so requests never go through an HTTP proxy from the
environment, and a failure to connect is an answer ("not ready"), not an error.  A
cluster with several KVStoreMesh replicas records every replica's status API, comma
separated; the leader's answer is the one that counts (:func:`fetch_leader`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

from kvstoremesh.snapshot import LEADER, Leadership
from kvstoremesh.status import LEADERSHIP_HEADER

__all__ = ["Answer", "fetch_answer", "fetch_leader", "fetch_status", "http_ok", "log_tail"]


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def http_ok(url: str, *, timeout: float = 1.0) -> bool:
    try:
        with _opener.open(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# Loopback status endpoints: never go through an HTTP proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Answer(NamedTuple):
    """What one KVStoreMesh replica's ``GET /v1/cluster`` said."""

    address: str
    models: list[dict[str, Any]]
    leadership: Leadership | None  # None: it did not say (upstream's, or an older one)


def fetch_answer(address: str, *, timeout: float = 2.0) -> Answer | None:
    """One replica's ``GET /v1/cluster`` and the role it gives in its header; None if
    it cannot be reached."""
    try:
        with _opener.open(f"http://{address}/v1/cluster", timeout=timeout) as resp:
            header = resp.headers.get(LEADERSHIP_HEADER)
            data = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if not isinstance(data, list):
        return None
    return Answer(address, data, Leadership.from_header(header))


def fetch_leader(addresses: str, *, timeout: float = 2.0) -> Answer | None:
    """``addresses``: one status API, or several replicas' comma separated.  The
    leader's answer; when none says it leads, the first that answered (a lone
    replica, or a standby while nobody leads); None if none answers."""
    first: Answer | None = None
    for address in filter(None, (one.strip() for one in addresses.split(","))):
        answer = fetch_answer(address, timeout=timeout)
        if answer is None:
            continue
        if answer.leadership is not None and answer.leadership.role == LEADER:
            return answer  # the replicas after it need not be asked
        first = first or answer
    return first


def fetch_status(addresses: str, *, timeout: float = 2.0) -> list[dict[str, Any]] | None:
    """KVStoreMesh's ``GET /v1/cluster`` (the leader's, of several replicas: see
    :func:`fetch_leader`); None if it cannot be reached."""
    answer = fetch_leader(addresses, timeout=timeout)
    return answer.models if answer is not None else None
