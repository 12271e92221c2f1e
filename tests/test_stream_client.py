"""The client's default transport (client/stream.py): every client operation of docs/api.md maps
to its stream op (checked against the node's own route table, so the two cannot drift), other
requests stay HTTP, and a node without /v1/stream is used over HTTP instead."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web
from aiohttp.test_utils import TestServer

from raftstate.client._transport import Request, key_path
from raftstate.client.stream import StreamingTransport, stream_op
from raftstate.node.api.handlers import ROUTES


def test_every_node_route_maps_to_its_stream_op_with_the_decoded_name() -> None:
    name = "imports:42/a b%c"
    for method, pattern, op, param in ROUTES:
        if param is None:
            path = pattern
        else:
            head, _, tail = pattern.partition("{")
            path = key_path(head, name, tail.partition("}")[2])
        assert stream_op(method, path) == (op, name if param else ""), (method, path)


def test_requests_without_a_stream_form_stay_http() -> None:
    assert stream_op("GET", "/status") is None
    assert stream_op("POST", "/v1/leader/transfer") is None
    assert stream_op("PATCH", "/v1/kv/k") is None
    assert stream_op("GET", "/v1/kv/") is None  # no name
    assert stream_op("POST", "/v1/kv/a/b/increment") is None  # a raw '/' is not one segment
    assert stream_op("GET", "/v1/kv/" + quote("a/b", safe="")) == ("get", "a/b")


async def test_a_node_without_the_stream_is_used_over_http() -> None:
    async def get(request: web.Request) -> web.Response:
        return web.json_response({"key": request.match_info["key"], "value": 1})

    app = web.Application()
    app.router.add_get("/v1/kv/{key}", get)
    async with TestServer(app, host="127.0.0.1") as server:
        endpoint = f"http://127.0.0.1:{server.port}"
        t = StreamingTransport()
        try:
            resp = await t.send(endpoint, Request("GET", "/v1/kv/k"), 5.0)
            assert resp.status == 200 and resp.body == {"key": "k", "value": 1}
            assert endpoint in t._http_only  # remembered: no second handshake attempt
            resp = await t.send(endpoint, Request("GET", "/v1/kv/j"), 5.0)
            assert resp.body["key"] == "j"
        finally:
            await t.aclose()
