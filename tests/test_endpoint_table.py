"""The endpoint table (client/protocol.py) is the wire contract: one row per operation, and the
node's routes, its roles, the stream's operations, the client's requests and the fake cluster all
follow from the rows. A dummy row (plus its handler) shows each of them appear; a scan of the source
shows no path is written anywhere else."""

from __future__ import annotations

import ast
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fake_cluster import FakeCluster
from raftstate.client import protocol as p
from raftstate.client._transport import AiohttpTransport, Request
from raftstate.client.stream import StreamConnection, StreamingTransport
from raftstate.node.api.admin import AdminApi
from raftstate.node.api.handlers import Api
from raftstate.node.api.stream import StreamApi
from raftstate.node.config import Settings
from raftstate.node.peers.snapshot_transfer import SnapshotReceiver
from raftstate.node.peers.transport import StreamReceiver
from raftstate.node.security.auth import AUTHENTICATOR, Authenticator, auth_middleware, route_roles
from raftstate.node.security.config import ResolvedAuth, Role

ROOT = Path(__file__).resolve().parents[1]
TOKENS = {Role.READ: "r-token-0123456789", Role.WRITE: "w-token-0123456789", Role.ADMIN: "a-token-0123456789"}

#: the dummy row: a write on a name, a client operation (so also a stream op)
ECHO = p.Endpoint(
    "echo",
    "POST",
    "/v1/echo/{name}",
    p.Access.WRITE,
    writes=True,
    stream=True,
    body=("text",),
    query=("timeout",),
)


async def op_echo(self: Api, name: str, body: Any, query: Mapping[str, str]) -> Any:
    """Its handler: the one function HTTP and the stream share."""
    return {"echo": name, "text": body.get("text")}


@pytest.fixture
def echo_row(monkeypatch: pytest.MonkeyPatch) -> p.Endpoint:
    """ONE row added to the table, plus its handler: nothing else is touched."""
    monkeypatch.setattr(p, "ENDPOINTS", (*p.ENDPOINTS, ECHO))
    monkeypatch.setattr(Api, "op_echo", op_echo, raising=False)
    return ECHO


def node_app(fc: FakeCluster, tmp_path: Path) -> web.Application:
    """A node's HTTP app as node/server.py assembles it (auth on), over the fake cluster's n1."""
    api = fc.nodes["n1"]
    auth = ResolvedAuth(
        True, b"x" * 16, tuple((r.name, r, t.encode()) for r, t in TOKENS.items()), frozenset()
    )
    app = web.Application()
    app[AUTHENTICATOR] = Authenticator(auth, api.metrics)
    app.middlewares.append(auth_middleware)
    StreamReceiver("n1", "test", lambda msg: None).install(app)
    SnapshotReceiver("n1", "test", tmp_path / "incoming", lambda msg, path: None).install(app)
    api.install(app)
    AdminApi(api, cluster_id="test", settings=Settings(), data_dir=tmp_path).install(app)
    StreamApi(api, api.metrics, max_frame_bytes=1 << 20).install(app)
    return app


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[FakeCluster, str]]:
    fc = FakeCluster()
    async with TestServer(node_app(fc, tmp_path), host="127.0.0.1") as server:
        yield fc, f"http://127.0.0.1:{server.port}"


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    return {
        (r.method, r.resource.canonical) for r in app.router.routes() if r.resource and r.method != "HEAD"
    }


# --------------------------------------------------------------------------- one row, everywhere


async def test_a_dummy_row_is_a_route_a_role_a_stream_op_and_a_client_request(
    echo_row: p.Endpoint, tmp_path: Path
) -> None:
    # The client's request: method, path and stream op, from the row.
    req = Request(echo_row, "a/b c", {"text": "hi"})
    assert (req.method, req.path, req.op.name) == ("POST", "/v1/echo/a%2Fb%20c", "echo")
    # The role: the auth table is the row's access.
    assert route_roles()[("POST", "/v1/echo/{name}")] == Role.WRITE
    fc = FakeCluster()
    app = node_app(fc, tmp_path)
    # The route.
    assert ("POST", "/v1/echo/{name}") in routes_of(app)
    assert fc.nodes["n1"].operations()["echo"] is not None
    async with TestServer(app, host="127.0.0.1") as server:
        ep = f"http://127.0.0.1:{server.port}"
        # Over HTTP: the route answers, held to the row's role.
        for role, want in ((None, 401), (Role.READ, 403), (Role.WRITE, 200), (Role.ADMIN, 200)):
            http = AiohttpTransport(token=TOKENS[role] if role else None)
            try:
                resp = await http.send(ep, req, 5.0)
            finally:
                await http.aclose()
            assert resp.status == want, (role, resp.body)
            if want == 200:
                assert resp.body == {"echo": "a/b c", "text": "hi"}
        # On the stream: the same operation by its name, held to the same role.
        for role, want in ((Role.READ, 403), (Role.WRITE, 200)):
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKENS[role]}"}) as s:
                conn = StreamConnection(s, ep)
                status, body = await conn.call("echo", "a/b c", {"text": "hi"}, timeout_s=5.0)
                await conn.aclose()
            assert status == want, (role, body)
            if want == 200:
                assert body == {"echo": "a/b c", "text": "hi"}
        # The client's default transport sends it as that stream op.
        t = StreamingTransport(token=TOKENS[Role.WRITE])
        try:
            resp = await t.send(ep, req, 5.0)
            assert resp.status == 200 and resp.body == {"echo": "a/b c", "text": "hi"}
            assert ep in t._streams and ep not in t._http_only
        finally:
            await t.aclose()
    # Its metrics label is its name (HTTP and stream alike).
    metrics = fc.nodes["n1"].metrics.render().decode()
    assert 'raftstate_requests_total{op="echo",status="ok"} 4.0' in metrics
    # The fake cluster routes it too.
    resp = await fc.transport().send(fc.endpoints[0], req, 5.0)
    assert resp.status == 200 and resp.body == {"echo": "a/b c", "text": "hi"}


async def test_without_the_row_there_is_no_route_no_role_and_no_stream_op(
    node: tuple[FakeCluster, str],
) -> None:
    fc, ep = node
    assert ("POST", "/v1/echo/{name}") not in route_roles()
    assert "echo" not in fc.nodes["n1"].operations()
    req = Request(ECHO, "x", {"text": "hi"})
    for role, want in ((Role.WRITE, 403), (Role.ADMIN, 400)):  # deny by default: an unknown route is admin
        http = AiohttpTransport(token=TOKENS[role])
        try:
            resp = await http.send(ep, req, 5.0)
        finally:
            await http.aclose()
        assert resp.status == want, resp.body
    assert resp.body["error"]["code"] == p.INVALID_REQUEST and "no endpoint" in resp.body["error"]["message"]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKENS[Role.ADMIN]}"}) as s:
        conn = StreamConnection(s, ep)
        status, body = await conn.call("echo", "x", timeout_s=5.0)
        await conn.aclose()
    assert status == 400 and "unknown op 'echo'" in body["error"]["message"]
    resp = await fc.transport().send(fc.endpoints[0], req, 5.0)
    assert resp.status == 400 and "no endpoint" in resp.body["error"]["message"]


def test_a_handler_without_its_row_is_refused() -> None:
    from raftstate.node.api.handlers import add_routes

    async def h(request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(AssertionError, match="not rows of the endpoint table"):
        add_routes(web.Application(), {ECHO: h})


def test_a_row_without_its_handler_is_named() -> None:
    with pytest.raises(TypeError, match=r"define Api\.op_echo"):
        object.__new__(Api).operation(ECHO)


# --------------------------------------------------------------------------- the table itself


def test_every_row_is_served_by_a_node_exactly_once(tmp_path: Path) -> None:
    app = node_app(FakeCluster(), tmp_path)
    table = {(ep.method, ep.canonical) for ep in p.ENDPOINTS}
    assert routes_of(app) == table
    assert len(app.router.routes()) == len(table) + sum(ep.method == "GET" for ep in p.ENDPOINTS)  # + HEADs


def test_the_rows_and_what_the_node_derives_from_them() -> None:
    roles = route_roles()
    assert len(roles) == len(p.ENDPOINTS) == 25
    # The roles the auth table held before it was derived (docs/security.md): unchanged.
    assert roles[("GET", "/health")] == roles[("GET", "/ready")] == "public"
    assert roles[("GET", "/status")] == roles[("GET", "/metrics")] == Role.READ
    assert roles[("GET", "/raft/v1/stream")] == roles[("POST", "/raft/v1/snapshot")] == "peer"
    assert roles[("GET", "/v1/members")] == "read_or_peer"
    assert (
        roles[("GET", "/v1/kv/{key}")]
        == roles[("GET", "/v1/keys")]
        == roles[("GET", "/v1/stream")]
        == roles[("GET", "/v1/watch")]
        == Role.READ
    )
    assert roles[("PUT", "/v1/kv/{key}")] == roles[("POST", "/v1/sessions/{id}/keepalive")] == Role.WRITE
    assert roles[("POST", "/v1/leader/transfer")] == roles[("GET", "/v1/snapshot")] == Role.ADMIN
    assert {ep.name for ep in p.ENDPOINTS if ep.openable} == {"status", "metrics"}
    ops = [ep for ep in p.ENDPOINTS if ep.stream]
    assert [ep.name for ep in ops] == [
        "increment", "get", "set", "delete", "list", "lock_acquire", "lock_renew", "lock_release",
        "lock_get", "watch", "session_open", "session_keepalive",
    ]  # fmt: skip
    api = object.__new__(Api)
    assert set(api.operations()) == {ep.name for ep in ops}
    for ep in p.ENDPOINTS:
        # aiohttp's canonical form, which the auth middleware sees, is the row's.
        resource = web.DynamicResource(ep.path) if ep.param else web.PlainResource(ep.path)
        assert resource.canonical == ep.canonical, ep.name
        assert (ep.param is None) == ("{" not in ep.path), ep.name
        if ep.param:
            assert ep.path_for("x") == re.sub(r"\{[^}]+\}", "x", ep.path)
        if ep.stream:
            assert ep.path.startswith("/v1/") and "timeout" in ep.query, ep.name
            assert ("consistency" in ep.query) == (not ep.writes), ep.name


def test_describe_names_the_endpoint_for_messages() -> None:
    assert p.KV_SET.describe("a b") == "PUT /v1/kv/a b"
    assert p.KV_SET.describe() == "PUT /v1/kv/{key}"
    assert p.KV_INCREMENT.describe("k") == "POST /v1/kv/k/increment"
    assert p.SESSION_OPEN.describe("") == p.SESSION_OPEN.describe() == "POST /v1/sessions"


# --------------------------------------------------------------------------- no second copy


#: a string that IS a route (not prose mentioning one): a path of ours, or "METHOD /path"
_ROUTE_LITERAL = re.compile(r"^(?:(?:GET|PUT|POST|DELETE|HEAD) )?/(?:v1|raft|health|ready|status|metrics)\b")


def _route_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and _ROUTE_LITERAL.match(node.value)
    ]


#: (file, literal) that look like our routes but are not: the bench's etcd answers GET /health, and
#: f"/proc/{pid}/status" holds a "/status" piece
_NOT_OURS = {("node/bench/clusters.py", "'/health'"), ("node/bench/scale.py", "'/status'")}


def _ours(hit: str) -> bool:
    where, _, literal = hit.partition(": ")
    return (where.rsplit(":", 1)[0], literal) not in _NOT_OURS


def test_the_table_is_the_only_place_a_path_is_written() -> None:
    sources = [f for d in ("node", "client", "scripts") for f in sorted((ROOT / d).rglob("*.py"))]
    assert len(sources) > 50
    found = [
        hit
        for f in sources
        if f != ROOT / "client" / "protocol.py"
        for hit in _route_literals(f)
        if _ours(hit)
    ]
    assert not found, "paths written outside client/protocol.py:\n" + "\n".join(found)
    # the scan does find them where they are
    assert len(_route_literals(ROOT / "client" / "protocol.py")) == len(p.ENDPOINTS)


def test_rows_are_made_only_in_the_table() -> None:
    sources = [f for d in ("node", "client") for f in sorted((ROOT / d).rglob("*.py"))]
    makers = [f for f in sources if "Endpoint(" in f.read_text(encoding="utf-8")]
    assert makers == [ROOT / "client" / "protocol.py"]
