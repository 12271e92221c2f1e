"""HTTP API of a node: client endpoints under /v1/ and the operations endpoints.

    GET    /health                 process is up (always 200 while serving)
    GET    /ready                  200 once a leader is known and this node applied all it knows committed
    GET    /status                 JSON: role, term, leader, indexes, members, peers
    GET    /metrics                Prometheus text format
    GET    /v1/kv/{key}            linearizable read (ReadIndex on the leader); ?consistency=stale: local
    PUT    /v1/kv/{key}            body {"value": ...} → {"version": N}
    DELETE /v1/kv/{key}            → {"deleted": bool}
    POST   /v1/leader/transfer     body {"to": "n2"} (optional) → {"leader": ...}

Writes and linearizable reads on a follower are answered ``not_leader`` (421) naming the leader's id
and address; the client library follows it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from raftstate.client import protocol as p
from raftstate.node.driver import OutcomeUnknown, ProposalLost, RaftDriver, ReadAborted
from raftstate.node.http_codec import ApiError, error_response, read_body, respond
from raftstate.node.metrics import NodeMetrics
from raftstate.node.state_machine import CommandError, encode_command
from raftstate.raft import LeadershipTransferInProgress, NotLeader, Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Api:
    def __init__(
        self,
        driver: RaftDriver,
        metrics: NodeMetrics,
        *,
        max_key_bytes: int,
        max_value_bytes: int,
        max_request_bytes: int,
        request_timeout_s: float = 5.0,
        extra_status: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.driver = driver
        self.metrics = metrics
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self.max_request_bytes = max_request_bytes
        self.timeout_s = request_timeout_s
        self.extra_status = extra_status

    def install(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/health", self.health)
        r.add_get("/ready", self.ready)
        r.add_get("/status", self.status)
        r.add_get("/metrics", self.metrics_text)
        r.add_get("/v1/kv/{key:.+}", self._timed("get", self.kv_get))
        r.add_put("/v1/kv/{key:.+}", self._timed("set", self.kv_set))
        r.add_delete("/v1/kv/{key:.+}", self._timed("delete", self.kv_delete))
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
        return respond(request, {**self.driver.status(), **self.extra_status()})

    async def metrics_text(self, request: web.Request) -> web.Response:
        r = self.driver.raft
        self.metrics.set_indexes(committed=r.commit_index, applied=r.applied_index)
        resp = web.Response(body=self.metrics.render())
        resp.content_type = "text/plain"
        resp.charset = "utf-8"
        return resp

    # ----------------------------------------------------------------- key-value

    async def kv_get(self, request: web.Request) -> web.Response:
        key = self._key(request)
        if request.query.get("consistency", "linearizable") != "stale":
            await self._read_barrier()
        rec = self.driver.sm.get(key)
        if rec is None:
            raise ApiError(p.NOT_FOUND, f"key {key!r} does not exist", key=key)
        return respond(request, {"key": key, "value": rec.value, "version": rec.version})

    async def kv_set(self, request: web.Request) -> web.Response:
        key = self._key(request)
        body = await read_body(request, self.max_request_bytes)
        if not isinstance(body, dict) or "value" not in body:
            raise ApiError(p.INVALID_REQUEST, f'PUT /v1/kv/{key} needs a body {{"value": ...}}', key=key)
        cmd = encode_command("set", key=key, value=body["value"])
        if len(cmd) > self.max_value_bytes + self.max_key_bytes + 64:
            raise ApiError(
                p.VALUE_TOO_LARGE,
                f"value for key {key!r} is {len(cmd)} bytes encoded; the limit is {self.max_value_bytes} "
                "bytes (settings.max_value_bytes)",
                key=key,
                limit=self.max_value_bytes,
            )
        return respond(request, await self._propose(cmd))

    async def kv_delete(self, request: web.Request) -> web.Response:
        key = self._key(request)
        return respond(request, await self._propose(encode_command("delete", key=key)))

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
        leader = await self.driver.transfer_leadership(target, timeout_s=self.timeout_s)
        return respond(request, {"leader": leader})

    # ----------------------------------------------------------------- plumbing

    def _key(self, request: web.Request) -> str:
        key = request.match_info["key"]
        n = len(key.encode("utf-8", "surrogatepass"))
        if n > self.max_key_bytes:
            raise ApiError(
                p.KEY_TOO_LARGE,
                f"key of {n} bytes exceeds the limit of {self.max_key_bytes} bytes (settings.max_key_bytes)",
                limit=self.max_key_bytes,
            )
        return key

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

    async def _read_barrier(self) -> None:
        try:
            await self.driver.read_barrier(self.timeout_s)
        except NotLeader:
            raise self._not_leader() from None
        except ReadAborted as exc:
            raise ApiError(p.UNAVAILABLE, f"{exc}; retry on the new leader") from None
        except TimeoutError as exc:
            raise ApiError(p.TIMEOUT, f"node {self.driver.id}: {exc}") from None

    async def _propose(self, cmd: bytes) -> Any:
        self.metrics.proposals_total.inc()
        try:
            result = await self.driver.propose(cmd, self.timeout_s)
        except NotLeader:
            raise self._not_leader() from None
        except LeadershipTransferInProgress as exc:
            raise ApiError(p.UNAVAILABLE, str(exc)) from None
        except ProposalLost as exc:
            raise ApiError(p.UNAVAILABLE, f"{exc}; it was not applied: retry") from None
        except OutcomeUnknown as exc:
            raise ApiError(p.OUTCOME_UNKNOWN, str(exc)) from None
        except CommandError as exc:
            raise ApiError(exc.code, exc.message) from None
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
            finally:
                self.metrics.observe_request(op, status, time.perf_counter() - t0)

        return wrapped
