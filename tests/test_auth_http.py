"""The one authorization point, over real sockets (an in-process aiohttp server on 127.0.0.1).

401 without a token or with an unknown one, 403 with a weaker role, deny-by-default for routes the
table does not list, the same check reusable from a handler, failures counted and logged without
the token."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from raftstate.node.api.codec import error_response
from raftstate.node.errors import Refusal
from raftstate.node.metrics import NodeMetrics
from raftstate.node.security.auth import AUTHENTICATOR, Authenticator, auth_middleware, authorize, route_roles
from raftstate.node.security.config import ResolvedAuth, Role

TOKENS = {Role.READ: "r-token-0123456789", Role.WRITE: "w-token-0123456789", Role.ADMIN: "a-token-0123456789"}


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def snapshot_like(request: web.Request) -> web.Response:
    """What another engineer's admin endpoint does: a finer check inside the handler."""
    try:
        authorize(request, Role.ADMIN)
    except Refusal as err:
        return error_response(request, err)
    return web.json_response({"ok": True})


def make_app(metrics: NodeMetrics, open_: frozenset[str] = frozenset()) -> web.Application:
    auth = ResolvedAuth(True, b"x" * 16, tuple((r.name, r, t.encode()) for r, t in TOKENS.items()), open_)
    app = web.Application()
    app[AUTHENTICATOR] = Authenticator(auth, metrics)
    app.middlewares.append(auth_middleware)
    app.router.add_get("/health", ok)
    app.router.add_get("/status", ok)
    app.router.add_get("/metrics", ok)
    app.router.add_get("/v1/kv/{key:.+}", ok)
    app.router.add_put("/v1/kv/{key:.+}", ok)
    app.router.add_post("/v1/leader/transfer", ok)
    app.router.add_post("/v1/members", ok)  # an admin row of the table
    app.router.add_get("/v1/snapshot", snapshot_like)
    return app


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, NodeMetrics]]:
    metrics = NodeMetrics("n1", "test")
    srv = TestServer(make_app(metrics), host="127.0.0.1")
    await srv.start_server()
    yield srv, metrics
    await srv.close()


async def status_of(srv: TestServer, method: str, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, s.request(method, srv.make_url(path), headers=headers) as r:
        await r.read()
        return r.status


#: (method, path, weakest role allowed; None = open)
CASES = [
    ("GET", "/health", None),
    ("GET", "/status", Role.READ),
    ("GET", "/metrics", Role.READ),
    ("GET", "/v1/kv/a", Role.READ),
    ("PUT", "/v1/kv/a", Role.WRITE),
    ("POST", "/v1/leader/transfer", Role.ADMIN),
    ("POST", "/v1/members", Role.ADMIN),
    ("GET", "/v1/snapshot", Role.ADMIN),
    ("GET", "/no/such/route", Role.ADMIN),
]


async def test_every_route_against_every_role(server: tuple[TestServer, NodeMetrics]) -> None:
    srv, metrics = server
    refused = 0
    for method, path, need in CASES:
        if need is None:
            assert await status_of(srv, method, path) == 200
            continue
        assert await status_of(srv, method, path) == 401, f"{method} {path} without a token"
        assert await status_of(srv, method, path, "not-a-token-of-ours") == 401
        refused += 2
        for role, token in TOKENS.items():
            got = await status_of(srv, method, path, token)
            if role >= need:
                assert got in (200, 404), f"{method} {path} with {role.name}"
            else:
                assert got == 403, f"{method} {path} with {role.name}"
                refused += 1
    text = metrics.render().decode()
    counts = {
        reason: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("raftstate_auth_failures_total{")
        for reason in [line.split('"')[1]]
    }
    assert counts["missing_token"] + counts["invalid_token"] + counts["weak_role"] == refused
    assert counts["weak_role"] > 0 and counts["missing_token"] == counts["invalid_token"]


async def test_the_401_says_what_to_send_and_the_log_never_holds_the_token(
    server: tuple[TestServer, NodeMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    srv, _ = server
    caplog.set_level(logging.WARNING, logger="raftstate.node.security.auth")
    async with aiohttp.ClientSession() as s:
        async with s.put(srv.make_url("/v1/kv/a"), headers={"Authorization": "Bearer wrong-secret-xyz"}) as r:
            body = await r.json()
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
            assert body["error"]["code"] == "unauthorized"
            assert "Authorization: Bearer <token>" in body["error"]["message"]
        async with s.put(
            srv.make_url("/v1/kv/a"), headers={"Authorization": f"Bearer {TOKENS[Role.READ]}"}
        ) as r:
            body = await r.json()
            assert r.status == 403 and body["error"]["code"] == "forbidden"
            assert (
                "needs role write" in body["error"]["message"]
                and "'READ' has role read" in body["error"]["message"]
            )
    assert "127.0.0.1" in caplog.text, "refusals are logged with the remote address"
    assert "wrong-secret-xyz" not in caplog.text and TOKENS[Role.READ] not in caplog.text


async def test_metrics_and_status_can_be_opened_by_config() -> None:
    srv = TestServer(make_app(NodeMetrics(), frozenset({"metrics"})), host="127.0.0.1")
    await srv.start_server()
    try:
        assert await status_of(srv, "GET", "/metrics") == 200
        assert await status_of(srv, "GET", "/status") == 401
    finally:
        await srv.close()


CLIENT_PREFIXES = ("/v1/kv/", "/v1/keys", "/v1/locks/", "/v1/sessions")


def unlisted_client_routes(app: web.Application) -> set[tuple[str, str]]:
    """Worker-facing routes the table does not list: they would need admin, and workers get 403.
    (Every route a node serves is a row of the endpoint table: tests/test_endpoint_table.py.)"""
    routes = {
        (r.method, r.resource.canonical) for r in app.router.routes() if r.resource and r.method != "HEAD"
    }
    return {r for r in routes if r[1].startswith(CLIENT_PREFIXES) and r not in route_roles()}


def test_every_client_route_of_the_api_has_an_explicit_role() -> None:
    from raftstate.node.api.handlers import Api

    app = web.Application()
    Api.install(object.__new__(Api), app)  # only registers routes
    assert not unlisted_client_routes(app)
    # the check catches a worker route someone adds without a table row
    app.router.add_post("/v1/kv/{key}/append", ok)
    assert unlisted_client_routes(app) == {("POST", "/v1/kv/{key}/append")}
