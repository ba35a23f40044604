"""Command-line pieces shared by both daemons (Go-compatible where Cilium's flags are).

* value parsers: Go's syntax and error texts for the flag types of
  :mod:`clustermesh.goflags` (strconv, time.ParseDuration, pflag's stringToString),
  ``HOST:PORT`` listen addresses, numeric ``--kvstore-opt``s, and an argparse adapter
  for the commands that still use argparse;
* :func:`add_daemon_flags`: the flags upstream's ``clustermesh`` and ``kvstoremesh``
  hive commands share (cluster identity, kvstore, health, metrics, logging, and the Go
  runtime's gops/pprof/shell flags, accepted without effect), registered on a
  :class:`~clustermesh.goflags.FlagSet`; each daemon adds its own flags after it.
  Defaults come from the daemon's options dataclass, the one place they are written;
* :func:`daemon_settings`: what those common flags mean once parsed.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clusterconfig import DEFAULT_CLUSTER_NAME

if TYPE_CHECKING:
    from .goflags import FlagSet, Parsed

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


# ---------------------------------------------------------------- Go's value syntax

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def _go_integer(text: str, *, unsigned: bool) -> int:
    fn = "ParseUint" if unsigned else "ParseInt"
    try:
        if text != text.strip():  # Python's int() would accept what Go refuses
            raise ValueError(text)
        value = int(text, 0) if text[:2].lower() in ("0x", "0o", "0b") else int(text, 10)
    except ValueError:
        raise ValueError(f'strconv.{fn}: parsing "{text}": invalid syntax') from None
    if unsigned and (value < 0 or value > 0xFFFFFFFF):
        raise ValueError(f'strconv.{fn}: parsing "{text}": value out of range')
    return value


def go_int(text: str) -> int:
    """Go's strconv.ParseInt (its error text)."""
    return _go_integer(text, unsigned=False)


def go_uint(text: str) -> int:
    """Go's strconv.ParseUint for a uint32 (its error text)."""
    return _go_integer(text, unsigned=True)


def go_number(text: str) -> float:
    """Go's strconv.ParseFloat (its error text)."""
    try:
        return float(text)
    except ValueError:
        raise ValueError(f'strconv.ParseFloat: parsing "{text}": invalid syntax') from None


def go_duration(text: str) -> float:
    """A Go duration in seconds, with Go's error text (and ours for a negative one, which
    Go would accept but no flag of ours means)."""
    try:
        return parse_duration(text)
    except ValueError:
        negative = text.strip().startswith("-")
        raise ValueError(f'time: invalid duration "{text}"'
                         + (": must not be negative" if negative else "")) from None


def go_map(text: str) -> dict[str, str]:
    """pflag's stringToString: one ``=`` is one pair (``etcd.address=a,b`` keeps its comma),
    several are a CSV record of pairs (quote a pair to keep a comma in it)."""
    count = text.count("=")
    if count == 0:
        raise ValueError(f"{text} must be formatted as key=value")
    if count == 1:
        pairs = [text.strip('"')]
    else:
        try:
            pairs = next(csv.reader([text], strict=True))
        except (csv.Error, StopIteration) as exc:
            raise ValueError(f"{text}: {exc}") from None
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        # Unlike pflag, " b=2" is key "b" and "=2" an error: an option silently stored
        # under a key nobody reads would be a typo nobody sees.
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{pair} must be formatted as key=value")
        result[key] = value  # a later pair wins
    return result


def go_map_env(text: str) -> dict[str, str]:
    """A map flag's environment value: like the flag, or a JSON object (viper)."""
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return {str(k): str(v) for k, v in doc.items()}
    return go_map(text)


def go_slice(text: str) -> list[str]:
    """A comma-separated string slice."""
    return [item.strip() for item in text.split(",") if item.strip()] if text else []


def format_duration(seconds: float) -> str:
    """Go's time.Duration.String for the defaults shown in usage (``2m0s``, ``500ms``)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:g}s"
    if hours or minutes:
        text = f"{int(minutes)}m{text}"
    if hours:
        text = f"{int(hours)}h{text}"
    return text


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


def option_default(options_cls: type, name: str) -> Any:
    """The default of field ``name`` of an options dataclass (the one place it is written)."""
    for f in dataclasses.fields(options_cls):
        if f.name == name:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{options_cls.__name__}.{name} has no default")
            return f.default
    raise ValueError(f"{options_cls.__name__} has no field {name!r}")


_GO_RUNTIME = "a Go runtime facility; this implementation is Python"
_LEASES = ("keys are written without leases (our keys do not expire if the process dies; "
           "the next start reconciles them)")


def add_daemon_flags(fs: FlagSet, *, options_cls: type, gops_port: int,
                     pprof_port: int) -> None:
    """The flags shared by upstream's ``clustermesh`` and ``kvstoremesh`` commands."""
    def d(name: str) -> Any:
        return option_default(options_cls, name)

    fs.string("cluster-name", default=DEFAULT_CLUSTER_NAME, help="Name of the cluster")
    fs.uint("cluster-id", default=0, help="Unique identifier of the cluster")
    fs.uint("max-connected-clusters", default=d("max_connected_clusters"),
            help="Maximum number of clusters to be connected in a clustermesh "
                 "(255 or 511)")
    fs.string("kvstore", default="etcd", choices=("etcd",), help="Key-value store type")
    fs.string_map("kvstore-opt",
                  help="Key-value store options: etcd.config=FILE (required), etcd.qps, "
                       "etcd.bootstrapQps, etcd.maxInflight")
    fs.duration("kvstore-lease-ttl", default=900.0, no_effect=_LEASES,
                help="Time-to-live for the kvstore lease")
    fs.uint("kvstore-max-consecutive-quorum-errors",
            default=d("max_consecutive_quorum_errors"),
            help="Max acceptable kvstore consecutive quorum errors before recreating the "
                 "etcd connection")
    fs.string_slice("controller-group-metrics",
                    help="List of controller group names for which to enable metrics "
                         "(all, none, or names)")
    fs.boolean("debug", shorthand="D", default=d("debug"), help="Enable debugging mode")
    fs.integer("health-port", default=d("health_port"),
               help="TCP port for the health API (/healthz, /readyz)")
    fs.string("prometheus-serve-addr", default=d("prometheus_serve_addr"),
              help="Address to serve Prometheus metrics (HOST:PORT or :PORT; default off)")
    fs.boolean("enable-gops", default=True, no_effect=_GO_RUNTIME,
               help="Enable the gops server")
    fs.uint("gops-port", default=gops_port, no_effect=_GO_RUNTIME,
            help="Port for the gops server to listen on")
    fs.boolean("pprof", no_effect=_GO_RUNTIME, help="Enable serving pprof debugging API")
    fs.string("pprof-address", default="localhost", no_effect=_GO_RUNTIME,
              help="Address that pprof listens on")
    fs.uint("pprof-port", default=pprof_port, no_effect=_GO_RUNTIME,
            help="Port that pprof listens on")
    fs.string_slice("log-driver", no_effect="logs always go to stderr (see --log-format)",
                    help="Logging endpoints to use (syslog, fluentd)")
    fs.string_map("log-opt", no_effect="options of Cilium's log drivers; use --log-level "
                                       "and --log-format",
                  help="Log driver options")
    fs.string("shell-sock-path", default="/var/run/cilium/shell.sock",
              no_effect="the hive shell is not implemented",
              help="Path to the shell UNIX socket")
    fs.duration("crd-wait-timeout", default=300.0,
                no_effect="no CRD is waited for before starting",
                help="Cilium will exit if CRDs are not available within this duration")
    # Ours.
    fs.integer("max-txn-ops", default=d("max_txn_ops"),
               help="etcd's --max-txn-ops: operations per transaction")
    fs.integer("max-request-bytes", default=d("max_request_bytes"),
               help="etcd's --max-request-bytes: bytes per request")
    fs.string("log-level", default="info", choices=("debug", "info", "warning", "error"),
              help="Log level (-D/--debug: debug)")
    fs.string("log-format", default="text", choices=("text", "json"), help="Log format")


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSettings:
    """The common flags, interpreted (ValueError names the flag)."""

    local_config: Path
    qps: float
    bootstrap_qps: float
    max_inflight: int
    controller_group_metrics: tuple[str, ...]


def daemon_settings(args: Parsed, *, options_cls: type) -> DaemonSettings:
    opts: dict[str, str] = args.kvstore_opt
    config = opts.get("etcd.config")
    if not config:
        raise ValueError("--kvstore-opt etcd.config=FILE is required (the local etcd's "
                         "client configuration; also CILIUM_KVSTORE_OPT)")
    return DaemonSettings(
        local_config=Path(config),
        qps=kvstore_number(opts, "etcd.qps"),
        bootstrap_qps=kvstore_number(opts, "etcd.bootstrapQps"),
        max_inflight=int(kvstore_number(opts, "etcd.maxInflight",
                                        option_default(options_cls, "max_inflight"))),
        controller_group_metrics=tuple(args.controller_group_metrics),
    )
