"""An in-memory twin of a raftstate cluster that follows docs/api.md, for client unit tests.

``FakeCluster`` holds ONE replicated state (keys with versions and expiry, locks with fencing
tokens, sessions with exactly-once replies) and a few nodes of which one (or none) leads.
``FakeCluster.transport()`` is a :class:`raftstate.client.Transport`: requests to a follower get
``not_leader`` naming the leader, like the real nodes; bodies go through msgpack as on the wire.

Faults are scripted per request with :meth:`FakeCluster.fault`::

    refuse            ConnectFailed — never reached the node (nothing applied)
    hang              no answer until the attempt times out (ResponseLost; nothing applied)
    apply_then_hang   applied, then no answer until the attempt times out (ResponseLost)
    apply_then_lose   applied, then the connection breaks at once (ResponseLost)
    unavailable       503 unavailable (nothing applied)
    outcome_unknown   applied, but the node answers 504 outcome_unknown
    expire_session    the request's session is forgotten first (410 if it carries one)

plus whole-node states: ``down`` (every request ConnectFailed) and ``paused`` (SIGSTOP: every
request hangs). ``applied`` counts how often each (session, seq) was applied — must stay <= 1.
Cluster time is ``clock()`` (default time.time); pass a settable clock to expire things at will.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import msgpack

from raftstate.client import protocol as p
from raftstate.client._transport import Request, Response, decode_body, encode_body
from raftstate.client.errors import ConnectFailed, ResponseLost

INT64 = (-(2**63), 2**63 - 1)


@dataclass
class Record:
    value: Any
    version: int
    expires_at: float | None


@dataclass
class FakeLock:
    owner: str
    token: int
    ttl: float
    expires_at: float


@dataclass
class FakeSession:
    last_active: float
    replies: dict[int, Response] = field(default_factory=dict)
    acked: int = 0


@dataclass
class Fault:
    action: str
    match: Callable[[str, Request], bool]
    times: int = 1


class ApiError(Exception):
    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.response = Response(p.STATUS_OF[code], {"error": {"code": code, "message": message, **details}})


class FakeCluster:
    def __init__(
        self,
        n: int = 3,
        *,
        clock: Callable[[], float] = time.time,
        session_idle_timeout_s: float = 3600,
        max_session_results: int = 1000,
    ) -> None:
        self.ids = [f"n{i + 1}" for i in range(n)]
        self.address = {nid: f"10.0.0.{i + 1}:7001" for i, nid in enumerate(self.ids)}
        self.endpoints = [f"http://{a}" for a in self.address.values()]
        self.leader: str | None = self.ids[0]
        self.term = 1
        self.clock = clock
        self.session_idle_timeout_s = session_idle_timeout_s
        self.max_session_results = max_session_results
        self.down: set[str] = set()
        self.paused: set[str] = set()
        self.faults: list[Fault] = []
        #: every request as it arrived: (node id, request)
        self.log: list[tuple[str, Request]] = []
        #: (session, seq) -> times applied
        self.applied: Counter[tuple[int, int]] = Counter()
        self.index = 0
        self.kv: dict[str, Record] = {}
        self.locks: dict[str, FakeLock] = {}
        self.sessions: dict[int, FakeSession] = {}
        self._session_ids = itertools.count(1)
        #: called (node, request) before each request is handled (tests move the leader here)
        self.on_request: Callable[[str, Request], None] | None = None

    # ----------------------------------------------------------------- test controls

    def transport(self) -> FakeTransport:
        return FakeTransport(self)

    def elect(self, nid: str | None) -> None:
        self.leader = nid
        self.term += 1

    def fault(
        self,
        action: str,
        *,
        node: str | None = None,
        path: str | None = None,
        method: str | None = None,
        times: int = 1,
    ) -> None:
        def match(n: str, r: Request) -> bool:
            return (
                (node is None or n == node)
                and (path is None or path in unquote(r.path))
                and (method is None or r.method == method)
            )

        self.faults.append(Fault(action, match, times))

    def requests(self, path: str = "", node: str | None = None) -> list[tuple[str, Request]]:
        return [(n, r) for n, r in self.log if path in unquote(r.path) and (node is None or n == node)]

    def node_of(self, endpoint: str) -> str:
        for nid, a in self.address.items():
            if endpoint == f"http://{a}":
                return nid
        raise ConnectFailed(f"no such node {endpoint}", node=endpoint)

    # ----------------------------------------------------------------- serving one request

    async def serve(self, endpoint: str, request: Request, timeout_s: float) -> Response:
        nid = self.node_of(endpoint)
        # Through msgpack as on the wire (also catches bodies that cannot be encoded).
        body = None if request.body is None else msgpack.unpackb(encode_body(request.body, what="fake"))
        request = Request(request.method, request.path, body, dict(request.query))
        await asyncio.sleep(0)
        if nid in self.down:
            raise ConnectFailed(f"cannot connect to {endpoint}: refused", node=endpoint)
        self.log.append((nid, request))
        if self.on_request is not None:
            self.on_request(nid, request)
        if nid in self.paused:
            await self._hang(endpoint, timeout_s)
        action = self._take_fault(nid, request)
        if action == "refuse":
            self.log.pop()
            raise ConnectFailed(f"cannot connect to {endpoint}: refused (scripted)", node=endpoint)
        if action == "hang":
            await self._hang(endpoint, timeout_s)
        if action == "unavailable":
            return ApiError(p.UNAVAILABLE, f"node {nid}: no quorum (scripted)").response
        if action == "expire_session" and isinstance(body, dict) and isinstance(body.get("session"), int):
            self.sessions.pop(body["session"], None)
        resp = self.handle(nid, request)
        if action == "apply_then_hang":
            await self._hang(endpoint, timeout_s)
        if action == "apply_then_lose":
            raise ResponseLost(f"connection to {endpoint} reset (scripted)", node=endpoint)
        if action == "outcome_unknown":
            return ApiError(p.OUTCOME_UNKNOWN, f"node {nid}: timed out after proposing (scripted)").response
        # Through msgpack on the way back too.
        return Response(resp.status, decode_body(msgpack.packb(resp.body, use_bin_type=True), p.MSGPACK))

    async def _hang(self, endpoint: str, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)
        raise ResponseLost(f"no answer from {endpoint} within {timeout_s:.2f}s", node=endpoint)

    def _take_fault(self, nid: str, request: Request) -> str | None:
        for f in self.faults:
            if f.times > 0 and f.match(nid, request):
                f.times -= 1
                return f.action
        return None

    def handle(self, nid: str, r: Request) -> Response:
        try:
            return Response(200, self._route(nid, r))
        except ApiError as exc:
            return exc.response

    # ----------------------------------------------------------------- routing

    def _route(self, nid: str, r: Request) -> Any:
        path = r.path
        if path == "/status":
            role = "leader" if nid == self.leader else "follower"
            return {
                "id": nid,
                "role": role,
                "term": self.term,
                "leader": self.leader,
                "leader_address": self.address[self.leader] if self.leader else None,
            }
        stale = r.query.get("consistency") == "stale"
        if not (stale and r.method == "GET"):
            self._require_leader(nid)
        body = r.body if isinstance(r.body, dict) else {}
        if path == "/v1/sessions" and r.method == "POST":
            sid = next(self._session_ids)
            self.sessions[sid] = FakeSession(self.clock())
            self.index += 1
            return {"session": sid, "idle_timeout_s": self.session_idle_timeout_s}
        if path.startswith("/v1/sessions/") and path.endswith("/keepalive"):
            sid = int(path.split("/")[3])
            self._session(sid).last_active = self.clock()
            return {"ok": True}
        if path == "/v1/keys":
            return self._keys(r.query)
        if path.startswith("/v1/kv/"):
            rest = path[len("/v1/kv/") :]
            if r.method == "POST" and rest.endswith("/increment"):
                key = unquote(rest[: -len("/increment")])
                return self._write(body, lambda: self._increment(key, body))
            key = unquote(rest)
            if r.method == "GET":
                rec = self._live(key)
                if rec is None:
                    raise ApiError(p.NOT_FOUND, f"key {key!r} does not exist", key=key)
                return {"key": key, "value": rec.value, "version": rec.version, "expires_at": rec.expires_at}
            if r.method == "PUT":
                return self._write(body, lambda: self._put(key, body))
            if r.method == "DELETE":
                return self._write(body, lambda: self._delete(key, body))
        if path.startswith("/v1/locks/"):
            rest = path[len("/v1/locks/") :]
            for verb in ("acquire", "renew", "release"):
                if r.method == "POST" and rest.endswith("/" + verb):
                    name = unquote(rest[: -len(verb) - 1])
                    op = getattr(self, "_lock_" + verb)
                    return self._write(body, lambda op=op, name=name: op(name, body))
            if r.method == "GET":
                name = unquote(rest)
                lk = self._live_lock(name)
                if lk is None:
                    raise ApiError(p.NOT_FOUND, f"lock {name!r} is free", name=name)
                return {"name": name, "owner": lk.owner, "token": lk.token, "expires_at": lk.expires_at}
        raise ApiError(p.INVALID_REQUEST, f"no route {r.method} {path}")

    def _require_leader(self, nid: str) -> None:
        if nid != self.leader:
            addr = self.address[self.leader] if self.leader else None
            raise ApiError(
                p.NOT_LEADER, f"node {nid} is not the leader", leader=self.leader, leader_address=addr
            )

    # ----------------------------------------------------------------- the replicated state

    def _session(self, sid: int) -> FakeSession:
        s = self.sessions.get(sid)
        if s is None or self.clock() - s.last_active > self.session_idle_timeout_s:
            self.sessions.pop(sid, None)
            raise ApiError(p.SESSION_EXPIRED, f"session {sid} expired or unknown", session=sid)
        return s

    def _write(self, body: dict[str, Any], apply: Callable[[], Any]) -> Any:
        sid, seq = body.get("session"), body.get("seq")
        if sid is None:
            self.index += 1
            return apply()
        s = self._session(sid)
        s.last_active = self.clock()
        ack = body.get("ack", 0)
        if seq in s.replies:
            reply = s.replies[seq]
        elif seq <= s.acked:
            raise ApiError(p.INVALID_REQUEST, f"seq {seq} of session {sid} was already acknowledged")
        elif sum(1 for q in s.replies if q > max(ack, s.acked)) >= self.max_session_results:
            raise ApiError(
                p.INVALID_REQUEST,
                f"session {sid} already remembers too many unacknowledged outcomes; not applied",
                session=sid,
                limit=self.max_session_results,
            )
        else:
            self.index += 1
            self.applied[(sid, seq)] += 1
            try:
                reply = Response(200, apply())
            except ApiError as exc:
                reply = exc.response
            s.replies[seq] = reply
        if ack > s.acked:
            s.acked = ack
            for q in [q for q in s.replies if q <= ack]:
                del s.replies[q]
        if reply.status != 200:
            raise _Replay(reply)
        return reply.body

    def _live(self, key: str) -> Record | None:
        rec = self.kv.get(key)
        if rec is not None and rec.expires_at is not None and rec.expires_at <= self.clock():
            del self.kv[key]
            return None
        return rec

    def _live_lock(self, name: str) -> FakeLock | None:
        lk = self.locks.get(name)
        if lk is not None and lk.expires_at <= self.clock():
            del self.locks[name]
            return None
        return lk

    def _expiry(self, body: dict[str, Any]) -> float | None:
        if body.get("ttl") is not None:
            return self.clock() + float(body["ttl"])
        if body.get("expires_at") is not None:
            return float(body["expires_at"])
        return None

    def _fence(self, body: dict[str, Any]) -> None:
        f = body.get("fence")
        if f is None:
            return
        lk = self._live_lock(f["lock"])
        if lk is None or lk.token != f["token"]:
            raise ApiError(
                p.LOCK_LOST, f"lock {f['lock']!r} is not held with token {f['token']}", name=f["lock"]
            )

    def _check_version(self, key: str, rec: Record | None, body: dict[str, Any]) -> None:
        if "if_version" in body and (rec is None or rec.version != body["if_version"]):
            current = rec.version if rec else None
            raise ApiError(
                p.VERSION_MISMATCH,
                f"key {key!r} is at version {current}, not {body['if_version']}",
                key=key,
                version=current,
            )

    def _put(self, key: str, body: dict[str, Any]) -> Any:
        if "value" not in body:
            raise ApiError(p.INVALID_REQUEST, "value is required", key=key)
        self._fence(body)
        rec = self._live(key)
        if body.get("if_absent") and rec is not None:
            return {"created": False, "version": rec.version}
        self._check_version(key, rec, body)
        self.kv[key] = Record(body["value"], self.index, self._expiry(body))
        return {"version": self.index, "created": rec is None}

    def _delete(self, key: str, body: dict[str, Any]) -> Any:
        self._fence(body)
        rec = self._live(key)
        self._check_version(key, rec, body)
        return {"deleted": self.kv.pop(key, None) is not None}

    def _increment(self, key: str, body: dict[str, Any]) -> Any:
        self._fence(body)
        rec = self._live(key)
        cur = 0 if rec is None else rec.value
        if isinstance(cur, bool) or not isinstance(cur, int):
            raise ApiError(p.WRONG_TYPE, f"key {key!r} holds a {type(cur).__name__}, not an integer", key=key)
        new = cur + body.get("by", 1)
        if not INT64[0] <= new <= INT64[1]:
            raise ApiError(p.OVERFLOW, f"key {key!r}: {cur} + {body.get('by', 1)} overflows", key=key)
        exp = self._expiry(body) if body.get("ttl") is not None else (rec.expires_at if rec else None)
        self.kv[key] = Record(new, self.index, exp)
        return {"value": new, "version": self.index}

    def _keys(self, q: dict[str, str]) -> Any:
        prefix, after, limit = q.get("prefix", ""), q.get("after"), int(q.get("limit", "1000"))
        live = sorted(k for k in list(self.kv) if k.startswith(prefix) and self._live(k) is not None)
        if after is not None:
            live = [k for k in live if k > after]
        page = live[:limit]
        return {"keys": page, "next": page[-1] if len(live) > limit else None}

    def _lock_acquire(self, name: str, body: dict[str, Any]) -> Any:
        lk = self._live_lock(name)
        if lk is not None:
            raise ApiError(
                p.LOCK_HELD,
                f"lock {name!r} is held by {lk.owner} until {lk.expires_at}",
                name=name,
                owner=lk.owner,
                expires_at=lk.expires_at,
            )
        ttl = float(body["ttl"])
        self.locks[name] = FakeLock(body["owner"], self.index, ttl, self.clock() + ttl)
        return {"token": self.index, "expires_at": self.clock() + ttl}

    def _lock_renew(self, name: str, body: dict[str, Any]) -> Any:
        lk = self._live_lock(name)
        if lk is None or lk.token != body["token"]:
            raise ApiError(p.LOCK_LOST, f"lock {name!r} is not held with token {body['token']}", name=name)
        lk.ttl = float(body.get("ttl", lk.ttl))
        lk.expires_at = self.clock() + lk.ttl
        return {"expires_at": lk.expires_at}

    def _lock_release(self, name: str, body: dict[str, Any]) -> Any:
        lk = self._live_lock(name)
        if lk is None or lk.token != body["token"]:
            return {"released": False}
        del self.locks[name]
        return {"released": True}


class _Replay(ApiError):
    """A cached error reply of a session write, answered again."""

    def __init__(self, reply: Response) -> None:
        Exception.__init__(self, "replayed error")
        self.response = reply


class FakeTransport:
    """The Transport twin: hands each request to the fake cluster."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.closed = False

    async def send(self, endpoint: str, request: Request, timeout_s: float) -> Response:
        assert not self.closed, "send() after aclose()"
        assert timeout_s > 0, timeout_s
        return await self.cluster.serve(endpoint, request, timeout_s)

    async def aclose(self) -> None:
        self.closed = True


class ManualClock:
    """A settable wall clock for cluster time: ``clock.advance(30)``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
