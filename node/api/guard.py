"""Server-side guards against slow and abusive HTTP clients (docs/security.md, "Slow clients").

Raft heartbeats share the node's event loop and its one listener with client requests, so the
listener must not let clients pile up without bound:

    max_client_connections   at this many open connections, a new one evicts the oldest connection
                             that has not yet delivered a whole request (no headers yet, or a body
                             still arriving); if there is none, the new one gets 503 and is closed
                             (established peer streams count, and are never evicted: they have
                             long delivered their request)
    client_body_timeout_s    a connection must deliver its first request's headers within this,
                             and a request body must arrive within it (else 408 request_timeout)

A slowloris client (many connections, a byte at a time) therefore holds at most
``max_client_connections`` sockets, each for at most ``client_body_timeout_s``, and loses them to
any client that sends whole requests; it costs the loop one small read per byte, and can neither
exhaust file descriptors nor starve the heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import Counter

from raftstate.node.metrics import NodeMetrics

__all__ = ["GuardedTCPSite", "HttpGuard"]

log = logging.getLogger("raftstate.node.api.guard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes: the connection costs one accept and one write."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        body = b"too many open connections (settings.max_client_connections)\n"
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        transport.write(head.encode("ascii") + body)
        transport.close()


class HttpGuard:
    """Connection cap and first-request deadline; install :attr:`middleware` on the app."""

    def __init__(self, max_connections: int, body_timeout_s: float, metrics: NodeMetrics) -> None:
        assert max_connections > 0 and body_timeout_s > 0
        self.max_connections = max_connections
        self.body_timeout_s = body_timeout_s
        # Connections still waiting for their first request's headers (the deadline closes them),
        # and, oldest first, those that may be evicted: no headers yet, or their first request's
        # body still arriving (read_body reports its end through body_done). Each enters once
        # (accept) and leaves once (its first request is whole, eviction, or the deadline), so
        # neither outgrows the open connections.
        self._idle: set[object] = set()
        self._evictable: dict[object, None] = {}
        self.refused = Counter(
            "raftstate_http_connections_refused",
            "Client connections closed by a guard: over max_client_connections, or too slow",
            ["reason"],
            registry=metrics.registry,
        )
        for reason in ("too_many", "slow_headers", "evicted"):
            self.refused.labels(reason=reason)

    def body_done(self, request: web.Request) -> None:
        """The request's body has arrived: the connection is no longer a slow one."""
        self._evictable.pop(request.protocol, None)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        proto = request.protocol
        self._idle.discard(proto)
        if not request.body_exists:
            self._evictable.pop(proto, None)
        try:
            return await handler(request)
        finally:
            self._evictable.pop(proto, None)

    def wrap(self, server: Callable[[], RequestHandler]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that applies the guards around aiohttp's."""
        connections: Callable[[], int] = lambda: len(getattr(server, "connections", ()))  # noqa: E731

        def factory() -> asyncio.Protocol:
            if connections() >= self.max_connections:
                if not self._evictable:
                    self.refused.labels(reason="too_many").inc()
                    return _Refuse()
                victim = next(iter(self._evictable))  # the oldest slow one makes room
                self._evictable.pop(victim)
                self._idle.discard(victim)
                self.refused.labels(reason="evicted").inc()
                self._close(victim)
            proto = server()
            self._idle.add(proto)
            self._evictable[proto] = None
            asyncio.get_running_loop().call_later(self.body_timeout_s, self._check_started, proto)
            return proto

        return factory

    def _check_started(self, proto: RequestHandler) -> None:
        if proto not in self._idle:
            return
        self._idle.discard(proto)
        self._evictable.pop(proto, None)
        if proto.transport is None:
            return  # closed meanwhile
        self.refused.labels(reason="slow_headers").inc()
        self._close(proto)

    @staticmethod
    def _close(proto: object) -> None:
        assert isinstance(proto, RequestHandler)
        transport = proto.transport
        proto.force_close()
        if transport is not None:
            transport.close()


class GuardedTCPSite(web.TCPSite):
    """``web.TCPSite`` whose listener goes through an :class:`HttpGuard` (same arguments, plus it)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: HttpGuard, **kw: Any) -> None:
        super().__init__(runner, host, port, **kw)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            self._guard.wrap(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
