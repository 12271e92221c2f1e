"""The admin route group: membership changes and backups (rows ``MEMBERS_LIST`` … ``SNAPSHOT_SAVE``
of the endpoint table in client/protocol.py, which also says who may call them).

    GET    /v1/members                  this node's view: cluster id, leader, members with address,
                                        role, match and lag (on the leader), settings (for --join)
    POST   /v1/members                  {"id", "address"}: add as a LEARNER (promote once caught up)
    POST   /v1/members/{id}/promote     learner -> voter (refused while it lags or without quorum)
    DELETE /v1/members/{id}             remove a voter or learner; removing the leader first hands
                                        leadership to another voter and answers 421 naming it
    GET    /v1/snapshot                 a backup file (node/ops/backup_file.py) of the state at a
                                        linearizable point (ReadIndex barrier), streamed
    POST   /v1/locks/{name}/force-release
                                        free a lock whoever holds it (a worker that died holding a
                                        long lease); one AUDIT line in the leader's log names the
                                        admin token, the address and the holder it was taken from

Changes go to the leader (421 ``not_leader`` elsewhere) and return once the config entry is
committed and applied on the leader. Refusals (node/peers/membership.py) change nothing; their codes
are in client/protocol.py. ``raftstate member ...`` (node/ops/cli.py) drives these endpoints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from raftstate.client import protocol as p
from raftstate.node.api import schema
from raftstate.node.api.codec import read_body, respond
from raftstate.node.api.handlers import Api, Handler, add_routes
from raftstate.node.config import _ID_RE, _ID_RULE, Settings, parse_address
from raftstate.node.driver import RaftDriver
from raftstate.node.errors import Refusal
from raftstate.node.ops.backup_file import BackupHeader, stream_backup
from raftstate.node.ops.backup_state import SnapshotMovedOn, backup_payload, pinned_payload
from raftstate.node.peers import membership as rules
from raftstate.node.peers.peer_memory import HeardFrom
from raftstate.node.security.auth import CALLER
from raftstate.node.state.commands import Command, ForceReleaseLock, encode
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.storage.store import Storage
from raftstate.raft import (
    ConfChange,
    ConfChangeInProgress,
    ConfChangeOp,
    Entry,
    EntryKind,
    Role,
)

__all__ = ["AdminApi"]

log = logging.getLogger("raftstate.node")


class AdminApi:
    def __init__(self, api: Api, *, cluster_id: str, settings: Settings, data_dir: Path) -> None:
        self.api = api  # the client API's leader checks, timeouts and error handling, reused
        self.driver: RaftDriver = api.driver
        self.heard_from = HeardFrom(data_dir, lambda: self.driver.last_contact_ms.keys())
        self.cluster_id = cluster_id
        self.settings = settings
        #: a learner within this many entries of the leader's log may be promoted
        self.max_promote_lag = settings.max_entries_per_msg

    def install(self, app: web.Application) -> None:
        handlers: dict[p.Endpoint, Handler] = {
            p.MEMBERS_LIST: self.members_list,
            p.MEMBER_ADD: self.member_add,
            p.MEMBER_PROMOTE: self.member_promote,
            p.MEMBER_REMOVE: self.member_remove,
            p.SNAPSHOT_SAVE: self.snapshot_save,
            p.LOCK_FORCE_RELEASE: self.lock_force_release,
        }
        add_routes(app, {ep: self.api._timed(ep.name, h) for ep, h in handlers.items()})
        app.cleanup_ctx.append(self.heard_from.background)

    # ----------------------------------------------------------------- membership

    def members_doc(self) -> dict[str, Any]:
        d, r = self.driver, self.driver.raft
        m = r.membership
        now = d.clock_ms()
        leading = r.role == Role.LEADER
        rows = []
        for nid in sorted(m.members):
            match = (r.last_index if nid == d.id else r.progress[nid].match) if leading else None
            seen = d.last_contact_ms.get(nid)
            rows.append(
                {
                    "id": nid,
                    "address": m.address_of(nid),
                    "role": "voter" if nid in m.voters else "learner",
                    "match": match,
                    "lag": None if match is None else max(0, r.last_index - match),
                    "last_contact_ms_ago": None if seen is None else now - seen,
                }
            )
        return {
            "cluster_id": self.cluster_id,
            "node": d.id,
            "role": r.role.value,
            "term": r.term,
            "leader": r.leader,
            "leader_address": d.addresses.get(r.leader) if r.leader else None,
            "commit_index": r.commit_index,
            "last_index": r.last_index,
            "pending_change": self._pending_change(),
            "members": rows,
            #: peers heard from since this process started, and how long ago
            "heard_from_ms_ago": {n: now - t for n, t in sorted(d.last_contact_ms.items())},
            #: every peer this node ever heard from, across restarts (the wiped-voter check uses it)
            "heard_from": sorted(self.heard_from.ids()),
            "settings": dataclasses.asdict(self.settings),
        }

    async def members_list(self, request: web.Request) -> web.Response:
        return respond(request, self.members_doc())

    async def member_add(self, request: web.Request) -> web.Response:
        body = await read_body(request, self.api.max_request_bytes)
        node_id = _field(body, "id")
        if not _ID_RE.fullmatch(node_id):
            msg = f'{p.MEMBER_ADD.describe()}: "id": {node_id!r}: {_ID_RULE}'
            raise Refusal(p.INVALID_REQUEST, msg, field="id")
        address = _field(body, "address")
        try:
            parse_address(address)
        except ValueError as exc:
            msg = f'{p.MEMBER_ADD.describe()}: "address": {exc}'
            raise Refusal(p.INVALID_REQUEST, msg, field="address") from None
        self.api._require_leader()
        rules.check_add(self.driver.raft.membership, node_id, address)
        await self._change(ConfChange(ConfChangeOp.ADD_LEARNER, node_id, address), request)
        return respond(request, self.members_doc())

    async def member_promote(self, request: web.Request) -> web.Response:
        node_id = request.match_info["id"]
        self.api._require_leader()
        r = self.driver.raft
        pr = r.progress.get(node_id)
        match = pr.match if pr is not None else 0
        up = self._reachable()
        rules.check_promote(r.membership, node_id, match, r.last_index - match, self.max_promote_lag, up)
        await self._change(ConfChange(ConfChangeOp.PROMOTE, node_id), request)
        return respond(request, self.members_doc())

    async def member_remove(self, request: web.Request) -> web.Response:
        node_id = request.match_info["id"]
        self.api._require_leader()
        d = self.driver
        rules.check_remove(d.raft.membership, node_id, self._reachable())
        if node_id == d.id:
            # Leadership moves first, so the cluster never waits out an election timeout; the
            # client retries on the new leader, which removes us (a follower, by then).
            voters = d.raft.membership.voters - {d.id}
            target = max(voters, key=lambda v: (d.raft.progress[v].match, v))
            await d.transfer_leadership(target, timeout_s=self.api._timeout(request.query))
            raise self.api._not_leader()
        await self._change(ConfChange(ConfChangeOp.REMOVE, node_id), request)
        return respond(request, self.members_doc())

    def _reachable(self) -> set[str]:
        d = self.driver
        now = d.clock_ms()
        ago = {n: now - t for n, t in d.last_contact_ms.items()}
        return rules.reachable(d.raft.membership, d.id, ago, self.settings.election_timeout_ms)

    def _pending_change(self) -> bool:
        r = self.driver.raft
        if r.commit_index >= r.last_index:
            return False
        return any(e.kind == EntryKind.CONFIG for e in r.log.slice(r.commit_index + 1, r.last_index))

    async def _change(self, cc: ConfChange, request: web.Request) -> None:
        try:
            proposal = self.driver.propose_conf_change(cc, self.api._timeout(request.query))
            await self.api._outcome(proposal, "check `raftstate member list` before retrying")
        except ConfChangeInProgress as exc:
            raise Refusal(
                p.CHANGE_IN_PROGRESS,
                f"{exc}; one membership change at a time: wait for it (`raftstate member list`) and retry",
            ) from None

    # ----------------------------------------------------------------- locks

    async def lock_force_release(self, request: web.Request) -> web.Response:
        name = schema.name_from_path(request.match_info["name"], self.api.limits, "lock name")
        self.api._require_leader()
        data = encode(Command(ForceReleaseLock(name)))
        result = await self.api._propose(data, self.api._timeout(request.query))
        caller = CALLER.get()
        who = f"token {caller[0]!r}" if caller is not None else "a caller (auth off)"
        if result.get("released"):
            held = f"held by owner {result['owner']!r} (token {result['token']}, opened by " + (
                f"token {result['caller']!r})" if result.get("caller") else "no token name)"
            )
        else:
            held = "which was free"
        # %r everywhere a client chose the text: control characters come out escaped.
        log.warning("AUDIT: %s from %s force-released lock %r %s", who, request.remote or "?", name, held)
        return respond(request, {"name": name, **result})

    # ----------------------------------------------------------------- backup

    async def snapshot_save(self, request: web.Request) -> web.StreamResponse:
        self.api._require_leader()
        await self.api._read_barrier(self.api._timeout(request.query))
        data, sha, point = await self._state_at_a_point()
        header = BackupHeader(
            cluster_id=self.cluster_id,
            index=point.index,
            term=point.term,
            time_ms=point.time_ms,
            base_index=point.base_index,
            data_bytes=len(data),
            data_sha256=sha,
            node=self.driver.id,
            created_at=time.time(),
        )
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        for chunk in stream_backup(header, data):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def _state_at_a_point(self) -> tuple[bytes, str, _Point]:
        """What the backup holds for the applied index right after the read barrier: the stored
        snapshot and the log entries after it (node/ops/backup_state.py), prepared in a thread."""
        d = self.driver
        if d.state_file is not None:
            # The state lives in a store: the backup is the whole state at a pinned applied index.
            pinned = d.pinned_state()
            index = pinned.applied_index
            term = d.raft.log.term_at(index) or 0
            return await asyncio.to_thread(_pinned, pinned, term)
        for _ in range(3):
            # One step with no await: the index, its term and the entries up to it belong together.
            index, log = d.sm.applied_index, d.raft.log
            term = log.term_at(index) or 0
            entries = log.slice(log.snapshot_index + 1, index) if index > log.snapshot_index else []
            try:
                return await asyncio.to_thread(_payload, d.storage, entries, index, term)
            except SnapshotMovedOn:
                continue  # a local snapshot was stored meanwhile: take a new point
        raise Refusal(p.UNAVAILABLE, f"node {d.id}: snapshots kept moving past the backup point; retry")


@dataclasses.dataclass(frozen=True, slots=True)
class _Point:
    index: int
    term: int
    time_ms: int
    base_index: int


def _pinned(pinned: KVStateMachine, term: int) -> tuple[bytes, str, _Point]:
    data, time_ms, index = pinned_payload(pinned)
    return data, hashlib.sha256(data).hexdigest(), _Point(index, term, time_ms, index)


def _payload(storage: Storage, entries: list[Entry], index: int, term: int) -> tuple[bytes, str, _Point]:
    data, time_ms, base_index = backup_payload(storage, entries, index)
    return data, hashlib.sha256(data).hexdigest(), _Point(index, term, time_ms, base_index)


def _field(body: Any, name: str) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise Refusal(
            p.INVALID_REQUEST,
            f'{p.MEMBER_ADD.describe()}: "{name}" must be a non-empty string, got {value!r}',
            field=name,
        )
    return value
