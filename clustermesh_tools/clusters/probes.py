"""What the local mesh reads from its processes: log tails, health and status endpoints.

Every endpoint is on loopback, so requests never go through an HTTP proxy from the
environment, and a failure to connect is an answer ("not ready"), not an error.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["fetch_status", "http_ok", "log_tail"]


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


def fetch_status(address: str, *, timeout: float = 2.0) -> list[dict[str, Any]] | None:
    """KVStoreMesh's ``GET /v1/cluster``; None if it cannot be reached."""
    try:
        with _opener.open(f"http://{address}/v1/cluster", timeout=timeout) as resp:
            data = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return data if isinstance(data, list) else None
