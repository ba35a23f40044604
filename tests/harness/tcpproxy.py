"""An asyncio TCP proxy on loopback, to put network faults between a client and etcd.

:class:`TcpProxy` listens on ``127.0.0.1`` and forwards every accepted connection to
a target (an etcd client port).  It speaks no protocol (TLS passes through
untouched), and a test flips it between modes while connections are open:

* **forward** — normal operation (optionally with :attr:`TcpProxy.latency` added to
  every chunk, in both directions, order preserved: a *slow* link);
* **blackhole** — new connections are accepted and never forwarded, existing ones
  stop forwarding; nothing is closed.  The proxy stops reading, so bytes wait in
  the kernel's buffers like packets a partitioned link keeps retransmitting: the
  peer sees a live TCP connection that never answers (a network partition, a hung
  middlebox), and only keepalives or application heartbeats can detect it.  When
  forwarding resumes, whatever was buffered flows on, in order;
* **refuse** — existing connections are aborted (RST) and new ones are closed as
  soon as they are accepted (the remote is "down");
* :meth:`TcpProxy.drop_connections` aborts the open connections once and leaves
  the mode as it is (a load balancer restart, a NAT table flush).

:meth:`TcpProxy.retarget` makes new connections go elsewhere (a replaced
backend behind a stable address).  Counters (:attr:`accepted`, :attr:`active`)
tell a test whether a client is connected through this proxy at all.

Only loopback addresses are accepted as listen address and target.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from dataclasses import dataclass, field

FORWARD = "forward"
BLACKHOLE = "blackhole"
REFUSE = "refuse"
_MODES = (FORWARD, BLACKHOLE, REFUSE)
_CHUNK = 64 * 1024


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host}: the test proxy only talks to loopback addresses")


@dataclass(eq=False)
class _Pipe:
    """One proxied connection: the client side, the upstream side, two pump tasks."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """``proxy = await TcpProxy(target_port).start()``; ``proxy.url`` for clients."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1",
                 listen_host: str = "127.0.0.1", listen_port: int = 0,
                 scheme: str = "http", name: str = "proxy") -> None:
        _check_loopback(target_host)
        _check_loopback(listen_host)
        self.name = name
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.scheme = scheme
        self.mode = FORWARD
        #: Seconds added before forwarding each chunk (both directions).
        self.latency = 0.0
        self.accepted = 0
        self.bytes_forwarded = 0
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None
        self._unblocked = asyncio.Event()
        self._unblocked.set()

    @classmethod
    def to_url(cls, url: str, **kwargs: object) -> TcpProxy:
        """A proxy in front of an etcd client URL such as ``https://127.0.0.1:2379``."""
        scheme, rest = url.split("://", 1)
        host, port = rest.rsplit(":", 1)
        return cls(int(port), target_host=host, scheme=scheme, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.listen_host,
                                                  self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for pipe in list(self._pipes):
            pipe.abort()
        tasks = [t for p in self._pipes for t in p.tasks]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pipes.clear()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self.listen_port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.listen_host}:{self.listen_port}"

    @property
    def active(self) -> int:
        """Connections currently open through the proxy."""
        return len(self._pipes)

    def __repr__(self) -> str:
        return (f"<TcpProxy {self.name} {self.url} -> {self.target[0]}:{self.target[1]} "
                f"{self.mode} active={self.active} accepted={self.accepted}>")

    # --------------------------------------------------------------------- faults

    def set_mode(self, mode: str) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}")
        self.mode = mode
        if mode == FORWARD:
            self._unblocked.set()
        else:
            self._unblocked.clear()
        if mode == REFUSE:
            self.drop_connections()

    def forward(self) -> None:
        self.set_mode(FORWARD)

    def blackhole(self) -> None:
        self.set_mode(BLACKHOLE)

    def refuse(self) -> None:
        self.set_mode(REFUSE)

    def drop_connections(self) -> int:
        """Abort every open connection (both sides see a reset); returns how many."""
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.abort()
        self._pipes.clear()
        return len(pipes)

    def retarget(self, port: int, host: str = "127.0.0.1") -> None:
        """Send *new* connections to another backend (open ones are left alone)."""
        _check_loopback(host)
        self.target = (host, port)

    # ------------------------------------------------------------------- forwarding

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == REFUSE:
            writer.transport.abort()
            return
        pipe = _Pipe(client=writer)
        self._pipes.add(pipe)
        try:
            # A blackholed connection is held open, unread, until the proxy forwards
            # again; only then is the upstream connection made.
            if not self._unblocked.is_set():
                waiter = asyncio.create_task(self._unblocked.wait())
                pipe.tasks.append(waiter)  # drop_connections()/close() cancel it
                await waiter
                pipe.tasks.remove(waiter)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            pipe.upstream = up_writer
            pipe.tasks += [asyncio.create_task(self._pump(reader, up_writer)),
                           asyncio.create_task(self._pump(up_reader, writer))]
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            pipe.abort()
            self._pipes.discard(pipe)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._unblocked.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if self.latency > 0:
                    await asyncio.sleep(self.latency)
                await self._unblocked.wait()  # caught by a blackhole: held, not lost
                writer.write(data)
                self.bytes_forwarded += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One direction ended: end the whole connection, like a real peer would.
            with contextlib.suppress(Exception):
                writer.transport.abort()
