"""An in-memory twin of a raftstate cluster for client unit tests, backed by the REAL node code.

``FakeCluster`` holds ONE replicated state — the real state machine (node/state/machine.py:
versions, expiry, fencing tokens, exactly-once sessions) — and a few nodes of which one (or none)
leads. Each node is the real request handling (``Api`` of node/api/handlers.py: the request schema,
size limits, the refusals and their error bodies) over a fake in-process driver instead of Raft:
on the leader a write is applied at once, at the next log index, stamped with cluster time
``clock()``; on a follower writes and linearizable reads are answered ``not_leader`` naming the
leader, stale reads are answered from the one state. So the fake cannot drift from the rules the
nodes apply: it has none of its own.

``FakeCluster.transport()`` is a :class:`raftstate.client.Transport`. A request is routed by the
operation it carries (``Request.op``, a row of the endpoint table in client/protocol.py) to that
operation's function ``Api.op_<name>``, as /v1/stream does; ``/status`` answers who leads. Bodies go
through msgpack both ways, as on the wire.

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
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import msgpack

from raftstate.client import protocol as p
from raftstate.client._transport import Request, Response, decode_body, encode_body
from raftstate.client.errors import ConnectFailed, ResponseLost
from raftstate.node.api.codec import error_body
from raftstate.node.api.handlers import Api
from raftstate.node.api.schema import ApiLimits
from raftstate.node.errors import Refusal
from raftstate.node.metrics import NodeMetrics
from raftstate.node.state.commands import Command, Operation, decode, encode
from raftstate.node.state.keys import Record
from raftstate.node.state.locks import Lock
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.state.sessions import Outcome, Session
from raftstate.raft import NotLeader, Role

__all__ = ["FakeCluster", "FakeHistory", "FakeTransport", "ManualClock"]


@dataclass
class Fault:
    action: str
    match: Callable[[str, Request], bool]
    times: int = 1


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
        self.down: set[str] = set()
        self.paused: set[str] = set()
        self.faults: list[Fault] = []
        #: every request as it arrived: (node id, request)
        self.log: list[tuple[str, Request]] = []
        #: (session, seq) -> times applied
        self.applied: Counter[tuple[int, int]] = Counter()
        #: the one replicated state
        self.sm = KVStateMachine()
        limits = ApiLimits(
            session_idle_timeout_ms=round(session_idle_timeout_s * 1000),
            max_session_results=max_session_results,
        )
        self.nodes = {
            nid: Api(
                _FakeDriver(self, nid),  # type: ignore[arg-type]
                NodeMetrics(nid, "fake"),
                cluster_time=_FakeClusterTime(self),  # type: ignore[arg-type]
                limits=limits,
                max_request_bytes=1 << 20,
            )
            for nid in self.ids
        }
        # One replicated state, so one watch hub (node/api/watch.py) for every node: it takes each
        # applied entry's events from the state's history and wakes the polls they concern.
        hub = self.nodes[self.ids[0]].watch_hub
        for api in self.nodes.values():
            api.watch_hub = hub
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

    def commit(self, op: Operation) -> Outcome:
        """Apply ``op`` as if another client had written it through the leader (its outcome)."""
        return self._apply(encode(Command(op)))

    # ----------------------------------------------------------------- the replicated state

    @property
    def kv(self) -> Mapping[str, Record]:
        """The keys live now (cluster time), as the state machine holds them."""
        return _LiveKeys(self)

    @property
    def locks(self) -> dict[str, Lock]:
        """The state machine's lock table (held or expired but not yet swept)."""
        return self.sm.locks.locks

    @property
    def sessions(self) -> dict[int, Session]:
        """The state machine's sessions (clear it to make the cluster forget them)."""
        return self.sm.sessions.sessions

    @property
    def index(self) -> int:
        return self.sm.applied_index

    def now_ms(self) -> int:
        """Cluster time: the clock, never behind the last applied entry."""
        return max(round(self.clock() * 1000), self.sm.time_ms)

    def _apply(self, data: bytes) -> Outcome:
        """One entry at the next index: what a leader's propose leads to once it commits."""
        ref = decode(data).session
        fresh = ref is not None and not self._remembers(ref.id, ref.seq)
        outcome = self.sm.apply(self.sm.applied_index + 1, self.now_ms(), data)
        self.nodes[self.ids[0]].watch_hub.on_batch()
        if ref is not None and fresh and self._remembers(ref.id, ref.seq):
            self.applied[(ref.id, ref.seq)] += 1  # executed now, not a remembered outcome
        return outcome

    def _remembers(self, sid: int, seq: int) -> bool:
        s = self.sm.sessions.sessions.get(sid)
        return s is not None and seq in s.results

    # ----------------------------------------------------------------- serving one request

    async def serve(self, endpoint: str, request: Request, timeout_s: float) -> Response:
        nid = self.node_of(endpoint)
        # Through msgpack as on the wire (also catches bodies that cannot be encoded).
        body = None if request.body is None else msgpack.unpackb(encode_body(request.body, what="fake"))
        request = dataclasses.replace(request, body=body, query=dict(request.query))
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
            return _error(Refusal(p.UNAVAILABLE, f"node {nid}: no quorum (scripted)"))
        if action == "expire_session" and isinstance(body, dict) and isinstance(body.get("session"), int):
            self.sessions.pop(body["session"], None)
        resp = await self.handle(nid, request)
        if action == "apply_then_hang":
            await self._hang(endpoint, timeout_s)
        if action == "apply_then_lose":
            raise ResponseLost(f"connection to {endpoint} reset (scripted)", node=endpoint)
        if action == "outcome_unknown":
            return _error(Refusal(p.OUTCOME_UNKNOWN, f"node {nid}: timed out after proposing (scripted)"))
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

    async def handle(self, nid: str, r: Request) -> Response:
        """Node ``nid``'s answer: routed by the request's row of the endpoint table."""
        try:
            if r.op not in p.ENDPOINTS:
                raise Refusal(p.UNKNOWN_ENDPOINT, f"no endpoint {r.describe()}; see docs/api.md")
            if r.op == p.STATUS:
                return Response(200, self.nodes[nid].driver.status())
            if not r.op.stream:
                raise Refusal(p.INVALID_REQUEST, f"the fake cluster does not serve {r.describe()}")
            body = {} if r.method == "GET" or r.body is None else r.body  # as the HTTP handler reads it
            return Response(200, await self.nodes[nid].operation(r.op)(r.name, body, r.query))
        except Refusal as err:
            return _error(err)


def _error(err: Refusal) -> Response:
    return Response(err.status, error_body(err))


class _LiveKeys(Mapping[str, Record]):
    def __init__(self, cluster: FakeCluster) -> None:
        self._keys = cluster.sm.keys
        self._now = cluster.now_ms()

    def __getitem__(self, key: str) -> Record:
        rec = self._keys.live(key, self._now)
        if rec is None:
            raise KeyError(key)
        return rec

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._keys.names() if self._keys.live(k, self._now) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _FakeRaft:
    """What ``Api`` reads of the Raft core: who leads."""

    def __init__(self, cluster: FakeCluster, nid: str) -> None:
        self._cluster = cluster
        self._id = nid

    @property
    def leader(self) -> str | None:
        return self._cluster.leader

    @property
    def role(self) -> Role:
        return Role.LEADER if self._cluster.leader == self._id else Role.FOLLOWER

    @property
    def term(self) -> int:
        return self._cluster.term


class _FakeDriver:
    """What ``Api`` uses of a RaftDriver, without Raft: a write proposed on the leader is applied
    at once; a follower raises NotLeader (nothing appended) for writes and ReadIndex reads."""

    def __init__(self, cluster: FakeCluster, nid: str) -> None:
        self.id = nid
        self.cluster = cluster
        self.raft = _FakeRaft(cluster, nid)
        self.addresses = cluster.address

    @property
    def sm(self) -> KVStateMachine:
        return self.cluster.sm

    def _require_leader(self) -> None:
        if self.cluster.leader != self.id:
            raise NotLeader(self.id, self.cluster.leader)

    async def propose(self, command: bytes, timeout_s: float) -> Any:
        self._require_leader()
        outcome = self.cluster._apply(command)
        if isinstance(outcome, Refusal):
            raise Refusal(outcome.code, outcome.message, **outcome.fields)  # a copy, as the driver
        return outcome

    async def read_barrier(self, timeout_s: float) -> None:
        self._require_leader()

    def status(self) -> dict[str, Any]:
        c = self.cluster
        return {
            "id": self.id,
            "role": self.raft.role.value,
            "term": c.term,
            "leader": c.leader,
            "leader_address": c.address[c.leader] if c.leader else None,
            "applied_index": c.sm.applied_index,
        }


class _FakeClusterTime:
    def __init__(self, cluster: FakeCluster) -> None:
        self._cluster = cluster

    def now_ms(self) -> int:
        return self._cluster.now_ms()


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


# =========================================================================== a history served as /v1/watch


class FakeHistory:
    """A Transport serving ``/v1/watch`` (and the reads a re-list makes) from a scripted history, for
    the client's watch loop (docs/watch.md): a few nodes, each applied up to its own revision
    (``lag``), a kept history from ``oldest``, nodes that are ``down`` or whose next answers are
    lost, and a log of every poll. Writes are made by the test (``put``/``delete``/``other``)."""

    def __init__(self, nodes: tuple[str, ...] = ("n1", "n2", "n3")) -> None:
        self.endpoints = [f"http://{n}:7001" for n in nodes]
        self.events: list[dict[str, Any]] = []
        self.revision = 0  #: the last committed revision
        self.oldest = 1  #: the oldest revision kept (older: compacted)
        self.kv: dict[str, tuple[Any, int]] = {}
        self.applied: dict[str, int] = {}  #: endpoint -> its applied revision when it lags behind
        self.down: set[str] = set()
        self.lose: dict[str, int] = {}  #: endpoint -> how many answers to lose (ResponseLost)
        self.polls: list[tuple[str, int | None]] = []  #: (endpoint, from) of every watch request
        self._changed = asyncio.Event()

    # ----------------------------------------------------------------- making history

    def _commit(self, evs: list[dict[str, Any]]) -> int:
        self.revision += 1
        for e in evs:
            self.events.append({**e, "revision": self.revision})
        self._changed.set()
        self._changed = asyncio.Event()
        return self.revision

    def put(self, key: str, value: Any) -> int:
        rev = self._commit([{"type": "put", "key": key, "value": value, "version": self.revision + 1}])
        self.kv[key] = (value, rev)
        return rev

    def delete(self, key: str) -> int:
        self.kv.pop(key, None)
        return self._commit([{"type": "delete", "key": key}])

    def event(self, type_: str, key: str, **fields: Any) -> int:
        """Any other event (lock_acquire, lock_release, lock_expire, expire) at a new revision."""
        return self._commit([{"type": type_, "key": key, **fields}])

    def other(self) -> int:
        """A change outside every prefix the tests watch (the revision moves on)."""
        return self._commit([{"type": "put", "key": "~other", "value": 0}])

    def compact(self, oldest: int) -> None:
        self.oldest = oldest

    def at(self, endpoint: str) -> int:
        return min(self.applied.get(endpoint, self.revision), self.revision)

    # ----------------------------------------------------------------- Transport

    async def send(self, endpoint: str, request: Request, timeout_s: float) -> Response:
        await asyncio.sleep(0)
        if endpoint in self.down:
            raise ConnectFailed(f"cannot connect to {endpoint}: refused", node=endpoint)
        q = dict(request.query)
        if request.op == p.WATCH:
            self.polls.append((endpoint, int(q["from"]) if "from" in q else None))
            resp = await self._watch(endpoint, q, timeout_s)
        elif request.op == p.KEYS_LIST:
            keys = sorted(k for k in self.kv if k.startswith(q.get("prefix", "")) and k > q.get("after", ""))
            page = keys[: int(q.get("limit", "1000"))]
            resp = Response(200, {"keys": page, "next": page[-1] if len(page) < len(keys) else None})
        elif request.op == p.KV_GET:
            if request.name not in self.kv:
                resp = Response(404, {"error": {"code": p.NOT_FOUND, "message": "no such key"}})
            else:
                v, ver = self.kv[request.name]
                resp = Response(200, {"value": v, "version": ver, "expires_at": None})
        else:
            resp = Response(404, f"FakeHistory does not serve {request.describe()}")
        if self.lose.get(endpoint, 0) > 0:
            self.lose[endpoint] -= 1
            raise ResponseLost(f"connection to {endpoint} reset (scripted)", node=endpoint)
        return resp

    async def _watch(self, endpoint: str, q: dict[str, str], timeout_s: float) -> Response:
        prefix = q.get("prefix", "")
        if "from" not in q:
            return Response(200, {"events": [], "revision": self.at(endpoint)})
        frm = int(q["from"])
        if frm < self.oldest:
            err = {"code": p.COMPACTED, "message": f"revision {frm} is compacted", "oldest": self.oldest}
            return Response(410, {"error": {**err, "revision": self.revision}})
        limit = int(q.get("limit", "1000"))
        wait_s = float(q.get("timeout", "10"))
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_s
        while True:
            upto = self.at(endpoint)
            evs = [e for e in self.events if frm <= e["revision"] <= upto and e["key"].startswith(prefix)]
            if evs or loop.time() >= until:
                break
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), min(until - loop.time(), timeout_s))
            except TimeoutError:
                if timeout_s < wait_s:
                    raise ResponseLost(
                        f"no answer from {endpoint} within {timeout_s:.2f}s", node=endpoint
                    ) from None
        if len(evs) > limit:
            cut = evs[limit - 1]["revision"]
            evs = [e for e in evs if e["revision"] <= cut]
            upto = cut
        return Response(200, {"events": [dict(e) for e in evs], "revision": upto})

    async def aclose(self) -> None:
        pass
