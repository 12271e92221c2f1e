"""``GET /v1/stream`` (``protocol.STREAM``): many client operations in flight on one WebSocket.

See docs/stream.md. Each binary frame from the client is a msgpack array of requests ``{"id",
"op", "name"?, "body"?, "query"?}``; each frame back is a msgpack array of answers ``[id, status,
body]`` — the HTTP status and body the same request would get over HTTP, in completion order
(match them by id). Every operation runs through the SAME function as its HTTP endpoint
(``Api.operations()``: validation, size limits, proposing, errors), so the two paths cannot drift
apart; the operations are the client operations of the endpoint table (client/protocol.py).

Why: one HTTP request per operation costs the leader an HTTP parse, a handler task and a response
write each; here a frame of N requests costs one read and the answers of one loop turn leave in
one write. That is the per-operation overhead that bounds a Python leader.

Failure behaviour: a frame that is not msgpack, not an array, or a request that is not a valid
map is answered ``[null or id, 400, invalid_request]`` naming what is wrong, and the connection
stays usable. A frame over ``max_frame_bytes`` closes the connection with code 1009 and a reason
(nothing in that frame was run). At most ``max_in_flight`` operations run per connection: beyond
that the node stops reading the socket (backpressure) until some finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgpack
from aiohttp import WSCloseCode, WSMsgType, web

from raftstate.client import protocol as p
from raftstate.node.api.codec import error_body
from raftstate.node.api.handlers import Api, Operation, add_routes
from raftstate.node.errors import Refusal
from raftstate.node.metrics import NodeMetrics
from raftstate.node.security.auth import granted_role, need_of, refuse_weak_role
from raftstate.node.security.config import Role

log = logging.getLogger("raftstate.node")

_FIELDS = frozenset({"id", "op", "name", "body", "query"})


def authorize_stream(request: web.Request) -> Role:
    """The role of the stream's connection. The handshake already passed the auth middleware
    (``protocol.STREAM`` needs read: node/security/auth.py); each operation is then held to the role
    of its own row of the endpoint table (:attr:`StreamApi.needs`), the same one its HTTP route
    needs, so a read token can read over the stream but not write."""
    return granted_role(request)


class StreamApi:
    def __init__(
        self, api: Api, metrics: NodeMetrics, *, max_frame_bytes: int, max_in_flight: int = 1024
    ) -> None:
        assert max_frame_bytes > 0 and max_in_flight > 0
        #: the stream's operations: the client operations of the endpoint table (client/protocol.py)
        self.ops = api.operations()
        #: operation -> the role it needs: its row's, the same its HTTP route needs
        self.needs: dict[str, Role] = {ep.name: need_of(ep) for ep in p.ENDPOINTS if ep.stream}
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self.max_in_flight = max_in_flight
        self._open: set[web.WebSocketResponse] = set()

    def install(self, app: web.Application) -> None:
        add_routes(app, {p.STREAM: self.handle})
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        """Close every client stream first: aiohttp's cleanup otherwise waits for each handler (a
        client's stream stays open for as long as the client lives) and a SIGTERM would hang."""
        for ws in list(self._open):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        role = authorize_stream(request)
        ws = web.WebSocketResponse(max_msg_size=self.max_frame_bytes, compress=False)
        await ws.prepare(request)
        self._open.add(ws)
        conn = _Connection(ws, self, request, role)
        writer = asyncio.create_task(conn.write_loop())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await conn.on_frame(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    conn.answer(None, Refusal(p.INVALID_REQUEST, _TEXT_FRAME))
            if ws.exception() is not None:
                log.info("stream from %s closed: %s", request.remote, ws.exception())
        finally:
            self._open.discard(ws)
            for t in list(conn.tasks):
                t.cancel()
            writer.cancel()
        return ws


_TEXT_FRAME = "the stream takes binary frames, each a msgpack array of requests; see docs/stream.md"


class _Connection:
    def __init__(
        self, ws: web.WebSocketResponse, stream: StreamApi, request: web.Request, role: Role
    ) -> None:
        self.ws = ws
        self.stream = stream
        self.request = request
        self.role = role
        self.tasks: set[asyncio.Task[None]] = set()
        self.out: list[list[Any]] = []
        self.has_out = asyncio.Event()
        self.room = asyncio.Event()

    async def on_frame(self, data: bytes) -> None:
        try:
            items = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            self.answer(
                None, Refusal(p.INVALID_REQUEST, f"stream frame is not valid msgpack ({exc}); {_HOW}")
            )
            return
        if not isinstance(items, list):
            got = type(items).__name__
            self.answer(None, Refusal(p.INVALID_REQUEST, f"stream frame is a msgpack {got}; {_HOW}"))
            return
        for i, item in enumerate(items):
            while len(self.tasks) >= self.stream.max_in_flight:
                self.room.clear()
                await self.room.wait()
            self.start(i, item)

    def start(self, i: int, item: Any) -> None:
        if not isinstance(item, dict):
            self.answer(None, Refusal(p.INVALID_REQUEST, f"request [{i}] is a {type(item).__name__}; {_HOW}"))
            return
        rid = item.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            self.answer(None, Refusal(p.INVALID_REQUEST, f'request [{i}]: "id" must be an integer; {_HOW}'))
            return
        try:
            op, fn, name, body, query = self._parse(item)
        except Refusal as err:
            self.answer(rid, err)
            return
        task = asyncio.create_task(self.run(rid, op, fn, name, body, query))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _parse(self, item: dict[str, Any]) -> tuple[str, Operation, str, Any, dict[str, str]]:
        extra = sorted(set(item) - _FIELDS)
        if extra:
            raise Refusal(p.INVALID_REQUEST, f"unknown request field(s) {extra}; {_HOW}", field=extra[0])
        op = item.get("op")
        fn = self.stream.ops.get(op) if isinstance(op, str) else None
        if fn is None or not isinstance(op, str):
            raise Refusal(
                p.INVALID_REQUEST,
                f"unknown op {op!r}; one of {', '.join(sorted(self.stream.ops))}",
                field="op",
            )
        refuse_weak_role(self.request, self.role, self.stream.needs.get(op, Role.ADMIN), f"stream op {op!r}")
        name = item.get("name", "")
        if not isinstance(name, str):
            raise Refusal(p.INVALID_REQUEST, f'{op}: "name" must be a string', field="name")
        query = item.get("query", {})
        if not isinstance(query, dict) or not all(isinstance(v, str) for v in query.values()):
            raise Refusal(
                p.INVALID_REQUEST, f'{op}: "query" must map names to strings, as in a URL', field="query"
            )
        return op, fn, name, item.get("body", {}), query

    async def run(
        self, rid: int, op: str, fn: Operation, name: str, body: Any, query: dict[str, str]
    ) -> None:
        t0 = time.perf_counter()
        status = "ok"
        try:
            result = await fn(name, body, query)
        except Refusal as err:
            status = err.code
            self.answer(rid, err)
        except Exception as exc:  # a bug: answer it, keep serving
            status = p.INTERNAL
            log.exception("stream op %s %r failed", op, name)
            self.answer(rid, Refusal(p.INTERNAL, f"internal error: {exc!r}"))
        else:
            self.out.append([rid, 200, result])
            self.has_out.set()
        finally:
            self.stream.metrics.observe_request(op, status, time.perf_counter() - t0)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.room.set()

    def answer(self, rid: int | None, err: Refusal) -> None:
        self.out.append([rid, err.status, error_body(err)])
        self.has_out.set()

    async def write_loop(self) -> None:
        """All answers ready in one loop turn leave in one frame."""
        while not self.ws.closed:
            await self.has_out.wait()
            self.has_out.clear()
            out, self.out = self.out, []
            try:
                await self.ws.send_bytes(msgpack.packb(out, use_bin_type=True))
            except (ConnectionError, RuntimeError):
                return  # the client went away; the reader sees it too


_HOW = 'send a msgpack array of {"id": int, "op": str, "name"?: str, "body"?: any, "query"?: {str: str}}'
