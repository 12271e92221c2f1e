"""The slow-client guards on a real listener (in-process aiohttp server, raw sockets on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from raftstate.node.api.codec import BODY_DONE, BODY_TIMEOUT_S, error_response, read_body
from raftstate.node.api.guard import GuardedTCPSite, HttpGuard
from raftstate.node.errors import Refusal
from raftstate.node.metrics import NodeMetrics
from raftstate.node.ops.local_cluster import free_ports

DEADLINE_S = 0.5


async def echo(request: web.Request) -> web.Response:
    try:
        body = await read_body(request, 1 << 16)
    except Refusal as err:  # a slow body
        return error_response(request, err)
    return web.json_response({"got": body})


async def hold(request: web.Request) -> web.Response:
    """A request that stays in progress for a while (the test's checks take ~0.1 s)."""
    await asyncio.sleep(1.5)
    return web.Response()


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[int, HttpGuard, NodeMetrics]]:
    metrics = NodeMetrics()
    guard = HttpGuard(max_connections=4, body_timeout_s=DEADLINE_S, metrics=metrics)
    app = web.Application()
    app[BODY_TIMEOUT_S] = DEADLINE_S
    app[BODY_DONE] = guard.body_done
    app.middlewares.append(guard.middleware)
    app.router.add_post("/echo", echo)
    app.router.add_get("/hold", hold)
    runner = web.AppRunner(app, lingering_time=0.0)
    await runner.setup()
    (port,) = free_ports(1)
    site = GuardedTCPSite(runner, "127.0.0.1", port, guard)
    await site.start()
    yield port, guard, metrics
    await runner.cleanup()


def count(metrics: NodeMetrics, reason: str) -> float:
    for line in metrics.render().decode().splitlines():
        if line.startswith(f'raftstate_http_connections_refused_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(reason)


async def request(port: int, body: bytes = b'{"a": 1}') -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    data = await r.read()
    w.close()
    return data


async def test_headers_that_never_finish_are_cut_at_the_deadline(
    guarded: tuple[int, HttpGuard, NodeMetrics],
) -> None:
    port, _, metrics = guarded
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert await asyncio.wait_for(r.read(), DEADLINE_S * 10) == b"", "closed without an answer"
    w.close()
    assert count(metrics, "slow_headers") == 1


async def test_a_body_that_trickles_gets_408(guarded: tuple[int, HttpGuard, NodeMetrics]) -> None:
    port, _, _ = guarded
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    data = await asyncio.wait_for(r.read(), DEADLINE_S * 10)
    w.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:100]
    assert b"settings.client_body_timeout_s" in data


async def test_at_the_cap_the_oldest_slow_connection_makes_room(
    guarded: tuple[int, HttpGuard, NodeMetrics],
) -> None:
    port, _, metrics = guarded
    slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]  # fill the cap, idle
    await asyncio.sleep(0.05)
    assert b'"got": {"a": 1}' in (await request(port)).replace(b'":{', b'": {').replace(b":1", b": 1")
    assert count(metrics, "evicted") == 1
    assert await asyncio.wait_for(slow[0][0].read(), 1) == b"", "the oldest idle one was closed"
    for _, w in slow:
        w.close()


async def test_at_the_cap_an_idle_keep_alive_connection_is_evicted_before_a_slow_one(
    guarded: tuple[int, HttpGuard, NodeMetrics],
) -> None:
    """Issue 18: a connection that delivered a whole request and now idles between requests held
    its slot (keep-alive) beyond the guard's reach. It is now evictable again, and first."""
    port, _, metrics = guarded
    slow = await asyncio.open_connection("127.0.0.1", port)  # no headers yet: evictable
    await asyncio.sleep(0.05)
    kept = []
    for _ in range(3):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        kept.append((r, w))
    await asyncio.sleep(0.05)
    assert (await request(port)).startswith(b"HTTP/1.1 200")
    assert count(metrics, "evicted") == 1
    # the oldest idle keep-alive connection is closed (its 200 body was already read: nothing more)
    assert await asyncio.wait_for(kept[0][0].read(), 1) == b'{"got": {}}'
    assert kept[0][0].at_eof()
    assert not slow[0].at_eof()
    for _, w in [slow, *kept]:
        w.close()


async def test_at_the_cap_with_every_connection_serving_a_request_new_ones_get_503(
    guarded: tuple[int, HttpGuard, NodeMetrics],
) -> None:
    port, _, metrics = guarded
    # Four connections whose request is in progress (a body that stays incomplete but whose
    # arrival was declared done would be odd; a handler still running is the honest case).
    held = []
    for _ in range(4):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        held.append(w)
    await asyncio.sleep(0.1)
    assert (await request(port)).startswith(b"HTTP/1.1 503")
    assert count(metrics, "too_many") == 1
    for w in held:
        w.close()
