"""The status of a running KVStoreMesh, from its API (``GET /v1/cluster``), as text or data.

Two commands print it:

* ``clustermesh-apiserver kvstoremesh-dbg status [--verbose] [-o json|yaml|jsonpath=T]
  [-H HOST:PORT]`` (:mod:`kvstoremesh.dbg`), upstream's: exit 0 once the API answered,
  whatever the clusters' state, 1 when it did not (sysdump stores the output);
* ``kvstoremesh status`` (:func:`main`), ours: the same output, plus ``--wait`` and an
  exit status for scripts: 0 when every remote cluster is ready, 1 when not (or still
  not at the end of ``--wait``), 2 when the status API cannot be reached.

:func:`render` is shared: the text is :func:`kvstoremesh.status.format_status` (Cilium's
format), ``-o json`` the models indented as the API returns them, ``-o yaml`` the same
as YAML, ``-o jsonpath=TEMPLATE`` kubectl's template subset that scripts use: text with
``{...}`` expressions made of ``.field``, ``[N]`` and ``[*]`` steps (a leading ``$``
allowed), several results joined by spaces.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, NamedTuple

import yaml

from clustermesh.clock import REAL_CLOCK, Clock
from clustermesh.flags import option_default
from clustermesh.goflags import FlagSet, Parsed

from .options import MeshOptions
from .snapshot import Leadership
from .status import LEADERSHIP_HEADER, format_status

WAIT_INTERVAL = 1.0  # seconds between two fetches with --wait
_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\*|-?\d+)\]")


class Fetched(NamedTuple):
    models: list[dict[str, Any]]  # Cilium's RemoteCluster models
    leadership: Leadership | None  # None: a daemon that does not say (upstream's)


def fetch(address: str, *, timeout: float = 5.0) -> Fetched:
    with urllib.request.urlopen(f"http://{address}/v1/cluster", timeout=timeout) as resp:
        return Fetched(json.load(resp),
                       Leadership.from_header(resp.headers.get(LEADERSHIP_HEADER)))


def check_output(output: str) -> None:
    """ValueError unless ``output`` is a format :func:`render` knows."""
    if output in ("", "text", "json", "yaml"):
        return
    if output.startswith("jsonpath="):
        _jsonpath(output.removeprefix("jsonpath="), [])
        return
    raise ValueError(f"unsupported output format {output!r}: use json, yaml or "
                     "jsonpath=TEMPLATE")


def render(models: list[dict[str, Any]], *, output: str, verbose: bool,
           leadership: Leadership | None = None) -> str:
    if output == "json":
        return json.dumps(models, indent=2) + "\n"
    if output == "yaml":
        return yaml.safe_dump(models, sort_keys=False)
    if output.startswith("jsonpath="):
        return _jsonpath(output.removeprefix("jsonpath="), models) + "\n"
    return format_status(models, verbose=verbose, leadership=leadership)


def _jsonpath(template: str, doc: Any) -> str:
    """kubectl's jsonpath for the shapes of this API; ValueError on other syntax."""
    out: list[str] = []
    pos = 0
    for match in re.finditer(r"\{([^{}]*)\}", template):
        out.append(template[pos:match.start()])
        pos = match.end()
        expr = match.group(1).strip().removeprefix("$")
        values = [doc]
        at = 0
        for step in _STEP.finditer(expr):
            if step.start() != at:
                break
            at = step.end()
            values = [v for value in values for v in _step(value, step)]
        if at != len(expr):
            raise ValueError(f"jsonpath {template!r}: unsupported expression {{{match.group(1)}}}")
        out.append(" ".join(_scalar(v) for v in values))
    out.append(template[pos:])
    return "".join(out)


def _step(value: Any, step: re.Match[str]) -> list[Any]:
    field, index = step.group(1), step.group(2)
    if field is not None:
        return [value[field]] if isinstance(value, dict) and field in value else []
    if not isinstance(value, list):
        return []
    if index == "*":
        return list(value)
    i = int(index)
    return [value[i]] if -len(value) <= i < len(value) else []


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def build_parser() -> FlagSet:
    fs = FlagSet(command="kvstoremesh status", short="Show the status of a running KVStoreMesh",
                 bind_env=False)
    fs.string("api-serve-addr", default=option_default(MeshOptions, "api_serve_addr"),
              help="Address of the daemon's status API")
    fs.boolean("verbose", help="Details for every cluster, not only the ones not ready")
    fs.string("output", shorthand="o", default="",
              help="Output format: json, yaml or jsonpath=TEMPLATE (default: text)")
    fs.boolean("wait", help="Wait until all clusters are ready")
    fs.duration("timeout", default=300.0, help="With --wait: give up after this long")
    return fs


def main(argv: Sequence[str], *, clock: Clock = REAL_CLOCK) -> int:
    fs = build_parser()
    args = fs.parse_or_exit(argv)
    try:
        check_output(args.output)
    except ValueError as exc:
        fs.fail(f'invalid argument "{args.output}" for "-o, --output" flag: {exc}')
    return asyncio.run(_status(args, clock=clock))


async def _status(args: Parsed, *, clock: Clock) -> int:
    """Fetch (with ``--wait``: until every cluster is ready, or the timeout), print; the
    exit status.  The waits read ``clock``; a fetch runs in a thread (urllib blocks)."""
    deadline = clock.monotonic() + args.timeout
    while True:
        try:
            models, leadership = await asyncio.to_thread(fetch, args.api_serve_addr)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if not args.wait or clock.monotonic() > deadline:
                print(f"kvstoremesh status: cannot reach the status API at "
                      f"http://{args.api_serve_addr}/v1/cluster: {exc}", file=sys.stderr)
                return 2
            await clock.sleep(WAIT_INTERVAL)
            continue
        all_ready = all(m.get("ready") for m in models)
        if all_ready or not args.wait or clock.monotonic() > deadline:
            break
        await clock.sleep(WAIT_INTERVAL)
    sys.stdout.write(render(models, output=args.output, verbose=args.verbose,
                            leadership=leadership))
    if not all_ready and args.wait:
        print(f"kvstoremesh status: not all clusters ready after {args.timeout:g}s",
              file=sys.stderr)
    return 0 if all_ready else 1
