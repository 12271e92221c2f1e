"""The forwarder's rules (node/api/forward.py) one by one, on real sockets: a stand-in leader (an
aiohttp server that records what reaches it and answers as told) and a follower app whose
operation is refused not_leader, as on a real follower. The driver is a stub (unit test): only
``id``, ``addresses`` and ``raft.leader`` are read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web

from raftstate.client import protocol as p
from raftstate.node.api.codec import error_response
from raftstate.node.api.forward import FORWARDED_BY_HEADER, Forwarder
from raftstate.node.errors import Refusal
from raftstate.node.metrics import NodeMetrics
from raftstate.node.ops.local_cluster import free_ports


@dataclass
class _Raft:
    leader: str | None


@dataclass
class _Driver:
    id: str
    raft: _Raft
    addresses: dict[str, str] = field(default_factory=dict)


@dataclass
class Leader:
    """What the stand-in leader does with the next requests, and what reached it."""

    address: str
    mode: str = "answer"  # answer | hang | not_leader
    seen: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    #: set at teardown: hanging requests end (so the server shuts down at once)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def leader() -> AsyncIterator[Leader]:
    port = free_ports(1)[0]
    state = Leader(f"127.0.0.1:{port}")

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = msgpack.unpackb(raw) if raw else None
        state.seen.append((request.method, request.path_qs, dict(request.headers), body))
        if state.mode == "hang":
            await state.release.wait()
        if state.mode == "not_leader":
            return error_response(request, Refusal(p.NOT_LEADER, "not me", leader=None, leader_address=None))
        return web.json_response({"version": 7, "echo": body}, status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state
    state.release.set()
    await runner.cleanup()


async def follower(fwd: Forwarder) -> tuple[web.AppRunner, str]:
    """A follower's HTTP face for PUT and GET /v1/kv/{key}: the operation says not_leader."""

    async def run(query: Any) -> Any:
        raise Refusal(p.NOT_LEADER, "node n2 is not the leader", leader="n1", leader_address=None)

    def route(ep: p.Endpoint) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            body = await request.json() if request.can_read_body else {}
            try:
                return await fwd.serve(request, ep, body, run)
            except Refusal as err:
                return error_response(request, err)

        return handler

    app = web.Application()
    app.router.add_put("/v1/kv/{key}", route(p.KV_SET))
    app.router.add_get("/v1/kv/{key}", route(p.KV_GET))
    fwd.install(app)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def forwarder(leader: Leader | None, **kw: Any) -> Forwarder:
    driver = _Driver("n2", _Raft("n1" if leader else None), {"n1": leader.address} if leader else {})
    return Forwarder(driver, NodeMetrics("n2", "t"), **kw)  # type: ignore[arg-type]


async def call(url: str, method: str = "PUT", **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as resp:
        return resp.status, await resp.json()


async def test_the_answer_is_relayed_with_the_callers_credentials_and_the_deadline(leader: Leader) -> None:
    runner, base = await follower(forwarder(leader))
    try:
        headers = {"Authorization": "Bearer t0k", "Accept": "application/json"}
        status, body = await call(base + "/v1/kv/a%2Fb?timeout=2", json={"value": 1}, headers=headers)
    finally:
        await runner.cleanup()
    assert (status, body) == (201, {"version": 7, "echo": {"value": 1}})
    method, path_qs, seen_headers, _ = leader.seen[0]
    assert method == "PUT" and path_qs.startswith("/v1/kv/a%2Fb?timeout=")
    assert 1.0 < float(path_qs.rsplit("=", 1)[1]) <= 2.0  # what is left of the caller's 2 s
    assert seen_headers["Authorization"] == "Bearer t0k"  # as it came: never another credential
    assert seen_headers[p.FORWARD_HEADER] == "never" and seen_headers[FORWARDED_BY_HEADER] == "n2"


async def test_forward_never_and_forwarded_requests_keep_the_421(leader: Leader) -> None:
    runner, base = await follower(forwarder(leader))
    try:
        for header in ({p.FORWARD_HEADER: "never"}, {FORWARDED_BY_HEADER: "n3"}):
            status, body = await call(base + "/v1/kv/k", json={"value": 1}, headers=header)
            assert status == 421 and body["error"]["code"] == p.NOT_LEADER
    finally:
        await runner.cleanup()
    assert leader.seen == []


async def test_a_lost_answer_is_outcome_unknown_for_a_write_and_timeout_for_a_read(leader: Leader) -> None:
    leader.mode = "hang"
    runner, base = await follower(forwarder(leader))
    try:
        t0 = time.monotonic()
        status, body = await call(base + "/v1/kv/k?timeout=0.3", json={"value": 1})
        assert (status, body["error"]["code"]) == (504, p.OUTCOME_UNKNOWN), body
        assert "may or may not have been applied" in body["error"]["message"]
        status, body = await call(base + "/v1/kv/k?timeout=0.3", "GET")
        assert (status, body["error"]["code"]) == (504, p.TIMEOUT), body
        assert time.monotonic() - t0 < 5
    finally:
        await runner.cleanup()


async def test_no_leader_within_the_deadline_is_unavailable() -> None:
    runner, base = await follower(forwarder(None))
    try:
        t0 = time.monotonic()
        status, body = await call(base + "/v1/kv/k?timeout=0.4", json={"value": 1})
    finally:
        await runner.cleanup()
    assert (status, body["error"]["code"]) == (503, p.UNAVAILABLE) and "nothing was applied" in body["error"][
        "message"
    ]
    assert 0.35 < time.monotonic() - t0 < 3


async def test_a_leader_that_lost_leadership_is_asked_again_until_the_deadline(leader: Leader) -> None:
    leader.mode = "not_leader"
    runner, base = await follower(forwarder(leader))
    try:
        status, body = await call(base + "/v1/kv/k?timeout=0.4", json={"value": 1})
    finally:
        await runner.cleanup()
    assert status == 503 and body["error"]["code"] == p.UNAVAILABLE
    assert len(leader.seen) >= 2  # nothing was proposed there: trying again is safe


async def test_the_limit_on_forwards_in_flight(leader: Leader) -> None:
    leader.mode = "hang"
    runner, base = await follower(forwarder(leader, limit=1))
    try:
        first = asyncio.ensure_future(call(base + "/v1/kv/k?timeout=1", json={"value": 1}))
        while not leader.seen:
            await asyncio.sleep(0.01)
        status, body = await call(base + "/v1/kv/k?timeout=1", json={"value": 2})
        assert (status, body["error"]["code"], body["error"]["limit"]) == (503, p.UNAVAILABLE, 1), body
        assert (await first)[0] == 504
    finally:
        await runner.cleanup()
    assert len(leader.seen) == 1
