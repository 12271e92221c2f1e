"""The seam between the client's logic and the network: one request to one node.

:class:`Transport` is a Protocol; :class:`AiohttpTransport` is what ships (keep-alive connection
pools, msgpack bodies) and tests/fake_cluster.py has an in-memory twin (the node's own request
handling and state machine, without Raft or sockets).
A transport knows nothing of leaders, retries or sessions: it sends one request to the endpoint
it is given and either returns the node's answer (any HTTP status) or raises a
:class:`~raftstate.client.errors.TransportError` saying whether the request can have reached it:

    ConnectFailed   never reached the node                   (a write certainly not applied)
    ResponseLost    sent, no complete answer within timeout  (a write may have been applied)
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
import msgpack
from yarl import URL

from raftstate.client import protocol as p
from raftstate.client.errors import ConnectFailed, InvalidRequest, ResponseLost

__all__ = [
    "AiohttpTransport",
    "Request",
    "Response",
    "Transport",
    "decode_body",
    "encode_body",
    "untrusted_certificate",
]


@dataclass(frozen=True, slots=True)
class Request:
    """One operation of the endpoint table (client/protocol.py) on one name: its HTTP method and
    path, and its op on /v1/stream, all follow from ``op``; nothing maps a path back to an op."""

    op: p.Endpoint
    #: the key, lock name or session id the operation acts on ("" when its path has no parameter)
    name: str = ""
    #: None: no body
    body: Any = None
    query: Mapping[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.op.method

    @property
    def path(self) -> str:
        """Percent-encoded, e.g. "/v1/kv/imports%3A42"."""
        return self.op.path_for(self.name)

    def describe(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    #: decoded msgpack/JSON document, or the text of a body that was neither
    body: Any


class Transport(Protocol):
    """Sends one request to one node. Implementations must be safe to call concurrently."""

    async def send(self, endpoint: str, request: Request, timeout_s: float) -> Response:
        """Answer of ``endpoint`` (e.g. "http://127.0.0.1:7001") to ``request``, whatever its status.

        Raises ConnectFailed if the request cannot have reached the node, ResponseLost if it may
        have but no answer arrived within ``timeout_s``, InvalidRequest if the body cannot be encoded."""
        ...

    async def aclose(self) -> None:
        """Release connections. Further sends are not allowed."""
        ...


def encode_body(body: Any, *, what: str) -> bytes:
    try:
        out: bytes = msgpack.packb(body, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(
            f"{what}: the value cannot be sent ({exc}); values may hold None, bool, int, float, str, bytes, "
            "lists and dicts with string keys"
        ) from None
    return out


def decode_body(raw: bytes, content_type: str) -> Any:
    """A response body: msgpack or JSON document, else its text. Raises ValueError if a body that
    claims to be msgpack/JSON does not decode."""
    if not raw:
        return None
    if content_type == p.MSGPACK:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if content_type == p.JSON:
        return json.loads(raw)
    return raw.decode("utf-8", "replace")


@dataclass(slots=True)
class _SendTrace:
    headers_sent: bool = False  #: some try of this request was written to a connection


def _sent_tracer() -> aiohttp.TraceConfig:
    async def on_headers_sent(session: Any, ctx: Any, params: Any) -> None:
        if isinstance(ctx.trace_request_ctx, _SendTrace):
            ctx.trace_request_ctx.headers_sent = True

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(on_headers_sent)
    return trace


def connect_error(endpoint: str, exc: aiohttp.ClientConnectorError) -> ConnectFailed:
    """Why a connection to ``endpoint`` could not be made, in words that say what to fix (HTTP and
    stream connections alike). Nothing was sent."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return untrusted_certificate(endpoint, exc)
    os_error = exc.os_error
    if isinstance(os_error, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(os_error):
        return ConnectFailed(
            f"cannot connect to {endpoint}: it does not speak TLS (it answered in plain HTTP); use "
            f"{endpoint.replace('https://', 'http://', 1)}, or turn tls: on in the cluster file",
            misaddressed="not_tls",
            node=endpoint,
        )
    if isinstance(os_error, ConnectionRefusedError):
        return ConnectFailed(
            f"nothing listening at {endpoint} (connection refused); is the node running, and is this "
            "its address?",
            misaddressed="refused",
            node=endpoint,
        )
    # (str(exc) would say "ssl:default" even for plain http: name the OS error only)
    return ConnectFailed(f"cannot connect to {endpoint}: {os_error.strerror or os_error}", node=endpoint)


def untrusted_certificate(endpoint: str, exc: aiohttp.ClientConnectorCertificateError) -> ConnectFailed:
    """TLS: the node's certificate is not trusted (HTTP and stream connections alike)."""
    return ConnectFailed(
        f"cannot connect to {endpoint}: its TLS certificate is not trusted "
        f"({exc.certificate_error}); pass ca= the cluster's CA file",
        node=endpoint,
    )


class AiohttpTransport:
    """HTTP/1.1 with keep-alive pools (one ``aiohttp.ClientSession`` per client), msgpack both ways.

    The session is created on first use, inside the event loop that will use it."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        connect_timeout_s: float = 1.0,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        assert max_connections > 0 and connect_timeout_s > 0
        # Sent on every request (also the leader probes); never logged or put in an error message.
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={
                    "Accept": p.MSGPACK,
                    "User-Agent": "raftstate-client/0.1",
                    # the client follows the leader itself: a follower must answer not_leader, not forward
                    p.FORWARD_HEADER: "never",
                    **self._auth,
                },
                trace_configs=[_sent_tracer()],
            )
        return self._session

    async def send(self, endpoint: str, request: Request, timeout_s: float) -> Response:
        assert not self._closed, "send() after aclose()"
        what = request.describe()
        data = None if request.body is None else encode_body(request.body, what=what)
        url = endpoint.rstrip("/") + request.path
        if request.query:
            url += "?" + urlencode(dict(request.query))
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, self._connect_timeout_s))
        headers = {"Content-Type": p.MSGPACK} if data is not None else None
        sent = False  # True once the connection exists: from then on the node may have the request
        # aiohttp silently re-sends a PUT/DELETE on a new connection when a reused one breaks; if
        # that retry's connect then fails, the FIRST try may still have reached the node (found by
        # the chaos suite: a write reported Unavailable was applied). The tracer records a send.
        trace = _SendTrace()
        try:
            async with self._get_session().request(
                request.method,
                URL(url, encoded=True),
                data=data,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                trace_request_ctx=trace,
            ) as resp:
                sent = True
                raw = await resp.read()
                try:
                    body = decode_body(raw, resp.content_type)
                except ValueError as exc:
                    body = f"<undecodable {resp.content_type} body: {exc}>"
                return Response(resp.status, body)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            if trace.headers_sent:  # an earlier try of this request went out on a reused connection
                raise ResponseLost(
                    f"connection to {endpoint} broke during {what}, and reconnecting failed: {exc}",
                    node=endpoint,
                ) from exc
            if isinstance(exc, aiohttp.ClientConnectorError):  # refused, TLS, unreachable, DNS: nothing sent
                raise connect_error(endpoint, exc) from exc
            raise ConnectFailed(f"connect to {endpoint} timed out", node=endpoint) from exc
        except TimeoutError as exc:
            raise ResponseLost(
                f"no answer from {endpoint} to {what} within {timeout_s:.2f}s"
                + ("" if sent else " (it may not have been sent)"),
                node=endpoint,
            ) from exc
        except aiohttp.ClientError as exc:  # reset, server disconnected, broken payload
            raise ResponseLost(
                f"connection to {endpoint} broke during {what}: {type(exc).__name__}: {exc}", node=endpoint
            ) from exc

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
