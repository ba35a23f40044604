"""``kvstoremesh status``: ask a running daemon's status API and print Cilium's text.

Exit status: 0 when every remote cluster is ready, 1 when not (or still not at
the end of ``--wait``), 2 when the status API cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from clustermesh.flags import duration_arg

from .status import format_status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvstoremesh status",
                                description="Show the status of a running KVStoreMesh.")
    p.add_argument("--api-serve-addr", default="localhost:9889", metavar="HOST:PORT",
                   help="address of the daemon's status API (default localhost:9889)")
    p.add_argument("--verbose", action="store_true",
                   help="details for every cluster, not only the ones not ready")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--wait", action="store_true", help="wait until all clusters are ready")
    p.add_argument("--timeout", type=duration_arg, default=300.0, metavar="DURATION",
                   help="with --wait: give up after this long (default 5m)")
    return p


def fetch(address: str, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{address}/v1/cluster", timeout=timeout) as resp:
        return json.load(resp)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            models = fetch(args.api_serve_addr)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if not args.wait or time.monotonic() > deadline:
                print(f"kvstoremesh status: cannot reach the status API at "
                      f"http://{args.api_serve_addr}/v1/cluster: {exc}", file=sys.stderr)
                return 2
            time.sleep(1)
            continue
        all_ready = all(m.get("ready") for m in models)
        if all_ready or not args.wait or time.monotonic() > deadline:
            break
        time.sleep(1)
    if args.output == "json":
        print(json.dumps(models, indent=2))
    else:
        sys.stdout.write(format_status(models, verbose=args.verbose))
    if not all_ready and args.wait:
        print(f"kvstoremesh status: not all clusters ready after {args.timeout:g}s",
              file=sys.stderr)
    return 0 if all_ready else 1
