"""Issue 18, item 1: the budget of one /v1/stream connection (node/api/stream.py).

Unit tests of ``_Connection`` with a stand-in WebSocket whose ``send_bytes`` the test controls (a
client that reads, or one that does not), plus the idle timeout over a real in-process socket.
The same frames against a real 3-node cluster: tests/test_hardening_cluster.py and
scripts/attack_stream.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from raftstate.client import protocol as p
from raftstate.client.stream import StreamConnection
from raftstate.node.api import stream as stream_mod
from raftstate.node.api.stream import MAX_ITEMS_PER_FRAME, MAX_OUT_FRAME_BYTES, StreamApi, _Connection
from raftstate.node.metrics import NodeMetrics
from raftstate.node.security.config import Role


class StubApi:
    """``operations()`` as the node's Api has it: ``get`` answers a value of the asked size, and
    ``lock_get`` waits until :attr:`release` is set (an operation long in flight, like a watch)."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()

    def operations(self) -> dict[str, Any]:
        async def get(name: str, body: Any, query: Mapping[str, str]) -> Any:
            self.started += 1
            return {"value": "v" * int(name or 0)}

        async def lock_get(name: str, body: Any, query: Mapping[str, str]) -> Any:
            self.started += 1
            await self.release.wait()
            return {}

        return {"get": get, "lock_get": lock_get}


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class FakeRequest:
    remote = "127.0.0.9"
    app: dict[object, object] = {}  # no authenticator: auth off

    def __init__(self) -> None:
        self.transport = FakeTransport()


class FakeWs:
    """A WebSocket whose client reads only while :attr:`reading` is set."""

    def __init__(self, reading: bool = True) -> None:
        self.closed = False
        self.frames: list[bytes] = []
        self.reading = asyncio.Event()
        if reading:
            self.reading.set()

    async def send_bytes(self, data: bytes) -> None:
        await self.reading.wait()
        self.frames.append(data)

    def answers(self) -> list[list[Any]]:
        return [a for f in self.frames for a in msgpack.unpackb(f, raw=False, strict_map_key=False)]


def connection(
    ws: FakeWs, api: StubApi, *, max_in_flight: int = 1024, send_timeout_s: float = 10.0
) -> tuple[_Connection, asyncio.Task[None]]:
    stream = StreamApi(
        api,  # type: ignore[arg-type]  # the stub has the one method StreamApi calls
        NodeMetrics(),
        max_frame_bytes=4 << 20,
        max_in_flight=max_in_flight,
        send_timeout_s=send_timeout_s,
    )
    conn = _Connection(ws, stream, FakeRequest(), Role.ADMIN)  # type: ignore[arg-type]
    return conn, asyncio.create_task(conn.write_loop())


def frame(items: list[Any]) -> bytes:
    data: bytes = msgpack.packb(items, use_bin_type=True)
    return data


async def test_a_frame_over_the_item_cap_is_refused_whole_before_anything_runs() -> None:
    api, ws = StubApi(), FakeWs()
    conn, writer = connection(ws, api)
    junk = b"\xdd" + (100_000).to_bytes(4, "big") + b"\xc0" * 100_000  # the 100 KB frame
    await conn.on_frame(junk)
    await conn.on_frame(frame([{"id": i, "op": "get"} for i in range(MAX_ITEMS_PER_FRAME + 1)]))
    await asyncio.sleep(0.05)
    answers = ws.answers()
    assert [(rid, status) for rid, status, _ in answers] == [(None, 400), (None, 400)], answers
    assert answers[0][2]["error"]["limit"] == MAX_ITEMS_PER_FRAME
    assert "100000 items" in answers[0][2]["error"]["message"]
    assert api.started == 0, "nothing of a refused frame ran"
    writer.cancel()


async def test_every_item_valid_or_not_holds_a_slot_until_its_answer_is_sent() -> None:
    """Before: junk items were answered at once and never counted, so one frame could queue any
    number of answers. Now reading stops at max_in_flight answers not yet SENT."""
    api, ws = StubApi(), FakeWs(reading=False)
    conn, writer = connection(ws, api, max_in_flight=4)
    reader = asyncio.create_task(conn.on_frame(frame(["junk"] * 10 + [{"id": 1, "op": "get"}])))
    await asyncio.sleep(0.1)
    assert not reader.done(), "the frame's reading stopped at the budget"
    assert len(conn.unsent) == 4 and api.started == 0
    ws.reading.set()  # the client reads again
    await asyncio.wait_for(reader, 2)
    await asyncio.sleep(0.05)
    assert len(ws.answers()) == 11 and api.started == 1
    writer.cancel()


async def test_reading_stops_while_unsent_answer_bytes_exceed_the_budget() -> None:
    api, ws = StubApi(), FakeWs(reading=False)
    conn, writer = connection(ws, api)
    big = 512 * 1024
    reader = asyncio.create_task(
        conn.on_frame(frame([{"id": i, "op": "get", "name": str(big)} for i in range(200)]))
    )
    await asyncio.sleep(0.2)
    assert not reader.done()
    # the budget, plus at most one batch of answers started before it was seen
    assert conn.unsent_bytes <= stream_mod.MAX_UNSENT_BYTES + stream_mod.MAX_START_BATCH * (big + 100)
    assert api.started < 200
    ws.reading.set()
    await asyncio.wait_for(reader, 10)
    writer.cancel()


async def test_answer_frames_are_cut_by_size() -> None:
    api, ws = StubApi(), FakeWs()
    conn, writer = connection(ws, api)
    await conn.on_frame(frame([{"id": i, "op": "get", "name": str(300_000)} for i in range(20)]))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(ws.answers()) == 20:
            break
    assert len(ws.answers()) == 20
    assert len(ws.frames) > 1
    assert all(len(f) <= MAX_OUT_FRAME_BYTES + 16 for f in ws.frames), [len(f) for f in ws.frames]
    writer.cancel()


async def test_a_client_that_does_not_read_is_cut_after_the_send_timeout() -> None:
    api, ws = StubApi(), FakeWs(reading=False)
    conn, writer = connection(ws, api, send_timeout_s=0.3)
    await conn.on_frame(frame([{"id": 1, "op": "get", "name": "10"}]))
    await asyncio.wait_for(writer, 3)
    assert conn.request.transport.aborted  # type: ignore[attr-defined]
    assert conn.cut and not conn.unsent


async def test_an_operation_long_in_flight_is_not_a_slow_reader() -> None:
    """The send timeout is about a client not reading, not about an op in flight (a watch may wait
    ~60 s): with nothing to send, no timeout runs."""
    api, ws = StubApi(), FakeWs()
    conn, writer = connection(ws, api, send_timeout_s=0.2)
    await conn.on_frame(frame([{"id": 1, "op": "lock_get", "name": "l"}]))
    await asyncio.sleep(0.6)
    assert not conn.cut and not writer.done()
    api.release.set()
    await asyncio.sleep(0.05)
    assert [a[:2] for a in ws.answers()] == [[1, 200]]
    writer.cancel()


@pytest.fixture
async def idle_server() -> AsyncIterator[tuple[TestServer, StubApi]]:
    api = StubApi()
    app = web.Application()
    StreamApi(api, NodeMetrics(), max_frame_bytes=1 << 20, idle_timeout_s=0.3).install(app)  # type: ignore[arg-type]
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    yield srv, api
    api.release.set()
    await srv.close()


async def test_an_idle_stream_is_closed_and_one_with_an_op_in_flight_is_not(
    idle_server: tuple[TestServer, StubApi],
) -> None:
    srv, api = idle_server
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(srv.make_url(p.STREAM.path)) as idle:
            msg = await asyncio.wait_for(idle.receive(), 3)
            assert msg.type == aiohttp.WSMsgType.CLOSE and idle.close_code == aiohttp.WSCloseCode.GOING_AWAY
            assert "idle" in msg.extra
        async with s.ws_connect(srv.make_url(p.STREAM.path)) as busy:
            await busy.send_bytes(frame([{"id": 7, "op": "lock_get", "name": "l"}]))
            await asyncio.sleep(0.9)  # three idle timeouts
            assert not busy.closed
            api.release.set()
            msg = await asyncio.wait_for(busy.receive(), 3)
            assert msg.type == aiohttp.WSMsgType.BINARY
            assert msgpack.unpackb(msg.data)[0][:2] == [7, 200]


async def test_the_client_splits_its_frames_at_the_node_s_item_cap(
    idle_server: tuple[TestServer, StubApi],
) -> None:
    """2500 calls in one loop turn: the client sends them in frames of at most 1000 requests, so
    none is refused for the frame's size."""
    srv, api = idle_server
    sent: list[int] = []
    async with aiohttp.ClientSession() as session:
        conn = StreamConnection(session, str(srv.make_url("")))
        real_send = conn._send

        def spy(ws: aiohttp.ClientWebSocketResponse, out: list[dict[str, Any]]) -> None:
            sent.append(len(out))
            real_send(ws, out)

        conn._send = spy  # type: ignore[method-assign]
        results = await asyncio.gather(*(conn.call("get", "1", timeout_s=20) for _ in range(2500)))
        await conn.aclose()
    assert all(status == 200 for status, _ in results)
    assert sent == [1000, 1000, 500] and api.started == 2500
