"""The client's surface: argument handling, the error hierarchy, cluster files, the aiohttp
transport against a real local HTTP server, and the operator CLI (against the fake cluster)."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgpack
import pytest
from aiohttp import web

from fake_cluster import FakeCluster
from raftstate.client import (
    AiohttpTransport,
    AsyncClient,
    ConnectFailed,
    InvalidRequest,
    LockHeld,
    NotFound,
    OutcomeUnknown,
    RaftStateError,
    Request,
    ResponseLost,
    ServerError,
    Unavailable,
    VersionMismatch,
)
from raftstate.client import errors as errors_module
from raftstate.client import protocol as p
from raftstate.client._leader import normalize_endpoint
from raftstate.client.cli import add_client_commands, run_client_command
from raftstate.client.config import endpoints_from_config
from raftstate.client.errors import error_from_body
from raftstate.client.sync_client import Client
from raftstate.node.ops.local_cluster import free_ports


def client(fc: FakeCluster, **kw: object) -> AsyncClient:
    return AsyncClient(fc.endpoints, transport=fc.transport(), rng=random.Random(2), **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- arguments


async def test_ttl_and_expires_at_forms() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        await state.set("a", 1, ttl=30)
        await state.set("b", 1, ttl=timedelta(days=7))
        # whole milliseconds: a node keeps times in ms (the old hand-written fake kept microseconds)
        at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=123_000)
        await state.set("c", 1, expires_at=at)
        await state.set("d", 1, expires_at=at.astimezone(timezone(timedelta(hours=5))))
        await state.set("e", 1, expires_at=at.timestamp())
        bodies = {r.path: r.body for _, r in fc.log if r.method == "PUT"}
        assert bodies["/v1/kv/a"]["ttl"] == 30.0 and bodies["/v1/kv/b"]["ttl"] == 7 * 86400.0
        assert bodies["/v1/kv/c"]["expires_at"] == bodies["/v1/kv/d"]["expires_at"] == at.timestamp()
        entry = await state.get_entry("c")
        assert entry is not None and entry.expires_at == at
        with pytest.raises(InvalidRequest, match="naive"):
            await state.set("f", 1, expires_at=datetime.now())
        with pytest.raises(InvalidRequest, match="not both"):
            await state.set("f", 1, ttl=1, expires_at=at)
        with pytest.raises(InvalidRequest, match="positive"):
            await state.set("f", 1, ttl=0)
        with pytest.raises(InvalidRequest, match="cannot be sent"):
            await state.set("f", object())
        with pytest.raises(InvalidRequest, match="64-bit"):
            await state.increment("n", 2**63)
        with pytest.raises(InvalidRequest, match="empty"):
            await state.get("")
    assert "f" not in fc.kv


def test_keys_travel_as_one_path_segment() -> None:
    assert Request(p.KV_GET, "imports:42/progress").path == "/v1/kv/imports%3A42%2Fprogress"
    assert Request(p.KV_GET, "a b?c#d%e").path == "/v1/kv/a%20b%3Fc%23d%25e"
    assert Request(p.KV_GET, "..").path == "/v1/kv/%2E%2E"
    assert Request(p.KV_INCREMENT, "é").path == "/v1/kv/%C3%A9/increment"


def test_endpoints_are_normalized() -> None:
    assert normalize_endpoint("127.0.0.1:7001") == "http://127.0.0.1:7001"
    assert normalize_endpoint("http://h:1/") == "http://h:1"
    with pytest.raises(InvalidRequest):
        normalize_endpoint("ftp://h:1")
    with pytest.raises(InvalidRequest, match="no endpoints"):
        AsyncClient([])
    assert AsyncClient("h1:1, h2:2").endpoints == ["http://h1:1", "http://h2:2"]


def test_from_config_reads_node_addresses(tmp_path: Path) -> None:
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text('nodes:\n  - {id: n1, address: "127.0.0.1:7001", data_dir: d1}\n'
                   '  - {id: n2, address: "127.0.0.1:7002", data_dir: d2}\n')  # fmt: skip
    assert AsyncClient.from_config(cfg).endpoints == ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
    assert endpoints_from_config(Path(__file__).parents[1] / "cluster.yaml")[0] == "http://127.0.0.1:7001"
    cfg.write_text("nodes: []\n")
    with pytest.raises(InvalidRequest, match="nodes"):
        AsyncClient.from_config(cfg)
    with pytest.raises(InvalidRequest, match="cannot read"):
        AsyncClient.from_config(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------- errors


def test_error_hierarchy_and_decoding() -> None:
    for name in errors_module.__all__:
        obj = getattr(errors_module, name)
        if isinstance(obj, type):
            assert issubclass(obj, RaftStateError)
            assert obj.__doc__, f"{name} needs a docstring"
    body = {"error": {"code": "version_mismatch", "message": "key 'imports:42' is at version 17, not 12",
                      "key": "imports:42", "version": 17}}  # fmt: skip
    e = error_from_body(409, body, node="http://n1:1", what="PUT")
    assert isinstance(e, VersionMismatch) and e.actual == 17 and e.key == "imports:42"
    assert str(e) == "key 'imports:42' is at version 17, not 12 (node http://n1:1)"
    held_body = {"error": {"code": "lock_held", "message": "m", "owner": "w", "expires_at": 5}}
    held = error_from_body(409, held_body, node="x", what="w")
    assert (
        isinstance(held, LockHeld) and held.owner == "w" and held.expires_at == datetime.fromtimestamp(5, UTC)
    )
    # No error document: not a raftstate node's answer (another service on the port), a connection
    # error — never read as "no such key".
    e404 = error_from_body(404, "404: Not Found", node="http://n1:1", what="POST /v1/locks/a/acquire")
    assert isinstance(e404, ConnectFailed) and not isinstance(e404, NotFound)
    assert e404.code == "http_404" and e404.misaddressed == "not_raftstate"
    assert "not a raftstate node" in str(e404)
    unknown_route = {"error": {"code": "unknown_endpoint", "message": "no endpoint POST /v1/x"}}
    assert isinstance(error_from_body(404, unknown_route, node="n", what="w"), InvalidRequest)
    assert isinstance(error_from_body(502, "bad gateway", node="n", what="w"), Unavailable)
    unknown_code = {"error": {"code": "brand_new", "message": "?"}}
    assert isinstance(error_from_body(500, unknown_code, node="n", what="w"), ServerError)


async def test_internal_error_on_a_write_is_an_unknown_outcome() -> None:
    fc = FakeCluster()
    transport = fc.transport()
    inner = transport.send

    async def send(endpoint: str, request: Request, timeout_s: float) -> object:
        if request.method == "PUT":
            from raftstate.client._transport import Response

            return Response(500, {"error": {"code": "internal", "message": "boom"}})
        return await inner(endpoint, request, timeout_s)

    transport.send = send  # type: ignore[method-assign, assignment]
    async with AsyncClient(fc.endpoints, transport=transport) as state:
        with pytest.raises(OutcomeUnknown) as err:
            await state.set("a", 1)
    assert isinstance(err.value.cause, ServerError)


# --------------------------------------------------------------------------- the aiohttp transport


#: endpoints of a test server only (a transport sends any row it is given)
ERR = p.Endpoint("err", "GET", "/err", p.Access.PUBLIC)
NOWHERE = p.Endpoint("nowhere", "GET", "/nothing-here", p.Access.PUBLIC)


async def test_aiohttp_transport_against_a_real_http_server() -> None:
    seen: list[tuple[str, str, object]] = []

    async def echo(request: web.Request) -> web.Response:
        raw = await request.read()
        body = msgpack.unpackb(raw) if raw else None
        seen.append((request.headers.get("Accept", ""), request.match_info["key"], body))
        if body == {"slow": True}:
            await asyncio.sleep(2)
        return web.Response(
            body=msgpack.packb({"echo": body, "b": b"\x00"}), content_type="application/msgpack"
        )

    async def json_error(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "not_found", "message": "nope"}}, status=404)

    app = web.Application()
    app.router.add_route("*", p.KV_SET.path, echo)
    app.router.add_get(ERR.path, json_error)
    runner = web.AppRunner(app)
    await runner.setup()
    port, dead_port = free_ports(2)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    t = AiohttpTransport()
    try:
        ep = f"http://127.0.0.1:{port}"
        r = await t.send(ep, Request(p.KV_SET, "a/b c", {"v": [1, "x"]}), 2.0)
        assert r.status == 200 and r.body == {"echo": {"v": [1, "x"]}, "b": b"\x00"}
        assert seen[-1] == ("application/msgpack", "a/b c", {"v": [1, "x"]})
        r = await t.send(ep, Request(ERR), 2.0)
        assert r.status == 404 and r.body["error"]["code"] == "not_found"
        r = await t.send(ep, Request(NOWHERE), 2.0)
        assert r.status == 404 and isinstance(r.body, str)
        with pytest.raises(ResponseLost, match=r"within 0\.20s"):
            await t.send(ep, Request(p.KV_SET, "s", {"slow": True}), 0.2)
        with pytest.raises(ConnectFailed):
            await t.send(f"http://127.0.0.1:{dead_port}", Request(p.KV_GET, "a"), 1.0)
        with pytest.raises(InvalidRequest):
            await t.send(ep, Request(p.KV_SET, "a", {"v": object()}), 1.0)
    finally:
        await t.aclose()
        await runner.cleanup()


# --------------------------------------------------------------------------- CLI


def run_cli(argv: list[str], state: Client, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    import argparse

    parser = argparse.ArgumentParser(prog="raftstate")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    rc = run_client_command(parser.parse_args(argv), client=state)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_commands(capfd: pytest.CaptureFixture[str]) -> None:
    fc = FakeCluster()
    with Client(fc.endpoints, transport=fc.transport()) as state:
        assert run_cli(["set", "imports:1", '{"processed": 5}', "--ttl", "60"], state, capfd)[0] == 0
        assert run_cli(["get", "imports:1"], state, capfd)[:2] == (0, '{"processed": 5}\n')
        rc, out, _ = run_cli(["get", "imports:1", "--json"], state, capfd)
        doc = json.loads(out)
        assert rc == 0 and doc["value"] == {"processed": 5} and doc["expires_at"] > 0
        assert run_cli(["set", "name", "plain text"], state, capfd)[0] == 0
        assert run_cli(["get", "name"], state, capfd)[1] == "plain text\n"
        assert run_cli(["set", "name", "x", "--if-absent"], state, capfd)[0] == 1
        assert run_cli(["get", "missing"], state, capfd)[0] == 1
        assert run_cli(["incr", "n", "--by", "5"], state, capfd)[:2] == (0, "5\n")
        assert run_cli(["keys", "imports:"], state, capfd)[1] == "imports:1\n"
        assert json.loads(run_cli(["keys", "--json"], state, capfd)[1]) == ["imports:1", "n", "name"]
        assert run_cli(["delete", "n"], state, capfd)[0] == 0
        assert run_cli(["delete", "n"], state, capfd)[0] == 1
        assert "is free" in run_cli(["lock", "job"], state, capfd)[1]
        script = "echo $RAFTSTATE_LOCK_TOKEN; exit 3"
        rc, out, err = run_cli(["lock", "job", "--ttl", "5", "--run", "sh", "-c", script], state, capfd)
        assert rc == 3 and int(out.strip()) > 0 and "holding 'job'" in err
        rc, _, err = run_cli(["incr", "name"], state, capfd)
        assert rc == 3 and "WrongType" in err and "'name'" in err


async def test_transport_reports_a_write_that_may_have_reached_a_node_that_then_died() -> None:
    """aiohttp re-sends a PUT on a new connection when a kept-alive one breaks mid-request; when
    that reconnect is refused (the node died after reading the request), the write may still have
    been applied: ResponseLost, never ConnectFailed (which the client reports as "not applied")."""
    requests = 0
    server: asyncio.Server | None = None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = next((int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-len")), 0)
            await reader.readexactly(length)
            requests += 1
            if requests == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: 2\r\n\r\n{}")
                await writer.drain()
                continue
            assert server is not None
            server.close()  # the node "dies" having read the write: the reconnect is refused
            writer.transport.abort()
            return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = AiohttpTransport()
    try:
        ep = f"http://127.0.0.1:{port}"
        r = await t.send(ep, Request(p.KV_SET, "a", {"value": 1}), 2.0)
        assert r.status == 200
        with pytest.raises(ResponseLost, match="reconnecting failed"):
            await t.send(ep, Request(p.KV_SET, "a", {"value": 2}), 2.0)
        assert requests == 2
    finally:
        await t.aclose()
