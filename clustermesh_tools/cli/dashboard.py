"""``clustermesh dashboard`` and ``clustermesh local dashboard``: the live view.

Both build a target list as ``status`` does (cluster directories and
``--kvstoremesh-api`` addresses, or the local mesh's records, asked again every round)
and hand it to :mod:`clustermesh_tools.webview`, which serves it until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from clustermesh_tools.clusters.targets import Target
from clustermesh_tools.webview.collect import Collector
from clustermesh_tools.webview.server import parse_listen, serve


def run_dashboard(targets: Callable[[], list[Target]], args: argparse.Namespace) -> int:
    """Serve the live view of ``targets()`` on ``args.listen`` every ``args.refresh`` s;
    returns only by Ctrl-C (KeyboardInterrupt, exit 130 in ``main``)."""
    parse_listen(args.listen)  # a usage error before anything is collected
    collector = Collector(targets, refresh=args.refresh)
    asyncio.run(serve(collector, listen=args.listen, say=lambda s: print(s, flush=True)))
    return 0
