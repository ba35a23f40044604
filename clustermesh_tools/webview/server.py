"""The HTTP side of the live view: one page, its three static files, one JSON API.

Routes (all ``GET``): ``/`` the page, ``/static/app.js`` and ``/static/style.css``
(package data, read once; no other name is served, so no path ever reaches the file
system), and ``/api/v1/mesh``, the latest snapshot (schema: :mod:`clustermesh_tools.
webview`).  The page polls that endpoint; nothing is fetched from anywhere else.

Every response, errors included, carries ``Content-Security-Policy: default-src
'self'`` (the page has no inline script or style, so nothing needs an exception) and
``X-Content-Type-Options: nosniff``; the API also ``Cache-Control: no-store``.  The
server binds to loopback unless ``--listen`` names another address, and then says
that it serves the mesh's status to anyone who can reach it, without authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Callable
from importlib import resources

from aiohttp import web

from .collect import Collector

__all__ = ["DEFAULT_LISTEN", "is_loopback", "make_app", "parse_listen", "serve"]

DEFAULT_LISTEN = "127.0.0.1:0"
CSP = "default-src 'self'"
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
_COLLECTOR: web.AppKey[Collector] = web.AppKey("collector", Collector)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen: expected HOST:PORT, got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _file(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"


def make_app(collector: Collector) -> web.Application:
    """The application over ``collector``'s latest snapshot."""
    index = _file("index.html")
    static = {name: (_file(name), kind) for name, kind in _STATIC.items()}

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=index, content_type="text/html", charset="utf-8")

    async def static_file(request: web.Request) -> web.Response:
        found = static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(body=found[0], content_type=found[1], charset="utf-8")

    async def mesh(request: web.Request) -> web.Response:
        snapshot = request.app[_COLLECTOR].snapshot
        if snapshot is None:
            return web.json_response({"error": "first collection still running"}, status=503)
        return web.json_response(snapshot.to_json(), dumps=json.dumps)

    app = web.Application()
    app[_COLLECTOR] = collector
    app.on_response_prepare.append(_headers)
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/api/v1/mesh", mesh)
    return app


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def serve(collector: Collector, *, listen: str = DEFAULT_LISTEN,
                say: Callable[[str], None] = print) -> None:
    """Serve until cancelled (Ctrl-C): collect once, bind, say the URL, keep collecting."""
    host, port = parse_listen(listen)
    if not is_loopback(host):
        say(f"warning: listening on {host}, not loopback: anyone who can reach it sees "
            "the mesh's status (no authentication)")
    await collector.collect_once()
    runner = web.AppRunner(make_app(collector), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        say(f"clustermesh dashboard: {_url(host, bound[1])} (refresh every "
            f"{collector.refresh:g}s; JSON at /api/v1/mesh; Ctrl-C to stop)")
        task = asyncio.create_task(collector.run())
        try:
            await task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await runner.cleanup()
