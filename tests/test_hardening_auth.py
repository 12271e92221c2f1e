"""Issue 18: the per-address limit on failed authentications, 405 for a method no route takes,
control characters escaped in logged request fields, 500 bodies with an error id (items 5, 8 and
issue 8's note), over real sockets to an in-process aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from raftstate.client import protocol as p
from raftstate.node.api.handlers import Api
from raftstate.node.metrics import NodeMetrics
from raftstate.node.security.auth import AUTHENTICATOR, Authenticator, auth_middleware
from raftstate.node.security.config import ResolvedAuth, Role
from raftstate.node.security.log_fields import printable

READ = "r-token-0123456789"
WINDOW_S = 0.6


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    auth = ResolvedAuth(True, b"x" * 16, (("reader", Role.READ, READ.encode()),), frozenset())
    app = web.Application()
    app[AUTHENTICATOR] = Authenticator(auth, NodeMetrics(), max_failures=3, failure_window_s=WINDOW_S)
    app.middlewares.append(auth_middleware)
    app.router.add_get(p.KV_GET.path, ok)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    yield srv
    await srv.close()


async def call(srv: TestServer, token: str | None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, srv.make_url("/v1/kv/a"), headers=headers) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def test_after_n_failures_an_address_gets_429_without_its_token_being_checked(
    server: TestServer,
) -> None:
    assert (await call(server, READ))[0] == 200
    for _ in range(3):
        assert (await call(server, "guess-0123456789"))[0] == 401
    status, headers, body = await call(server, READ)  # even the right token: not checked now
    assert status == 429, body
    assert b"too_many_auth_failures" in body and b"fix the token" in body
    assert 1 <= int(headers["Retry-After"]) <= 1 + WINDOW_S
    metrics = server.app[AUTHENTICATOR].failures
    assert metrics.labels(reason="throttled")._value.get() == 1
    await asyncio.sleep(WINDOW_S + 0.1)  # the window passes
    assert (await call(server, READ))[0] == 200


async def test_a_weak_role_does_not_count_as_a_failed_authentication(server: TestServer) -> None:
    """403 (a valid token, too weak) is not guessing: it never throttles the address."""
    for _ in range(5):
        assert (await call(server, READ, "PUT"))[0] in (403, 405)
    assert (await call(server, READ))[0] == 200


async def test_an_unregistered_method_is_405_not_403(server: TestServer) -> None:
    """Before: OPTIONS/PATCH on /v1/kv/{key} fell to deny-by-default (403 "needs role admin") for a
    read token. A method no route takes is answered 405 with Allow."""
    for method in ("OPTIONS", "PATCH"):
        status, headers, _ = await call(server, READ, method)
        assert status == 405, method
        assert "GET" in headers["Allow"]
    status, _, _ = await call(server, READ, "HEAD")  # HEAD is GET's twin
    assert status == 200


async def test_logged_request_fields_have_their_control_characters_escaped(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 18 item 5: a path with %0A and ANSI escapes wrote a forged INFO line into the log."""
    caplog.set_level(logging.INFO)
    host, port = server.host, server.port
    r, w = await asyncio.open_connection(host, port)
    w.write(b"GET /v1/kv/a%0A2026-01-01%20INFO%20forged%1b[2J%e2%80%a8x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(r.read(100), 5)).startswith(b"HTTP/1.1 401")
    w.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "raftstate.node.security.auth"]
    assert lines, caplog.text
    line = lines[-1]
    assert "\n" not in line and "\x1b" not in line and "\u2028" not in line
    assert "\\x0a2026-01-01 INFO forged\\x1b[2J\\u2028x" in line


def test_printable_escapes_controls_and_backslashes_and_bounds_length() -> None:
    assert printable("a\nb\rc\x1b[31md\x00e\x7f\x9b") == "a\\x0ab\\x0dc\\x1b[31md\\x00e\\x7f\\x9b"
    assert printable("looks\\x0aescaped") == "looks\\\\x0aescaped", "an escape cannot be faked"
    assert printable("é ü 日本") == "é ü 日本"
    assert printable("x" * 500, limit=10) == "x" * 10 + "...(+490 chars)"


async def test_a_500_body_has_a_generic_message_and_an_error_id_the_log_carries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Item 8: 500 bodies carried repr(exc) (paths, values, another caller's data)."""

    async def buggy(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail /var/lib/raftstate/n1 value=hunter2")

    fake_api = SimpleNamespace(metrics=NodeMetrics())
    app = web.Application()
    app.router.add_get("/bug", Api._timed(fake_api, "bug", buggy))  # type: ignore[arg-type]
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        async with aiohttp.ClientSession() as s, s.get(srv.make_url("/bug")) as r:
            assert r.status == 500
            err = (await r.json())["error"]
    finally:
        await srv.close()
    assert err["code"] == p.INTERNAL
    assert "hunter2" not in err["message"] and "RuntimeError" not in err["message"]
    error_id = err["error_id"]
    assert error_id in err["message"]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None, "the log line has the id and the traceback"
