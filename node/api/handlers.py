"""HTTP API of a node: the client operations (docs/api.md) and the operations endpoints.

Which endpoints exist — method, path, role, fields — is the endpoint table in client/protocol.py;
:func:`add_routes` registers a handler for each row, and nothing here writes a path. A client
operation (a row with ``stream``) is ONE function ``Api.op_<name>`` serving both HTTP and the
multiplexed stream (node/api/stream.py); adding one is a row plus that method.

A write is validated and size-checked (node/api/schema.py) before it is proposed; the state
machine's outcome comes back once the entry is applied on this node. Writes and linearizable reads
on a follower are answered ``not_leader`` (421) naming the leader's id and address. Reads compute
expiry at this node's read time (node/runtime/cluster_time.py) and never change state.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from raftstate.client import protocol as p
from raftstate.node.api import schema
from raftstate.node.api.admission import check_room
from raftstate.node.api.codec import error_response, read_body, respond
from raftstate.node.api.schema import ApiLimits
from raftstate.node.api.watch import WatchHub, WatchLimits, parse_query
from raftstate.node.driver import OutcomeUnknown, ProposalLost, RaftDriver, ReadAborted
from raftstate.node.errors import Refusal
from raftstate.node.metrics import NodeMetrics
from raftstate.node.runtime.cluster_time import ClusterTime
from raftstate.node.state.commands import Command, encode, to_seconds
from raftstate.node.state.machine import KVStateMachine
from raftstate.raft import LeadershipTransferInProgress, NotLeader, Role

log = logging.getLogger("raftstate.node")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: one client operation: (raw name, decoded body, query parameters) -> response body; raises Refusal
Operation = Callable[[str, Any, Mapping[str, str]], Awaitable[Any]]


class Api:
    def __init__(
        self,
        driver: RaftDriver,
        metrics: NodeMetrics,
        *,
        cluster_time: ClusterTime,
        limits: ApiLimits,
        max_request_bytes: int,
        request_timeout_s: float = 5.0,
        extra_status: Callable[[], dict[str, Any]] = dict,
        read_barrier: Callable[[float], Awaitable[None]] | None = None,
        watch: WatchLimits | None = None,
    ) -> None:
        """``read_barrier``: what makes a linearizable client read safe, ``(timeout_s) -> None``;
        by default ReadIndex through the driver. Only a test hook passes another (node/test_hooks.py).
        ``watch``: the watch settings (default: the defaults, with ``limits.max_key_bytes``)."""
        self.driver = driver
        self.metrics = metrics
        self.cluster_time = cluster_time
        self.limits = limits
        self.max_request_bytes = max_request_bytes
        self.timeout_s = request_timeout_s
        self.extra_status = extra_status
        self._linearizable_read = read_barrier or self._read_barrier
        #: (applied index, sha256) of the last state digest (GET /status?digest=1)
        self._digest_cache: tuple[int, str] | None = None
        #: parked watch polls and recent events (node/api/watch.py), fed by the driver
        self.watch_limits = watch or WatchLimits(max_key_bytes=limits.max_key_bytes)
        real = isinstance(driver, RaftDriver)  # tests/fake_cluster.py drives an Api without Raft
        self.watch_hub = WatchHub(
            driver, self.watch_limits, metrics, store_maintenance=driver.store_maintenance if real else None
        )
        if real:
            driver.batch_listeners.append(self.watch_hub.on_batch)

    def install(self, app: web.Application) -> None:
        """Route the operations endpoints, every client operation and the leader transfer."""
        app.middlewares.append(_unknown_routes_as_errors)
        app.cleanup_ctx.append(self._watch_lifetime)
        app.on_shutdown.append(self._watch_shutdown)
        handlers: dict[p.Endpoint, Handler] = {
            p.HEALTH: self.health,
            p.READY: self.ready,
            p.STATUS: self.status,
            p.METRICS: self.metrics_text,
            p.LEADER_TRANSFER: self._timed(p.LEADER_TRANSFER.name, self.leader_transfer),
        }
        for ep in p.ENDPOINTS:
            if ep.stream:
                handlers[ep] = self._timed(ep.name, self._http(self.operation(ep), ep.param))
        add_routes(app, handlers)

    async def _watch_lifetime(self, app: web.Application) -> AsyncIterator[None]:
        async with self.watch_hub.running():
            yield

    async def _watch_shutdown(self, app: web.Application) -> None:
        self.watch_hub.close()  # parked polls answer now: shutting down waits for none of them

    # ----------------------------------------------------------------- operations endpoints

    async def health(self, request: web.Request) -> web.Response:
        return respond(request, {"ok": True, "id": self.driver.id})

    async def ready(self, request: web.Request) -> web.Response:
        r = self.driver.raft
        ok = r.leader is not None and r.applied_index >= r.commit_index
        body = {"ready": ok, "id": self.driver.id, "leader": r.leader, "applied_index": r.applied_index}
        return respond(request, body, 200 if ok else 503)

    async def status(self, request: web.Request) -> web.Response:
        sm = self.driver.sm
        body = {
            **self.driver.status(),
            **self.extra_status(),
            "cluster_time_ms": self.cluster_time.now_ms(),
            "state": {"keys": len(sm.keys), "locks": len(sm.locks), "sessions": len(sm.sessions)},
        }
        if request.query.get("digest") == "1":
            # The whole state's canonical bytes, hashed: replicas at one applied index must agree.
            index, sha = await self._digest()
            body["state_digest"] = {"applied_index": index, "sha256": sha}
        return respond(request, body)

    async def _digest(self) -> tuple[int, str]:
        """The digest at the applied index of the call: computed in a worker thread over a pinned
        view of the store (millions of keys take seconds; the loop goes on), cached per index."""
        index = self.driver.sm.applied_index
        if self._digest_cache is not None and self._digest_cache[0] == index:
            return self._digest_cache
        pinned = self.driver.pinned_state()
        self._digest_cache = (pinned.applied_index, await asyncio.to_thread(_sha256_of, pinned))
        return self._digest_cache

    async def metrics_text(self, request: web.Request) -> web.Response:
        r = self.driver.raft
        self.metrics.set_indexes(committed=r.commit_index, applied=r.applied_index)
        self.metrics.state_keys.set(len(self.driver.sm.keys))
        if self.driver.state_file is not None:
            self.metrics.state_store_bytes.set(self.driver.state_file.size_bytes())
        resp = web.Response(body=self.metrics.render())
        resp.content_type = "text/plain"
        resp.charset = "utf-8"
        return resp

    async def leader_transfer(self, request: web.Request) -> web.Response:
        body = await read_body(request, self.max_request_bytes)
        target = body.get("to") if isinstance(body, dict) else None
        if target is not None and target not in self.driver.raft.membership.voters:
            raise Refusal(
                p.INVALID_REQUEST,
                f"{target!r} is not a voter",
                voters=sorted(self.driver.raft.membership.voters),
            )
        self._require_leader()
        leader = await self.driver.transfer_leadership(target, timeout_s=self._timeout(request.query))
        return respond(request, {"leader": leader})

    # ----------------------------------------------------------------- client operations
    #
    # ONE function per operation, shared by HTTP (the handlers below) and the multiplexed stream
    # (node/api/stream.py): ``(name, body, query) -> response body``, raising Refusal. ``name`` is
    # the raw key / lock name / session id (validated here), ``body`` the decoded request body
    # ({} when none), ``query`` the HTTP query parameters (?timeout=, ?consistency=, listing).

    async def op_get(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        key = schema.name_from_path(name, self.limits, "key")
        now = await self._read_time(query)
        rec = self.driver.sm.get(key, now)
        if rec is None:
            raise Refusal(p.NOT_FOUND, f"key {key!r} does not exist (or has expired)", key=key)
        return {
            "key": key,
            "value": rec.value,
            "version": rec.version,
            "expires_at": to_seconds(rec.expires_at_ms),
        }

    async def op_set(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        key = schema.name_from_path(name, self.limits, "key")
        return await self._write(query, lambda: schema.put(key, body, self.limits))

    async def op_delete(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        key = schema.name_from_path(name, self.limits, "key")
        return await self._write(query, lambda: schema.delete(key, body, self.limits))

    async def op_increment(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        key = schema.name_from_path(name, self.limits, "key")
        return await self._write(query, lambda: schema.increment(key, body, self.limits))

    async def op_list(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        q = schema.list_query(query, self.limits)
        now = await self._read_time(query)
        keys, nxt = self.driver.sm.list_keys(q.prefix, q.after, q.limit, now)
        return {"keys": keys, "next": nxt}

    async def op_lock_acquire(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        lock = schema.name_from_path(name, self.limits, "lock name")
        return await self._write(query, lambda: schema.acquire(lock, body, self.limits))

    async def op_lock_renew(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        lock = schema.name_from_path(name, self.limits, "lock name")
        return await self._write(query, lambda: schema.renew(lock, body, self.limits))

    async def op_lock_release(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        lock = schema.name_from_path(name, self.limits, "lock name")
        return await self._write(query, lambda: schema.release(lock, body, self.limits))

    async def op_lock_get(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        lock = schema.name_from_path(name, self.limits, "lock name")
        now = await self._read_time(query)
        lk = self.driver.sm.lock(lock, now)
        if lk is None:
            raise Refusal(
                p.NOT_FOUND, f"lock {lock!r} is free (never acquired, released, or expired)", name=lock
            )
        return {
            "name": lock,
            "owner": lk.owner,
            "token": lk.token,
            "expires_at": to_seconds(lk.expires_at_ms),
        }

    async def op_watch(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        """A long poll for the changes under a prefix (docs/watch.md). ``timeout`` is how long to
        wait for one, not a request deadline; the start (no ``from``) takes a ReadIndex on the
        leader within the node's request timeout."""
        q = parse_query(query, self.watch_limits)
        return await self.watch_hub.watch(q, lambda: self._linearizable_read(self.timeout_s))

    async def op_session_open(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        return await self._write(query, lambda: schema.open_session(body, self.limits))

    async def op_session_keepalive(self, name: str, body: Any, query: Mapping[str, str]) -> Any:
        return await self._write(query, lambda: schema.keepalive(name, body, self.limits))

    def operation(self, ep: p.Endpoint) -> Operation:
        """The function of client operation ``ep``: the method ``op_<name>``."""
        assert ep.stream, f"{ep.name} is not a client operation"
        fn: Operation | None = getattr(self, f"op_{ep.name}", None)
        if fn is None:  # a wiring mistake, found when the node builds its routes (before serving)
            raise TypeError(f"the endpoint table names client operation {ep.name!r}: define Api.op_{ep.name}")
        return fn

    def operations(self) -> dict[str, Operation]:
        """Operation name (also its metrics label and its stream op) -> its function, for every
        client operation of the endpoint table."""
        return {ep.name: self.operation(ep) for ep in p.ENDPOINTS if ep.stream}

    def _http(self, op: Operation, param: str | None = None) -> Handler:
        """The HTTP face of an operation: path parameter, body and query in, response out."""

        async def handler(request: web.Request) -> web.StreamResponse:
            name = request.match_info[param] if param else ""
            body = {} if request.method == "GET" else await read_body(request, self.max_request_bytes)
            return respond(request, await op(name, body, request.query))

        return handler

    # ----------------------------------------------------------------- plumbing

    def _timeout(self, query: Mapping[str, str]) -> float:
        return schema.timeout_s(query, self.timeout_s)

    async def _write(self, query: Mapping[str, str], build: Callable[[], Command]) -> Any:
        timeout = self._timeout(query)
        cmd = build()
        check_room(cmd, self.driver.sm, self.cluster_time.now_ms())  # before proposing, not only at apply
        data = encode(cmd)  # a Refusal if api/schema missed something: still never propose it
        return await self._propose(data, timeout)

    async def _read_time(self, query: Mapping[str, str]) -> int:
        """Wait until a linearizable read is safe (unless ?consistency=stale); return the read time."""
        stale = schema.stale_read(query)
        if not stale:
            await self._linearizable_read(self._timeout(query))
        return self.cluster_time.now_ms()

    def _not_leader(self) -> Refusal:
        leader = self.driver.raft.leader
        addr = self.driver.addresses.get(leader) if leader else None
        where = f"the leader is {leader} at {addr}" if leader else "no leader is known yet; retry shortly"
        return Refusal(
            p.NOT_LEADER,
            f"node {self.driver.id} is not the leader; {where}",
            leader=leader,
            leader_address=addr,
        )

    def _require_leader(self) -> None:
        if self.driver.raft.role != Role.LEADER:
            raise self._not_leader()

    async def _read_barrier(self, timeout_s: float) -> None:
        try:
            await self.driver.read_barrier(timeout_s)
        except NotLeader:
            raise self._not_leader() from None
        except ReadAborted as exc:
            raise Refusal(p.UNAVAILABLE, f"{exc}; retry on the new leader") from None
        except TimeoutError as exc:
            raise Refusal(p.TIMEOUT, f"node {self.driver.id}: {exc}") from None

    async def _propose(self, cmd: bytes, timeout_s: float) -> Any:
        self.metrics.proposals_total.inc()
        return await self._outcome(self.driver.propose(cmd, timeout_s))

    async def _outcome(
        self,
        proposal: Awaitable[Any],
        unknown_hint: str = "retry only with the same session and seq (exactly-once)",
    ) -> Any:
        """Await a proposal, turning the driver's and the core's refusals into API errors."""
        try:
            result = await proposal
        except NotLeader:
            raise self._not_leader() from None
        except LeadershipTransferInProgress as exc:
            raise Refusal(p.UNAVAILABLE, f"{exc}; nothing was applied: retry shortly") from None
        except ProposalLost as exc:
            raise Refusal(p.UNAVAILABLE, f"{exc}; it was not applied: retry") from None
        except OutcomeUnknown as exc:
            raise Refusal(p.OUTCOME_UNKNOWN, f"{exc}; {unknown_hint}") from None
        return result

    def _timed(self, op: str, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            t0 = time.perf_counter()
            status = "ok"
            try:
                return await handler(request)
            except Refusal as err:
                status = err.code
                return error_response(request, err)
            except Exception as exc:  # a bug: answer it, keep serving
                status = p.INTERNAL
                log.exception("%s %s failed", request.method, request.path)
                return error_response(request, Refusal(p.INTERNAL, f"internal error: {exc!r}"))
            finally:
                self.metrics.observe_request(op, status, time.perf_counter() - t0)

        return wrapped


def add_routes(app: web.Application, handlers: Mapping[p.Endpoint, Handler]) -> None:
    """Register each handler at its endpoint's method and path (client/protocol.py), in table order.
    A GET also answers HEAD, as aiohttp's ``add_get`` does."""
    unknown = [ep.name for ep in handlers if ep not in p.ENDPOINTS]
    assert not unknown, f"not rows of the endpoint table: {unknown}"
    for ep in p.ENDPOINTS:
        handler = handlers.get(ep)
        if handler is None:
            continue
        if ep.method == "GET":
            app.router.add_get(ep.path, handler)
        else:
            app.router.add_route(ep.method, ep.path, handler)


@web.middleware
async def _unknown_routes_as_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unknown path or method gets a structured error, not aiohttp's plain-text 404/405 (which a
    client could mistake for a missing key)."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        err = Refusal(
            p.INVALID_REQUEST,
            f"no endpoint {request.method} {request.path} ({exc.reason}); see docs/api.md",
        )
        return error_response(request, err)


def _sha256_of(sm: KVStateMachine) -> str:
    try:
        h = hashlib.sha256()
        for chunk in sm.snapshot_chunks():
            h.update(chunk)
        return h.hexdigest()
    finally:
        sm.tables.close()
