"""Client sessions: each write applied at most once, its first outcome remembered (Raft §6.3).

A client opens a session (its id is the log index of the open) and numbers its writes ``seq`` 1, 2, …
Every attempt of one write carries the same (session, seq). At apply time, in this order:

    session unknown, closed or expired at now_ms -> session_expired; nothing applied, nothing recorded
    seq's outcome remembered                    -> that outcome again; the write is NOT re-applied
    seq <= acked (its outcome was forgotten)    -> invalid_request; nothing applied
    max_results outcomes already remembered     -> invalid_request (ack more); nothing applied
    otherwise                                   -> apply; remember the outcome (success or refusal)

and, unless refused, the session is touched (last_active_ms = now_ms) and every outcome up to the
request's ``ack`` is forgotten. A session is live at now_ms <=> now_ms < last_active_ms +
idle_timeout_ms. Both limits travel in the open command, so every replica uses the same ones
whatever its own cluster.yaml says. Sessions and their remembered outcomes are in snapshots, so a
retry after a leader change, a restart or a snapshot install still finds its first outcome.

Invariants: every remembered seq > acked; len(results) <= max_results.

A session records the name of the token that opened it (``caller``; node/state/quotas.py), counted
against the open command's ``max_per_caller``. An operation that ends a session on a client's
request should be allowed to that token or an admin.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from raftstate.client import protocol as p
from raftstate.node.errors import Refusal
from raftstate.node.state.commands import (
    CloseSession,
    KeepAlive,
    OpenSession,
    SessionRef,
    invalid,
    to_seconds,
)
from raftstate.node.state.expiry import ExpiryIndex
from raftstate.node.state.quotas import CallerIndex

__all__ = ["Outcome", "Session", "SessionTable"]

#: what a write produced: its result body, or its refusal
Outcome = dict[str, Any] | Refusal


@dataclass(slots=True)
class Session:
    last_active_ms: int
    idle_timeout_ms: int
    max_results: int
    #: every outcome at or below this seq has been forgotten
    acked: int = 0
    results: dict[int, Outcome] = field(default_factory=dict)
    #: the name of the token that opened it (None: auth off, or opened before quotas)
    caller: str | None = None

    @property
    def expires_at_ms(self) -> int:
        return self.last_active_ms + self.idle_timeout_ms

    def live_at(self, now_ms: int) -> bool:
        return now_ms < self.expires_at_ms


class SessionTable:
    def __init__(self) -> None:
        self.sessions: dict[int, Session] = {}
        self._expiry: ExpiryIndex[int] = ExpiryIndex(self._expiry_of)
        #: ids changed since the last :meth:`take_dirty` (the store writes only those rows)
        self._dirty: set[int] = set()
        #: token name -> the sessions it opened (node/state/quotas.py); derived, rebuilt on restore
        self._callers: CallerIndex[int] = CallerIndex()

    def __len__(self) -> int:
        return len(self.sessions)

    def live(self, sid: int, now_ms: int) -> Session | None:
        s = self.sessions.get(sid)
        return s if s is not None and s.live_at(now_ms) else None

    def due(self, now_ms: int, limit: int) -> list[int]:
        return self._expiry.due(now_ms, limit)

    # ----------------------------------------------------------------- apply

    def open(self, index: int, now_ms: int, op: OpenSession) -> dict[str, Any]:
        # The API checks the count before proposing; this is the check that holds under concurrent
        # opens (many pass the API's check before any is applied).
        self.check_quota(op, now_ms)
        self.check_room(now_ms, op.max_sessions)
        self.sessions[index] = Session(now_ms, op.idle_timeout_ms, op.max_results, caller=op.caller)
        self._callers.add(op.caller, index)
        self._touched(index)
        return {"session": index, "idle_timeout_s": to_seconds(op.idle_timeout_ms)}

    def check_room(self, now_ms: int, max_sessions: int | None) -> None:
        """Raise Refusal (too_many_sessions) if ``max_sessions`` live sessions exist. Expired but
        unswept sessions do not count, so the answer never depends on when the sweep ran."""
        if max_sessions is None or len(self.sessions) < max_sessions:
            return
        live = sum(1 for s in self.sessions.values() if s.live_at(now_ms))
        if live >= max_sessions:
            raise Refusal(
                p.TOO_MANY_SESSIONS,
                f"{live} client sessions are open, the limit is {max_sessions} (settings.max_sessions); "
                "reuse a client (one session each) or wait for idle sessions to expire",
                limit=max_sessions,
            )

    def check_quota(self, op: OpenSession, now_ms: int) -> None:
        """Raise too_many_sessions if the caller already holds max_per_caller live sessions."""
        self._callers.check_room(
            op.caller,
            op.max_per_caller,
            lambda sid: self.live(sid, now_ms) is not None,
            code=p.TOO_MANY_SESSIONS,
            what="sessions",
            setting="settings.max_sessions_per_token",
        )

    def keepalive(self, now_ms: int, op: KeepAlive) -> dict[str, Any]:
        s = self._require(op.id, now_ms)
        s.last_active_ms = now_ms
        self._touched(op.id)
        return {"ok": True}

    def close(self, op: CloseSession) -> dict[str, Any]:
        """Forget session ``op.id`` and every outcome it remembers, at once (its client is done: it
        sends no retry that would need one). Idempotent: a session already gone — closed before,
        expired and swept, never opened — answers ``closed: false`` and changes nothing. A write
        of the session still in the log after this is answered session_expired, not applied.
        Who may: the token that opened it, or an admin (``op.caller`` None); another token's close
        is refused ``forbidden`` and changes nothing — decided here, the same on every replica."""
        s = self.sessions.get(op.id)
        if s is None:
            return {"closed": False}
        if op.caller is not None and s.caller is not None and op.caller != s.caller:
            raise Refusal(
                p.FORBIDDEN,
                f"session {op.id} was opened by token {s.caller!r}, not {op.caller!r}: only that token "
                "or an admin token may close it",
                session=op.id,
            )
        del self.sessions[op.id]
        self._callers.discard(s.caller, op.id)
        self._dirty.add(op.id)  # the expiry index drops it lazily: _expiry_of answers None
        return {"closed": True}

    def begin(self, ref: SessionRef, now_ms: int) -> Outcome | None:
        """Admit write ``ref``: its remembered outcome, or None if it is new and must be applied
        (then call :meth:`record`). Raises a Refusal, which changes nothing."""
        s = self._require(ref.id, now_ms)
        cached = s.results.get(ref.seq)
        new_ack = max(s.acked, ref.ack)
        if cached is None:
            if ref.seq <= s.acked:
                raise invalid(
                    f"session {ref.id}: seq {ref.seq} is at or below the acknowledged seq {s.acked}, so its "
                    f"outcome was forgotten and it cannot be applied now; number a new write above {s.acked}",
                    session=ref.id,
                    seq=ref.seq,
                )
            kept = len(s.results) if new_ack == s.acked else sum(1 for q in s.results if q > new_ack)
            if kept >= s.max_results:
                raise invalid(
                    f"session {ref.id} already remembers {kept} outcomes that were not acknowledged (the "
                    f'limit is {s.max_results}, settings.max_session_results); send "ack" with the highest '
                    "seq whose outcome you no longer need, or open a new session. This write was not applied",
                    session=ref.id,
                    limit=s.max_results,
                )
        s.last_active_ms = now_ms
        self._touched(ref.id)
        if new_ack > s.acked:
            s.acked = new_ack
            for q in [q for q in s.results if q <= new_ack]:
                del s.results[q]
        return cached

    def record(self, ref: SessionRef, outcome: Outcome) -> None:
        s = self.sessions[ref.id]
        assert ref.seq > s.acked and ref.seq not in s.results, (ref, s.acked)
        s.results[ref.seq] = outcome
        self._dirty.add(ref.id)
        assert len(s.results) <= s.max_results, (ref.id, len(s.results))

    def expire(self, ids: tuple[int, ...], now_ms: int) -> int:
        removed = 0
        for sid in ids:
            s = self.sessions.get(sid)
            if s is not None and not s.live_at(now_ms):
                del self.sessions[sid]
                self._callers.discard(s.caller, sid)
                self._dirty.add(sid)
                removed += 1
        return removed

    # ----------------------------------------------------------------- snapshots

    def rows(self) -> list[list[Any]]:
        """Canonical: sessions by id, outcomes by seq."""
        return [_row(sid, s) for sid, s in sorted(self.sessions.items())]

    def restore(self, rows: list[list[Any]]) -> None:
        self._dirty.update(self.sessions)
        self.sessions = {}
        self._callers.clear()
        for sid, last, idle, cap, acked, results, *caller in rows:
            s = Session(int(last), int(idle), int(cap), int(acked), caller=str(caller[0]) if caller else None)
            s.results = {int(q): _outcome_from_row(rest) for q, *rest in results}
            self.sessions[int(sid)] = s
            self._callers.add(s.caller, int(sid))
        self._dirty.update(self.sessions)
        self._expiry.rebuild(self._expiring())

    def take_dirty(self) -> list[tuple[int, list[Any] | None]]:
        """The rows changed since the last call: (id, row), row None when the session is gone."""
        out = [(i, _row(i, self.sessions[i]) if i in self.sessions else None) for i in sorted(self._dirty)]
        self._dirty.clear()
        return out

    # ----------------------------------------------------------------- helpers

    def _require(self, sid: int, now_ms: int) -> Session:
        s = self.live(sid, now_ms)
        if s is None:
            raise Refusal(
                p.SESSION_EXPIRED,
                f"session {sid} has expired (idle longer than its timeout, in cluster time) or never "
                "existed; this write was NOT applied: open a new session (POST /v1/sessions)",
                session=sid,
            )
        return s

    def _touched(self, sid: int) -> None:
        s = self.sessions[sid]
        self._dirty.add(sid)
        self._expiry.add(s.expires_at_ms, sid, size=len(self.sessions), live=self._expiring)

    def _expiry_of(self, sid: int) -> int | None:
        s = self.sessions.get(sid)
        return None if s is None else s.expires_at_ms

    def _expiring(self) -> Iterator[tuple[int, int]]:
        for sid, s in self.sessions.items():
            yield s.expires_at_ms, sid


def _row(sid: int, s: Session) -> list[Any]:
    row = [
        sid, s.last_active_ms, s.idle_timeout_ms, s.max_results, s.acked,
        [[q, *_outcome_row(s.results[q])] for q in sorted(s.results)],
    ]  # fmt: skip
    if s.caller is not None:  # rows from before quotas (and with auth off) keep their six fields
        row.append(s.caller)
    return row


def _outcome_row(o: Outcome) -> list[Any]:
    if isinstance(o, Refusal):
        return [1, o.code, o.message, o.fields]
    return [0, o]


def _outcome_from_row(row: list[Any]) -> Outcome:
    if row[0] == 1:
        code, message, fields = row[1], row[2], row[3]
        return Refusal(str(code), str(message), **dict(fields))
    body: dict[str, Any] = dict(row[1])
    return body
