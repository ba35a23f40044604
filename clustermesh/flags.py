"""Command-line value parsing shared by both daemons (Go-compatible where Cilium's flags are)."""

from __future__ import annotations

import argparse
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` (``15s``, ``10m``, ``1h30m``, ``0``) in seconds."""
    raw = text.strip()
    if raw in ("0", ""):
        if raw == "":
            raise argparse.ArgumentTypeError("empty duration")
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(raw):
        match = _DURATION_PART.match(raw, pos)
        if match is None:
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r}: use a number with a unit, e.g. 15s, 10m, 1h30m")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total


def listen_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``:port`` (all interfaces) as used by Cilium's *-serve-addr flags."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected HOST:PORT or :PORT")
    return host.strip("[]") or "0.0.0.0", int(port)
