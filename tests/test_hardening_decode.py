"""Issue 18, item 1: decoding is bounded wherever input arrives (node/api/codec.py). A 4 MiB
input of empty maps decoded to ~4 million dicts (305 MB, seconds on the event loop); the same
bytes are now refused before they are built, and a valid request still decodes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import aiohttp
import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from raftstate.client import protocol as p
from raftstate.node.api.codec import (
    MAX_CONTAINER_ITEMS,
    MAX_CONTAINERS,
    error_response,
    loads_bounded,
    read_body,
    unpack_bounded,
    unpack_items,
)
from raftstate.node.errors import Refusal

FOUR_MIB = 4 << 20


def empty_maps(n: int) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n


def test_an_array_longer_than_the_limit_is_refused_from_its_header() -> None:
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="max_array_len"):
        unpack_bounded(empty_maps(FOUR_MIB - 5), what="body")
    assert time.perf_counter() - t0 < 1.0, "generous: it is ~2 ms, the unbounded decode took seconds"


def test_many_small_containers_are_refused_past_the_container_budget() -> None:
    nested = msgpack.packb([[{}] * 60_000, [{}] * 60_000])  # each list within the item limit
    with pytest.raises(ValueError, match=f"more than {MAX_CONTAINERS}"):
        unpack_bounded(nested, what="body")
    with pytest.raises(ValueError, match=f"more than {MAX_CONTAINERS}"):
        loads_bounded(json.dumps([[{}] * 60_000, [{}] * 60_000]).encode(), what="body")


def test_valid_input_within_the_bounds_decodes_as_before() -> None:
    value = {
        "value": [1, "two", {"three": b"\x03"}, [None, True, 2.5]],
        "n": list(range(MAX_CONTAINER_ITEMS)),
    }
    assert unpack_bounded(msgpack.packb(value, use_bin_type=True), what="body") == value
    assert loads_bounded(b'{"value": {"$bytes": "AQI="}}', what="body") == {"value": b"\x01\x02"}


def test_a_stream_frame_is_checked_against_its_item_cap_before_any_item_is_decoded() -> None:
    with pytest.raises(Refusal) as err:
        unpack_items(empty_maps(FOUR_MIB - 5), what="stream frame", max_items=1000)
    assert err.value.fields["limit"] == 1000 and "4194299 items" in err.value.message
    assert unpack_items(msgpack.packb([{"id": 1}, {"id": 2}]), what="f", max_items=2) == [
        {"id": 1},
        {"id": 2},
    ]
    with pytest.raises(TypeError, match="dict"):
        unpack_items(msgpack.packb({"id": 1}), what="f", max_items=2)
    with pytest.raises(ValueError, match="after its array"):
        unpack_items(msgpack.packb([1]) + b"\x01", what="f", max_items=2)


async def echo(request: web.Request) -> web.Response:
    try:
        body = await read_body(request, FOUR_MIB + 1024)
    except Refusal as err:
        return error_response(request, err)
    return web.json_response({"type": type(body).__name__})


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application(client_max_size=FOUR_MIB + 1024)
    app.router.add_post("/echo", echo)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    yield srv
    await srv.close()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [(p.MSGPACK, empty_maps(FOUR_MIB - 5)), (p.JSON, b"[" + b"{}," * (FOUR_MIB // 3 - 1) + b"{}]")],
)
async def test_an_http_body_of_empty_maps_is_a_400_not_a_stall(
    server: TestServer, content_type: str, body: bytes
) -> None:
    async with aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        async with s.post(server.make_url("/echo"), data=body, headers={"Content-Type": content_type}) as r:
            answer = await r.json()
        took = time.perf_counter() - t0
    assert r.status == 400, answer
    assert answer["error"]["code"] == p.INVALID_REQUEST
    assert took < 5.0, f"generous liveness bound: {took:.2f}s"
