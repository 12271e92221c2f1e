"""HTTP API of a node: the v1 client endpoints (docs/api.md) and the operations endpoints.

    GET    /health, /ready, /status[?digest=1], /metrics
    GET    /v1/kv/{key}                      [?consistency=stale]
    PUT    /v1/kv/{key}                      {"value", "ttl"?, "expires_at"?, "if_absent"?, "if_version"?}
    DELETE /v1/kv/{key}                      {"if_version"?, ...}
    POST   /v1/kv/{key}/increment            {"by"?, "ttl"?, "expires_at"?, ...}
    GET    /v1/keys?prefix=&after=&limit=    [&consistency=stale]
    POST   /v1/locks/{name}/acquire|renew|release
    GET    /v1/locks/{name}                  [?consistency=stale]
    POST   /v1/sessions, /v1/sessions/{id}/keepalive
    POST   /v1/leader/transfer               {"to"?}

Every /v1/ endpoint also takes ``?timeout=S`` (seconds, at most the node's request timeout).

A write is validated and size-checked (node/api_schema.py) before it is proposed; the state
machine's outcome comes back once the entry is applied on this node. Writes and linearizable reads
on a follower are answered ``not_leader`` (421) naming the leader's id and address. Reads compute
expiry at this node's read time (node/cluster_time.py) and never change state.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from raftstate.client import protocol as p
from raftstate.node import api_schema as schema
from raftstate.node.admission import check_room
from raftstate.node.api_schema import ApiLimits
from raftstate.node.cluster_time import ClusterTime
from raftstate.node.commands import Command, CommandError, encode, to_seconds
from raftstate.node.driver import OutcomeUnknown, ProposalLost, RaftDriver, ReadAborted
from raftstate.node.http_codec import ApiError, error_response, read_body, respond
from raftstate.node.metrics import NodeMetrics
from raftstate.raft import LeadershipTransferInProgress, NotLeader, Role

log = logging.getLogger("raftstate.node")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        stale_reads_bug: bool = False,
    ) -> None:
        self.driver = driver
        self.metrics = metrics
        self.cluster_time = cluster_time
        self.limits = limits
        self.max_request_bytes = max_request_bytes
        self.timeout_s = request_timeout_s
        self.extra_status = extra_status
        self.stale_reads_bug = stale_reads_bug  # TEST-ONLY (node/inject_bug.py): skip ReadIndex

    def install(self, app: web.Application) -> None:
        app.middlewares.append(_unknown_routes_as_errors)
        r = app.router
        r.add_get("/health", self.health)
        r.add_get("/ready", self.ready)
        r.add_get("/status", self.status)
        r.add_get("/metrics", self.metrics_text)
        # {key} is one path segment (a '/' inside it travels as %2F); {key:.+} also takes raw slashes.
        r.add_post("/v1/kv/{key}/increment", self._timed("increment", self.kv_increment))
        r.add_get("/v1/kv/{key:.+}", self._timed("get", self.kv_get))
        r.add_put("/v1/kv/{key:.+}", self._timed("set", self.kv_set))
        r.add_delete("/v1/kv/{key:.+}", self._timed("delete", self.kv_delete))
        r.add_get("/v1/keys", self._timed("list", self.keys_list))
        r.add_post("/v1/locks/{name}/acquire", self._timed("lock_acquire", self.lock_acquire))
        r.add_post("/v1/locks/{name}/renew", self._timed("lock_renew", self.lock_renew))
        r.add_post("/v1/locks/{name}/release", self._timed("lock_release", self.lock_release))
        r.add_get("/v1/locks/{name:.+}", self._timed("lock_get", self.lock_get))
        r.add_post("/v1/sessions", self._timed("session_open", self.session_open))
        r.add_post("/v1/sessions/{id}/keepalive", self._timed("session_keepalive", self.session_keepalive))
        r.add_post("/v1/leader/transfer", self._timed("transfer", self.leader_transfer))

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
            body["state_digest"] = {
                "applied_index": sm.applied_index,
                "sha256": hashlib.sha256(sm.snapshot()).hexdigest(),
            }
        return respond(request, body)

    async def metrics_text(self, request: web.Request) -> web.Response:
        r = self.driver.raft
        self.metrics.set_indexes(committed=r.commit_index, applied=r.applied_index)
        resp = web.Response(body=self.metrics.render())
        resp.content_type = "text/plain"
        resp.charset = "utf-8"
        return resp

    async def leader_transfer(self, request: web.Request) -> web.Response:
        body = await read_body(request, self.max_request_bytes)
        target = body.get("to") if isinstance(body, dict) else None
        if target is not None and target not in self.driver.raft.membership.voters:
            raise ApiError(
                p.INVALID_REQUEST,
                f"{target!r} is not a voter",
                voters=sorted(self.driver.raft.membership.voters),
            )
        self._require_leader()
        leader = await self.driver.transfer_leadership(target, timeout_s=self._timeout(request))
        return respond(request, {"leader": leader})

    # ----------------------------------------------------------------- keys

    async def kv_get(self, request: web.Request) -> web.Response:
        key = self._name(request, "key")
        now = await self._read_time(request)
        rec = self.driver.sm.get(key, now)
        if rec is None:
            raise ApiError(p.NOT_FOUND, f"key {key!r} does not exist (or has expired)", key=key)
        body = {
            "key": key,
            "value": rec.value,
            "version": rec.version,
            "expires_at": to_seconds(rec.expires_at_ms),
        }
        return respond(request, body)

    async def kv_set(self, request: web.Request) -> web.Response:
        key = self._name(request, "key")
        return await self._write(request, lambda body: schema.put(key, body, self.limits))

    async def kv_delete(self, request: web.Request) -> web.Response:
        key = self._name(request, "key")
        return await self._write(request, lambda body: schema.delete(key, body, self.limits))

    async def kv_increment(self, request: web.Request) -> web.Response:
        key = self._name(request, "key")
        return await self._write(request, lambda body: schema.increment(key, body, self.limits))

    async def keys_list(self, request: web.Request) -> web.Response:
        q = schema.list_query(request.query, self.limits)
        now = await self._read_time(request)
        keys, nxt = self.driver.sm.list_keys(q.prefix, q.after, q.limit, now)
        return respond(request, {"keys": keys, "next": nxt})

    # ----------------------------------------------------------------- locks

    async def lock_acquire(self, request: web.Request) -> web.Response:
        name = self._name(request, "lock name")
        return await self._write(request, lambda body: schema.acquire(name, body, self.limits))

    async def lock_renew(self, request: web.Request) -> web.Response:
        name = self._name(request, "lock name")
        return await self._write(request, lambda body: schema.renew(name, body, self.limits))

    async def lock_release(self, request: web.Request) -> web.Response:
        name = self._name(request, "lock name")
        return await self._write(request, lambda body: schema.release(name, body, self.limits))

    async def lock_get(self, request: web.Request) -> web.Response:
        name = self._name(request, "lock name")
        now = await self._read_time(request)
        lk = self.driver.sm.lock(name, now)
        if lk is None:
            raise ApiError(
                p.NOT_FOUND, f"lock {name!r} is free (never acquired, released, or expired)", name=name
            )
        body = {
            "name": name,
            "owner": lk.owner,
            "token": lk.token,
            "expires_at": to_seconds(lk.expires_at_ms),
        }
        return respond(request, body)

    # ----------------------------------------------------------------- sessions

    async def session_open(self, request: web.Request) -> web.Response:
        return await self._write(request, lambda body: schema.open_session(body, self.limits))

    async def session_keepalive(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        return await self._write(request, lambda body: schema.keepalive(sid, body, self.limits))

    # ----------------------------------------------------------------- plumbing

    def _name(self, request: web.Request, what: str) -> str:
        param = "key" if what == "key" else "name"
        return schema.name_from_path(request.match_info[param], self.limits, what)

    def _timeout(self, request: web.Request) -> float:
        return schema.timeout_s(request.query, self.timeout_s)

    async def _write(self, request: web.Request, build: Callable[[Any], Command]) -> web.Response:
        timeout = self._timeout(request)
        body = await read_body(request, self.max_request_bytes)
        cmd = build(body)
        check_room(cmd, self.driver.sm, self.cluster_time.now_ms())  # before proposing, not only at apply
        try:
            data = encode(cmd)
        except CommandError as exc:  # api_schema missed something: still never propose it
            raise ApiError(exc.code, exc.message, **exc.details) from None
        return respond(request, await self._propose(data, timeout))

    async def _read_time(self, request: web.Request) -> int:
        """Wait until a linearizable read is safe (unless ?consistency=stale); return the read time."""
        stale = schema.stale_read(request.query)
        if not stale and not self.stale_reads_bug:  # the injected bug: any node answers, no ReadIndex
            await self._read_barrier(self._timeout(request))
        return self.cluster_time.now_ms()

    def _not_leader(self) -> ApiError:
        leader = self.driver.raft.leader
        addr = self.driver.addresses.get(leader) if leader else None
        where = f"the leader is {leader} at {addr}" if leader else "no leader is known yet; retry shortly"
        return ApiError(
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
            raise ApiError(p.UNAVAILABLE, f"{exc}; retry on the new leader") from None
        except TimeoutError as exc:
            raise ApiError(p.TIMEOUT, f"node {self.driver.id}: {exc}") from None

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
            raise ApiError(p.UNAVAILABLE, f"{exc}; nothing was applied: retry shortly") from None
        except ProposalLost as exc:
            raise ApiError(p.UNAVAILABLE, f"{exc}; it was not applied: retry") from None
        except OutcomeUnknown as exc:
            raise ApiError(p.OUTCOME_UNKNOWN, f"{exc}; {unknown_hint}") from None
        except CommandError as exc:
            raise ApiError(exc.code, exc.message, **exc.details) from None
        return result

    def _timed(self, op: str, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            t0 = time.perf_counter()
            status = "ok"
            try:
                return await handler(request)
            except ApiError as err:
                status = err.code
                return error_response(request, err)
            except Exception as exc:  # a bug: answer it, keep serving
                status = p.INTERNAL
                log.exception("%s %s failed", request.method, request.path)
                return error_response(request, ApiError(p.INTERNAL, f"internal error: {exc!r}"))
            finally:
                self.metrics.observe_request(op, status, time.perf_counter() - t0)

        return wrapped


@web.middleware
async def _unknown_routes_as_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unknown path or method gets a structured error, not aiohttp's plain-text 404/405 (which a
    client could mistake for a missing key)."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        err = ApiError(
            p.INVALID_REQUEST,
            f"no endpoint {request.method} {request.path} ({exc.reason}); see docs/api.md",
        )
        return error_response(request, err)
