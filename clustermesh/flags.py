"""Command-line value parsing shared by both daemons (Go-compatible where Cilium's flags are)."""

from __future__ import annotations

import argparse
import re

_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3,
                 "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration (``2m``, ``1m30s``, ``500ms``, ``1.5h``, ``0``) in seconds.

    ValueError (naming the text) if it is not one, or is negative.
    """
    s = text.strip()
    if s in ("0", "+0"):
        return 0.0
    s = s.removeprefix("+")
    if s.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: it must not be negative")
    total, pos = 0.0, 0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos < len(s):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 2m, 90s, 1m30s, 500ms")
    return total


def duration_arg(text: str) -> float:
    """:func:`parse_duration` for argparse ``type=``: the message reaches the user."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def listen_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``:port`` (all interfaces) as used by Cilium's *-serve-addr flags."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected HOST:PORT or :PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def kvstore_number(opts: dict[str, str], key: str, default: float = 0.0) -> float:
    """A numeric ``--kvstore-opt`` (``etcd.qps``...); ValueError names the option."""
    raw = opts.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"--kvstore-opt {key}={raw}: not a number") from None
    if value < 0:
        raise ValueError(f"--kvstore-opt {key}={raw}: must not be negative")
    return value


def bool_arg(text: str) -> bool:
    """Go's strconv.ParseBool for argparse, so ``--flag=false`` works as with Cilium."""
    lowered = text.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: use true or false")
