"""Issue 18, item 2: idle keep-alive connections, peer slots and the per-address cap
(node/api/guard.py), on a real listener (in-process aiohttp server, raw sockets). Source addresses
127.0.0.2 and 127.0.0.3 stand for two client machines (Linux routes all of 127/8 to loopback)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from raftstate.client import protocol as p
from raftstate.node.api.codec import BODY_DONE, BODY_TIMEOUT_S
from raftstate.node.api.guard import GuardedTCPSite, HttpGuard
from raftstate.node.metrics import NodeMetrics
from raftstate.node.ops.local_cluster import free_ports

DEADLINE_S = 0.5


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(guard: HttpGuard) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app[BODY_TIMEOUT_S] = DEADLINE_S
    app[BODY_DONE] = guard.body_done
    app.middlewares.append(guard.middleware)
    app.router.add_get("/health", ok)
    app.router.add_get(p.RAFT_STREAM.path, ok)  # stands for the peer route
    runner = web.AppRunner(app, lingering_time=0.0, keepalive_timeout=guard.keepalive_timeout_s)
    await runner.setup()
    (port,) = free_ports(1)
    await GuardedTCPSite(runner, "127.0.0.1", port, guard).start()
    return runner, port


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[int, HttpGuard, NodeMetrics]]:
    metrics = NodeMetrics()
    guard = HttpGuard(6, DEADLINE_S, metrics, peer_slots=2, max_per_address=3)
    runner, port = await serve(guard)
    yield port, guard, metrics
    await runner.cleanup()


def count(metrics: NodeMetrics, reason: str) -> float:
    for line in metrics.render().decode().splitlines():
        if line.startswith(f'raftstate_http_connections_refused_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(reason)


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def get(
    r: asyncio.StreamReader, w: asyncio.StreamWriter, path: str = "/health", close: bool = False
) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 3)
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
    )
    await r.readexactly(length)
    return head


async def test_a_complete_request_then_a_partial_one_is_closed_at_the_keep_alive_timeout(
    guarded: tuple[int, HttpGuard, NodeMetrics],
) -> None:
    """The issue's attack: GET /health, then a request that never finishes. Before: still open
    after 20 s (aiohttp's keep-alive default is 3630 s). Now: closed within the guard's timeout."""
    port, guard, _ = guarded
    assert guard.keepalive_timeout_s == DEADLINE_S
    r, w = await connect(port)
    assert (await get(r, w)).startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    w.write(b"GET /health HTTP/1.1\r\nX-Slow: ")
    for _ in range(40):  # a byte every 0.1 s does not keep it alive
        if r.at_eof():
            break
        w.write(b"a")
        try:
            assert await asyncio.wait_for(r.read(64), 0.1) == b""
            break
        except TimeoutError:
            pass
    waited = time.monotonic() - t0
    assert waited < DEADLINE_S * 4, f"still open after {waited:.1f}s"
    w.close()


async def test_idle_keep_alive_connections_are_evicted_first_and_the_newcomer_served(
    guarded: tuple[int, HttpGuard, NodeMetrics],
) -> None:
    port, _, metrics = guarded
    held = [await connect(port, f"127.0.0.{2 + i % 2}") for i in range(4)]  # the 4 client slots
    for r, w in held:
        assert (await get(r, w)).startswith(b"HTTP/1.1 200")  # whole requests: not slow, but idle
    r, w = await connect(port, "127.0.0.4")
    assert (await get(r, w, close=True)).startswith(b"HTTP/1.1 200")
    assert count(metrics, "evicted") == 1
    assert await asyncio.wait_for(held[0][0].read(), 1) == b"", "the oldest idle one made room"
    for _, hw in [*held, (r, w)]:
        hw.close()


@pytest.fixture
async def holding() -> AsyncIterator[tuple[int, NodeMetrics, asyncio.Event]]:
    """6 slots, 2 for peers, 3 per address; GET /hold stays in progress until the event is set."""
    metrics = NodeMetrics()
    guard = HttpGuard(6, DEADLINE_S, metrics, peer_slots=2, max_per_address=3)
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="held")

    app = web.Application()
    app.middlewares.append(guard.middleware)
    app.router.add_get("/health", ok)
    app.router.add_get("/hold", hold)
    app.router.add_get(p.RAFT_STREAM.path, ok)
    runner = web.AppRunner(app, lingering_time=0.0, keepalive_timeout=guard.keepalive_timeout_s)
    await runner.setup()
    (port,) = free_ports(1)
    await GuardedTCPSite(runner, "127.0.0.1", port, guard).start()
    yield port, metrics, release
    release.set()
    await runner.cleanup()


async def test_with_the_client_slots_busy_a_peer_still_gets_in_and_a_client_gets_503(
    holding: tuple[int, NodeMetrics, asyncio.Event],
) -> None:
    port, metrics, _ = holding
    busy = []
    for i in range(4):  # the 4 client slots, each serving a request (not evictable)
        r, w = await connect(port, f"127.0.0.{2 + i % 2}")
        w.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        busy.append(w)
    await asyncio.sleep(0.1)
    r, w = await connect(port, "127.0.0.4")  # a client on a peer slot
    assert (await get(r, w)).startswith(b"HTTP/1.1 503")
    assert count(metrics, "peer_slot") == 1
    w.close()
    r, w = await connect(port, "127.0.0.5")  # a peer on a peer slot
    assert (await get(r, w, p.RAFT_STREAM.path)).startswith(b"HTTP/1.1 200")
    w.close()
    for bw in busy:
        bw.close()


async def test_one_address_holds_at_most_its_share(holding: tuple[int, NodeMetrics, asyncio.Event]) -> None:
    port, metrics, _ = holding
    mine = []
    for _ in range(3):  # 127.0.0.2's share, each serving a request
        r, w = await connect(port, "127.0.0.2")
        w.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        mine.append(w)
    await asyncio.sleep(0.1)
    r, w = await connect(port, "127.0.0.2")  # a 4th from the same address: refused
    assert (await asyncio.wait_for(r.read(), 3)).startswith(b"HTTP/1.1 503")
    assert count(metrics, "per_address") == 1
    w.close()
    r, w = await connect(port, "127.0.0.3")  # another address still gets in
    assert (await get(r, w, close=True)).startswith(b"HTTP/1.1 200")
    w.close()
    for mw in mine:
        mw.close()


async def test_past_its_share_an_address_evicts_its_own_idle_connection(
    holding: tuple[int, NodeMetrics, asyncio.Event],
) -> None:
    port, metrics, _ = holding
    idle = []
    for _ in range(3):
        r, w = await connect(port, "127.0.0.2")
        assert (await get(r, w)).startswith(b"HTTP/1.1 200")
        idle.append((r, w))
    r, w = await connect(port, "127.0.0.2")
    assert (await get(r, w, close=True)).startswith(b"HTTP/1.1 200")
    assert count(metrics, "evicted") == 1 and count(metrics, "per_address") == 0
    assert await asyncio.wait_for(idle[0][0].read(), 1) == b""
    for _, iw in [*idle, (r, w)]:
        iw.close()
