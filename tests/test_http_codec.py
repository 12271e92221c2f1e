"""Request bodies: read whole (however many TCP reads they take), size-capped, decoded or refused."""

from __future__ import annotations

import json

import msgpack
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from raftstate.node.api.codec import error_response, read_body, respond
from raftstate.node.errors import Refusal

LIMIT = 1 << 20


async def _echo(request: web.Request) -> web.Response:
    try:
        body = await read_body(request, LIMIT)
    except Refusal as err:
        return error_response(request, err)
    return respond(request, {"len": len(body["value"])})


async def test_a_body_longer_than_one_tcp_read_is_read_whole() -> None:
    app = web.Application()
    app.router.add_put("/", _echo)
    async with TestClient(TestServer(app)) as client:
        blob = b"\x01" * (LIMIT - 64)
        resp = await client.put(
            "/", data=msgpack.packb({"value": blob}), headers={"Content-Type": "application/msgpack"}
        )
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"len": LIMIT - 64}

        async def chunks():  # no Content-Length: the size is only known by reading
            text = json.dumps({"value": "x" * 300_000}).encode()
            for i in range(0, len(text), 7000):
                yield text[i : i + 7000]

        resp = await client.put("/", data=chunks())
        assert resp.status == 200 and await resp.json() == {"len": 300_000}

        async def too_much():
            for _ in range(20):
                yield b"x" * 60_000

        resp = await client.put("/", data=too_much())
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"
