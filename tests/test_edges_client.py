"""Issue 19, item 7, the client's edges — on real sockets (no node needed for these):

- a client pointed at addresses where nothing listens says "nothing listening at …" after about
  MISADDRESSED_GIVE_UP_S, not "no leader answered" at its deadline;
- another service on the port (an HTTP 404 without a raftstate error document) is a connection-level
  error (ConnectFailed, the cause of Unavailable), never NotFound (which reads as "no such key");
- an https client against a plain-http server says so, not a buried WRONG_VERSION_NUMBER.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from raftstate.client import AsyncClient, ConnectFailed, NotFound, Unavailable
from raftstate.client.async_client import MISADDRESSED_GIVE_UP_S
from raftstate.node.ops.local_cluster import free_ports

#: generous: the point is "well before the 10 s deadline", on a loaded shared box
EARLY_S = MISADDRESSED_GIVE_UP_S + 4.0


@pytest.fixture
async def other_service() -> AsyncIterator[str]:
    """Some other HTTP service: plain-text 404 for every path (like a web server's)."""

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="404 page not found")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_ports(1)[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


async def test_nothing_listening_is_said_early() -> None:
    endpoints = [f"http://127.0.0.1:{port}" for port in free_ports(3)]
    t0 = time.monotonic()
    async with AsyncClient(endpoints, timeout=10) as state:
        with pytest.raises(Unavailable) as err:
            await state.set("k", 1)
    assert time.monotonic() - t0 < EARLY_S
    message = str(err.value)
    assert "nothing listening at" in message and all(e in message for e in endpoints), message
    assert "is the cluster running" in message
    assert isinstance(err.value.cause, ConnectFailed) and err.value.cause.misaddressed == "refused"


async def test_a_wrong_service_on_the_port_is_a_connection_error(other_service: str) -> None:
    t0 = time.monotonic()
    async with AsyncClient([other_service], timeout=10) as state:
        for call in (state.get("k"), state.set("k", 1)):
            with pytest.raises(Unavailable) as err:
                await call
            assert not isinstance(err.value, NotFound)
            cause = err.value.cause
            assert isinstance(cause, ConnectFailed) and cause.misaddressed == "not_raftstate", cause
            assert "is not a raftstate node" in str(err.value) and "HTTP 404" in str(err.value)
    assert time.monotonic() - t0 < 2 * EARLY_S


async def test_https_against_a_plain_http_server_says_so(other_service: str) -> None:
    endpoint = f"https://{other_service}"
    async with AsyncClient([endpoint], timeout=10) as state:
        with pytest.raises(Unavailable) as err:
            await state.get("k")
    message = str(err.value)
    assert "does not speak TLS" in message and f"http://{other_service}" in message, message
    assert "WRONG_VERSION_NUMBER" not in message
    assert isinstance(err.value.cause, ConnectFailed) and err.value.cause.misaddressed == "not_tls"


async def test_a_client_that_reached_its_cluster_keeps_trying_until_its_deadline() -> None:
    """The early give-up is for a misaddressed client only: once a node answered, a cluster that
    stops listening (a whole-cluster restart) is retried until the call's deadline."""
    endpoints = [f"http://127.0.0.1:{port}" for port in free_ports(2)]
    async with AsyncClient(endpoints, timeout=MISADDRESSED_GIVE_UP_S + 1.5) as state:
        state._reached_cluster = True  # as after any answer of a node
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as err:
            await state.get("k")
    assert time.monotonic() - t0 >= MISADDRESSED_GIVE_UP_S + 1.0
    assert "no leader answered" in str(err.value)


class _CertThenDeadline:
    """A node whose certificate is not trusted; once the caller's deadline is nearly gone, the
    stream's connect gives up with "no stream within 0.00s" (as the TLS cluster test saw)."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, endpoint: str, request: object, timeout_s: float) -> object:
        self.calls += 1
        if timeout_s < 0.5:
            raise ConnectFailed(f"no stream to {endpoint} within 0.00s", node=endpoint, ran_out=True)
        why = f"cannot connect to {endpoint}: its TLS certificate is not trusted"
        raise ConnectFailed(why, node=endpoint)

    async def aclose(self) -> None:
        pass


async def test_giving_up_names_the_last_real_failure_not_the_deadline_running_out() -> None:
    """Regression (test_tls_cluster flaked): the reason given was the last attempt's "no stream
    within 0.00s", which says nothing; the attempt before it said why (an untrusted certificate)."""
    tr = _CertThenDeadline()
    endpoints = ["https://127.0.0.1:1", "https://127.0.0.1:2"]
    async with AsyncClient(endpoints, transport=tr, timeout=1.5) as state:
        with pytest.raises(Unavailable) as err:
            await state.get("k")
    assert tr.calls >= 2
    assert "TLS certificate is not trusted" in str(err.value.cause), err.value
