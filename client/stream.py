"""Client end of ``/v1/stream`` (docs/stream.md): many operations in flight on one WebSocket.

``StreamConnection.call(op, name, body, query)`` returns ``(status, body)`` exactly as the HTTP
endpoint of that operation would; calls made in the same loop turn leave in one frame, and answers
are matched by id. If the connection breaks, every call in flight fails with ``ResponseLost`` (it
may have been applied) and the next call reconnects; a refused connection is ``ConnectFailed``.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from typing import Any

import aiohttp
import msgpack

from raftstate.client import protocol as p
from raftstate.client._transport import (
    AiohttpTransport,
    Request,
    Response,
    connect_error,
    encode_body,
)
from raftstate.client.errors import ConnectFailed, InvalidRequest, ResponseLost

__all__ = ["StreamConnection", "StreamUnsupported", "StreamingTransport"]


class StreamUnsupported(ConnectFailed):
    """The node has no /v1/stream (an older version): use HTTP with it."""


class StreamConnection:
    """One node's stream. Safe to call concurrently from one event loop."""

    def __init__(
        self, session: aiohttp.ClientSession, endpoint: str, *, connect_timeout_s: float = 1.0
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._session = session
        self._connect_timeout_s = connect_timeout_s
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connecting: asyncio.Future[aiohttp.ClientWebSocketResponse] | None = None
        self._ids = itertools.count(1)
        #: id -> (the connection it was sent on, its answer)
        self._pending: dict[int, tuple[object, asyncio.Future[tuple[int, Any]]]] = {}
        self._outbox: list[dict[str, Any]] = []
        self._flush_scheduled = False
        self._reader: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[bool] | None = None

    async def call(
        self,
        op: str,
        name: str = "",
        body: Any = None,
        query: dict[str, str] | None = None,
        *,
        timeout_s: float,
    ) -> tuple[int, Any]:
        try:
            ws = await asyncio.wait_for(self._connect(), timeout_s)
        except TimeoutError:
            raise ConnectFailed(
                f"no stream to {self.endpoint} within {timeout_s:.2f}s", node=self.endpoint, ran_out=True
            ) from None
        rid = next(self._ids)
        req: dict[str, Any] = {"id": rid, "op": op}
        if name:
            req["name"] = name
        if body is not None:
            req["body"] = body
        if query:
            req["query"] = query
        fut: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (ws, fut)
        self._outbox.append(req)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, ws)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise ResponseLost(
                f"no answer from {self.endpoint} to stream op {op} {name!r} within {timeout_s:.2f}s",
                node=self.endpoint,
            ) from None
        finally:
            self._pending.pop(rid, None)

    def _flush(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._flush_scheduled = False
        out, self._outbox = self._outbox, []
        # The node takes at most STREAM_MAX_ITEMS_PER_FRAME requests per frame.
        cap = p.STREAM_MAX_ITEMS_PER_FRAME
        for i in range(0, len(out), cap):
            self._send(ws, out[i : i + cap])

    def _send(self, ws: aiohttp.ClientWebSocketResponse, out: list[dict[str, Any]]) -> None:
        if not out:
            return
        try:
            data = msgpack.packb(out, use_bin_type=True, datetime=False)
        except (TypeError, ValueError, OverflowError):
            out = [req for req in out if self._encodable(req)]
            if not out:
                return
            data = msgpack.packb(out, use_bin_type=True, datetime=False)
        # send_bytes only queues into the transport once the handshake is done; keep it ordered.
        task = asyncio.ensure_future(ws.send_bytes(data))
        task.add_done_callback(lambda t: self._sent(ws, t))

    def _encodable(self, req: dict[str, Any]) -> bool:
        """Fail the call of a request that cannot be encoded (as the HTTP transport does)."""
        try:
            encode_body(req, what=f"stream op {req['op']} {req.get('name', '')!r}")
        except InvalidRequest as exc:
            entry = self._pending.pop(req["id"], None)
            if entry is not None and not entry[1].done():
                entry[1].set_exception(exc)
            return False
        return True

    def _sent(self, ws: aiohttp.ClientWebSocketResponse, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._broken(ws, f"send failed: {task.exception()}")

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        if self._ws is not None and not self._ws.closed:
            return self._ws
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        timeout = aiohttp.ClientWSTimeout(ws_close=1.0)
        try:
            ws = await asyncio.wait_for(
                self._session.ws_connect(
                    self.endpoint + p.STREAM.path, timeout=timeout, max_msg_size=0, autoping=True
                ),
                self._connect_timeout_s,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise StreamUnsupported(
                f"{self.endpoint} refused a stream ({exc.status} {exc.message})", node=self.endpoint
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise connect_error(self.endpoint, exc) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConnectFailed(
                f"cannot open a stream to {self.endpoint}: {exc}", node=self.endpoint
            ) from None
        self._ws = ws
        self._reader = asyncio.ensure_future(self._read(ws))
        return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        reason = "closed by the node"
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                for rid, status, body in msgpack.unpackb(msg.data, raw=False, strict_map_key=False):
                    entry = self._pending.get(rid) if rid is not None else None
                    if entry is not None and not entry[1].done():
                        entry[1].set_result((status, body))
                    elif rid is None:
                        reason = f"the node refused a frame: {body}"
            if ws.close_code is not None:
                reason = f"closed by the node (code {ws.close_code})"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        self._broken(ws, reason)

    def _broken(self, ws: aiohttp.ClientWebSocketResponse | None, reason: str) -> None:
        """Fail the calls sent on ``ws``; the next call opens a new connection."""
        if ws is None:
            return
        if self._ws is ws:
            self._ws = None
        if not ws.closed:
            self._closing = asyncio.ensure_future(ws.close())
        for rid, (on, fut) in list(self._pending.items()):
            if on is ws and not fut.done():
                del self._pending[rid]
                fut.set_exception(
                    ResponseLost(f"stream to {self.endpoint} broke ({reason})", node=self.endpoint)
                )

    async def aclose(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class StreamingTransport(AiohttpTransport):
    """The client's default transport: every client operation (a row with ``stream`` in the endpoint
    table, sent as its op) over one ``/v1/stream`` WebSocket per node (many in flight at once),
    everything else — and every operation on a node without the stream — over HTTP. Same answers,
    same ConnectFailed/ResponseLost meaning as HTTP."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        connect_timeout_s: float = 1.0,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            max_connections=max_connections,
            connect_timeout_s=connect_timeout_s,
            token=token,
            ssl_context=ssl_context,
        )
        self._streams: dict[str, StreamConnection] = {}
        self._http_only: set[str] = set()
        self._connect_s = connect_timeout_s

    async def send(self, endpoint: str, request: Request, timeout_s: float) -> Response:
        if not request.op.stream or endpoint in self._http_only:
            return await super().send(endpoint, request, timeout_s)
        conn = self._streams.get(endpoint)
        if conn is None:
            conn = StreamConnection(self._get_session(), endpoint, connect_timeout_s=self._connect_s)
            self._streams[endpoint] = conn
        try:
            status, body = await conn.call(
                request.op.name, request.name, request.body, dict(request.query), timeout_s=timeout_s
            )
        except StreamUnsupported:
            self._http_only.add(endpoint)
            return await super().send(endpoint, request, timeout_s)
        return Response(status, body)

    async def aclose(self) -> None:
        streams, self._streams = self._streams, {}
        for conn in streams.values():
            await conn.aclose()
        await super().aclose()
