"""Any node answers: a follower relays a client operation to the leader (docs/api.md, "Any node").

A write or a linearizable read sent over HTTP to a follower is refused ``not_leader`` by the
operation itself, before anything is proposed or read. :meth:`Forwarder.serve` then sends the same
request to the leader and relays the leader's answer as it came (status, body, content type), so
``curl`` at any node works. The rules, in the order they are checked:

    the caller sent X-Raftstate-Forward: never     the 421 not_leader of today (the client library
                                                   sends it: it follows the leader itself)
    the request is a forward already               421 (one hop at most: never a loop)
    no leader known, or the leader refused         wait (jittered, short) and try again, here first
      the connection, or answered not_leader       (this node may lead now): nothing was sent or
                                                   proposed, so trying again is safe
    FORWARD_LIMIT forwards already in flight       503 unavailable naming the limit: nothing sent
    the leader answered                            its answer, relayed
    sent, but no (complete) answer                 a write: 504 outcome_unknown (it may have been
                                                   applied); a read: 504 timeout
    the leader's answer is over max_answer_bytes   503 unavailable naming the limit (a write:
                                                   504 outcome_unknown)
    the request's deadline passed with no leader   503 unavailable

Bounds: at most ``limit`` forwards at once per node; the body is the one this node already read
within settings.max_request_bytes, re-encoded as msgpack; the answer at most ``max_answer_bytes``;
and the time is the request's own deadline (``?timeout=`` or the node's request timeout): the
leader is asked with ``?timeout=`` set to what is left of it, so a forward never outlives the
caller's wait. ``raftstate_forwards{outcome}`` counts every forward by outcome.

Credentials: the caller's ``Authorization`` header travels as it came and the leader checks it
again; the forward adds none of its own, so it never grants more than the caller has. Over TLS the
node dials with its client TLS context (the one it dials peers with). ``/v1/stream`` is never
forwarded: a stream's operations are answered ``not_leader`` on a follower (the client library
follows the leader itself).
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import msgpack
from aiohttp import web
from prometheus_client import Counter
from yarl import URL

from raftstate.client import protocol as p
from raftstate.node.api import schema
from raftstate.node.api.codec import respond
from raftstate.node.driver import RaftDriver
from raftstate.node.errors import Refusal, RemoteFault
from raftstate.node.metrics import NodeMetrics

__all__ = ["ANSWERED_BY_HEADER", "FORWARDED_BY_HEADER", "FORWARD_HEADER", "Forwarder"]

#: ``X-Raftstate-Forward: never``: answer 421 not_leader instead of forwarding (docs/api.md)
FORWARD_HEADER: Final = p.FORWARD_HEADER
#: set on a forwarded request (the forwarding node's id): its receiver never forwards it again
FORWARDED_BY_HEADER: Final = "X-Raftstate-Forwarded-By"
#: set on a relayed answer: the id of the node that answered it
ANSWERED_BY_HEADER: Final = "X-Raftstate-Answered-By"

#: forwards in flight on one node at most (each holds one connection to the leader)
FORWARD_LIMIT: Final = 128
#: largest leader's answer relayed (a page of keys, a large value): 64 MiB
MAX_ANSWER_BYTES: Final = 64 << 20
#: extra time the HTTP call to the leader gets past the ``?timeout=`` the leader is given, so that
#: the leader's own timeout answer (outcome_unknown / timeout) arrives rather than a cut connection
ANSWER_GRACE_S: Final = 0.5
#: waits between tries while no leader is known (seconds, jittered, doubling up to the cap)
RETRY_BASE_S: Final = 0.025
RETRY_CAP_S: Final = 0.25

#: what the handler runs: the operation with these query parameters -> its response body
Run = Callable[[Mapping[str, str]], Awaitable[Any]]


class _Lost(RemoteFault):
    """Sent to the leader, but no complete answer came back (never leaves this module: it becomes
    outcome_unknown or timeout)."""


class Forwarder:
    def __init__(
        self,
        driver: RaftDriver,
        metrics: NodeMetrics,
        *,
        ssl_context: ssl.SSLContext | None = None,
        request_timeout_s: float = 5.0,
        limit: int = FORWARD_LIMIT,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        """``ssl_context``: the node's client TLS context (None: the cluster speaks plain http)."""
        assert limit >= 1 and max_answer_bytes >= 1 and request_timeout_s > 0
        self.driver = driver
        self._ssl = ssl_context
        self._scheme = "https" if ssl_context is not None else "http"
        self.timeout_s = request_timeout_s
        self.limit = limit
        self.max_answer_bytes = max_answer_bytes
        self._rng = rng or random.Random()
        self._in_flight = 0  # invariant: 0 <= _in_flight <= limit
        self._session: aiohttp.ClientSession | None = None
        self.forwards_total = Counter(
            "raftstate_forwards",
            "Client requests a follower forwarded to the leader, by outcome (relayed: the leader's "
            "answer was relayed, whatever its status; no_leader, over_limit, too_large, lost)",
            ["outcome"],
            registry=metrics.registry,
        )

    def install(self, app: web.Application) -> None:
        """Close the connections to the leader when the app shuts down."""

        async def close(_: web.Application) -> None:
            await self.aclose()

        app.on_cleanup.append(close)

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # ----------------------------------------------------------------- the handler's side

    async def serve(self, request: web.Request, ep: p.Endpoint, body: Any, run: Run) -> web.StreamResponse:
        """Answer ``request`` (client operation ``ep``, its decoded ``body``): run it here; if this
        node is not the leader, forward it (the rules of the module docstring). Refusals raise."""
        loop = asyncio.get_running_loop()
        timeout_s = schema.timeout_s(request.query, self.timeout_s)
        deadline = loop.time() + timeout_s
        may_forward = not _no_forward(request)
        delay_s = RETRY_BASE_S
        query: Mapping[str, str] = request.query
        while True:
            try:
                return respond(request, await run(query))
            except Refusal as err:
                if err.code != p.NOT_LEADER or not may_forward:
                    raise
                refusal = err
            left_s = deadline - loop.time()
            leader = self.driver.raft.leader
            address = self.driver.addresses.get(leader) if leader and leader != self.driver.id else None
            if address is not None and left_s > 0:
                try:
                    answer = await self._forward(request, ep, body, address, leader or "", left_s)
                except _Lost as exc:
                    self.forwards_total.labels(outcome="lost").inc()
                    raise _lost_refusal(ep, self.driver.id, leader or "", address, exc) from None
                if answer is not None:
                    return answer
                # None: nothing reached the leader, or it no longer leads: nothing was proposed
            left_s = deadline - loop.time()
            if left_s <= 0:
                self.forwards_total.labels(outcome="no_leader").inc()
                raise Refusal(
                    p.UNAVAILABLE,
                    f"node {self.driver.id} could not forward {ep.describe()} to a leader within "
                    f"{timeout_s:g}s ({refusal.message}); nothing was applied: retry",
                    leader=refusal.fields.get("leader"),
                    leader_address=refusal.fields.get("leader_address"),
                )
            await asyncio.sleep(min(left_s, delay_s * (0.5 + self._rng.random())))
            delay_s = min(RETRY_CAP_S, delay_s * 2)
            query = _with_timeout(request.query, deadline - loop.time())

    # ----------------------------------------------------------------- one forward

    async def _forward(
        self, request: web.Request, ep: p.Endpoint, body: Any, address: str, leader: str, left_s: float
    ) -> web.Response | None:
        """The leader's answer, relayed; None if it was not sent (connection refused) or the leader
        answered not_leader (it lost leadership: nothing proposed). Raises _Lost, Refusal."""
        if self._in_flight >= self.limit:
            self.forwards_total.labels(outcome="over_limit").inc()
            raise Refusal(
                p.UNAVAILABLE,
                f"node {self.driver.id} is not the leader and already forwards {self.limit} requests "
                f"(its limit); send to the leader {leader} at {address} directly, or retry shortly",
                leader=leader,
                leader_address=address,
                limit=self.limit,
            )
        self._in_flight += 1
        try:
            return await self._send(request, ep, body, address, leader, left_s)
        finally:
            self._in_flight -= 1
            assert 0 <= self._in_flight < self.limit

    async def _send(
        self, request: web.Request, ep: p.Endpoint, body: Any, address: str, leader: str, left_s: float
    ) -> web.Response | None:
        headers = {FORWARD_HEADER: "never", FORWARDED_BY_HEADER: self.driver.id}
        for name in ("Authorization", "Accept"):  # the caller's, as they came: the leader checks again
            if name in request.headers:
                headers[name] = request.headers[name]
        data = None
        if ep.method != "GET":
            try:  # validated before it was refused not_leader, so this holds; a Refusal if not
                data = msgpack.packb(body, use_bin_type=True)
            except (TypeError, ValueError, OverflowError) as exc:
                raise Refusal(p.INVALID_REQUEST, f"the request body cannot be forwarded: {exc}") from None
            headers["Content-Type"] = p.MSGPACK
        query = urlencode(list(_with_timeout(request.query, left_s).items()))
        url = URL(f"{self._scheme}://{address}{request.rel_url.raw_path}?{query}", encoded=True)
        timeout = aiohttp.ClientTimeout(total=left_s + ANSWER_GRACE_S, sock_connect=min(left_s, 1.0))
        sent = False
        try:
            async with self._get_session().request(
                ep.method, url, data=data, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                sent = True
                if resp.status == p.STATUS_OF[p.NOT_LEADER]:
                    return None  # it lost leadership before proposing; try again
                raw = await _read_at_most(resp, self.max_answer_bytes)
                if raw is None:
                    self.forwards_total.labels(outcome="too_large").inc()
                    raise Refusal(
                        p.OUTCOME_UNKNOWN if ep.writes else p.UNAVAILABLE,  # a write's answer is small
                        f"the leader's answer to {ep.describe()} is over {self.max_answer_bytes} bytes, the "
                        f"most node {self.driver.id} relays; ask the leader {leader} at {address} directly",
                        leader=leader,
                        leader_address=address,
                        limit=self.max_answer_bytes,
                    )
                self.forwards_total.labels(outcome="relayed").inc()
                return web.Response(
                    body=raw,
                    status=resp.status,
                    headers={
                        "Content-Type": resp.headers.get("Content-Type", p.JSON),
                        ANSWERED_BY_HEADER: leader,
                    },
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            if sent:
                raise _Lost("the connection broke") from None
            return None  # never reached the leader
        except TimeoutError as exc:
            raise _Lost(f"no answer within {left_s + ANSWER_GRACE_S:.2f}s") from exc
        except aiohttp.ClientError as exc:
            raise _Lost(f"{type(exc).__name__}: {exc}") from exc

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_arg: ssl.SSLContext | bool = self._ssl if self._ssl is not None else True
            connector = aiohttp.TCPConnector(limit=self.limit, keepalive_timeout=30, ssl=ssl_arg)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": f"raftstate-forward/{self.driver.id}"}
            )
        return self._session


def _no_forward(request: web.Request) -> bool:
    """The caller asked for today's 421, or the request is a forward already (one hop at most)."""
    return (
        request.headers.get(FORWARD_HEADER, "").strip().lower() == "never"
        or FORWARDED_BY_HEADER in request.headers
    )


def _with_timeout(query: Mapping[str, str], left_s: float) -> dict[str, str]:
    """``query`` with ``timeout`` set to what is left of the request's deadline (ms precision)."""
    return {**{k: v for k, v in query.items() if k != "timeout"}, "timeout": f"{max(left_s, 0.001):.3f}"}


def _lost_refusal(ep: p.Endpoint, node: str, leader: str, address: str, exc: _Lost) -> Refusal:
    where = f"forwarded by node {node} to the leader {leader} at {address}: {exc}"
    if ep.writes:
        return Refusal(
            p.OUTCOME_UNKNOWN,
            f"{ep.describe()} {where}; it may or may not have been applied: read the state back "
            "before retrying (or retry with the same session and seq)",
            leader=leader,
            leader_address=address,
        )
    return Refusal(p.TIMEOUT, f"{ep.describe()} {where}; nothing changed: retry", leader=leader)


async def _read_at_most(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes | None:
    """The whole answer body, or None if it is over ``max_bytes`` (content.read(n) returns what
    has arrived, not n bytes: read to the end)."""
    if resp.content_length is not None and resp.content_length > max_bytes:
        return None
    buf = bytearray()
    while True:
        chunk = await resp.content.read(max_bytes + 1 - len(buf))
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > max_bytes:
            return None
