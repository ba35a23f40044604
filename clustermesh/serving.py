"""HTTP endpoints both daemons serve: health, metrics and a JSON status API.

* ``/healthz`` — liveness: answers 200 while the event loop runs and the
  daemon's own check passes (e.g. its writer task is alive).  It never depends
  on remote clusters: a dead remote must not get the pod restarted.
* ``/readyz`` — readiness with Cilium's semantics: 200 ``Ready`` / 500
  ``NotReady``; ``/readyz?verbose`` adds one line per thing being waited for.
* ``/metrics`` — Prometheus text format from the daemon's registry.

Each is a small aiohttp application; :func:`serve` binds one to an address and
returns the runner to clean up on shutdown.  No handler ever includes
credentials: the status objects they render carry none.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# (ok, detail lines) — detail is shown by /readyz?verbose and /healthz?verbose
Check = Callable[[], tuple[bool, list[str]]]


def health_app(*, live: Check, ready: Check) -> web.Application:
    def respond(ok: bool, lines: list[str], request: web.Request, good: str,
                bad: str) -> web.Response:
        text = good if ok else bad
        if "verbose" in request.query and lines:
            text += "\n" + "\n".join(lines)
        return web.Response(status=200 if ok else 500, text=text + "\n")

    async def healthz(request: web.Request) -> web.Response:
        ok, lines = live()
        return respond(ok, lines, request, "OK", "NotHealthy")

    async def readyz(request: web.Request) -> web.Response:
        ok, lines = ready()
        return respond(ok, lines, request, "Ready", "NotReady")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


def json_app(routes: dict[str, Callable[[], Awaitable[Any] | Any]], *,
             headers: Callable[[], dict[str, str]] | None = None) -> web.Application:
    """GET routes returning JSON documents built by the given callables; ``headers``
    adds response headers to each (what does not fit a document whose shape is fixed)."""
    app = web.Application()
    for path, build in routes.items():
        async def handler(_: web.Request, build: Callable[[], Any] = build) -> web.Response:
            doc = build()
            if isinstance(doc, Awaitable):
                doc = await doc
            return web.Response(text=json.dumps(doc, indent=2) + "\n",
                                content_type="application/json",
                                headers=headers() if headers is not None else None)

        app.router.add_get(path, handler)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on ``host:port`` (host "" = all interfaces); returns the runner."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite
    if host:
        site = web.TCPSite(runner, host, port)
    else:
        # One socket for all interfaces, like Go's net.Listen(":port").  asyncio would
        # open one socket per address family instead, and with port 0 each gets its own
        # port, so bound_port() could name the IPv6 one while 127.0.0.1 is elsewhere.
        site = web.SockSite(runner, _all_interfaces_socket(port))
    await site.start()
    return runner


def _all_interfaces_socket(port: int) -> socket.socket:
    if socket.has_dualstack_ipv6():
        return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("0.0.0.0", port))


def bound_port(runner: web.AppRunner) -> int:
    """The port a runner listens on (useful with port 0 in tests)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("runner has no listening socket")
