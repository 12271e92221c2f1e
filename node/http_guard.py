"""Server-side guards against slow and abusive HTTP clients (docs/security.md, "Slow clients").

Raft heartbeats share the node's event loop and its one listener with client requests, so the
listener must not let clients pile up without bound:

    max_client_connections   a connection beyond this many open ones gets a 503 and is closed at
                             once (established peer streams are already counted, and stay)
    client_body_timeout_s    a connection must deliver its first request's headers within this,
                             and a request body must arrive within it (else 408 request_timeout)

A slowloris client (many connections, a byte at a time) therefore holds at most
``max_client_connections`` sockets for at most ``client_body_timeout_s`` each, and costs the loop
one small read per byte; it can neither exhaust file descriptors nor starve the heartbeats.
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

log = logging.getLogger("raftstate.node.http_guard")

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
        # Connections still waiting for their first request's headers. Each enters once (accept) and
        # leaves once (first request, or the deadline), so the set never outgrows the open connections.
        self._waiting: set[object] = set()
        self.refused = Counter(
            "raftstate_http_connections_refused",
            "Client connections closed by a guard: over max_client_connections, or too slow",
            ["reason"],
            registry=metrics.registry,
        )
        for reason in ("too_many", "slow_headers"):
            self.refused.labels(reason=reason)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._waiting.discard(request.protocol)
        return await handler(request)

    def wrap(self, server: Callable[[], RequestHandler]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that applies the guards around aiohttp's."""
        connections: Callable[[], int] = lambda: len(getattr(server, "connections", ()))  # noqa: E731

        def factory() -> asyncio.Protocol:
            if connections() >= self.max_connections:
                self.refused.labels(reason="too_many").inc()
                return _Refuse()
            proto = server()
            self._waiting.add(proto)
            asyncio.get_running_loop().call_later(self.body_timeout_s, self._check_started, proto)
            return proto

        return factory

    def _check_started(self, proto: RequestHandler) -> None:
        if proto not in self._waiting:
            return
        self._waiting.discard(proto)
        if proto.transport is None:
            return  # closed meanwhile
        self.refused.labels(reason="slow_headers").inc()
        proto.force_close()
        proto.transport.close()


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
