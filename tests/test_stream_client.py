"""The client's default transport (client/stream.py): every client operation of the endpoint table
goes as its own stream op with the name as it is (no path is parsed back: the request carries its
operation), and its HTTP path resolves on the node's own routes to that same operation and name;
other requests stay HTTP, and a node without /v1/stream is used over HTTP instead."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from raftstate.client import protocol as p
from raftstate.client._transport import Request
from raftstate.client.stream import StreamingTransport
from raftstate.node.api.handlers import Api


async def test_every_node_route_maps_to_its_stream_op_with_the_decoded_name() -> None:
    name = "imports:42/a b%c"
    app = web.Application()
    Api.install(object.__new__(Api), app)  # the node's routes, as a node registers them
    ops = [ep for ep in p.ENDPOINTS if ep.stream]
    assert len(ops) == 12
    for ep in ops:
        req = Request(ep, name if ep.param else "")
        match = await app.router.resolve(make_mocked_request(req.method, req.path, app=app))
        assert match.http_exception is None, (req.method, req.path)
        assert match.route.resource is not None and match.route.resource.canonical == ep.canonical
        assert (match.get(ep.param) if ep.param else "") == req.name == (name if ep.param else "")
        assert req.op.stream and req.op.name == ep.name  # what StreamingTransport sends as the op


def test_requests_without_a_stream_form_stay_http() -> None:
    assert not Request(p.STATUS).op.stream
    assert not Request(p.LEADER_TRANSFER).op.stream
    assert not any(ep.method == "PATCH" for ep in p.ENDPOINTS)  # no PATCH /v1/kv/k at all
    with pytest.raises(ValueError, match="must not be empty"):
        _ = Request(p.KV_GET, "").path  # no name: no path, so no request
    # a '/' in a name is one segment, so the name comes back whole
    assert Request(p.KV_INCREMENT, "a/b").path == "/v1/kv/a%2Fb/increment"
    assert Request(p.KV_GET, "a/b").path == "/v1/kv/a%2Fb" and Request(p.KV_GET, "a/b").name == "a/b"


async def test_a_node_without_the_stream_is_used_over_http() -> None:
    async def get(request: web.Request) -> web.Response:
        return web.json_response({"key": request.match_info["key"], "value": 1})

    app = web.Application()
    app.router.add_get(p.KV_GET.path, get)
    async with TestServer(app, host="127.0.0.1") as server:
        endpoint = f"http://127.0.0.1:{server.port}"
        t = StreamingTransport()
        try:
            resp = await t.send(endpoint, Request(p.KV_GET, "k"), 5.0)
            assert resp.status == 200 and resp.body == {"key": "k", "value": 1}
            assert endpoint in t._http_only  # remembered: no second handshake attempt
            resp = await t.send(endpoint, Request(p.KV_GET, "j"), 5.0)
            assert resp.body["key"] == "j"
        finally:
            await t.aclose()
