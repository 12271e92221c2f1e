"""Server-side guards against slow and abusive HTTP clients (docs/security.md, "Slow clients").

Raft heartbeats share the node's event loop and its one listener with client requests, so the
listener must not let clients pile up without bound:

    max_client_connections   at this many open connections (minus the peer slots), a new one
                             evicts an open connection that is not serving a request: first the
                             oldest idle keep-alive one (between requests), then the oldest slow one
                             (no headers yet, or a body still arriving); if there is none, it may
                             take one of the ``peer_slots`` on probation — only a peer route may
                             use it (else 503) — and past the cap itself it gets 503 and is closed
    peer_slots               connections kept for peers (``/raft/...``): a flood of clients that
                             send whole requests cannot lock the nodes out of each other
    max_per_address          open connections of one remote address; past it, that address's own
                             oldest idle or slow connection is evicted, else the new one gets 503
    client_body_timeout_s    a connection must deliver its first request's headers within this, a
                             request body must arrive within it (else 408 request_timeout), and a
                             connection idle after a response is closed after it too (the app
                             runner's keep-alive timeout, :attr:`HttpGuard.keepalive_timeout_s`:
                             a partial next request does not extend it)

A slowloris client (many connections, a byte at a time) therefore holds at most
``max_per_address`` sockets, each for at most ``client_body_timeout_s``, and loses them to any
client that sends whole requests — including after a first complete request; it costs the loop one
small read per byte, and can neither exhaust file descriptors nor starve the heartbeats.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import Counter

from raftstate.client import protocol as p
from raftstate.node.metrics import NodeMetrics

__all__ = ["GuardedTCPSite", "HttpGuard"]

log = logging.getLogger("raftstate.node.api.guard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: the paths of the peer routes (node to node, the endpoint table's PEER rows): what a connection
#: admitted onto a peer slot may ask for
PEER_PATHS: Final = frozenset(ep.path for ep in p.ENDPOINTS if ep.access == p.Access.PEER)

_TOO_MANY = b"too many open connections (settings.max_client_connections)\n"
_PER_ADDRESS = b"too many open connections from this address; close idle ones and retry\n"
_PEERS_ONLY = b"the node's last connections are kept for its peers; retry shortly\n"


def _answer_503(transport: asyncio.BaseTransport, body: bytes) -> None:
    """503 and close: the connection costs one accept and one write."""
    assert isinstance(transport, asyncio.WriteTransport)
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
        f"Retry-After: 1\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    transport.write(head.encode("ascii") + body)
    transport.close()


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes."""

    def __init__(self, body: bytes = _TOO_MANY) -> None:
        self.body = body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _answer_503(transport, self.body)


class _Tracked(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard told when it opens (and from which
    address) and when it closes. Every other event goes straight through."""

    __slots__ = ("guard", "host", "inner", "probation")

    def __init__(self, guard: HttpGuard, inner: RequestHandler, *, probation: bool = False) -> None:
        self.guard = guard
        self.inner = inner
        self.host: str | None = None  # set once admitted
        self.probation = probation  # on a peer slot: only a peer route may use it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else "?"
        if not self.guard._admit(self.inner, host, probation=self.probation):
            _answer_503(transport, _PER_ADDRESS)
            return
        self.host = host
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.host is None:
            return  # refused: aiohttp never saw it
        self.guard._forget(self.inner)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.host is not None:
            self.inner.data_received(data)

    def eof_received(self) -> None:
        if self.host is not None:
            self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class HttpGuard:
    """Connection caps, peer slots and the first-request deadline; install :attr:`middleware` on
    the app and pass :attr:`keepalive_timeout_s` to the app runner."""

    def __init__(
        self,
        max_connections: int,
        body_timeout_s: float,
        metrics: NodeMetrics,
        *,
        peer_slots: int = 0,
        max_per_address: int | None = None,
    ) -> None:
        max_per_address = max_connections if max_per_address is None else max_per_address
        assert max_connections > 0 and body_timeout_s > 0
        assert 0 <= peer_slots < max_connections and max_per_address > 0
        self.max_connections = max_connections
        self.body_timeout_s = body_timeout_s
        self.peer_slots = peer_slots
        self.max_per_address = max_per_address
        #: seconds an idle keep-alive connection stays open (a short one: issue 18 found the default
        #: 3630 s let a complete request plus a partial one hold a slot for an hour)
        self.keepalive_timeout_s = body_timeout_s
        # Invariants (each set holds open connections only: _forget removes a closed one):
        #   _idle        waiting for their first request's headers (the deadline closes them)
        #   _slow        evictable, oldest first: no headers yet, or a body still arriving
        #   _kept_alive  evictable first, oldest first: answered, waiting for a next request
        #   _probation   admitted onto a peer slot: only a peer route may use them
        self._idle: set[object] = set()
        self._slow: dict[object, None] = {}
        self._kept_alive: dict[object, None] = {}
        self._probation: set[object] = set()
        self._open = 0
        self._host_of: dict[object, str] = {}
        self._by_host: dict[str, dict[object, None]] = collections.defaultdict(dict)
        self.refused = Counter(
            "raftstate_http_connections_refused",
            "Client connections closed by a guard: over max_client_connections, or too slow",
            ["reason"],
            registry=metrics.registry,
        )
        for reason in ("too_many", "slow_headers", "evicted", "per_address", "peer_slot"):
            self.refused.labels(reason=reason)

    @classmethod
    def for_node(cls, max_connections: int, body_timeout_s: float, metrics: NodeMetrics) -> HttpGuard:
        """The guard of a node: 1/8 of the slots (2 to 16) kept for peers, half of the rest at most
        for one address."""
        peer_slots = max(2, min(16, max_connections // 8)) if max_connections >= 8 else 0
        per_address = max(1, (max_connections - peer_slots) // 2)
        return cls(
            max_connections, body_timeout_s, metrics, peer_slots=peer_slots, max_per_address=per_address
        )

    def body_done(self, request: web.Request) -> None:
        """The request's body has arrived: the connection is no longer a slow one."""
        self._slow.pop(request.protocol, None)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        proto = request.protocol
        self._idle.discard(proto)
        self._kept_alive.pop(proto, None)
        if not request.body_exists:
            self._slow.pop(proto, None)
        if proto in self._probation:
            self._probation.discard(proto)
            crowded = self._open > self.max_connections - self.peer_slots
            if crowded and request.path not in PEER_PATHS:
                self.refused.labels(reason="peer_slot").inc()
                resp = web.Response(status=503, body=_PEERS_ONLY, headers={"Retry-After": "1"})
                resp.force_close()
                return resp
        try:
            return await handler(request)
        finally:
            self._slow.pop(proto, None)
            if proto in self._host_of:  # still open: idle until its next request, evictable first
                self._kept_alive[proto] = None

    def wrap(self, server: Callable[[], RequestHandler]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that applies the guards around aiohttp's."""

        def factory() -> asyncio.Protocol:
            client_cap = self.max_connections - self.peer_slots
            if self._open >= client_cap and not self._evict_one():
                if self._open >= self.max_connections:
                    self.refused.labels(reason="too_many").inc()
                    return _Refuse()
                return _Tracked(self, server(), probation=True)
            return _Tracked(self, server())

        return factory

    def _admit(self, proto: RequestHandler, host: str, *, probation: bool) -> bool:
        """A new connection from ``host``: room for it under the per-address cap?"""
        mine = self._by_host[host]
        if len(mine) >= self.max_per_address and not self._evict_one(among=mine):
            self.refused.labels(reason="per_address").inc()
            if not mine:
                del self._by_host[host]
            return False
        mine[proto] = None
        self._host_of[proto] = host
        self._open += 1
        self._idle.add(proto)
        self._slow[proto] = None
        if probation:
            self._probation.add(proto)
        asyncio.get_running_loop().call_later(self.body_timeout_s, self._check_started, proto)
        return True

    def _forget(self, proto: object) -> None:
        """``proto`` no longer counts (closed, or being closed by an eviction); idempotent."""
        host = self._host_of.pop(proto, None)
        if host is None:
            return
        self._open -= 1
        assert self._open >= 0
        mine = self._by_host.get(host)
        if mine is not None:
            mine.pop(proto, None)
            if not mine:
                del self._by_host[host]
        self._idle.discard(proto)
        self._slow.pop(proto, None)
        self._kept_alive.pop(proto, None)
        self._probation.discard(proto)

    def _evict_one(self, among: dict[object, None] | None = None) -> bool:
        """Close the oldest idle keep-alive connection, else the oldest slow one (of ``among``,
        one address's, if given). False if there is none."""
        for pool in (self._kept_alive, self._slow):
            victim = next((c for c in pool if among is None or c in among), None)
            if victim is not None:
                self._forget(victim)  # at once: its close completes in a later loop turn
                self.refused.labels(reason="evicted").inc()
                self._close(victim)
                return True
        return False

    def _check_started(self, proto: RequestHandler) -> None:
        if proto not in self._idle:
            return
        self._forget(proto)
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
