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
import collections
import contextlib
import logging
import time
from typing import Any, Final

import msgpack
from aiohttp import WSCloseCode, WSMsgType, web

from raftstate.client import protocol as p
from raftstate.node.api.codec import error_body, internal_error, unpack_items
from raftstate.node.api.handlers import Api, Operation, add_routes
from raftstate.node.errors import Refusal
from raftstate.node.metrics import NodeMetrics
from raftstate.node.security.auth import granted_role, need_of, refuse_weak_role
from raftstate.node.security.config import Role
from raftstate.node.security.log_fields import printable

log = logging.getLogger("raftstate.node")

_FIELDS = frozenset({"id", "op", "name", "body", "query"})


def authorize_stream(request: web.Request) -> Role:
    """The role of the stream's connection. The handshake already passed the auth middleware
    (``protocol.STREAM`` needs read: node/security/auth.py); each operation is then held to the role
    of its own row of the endpoint table (:attr:`StreamApi.needs`), the same one its HTTP route
    needs, so a read token can read over the stream but not write."""
    return granted_role(request)


#: the most requests one frame may hold; a frame with more is refused whole, before any item is
#: decoded (client/protocol.py: the client splits its frames at this size too)
MAX_ITEMS_PER_FRAME: Final = p.STREAM_MAX_ITEMS_PER_FRAME
#: requests of one frame are started in batches, one batch per event-loop turn, so that the loop
#: polls its sockets (heartbeats) in between: 200 stale reads of a 256 KB value started in one turn
#: stalled it 0.3 s. A batch doubles (up to MAX_START_BATCH) while a turn takes under TURN_BUDGET_S.
MAX_START_BATCH: Final = 64
TURN_BUDGET_S: Final = 0.005
#: while this many bytes of answers wait to be sent, the node reads no more of the client's frames
MAX_UNSENT_BYTES: Final = 4 << 20
#: an answer frame is cut once it holds this many bytes (a bigger single answer goes alone)
MAX_OUT_FRAME_BYTES: Final = 1 << 20
#: a frame the client does not take within this closes the connection (a client that does not
#: READ; an operation may be in flight much longer, e.g. a watch)
SEND_TIMEOUT_S: Final = 10.0
#: the node pings every this often; a client that does not answer within half of it is closed
HEARTBEAT_S: Final = 20.0
#: a connection with no frame from the client and nothing in flight this long is closed (1001):
#: the client opens a new one for its next call
IDLE_TIMEOUT_S: Final = 300.0


class StreamApi:
    def __init__(
        self,
        api: Api,
        metrics: NodeMetrics,
        *,
        max_frame_bytes: int,
        max_in_flight: int = 1024,
        send_timeout_s: float = SEND_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        assert max_frame_bytes > 0 and max_in_flight > 0
        assert send_timeout_s > 0 and idle_timeout_s > 0 and heartbeat_s > 0
        #: the stream's operations: the client operations of the endpoint table (client/protocol.py)
        self.ops = api.operations()
        #: operation -> the role it needs: its row's, the same its HTTP route needs
        self.needs: dict[str, Role] = {ep.name: need_of(ep) for ep in p.ENDPOINTS if ep.stream}
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self.max_in_flight = max_in_flight
        self.send_timeout_s = send_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.heartbeat_s = heartbeat_s
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
        ws = web.WebSocketResponse(
            max_msg_size=self.max_frame_bytes, compress=False, heartbeat=self.heartbeat_s
        )
        await ws.prepare(request)
        self._open.add(ws)
        conn = _Connection(ws, self, request, role)
        writer = asyncio.create_task(conn.write_loop())
        try:
            while not ws.closed:
                try:
                    msg = await ws.receive(timeout=self.idle_timeout_s)
                except TimeoutError:
                    if conn.tasks or conn.unsent:
                        continue  # an operation in flight (a watch waits long): not idle
                    await ws.close(code=WSCloseCode.GOING_AWAY, message=_IDLE)
                    break
                if msg.type == WSMsgType.BINARY:
                    await conn.on_frame(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    conn.answer(None, Refusal(p.INVALID_REQUEST, _TEXT_FRAME))
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
            if ws.exception() is not None:
                log.info("stream from %s closed: %s", printable(request.remote), printable(ws.exception()))
        finally:
            self._open.discard(ws)
            for t in list(conn.tasks):
                t.cancel()
            writer.cancel()
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):  # e.g. a cut-off reader
                    await ws.close()
        return ws


_TEXT_FRAME = "the stream takes binary frames, each a msgpack array of requests; see docs/stream.md"
_IDLE = b"idle: no request for a while; open a new stream for the next one"


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items (answers are packed one by one, then framed)."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


class _Connection:
    """One client's stream. Budget: every request of a frame, valid or not, holds one of
    ``max_in_flight`` slots from the moment it is read until its answer is SENT (not merely
    computed); reading stops while the slots are taken or while more than MAX_UNSENT_BYTES of
    answers wait. So a client that sends junk, or asks for big values and does not read, gets at
    most max_in_flight answers queued and no more of its frames read."""

    def __init__(
        self, ws: web.WebSocketResponse, stream: StreamApi, request: web.Request, role: Role
    ) -> None:
        self.ws = ws
        self.stream = stream
        self.request = request
        self.role = role
        self.tasks: set[asyncio.Task[None]] = set()
        #: answers packed one by one, waiting to be sent; unsent_bytes is the sum of their sizes
        self.unsent: collections.deque[bytes] = collections.deque()
        self.unsent_bytes = 0
        self.has_out = asyncio.Event()
        self.room = asyncio.Event()
        self.cut = False  #: the client stopped reading and was cut off: start nothing more

    def _busy(self) -> bool:
        return (
            len(self.tasks) + len(self.unsent) >= self.stream.max_in_flight
            or self.unsent_bytes > MAX_UNSENT_BYTES
        )

    async def on_frame(self, data: bytes) -> None:
        try:
            items = unpack_items(data, what="stream frame", max_items=MAX_ITEMS_PER_FRAME)
        except Refusal as err:  # too many requests in one frame
            self.answer(None, err)
            return
        except TypeError as exc:
            self.answer(None, Refusal(p.INVALID_REQUEST, f"stream frame is a msgpack {exc}; {_HOW}"))
            return
        except Exception as exc:  # msgpack raises several unrelated types
            self.answer(
                None, Refusal(p.INVALID_REQUEST, f"stream frame is not valid msgpack ({exc}); {_HOW}")
            )
            return
        batch, in_batch = 1, 0
        for i, item in enumerate(items):
            if in_batch >= batch:
                # Let the requests just started run (a stale read finishes in its first step, big
                # value and all) and the loop poll its sockets, heartbeats first, before more start;
                # their answers then count against the unsent budget below. The batch doubles while
                # a turn stays cheap and drops to one request when it did not.
                t0 = time.perf_counter()
                await asyncio.sleep(0)
                cheap = time.perf_counter() - t0 < TURN_BUDGET_S
                batch, in_batch = (min(batch * 2, MAX_START_BATCH) if cheap else 1), 0
            in_batch += 1
            while self._busy():
                self.room.clear()
                await self.room.wait()
            if self.ws.closed or self.cut:
                return
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
        except Exception:  # a bug: answer it (an error id, no details), keep serving
            status = p.INTERNAL
            self.answer(rid, internal_error(f"stream op {op} {name!r}"))
        else:
            self._queue([rid, 200, result])
        finally:
            self.stream.metrics.observe_request(op, status, time.perf_counter() - t0)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self._busy():
            self.room.set()

    def answer(self, rid: int | None, err: Refusal) -> None:
        self._queue([rid, err.status, error_body(err)])

    def _queue(self, answer: list[Any]) -> None:
        if self.cut:
            return
        packed = msgpack.packb(answer, use_bin_type=True)
        self.unsent.append(packed)
        self.unsent_bytes += len(packed)
        self.has_out.set()

    def _next_frame(self) -> tuple[bytes, int, int]:
        """The oldest answers waiting, up to MAX_OUT_FRAME_BYTES (at least one), as one frame, with
        how many answers and bytes it holds. They stay in :attr:`unsent` (and hold their slots)
        until the frame is sent: :meth:`_sent` drops them."""
        parts: list[bytes] = []
        size = 0
        for part in self.unsent:
            if parts and size + len(part) > MAX_OUT_FRAME_BYTES:
                break
            parts.append(part)
            size += len(part)
        return _array_header(len(parts)) + b"".join(parts), len(parts), size

    def _sent(self, count: int, size: int) -> None:
        for _ in range(count):
            self.unsent.popleft()
        self.unsent_bytes -= size
        assert self.unsent_bytes >= 0 and (self.unsent_bytes == 0) == (not self.unsent)

    async def write_loop(self) -> None:
        """The answers ready leave together, in frames of at most MAX_OUT_FRAME_BYTES; a frame the
        client does not take within send_timeout_s closes the connection."""
        while not self.ws.closed:
            await self.has_out.wait()
            self.has_out.clear()
            while self.unsent:
                frame, count, size = self._next_frame()
                try:
                    async with asyncio.timeout(self.stream.send_timeout_s):
                        await self.ws.send_bytes(frame)
                except TimeoutError:
                    self._slow_reader()
                    return
                except (ConnectionError, RuntimeError):
                    return  # the client went away; the reader sees it too
                self._sent(count, size)
                if not self._busy():
                    self.room.set()
                await asyncio.sleep(0)  # one frame per loop turn: heartbeats go between big ones

    def _slow_reader(self) -> None:
        """The client stopped reading: drop it (its unsent answers with it). A close handshake would
        wait on the same full buffer, so the socket is cut."""
        log.warning(
            "stream from %s closed: it took no answer frame within %g s (a client that does not read)",
            printable(self.request.remote),
            self.stream.send_timeout_s,
        )
        self.cut = True
        for t in list(self.tasks):
            t.cancel()
        self.unsent.clear()
        self.unsent_bytes = 0
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        self.room.set()


_HOW = 'send a msgpack array of {"id": int, "op": str, "name"?: str, "body"?: any, "query"?: {str: str}}'
