"""Client sessions: what makes a retried write apply exactly once (Raft dissertation §6.3).

The client registers one session lazily (``POST /v1/sessions``) and numbers every write of it:
``seq`` 1, 2, 3, ... Every attempt of one write carries the same ``(session, seq)``, so the cluster
applies it once and answers retries with the first outcome. Each write also carries ``ack``: the
highest seq at and below which the client needs no outcome any more, so the cluster may forget
them. Invariants (asserted where cheap)::

    0 <= ack < every outstanding seq < next_seq
    a seq is handed out once and never re-used, also not after its write gave up (OutcomeUnknown)

A seq whose write ended in any way — answered, refused, gave up with OutcomeUnknown, cancelled — is
no longer outstanding, so ``ack`` moves past it. For a write that gave up this is safe: the client
never sends that seq again, so the cluster can at most apply the copy already on its way, once.

When the cluster says ``session_expired``, :meth:`SessionManager.expired` drops the session and the
next write registers a new one. Whether the failed write may be re-sent under the new session is the
caller's decision (only if no attempt of it can have been applied).

A session may hold only so many unacknowledged outcomes (the cluster's ``max_session_results``,
1000 by default). One write retrying for a long time keeps ``ack`` below it while other tasks keep
writing, so once ``max_unacked`` seqs are unacknowledged the client starts a NEW session for new
writes (the slow write keeps its old numbers). A cluster that refuses a write because the session is
full is handled like an expired session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from raftstate.client._retry import Clock, Deadline


@dataclass(frozen=True, slots=True)
class Ticket:
    """The identity of one write: every attempt of it carries these."""

    session: int
    seq: int


@dataclass(frozen=True, slots=True)
class Registration:
    session: int
    #: the cluster's settings.session_idle_timeout_s (None if it did not say)
    idle_timeout_s: float | None


Register = Callable[[Deadline], Awaitable[Registration]]

#: re-register proactively once the session has been idle for this share of its idle timeout, so
#: that a write does not meet session_expired on a retry (which would make its outcome unknown)
_IDLE_SHARE = 0.8
#: start a new session once this many seqs are unacknowledged (well below the cluster's default
#: max_session_results of 1000)
MAX_UNACKED = 256


class SessionManager:
    def __init__(
        self, register: Register, *, clock: Clock = time.monotonic, max_unacked: int = MAX_UNACKED
    ) -> None:
        assert max_unacked >= 1
        self._register = register
        self._clock = clock
        self._max_unacked = max_unacked
        self._lock = asyncio.Lock()
        self._session: Registration | None = None
        self._next_seq = 1
        #: seqs handed out whose write has not ended yet
        self._outstanding: set[int] = set()
        self._last_used = 0.0  # monotonic time of the last write the cluster answered

    @property
    def session(self) -> int | None:
        return self._session.session if self._session else None

    async def ticket(self, deadline: Deadline) -> Ticket:
        """A fresh (session, seq) for a new write, registering a session first if needed."""
        s = self._session
        if s is not None and s.idle_timeout_s is not None:
            if self._clock() - self._last_used > s.idle_timeout_s * _IDLE_SHARE:
                self._drop(s.session)
        if self._session is not None and self._next_seq - 1 - self._ack() >= self._max_unacked:
            self._drop(self._session.session)  # a slow write holds ack back: number new writes afresh
        if self._session is None:
            async with self._lock:
                if self._session is None:
                    reg = await self._register(deadline)
                    assert reg.session is not None
                    self._session = reg
                    self._next_seq = 1
                    self._outstanding.clear()
                    self._last_used = self._clock()
        assert self._session is not None
        seq = self._next_seq
        self._next_seq += 1
        self._outstanding.add(seq)
        return Ticket(self._session.session, seq)

    def fields(self, ticket: Ticket) -> dict[str, int]:
        """The body fields every attempt of the write carries."""
        out = {"session": ticket.session, "seq": ticket.seq}
        if self._session is not None and self._session.session == ticket.session:
            ack = self._ack()
            assert 0 <= ack < ticket.seq or ticket.seq not in self._outstanding, (ack, ticket)
            if ack > 0:
                out["ack"] = ack
        return out

    def _ack(self) -> int:
        """Highest seq of the current session at and below which no outcome is needed."""
        return (min(self._outstanding) if self._outstanding else self._next_seq) - 1

    def answered(self, ticket: Ticket) -> None:
        """The cluster answered a write of this session (it counts as activity)."""
        if self._session is not None and self._session.session == ticket.session:
            self._last_used = self._clock()

    def done(self, ticket: Ticket) -> None:
        """The write ended (however): its outcome is no longer needed."""
        if self._session is not None and self._session.session == ticket.session:
            self._outstanding.discard(ticket.seq)

    def expired(self, ticket: Ticket) -> None:
        """The cluster no longer knows ``ticket.session`` (or will not take more writes in it): the
        next write registers a new one."""
        self._drop(ticket.session)

    def forget(self) -> int | None:
        """The client is closing: drop the session and return its id (None if none was opened), so
        that it can be ended on the cluster. No write may be numbered in it afterwards."""
        sid = self.session
        if self._session is not None:
            self._drop(self._session.session)
        return sid

    def _drop(self, session: int) -> None:
        if self._session is not None and self._session.session == session:
            self._session = None
            self._outstanding.clear()
