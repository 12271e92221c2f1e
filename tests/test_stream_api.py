"""``/v1/stream`` on a real 3-node cluster: many operations per WebSocket frame, answered by id,
through the same validation as HTTP; bad frames answered or refused with a reason while the node
(and, for a bad frame, the connection) stays up; kill -9 of the leader fails the calls in flight
and a new stream to the new leader works (client/stream.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from raftstate.client.errors import ConnectFailed, InvalidRequest, ResponseLost
from raftstate.client.stream import StreamConnection
from raftstate.node.ops.local_cluster import LocalCluster

pytestmark = pytest.mark.cluster

MAX_REQUEST_BYTES = 8192


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root: Path = tmp_path_factory.mktemp("stream")
    settings = {"max_key_bytes": 64, "max_value_bytes": 2048, "max_request_bytes": MAX_REQUEST_BYTES}
    with LocalCluster(root, settings=settings) as c:
        c.start()
        c.wait_leader(30)
        c.put_retry("warm", 0)
        yield c


def url(c: LocalCluster, nid: str) -> str:
    return f"http://{c.addr[nid]}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def frame(ws: aiohttp.ClientWebSocketResponse, reqs: Any, *, n: int) -> dict[Any, tuple[int, Any]]:
    """Send one frame; collect ``n`` answers (over however many frames) by id."""
    await ws.send_bytes(msgpack.packb(reqs, use_bin_type=True))
    got: dict[Any, tuple[int, Any]] = {}
    while len(got) < n:
        msg = await asyncio.wait_for(ws.receive(), 20)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        for rid, status, body in msgpack.unpackb(msg.data, raw=False, strict_map_key=False):
            got[rid] = (status, body)
    return got


async def test_writes_in_one_frame_apply_in_frame_order_and_answers_match_ids(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    leader = cluster.wait_leader()
    async with session.ws_connect(url(cluster, leader) + "/v1/stream") as ws:
        reqs = [{"id": i, "op": "set", "name": "order", "body": {"value": i}} for i in range(1, 51)]
        reqs += [{"id": 100 + i, "op": "increment", "name": "ctr-order"} for i in range(50)]
        got = await frame(ws, reqs, n=100)
        versions = [got[i][1]["version"] for i in range(1, 51)]
        assert all(got[i][0] == 200 for i in got), got
        assert versions == sorted(versions) and len(set(versions)) == 50  # proposed in frame order
        assert sorted(got[100 + i][1]["value"] for i in range(50)) == list(range(1, 51))
        got = await frame(ws, [{"id": 1, "op": "get", "name": "order"}], n=1)
        assert got[1][0] == 200 and got[1][1]["value"] == 50


async def test_errors_are_the_http_errors_per_request(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    leader = cluster.wait_leader()
    bad_body = {"value": 1, "ttl": "soon"}
    req = urllib.request.Request(
        url(cluster, leader) + "/v1/kv/k", data=json.dumps(bad_body).encode(), method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(req, timeout=5)
    http_body = json.loads(http_err.value.read())
    for _ in range(3):  # a leader change under load (421 for the read) is retried
        leader = await asyncio.to_thread(cluster.wait_leader)
        async with session.ws_connect(url(cluster, leader) + "/v1/stream") as ws:
            got = await frame(
                ws,
                [
                    {"id": 1, "op": "set", "name": "k", "body": bad_body},
                    {"id": 2, "op": "nope"},
                    {"id": 3, "op": "get", "name": "x" * 2000},
                    {"id": 4, "op": "get", "name": "missing"},
                    {"id": 5, "op": "get", "name": "k", "extra": 1},
                    {"id": 6, "op": "get", "name": "k", "query": {"timeout": 5}},
                    {"op": "get", "name": "k"},  # no id: answered with id null
                    "not a map",
                    {"id": 7, "op": "set", "name": "ok", "body": {"value": 1}},
                ],
                n=8,
            )
        if got[4][0] != 421:
            break
    assert got[1] == (400, http_body), got  # the same validation, the same error body
    assert got[2][0] == 400 and "one of" in got[2][1]["error"]["message"]
    assert got[3][0] == 413 and got[3][1]["error"]["code"] == "key_too_large"
    assert got[4][0] == 404 and got[4][1]["error"]["code"] == "not_found", got
    assert got[5][0] == 400 and "extra" in got[5][1]["error"]["message"]
    assert got[6][0] == 400 and got[6][1]["error"]["field"] == "query"
    assert got[None][0] == 400 and got[None][1]["error"]["code"] == "invalid_request"
    assert got[7][0] == 200
    for _ in range(3):  # the follower must name the current leader (retry if it just changed)
        leader = await asyncio.to_thread(cluster.wait_leader)
        follower = next(n for n in cluster.ids if n != leader)
        async with session.ws_connect(url(cluster, follower) + "/v1/stream") as ws:
            got = await frame(ws, [{"id": 1, "op": "set", "name": "k", "body": {"value": 1}}], n=1)
        if got[1][0] == 421 and got[1][1]["error"]["leader"] == leader:
            break
    assert got[1][0] == 421 and got[1][1]["error"]["leader"] == leader, got


async def test_bad_frames_are_answered_and_the_connection_stays_usable(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    leader = cluster.wait_leader()
    async with session.ws_connect(url(cluster, leader) + "/v1/stream") as ws:
        await ws.send_bytes(b"\xc1\xff\x00")  # 0xc1 is never valid msgpack
        got = msgpack.unpackb((await asyncio.wait_for(ws.receive(), 10)).data, raw=False)
        assert got[0][0] is None and got[0][1] == 400
        assert "not valid msgpack" in got[0][2]["error"]["message"]
        await ws.send_str("hello")
        got = msgpack.unpackb((await asyncio.wait_for(ws.receive(), 10)).data, raw=False)
        assert got[0][1] == 400 and "binary frames" in got[0][2]["error"]["message"]
        got2 = await frame(ws, {"id": 1}, n=1)  # a map, not an array of requests
        assert got2[None][0] == 400 and "msgpack dict" in got2[None][1]["error"]["message"]
        got2 = await frame(ws, [{"id": 9, "op": "get", "name": "warm"}], n=1)
        assert got2[9][0] == 200  # still usable


async def test_oversized_frame_closes_with_a_reason_and_the_node_stays_up(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    leader = cluster.wait_leader()
    async with session.ws_connect(url(cluster, leader) + "/v1/stream") as ws:
        big = [{"id": 1, "op": "set", "name": "big", "body": {"value": "x" * (MAX_REQUEST_BYTES + 10)}}]
        await ws.send_bytes(msgpack.packb(big))
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert cluster.alive(leader)
    async with session.ws_connect(url(cluster, leader) + "/v1/stream") as ws:
        got = await frame(ws, [{"id": 1, "op": "get", "name": "big"}], n=1)
        assert got[1][0] == 404  # nothing of the oversized frame ran


async def test_client_stream_refuses_an_unencodable_body_and_stays_usable(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    conn = StreamConnection(session, url(cluster, cluster.wait_leader()))
    with pytest.raises(InvalidRequest, match="cannot be sent"):
        await conn.call("set", "bad", {"value": object()}, timeout_s=5)
    status, _ = await conn.call("set", "good", {"value": 1}, timeout_s=5)
    assert status == 200
    await conn.aclose()


async def test_client_stream_fails_calls_in_flight_on_kill_and_reconnects(
    cluster: LocalCluster, session: aiohttp.ClientSession
) -> None:
    """Runs last in this module: it kills the leader."""
    leader = cluster.wait_leader()
    conn = StreamConnection(session, url(cluster, leader))
    status, body = await conn.call("increment", "ctr-kill", timeout_s=10)
    assert status == 200 and body["value"] == 1
    calls = [asyncio.ensure_future(conn.call("increment", "ctr-kill", timeout_s=10)) for _ in range(200)]
    await asyncio.sleep(0)
    cluster.kill(leader, signal.SIGKILL)
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(o, ResponseLost) for o in failed), failed[:3]
    assert "broke" in str(failed[0]) if failed else True
    with pytest.raises(ConnectFailed):
        await conn.call("get", "ctr-kill", timeout_s=5)  # the node is gone: refused
    await conn.aclose()
    new = await asyncio.to_thread(cluster.wait_leader, 30, [n for n in cluster.ids if n != leader])
    conn2 = StreamConnection(session, url(cluster, new))
    status, body = await conn2.call("get", "ctr-kill", timeout_s=10)
    acked = 1 + sum(1 for o in outcomes if not isinstance(o, BaseException))
    assert status == 200 and acked <= body["value"] <= 201  # no acknowledged increment lost
    await conn2.aclose()
    cluster.start(leader)
